//! The built-in event generator: deterministic synthetic events for demos, tests and
//! benchmarks.
//!
//! Event `i` of partition `p` depends only on `(seed, p, i)` and the start time, so seeking is
//! O(1) and a restarted job regenerates exactly the events it had not yet checkpointed.
//! Well-formed events are built directly as records (no JSON round trip); they are identical
//! to what [`JsonDecoder`] makes of the event's JSON line. Malformed events are rendered as
//! bytes and decoded, so their dead letters carry the decoder's own error.
//!
//! Position encoding: 16 bytes, the next event index (`u64` big-endian) followed by the event
//! time start in epoch ms (`i64` big-endian). The start is stored because, with `rate` and no
//! `start_time`, it is the wall clock of the first start and must survive restarts.

mod event;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_engine::event::decode::{parse_time, wall_clock_ms, JsonDecoder};
use weir_engine::event::{DeadLetter, Fields, Record, Timestamp, Value};
use weir_engine::runtime::{DecodeContext, PollStatus, SourceBatch, SourceError, SourcePartition};
use weir_engine::topology::{ConfigIssue, TimeFormat};

use event::{Event, Plan};
pub use event::{Field, Malformed, EVENT_TYPES, HUGE_BYTES, LATE_BY_MS};

/// Event time of the first event when neither `start_time` nor `rate` is set:
/// 2026-01-01T00:00:00Z.
pub const DEFAULT_START_MS: Timestamp = 1_767_225_600_000;

/// The longest a `poll` waits for the rate to allow the next event.
const MAX_PACING_WAIT: Duration = Duration::from_millis(20);

/// What the generated events look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `{"ts_ms": <epoch ms>, "key": "key_<n>", "value": <integer 0..1000>}`; integer values
    /// keep sums exact.
    #[default]
    Bench,
    /// Web-shop activity: `{"event_id", "user_id", "event_type" (view, click, add_to_cart,
    /// purchase, login_failed), "product", "session_id", "value" (integer amount for
    /// add_to_cart/purchase, else 0), "timestamp" (RFC 3339 with milliseconds)}`.
    Activity,
}

/// How [`write_events`] writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per event.
    Csv,
}

/// Options of a `type: generator` source. The common keys `type`, `event_time`, `watermark`
/// and `dead_letter` are handled by the engine and not part of this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Event shape: `bench` (default) or `activity`.
    #[serde(default)]
    pub shape: Shape,
    /// Events per partition; unset means unbounded.
    #[serde(default)]
    pub count: Option<u64>,
    /// Events per second per partition (wall clock); unset means as fast as possible.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Number of partitions (independent event streams, each read by its own task).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Key cardinality: number of distinct `key` (bench) or `user_id` (activity) values.
    #[serde(default = "default_keys")]
    pub keys: u64,
    /// How many events make one second of event time, per partition. Default: `rate` when it
    /// is set (event time then follows the wall clock), else 1000.
    #[serde(default)]
    pub events_per_second_of_event_time: Option<f64>,
    /// Event time of the first event (RFC 3339). Default: 2026-01-01T00:00:00Z, or the wall
    /// clock at the first start when `rate` is set.
    #[serde(default)]
    pub start_time: Option<String>,
    /// Event times are jittered back by up to this many milliseconds (out-of-order input).
    #[serde(default)]
    pub max_out_of_orderness_ms: u64,
    /// Share of events (0..1) pushed back 10 minutes in event time, so they arrive late.
    #[serde(default)]
    pub late_ratio: f64,
    /// Share of events (0..1) emitted malformed (truncated, wrong type, missing or odd
    /// timestamp, 100 KB string); most become dead letters.
    #[serde(default)]
    pub malformed_ratio: f64,
    /// Seed of the deterministic event sequence.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_partitions() -> u32 {
    1
}

fn default_keys() -> u64 {
    1000
}

fn default_seed() -> u64 {
    42
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            shape: Shape::Bench,
            count: None,
            rate: None,
            partitions: default_partitions(),
            keys: default_keys(),
            events_per_second_of_event_time: None,
            start_time: None,
            max_out_of_orderness_ms: 0,
            late_ratio: 0.0,
            malformed_ratio: 0.0,
            seed: default_seed(),
        }
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

impl GeneratorConfig {
    /// Parses the connector options of a source, reporting every problem with its path under
    /// `prefix` (e.g. `sources.events`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        // Each key on its own first, so every bad key is reported (all fields have defaults).
        for (key, value) in options {
            let mut single = serde_json::Map::new();
            single.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Self>(serde_json::Value::Object(single)) {
                issues.push(ConfigIssue {
                    path: join_path(prefix, key),
                    message: e.to_string(),
                });
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let config: Self = serde_json::from_value(serde_json::Value::Object(options.clone()))
            .map_err(|e| {
                vec![ConfigIssue {
                    path: prefix.to_owned(),
                    message: e.to_string(),
                }]
            })?;
        let mut issue = |key: &str, message: String| {
            issues.push(ConfigIssue {
                path: join_path(prefix, key),
                message,
            })
        };
        if config.partitions == 0 {
            issue("partitions", "must be at least 1".into());
        }
        if config.keys == 0 {
            issue("keys", "must be at least 1".into());
        }
        if let Some(rate) = config.rate {
            if !(rate.is_finite() && rate > 0.0) {
                issue(
                    "rate",
                    format!("must be a positive number of events per second, not {rate}"),
                );
            }
        }
        if let Some(eps) = config.events_per_second_of_event_time {
            if !(eps.is_finite() && eps > 0.0) {
                issue(
                    "events_per_second_of_event_time",
                    format!("must be a positive number, not {eps}"),
                );
            }
        }
        for (key, ratio) in [
            ("late_ratio", config.late_ratio),
            ("malformed_ratio", config.malformed_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                issue(key, format!("must be between 0 and 1, not {ratio}"));
            }
        }
        if let Err(e) = config.start_ms() {
            issue("start_time", e);
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }

    /// The configured `start_time` in epoch ms, if set.
    pub fn start_ms(&self) -> Result<Option<Timestamp>, String> {
        match &self.start_time {
            None => Ok(None),
            Some(text) => parse_time(&Value::Str(text.as_str().into()), TimeFormat::Rfc3339)
                .map(Some)
                .map_err(|e| format!("not an RFC 3339 time: {e}")),
        }
    }

    /// Events per second of event time (see `events_per_second_of_event_time`).
    pub fn event_rate(&self) -> f64 {
        match (self.events_per_second_of_event_time, self.rate) {
            (Some(eps), _) if eps.is_finite() && eps > 0.0 => eps,
            (_, Some(rate)) if rate.is_finite() && rate > 0.0 => rate,
            _ => 1000.0,
        }
    }

    /// The event time of the first event for a run starting now.
    fn resolve_start(&self) -> Result<Timestamp, String> {
        Ok(match self.start_ms()? {
            Some(ms) => ms,
            None if self.rate.is_some() => wall_clock_ms(),
            None => DEFAULT_START_MS,
        })
    }
}

/// Opens the generator's partitions, with ids `generator:<source_name>/<p>`.
///
/// Fails when the context's event-time field is not the shape's time field (`ts_ms` for
/// bench, `timestamp` for activity) unless processing time is used.
pub fn open_generator(
    source_name: &str,
    config: &GeneratorConfig,
    ctx: &DecodeContext,
) -> Result<Vec<Box<dyn SourcePartition>>, SourceError> {
    let start_ms = config.resolve_start().map_err(SourceError::Fatal)?;
    let plan = Arc::new(Plan::new(config));
    let shape = config.shape;
    if !ctx.event_time.processing_time && shape.field(&ctx.event_time.field).is_none() {
        return Err(SourceError::Fatal(format!(
            "source `{source_name}`: generator shape `{}` has no field `{}`; its event time is \
             in `{}` (set `event_time.field: {}`)",
            shape_name(shape),
            ctx.event_time.field,
            shape.time_field().name(),
            shape.time_field().name()
        )));
    }
    let slot_fields: Vec<Option<Field>> = ctx
        .slots
        .names()
        .iter()
        .map(|name| shape.field(name))
        .collect();
    let mut partitions: Vec<Box<dyn SourcePartition>> = Vec::new();
    for p in 0..config.partitions {
        let id = format!("generator:{source_name}/{p}");
        partitions.push(Box::new(GeneratorPartition {
            partition: id.as_str().into(),
            id,
            source: source_name.into(),
            plan: Arc::clone(&plan),
            p,
            count: config.count,
            rate: config.rate.filter(|r| r.is_finite() && *r > 0.0),
            next: 0,
            start_ms,
            slot_fields: slot_fields.clone(),
            time_field: shape.field(&ctx.event_time.field),
            time_format: ctx.event_time.format,
            processing_time: ctx.event_time.processing_time,
            decoder: JsonDecoder::new(ctx),
            scratch: Vec::new(),
            pacing: None,
        }));
    }
    Ok(partitions)
}

fn shape_name(shape: Shape) -> &'static str {
    match shape {
        Shape::Bench => "bench",
        Shape::Activity => "activity",
    }
}

/// One generator partition.
pub struct GeneratorPartition {
    id: String,
    source: CompactString,
    partition: CompactString,
    plan: Arc<Plan>,
    p: u32,
    count: Option<u64>,
    rate: Option<f64>,
    /// Index of the next event.
    next: u64,
    start_ms: Timestamp,
    /// For each slot, the generated field it takes (`None`: the shape has no such field).
    slot_fields: Vec<Option<Field>>,
    time_field: Option<Field>,
    time_format: TimeFormat,
    processing_time: bool,
    decoder: JsonDecoder,
    scratch: Vec<u8>,
    /// Wall-clock instant and event index the rate is measured from.
    pacing: Option<(Instant, u64)>,
}

impl GeneratorPartition {
    /// Appends event `index` to `out`: built directly when well-formed, otherwise rendered and
    /// decoded.
    fn produce(&mut self, index: u64, out: &mut SourceBatch) {
        let ev = self.plan.event(self.p, index, self.start_ms);
        if ev.malformed.is_none() {
            if let Some(record) = self.direct(&ev) {
                out.records.push(record);
                return;
            }
        }
        self.scratch.clear();
        self.plan.write_json(&ev, &mut self.scratch);
        match self.decoder.decode(&self.scratch) {
            Ok(record) => out.records.push(record),
            Err(e) => out.dead_letters.push(DeadLetter {
                source: self.source.clone(),
                partition: self.partition.clone(),
                offset: index.to_string().into(),
                raw: self.scratch.clone(),
                error: e.0,
            }),
        }
    }

    /// The record of a well-formed event, or `None` when its time does not parse (the decoder
    /// path then produces the dead letter).
    fn direct(&self, ev: &Event) -> Option<Record> {
        let time = if self.processing_time {
            wall_clock_ms()
        } else {
            let field = self.time_field?;
            parse_time(&self.plan.value(ev, field), self.time_format).ok()?
        };
        let mut fields = Fields::with_capacity(self.slot_fields.len());
        for f in &self.slot_fields {
            fields.push(match f {
                Some(field) => self.plan.value(ev, *field),
                None => Value::Null,
            });
        }
        Some(Record { time, fields })
    }

    /// How many events the rate allows beyond `next` right now, waiting up to
    /// [`MAX_PACING_WAIT`] for the next one.
    fn allowed_by_rate(&mut self, rate: f64) -> u64 {
        let (t0, i0) = *self.pacing.get_or_insert((Instant::now(), self.next));
        let allowed = |elapsed: Duration| {
            (i0 + (elapsed.as_secs_f64() * rate) as u64).saturating_sub(self.next)
        };
        let n = allowed(t0.elapsed());
        if n > 0 {
            return n;
        }
        let due = Duration::from_secs_f64((self.next + 1 - i0) as f64 / rate);
        let wait = due.saturating_sub(t0.elapsed()).min(MAX_PACING_WAIT);
        std::thread::sleep(wait);
        allowed(t0.elapsed())
    }
}

impl SourcePartition for GeneratorPartition {
    fn id(&self) -> &str {
        &self.id
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let (index, start) = match (position.get(..8), position.get(8..)) {
            (Some(a), Some(b)) if position.len() == 16 => {
                let mut ia = [0u8; 8];
                let mut sa = [0u8; 8];
                ia.copy_from_slice(a);
                sa.copy_from_slice(b);
                (u64::from_be_bytes(ia), i64::from_be_bytes(sa))
            }
            _ => {
                return Err(SourceError::Fatal(format!(
                    "{}: invalid stored position ({} bytes, expected 16)",
                    self.id,
                    position.len()
                )))
            }
        };
        self.next = index;
        self.start_ms = start;
        self.pacing = None;
        Ok(())
    }

    fn poll(
        &mut self,
        out: &mut SourceBatch,
        max_records: usize,
    ) -> Result<PollStatus, SourceError> {
        let mut budget = max_records as u64;
        if let Some(count) = self.count {
            if self.next >= count {
                return Ok(PollStatus::End);
            }
            budget = budget.min(count - self.next);
        }
        if let Some(rate) = self.rate {
            let allowed = self.allowed_by_rate(rate);
            if allowed == 0 {
                return Ok(PollStatus::Idle);
            }
            budget = budget.min(allowed);
        }
        out.records.reserve(budget as usize);
        for _ in 0..budget {
            self.produce(self.next, out);
            self.next += 1;
        }
        Ok(PollStatus::Data)
    }

    fn position(&self) -> Vec<u8> {
        let mut pos = Vec::with_capacity(16);
        pos.extend_from_slice(&self.next.to_be_bytes());
        pos.extend_from_slice(&self.start_ms.to_be_bytes());
        pos
    }
}

/// Writes `config.count` events of every partition to `out`, interleaved: event 0 of
/// partitions 0..n, then event 1 of each, and so on (so the file is roughly in event-time
/// order). CSV output starts with a header row; malformed CSV events are broken rows or
/// 100 KB garbage lines. `rate` is ignored; event time starts at `start_time` or
/// [`DEFAULT_START_MS`]. Returns the number of events written.
pub fn write_events(
    config: &GeneratorConfig,
    format: OutputFormat,
    out: &mut dyn Write,
) -> std::io::Result<u64> {
    let count = config.count.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the generator needs `count` to write a finite set of events",
        )
    })?;
    let start_ms = config
        .start_ms()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .unwrap_or(DEFAULT_START_MS);
    let plan = Plan::new(config);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut line = Vec::with_capacity(256);
    if format == OutputFormat::Csv {
        plan.write_csv_header(&mut line);
        line.push(b'\n');
        w.write_all(&line)?;
    }
    let mut written = 0u64;
    for i in 0..count {
        for p in 0..config.partitions {
            let ev = plan.event(p, i, start_ms);
            line.clear();
            match format {
                OutputFormat::Jsonl => plan.write_json(&ev, &mut line),
                OutputFormat::Csv => plan.write_csv(&ev, &mut line),
            }
            line.push(b'\n');
            w.write_all(&line)?;
            written += 1;
        }
    }
    w.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use weir_engine::event::decode::CsvDecoder;
    use weir_engine::event::FieldSlots;
    use weir_engine::topology::EventTimeSpec;

    use super::*;

    fn ctx(fields: &[&str], time_field: &str) -> DecodeContext {
        let mut slots = FieldSlots::default();
        for f in fields {
            slots.slot(f);
        }
        DecodeContext {
            source_name: "gen".into(),
            slots: Arc::new(slots),
            event_time: EventTimeSpec {
                field: time_field.into(),
                format: TimeFormat::Auto,
                processing_time: false,
                source_timestamp: false,
            },
        }
    }

    fn noisy(shape: Shape) -> GeneratorConfig {
        GeneratorConfig {
            shape,
            count: Some(3000),
            partitions: 2,
            keys: 50,
            max_out_of_orderness_ms: 5000,
            late_ratio: 0.05,
            malformed_ratio: 0.05,
            ..Default::default()
        }
    }

    fn drain(p: &mut dyn SourcePartition, max: usize) -> SourceBatch {
        let mut all = SourceBatch::default();
        loop {
            let mut batch = SourceBatch::default();
            match p.poll(&mut batch, max).unwrap() {
                PollStatus::End => return all,
                PollStatus::Idle => continue,
                PollStatus::Data => {}
            }
            all.records.extend(batch.records);
            all.dead_letters.extend(batch.dead_letters);
        }
    }

    #[test]
    fn direct_records_equal_decoded_json() {
        let cases: [(Shape, &[&str], &str); 4] = [
            (Shape::Bench, &["key", "value"], "ts_ms"),
            (Shape::Bench, &["value", "ts_ms", "missing", "key"], "ts_ms"),
            (
                Shape::Activity,
                &[
                    "user_id",
                    "event_type",
                    "value",
                    "product",
                    "session_id",
                    "event_id",
                ],
                "timestamp",
            ),
            (
                Shape::Activity,
                &["timestamp", "user_id", "nope"],
                "timestamp",
            ),
        ];
        for (shape, fields, time_field) in cases {
            let config = noisy(shape);
            let c = ctx(fields, time_field);
            let mut decoder = JsonDecoder::new(&c);
            let plan = Plan::new(&config);
            let mut parts = open_generator("gen", &config, &c).unwrap();
            let mut malformed = 0;
            for (p, part) in parts.iter_mut().enumerate() {
                let mut got = drain(part.as_mut(), 500);
                got.records.reverse();
                got.dead_letters.reverse();
                for i in 0..3000 {
                    let ev = plan.event(p as u32, i, DEFAULT_START_MS);
                    let mut line = Vec::new();
                    plan.write_json(&ev, &mut line);
                    assert!(!line.contains(&b'\n'));
                    if ev.malformed.is_some() {
                        malformed += 1;
                    }
                    match decoder.decode(&line) {
                        Ok(want) => assert_eq!(got.records.pop(), Some(want), "{p}/{i}"),
                        Err(e) => {
                            let dl = got.dead_letters.pop().unwrap();
                            assert!(ev.malformed.is_some());
                            assert_eq!(dl.error, e.0);
                            assert_eq!(dl.raw, line);
                            assert_eq!(dl.offset, i.to_string());
                            assert_eq!(dl.partition, format!("generator:gen/{p}"));
                        }
                    }
                }
                assert!(got.records.is_empty() && got.dead_letters.is_empty());
            }
            assert!((200..400).contains(&malformed), "{malformed}");
        }
    }

    #[test]
    fn events_are_deterministic_and_seekable() {
        let config = noisy(Shape::Bench);
        let c = ctx(&["key", "value"], "ts_ms");
        let mut whole = open_generator("gen", &config, &c).unwrap();
        let want = drain(whole[1].as_mut(), 1000);
        assert_eq!(whole[1].position()[..8], 3000u64.to_be_bytes());
        // Crash after every poll of 7 and resume from the stored position.
        let mut got = SourceBatch::default();
        let mut position = open_generator("gen", &config, &c).unwrap()[1].position();
        loop {
            let mut p = open_generator("gen", &config, &c).unwrap().remove(1);
            p.seek(&position).unwrap();
            let mut batch = SourceBatch::default();
            if p.poll(&mut batch, 7).unwrap() == PollStatus::End {
                break;
            }
            got.records.extend(batch.records);
            got.dead_letters.extend(batch.dead_letters);
            position = p.position();
        }
        assert_eq!(got.records, want.records);
        assert_eq!(got.dead_letters, want.dead_letters);
        // Another seed gives other events; another partition too.
        let other = GeneratorConfig {
            seed: 7,
            ..noisy(Shape::Bench)
        };
        let mut o = open_generator("gen", &other, &c).unwrap();
        assert_ne!(drain(o[1].as_mut(), 1000).records, want.records);
        assert_ne!(drain(whole[0].as_mut(), 1000).records, want.records);
        assert!(matches!(o[0].seek(&[0; 8]), Err(SourceError::Fatal(_))));
    }

    #[test]
    fn bench_shape_values_and_time() {
        let config = GeneratorConfig {
            count: Some(10_000),
            keys: 10,
            events_per_second_of_event_time: Some(1000.0),
            ..Default::default()
        };
        let c = ctx(&["key", "value"], "ts_ms");
        let mut parts = open_generator("gen", &config, &c).unwrap();
        assert_eq!(parts[0].id(), "generator:gen/0");
        let got = drain(parts[0].as_mut(), 4096);
        assert_eq!(got.records.len(), 10_000);
        assert!(got.dead_letters.is_empty());
        let mut keys = HashSet::new();
        for (i, r) in got.records.iter().enumerate() {
            assert_eq!(r.time, DEFAULT_START_MS + i as i64);
            match (&r.fields[0], &r.fields[1]) {
                (Value::Str(k), Value::Int(v)) => {
                    assert!(k.starts_with("key_"));
                    keys.insert(k.clone());
                    assert!((0..1000).contains(v));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(keys.len(), 10);
    }

    #[test]
    fn jitter_and_lateness_stay_in_bounds() {
        let config = GeneratorConfig {
            count: Some(20_000),
            max_out_of_orderness_ms: 2000,
            late_ratio: 0.1,
            start_time: Some("2026-11-25T10:00:00Z".into()),
            ..Default::default()
        };
        let plan = Plan::new(&config);
        let start = config.start_ms().unwrap().unwrap();
        let mut late = 0;
        for i in 0..20_000u64 {
            let ev = plan.event(0, i, start);
            let base = start + i as i64;
            let behind = base - ev.time;
            if behind > 2000 {
                late += 1;
                assert!((LATE_BY_MS..=LATE_BY_MS + 2000).contains(&behind));
            } else {
                assert!(behind >= 0);
            }
        }
        assert!((1600..2400).contains(&late), "{late}");
    }

    #[test]
    fn activity_shape() {
        let config = GeneratorConfig {
            shape: Shape::Activity,
            count: Some(2000),
            ..Default::default()
        };
        let fields = ["event_id", "event_type", "timestamp", "value"];
        let c = ctx(&fields, "timestamp");
        let mut parts = open_generator("gen", &config, &c).unwrap();
        let got = drain(parts[0].as_mut(), 4096);
        let mut types = HashSet::new();
        let mut ids = HashSet::new();
        for r in &got.records {
            let Value::Str(t) = &r.fields[1] else {
                panic!()
            };
            types.insert(t.to_string());
            ids.insert(r.fields[0].clone().to_json().to_string());
            let Value::Str(ts) = &r.fields[2] else {
                panic!()
            };
            assert_eq!(ts.len(), 24);
            let Value::Int(v) = r.fields[3] else { panic!() };
            if t == "purchase" || t == "add_to_cart" {
                assert!((1..=500).contains(&v));
            } else {
                assert_eq!(v, 0);
            }
        }
        assert_eq!(types.len(), 5);
        assert_eq!(ids.len(), 2000);
    }

    #[test]
    fn wrong_time_field_is_fatal_unless_processing_time() {
        let c = ctx(&["key"], "timestamp");
        let err = open_generator("gen", &GeneratorConfig::default(), &c)
            .err()
            .unwrap();
        assert!(err.to_string().contains("event_time.field: ts_ms"), "{err}");
        let mut c = c;
        c.event_time.processing_time = true;
        let config = GeneratorConfig {
            count: Some(3),
            ..Default::default()
        };
        let mut parts = open_generator("gen", &config, &c).unwrap();
        let before = wall_clock_ms();
        let got = drain(parts[0].as_mut(), 10);
        assert_eq!(got.records.len(), 3);
        assert!(got.records.iter().all(|r| r.time >= before));
    }

    #[test]
    fn rate_limits_and_start_follows_wall_clock() {
        let config = GeneratorConfig {
            rate: Some(200.0),
            ..Default::default()
        };
        assert_eq!(config.event_rate(), 200.0);
        let c = ctx(&["key"], "ts_ms");
        let before = wall_clock_ms();
        let mut parts = open_generator("gen", &config, &c).unwrap();
        let p = parts[0].as_mut();
        let t0 = Instant::now();
        let mut n = 0;
        let mut idle = 0;
        let mut first_time = None;
        while t0.elapsed() < Duration::from_millis(300) {
            let mut batch = SourceBatch::default();
            let poll_start = Instant::now();
            match p.poll(&mut batch, 1000).unwrap() {
                PollStatus::Idle => idle += 1,
                PollStatus::Data => {}
                PollStatus::End => panic!("unbounded"),
            }
            assert!(poll_start.elapsed() < Duration::from_millis(60));
            first_time = first_time.or(batch.records.first().map(|r| r.time));
            n += batch.records.len();
        }
        assert!((40..=80).contains(&n), "{n}");
        assert_eq!(idle, 0, "waits under 20 ms are slept, not reported");
        let first = first_time.unwrap();
        assert!(first >= before && first <= wall_clock_ms());
        // The wall-clock start is part of the position, so a restart keeps it.
        let position = p.position();
        let mut again = open_generator("gen", &config, &c).unwrap();
        again[0].seek(&position).unwrap();
        assert_eq!(again[0].position(), position);
    }

    #[test]
    fn slow_rate_reports_idle_without_blocking() {
        let config = GeneratorConfig {
            rate: Some(5.0),
            ..Default::default()
        };
        let mut parts = open_generator("gen", &config, &ctx(&["key"], "ts_ms")).unwrap();
        let mut batch = SourceBatch::default();
        let t0 = Instant::now();
        assert_eq!(parts[0].poll(&mut batch, 100).unwrap(), PollStatus::Idle);
        assert!(t0.elapsed() < Duration::from_millis(60));
        assert!(batch.records.is_empty());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(parts[0].poll(&mut batch, 100).unwrap(), PollStatus::Data);
        assert_eq!(batch.records.len(), 1);
    }

    #[test]
    fn write_events_jsonl_and_csv() {
        let config = GeneratorConfig {
            count: Some(500),
            partitions: 3,
            malformed_ratio: 0.1,
            ..noisy(Shape::Activity)
        };
        let mut jsonl = Vec::new();
        assert_eq!(
            write_events(&config, OutputFormat::Jsonl, &mut jsonl).unwrap(),
            1500
        );
        let lines: Vec<&[u8]> = jsonl
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 1500);
        // Interleaved: line 3*i+p is event i of partition p.
        let plan = Plan::new(&config);
        let mut line = Vec::new();
        plan.write_json(&plan.event(2, 7, DEFAULT_START_MS), &mut line);
        assert_eq!(lines[3 * 7 + 2], &line[..]);

        let c = ctx(&["user_id", "value"], "timestamp");
        let mut json = JsonDecoder::new(&c);
        let mut csv_out = Vec::new();
        write_events(&config, OutputFormat::Csv, &mut csv_out).unwrap();
        let rows: Vec<&[u8]> = csv_out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(rows.len(), 1501);
        assert_eq!(
            rows[0],
            b"event_id,user_id,event_type,product,session_id,value,timestamp"
        );
        let mut csv = CsvDecoder::new(&c, rows[0]).unwrap();
        let (mut ok, mut bad) = (0, 0);
        for (l, r) in lines.iter().zip(&rows[1..]) {
            let j = json.decode(l);
            let k = csv.decode(r);
            assert_eq!(j.is_ok(), k.is_ok(), "{}", String::from_utf8_lossy(r));
            match (j, k) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    ok += 1;
                }
                _ => bad += 1,
            }
        }
        assert!(bad > 50 && ok > 1200, "{ok} {bad}");
        let unbounded = GeneratorConfig::default();
        assert!(write_events(&unbounded, OutputFormat::Jsonl, &mut Vec::new()).is_err());
    }

    #[test]
    fn malformed_variants_all_appear() {
        let config = GeneratorConfig {
            malformed_ratio: 1.0,
            ..Default::default()
        };
        let plan = Plan::new(&config);
        let mut seen = HashSet::new();
        for i in 0..200 {
            let ev = plan.event(0, i, DEFAULT_START_MS);
            let kind = ev.malformed.unwrap();
            seen.insert(format!("{kind:?}"));
            let mut line = Vec::new();
            plan.write_json(&ev, &mut line);
            if kind == Malformed::Huge {
                assert!(line.len() > HUGE_BYTES);
            }
        }
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn config_from_options() {
        let opts = |v: serde_json::Value| v.as_object().unwrap().clone();
        let c = GeneratorConfig::from_options(
            "sources.gen",
            &opts(serde_json::json!({
                "shape": "activity", "count": 10, "rate": 5.5, "partitions": 4, "keys": 7,
                "events_per_second_of_event_time": 1666.67,
                "start_time": "2026-11-25T10:00:00Z", "max_out_of_orderness_ms": 100,
                "late_ratio": 0.1, "malformed_ratio": 0.2, "seed": 1
            })),
        )
        .unwrap();
        assert_eq!(c.shape, Shape::Activity);
        assert_eq!(c.start_ms().unwrap(), Some(1_795_600_800_000));
        assert_eq!(c.event_rate(), 1666.67);
        assert_eq!(
            GeneratorConfig::from_options("x", &serde_json::Map::new()).unwrap(),
            GeneratorConfig::default()
        );
        let mut issues = GeneratorConfig::from_options(
            "sources.gen",
            &opts(serde_json::json!({"shape": "nope", "count": -1, "bogus": 1})),
        )
        .unwrap_err();
        issues.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sources.gen.bogus",
                "sources.gen.count",
                "sources.gen.shape"
            ]
        );
        let mut issues = GeneratorConfig::from_options(
            "sources.gen",
            &opts(serde_json::json!({
                "partitions": 0, "keys": 0, "rate": 0.0, "late_ratio": 2.0,
                "malformed_ratio": -0.1, "start_time": "yesterday",
                "events_per_second_of_event_time": 0.0
            })),
        )
        .unwrap_err();
        issues.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sources.gen.events_per_second_of_event_time",
                "sources.gen.keys",
                "sources.gen.late_ratio",
                "sources.gen.malformed_ratio",
                "sources.gen.partitions",
                "sources.gen.rate",
                "sources.gen.start_time",
            ]
        );
    }
}

//! Synthesis of generator events: event `i` of partition `p` is a pure function of
//! `(seed, p, i)` and the start time, so any position can be regenerated in O(1).

use compact_str::CompactString;
use weir_engine::event::decode::days_from_civil;
use weir_engine::event::{Timestamp, Value};

use super::{GeneratorConfig, Shape};

/// Events are pushed this far back in event time to make them late.
pub const LATE_BY_MS: i64 = 10 * 60 * 1000;
/// Size of the "huge string" malformed variant.
pub const HUGE_BYTES: usize = 100 * 1024;
/// Event types of the activity shape.
pub const EVENT_TYPES: [&str; 5] = ["view", "click", "add_to_cart", "purchase", "login_failed"];
/// Distinct products of the activity shape.
const PRODUCTS: u64 = 500;
/// Activity sessions are bucketed by this much event time.
const SESSION_MS: i64 = 30 * 60 * 1000;

/// A field of a generated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Bench: event time, epoch ms.
    TsMs,
    /// Bench: `key_<n>`.
    Key,
    /// Both shapes: an integer amount.
    Value,
    /// Activity: `evt-<partition>-<index>`, unique.
    EventId,
    /// Activity: `user_<n>`.
    UserId,
    /// Activity: one of [`EVENT_TYPES`].
    EventType,
    /// Activity: `sku_<n>`.
    Product,
    /// Activity: `sess_<user>_<half-hour bucket>`.
    SessionId,
    /// Activity: event time, RFC 3339 with milliseconds.
    Timestamp,
}

const BENCH_FIELDS: [Field; 3] = [Field::TsMs, Field::Key, Field::Value];
const ACTIVITY_FIELDS: [Field; 7] = [
    Field::EventId,
    Field::UserId,
    Field::EventType,
    Field::Product,
    Field::SessionId,
    Field::Value,
    Field::Timestamp,
];

impl Field {
    /// The field's name in the generated JSON / CSV.
    pub fn name(self) -> &'static str {
        match self {
            Field::TsMs => "ts_ms",
            Field::Key => "key",
            Field::Value => "value",
            Field::EventId => "event_id",
            Field::UserId => "user_id",
            Field::EventType => "event_type",
            Field::Product => "product",
            Field::SessionId => "session_id",
            Field::Timestamp => "timestamp",
        }
    }
}

impl Shape {
    /// The shape's fields in output order.
    pub fn fields(self) -> &'static [Field] {
        match self {
            Shape::Bench => &BENCH_FIELDS,
            Shape::Activity => &ACTIVITY_FIELDS,
        }
    }

    /// The field holding the event time.
    pub fn time_field(self) -> Field {
        match self {
            Shape::Bench => Field::TsMs,
            Shape::Activity => Field::Timestamp,
        }
    }

    /// The field called `name`, if the shape has one.
    pub fn field(self, name: &str) -> Option<Field> {
        self.fields().iter().copied().find(|f| f.name() == name)
    }
}

/// Ways an event is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The line is cut in half.
    Truncated,
    /// `value` is the string `"abc"` (decodes; the pipeline must reject it).
    WrongType,
    /// The time field is absent.
    MissingTime,
    /// The time field holds an unparsable timestamp.
    OddTimestamp,
    /// A 100 KB unterminated string (JSON) or garbage line (CSV).
    Huge,
}

const ODD_TIMESTAMPS: [&str; 5] = ["yesterday", "", "2026-13-45T25:61:00Z", "-1", "NaN"];

/// Everything needed to synthesize events, derived once from the configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    seed: u64,
    shape: Shape,
    keys: u64,
    ms_per_event: f64,
    max_out_of_orderness_ms: u64,
    late_ratio: f64,
    malformed_ratio: f64,
}

/// One synthesized event.
#[derive(Debug, Clone)]
pub struct Event {
    partition: u32,
    index: u64,
    /// Event time before jitter.
    base_time: Timestamp,
    /// Event time (jittered, possibly pushed back to be late).
    pub time: Timestamp,
    words: [u64; 4],
    /// How the event is broken, if it is.
    pub malformed: Option<Malformed>,
}

/// SplitMix64's output function: a strong 64-bit mix.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a random word.
fn unit(w: u64) -> f64 {
    (w >> 11) as f64 / (1u64 << 53) as f64
}

impl Plan {
    /// The plan of `config`.
    pub fn new(config: &GeneratorConfig) -> Self {
        Plan {
            seed: config.seed,
            shape: config.shape,
            keys: config.keys.max(1),
            ms_per_event: 1000.0 / config.event_rate(),
            max_out_of_orderness_ms: config.max_out_of_orderness_ms,
            late_ratio: config.late_ratio,
            malformed_ratio: config.malformed_ratio,
        }
    }

    /// Event `index` of `partition`, with event time starting at `start_ms`.
    pub fn event(&self, partition: u32, index: u64, start_ms: Timestamp) -> Event {
        let base = splitmix(splitmix(splitmix(self.seed) ^ u64::from(partition)) ^ index);
        let word = |k: u64| splitmix(base ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let offset = (index as f64 * self.ms_per_event).floor();
        let base_time = start_ms.saturating_add(offset as i64);
        let mut time = base_time;
        if self.max_out_of_orderness_ms > 0 {
            let jitter = word(5) % (self.max_out_of_orderness_ms.saturating_add(1));
            time = time.saturating_sub(i64::try_from(jitter).unwrap_or(i64::MAX));
        }
        if self.late_ratio > 0.0 && unit(word(6)) < self.late_ratio {
            time = time.saturating_sub(LATE_BY_MS);
        }
        let malformed = if self.malformed_ratio > 0.0 && unit(word(7)) < self.malformed_ratio {
            Some(match word(8) % 5 {
                0 => Malformed::Truncated,
                1 => Malformed::WrongType,
                2 => Malformed::MissingTime,
                3 => Malformed::OddTimestamp,
                _ => Malformed::Huge,
            })
        } else {
            None
        };
        Event {
            partition,
            index,
            base_time,
            time,
            words: [word(1), word(2), word(3), word(4)],
            malformed,
        }
    }

    fn key_number(&self, ev: &Event) -> u64 {
        ev.words[0] % self.keys
    }

    fn event_type(&self, ev: &Event) -> &'static str {
        match ev.words[2] % 100 {
            0..=59 => EVENT_TYPES[0],
            60..=79 => EVENT_TYPES[1],
            80..=89 => EVENT_TYPES[2],
            90..=94 => EVENT_TYPES[3],
            _ => EVENT_TYPES[4],
        }
    }

    /// The value of `field` in `ev` (the well-formed value, whatever `ev.malformed` says).
    pub fn value(&self, ev: &Event, field: Field) -> Value {
        match field {
            Field::TsMs => Value::Int(ev.time),
            Field::Key => Value::Str(prefixed("key_", &[self.key_number(ev)])),
            Field::Value => Value::Int(match self.shape {
                Shape::Bench => (ev.words[1] % 1000) as i64,
                Shape::Activity => match self.event_type(ev) {
                    "purchase" | "add_to_cart" => (ev.words[1] % 500 + 1) as i64,
                    _ => 0,
                },
            }),
            Field::EventId => Value::Str(prefixed("evt-", &[u64::from(ev.partition), ev.index])),
            Field::UserId => Value::Str(prefixed("user_", &[self.key_number(ev)])),
            Field::EventType => Value::Str(CompactString::const_new(self.event_type(ev))),
            Field::Product => Value::Str(prefixed("sku_", &[ev.words[3] % PRODUCTS])),
            Field::SessionId => {
                let bucket = ev.base_time.div_euclid(SESSION_MS);
                let mut s = prefixed("sess_", &[self.key_number(ev)]);
                s.push('_');
                push_i64(&mut s, bucket);
                Value::Str(s)
            }
            Field::Timestamp => Value::Str(rfc3339_millis(ev.time)),
        }
    }

    /// The field's value as written in a broken event (`None`: the field is left out).
    fn written_value(&self, ev: &Event, field: Field) -> Option<Value> {
        let is_time = field == self.shape.time_field();
        match ev.malformed {
            Some(Malformed::WrongType) if field == Field::Value => Some(Value::Str("abc".into())),
            Some(Malformed::MissingTime) if is_time => None,
            Some(Malformed::OddTimestamp) if is_time => {
                let odd = ODD_TIMESTAMPS[(ev.words[3] % ODD_TIMESTAMPS.len() as u64) as usize];
                Some(match odd.parse::<i64>() {
                    Ok(n) => Value::Int(n),
                    Err(_) => Value::Str(odd.into()),
                })
            }
            _ => Some(self.value(ev, field)),
        }
    }

    /// Appends `ev` as one JSON object (no newline) to `out`.
    pub fn write_json(&self, ev: &Event, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(b'{');
        let mut first = true;
        for &field in self.shape.fields() {
            let Some(value) = self.written_value(ev, field) else {
                continue;
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(field.name().as_bytes());
            out.extend_from_slice(b"\":");
            if ev.malformed == Some(Malformed::Huge) && field == Field::Value {
                // An unterminated 100 KB string: the line ends inside it.
                out.push(b'"');
                out.resize(out.len() + HUGE_BYTES, b'x');
                return;
            }
            write_json_value(&value, out);
        }
        out.push(b'}');
        if ev.malformed == Some(Malformed::Truncated) {
            let keep = start + (out.len() - start) / 2;
            out.truncate(keep);
        }
    }

    /// Appends the CSV header row (no newline) to `out`.
    pub fn write_csv_header(&self, out: &mut Vec<u8>) {
        for (i, field) in self.shape.fields().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(field.name().as_bytes());
        }
    }

    /// Appends `ev` as one CSV row (no newline) to `out`.
    pub fn write_csv(&self, ev: &Event, out: &mut Vec<u8>) {
        let start = out.len();
        if ev.malformed == Some(Malformed::Huge) {
            out.resize(start + HUGE_BYTES, b'x');
            return;
        }
        for (i, &field) in self.shape.fields().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if let Some(value) = self.written_value(ev, field) {
                write_csv_value(&value, out);
            }
        }
        if ev.malformed == Some(Malformed::Truncated) {
            let keep = start + (out.len() - start) / 2;
            out.truncate(keep);
        }
    }
}

fn write_json_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => push_i64_bytes(out, *i),
        Value::Float(f) => out.extend_from_slice(f.to_string().as_bytes()),
        Value::Str(s) => {
            out.push(b'"');
            for &b in s.as_bytes() {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0..=0x1f => {
                        out.extend_from_slice(b"\\u00");
                        out.push(HEX[usize::from(b >> 4)]);
                        out.push(HEX[usize::from(b & 15)]);
                    }
                    _ => out.push(b),
                }
            }
            out.push(b'"');
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_csv_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => push_i64_bytes(out, *i),
        Value::Float(f) => out.extend_from_slice(f.to_string().as_bytes()),
        Value::Str(s) => {
            let needs_quotes =
                s.is_empty() || s.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
            if needs_quotes {
                out.push(b'"');
                for &b in s.as_bytes() {
                    if b == b'"' {
                        out.push(b'"');
                    }
                    out.push(b);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// The decimal digits of `n` in `buf`; returns where they start.
fn digits(buf: &mut [u8; 20], mut n: u64) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

fn push_u64(s: &mut CompactString, n: u64) {
    let mut buf = [0u8; 20];
    let at = digits(&mut buf, n);
    if let Ok(text) = std::str::from_utf8(&buf[at..]) {
        s.push_str(text);
    }
}

fn push_i64(s: &mut CompactString, n: i64) {
    if n < 0 {
        s.push('-');
    }
    push_u64(s, n.unsigned_abs());
}

fn push_i64_bytes(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut buf = [0u8; 20];
    let at = digits(&mut buf, n.unsigned_abs());
    out.extend_from_slice(&buf[at..]);
}

/// `prefix` followed by the numbers joined with `-`.
fn prefixed(prefix: &'static str, numbers: &[u64]) -> CompactString {
    let mut s = CompactString::const_new(prefix);
    for (i, n) in numbers.iter().enumerate() {
        if i > 0 {
            s.push('-');
        }
        push_u64(&mut s, *n);
    }
    s
}

/// The date of a day number since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_millis(ms: Timestamp) -> CompactString {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    debug_assert_eq!(days_from_civil(year, month, day), days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    if !(0..=9999).contains(&year) {
        return compact_str::format_compact!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z"
        );
    }
    let mut out = [0u8; 24];
    let put = |out: &mut [u8; 24], at: usize, width: usize, mut v: i64| {
        for k in (0..width).rev() {
            out[at + k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, 4, year);
    out[4] = b'-';
    put(&mut out, 5, 2, i64::from(month));
    out[7] = b'-';
    put(&mut out, 8, 2, i64::from(day));
    out[10] = b'T';
    put(&mut out, 11, 2, h);
    out[13] = b':';
    put(&mut out, 14, 2, m);
    out[16] = b':';
    put(&mut out, 17, 2, s);
    out[19] = b'.';
    put(&mut out, 20, 3, milli);
    out[23] = b'Z';
    match std::str::from_utf8(&out) {
        Ok(text) => CompactString::new(text),
        Err(_) => CompactString::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_rendering() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_767_225_600_123),
            "2026-01-01T00:00:00.123Z"
        );
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [
            0i64,
            1,
            -1,
            951_868_799_999,
            4_102_444_800_000,
            -62_135_596_800_000,
        ] {
            let text = rfc3339_millis(ms);
            let back = chrono::DateTime::parse_from_rfc3339(&text).unwrap();
            assert_eq!(back.timestamp_millis(), ms, "{text}");
        }
    }

    #[test]
    fn prefixed_strings() {
        assert_eq!(prefixed("key_", &[0]), "key_0");
        assert_eq!(
            prefixed("evt-", &[3, 18_446_744_073_709_551_615]),
            "evt-3-18446744073709551615"
        );
    }
}

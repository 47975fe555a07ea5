//! Outputs as staged bytes: each output is one BSON document. BSON documents start with their
//! length, so the shards' staged bytes, concatenated, split back into documents without any
//! extra framing.
//!
//! `timeseries` and `events` sinks stage the document to insert, minus the epoch tag (an
//! encoder does not know the epoch; `commit` adds it). `rollup` sinks stage one small item per
//! event with what the epoch's per-(entity, day) update needs.

use std::sync::Arc;

use mongodb::bson::{Bson, DateTime, Document};
use weir_engine::event::{Output, Timestamp, Value};
use weir_engine::runtime::{wall_clock_ms, SinkEncoder};

/// `meta.kind` of late events.
pub(crate) const KIND_LATE: &str = "late";
/// `meta.kind` of dead letters.
pub(crate) const KIND_DEAD_LETTER: &str = "dead_letter";

/// Rollup item fields (short: they only live in staged bytes).
pub(crate) mod item {
    pub const KEY: &str = "k";
    pub const ENTITY: &str = "e";
    pub const DAY: &str = "d";
    pub const TIME: &str = "t";
    pub const COUNTERS: &str = "c";
    pub const SUMS: &str = "s";
    pub const LATEST: &str = "l";
    /// Present (with the output kind) instead of the rest when the output cannot be rolled up.
    pub const SKIPPED: &str = "skipped";
}

/// An engine value as BSON.
pub(crate) fn value_to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int(i) => Bson::Int64(*i),
        Value::Float(f) => Bson::Double(*f),
        Value::Str(s) => Bson::String(s.to_string()),
    }
}

/// A JSON value (an aggregate) as BSON: integers as 64-bit integers, objects as embedded
/// documents with their keys as they are (no extended-JSON interpretation).
pub(crate) fn json_to_bson(v: &serde_json::Value) -> Bson {
    match v {
        serde_json::Value::Null => Bson::Null,
        serde_json::Value::Bool(b) => Bson::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => n.as_f64().map_or(Bson::Null, Bson::Double),
        },
        serde_json::Value::String(s) => Bson::String(s.clone()),
        serde_json::Value::Array(items) => Bson::Array(items.iter().map(json_to_bson).collect()),
        serde_json::Value::Object(map) => Bson::Document(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_bson(v)))
                .collect(),
        ),
    }
}

/// Splits staged bytes into their BSON documents.
pub(crate) fn split_documents(staged: &[u8]) -> Result<Vec<Document>, String> {
    frames(staged)
        .map(|frame| Document::from_reader(frame?).map_err(|e| e.to_string()))
        .collect()
}

/// The BSON documents of `staged`, one slice each, by their length prefixes; an error for a
/// length that does not fit.
pub(crate) fn frames(staged: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut rest = staged;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest
            .first_chunk::<4>()
            .map(|b| i32::from_le_bytes(*b))
            .ok_or_else(|| "truncated document length".to_string())
            .and_then(|len| {
                usize::try_from(len)
                    .ok()
                    .filter(|l| *l >= 5 && *l <= rest.len())
                    .ok_or_else(|| format!("invalid document length {len}"))
            });
        Some(match len {
            Ok(len) => {
                let (frame, tail) = rest.split_at(len);
                rest = tail;
                Ok(frame)
            }
            Err(e) => {
                rest = &[];
                Err(e)
            }
        })
    })
}

/// Appends `doc` to `staged`, whole or not at all.
fn stage(doc: &Document, scratch: &mut Vec<u8>, staged: &mut Vec<u8>) -> bool {
    scratch.clear();
    if doc.to_writer(&mut *scratch).is_ok() {
        staged.extend_from_slice(scratch);
        true
    } else {
        false
    }
}

/// What `timeseries` and `events` sinks need to render documents.
#[derive(Debug, Clone)]
pub(crate) struct DocumentShape {
    /// The time field.
    pub time_field: Arc<str>,
    /// The meta field.
    pub meta_field: Arc<str>,
    /// Event fields kept in the meta field.
    pub meta_fields: Arc<[String]>,
}

impl DocumentShape {
    fn reserved(&self, name: &str) -> bool {
        name == &*self.time_field
            || name == &*self.meta_field
            || name == "_id"
            || name == "window_start"
            || name == "is_final"
    }

    /// The document for `output`, without the epoch tag. Fields named like the time or meta
    /// field, `_id`, `window_start` or `is_final` are left out: those names are the sink's.
    pub(crate) fn document(&self, output: &Output) -> Document {
        let mut meta = Document::new();
        let mut body = Document::new();
        let time = match output {
            Output::Result(r) => {
                let key_values = r.key.values().unwrap_or_default();
                for (name, v) in r.schema.key_fields.iter().zip(&key_values) {
                    meta.insert(name.as_str(), value_to_bson(v));
                }
                meta.insert("pipeline", r.schema.pipeline.as_str());
                for (name, v) in r.schema.aggregate_names.iter().zip(&r.aggregates) {
                    if !self.reserved(name) {
                        body.insert(name.as_str(), json_to_bson(v));
                    }
                }
                body.insert("window_start", DateTime::from_millis(r.window_start));
                body.insert("is_final", r.is_final);
                r.window_end
            }
            Output::Event(e) => {
                meta.insert("pipeline", e.pipeline.as_str());
                for (name, v) in &e.fields {
                    if self.meta_fields.iter().any(|m| m == name) {
                        meta.insert(name.as_str(), value_to_bson(v));
                    } else if !self.reserved(name) {
                        body.insert(name.as_str(), value_to_bson(v));
                    }
                }
                e.time
            }
            Output::Late(l) => {
                meta.insert("pipeline", l.pipeline.as_str());
                meta.insert("kind", KIND_LATE);
                for (name, v) in &l.fields {
                    if !self.reserved(name) {
                        body.insert(name.as_str(), value_to_bson(v));
                    }
                }
                body.insert("lateness_ms", l.lateness_ms);
                l.time
            }
            Output::DeadLetter(d) => {
                meta.insert("source", d.source.as_str());
                meta.insert("kind", KIND_DEAD_LETTER);
                body.insert("partition", d.partition.as_str());
                body.insert("offset", d.offset.as_str());
                body.insert("error", d.error.as_str());
                let raw = match std::str::from_utf8(&d.raw) {
                    Ok(text) => Bson::String(text.to_string()),
                    Err(_) => Bson::Binary(mongodb::bson::Binary {
                        subtype: mongodb::bson::spec::BinarySubtype::Generic,
                        bytes: d.raw.clone(),
                    }),
                };
                body.insert("raw", raw);
                // A dead letter has no event time; when it was staged is the closest there is.
                wall_clock_ms()
            }
        };
        let mut doc = Document::new();
        doc.insert(&*self.time_field, DateTime::from_millis(time));
        doc.insert(&*self.meta_field, meta);
        doc.extend(body);
        doc
    }
}

/// Encodes outputs as the documents `timeseries` and `events` sinks insert.
pub(crate) struct DocumentEncoder {
    shape: DocumentShape,
    /// Appended to each document's meta field as `weir`: the sink's epoch tag with epoch 0,
    /// its last field, which the commit overwrites in place (see [`EPOCH_PLACEHOLDER`]).
    tag: Option<Document>,
    scratch: Vec<u8>,
}

/// The epoch a [`DocumentEncoder`] writes into each tag; the commit stamps the real one.
pub(crate) const EPOCH_PLACEHOLDER: i64 = 0;

impl DocumentEncoder {
    /// An encoder whose documents carry `tag` (ending with `epoch: EPOCH_PLACEHOLDER`) in
    /// their meta field; `None` stages untagged documents.
    pub(crate) fn new(shape: DocumentShape, tag: Option<Document>) -> Self {
        DocumentEncoder {
            shape,
            tag,
            scratch: Vec::new(),
        }
    }

    fn tagged(&self, mut doc: Document) -> Document {
        if let (Some(tag), Ok(meta)) = (&self.tag, doc.get_document_mut(&*self.shape.meta_field)) {
            meta.insert("weir", tag.clone());
        }
        doc
    }
}

impl SinkEncoder for DocumentEncoder {
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>) {
        let doc = self.tagged(self.shape.document(output));
        if !stage(&doc, &mut self.scratch, staged) {
            // Only a field name with a NUL byte gets here; keep a trace of the output rather
            // than dropping it.
            let mut fallback = Document::new();
            let time = doc
                .get_datetime(&*self.shape.time_field)
                .copied()
                .unwrap_or_else(|_| DateTime::from_millis(wall_clock_ms()));
            fallback.insert(&*self.shape.time_field, time);
            fallback.insert(
                &*self.shape.meta_field,
                mongodb::bson::doc! {"kind": "unencodable"},
            );
            fallback.insert(
                "json",
                output.to_json().to_string().replace('\0', "\u{fffd}"),
            );
            let fallback = self.tagged(fallback);
            stage(&fallback, &mut self.scratch, staged);
        }
    }
}

/// What `rollup` sinks take from each output.
#[derive(Debug, Clone)]
pub(crate) struct RollupShape {
    /// The field naming the entity.
    pub entity_field: Arc<str>,
    /// Counter name and counted field.
    pub counters: Arc<[(String, String)]>,
    /// Summed fields.
    pub sum_fields: Arc<[String]>,
    /// Whether the latest events are kept (and so staged).
    pub keep_latest: bool,
    /// The time field of the events kept in `latest`.
    pub time_field: Arc<str>,
}

/// How a value names a document (`_id`) or a counter.
pub(crate) fn value_label(v: &Bson) -> String {
    match v {
        Bson::String(s) => s.clone(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(f) => f.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".into(),
        other => other.to_string(),
    }
}

/// A value as a field name: `.` would make a path, a leading `$` an operator.
pub(crate) fn field_label(v: &Bson) -> String {
    let label = value_label(v).replace(['.', '\0'], "_");
    match label.strip_prefix('$') {
        Some(rest) => format!("_{rest}"),
        None if label.is_empty() => "_".into(),
        None => label,
    }
}

/// The UTC day of `time` as `YYYY-MM-DD`.
pub(crate) fn utc_day(time: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(time)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "out-of-range".into())
}

impl RollupShape {
    /// The rollup item for `output`: `None` for window results that are not final (a later
    /// result replaces them, so counting them would count twice); an item with only
    /// `skipped` for dead letters (nothing to roll up; `commit` reports them).
    pub(crate) fn item(&self, output: &Output) -> Option<Document> {
        let (time, fields): (Timestamp, Vec<(&str, Bson)>) = match output {
            Output::Event(e) => (
                e.time,
                e.fields
                    .iter()
                    .map(|(n, v)| (n.as_str(), value_to_bson(v)))
                    .collect(),
            ),
            Output::Late(l) => (
                l.time,
                l.fields
                    .iter()
                    .map(|(n, v)| (n.as_str(), value_to_bson(v)))
                    .collect(),
            ),
            Output::Result(r) if r.is_final => {
                let key_values = r.key.values().unwrap_or_default();
                let mut fields: Vec<(&str, Bson)> = r
                    .schema
                    .key_fields
                    .iter()
                    .zip(&key_values)
                    .map(|(n, v)| (n.as_str(), value_to_bson(v)))
                    .collect();
                fields.extend(
                    r.schema
                        .aggregate_names
                        .iter()
                        .zip(&r.aggregates)
                        .map(|(n, v)| (n.as_str(), json_to_bson(v))),
                );
                fields.push((
                    "window_end",
                    Bson::DateTime(DateTime::from_millis(r.window_end)),
                ));
                (r.window_start, fields)
            }
            Output::Result(_) => return None,
            Output::DeadLetter(_) => {
                return Some(mongodb::bson::doc! { item::SKIPPED: "dead letter" });
            }
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Bson::Null, |(_, v)| v.clone())
        };
        let entity = get(&self.entity_field);
        let mut doc = Document::new();
        doc.insert(item::KEY, value_label(&entity));
        doc.insert(item::ENTITY, entity);
        doc.insert(item::DAY, utc_day(time));
        doc.insert(item::TIME, DateTime::from_millis(time));
        let counters: Document = self
            .counters
            .iter()
            .map(|(name, field)| (name.clone(), Bson::String(field_label(&get(field)))))
            .collect();
        doc.insert(item::COUNTERS, counters);
        let sums: Document = self
            .sum_fields
            .iter()
            .filter_map(|f| match get(f) {
                v @ (Bson::Int64(_) | Bson::Int32(_) | Bson::Double(_)) => Some((f.clone(), v)),
                _ => None,
            })
            .collect();
        doc.insert(item::SUMS, sums);
        if self.keep_latest {
            let mut event = Document::new();
            event.insert(&*self.time_field, DateTime::from_millis(time));
            for (name, v) in fields {
                if name != &*self.time_field {
                    event.insert(name, v);
                }
            }
            doc.insert(item::LATEST, event);
        }
        Some(doc)
    }
}

/// Encodes outputs as rollup items.
pub(crate) struct RollupEncoder {
    shape: RollupShape,
    scratch: Vec<u8>,
}

impl RollupEncoder {
    pub(crate) fn new(shape: RollupShape) -> Self {
        RollupEncoder {
            shape,
            scratch: Vec::new(),
        }
    }
}

impl SinkEncoder for RollupEncoder {
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>) {
        if let Some(doc) = self.shape.item(output) {
            if !stage(&doc, &mut self.scratch, staged) {
                // Only a field name with a NUL byte gets here.
                let skipped = mongodb::bson::doc! { item::SKIPPED: "unencodable" };
                stage(&skipped, &mut self.scratch, staged);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use compact_str::CompactString;
    use mongodb::bson::doc;
    use weir_engine::event::{
        DeadLetter, EventRecord, Key, LateRecord, ResultSchema, WindowResult,
    };

    use super::*;

    fn shape() -> DocumentShape {
        DocumentShape {
            time_field: "ts".into(),
            meta_field: "meta".into(),
            meta_fields: Arc::from(vec!["user".to_string()]),
        }
    }

    fn result(is_final: bool) -> Output {
        Output::Result(WindowResult {
            schema: Arc::new(ResultSchema {
                pipeline: "per_user".into(),
                key_fields: vec!["user".into(), "region".into()],
                aggregate_names: vec!["n".into(), "avg".into(), "ts".into()],
            }),
            key: Key::from_values(&[Value::Str("u1".into()), Value::Int(7)]),
            window_start: 60_000,
            window_end: 120_000,
            aggregates: vec![
                serde_json::json!(3),
                serde_json::json!(1.5),
                serde_json::json!("clash"),
            ],
            is_final,
        })
    }

    fn event(user: &str, event_type: &str, amount: Value, time: Timestamp) -> Output {
        Output::Event(EventRecord {
            pipeline: "raw".into(),
            time,
            fields: vec![
                ("user".into(), Value::Str(user.into())),
                ("event_type".into(), Value::Str(event_type.into())),
                ("amount".into(), amount),
            ],
        })
    }

    #[test]
    fn result_document_shape() {
        let doc = shape().document(&result(true));
        assert_eq!(
            doc,
            doc! {
                "ts": DateTime::from_millis(120_000),
                "meta": {"user": "u1", "region": 7_i64, "pipeline": "per_user"},
                "n": 3_i64,
                "avg": 1.5,
                "window_start": DateTime::from_millis(60_000),
                "is_final": true,
            }
        );
    }

    #[test]
    fn event_late_and_dead_letter_documents() {
        let doc = shape().document(&event("u1", "view", Value::Float(2.5), 5_000));
        assert_eq!(
            doc,
            doc! {
                "ts": DateTime::from_millis(5_000),
                "meta": {"pipeline": "raw", "user": "u1"},
                "event_type": "view",
                "amount": 2.5,
            }
        );
        let late = Output::Late(LateRecord {
            pipeline: "p".into(),
            fields: vec![(CompactString::from("x"), Value::Int(1))],
            time: 10,
            lateness_ms: 99,
        });
        assert_eq!(
            shape().document(&late),
            doc! {
                "ts": DateTime::from_millis(10),
                "meta": {"pipeline": "p", "kind": "late"},
                "x": 1_i64,
                "lateness_ms": 99_i64,
            }
        );
        let dead = Output::DeadLetter(DeadLetter {
            source: "events".into(),
            partition: "a.jsonl".into(),
            offset: "12".into(),
            raw: vec![0xff, 0x00],
            error: "bad".into(),
        });
        let doc = shape().document(&dead);
        assert_eq!(
            doc.get_document("meta").unwrap(),
            &doc! {"source": "events", "kind": "dead_letter"}
        );
        assert!(matches!(doc.get("raw"), Some(Bson::Binary(b)) if b.bytes == [0xff, 0x00]));
    }

    #[test]
    fn staged_documents_split_back_across_shards() {
        let mut shard_a = Vec::new();
        let mut shard_b = Vec::new();
        let mut enc = DocumentEncoder::new(shape(), None);
        enc.encode(&result(true), &mut shard_a);
        enc.encode(&event("u1", "view", Value::Int(1), 1), &mut shard_a);
        let mut enc = DocumentEncoder::new(shape(), None);
        enc.encode(&event("u2", "buy", Value::Null, 2), &mut shard_b);
        let staged = [shard_a, shard_b].concat();
        let docs = split_documents(&staged).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].get_str("event_type").unwrap(), "buy");
        assert!(split_documents(&staged[..staged.len() - 1]).is_err());
        assert!(split_documents(&[1, 0, 0, 0]).is_err());
        assert!(split_documents(&[]).unwrap().is_empty());
    }

    #[test]
    fn rollup_items() {
        let shape = RollupShape {
            entity_field: "user".into(),
            counters: Arc::from(vec![("counts".to_string(), "event_type".to_string())]),
            sum_fields: Arc::from(vec!["amount".to_string(), "event_type".to_string()]),
            keep_latest: true,
            time_field: "ts".into(),
        };
        // 2026-11-25T23:59:59.999Z
        let t = 1_795_651_199_999;
        let item = shape
            .item(&event("u1", "add.to$cart", Value::Int(4), t))
            .unwrap();
        assert_eq!(
            item,
            doc! {
                "k": "u1", "e": "u1", "d": "2026-11-25", "t": DateTime::from_millis(t),
                "c": {"counts": "add_to$cart"},
                "s": {"amount": 4_i64},
                "l": {"ts": DateTime::from_millis(t), "user": "u1", "event_type": "add.to$cart", "amount": 4_i64},
            }
        );
        assert!(shape.item(&result(false)).is_none());
        let item = shape.item(&result(true)).unwrap();
        assert_eq!(item.get_str("k").unwrap(), "u1");
        assert_eq!(item.get_str("d").unwrap(), "1970-01-01");
        let missing = Output::Event(EventRecord {
            pipeline: "raw".into(),
            time: 0,
            fields: vec![("event_type".into(), Value::Str("$x".into()))],
        });
        let item = shape.item(&missing).unwrap();
        assert_eq!(item.get_str("k").unwrap(), "null");
        assert_eq!(item.get_document("c").unwrap(), &doc! {"counts": "_x"});
        let dead = Output::DeadLetter(DeadLetter {
            source: "s".into(),
            partition: "p".into(),
            offset: "0".into(),
            raw: vec![],
            error: "e".into(),
        });
        assert!(shape.item(&dead).unwrap().contains_key(item::SKIPPED));
    }
}

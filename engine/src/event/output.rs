use std::io::Write;
use std::sync::Arc;

use compact_str::CompactString;

use super::{Key, Record, Timestamp};

/// Names needed to render a pipeline's window results: key fields and aggregate names, in the
/// order the topology declares them. Shared by all results of one pipeline.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultSchema {
    /// The pipeline's name.
    pub pipeline: CompactString,
    /// The `key_by` field names, in order.
    pub key_fields: Vec<CompactString>,
    /// The aggregate output names, in order.
    pub aggregate_names: Vec<CompactString>,
}

/// One window result: the key, the window bounds, each aggregate's value, and whether it is
/// final (`on_close`) or an update that a later result for the same key and window replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Names for rendering.
    pub schema: Arc<ResultSchema>,
    /// The grouping key.
    pub key: Key,
    /// Inclusive window start (event time, ms).
    pub window_start: Timestamp,
    /// Exclusive window end (event time, ms).
    pub window_end: Timestamp,
    /// Aggregate values in [`ResultSchema::aggregate_names`] order.
    pub aggregates: Vec<serde_json::Value>,
    /// `true` for the `on_close` result; `false` for an `on_update` change.
    pub is_final: bool,
}

impl WindowResult {
    /// The result as a JSON object: key fields, `window_start`, `window_end` (RFC 3339 is not
    /// used: epoch milliseconds keep results exact), each aggregate, and `is_final`.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut obj = serde_json::Map::new();
        let key_values = self.key.values().unwrap_or_default();
        for (name, v) in self.schema.key_fields.iter().zip(key_values.iter()) {
            obj.insert(name.to_string(), v.to_json());
        }
        obj.insert("window_start".into(), self.window_start.into());
        obj.insert("window_end".into(), self.window_end.into());
        for (name, v) in self
            .schema
            .aggregate_names
            .iter()
            .zip(self.aggregates.iter())
        {
            obj.insert(name.to_string(), v.clone());
        }
        obj.insert("is_final".into(), self.is_final.into());
        obj
    }
}

/// An event that arrived after every window it belongs to was closed for good.
#[derive(Debug, Clone, PartialEq)]
pub struct LateRecord {
    /// The pipeline that found it late.
    pub pipeline: CompactString,
    /// The record's fields by name.
    pub fields: Vec<(CompactString, super::Value)>,
    /// Its event time.
    pub time: Timestamp,
    /// How far behind its partition's watermark it was, in ms.
    pub lateness_ms: i64,
}

/// A record that could not be processed, kept with its original bytes so nothing is lost.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The source's name in the topology.
    pub source: CompactString,
    /// The partition (file path, topic/partition, stream shard) it was read from.
    pub partition: CompactString,
    /// Its position in that partition (byte offset, Kafka offset, stream id).
    pub offset: CompactString,
    /// The original bytes.
    pub raw: Vec<u8>,
    /// Why it was rejected.
    pub error: String,
}

/// An event passed through a pipeline without a window (`select` instead of `window`): the
/// selected fields, in the order the pipeline lists them, and the event time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The pipeline that passed it.
    pub pipeline: CompactString,
    /// Its event time (ms).
    pub time: Timestamp,
    /// The pipeline's `select` fields by name, in order; absent fields are `Null`.
    pub fields: Vec<(CompactString, super::Value)>,
}

impl EventRecord {
    /// The value of field `name`, if selected.
    pub fn field(&self, name: &str) -> Option<&super::Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// What a pipeline hands to its sinks.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A window result.
    Result(WindowResult),
    /// An event of a pipeline without a window.
    Event(EventRecord),
    /// A late event (to the late output).
    Late(LateRecord),
    /// A rejected record (to the dead-letter output).
    DeadLetter(DeadLetter),
}

impl Output {
    /// The output as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Output::Result(r) => serde_json::Value::Object(r.to_json()),
            Output::Event(e) => serde_json::Value::Object(
                e.fields
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_json()))
                    .collect(),
            ),
            Output::Late(l) => {
                let mut obj = serde_json::Map::new();
                for (name, v) in &l.fields {
                    obj.insert(name.to_string(), v.to_json());
                }
                obj.insert("pipeline".into(), l.pipeline.as_str().into());
                obj.insert("event_time".into(), l.time.into());
                obj.insert("lateness_ms".into(), l.lateness_ms.into());
                serde_json::Value::Object(obj)
            }
            Output::DeadLetter(d) => serde_json::json!({
                "source": d.source.as_str(),
                "partition": d.partition.as_str(),
                "offset": d.offset.as_str(),
                "error": d.error,
                "raw": String::from_utf8_lossy(&d.raw),
            }),
        }
    }

    /// Appends the output as one JSON line (with a trailing newline) to `buf`.
    pub fn write_json_line(&self, buf: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, &self.to_json());
        let _ = buf.write_all(b"\n");
    }
}

impl Record {
    /// The record's fields paired with their names (for late output and expressions).
    pub fn named_fields(&self, names: &[CompactString]) -> Vec<(CompactString, super::Value)> {
        names
            .iter()
            .cloned()
            .zip(self.fields.iter().cloned())
            .collect()
    }
}

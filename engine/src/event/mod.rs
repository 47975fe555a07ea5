//! Events as the engine sees them: typed field values, decoded records, grouping keys, outputs.

pub mod decode;
mod key;
mod output;

pub use key::Key;
pub use output::{DeadLetter, EventRecord, LateRecord, Output, ResultSchema, WindowResult};

use compact_str::CompactString;
use smallvec::SmallVec;

/// Event time and watermarks: milliseconds since the Unix epoch.
pub type Timestamp = i64;

/// The smallest timestamp; the watermark before any event was seen.
pub const MIN_TIMESTAMP: Timestamp = i64::MIN;
/// The largest timestamp; the watermark of an input that has ended.
pub const MAX_TIMESTAMP: Timestamp = i64::MAX;

/// One field value of a record. Strings up to 24 bytes are stored inline (no allocation).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// Absent or JSON `null`.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(CompactString),
}

impl Value {
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
        }
    }
}

/// How many field values a record holds without a heap allocation. Records move between
/// tasks by value, so this is a trade-off between allocations for wide pipelines and bytes
/// copied per record for narrow ones.
pub const INLINE_FIELDS: usize = 4;

/// The field values a pipeline uses, in slot order. Slots are assigned once per topology by
/// [`FieldSlots`]; a decoder fills only the slots it was asked for.
pub type Fields = SmallVec<[Value; INLINE_FIELDS]>;

/// A decoded event: its event time and the values of the fields the pipeline references.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Event time, from the configured time field (or the broker's record timestamp).
    pub time: Timestamp,
    /// Field values indexed by slot (see [`FieldSlots`]).
    pub fields: Fields,
}

/// Maps the field names a pipeline references to slot indexes in [`Record::fields`].
///
/// Built once per topology; decoders extract only these fields, so unreferenced fields of an
/// input cost nothing beyond being skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSlots {
    names: Vec<CompactString>,
}

impl FieldSlots {
    /// Returns the slot of `name`, adding it if it is new.
    pub fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.get(name) {
            return i;
        }
        self.names.push(name.into());
        self.names.len() - 1
    }

    /// The slot of `name`, if it was added.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Field names in slot order.
    pub fn names(&self) -> &[CompactString] {
        &self.names
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no field is referenced.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A record routed to a keyed shard.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedRecord {
    /// The grouping key built from the `key_by` fields.
    pub key: Key,
    /// Hash of the key; decides the shard and is stable across processes and restarts.
    pub key_hash: u64,
    /// The record.
    pub record: Record,
    /// The watermark of the record's own input partition when the record was read. Windows
    /// whose end plus `allowed_lateness` is at or below it do not take the record: lateness is
    /// decided per partition, so it does not depend on how partitions interleave.
    pub partition_watermark: Timestamp,
}

//! Window operators. INTERFACE STUB — implemented by the window work package.

use std::sync::Arc;

use compact_str::CompactString;

use crate::aggregate::Aggregates;
use crate::event::{FieldSlots, KeyedRecord, Output, ResultSchema, Timestamp};
use crate::expr::ResultPredicate;
use crate::state::{StateBatch, StateError, StateStore};
use crate::topology::{EmitMode, WindowSpec};

/// Everything a keyed window operator shard needs; built once per pipeline by the runtime.
#[derive(Clone)]
pub struct WindowOperatorSpec {
    /// Pipeline name; prefixes every state key of this operator.
    pub operator_id: CompactString,
    /// Names for rendering results.
    pub schema: Arc<ResultSchema>,
    /// Field names by slot (for late output).
    pub slots: Arc<FieldSlots>,
    /// The window.
    pub window: WindowSpec,
    /// The aggregates.
    pub aggregates: Aggregates,
    /// Emit mode.
    pub emit: EmitMode,
    /// With on_update/both: minimum processing time between two updates of one key and window.
    pub emit_every_ms: Option<i64>,
    /// Filter on results.
    pub having: Option<Arc<ResultPredicate>>,
    /// Whether late events are sent as [`Output::Late`] (else only counted).
    pub late_output: bool,
    /// This shard's index and the shard count: the shard owns keys with
    /// `key_hash % shards == shard`.
    pub shard: u32,
    /// Number of shards.
    pub shards: u32,
    /// Memory for this shard's hot state; colder entries are evicted to the store beyond it.
    pub memory_budget_bytes: usize,
}

/// Counters a shard exposes for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorStats {
    /// Windows (per key) currently open.
    pub open_windows: u64,
    /// Entries held in memory.
    pub entries_in_memory: u64,
    /// Entries evicted to the store.
    pub entries_evicted: u64,
    /// Late events seen (sent to the late output or dropped).
    pub late_events: u64,
    /// Results emitted.
    pub results_emitted: u64,
}

/// One shard of a keyed window operator.
pub struct WindowOperator {
    _private: (),
}

impl WindowOperator {
    /// Creates the shard and restores its state from `store`.
    pub fn new(_spec: WindowOperatorSpec, _store: Arc<dyn StateStore>) -> Result<Self, StateError> {
        unimplemented!()
    }
    /// Adds a record.
    pub fn process(&mut self, _rec: KeyedRecord, _out: &mut dyn FnMut(Output)) -> Result<(), StateError> {
        unimplemented!()
    }
    /// Advances the event-time watermark and emits what it closes.
    pub fn advance_watermark(&mut self, _watermark: Timestamp, _out: &mut dyn FnMut(Output)) -> Result<(), StateError> {
        unimplemented!()
    }
    /// Emits rate-limited updates due at processing time `now_ms`.
    pub fn on_processing_time(&mut self, _now_ms: i64, _out: &mut dyn FnMut(Output)) -> Result<(), StateError> {
        unimplemented!()
    }
    /// Writes changes since the last snapshot into `batch`; may evict cold entries.
    pub fn snapshot(&mut self, _batch: &mut StateBatch) -> Result<(), StateError> {
        unimplemented!()
    }
    /// Current counters.
    pub fn stats(&self) -> OperatorStats {
        unimplemented!()
    }
}

//! The operator contract: what a keyed shard runs.

use crate::event::{KeyedRecord, Output, Timestamp};
use crate::state::{StateBatch, StateError};
use crate::window::{OperatorStats, WindowOperator};

/// A keyed, stateful operator shard driven by a shard task.
///
/// Contract:
/// - `process` sees each of the shard's records once, in each input partition's order;
///   `advance_watermark` is called with a non-decreasing watermark (the minimum over the
///   shard's inputs) after the records it covers; `MAX_TIMESTAMP` means end of input.
/// - `snapshot` is called at a checkpoint barrier, once every input delivered it: it must add
///   to `batch` every state change since the previous snapshot, so that an operator built
///   from a store holding all batches up to epoch E behaves exactly like the original did at
///   E. The batch is written atomically with the sources' positions of the same epoch, while
///   the operator goes on processing; the next `snapshot` comes only after that write is
///   durable (one epoch in flight), so an operator may then read back what the previous batch
///   stored (e.g. entries it evicts from memory).
/// - Outputs passed to `out` belong to the epoch being built; they become visible when the
///   epoch commits, and are produced again by replay if it does not.
pub trait Operator: Send {
    /// Adds one record.
    fn process(&mut self, rec: KeyedRecord, out: &mut dyn FnMut(Output)) -> Result<(), StateError>;

    /// Advances event time and emits what it closes.
    fn advance_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError>;

    /// Emits what is due at processing time `now_ms` (rate-limited updates).
    fn on_processing_time(
        &mut self,
        now_ms: i64,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError>;

    /// Writes the changes since the last snapshot into `batch`.
    fn snapshot(&mut self, batch: &mut StateBatch) -> Result<(), StateError>;

    /// Counters for status and metrics.
    fn stats(&self) -> OperatorStats;
}

impl Operator for WindowOperator {
    fn process(&mut self, rec: KeyedRecord, out: &mut dyn FnMut(Output)) -> Result<(), StateError> {
        WindowOperator::process(self, rec, out)
    }

    fn advance_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        WindowOperator::advance_watermark(self, watermark, out)
    }

    fn on_processing_time(
        &mut self,
        now_ms: i64,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        WindowOperator::on_processing_time(self, now_ms, out)
    }

    fn snapshot(&mut self, batch: &mut StateBatch) -> Result<(), StateError> {
        WindowOperator::snapshot(self, batch)
    }

    fn stats(&self) -> OperatorStats {
        WindowOperator::stats(self)
    }
}

//! The source contract: what a connector implements to feed a pipeline.

use std::sync::Arc;

use compact_str::CompactString;

use crate::event::{DeadLetter, FieldSlots, Record, Timestamp};
use crate::topology::EventTimeSpec;

/// Errors a source reports. `Retryable` errors are retried with backoff by the runtime;
/// `Fatal` ones stop the job.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A passing failure (broker unavailable, I/O interrupted); retried with backoff.
    #[error("retryable source error: {0}")]
    Retryable(String),
    /// A failure retrying will not fix (file missing, bad offset).
    #[error("source error: {0}")]
    Fatal(String),
}

/// What a partition's `poll` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Records (or dead letters) were added to the batch; poll again.
    Data,
    /// Nothing new right now; poll again later (an unbounded source waiting for input).
    Idle,
    /// The partition is exhausted (end of a bounded file or generator); its watermark becomes
    /// the maximum and it is never polled again.
    End,
}

/// Records and rejects produced by one `poll`.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// Decoded records, in partition order.
    pub records: Vec<Record>,
    /// Records that could not be decoded, in partition order.
    pub dead_letters: Vec<DeadLetter>,
    /// Empty, or one entry per record of `records`: the watermark of the record's *original*
    /// input partition when it was read (an exchange partition carries it from stage 1).
    /// Lateness is then decided by it instead of by this partition's watermark.
    pub record_watermarks: Vec<Timestamp>,
}

impl SourceBatch {
    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.records.clear();
        self.dead_letters.clear();
        self.record_watermarks.clear();
    }
}

/// Which partitions of a source a job reads, by index in `0..partition_count`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionSelection {
    /// Every partition.
    #[default]
    All,
    /// Only these partitions (a fleet task).
    Only(Vec<u32>),
}

impl PartitionSelection {
    /// Whether partition `index` is selected.
    pub fn contains(&self, index: u32) -> bool {
        match self {
            PartitionSelection::All => true,
            PartitionSelection::Only(list) => list.contains(&index),
        }
    }
}

/// What a connector needs to decode records for one pipeline.
#[derive(Debug, Clone)]
pub struct DecodeContext {
    /// The source's name in the topology (for dead letters).
    pub source_name: CompactString,
    /// The fields the pipeline references, by slot; decoders fill exactly these.
    pub slots: Arc<FieldSlots>,
    /// Where the event time comes from and how it is written.
    pub event_time: EventTimeSpec,
}

/// One input partition of a source: a file, a Kafka partition, a Redis stream shard, a
/// generator instance. The runtime runs each partition in its own task.
///
/// Contract:
/// - `poll` appends records in partition order and never blocks for long (≤ ~100 ms), so the
///   task can react to checkpoint barriers.
/// - `position` after a `poll` is the position just past everything returned so far; handing
///   it to `seek` on a fresh instance (after a crash) resumes with the next record, so a
///   record is neither skipped nor repeated relative to the checkpoint that stored it.
/// - The position is opaque bytes owned by the connector; the engine stores it atomically
///   with the window state of the same checkpoint epoch.
pub trait SourcePartition: Send {
    /// A name for this partition that is stable across restarts (e.g. `file:/in/a.jsonl`,
    /// `kafka:events/3`); the key of its stored position.
    fn id(&self) -> &str;

    /// Moves to a position returned earlier by [`SourcePartition::position`].
    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError>;

    /// Reads up to `max_records` records into `out`.
    fn poll(
        &mut self,
        out: &mut SourceBatch,
        max_records: usize,
    ) -> Result<PollStatus, SourceError>;

    /// The position just past the last record returned.
    fn position(&self) -> Vec<u8>;

    /// An explicit watermark for this partition, if it has one (an exchange partition: the
    /// minimum over its upstream tasks). When `Some`, the task uses it instead of the largest
    /// event time seen minus `max_out_of_orderness`, and never declares the partition idle (its
    /// upstreams report idleness themselves). It must never decrease. Default: `None`.
    fn watermark(&self) -> Option<Timestamp> {
        None
    }

    /// Called once the checkpoint epoch holding this partition's position up to `position` is
    /// committed to every sink; brokers acknowledge here (Kafka offset commit, XACK).
    fn on_committed(&mut self, _position: &[u8]) -> Result<(), SourceError> {
        Ok(())
    }
}

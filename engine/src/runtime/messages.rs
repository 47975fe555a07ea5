//! Messages between a job's tasks.

use crate::checkpoint::{Epoch, PartitionCheckpoint};
use crate::event::{KeyedRecord, Timestamp};
use crate::state::StateBatch;

/// From a source task to a shard, in partition order. Watermarks and barriers travel with the
/// data, so a shard sees every record of an input before that input's later watermark or
/// barrier.
pub(crate) enum ShardMessage {
    /// Records routed to this shard.
    Records(Vec<KeyedRecord>),
    /// The input partition's watermark advanced (`MAX_TIMESTAMP`: the input ended).
    Watermark(Timestamp),
    /// The input became idle (`true`) or active again (`false`).
    Idle(bool),
    /// Checkpoint barrier: everything before it belongs to epoch `Epoch` or earlier.
    Barrier(Epoch),
}

/// From the coordinator to a source task.
pub(crate) enum SourceControl {
    /// Emit barrier `Epoch` at the next record boundary.
    Barrier(Epoch),
    /// Epoch `Epoch` is committed to every sink.
    Committed(Epoch),
    /// Stop reading and exit.
    Stop,
}

/// A source task's part of an epoch.
pub(crate) struct SourceAck {
    pub epoch: Epoch,
    /// Index of the source task in the job.
    pub task: usize,
    /// Position and watermark at the barrier.
    pub checkpoint: PartitionCheckpoint,
    /// Staged outputs (dead letters) by sink index.
    pub staged: Vec<Vec<u8>>,
    /// Whether the partition had ended before the barrier.
    pub ended: bool,
}

/// A shard's part of an epoch.
pub(crate) struct ShardAck {
    pub epoch: Epoch,
    /// Index of the shard task in the job.
    pub task: usize,
    /// State changes since the previous barrier.
    pub state: StateBatch,
    /// Staged outputs (results, late events) by sink index.
    pub staged: Vec<Vec<u8>>,
    /// Windows open in the shard.
    pub open_windows: u64,
    /// The shard's watermark.
    pub watermark: Timestamp,
}

/// To the coordinator.
pub(crate) enum CoordMessage {
    Source(SourceAck),
    Shard(ShardAck),
    /// Source task `usize` reached the end of its partition.
    SourceEnded(usize),
    /// A task failed; the job stops.
    Failed(String),
}

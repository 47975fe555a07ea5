//! The task runtime: source tasks, the in-process exchange to keyed shards, checkpoint
//! barriers, and the coordinator that persists epochs and commits sinks.
//!
//! Per pipeline, each source partition runs in its own task; each record goes to the shard
//! owning its key (`key_hash % shards`) over a bounded channel per (partition, shard), so keys
//! need not be local to a partition. Watermarks and checkpoint barriers travel in the same
//! channels; a shard's watermark is the minimum over its inputs, and a shard snapshots its state
//! once every input has delivered the epoch's barrier (aligned checkpoints). The coordinator
//! writes all shards' state, all positions and all staged outputs of an epoch in one atomic
//! batch, then commits every sink.

mod coordinator;
pub mod exchange;
pub mod fleet;
mod job;
mod messages;
mod metrics;
mod operator;
mod plan;
mod shard_task;
mod sink;
mod source;
mod source_task;
mod staging;

pub use job::{Connectors, Job, JobOptions, JobSummary};
pub use metrics::{FleetMetrics, JobMetrics, MetricsSnapshot};
pub use operator::Operator;
pub use sink::{Sink, SinkEncoder, SinkError, SinkScope};
pub use source::{
    DecodeContext, PartitionSelection, PollStatus, SourceBatch, SourceError, SourcePartition,
};

use crate::state::StateError;

/// Why a job could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The topology cannot be executed as written.
    #[error("configuration: {0}")]
    Config(String),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Stored checkpoint metadata is inconsistent.
    #[error("recovery: {0}")]
    Recovery(String),
    /// A source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A task failed.
    #[error("{0}")]
    Task(String),
}

/// The cores this process may use (at least 1): the default shard count of a job.
pub(crate) fn available_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Wall-clock time in ms since the Unix epoch (processing time).
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

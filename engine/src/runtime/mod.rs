//! The task runtime: source tasks, the in-process exchange to keyed shards, checkpoint
//! barriers, and the coordinator that persists epochs and commits sinks.

mod sink;
mod source;

pub use sink::{Sink, SinkEncoder, SinkError};
pub use source::{DecodeContext, PollStatus, SourceBatch, SourceError, SourcePartition};

//! The sink contract: staged, fenced, idempotent epoch commits.

use crate::checkpoint::Epoch;
use crate::event::Output;

/// Where a sink's commits come from. Sinks keep their epoch fences per (job, sink, task):
/// each task (a set of source partitions owned by one worker at a time) numbers its own
/// epochs, so two tasks never fence each other out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SinkScope {
    /// The topology's `name`.
    pub job: String,
    /// The task id: `main` for a job that reads every partition itself, else the id of the
    /// partition group (e.g. `p3`) the fleet assigned.
    pub task: String,
}

impl SinkScope {
    /// The scope of a job that reads every partition of its sources itself.
    pub fn main(job: &str) -> SinkScope {
        SinkScope {
            job: job.to_string(),
            task: "main".to_string(),
        }
    }
}

/// Errors a sink reports. `Retryable` errors are retried with backoff (the pipeline is
/// back-pressured meanwhile); `Fatal` ones stop the job.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A passing failure (server unavailable, timeout); retried with backoff.
    #[error("retryable sink error: {0}")]
    Retryable(String),
    /// A failure retrying will not fix (bad configuration, the output was modified under us).
    #[error("sink error: {0}")]
    Fatal(String),
}

/// Turns outputs into the bytes a sink stages for an epoch. Runs on the shard threads, one
/// encoder per shard; must be cheap and must not do I/O.
pub trait SinkEncoder: Send {
    /// Appends `output`, encoded, to `staged`. The framing is the sink's own; only its
    /// [`Sink::commit`] reads it back.
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>);
}

/// An output of a topology (file, console, Kafka topic, Redis, MongoDB).
///
/// The runtime drives every sink through checkpoint epochs:
/// 1. during epoch E, shards encode outputs with [`Sink::encoder`] into staged bytes;
/// 2. the staged bytes are persisted with the state and source positions of E in one atomic
///    write ("E prepared");
/// 3. [`Sink::commit`] makes E visible;
/// 4. E is marked committed.
///
/// After a crash between 2 and 4, `commit` is called again for E with the same bytes. So:
/// **`commit` must be idempotent and fenced**: applying epoch E when the sink already holds
/// E (or a later epoch) must change nothing, and applying E must first remove anything a
/// previous, unconfirmed attempt at E left behind.
pub trait Sink: Send {
    /// The sink's name in the topology.
    fn name(&self) -> &str;

    /// A fresh encoder for one shard.
    fn encoder(&self) -> Box<dyn SinkEncoder>;

    /// Prepares the sink for use after a (re)start. `committed` is the last epoch the engine
    /// knows was committed everywhere, or `None` on a fresh start. Anything the sink holds from
    /// a later, unconfirmed epoch must be discarded here or by the next `commit`.
    fn recover(&mut self, committed: Option<Epoch>) -> Result<(), SinkError>;

    /// Makes epoch `epoch`'s staged outputs visible, exactly once (see the trait docs).
    /// `staged` holds each shard's staged bytes for the epoch, concatenated in shard order.
    fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError>;
}

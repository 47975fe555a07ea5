//! The coordinator: starts checkpoint epochs, gathers every task's part, persists the epoch in
//! one atomic write, commits every sink, then marks the epoch committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::checkpoint::{position_key, staged_key, write_committed, write_prepared, Epoch};
use crate::state::{StateBatch, StateStore, Table};

use super::fleet::{persist, CheckpointReplica, Durability, LeaseGuard};
use super::messages::{CoordMessage, ShardAck, SourceAck, SourceControl};
use super::metrics::JobMetrics;
use super::sink::{Sink, SinkError};
use super::JobError;

/// What the coordinator knows of one source task.
pub(crate) struct SourceHandle {
    pub control: Sender<SourceControl>,
    /// The source's name: positions are stored per source partition.
    pub source: String,
    pub partition_id: String,
}

/// The epoch being checkpointed.
struct InFlight {
    epoch: Epoch,
    started: Instant,
    sources: Vec<Option<SourceAck>>,
    shards: Vec<Option<ShardAck>>,
}

impl InFlight {
    fn is_complete(&self) -> bool {
        self.sources.iter().all(Option::is_some) && self.shards.iter().all(Option::is_some)
    }
}

pub(crate) struct Coordinator {
    pub store: Arc<dyn StateStore>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub sources: Vec<SourceHandle>,
    pub shard_count: usize,
    pub acks: Receiver<CoordMessage>,
    pub interval: Duration,
    pub next_epoch: Epoch,
    pub stop: Arc<AtomicBool>,
    pub metrics: Arc<JobMetrics>,
    /// A fleet task's checkpoint replica, written before the local store.
    pub replica: Option<Arc<dyn CheckpointReplica>>,
    /// A fleet task's lease, checked before each sink commit.
    pub lease: Option<Arc<LeaseGuard>>,
    /// The last epoch committed (by recovery, then by this coordinator); its "committed"
    /// marker rides with the next epoch's prepared batch to the replica.
    pub last_committed: Option<Epoch>,
}

impl Coordinator {
    /// Runs epochs until every source has ended (and a last epoch committed everything) or a
    /// stop is requested (a last epoch is committed first).
    pub fn run(mut self) -> Result<(), JobError> {
        let result = self.run_epochs();
        for s in &self.sources {
            let _ = s.control.send(SourceControl::Stop);
        }
        result
    }

    fn run_epochs(&mut self) -> Result<(), JobError> {
        let mut next_checkpoint = Instant::now() + self.interval;
        let mut in_flight: Option<InFlight> = None;
        let mut ended = vec![false; self.sources.len()];
        loop {
            let all_ended = ended.iter().all(|e| *e);
            let stopping = self.stop.load(Ordering::Relaxed);
            // One epoch in flight at a time: operators rely on the previous epoch's batch being
            // durable when the next barrier reaches them (see `Operator::snapshot`).
            if in_flight.is_none() && (Instant::now() >= next_checkpoint || all_ended || stopping) {
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                for s in &self.sources {
                    // A source that is gone has failed; its failure message follows.
                    let _ = s.control.send(SourceControl::Barrier(epoch));
                }
                in_flight = Some(InFlight {
                    epoch,
                    started: Instant::now(),
                    sources: (0..self.sources.len()).map(|_| None).collect(),
                    shards: (0..self.shard_count).map(|_| None).collect(),
                });
            }
            let timeout = next_checkpoint
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(50));
            match self.acks.recv_timeout(timeout) {
                Ok(CoordMessage::Failed(reason)) => return Err(JobError::Task(reason)),
                Ok(CoordMessage::SourceEnded(task)) => {
                    if let Some(e) = ended.get_mut(task) {
                        *e = true;
                    }
                }
                Ok(CoordMessage::Source(ack)) => {
                    if let Some(f) = in_flight.as_mut().filter(|f| f.epoch == ack.epoch) {
                        let task = ack.task;
                        if let Some(slot) = f.sources.get_mut(task) {
                            *slot = Some(ack);
                        }
                    }
                }
                Ok(CoordMessage::Shard(ack)) => {
                    if let Some(f) = in_flight.as_mut().filter(|f| f.epoch == ack.epoch) {
                        let task = ack.task;
                        if let Some(slot) = f.shards.get_mut(task) {
                            *slot = Some(ack);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(JobError::Task("every task exited unexpectedly".into()))
                }
            }
            if in_flight.as_ref().is_some_and(InFlight::is_complete) {
                if let Some(f) = in_flight.take() {
                    // Sources send the end-of-input watermark before the barrier, so an epoch whose
                    // sources had all ended holds every result the input produces.
                    let finished = f.sources.iter().flatten().all(|a| a.ended);
                    // Barriers go out every interval, counted from the previous barrier: a
                    // result waits at most one interval plus one checkpoint to be committed.
                    let due = f.started + self.interval;
                    self.finish_epoch(f, finished || stopping)?;
                    next_checkpoint = due;
                    if finished || stopping {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Prepares, commits and records epoch `f`; `last` when no epoch follows it.
    fn finish_epoch(&mut self, f: InFlight, last: bool) -> Result<(), JobError> {
        let epoch = f.epoch;
        let mut batch = StateBatch::default();
        // A fleet task's previous marker, already in the local store, reaches the replica here
        // (see `EpochCommit::replicate_marker`). First: it clears staged outputs up to that
        // epoch, before this epoch's are added. Without a replica the local store has it all.
        if let (Some(previous), Some(_)) = (self.last_committed, &self.replica) {
            write_committed(&mut batch, previous);
        }
        let mut staged: Vec<Vec<u8>> = vec![Vec::new(); self.sinks.len()];
        let mut open_windows = 0;
        let mut watermark = i64::MAX;
        for ack in f.sources.into_iter().flatten() {
            if let Some(handle) = self.sources.get(ack.task) {
                batch.put(
                    Table::Positions,
                    position_key(&handle.source, &handle.partition_id),
                    ack.checkpoint.encode(),
                );
            }
            append_staged(&mut staged, ack.staged);
        }
        for mut ack in f.shards.into_iter().flatten() {
            batch.append(&mut ack.state);
            append_staged(&mut staged, ack.staged);
            open_windows += ack.open_windows;
            watermark = watermark.min(ack.watermark);
        }
        for (sink, bytes) in self.sinks.iter().zip(staged.iter()) {
            if !bytes.is_empty() {
                batch.put(Table::Staged, staged_key(epoch, sink.name()), bytes.clone());
            }
        }
        write_prepared(&mut batch, epoch);
        let aligned = f.started.elapsed();
        persist(
            self.replica.as_ref(),
            self.store.as_ref(),
            batch,
            Durability::Synced,
        )?;
        let prepared = f.started.elapsed();

        let staged: Vec<&[u8]> = staged.iter().map(Vec::as_slice).collect();
        EpochCommit {
            store: self.store.as_ref(),
            replica: self.replica.as_ref(),
            replicate_marker: last,
            lease: self.lease.as_deref(),
            stop: &self.stop,
            metrics: &self.metrics,
        }
        .run(&mut self.sinks, epoch, &staged)?;
        self.last_committed = Some(epoch);
        let committed = f.started.elapsed();
        for s in &self.sources {
            let _ = s.control.send(SourceControl::Committed(epoch));
        }

        let m = &self.metrics;
        m.epochs_committed.fetch_add(1, Ordering::Relaxed);
        m.last_epoch.store(epoch, Ordering::Relaxed);
        let took_us = f.started.elapsed().as_micros() as u64;
        m.last_checkpoint_us.store(took_us, Ordering::Relaxed);
        if let Ok(mut d) = m.checkpoint_durations_us.lock() {
            d.push(took_us);
        }
        m.open_windows.store(open_windows, Ordering::Relaxed);
        if self.shard_count > 0 {
            m.watermark.store(watermark, Ordering::Relaxed);
        }
        tracing::debug!(
            epoch,
            aligned_us = aligned.as_micros() as u64,
            prepared_us = prepared.as_micros() as u64,
            committed_us = committed.as_micros() as u64,
            total_us = took_us,
            "epoch committed"
        );
        Ok(())
    }
}

/// What committing a prepared epoch needs besides the sinks and their staged outputs.
pub(crate) struct EpochCommit<'a> {
    pub store: &'a dyn StateStore,
    pub replica: Option<&'a Arc<dyn CheckpointReplica>>,
    /// Whether the "committed" marker is replicated now (a task's last epoch, a recovery) or
    /// only written locally, reaching the replica with the next epoch's prepared batch. A
    /// replica without it makes the next owner commit the epoch again, a no-op behind the sink
    /// fences; waiting saves a replica write (a changelog transaction) per checkpoint.
    pub replicate_marker: bool,
    /// A fleet task's lease, checked before each sink commit.
    pub lease: Option<&'a LeaseGuard>,
    pub stop: &'a AtomicBool,
    pub metrics: &'a JobMetrics,
}

impl EpochCommit<'_> {
    /// Commits `epoch` to each sink with its staged outputs (`staged[i]` for `sinks[i]`),
    /// retrying passing failures, then records the epoch committed. The marker is not synced:
    /// if an operating-system crash loses it, recovery commits the prepared epoch again from
    /// its staged outputs, which the sink fences make a no-op.
    pub fn run(
        &self,
        sinks: &mut [Box<dyn Sink>],
        epoch: Epoch,
        staged: &[&[u8]],
    ) -> Result<(), JobError> {
        for (sink, bytes) in sinks.iter_mut().zip(staged) {
            if let Some(lease) = self.lease {
                lease.check()?;
            }
            commit_with_retry(sink.as_mut(), epoch, bytes, self.stop, self.metrics)?;
        }
        let mut done = StateBatch::default();
        write_committed(&mut done, epoch);
        let replica = self.replica.filter(|_| self.replicate_marker);
        persist(replica, self.store, done, Durability::Unsynced)
    }
}

fn append_staged(into: &mut [Vec<u8>], from: Vec<Vec<u8>>) {
    for (dst, mut src) in into.iter_mut().zip(from) {
        if dst.is_empty() {
            *dst = src;
        } else {
            dst.append(&mut src);
        }
    }
}

/// Commits `epoch` to `sink`, retrying passing failures with backoff. While this waits, the
/// tasks keep running until their channels fill, which back-pressures the sources.
pub(crate) fn commit_with_retry(
    sink: &mut dyn Sink,
    epoch: Epoch,
    staged: &[u8],
    stop: &AtomicBool,
    metrics: &JobMetrics,
) -> Result<(), JobError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sink.commit(epoch, staged) {
            Ok(()) => {
                metrics.commit_failing.store(false, Ordering::Relaxed);
                return Ok(());
            }
            Err(SinkError::Retryable(reason)) => {
                metrics.sink_retries.fetch_add(1, Ordering::Relaxed);
                metrics.commit_failing.store(true, Ordering::Relaxed);
                tracing::warn!(sink = sink.name(), epoch, %reason, "sink commit failed; retrying");
                if stop.load(Ordering::Relaxed) && backoff >= Duration::from_secs(5) {
                    // The epoch stays prepared; the next start re-commits it.
                    return Err(JobError::Sink(SinkError::Retryable(reason)));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(JobError::Sink(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SinkEncoder;

    /// A sink that fails its first commits with a passing error and records whether the worker
    /// counted as ready at each attempt.
    struct Flaky {
        failures_left: usize,
        metrics: Arc<JobMetrics>,
        ready_at_attempts: Vec<bool>,
        committed: Vec<(Epoch, Vec<u8>)>,
    }

    impl Sink for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn encoder(&self) -> Box<dyn SinkEncoder> {
            unreachable!("not used by commit_with_retry")
        }
        fn recover(&mut self, _committed: Option<Epoch>) -> Result<(), SinkError> {
            Ok(())
        }
        fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
            self.ready_at_attempts.push(self.metrics.is_ready());
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(SinkError::Retryable("server unavailable".into()));
            }
            self.committed.push((epoch, staged.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn a_failing_commit_is_retried_and_makes_the_worker_unready_meanwhile() {
        let metrics = Arc::new(JobMetrics::default());
        metrics.running.store(true, Ordering::Relaxed);
        let mut sink = Flaky {
            failures_left: 2,
            metrics: metrics.clone(),
            ready_at_attempts: Vec::new(),
            committed: Vec::new(),
        };
        let stop = AtomicBool::new(false);
        commit_with_retry(&mut sink, 7, b"lines", &stop, &metrics).unwrap();
        assert_eq!(sink.ready_at_attempts, vec![true, false, false]);
        assert_eq!(sink.committed, vec![(7, b"lines".to_vec())]);
        assert!(
            metrics.is_ready(),
            "ready again once the commit went through"
        );
        assert_eq!(metrics.sink_retries.load(Ordering::Relaxed), 2);
        assert!(metrics.prometheus().contains("weir_ready 1\n"));
    }

    #[test]
    fn a_fatal_commit_error_is_not_retried() {
        struct Broken;
        impl Sink for Broken {
            fn name(&self) -> &str {
                "broken"
            }
            fn encoder(&self) -> Box<dyn SinkEncoder> {
                unreachable!("not used by commit_with_retry")
            }
            fn recover(&mut self, _: Option<Epoch>) -> Result<(), SinkError> {
                Ok(())
            }
            fn commit(&mut self, _: Epoch, _: &[u8]) -> Result<(), SinkError> {
                Err(SinkError::Fatal("output modified".into()))
            }
        }
        let metrics = JobMetrics::default();
        let err = commit_with_retry(&mut Broken, 1, b"", &AtomicBool::new(false), &metrics);
        assert!(matches!(err, Err(JobError::Sink(SinkError::Fatal(_)))));
        assert_eq!(metrics.sink_retries.load(Ordering::Relaxed), 0);
    }
}

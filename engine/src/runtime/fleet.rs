//! A fleet of workers sharing a job: each source partition is a *task* owned by exactly one
//! worker at a time, through leases; each task's checkpoints are replicated outside the worker,
//! so when a worker dies another takes its tasks over with their window state.
//!
//! A task is run as its own [`Job`] over one partition, with its own epochs, its own state
//! directory (a cache of the replica) and sink fences scoped to the task. The epoch protocol is
//! unchanged; the replica is written before the local store at each step, and only while the
//! worker holds the task's lease, so a worker that lost its lease can neither prepare nor
//! confirm an epoch. A new owner reads the replica: an epoch prepared there but not confirmed
//! is committed again from its staged outputs (sink fences make that a no-op where it landed).
//!
//! Balancing: every worker heartbeats; with `n` partitions and `w` live workers each worker
//! aims at `ceil(n / w)` tasks, releasing extra tasks gracefully (a last checkpoint, then the
//! lease) and taking free ones. A dead worker's leases expire after the lease TTL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::{read_progress, Progress};
use crate::state::{RocksStateStore, StateBatch, StateError, StateStore};
use crate::topology::Topology;

use super::job::{Connectors, Job, JobOptions};
use super::metrics::FleetMetrics;
use super::source::PartitionSelection;
use super::JobError;

/// Errors of a checkpoint replica or a lease backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    /// This worker no longer holds the task's lease; it must stop the task.
    #[error("lease lost: {0}")]
    Fenced(String),
    /// A passing failure (server unavailable); retried with backoff.
    #[error("retryable fleet error: {0}")]
    Retryable(String),
    /// A failure retrying will not fix.
    #[error("fleet error: {0}")]
    Fatal(String),
}

/// A durable copy of one task's checkpoint state outside the worker (a changelog). Holds every
/// table the local store holds, as of the last batch replicated.
pub trait CheckpointReplica: Send + Sync {
    /// The epochs recorded in the replica (to tell whether a local cache is current).
    fn progress(&self) -> Result<Progress, FleetError>;

    /// Copies every replicated entry into `store`, which is empty. Returns the entry count.
    fn restore(&self, store: &dyn StateStore) -> Result<u64, FleetError>;

    /// Applies `batch` atomically, only while the lease this replica was opened with is still
    /// held ([`FleetError::Fenced`] otherwise, changing nothing).
    fn replicate(&self, batch: &StateBatch) -> Result<(), FleetError>;
}

/// Where workers meet: liveness, task leases and checkpoint replicas.
pub trait FleetBackend: Send + Sync {
    /// Records that `worker` is alive for `ttl`; returns how many workers are alive.
    fn heartbeat(&self, worker: &str, ttl: Duration) -> Result<u32, FleetError>;

    /// Takes the lease of `task` for `ttl` if nobody holds it; returns the lease token.
    fn acquire(
        &self,
        task: &str,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<String>, FleetError>;

    /// Extends a held lease; `false` when it was lost (expired and maybe taken).
    fn renew(&self, task: &str, token: &str, ttl: Duration) -> Result<bool, FleetError>;

    /// Gives a held lease up (no-op when it was lost).
    fn release(&self, task: &str, token: &str) -> Result<(), FleetError>;

    /// Leaves the fleet: the worker no longer counts as alive.
    fn leave(&self, worker: &str) -> Result<(), FleetError>;

    /// The replica of `task`, fenced by the lease `token`.
    fn replica(&self, task: &str, token: &str) -> Result<Arc<dyn CheckpointReplica>, FleetError>;

    /// Called when `task` starts on this worker. Backends whose ownership is taken away from
    /// outside (a Kafka group rebalance) keep `control` to stop the task, with a last
    /// checkpoint, before they give the partition up. Default: nothing.
    fn task_started(&self, _task: &str, _control: TaskControl) {}

    /// Whether a held task can be lost by time alone (a lease TTL) rather than only by an
    /// event the backend reports; tasks then check a [`LeaseGuard`] before each commit.
    /// Default: `true`.
    fn leases_expire(&self) -> bool {
        true
    }

    /// How often the worker heartbeats, renews and rebalances. Default: a third of the lease.
    fn poll_interval(&self, lease_ttl: Duration) -> Duration {
        lease_ttl / 3
    }

    /// Waits between two rounds of the worker's loop: at most `timeout`, less once `stop` is
    /// set, and less when the backend learns of a change in what this worker should run (a
    /// group's assignment), so the loop acts on it at once rather than a tick later.
    /// Default: sleeps, looking at `stop` every 20 ms.
    fn wait(&self, timeout: Duration, stop: &AtomicBool) {
        sleep_unless_stopped(timeout, stop);
    }
}

/// A handle on a running task for its fleet backend.
#[derive(Debug, Clone)]
pub struct TaskControl {
    /// Set to ask the task to finish: it commits a last epoch and stops.
    pub stop: Arc<AtomicBool>,
    /// Becomes `true` once the task has stopped (whatever the outcome).
    pub finished: Arc<AtomicBool>,
}

impl TaskControl {
    /// Asks the task to stop and waits until it has, for at most `timeout`; `true` when it
    /// stopped in time.
    pub fn stop_and_wait(&self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        let until = Instant::now() + timeout;
        while !self.finished.load(Ordering::Acquire) {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// How long a task may still act on its lease, as the worker last renewed it. A task checks it
/// before each sink commit: a worker whose loop stalled past half its lease stops the task
/// without writing, instead of writing while another worker may already own the task.
#[derive(Debug)]
pub struct LeaseGuard {
    /// Monotonic ms (see [`monotonic_ms`]) until which the lease surely holds.
    valid_until_ms: AtomicU64,
    /// How much of the lease must be left for a commit to start.
    margin_ms: u64,
}

impl LeaseGuard {
    /// A guard for a lease of `ttl`, valid for `ttl` from `asked_at_ms` (when the request
    /// that took it was sent).
    pub fn new(ttl: Duration, asked_at_ms: u64) -> LeaseGuard {
        let ttl_ms = ttl.as_millis() as u64;
        LeaseGuard {
            valid_until_ms: AtomicU64::new(asked_at_ms + ttl_ms),
            margin_ms: ttl_ms / 2,
        }
    }

    /// Records a renewal of `ttl` requested at `asked_at_ms`.
    pub fn renewed(&self, ttl: Duration, asked_at_ms: u64) {
        self.valid_until_ms
            .fetch_max(asked_at_ms + ttl.as_millis() as u64, Ordering::Relaxed);
    }

    /// `Ok` while at least half the lease is left; else an error that stops the task.
    pub fn check(&self) -> Result<(), JobError> {
        let left = self
            .valid_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(monotonic_ms());
        if left < self.margin_ms {
            return Err(JobError::Task(format!(
                "the task's lease has {left} ms left, less than the {} ms a commit may take; \
                 stopping without committing (the next owner re-commits the epoch)",
                self.margin_ms
            )));
        }
        Ok(())
    }
}

/// Milliseconds on a monotonic clock shared by the whole process.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How a worker joins a fleet.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This worker's name; unique in the fleet (default: host name and process id).
    pub worker_id: String,
    /// How long a lease lasts without renewal: a dead worker's tasks move after this.
    pub lease_ttl: Duration,
    /// Overrides `parallelism.shards` of each task. Without it (or `parallelism.shards`), a
    /// task gets the cores divided among the source's partitions (at least 1): a worker may
    /// run every partition's task, and each task's shards are threads of their own.
    pub shards: Option<u32>,
    /// Set to leave gracefully: every task commits a last epoch and releases its lease.
    pub stop: Arc<AtomicBool>,
    /// Where the worker reports its tasks, restores and each task's job metrics.
    pub metrics: Arc<FleetMetrics>,
}

/// The id of the task reading partition `index`.
pub fn task_id(index: u32) -> String {
    format!("p{index}")
}

/// The local state directory (a replica cache) of `task` under the topology's state dir.
pub fn task_state_dir(state_dir: &Path, task: &str) -> PathBuf {
    state_dir.join("tasks").join(task)
}

struct RunningTask {
    token: String,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), JobError>>,
    /// Asked to stop (handed over, or the worker leaves): it still holds its lease, renewed
    /// until its last checkpoint is done, then released.
    leaving: bool,
    /// Its lease was lost: it is stopping and is no longer renewed.
    lost: bool,
    /// What the task checks before committing, when leases expire.
    lease: Option<Arc<LeaseGuard>>,
}

impl RunningTask {
    /// Asks the task to finish with a last checkpoint; the loop releases it once it has.
    fn ask_to_leave(&mut self) {
        self.leaving = true;
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs this worker's share of `topology`'s tasks until a stop is requested (then releases
/// every task after a last checkpoint). The topology must have exactly one source.
pub fn run_worker(
    topology: &Topology,
    connectors: Arc<dyn Connectors + Send + Sync>,
    backend: Arc<dyn FleetBackend>,
    options: WorkerOptions,
) -> Result<(), JobError> {
    let (source_name, source_spec) =
        match topology.sources.iter().collect::<Vec<_>>()[..] {
            [(name, spec)] => (name.clone(), spec.clone()),
            _ => return Err(JobError::Config(
                "a fleet runs topologies with exactly one source (its partitions are the tasks)"
                    .into(),
            )),
        };
    let partitions = connectors.partition_count(&source_name, &source_spec)?;
    let options = WorkerOptions {
        shards: Some(task_shards(options.shards, topology, partitions)),
        ..options
    };
    let ttl = options.lease_ttl.max(Duration::from_millis(300));
    let tick = backend.poll_interval(ttl);
    let mut running: BTreeMap<u32, RunningTask> = BTreeMap::new();
    // Tasks whose bounded input ended here; not taken again by this worker.
    let mut done: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    // Workers start scanning for free tasks at different partitions, so they do not all race
    // for the same lease.
    let offset = (crate::event::Key::from_bytes(options.worker_id.as_bytes()).stable_hash()
        % u64::from(partitions.max(1))) as u32;
    tracing::info!(worker = %options.worker_id, partitions, "joined the fleet");

    // The loop never waits for a task: stopping tasks finish on their own threads while the
    // loop keeps renewing every lease it holds, so a slow last checkpoint cannot let another
    // lease expire and hand a still-running task to a second worker.
    let result = loop {
        let stopping = options.stop.load(Ordering::Relaxed);
        if stopping {
            for t in running.values_mut() {
                if !t.leaving {
                    t.ask_to_leave();
                }
            }
        }
        let live = match backend.heartbeat(&options.worker_id, ttl) {
            Ok(n) => n.max(1),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                std::thread::sleep(tick);
                continue;
            }
        };

        // Tasks that ended: a failure is logged and the task released, so another worker (or
        // this one, later) takes it over from its replica.
        let finished: Vec<u32> = running
            .iter()
            .filter(|(_, t)| t.thread.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in finished {
            if let Some(t) = running.remove(&p) {
                let stopped = t.stop.load(Ordering::Relaxed);
                match t.thread.join() {
                    Ok(Ok(())) if stopped => {
                        tracing::info!(task = %task_id(p), "task stopped on request")
                    }
                    Ok(Ok(())) => {
                        tracing::info!(task = %task_id(p), "task finished: its input ended");
                        done.insert(p);
                    }
                    Ok(Err(e)) => tracing::error!(task = %task_id(p), error = %e, "task failed"),
                    Err(_) => tracing::error!(task = %task_id(p), "task panicked"),
                }
                if let Err(e) = backend.release(&task_id(p), &t.token) {
                    tracing::warn!(task = %task_id(p), error = %e, "cannot release the lease; it expires");
                }
            }
        }
        if stopping && running.is_empty() {
            break Ok(());
        }

        // Renew what we hold, stopping tasks included; a lost lease stops the task (its
        // replica writes are fenced anyway).
        for (p, t) in running.iter_mut().filter(|(_, t)| !t.lost) {
            let asked = monotonic_ms();
            match backend.renew(&task_id(*p), &t.token, ttl) {
                Ok(true) => {
                    if let Some(lease) = &t.lease {
                        lease.renewed(ttl, asked);
                    }
                }
                Ok(false) => {
                    tracing::warn!(task = %task_id(*p), "lease lost; stopping the task");
                    t.lost = true;
                    t.stop.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(task = %task_id(*p), error = %e, "lease renewal failed"),
            }
        }

        let target = partitions.div_ceil(live) as usize;
        let active = running.values().filter(|t| !t.leaving && !t.lost).count();
        if stopping {
            // Leaving: take nothing new.
        } else if active > target {
            // Hand the highest tasks back gracefully: last checkpoint, then release.
            let extra: Vec<u32> = running
                .iter()
                .filter(|(_, t)| !t.leaving && !t.lost)
                .map(|(p, _)| *p)
                .rev()
                .take(active - target)
                .collect();
            for p in extra {
                if let Some(t) = running.get_mut(&p) {
                    tracing::info!(task = %task_id(p), live, "handing the task over");
                    t.ask_to_leave();
                }
            }
        } else if active < target {
            let mut active = active;
            for i in 0..partitions {
                if active >= target {
                    break;
                }
                let p = (offset + i) % partitions;
                if running.contains_key(&p) || done.contains(&p) {
                    continue;
                }
                let asked = monotonic_ms();
                match backend.acquire(&task_id(p), &options.worker_id, ttl) {
                    Ok(Some(token)) => {
                        let lease = backend
                            .leases_expire()
                            .then(|| Arc::new(LeaseGuard::new(ttl, asked)));
                        let task = start_task(
                            topology,
                            &connectors,
                            &backend,
                            (p, &token, lease),
                            &options,
                        );
                        match task {
                            Ok(t) => {
                                running.insert(p, t);
                                active += 1;
                            }
                            Err(e) => {
                                tracing::error!(task = %task_id(p), error = %e, "cannot start the task");
                                let _ = backend.release(&task_id(p), &token);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(task = %task_id(p), error = %e, "lease request failed")
                    }
                }
            }
        }
        if stopping {
            // Renew often enough while the last checkpoints run, without waiting for a stop.
            std::thread::sleep(tick.min(Duration::from_millis(100)));
        } else {
            backend.wait(tick, &options.stop);
        }
    };

    let _ = backend.leave(&options.worker_id);
    result
}

/// Keyed shards of each task: `configured` (the command line), else `parallelism.shards`,
/// else the cores divided among the `partitions` (rounded up, at least 1).
fn task_shards(configured: Option<u32>, topology: &Topology, partitions: u32) -> u32 {
    configured
        .or(topology.parallelism.shards)
        .unwrap_or_else(|| super::available_cores().div_ceil(partitions.max(1)))
        .max(1)
}

/// Sleeps for `d`, or less once `stop` is set (looked at every 20 ms).
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_task(
    topology: &Topology,
    connectors: &Arc<dyn Connectors + Send + Sync>,
    backend: &Arc<dyn FleetBackend>,
    (partition, token, lease): (u32, &str, Option<Arc<LeaseGuard>>),
    options: &WorkerOptions,
) -> Result<RunningTask, JobError> {
    let task = task_id(partition);
    let stop = Arc::new(AtomicBool::new(false));
    let topology = topology.clone();
    let connectors = connectors.clone();
    let finished = Arc::new(AtomicBool::new(false));
    let finished_flag = finished.clone();
    let (thread_backend, thread_task, thread_token) =
        (backend.clone(), task.clone(), token.to_string());
    let (shards, thread_stop, metrics) = (options.shards, stop.clone(), options.metrics.clone());
    let thread_lease = lease.clone();
    // Opening the replica and restoring state run on the task's thread: they can take seconds,
    // and the worker loop must keep heartbeating (a Kafka group member that stops polling is
    // dropped from the group, which rebalances every worker).
    let thread = std::thread::Builder::new()
        .name(format!("weir-task-{task}"))
        .spawn(move || {
            metrics.tasks_started.fetch_add(1, Ordering::Relaxed);
            metrics.tasks_running.fetch_add(1, Ordering::Relaxed);
            let result = open_task(
                &topology,
                &*thread_backend,
                &thread_task,
                &thread_token,
                &metrics,
            )
            .and_then(|(replica, dir, store)| {
                let job_options = JobOptions {
                    shards,
                    stop: thread_stop,
                    selection: PartitionSelection::Only(vec![partition]),
                    task: Some(thread_task.clone()),
                    state_dir: Some(dir),
                    store: Some(Arc::new(store)),
                    replica: Some(replica),
                    lease: thread_lease,
                };
                Job::build(&topology, connectors.as_ref(), job_options)
            })
            .and_then(|job| {
                metrics.add_task(&thread_task, job.metrics());
                job.run().map(drop)
            });
            metrics.remove_task(&thread_task);
            metrics.tasks_running.fetch_sub(1, Ordering::Relaxed);
            finished_flag.store(true, Ordering::Release);
            result
        })
        .map_err(|e| JobError::Task(format!("cannot start a thread: {e}")))?;
    backend.task_started(
        &task,
        TaskControl {
            stop: stop.clone(),
            finished,
        },
    );
    tracing::info!(task = %task, "task started");
    Ok(RunningTask {
        token: token.to_string(),
        stop,
        thread,
        leaving: false,
        lost: false,
        lease,
    })
}

/// Opens `task`'s replica under the lease `token` and makes its local state directory hold
/// the replica's state; returns the replica, the directory and its store, open.
fn open_task(
    topology: &Topology,
    backend: &dyn FleetBackend,
    task: &str,
    token: &str,
    metrics: &FleetMetrics,
) -> Result<(Arc<dyn CheckpointReplica>, PathBuf, RocksStateStore), JobError> {
    let replica = backend.replica(task, token).map_err(fleet_to_job)?;
    let dir = task_state_dir(Path::new(&topology.state.dir), task);
    let store = prepare_local_state(&dir, replica.as_ref(), task, metrics)?;
    Ok((replica, dir, store))
}

/// Makes `dir` hold the replica's state and returns its store, open: the local store is
/// reused when it holds the same prepared epoch as the replica (this worker held the task
/// last) and a "committed" marker at least as recent (the replica receives an epoch's marker
/// with the next epoch's batch), else it is rebuilt from the replica.
fn prepare_local_state(
    dir: &Path,
    replica: &dyn CheckpointReplica,
    task: &str,
    metrics: &FleetMetrics,
) -> Result<RocksStateStore, JobError> {
    // Opening a store writes and syncs files (tens of milliseconds on a busy machine): it
    // runs while the replica is asked for its progress.
    let existed = dir.exists();
    let (remote, opened) = std::thread::scope(|scope| {
        let opening = scope.spawn(|| RocksStateStore::open(dir));
        let remote = replica.progress();
        let opened = opening.join().unwrap_or_else(|_| {
            Err(StateError::Store(format!(
                "opening the state store {} panicked",
                dir.display()
            )))
        });
        (remote, opened)
    });
    let remote = remote.map_err(fleet_to_job)?;
    let opened = match opened {
        Ok(store) if existed => match read_progress(&store) {
            Ok(local)
                if local.prepared == remote.prepared && local.committed >= remote.committed =>
            {
                tracing::info!(task, ?remote, "local state is current; reusing it");
                return Ok(store);
            }
            _ => None,
        },
        Ok(store) => Some(store),
        Err(e) if !existed => return Err(e.into()),
        Err(_) => None,
    };
    let store = match opened {
        Some(store) => store,
        None => {
            std::fs::remove_dir_all(dir)
                .map_err(|e| JobError::Task(format!("cannot clear {}: {e}", dir.display())))?;
            RocksStateStore::open(dir)?
        }
    };
    let started = Instant::now();
    let entries = replica.restore(&store).map_err(fleet_to_job)?;
    if entries > 0 {
        store.flush()?;
    }
    let restore_ms = started.elapsed().as_millis() as u64;
    metrics.record_restore(entries, restore_ms);
    tracing::info!(
        task,
        entries,
        restore_ms,
        ?remote,
        "state restored from the replica"
    );
    Ok(store)
}

pub(crate) fn fleet_to_job(e: FleetError) -> JobError {
    JobError::Task(e.to_string())
}

/// How a batch is written to the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced to disk before returning ([`StateStore::write`]).
    Synced,
    /// Survives a process crash; made durable by the next synced write
    /// ([`StateStore::write_unsynced`]). For what a crash may lose without harm.
    Unsynced,
}

/// Replicates `batch` (when there is a replica), retrying passing failures with backoff, then
/// writes it to the local store. A lost lease is an error: the task must stop.
///
/// With a replica the local write is never synced: the replica is the durable copy, and a
/// local store that an operating-system crash set back no longer matches the replica's
/// progress, so the next start rebuilds it from the replica (see `prepare_local_state`).
pub(crate) fn persist(
    replica: Option<&Arc<dyn CheckpointReplica>>,
    store: &dyn StateStore,
    batch: StateBatch,
    durability: Durability,
) -> Result<(), JobError> {
    if let Some(replica) = replica {
        let mut backoff = Duration::from_millis(100);
        loop {
            match replica.replicate(&batch) {
                Ok(()) => break,
                Err(FleetError::Retryable(reason)) => {
                    tracing::warn!(%reason, "checkpoint replication failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(fleet_to_job(e)),
            }
        }
    }
    if durability == Durability::Synced && replica.is_none() {
        store.write(batch)?;
    } else {
        store.write_unsynced(batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{write_committed, write_prepared, Epoch};

    /// A replica at fixed epochs whose restore only counts its calls.
    struct FixedReplica(Progress);

    impl CheckpointReplica for FixedReplica {
        fn progress(&self) -> Result<Progress, FleetError> {
            Ok(self.0)
        }
        fn restore(&self, _store: &dyn StateStore) -> Result<u64, FleetError> {
            Ok(0)
        }
        fn replicate(&self, _batch: &StateBatch) -> Result<(), FleetError> {
            Ok(())
        }
    }

    /// Whether `prepare_local_state` rebuilt a local store at (`prepared`, `committed`) for a
    /// replica at `remote`.
    fn rebuilt(prepared: Epoch, committed: Epoch, remote: Progress) -> bool {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("p0");
        {
            let store = RocksStateStore::open(&dir).unwrap();
            let mut batch = StateBatch::default();
            write_prepared(&mut batch, prepared);
            write_committed(&mut batch, committed);
            store.write(batch).unwrap();
        }
        let metrics = FleetMetrics::default();
        prepare_local_state(&dir, &FixedReplica(remote), "p0", &metrics).unwrap();
        metrics.restores.load(Ordering::Relaxed) == 1
    }

    #[test]
    fn a_local_store_is_reused_only_at_the_replicas_prepared_epoch_and_a_marker_as_recent() {
        let at = |prepared, committed| Progress {
            prepared: Some(prepared),
            committed: Some(committed),
        };
        assert!(!rebuilt(5, 5, at(5, 5)), "same epochs");
        // The replica receives an epoch's marker with the next epoch's batch.
        assert!(!rebuilt(5, 5, at(5, 4)), "marker not yet replicated");
        assert!(rebuilt(5, 4, at(5, 5)), "local marker behind the replica's");
        assert!(rebuilt(4, 4, at(5, 4)), "local state behind");
        assert!(rebuilt(6, 5, at(5, 5)), "local state ahead of the replica");
    }

    #[test]
    fn a_lease_guard_refuses_commits_in_the_second_half_of_the_lease() {
        let ttl = Duration::from_millis(200);
        let guard = LeaseGuard::new(ttl, monotonic_ms());
        assert!(guard.check().is_ok());
        // More than half the lease has passed without a renewal.
        std::thread::sleep(Duration::from_millis(120));
        assert!(guard.check().is_err());
        // A renewal requested now restores it; an older renewal never shortens it.
        guard.renewed(ttl, monotonic_ms());
        guard.renewed(ttl, 0);
        assert!(guard.check().is_ok());
    }
}

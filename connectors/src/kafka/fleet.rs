//! A fleet backend on Kafka's consumer-group protocol: the group's assignments decide which
//! worker runs which partition's task, and the changelog topic holds each task's replica.
//!
//! Each worker has one group member that subscribes to the source topics but fetches nothing
//! (its partitions are paused): task readers have their own consumers, assigned to one
//! partition each. On a revoke, the member stops the revoked tasks (each commits a last epoch)
//! before it lets the rebalance go on, so the next owner starts from a fresh checkpoint. On
//! a crash, the group notices after `session_timeout_ms` and the next owner fences the dead
//! worker's transactional producers as it opens the task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};
use weir_engine::runtime::fleet::{CheckpointReplica, FleetBackend, FleetError, TaskControl};

use super::changelog::ChangelogReplica;
use super::client::SetDefault;
use super::client::{client_config, ensure_topic, TopicError, TopicSpec};
use super::config::{KafkaFleetConfig, KafkaSourceConfig};
use super::offsets::{self, PendingOffsets};
use super::read_ahead;
use super::source::task_partitions;

/// What the group member's callbacks share with the backend.
#[derive(Default)]
struct Shared {
    /// Partitions the group assigned to this worker.
    assigned: Mutex<BTreeSet<(String, i32)>>,
    /// Running tasks by partition.
    controls: Mutex<BTreeMap<(String, i32), TaskControl>>,
    /// Rebalance callbacks served so far: [`KafkaFleet::wait`] returns when it changes.
    rebalances: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The member's rebalance callbacks.
struct MemberContext {
    shared: Arc<Shared>,
    /// The source, whose partitions may have been read ahead (`read_ahead`).
    source: KafkaSourceConfig,
    /// How long a revoke waits for a task's last checkpoint before giving the partition up.
    revoke_wait: Duration,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let revoked: Vec<(String, i32)> = match rebalance {
            Rebalance::Revoke(tpl) => tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "group rebalance error; stopping every task");
                lock(&self.shared.assigned).iter().cloned().collect()
            }
            Rebalance::Assign(_) => return,
        };
        self.shared.rebalances.fetch_add(1, Ordering::Release);
        tracing::info!(partitions = ?revoked, "group revoked partitions; stopping their tasks");
        for tp in &revoked {
            lock(&self.shared.assigned).remove(tp);
        }
        // Stop all revoked tasks at once, then wait: their last checkpoints run in parallel.
        let controls: Vec<((String, i32), TaskControl)> = {
            let mut controls = lock(&self.shared.controls);
            revoked
                .iter()
                .filter_map(|tp| controls.remove(tp).map(|c| (tp.clone(), c)))
                .collect()
        };
        for (_, control) in &controls {
            control.stop.store(true, Ordering::Relaxed);
        }
        for ((topic, partition), control) in controls {
            if control.stop_and_wait(self.revoke_wait) {
                tracing::info!(%topic, partition, "partition revoked; its task checkpointed and stopped");
            } else {
                tracing::warn!(%topic, partition, "partition revoked; its task did not stop in time (its writes are fenced by the next owner)");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Task readers fetch; the member only holds the assignment.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "cannot pause the member's partitions");
            }
            let mut assigned = lock(&self.shared.assigned);
            for e in tpl.elements() {
                assigned.insert((e.topic().to_string(), e.partition()));
            }
            tracing::info!(partitions = ?*assigned, "group assigned partitions");
            read_ahead::keep_only(&self.source, &assigned);
            self.shared.rebalances.fetch_add(1, Ordering::Release);
        }
    }
}

/// Whether `group` has no members now; `false` when the broker cannot say. `topic` is one
/// the client will read.
fn group_is_empty<C: ConsumerContext>(client: &BaseConsumer<C>, group: &str, topic: &str) -> bool {
    // librdkafka's group listing first waits for the client's first metadata, by waiting for
    // a broker state change; metadata that arrives after the change that woke it leaves it
    // waiting for the next one: about 1 s, in 9 of 12 worker starts of the benchmark.
    // Asking for a topic's metadata first returns once the client has metadata.
    if let Err(e) = client.fetch_metadata(Some(topic), GROUP_LIST_TIMEOUT) {
        tracing::debug!(%group, error = %e, "cannot read metadata; not reading ahead");
        return false;
    }
    match client.fetch_group_list(Some(group), GROUP_LIST_TIMEOUT) {
        Ok(list) => list
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .all(|g| g.members().is_empty()),
        Err(e) => {
            tracing::debug!(%group, error = %e, "cannot describe the group; not reading ahead");
            false
        }
    }
}

/// The Kafka fleet backend of one worker.
pub struct KafkaFleet {
    source: KafkaSourceConfig,
    job: String,
    group: String,
    client: ClientConfig,
    changelog: String,
    /// (topic, partition) of each task index.
    tasks: Vec<(String, i32)>,
    member: BaseConsumer<MemberContext>,
    shared: Arc<Shared>,
    pending: PendingOffsets,
    /// When the member's assignment was last compared with the partitions it believes held.
    last_assignment_check: Mutex<Instant>,
    /// When reported offsets were last committed.
    last_offset_commit: Mutex<Instant>,
}

impl KafkaFleet {
    /// Joins `source`'s consumer group for job `job` and makes sure the changelog topic
    /// (`<job>-changelog`, compacted, one partition per task) exists. The group member's
    /// `client.id` is `weir-<job>-<worker_id>` unless the source's settings give one, so a
    /// group listing tells which worker each member is.
    pub fn join(
        job: &str,
        source: &KafkaSourceConfig,
        config: &KafkaFleetConfig,
        worker_id: Option<&str>,
    ) -> Result<KafkaFleet, FleetError> {
        let client = client_config(&source.brokers, &source.settings);
        let tasks = task_partitions(source).map_err(|e| FleetError::Fatal(e.to_string()))?;
        let shared = Arc::new(Shared::default());
        let mut member_config = client.clone();
        member_config
            .set("group.id", &source.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                "max.poll.interval.ms",
                config
                    .rebalance_timeout_ms
                    .max(config.session_timeout_ms)
                    .to_string(),
            )
            .set_default(
                "heartbeat.interval.ms",
                (config.session_timeout_ms / 4).max(100).to_string(),
            )
            // A worker joining or leaving moves only the partitions it takes or gives: the
            // other tasks keep running instead of all stopping at every rebalance.
            .set_default("partition.assignment.strategy", "cooperative-sticky");
        // `client_config` names every client `weir`; a user's own `client.id` is kept.
        let user_client_id = source.settings.contains_key("client.id");
        if let (Some(worker), false) = (worker_id, user_client_id) {
            member_config.set("client.id", format!("weir-{job}-{worker}"));
        }
        let member: BaseConsumer<MemberContext> = member_config
            .create_with_context(MemberContext {
                shared: shared.clone(),
                source: source.clone(),
                revoke_wait: Duration::from_millis(config.rebalance_timeout_ms / 2),
            })
            .map_err(|e| FleetError::Fatal(format!("group member: {e}")))?;
        // Asked before this member joins: an empty group is one this worker may get whole.
        let alone = config.read_ahead
            && source
                .topics
                .first()
                .is_some_and(|topic| group_is_empty(&member, &source.group, topic));
        let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
        member
            .subscribe(&topics)
            .map_err(|e| FleetError::Fatal(format!("cannot subscribe: {e}")))?;
        // After subscribing: the broker's first join of a group takes a while, and the topic
        // is made meanwhile (the member's callbacks run only when the worker polls it).
        let changelog = format!("{job}-changelog");
        ensure_topic(
            &client,
            &TopicSpec {
                name: changelog.clone(),
                partitions: tasks.len() as u32,
                compacted: true,
                replication: source.replication_factor,
            },
        )
        .map_err(|e| match e {
            TopicError::Missing(m) => FleetError::Fatal(m),
            TopicError::Unavailable(m) => FleetError::Retryable(m),
        })?;
        // After the topic is made: the read-ahead's fetches keep the broker busy.
        if alone {
            read_ahead::start(source, tasks.clone());
        }
        let pending = offsets::register(&source.group);
        Ok(KafkaFleet {
            source: source.clone(),
            job: job.to_string(),
            group: source.group.clone(),
            client,
            changelog,
            tasks,
            member,
            shared,
            pending,
            last_assignment_check: Mutex::new(Instant::now()),
            last_offset_commit: Mutex::new(Instant::now()),
        })
    }

    fn partition_of(&self, task: &str) -> Result<&(String, i32), FleetError> {
        task.strip_prefix('p')
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.tasks.get(i))
            .ok_or_else(|| FleetError::Fatal(format!("unknown task `{task}`")))
    }

    /// Serves one event of the group member (a rebalance runs its callbacks here), waiting
    /// at most `wait` for it. A record fetched before its partition was paused is dropped:
    /// task readers read it.
    fn poll_member(&self, wait: Duration) {
        match self.member.poll(wait) {
            Some(Ok(_)) | None => {}
            Some(Err(e)) => tracing::debug!(error = %e, "group member event"),
        }
    }

    /// Commits the reported offsets (asynchronously) if [`OFFSET_COMMIT_INTERVAL`] passed
    /// since the last commit. A commit that reaches the broker during a rebalance is refused
    /// with an invalid generation, and librdkafka may then treat the member's whole assignment
    /// as lost, so these progress reports stay rare.
    fn commit_reported_offsets_when_due(&self) {
        {
            let mut last = lock(&self.last_offset_commit);
            if last.elapsed() < OFFSET_COMMIT_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        self.commit_reported_offsets(CommitMode::Async);
    }

    /// Commits the offsets task readers reported since the last commit, for the partitions
    /// still assigned, in `mode`.
    fn commit_reported_offsets(&self, mode: CommitMode) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let assigned = lock(&self.shared.assigned);
        for ((topic, partition), offset) in pending {
            if assigned.contains(&(topic.clone(), partition)) {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
            }
        }
        drop(assigned);
        if tpl.count() > 0 {
            if let Err(e) = self.member.commit(&tpl, mode) {
                tracing::debug!(error = %e, "group offset commit failed (progress report only)");
            }
        }
    }

    /// Every few seconds, warns when librdkafka's assignment of the member and the partitions
    /// the rebalance callbacks recorded differ: tasks run only for the latter, so a partition
    /// in the first alone would sit unprocessed.
    fn check_assignment(&self) {
        {
            let mut last = lock(&self.last_assignment_check);
            if last.elapsed() < ASSIGNMENT_CHECK_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        let Ok(actual) = self.member.assignment() else {
            return;
        };
        let actual: BTreeSet<(String, i32)> = actual
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let believed = lock(&self.shared.assigned).clone();
        if actual != believed {
            tracing::warn!(
                ?actual,
                ?believed,
                "the group member's assignment differs from the partitions its rebalance \
                 callbacks recorded"
            );
        }
    }
}

/// How long a worker waits for the broker to describe its group before joining.
const GROUP_LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a worker's member commits the offsets its tasks reported (Kafka's own default
/// auto-commit interval); they are progress reports for lag tools.
const OFFSET_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// Events the group member serves per heartbeat: far more than one heartbeat queues (a
/// commit result, a rebalance, errors), and each poll of an empty queue returns at once.
const MEMBER_POLLS_PER_HEARTBEAT: usize = 64;

/// The longest single member poll of [`KafkaFleet::wait`], which looks at its stop flag
/// between polls.
const MEMBER_WAIT_SLICE: Duration = Duration::from_millis(20);

/// How often [`KafkaFleet::check_assignment`] compares.
const ASSIGNMENT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl FleetBackend for KafkaFleet {
    fn heartbeat(&self, _worker: &str, _ttl: Duration) -> Result<u32, FleetError> {
        // Polling serves the group protocol's callbacks. `poll` also answers `None` after
        // serving a rebalance or an offset-commit event, so the loop does not stop at the first
        // `None`: it did once, serving one such event per heartbeat while each heartbeat's
        // commit queued another, and a revoke waited behind that backlog for 20 s, holding up
        // the whole group's rebalance.
        for _ in 0..MEMBER_POLLS_PER_HEARTBEAT {
            self.poll_member(Duration::ZERO);
        }
        self.commit_reported_offsets_when_due();
        self.check_assignment();
        // The group balances the partitions; this worker takes every task it was assigned.
        Ok(1)
    }

    fn acquire(
        &self,
        task: &str,
        _worker: &str,
        _ttl: Duration,
    ) -> Result<Option<String>, FleetError> {
        let tp = self.partition_of(task)?;
        Ok(lock(&self.shared.assigned)
            .contains(tp)
            .then(|| format!("{}/{}", tp.0, tp.1)))
    }

    fn renew(&self, task: &str, _token: &str, _ttl: Duration) -> Result<bool, FleetError> {
        let tp = self.partition_of(task)?;
        Ok(lock(&self.shared.assigned).contains(tp))
    }

    fn release(&self, task: &str, _token: &str) -> Result<(), FleetError> {
        let tp = self.partition_of(task)?.clone();
        lock(&self.shared.controls).remove(&tp);
        Ok(())
    }

    fn leave(&self, _worker: &str) -> Result<(), FleetError> {
        read_ahead::close(&self.source);
        offsets::unregister(&self.group);
        self.commit_reported_offsets(CommitMode::Sync);
        self.member.unsubscribe();
        Ok(())
    }

    fn replica(&self, task: &str, _token: &str) -> Result<Arc<dyn CheckpointReplica>, FleetError> {
        let index = task
            .strip_prefix('p')
            .and_then(|i| i.parse::<i32>().ok())
            .ok_or_else(|| FleetError::Fatal(format!("unknown task `{task}`")))?;
        Ok(Arc::new(ChangelogReplica::open(
            &self.client,
            &self.job,
            task,
            &self.changelog,
            index,
        )?))
    }

    fn task_started(&self, task: &str, control: TaskControl) {
        if let Ok(tp) = self.partition_of(task) {
            lock(&self.shared.controls).insert(tp.clone(), control);
        }
    }

    fn leases_expire(&self) -> bool {
        // Ownership ends with a revoke the member sees (the next owner's producers fence
        // this worker's anyway), not with a lease running out.
        false
    }

    fn poll_interval(&self, _lease_ttl: Duration) -> Duration {
        // Rebalances wait for every member to poll; keep that short.
        Duration::from_millis(200)
    }

    fn wait(&self, timeout: Duration, stop: &AtomicBool) {
        // The member's rebalance callbacks run inside its `poll`: polling here, rather than
        // sleeping, serves an assignment the moment the group completes it (the first join
        // of a group ends between two rounds of the loop).
        let until = Instant::now() + timeout;
        let seen = self.shared.rebalances.load(Ordering::Acquire);
        loop {
            let now = Instant::now();
            if now >= until
                || stop.load(Ordering::Relaxed)
                || self.shared.rebalances.load(Ordering::Acquire) != seen
            {
                return;
            }
            self.poll_member((until - now).min(MEMBER_WAIT_SLICE));
        }
    }
}

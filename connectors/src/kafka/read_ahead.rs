//! Reading a fleet's partitions ahead while the worker's first group join is pending.
//!
//! A broker holds the first `JoinGroup` of an empty group for a while, so that members started
//! together land in one round (Kafka's `group.initial.rebalance.delay.ms`, 3 s by default;
//! noida-db 0.3 s). A worker that finds its group empty would get every partition if no one
//! else joined, so meanwhile it opens each partition's reader at the group's committed offset
//! (else the configured start) and lets librdkafka fetch. A task of an assigned partition then
//! takes that reader over ([`take`]); the readers of partitions assigned elsewhere are closed
//! when the assignment arrives ([`keep_only`]).
//!
//! Reading ahead never commits anything and decides nothing: a task still resolves its start
//! from its stored position and moves the reader there when the read-ahead started elsewhere.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::client::{ClosedInBackground, EofAwareContext, REQUEST_TIMEOUT};
use super::config::KafkaSourceConfig;
use super::partition_queue::PartitionQueue;
use super::source::{committed_offset, first_offset, open_reader};

/// A partition reader opened ahead of its task, assigned at `offset`.
pub(crate) struct ReadAhead {
    /// Declared first: dropped before its consumer.
    pub queue: PartitionQueue,
    pub consumer: ClosedInBackground<BaseConsumer<EofAwareContext>>,
    /// Where the reader was assigned (the first offset on `queue`).
    pub offset: i64,
    /// The partition's high watermark when the reader was assigned.
    pub high: i64,
}

/// One worker's read-ahead: the readers not yet taken, and what is settled.
#[derive(Default)]
struct Pool {
    readers: HashMap<(String, i32), ReadAhead>,
    /// Partitions a task asked for: a reader that arrives later is closed, not kept.
    claimed: BTreeSet<(String, i32)>,
    /// The first assignment, once it arrived: only its partitions are kept.
    assigned: Option<BTreeSet<(String, i32)>>,
    /// The worker left: nothing more is kept.
    closed: bool,
}

impl Pool {
    fn wants(&self, tp: &(String, i32)) -> bool {
        !self.closed
            && !self.claimed.contains(tp)
            && self.assigned.as_ref().is_none_or(|a| a.contains(tp))
    }
}

/// Pools by (brokers, group).
type Pools = Mutex<HashMap<(String, String), Arc<Mutex<Pool>>>>;

fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(Pools::default)
}

/// Readers opened in parallel, at most.
const OPENED_AT_ONCE: usize = 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool_of(config: &KafkaSourceConfig) -> Option<Arc<Mutex<Pool>>> {
    lock(pools())
        .get(&(config.brokers.clone(), config.group.clone()))
        .cloned()
}

/// Starts reading `partitions` of `config`'s source ahead, on a thread of its own. Replaces
/// an earlier read-ahead of the same group in this process (its readers are closed).
pub(crate) fn start(config: &KafkaSourceConfig, partitions: Vec<(String, i32)>) {
    let pool = Arc::new(Mutex::new(Pool::default()));
    let earlier =
        lock(pools()).insert((config.brokers.clone(), config.group.clone()), pool.clone());
    if let Some(earlier) = earlier {
        close_pool(&earlier);
    }
    let config = config.clone();
    let spawned = std::thread::Builder::new()
        .name("weir-read-ahead".into())
        .spawn(move || {
            // Opening a reader waits for requests: in parallel, the fetches start together.
            let opened: usize = partitions
                .chunks(OPENED_AT_ONCE)
                .map(|chunk| {
                    std::thread::scope(|scope| {
                        let openers: Vec<_> = chunk
                            .iter()
                            .map(|tp| scope.spawn(|| open_into(&pool, &config, tp)))
                            .collect();
                        openers
                            .into_iter()
                            .filter_map(|o| o.join().ok())
                            .filter(|kept| *kept)
                            .count()
                    })
                })
                .sum();
            tracing::info!(
                group = %config.group,
                partitions = opened,
                "the group is empty: reading its partitions ahead while joining"
            );
        });
    if spawned.is_err() {
        tracing::debug!("no read-ahead: cannot start its thread");
    }
}

/// Opens `tp`'s reader into `pool` if the pool still wants it; `true` when it was kept.
fn open_into(pool: &Mutex<Pool>, config: &KafkaSourceConfig, tp: &(String, i32)) -> bool {
    if !lock(pool).wants(tp) {
        return false;
    }
    match open(config, &tp.0, tp.1) {
        Ok(reader) => {
            let mut pool = lock(pool);
            let wanted = pool.wants(tp);
            if wanted {
                pool.readers.insert(tp.clone(), reader);
            }
            wanted
        }
        // The task opens the partition itself and reports what is wrong.
        Err(reason) => {
            tracing::debug!(topic = %tp.0, partition = tp.1, %reason, "no read-ahead");
            false
        }
    }
}

/// Opens one partition's reader at the group's committed offset (else the configured start).
fn open(config: &KafkaSourceConfig, topic: &str, partition: i32) -> Result<ReadAhead, String> {
    let started = Instant::now();
    let (queue, consumer) = open_reader(config, topic, partition).map_err(|e| e.to_string())?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let watermarks_ms = started.elapsed().as_millis();
    let committed = committed_offset(&consumer, topic, partition).map_err(|e| e.to_string())?;
    // Where a start waits: a partition whose reader opens late is read late.
    tracing::debug!(
        topic,
        partition,
        watermarks_ms,
        committed_ms = started.elapsed().as_millis(),
        "read-ahead reader opened"
    );
    let offset = first_offset(committed, config.start, low, high);
    if !(low..=high).contains(&offset) {
        return Err(format!(
            "offset {offset} is outside the log ({low}..{high})"
        ));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    Ok(ReadAhead {
        queue,
        consumer,
        offset,
        high,
    })
}

/// The reader read ahead for `topic`/`partition` of `config`'s source, if there is one; a
/// reader that is still being opened is closed when it arrives.
pub(crate) fn take(config: &KafkaSourceConfig, topic: &str, partition: i32) -> Option<ReadAhead> {
    let pool = pool_of(config)?;
    let mut pool = lock(&pool);
    let tp = (topic.to_string(), partition);
    pool.claimed.insert(tp.clone());
    pool.readers.remove(&tp)
}

/// The group's first assignment arrived: closes the readers of partitions not in `assigned`.
pub(crate) fn keep_only(config: &KafkaSourceConfig, assigned: &BTreeSet<(String, i32)>) {
    let Some(pool) = pool_of(config) else {
        return;
    };
    let mut pool = lock(&pool);
    if pool.assigned.is_some() {
        return;
    }
    pool.readers.retain(|tp, _| assigned.contains(tp));
    pool.assigned = Some(assigned.clone());
}

/// The worker leaves: closes every reader not taken and stops reading ahead.
pub(crate) fn close(config: &KafkaSourceConfig) {
    let pool = lock(pools()).remove(&(config.brokers.clone(), config.group.clone()));
    if let Some(pool) = pool {
        close_pool(&pool);
    }
}

fn close_pool(pool: &Mutex<Pool>) {
    let mut pool = lock(pool);
    pool.closed = true;
    pool.readers.clear();
}

/// The partitions read ahead for `brokers`/`group` and not yet taken by a task, in order.
pub fn waiting_read_ahead(brokers: &str, group: &str) -> Vec<(String, i32)> {
    let pool = lock(pools())
        .get(&(brokers.to_string(), group.to_string()))
        .cloned();
    let mut waiting: Vec<(String, i32)> = pool
        .map(|p| lock(&p).readers.keys().cloned().collect())
        .unwrap_or_default();
    waiting.sort();
    waiting
}

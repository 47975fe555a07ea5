//! Shared Kafka plumbing: client settings, error classification, topic metadata and the
//! creation and checking of internal topics.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

/// How long a metadata or admin request may take before it is retried.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client configuration for `brokers` with the user's pass-through librdkafka `settings`
/// applied last (they may override anything, e.g. `security.protocol`, `sasl.*`, `ssl.*`).
pub(crate) fn client_config(brokers: &str, settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config.set("client.id", "weir");
    // librdkafka's logical coordinator connection (a transactional producer's, a group
    // member's) tries to connect before the coordinator is known, and that postponed try
    // counts: its real first connect then waits out this backoff. At the default 100 ms,
    // `init_transactions` took 110–114 ms on a warm connection; at 10 ms, 2–11 ms. A broker
    // that stays down is still retried less and less often, up to `reconnect.backoff.max.ms`.
    config.set("reconnect.backoff.ms", "10");
    for (key, value) in settings {
        config.set(key, value);
    }
    config
}

/// The context of readers that set `enable.partition.eof`: librdkafka also reports each end
/// of partition to the client's error callback, which by default logs it as an error; the
/// readers see it from `poll` and handle it, so it is dropped here. Other errors are logged.
pub struct EofAwareContext;

impl ClientContext for EofAwareContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for EofAwareContext {}

/// How long [`drain`] waits for outstanding deliveries before leaving them to the commit.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `producer`'s delivery reports until nothing is in flight or `timeout` has passed.
/// Call it just before `commit_transaction`: that call flushes by polling in 100 ms steps, so
/// without draining first every transaction costs at least 100 ms.
pub(crate) fn drain(producer: &BaseProducer, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        serve_deliveries(producer);
    }
}

/// Serves the delivery reports `producer` has queued, and when none had arrived sleeps
/// [`DELIVERY_WAIT`] so the broker can answer: one step of a wait for acknowledgements (a
/// drain, or room in a full send queue).
pub(crate) fn serve_deliveries(producer: &BaseProducer) {
    let before = producer.in_flight_count();
    // Never with a timeout: the crate's `poll(t)` asks librdkafka for events with the time
    // left in whole milliseconds, so its last millisecond asks with 0 over and over, and a
    // drain made of 1 ms polls kept a core busy while the broker (on the same cores) was
    // acknowledging.
    producer.poll(Duration::ZERO);
    if producer.in_flight_count() == before {
        std::thread::sleep(DELIVERY_WAIT);
    }
}

/// How long [`serve_deliveries`] sleeps when nothing had arrived.
const DELIVERY_WAIT: Duration = Duration::from_micros(500);

/// Initialises `producer`'s transactions once the broker leading partition 0 of `topic` has
/// answered it. librdkafka asks for the transaction coordinator as soon as
/// `init_transactions` is called, and with no usable broker connection yet it asks again only
/// after a fixed 500 ms ("No brokers available for Transactions" in its `eos` debug log). A
/// fleet worker's tasks create their changelog producers all at once, and a task whose
/// producer waited so started reading half a second after the others.
pub(crate) fn init_transactions(
    producer: &BaseProducer,
    topic: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let started = Instant::now();
    connect_to_leader(producer, topic, REQUEST_TIMEOUT.min(timeout));
    let connected = started.elapsed();
    let result = producer.init_transactions(timeout);
    // Both steps wait on the broker and on librdkafka's retry timers; a slow task start is
    // told apart by these two figures.
    tracing::debug!(
        topic,
        connect_ms = connected.as_millis() as u64,
        init_ms = (started.elapsed() - connected).as_millis() as u64,
        ok = result.is_ok(),
        "transactional producer initialised"
    );
    result
}

/// Asks the leader of partition 0 of `topic` for its offsets, so `producer` has a connection
/// to it. Best effort: if this fails, `init_transactions` reports the real problem.
fn connect_to_leader(producer: &BaseProducer, topic: &str, timeout: Duration) {
    let _ = producer.client().fetch_watermarks(topic, 0, timeout);
}

/// A librdkafka client whose drop blocks: it is dropped on a short-lived thread of its own.
///
/// The rdkafka crate's drop of an admin client, and of a consumer with a `group.id`, waits
/// for a 100 ms poll that nothing wakes (the admin's polling thread, the consumer's close).
/// A fleet task opens and closes several such clients, so each would add a tenth of a second
/// to every task start, hand-over and end. Nothing waits for the close while the process runs
/// (an admin client has nothing left to do, and Weir's consumers are assigned partitions, not
/// group members); before it exits, the process does: see [`finish_background_closes`].
pub(crate) struct ClosedInBackground<T: Send + 'static>(Option<T>);

/// How many background closes have not finished, and the signal of each one that does.
static CLOSING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

fn closing_count() -> std::sync::MutexGuard<'static, usize> {
    CLOSING.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until every client handed to a background close is closed, for at most `timeout`;
/// `true` when all were. Call it before the process exits: a source consumer's close completes
/// its last offset commit (the group's progress report).
pub fn finish_background_closes(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut count = closing_count();
    while *count > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        count = CLOSING
            .1
            .wait_timeout(count, left)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    true
}

/// Counts one background close from creation until dropped (also when its thread never ran).
struct PendingClose;

impl PendingClose {
    fn start() -> PendingClose {
        *closing_count() += 1;
        PendingClose
    }
}

impl Drop for PendingClose {
    fn drop(&mut self) {
        *closing_count() -= 1;
        CLOSING.1.notify_all();
    }
}

impl<T: Send + 'static> ClosedInBackground<T> {
    /// Wraps `client`.
    pub fn new(client: T) -> Self {
        ClosedInBackground(Some(client))
    }
}

impl<T: Send + 'static> std::ops::Deref for ClosedInBackground<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Only `drop` takes the client out.
        self.0
            .as_ref()
            .expect("the client is present until dropped")
    }
}

impl<T: Send + 'static> Drop for ClosedInBackground<T> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let pending = PendingClose::start();
            let spawned = std::thread::Builder::new()
                .name("weir-kafka-close".into())
                .spawn(move || {
                    drop(client);
                    drop(pending);
                });
            // When no thread can be started, the failed spawn has dropped the client here.
            drop(spawned);
        }
    }
}

/// Settings Weir tunes but the user may override through `settings`.
pub(crate) trait SetDefault {
    /// Sets `key` unless it is already set.
    fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self;
}

impl SetDefault for ClientConfig {
    fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

/// Whether retrying `e` may succeed: broker unavailable, timeouts, transport errors and the
/// retriable error codes the broker marks as such.
pub(crate) fn is_retryable(e: &KafkaError) -> bool {
    match e.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::ConcurrentTransactions
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::KafkaStorageError
                | RDKafkaErrorCode::RebalanceInProgress
                // A reader refused its start offset: the next read re-reads the watermarks.
                | RDKafkaErrorCode::AutoOffsetReset
        ),
        None => matches!(e, KafkaError::Canceled | KafkaError::NoMessageReceived),
    }
}

/// Whether `e` means this producer was fenced by a newer instance with the same
/// `transactional.id` (another worker took the task over).
pub(crate) fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// Runs `future` to completion on this thread. rdkafka's admin futures are driven by
/// rdkafka's own threads; they only need a waker (no async runtime).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Why a topic's metadata could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    /// The broker says the topic does not exist.
    #[error("{0}")]
    Missing(String),
    /// The broker could not be asked (retry later).
    #[error("{0}")]
    Unavailable(String),
}

/// The partition count of each of `topics`, in order.
pub(crate) fn partition_counts(
    config: &ClientConfig,
    topics: &[String],
) -> Result<Vec<u32>, TopicError> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| TopicError::Unavailable(format!("cannot create a Kafka client: {e}")))?;
    topics
        .iter()
        .map(|topic| {
            let metadata = consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| {
                    TopicError::Unavailable(format!(
                        "cannot read the metadata of topic `{topic}`: {e}"
                    ))
                })?;
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok(t.partitions().len() as u32)
                }
                _ => Err(TopicError::Missing(format!(
                    "topic `{topic}` does not exist"
                ))),
            }
        })
        .collect()
}

/// What an internal topic must look like.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopicSpec {
    /// The topic name.
    pub name: String,
    /// Its partition count; an existing topic with another count is an error.
    pub partitions: u32,
    /// `true` for `cleanup.policy=compact` (changelogs), else `delete`.
    pub compacted: bool,
    /// Replication factor when the topic is created.
    pub replication: i32,
}

/// Creates `spec`'s topic when it does not exist and checks an existing one: a different
/// partition count or cleanup policy is an error that names the topic and how to fix it.
///
/// A topic is checked once per process and cluster: a fleet worker's tasks all open the same
/// sinks, and the first task's check (or creation) holds the others back until it is done.
pub(crate) fn ensure_topic(config: &ClientConfig, spec: &TopicSpec) -> Result<(), TopicError> {
    type Ensured = Mutex<HashMap<(String, TopicSpec), Arc<Mutex<bool>>>>;
    static ENSURED: OnceLock<Ensured> = OnceLock::new();
    let cluster = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let entry = ENSURED
        .get_or_init(Ensured::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((cluster, spec.clone()))
        .or_default()
        .clone();
    let mut done = entry.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        check_or_create_topic(config, spec)?;
        *done = true;
    }
    Ok(())
}

/// [`ensure_topic`]'s work, every time it is called.
fn check_or_create_topic(config: &ClientConfig, spec: &TopicSpec) -> Result<(), TopicError> {
    let policy = if spec.compacted { "compact" } else { "delete" };
    match partition_counts(config, std::slice::from_ref(&spec.name)) {
        Err(e @ TopicError::Unavailable(_)) => Err(e),
        Ok(counts) => {
            if counts[0] != spec.partitions {
                return Err(TopicError::Missing(format!(
                    "internal topic `{}` has {} partitions but needs {} (one per input \
                     partition); delete it or give this job another name",
                    spec.name, counts[0], spec.partitions
                )));
            }
            check_cleanup_policy(config, &spec.name, policy).map_err(TopicError::Missing)
        }
        Err(TopicError::Missing(_)) => {
            let unavailable = |e: String| TopicError::Unavailable(e);
            let admin: ClosedInBackground<AdminClient<DefaultClientContext>> = config
                .create()
                .map(ClosedInBackground::new)
                .map_err(|e| unavailable(format!("cannot create a Kafka admin client: {e}")))?;
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions as i32,
                TopicReplication::Fixed(spec.replication),
            )
            .set("cleanup.policy", policy);
            let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
            let results = block_on(admin.create_topics([&topic], &options))
                .map_err(|e| unavailable(format!("cannot create topic `{}`: {e}", spec.name)))?;
            for result in results {
                match result {
                    Ok(_) => {
                        tracing::info!(topic = %spec.name, partitions = spec.partitions, policy, "created internal topic")
                    }
                    // Another process made it meanwhile.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(unavailable(format!("cannot create topic `{name}`: {code}")))
                    }
                }
            }
            // Metadata propagates asynchronously; wait until the topic is visible.
            for _ in 0..50 {
                if partition_counts(config, std::slice::from_ref(&spec.name))
                    .is_ok_and(|c| c[0] == spec.partitions)
                {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(unavailable(format!(
                "topic `{}` was created but does not appear",
                spec.name
            )))
        }
    }
}

/// Checks `cleanup.policy` of an existing topic. Brokers that cannot describe configs are
/// trusted with a warning (the policy is an optimisation of restore time, not of correctness).
fn check_cleanup_policy(config: &ClientConfig, topic: &str, expected: &str) -> Result<(), String> {
    let admin: ClosedInBackground<AdminClient<DefaultClientContext>> = config
        .create()
        .map(ClosedInBackground::new)
        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options));
    let policy = match described.as_deref() {
        Ok([Ok(resource)]) => resource.get("cleanup.policy").and_then(|e| e.value.clone()),
        _ => None,
    };
    match policy {
        Some(p) if p.split(',').any(|part| part.trim() == expected) => Ok(()),
        Some(p) => Err(format!(
            "internal topic `{topic}` has cleanup.policy={p} but needs {expected}; fix it with \
             kafka-configs --alter --add-config cleanup.policy={expected}"
        )),
        None => {
            tracing::warn!(
                topic,
                "cannot read cleanup.policy of the topic; not checked"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose drop waits until the test lets it go.
    struct HeldOpen(std::sync::mpsc::Receiver<()>);

    impl Drop for HeldOpen {
        fn drop(&mut self) {
            let _ = self.0.recv();
        }
    }

    /// The test broker's address (`WEIR_TEST_KAFKA`, as the integration tests use).
    fn test_broker() -> String {
        std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| {
            panic!(
                "WEIR_TEST_KAFKA is not set; start a broker with \
                 `eval \"$(scripts/services.sh start kafka)\"`"
            )
        })
    }

    fn send_records(producer: &BaseProducer, topic: &str, count: usize) {
        for i in 0..count {
            let value = format!("record {i}");
            producer
                .send(rdkafka::producer::BaseRecord::<str, str>::to(topic).payload(&value))
                .map_err(|(e, _)| e)
                .expect("queued");
        }
    }

    #[test]
    fn drain_returns_once_the_broker_acknowledged_every_record() {
        let brokers = test_broker();
        let topic = format!(
            "weir-drain-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let config = client_config(&brokers, &BTreeMap::new());
        ensure_topic(
            &config,
            &TopicSpec {
                name: topic.clone(),
                partitions: 3,
                compacted: false,
                replication: 1,
            },
        )
        .expect("topic");
        let producer: BaseProducer = config.create().expect("producer");
        send_records(&producer, &topic, 5_000);
        drain(&producer, DRAIN_TIMEOUT);
        assert_eq!(producer.in_flight_count(), 0);
    }

    #[test]
    fn drain_gives_up_at_its_timeout_and_keeps_what_is_in_flight() {
        // A port nothing listens on: the record can never be acknowledged.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let producer: BaseProducer = client_config(&format!("127.0.0.1:{port}"), &BTreeMap::new())
            .create()
            .expect("producer");
        send_records(&producer, "nowhere", 1);
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        drain(&producer, timeout);
        assert!(
            started.elapsed() >= timeout,
            "drain returned before its timeout"
        );
        // librdkafka's count also holds queued events (the refused connection's error may be
        // one), so it can be above 1; it is never 0 while the record waits.
        assert!(producer.in_flight_count() >= 1);
    }

    #[test]
    fn the_process_waits_for_a_background_close_until_it_is_done() {
        let (release, held) = std::sync::mpsc::channel();
        drop(ClosedInBackground::new(HeldOpen(held)));
        // The drop returned at once, and the close is still pending.
        assert!(!finish_background_closes(Duration::from_millis(50)));
        release.send(()).unwrap();
        assert!(finish_background_closes(Duration::from_secs(10)));
    }
}

//! The Kafka sections of `weir bench-io`, against a Kafka-protocol broker:
//!
//! - `kafka-source`: a keyed input topic read end to end by a plain consumer (counting
//!   messages) and by a Weir job through a tumbling window into a transactional result topic.
//!   Each read begins once the rest of the machine (the broker) is quiet. A plain consumer
//!   that joins a consumer group, as a worker does, is timed as well and reported beside them.
//! - `kafka-source-fleet`: the same, with Weir run as `weir run` runs a Kafka topology (a fleet
//!   worker: a task per partition, checkpoints replicated to a changelog topic).
//! - `kafka-latency`: event-to-result latency of an unbounded Weir job (`emit: on_update`,
//!   checkpoint every 100 ms) fed at a steady rate, seen by a `read_committed` consumer.
//! - `kafka-latency-fleet`: the same, with Weir run as `weir run` runs a Kafka topology (a
//!   fleet worker: a task per partition, checkpoints replicated to a changelog topic).
//! - `kafka-restore`: a changelog partition holding a task's state, read by a plain
//!   `read_committed` consumer and restored by [`ChangelogReplica`] into a fresh RocksDB store.
//!
//! Every section deletes the topics it created when it ends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use weir_connectors::kafka::decode::rdkafka;
use weir_connectors::kafka::{ChangelogReplica, EofAwareContext};
use weir_connectors::Registry;
use weir_engine::checkpoint::{read_progress, write_committed, write_prepared, Progress};
use weir_engine::runtime::fleet::{run_worker, CheckpointReplica, WorkerOptions};
use weir_engine::runtime::{
    Connectors as _, FleetMetrics, Job, JobMetrics, JobOptions, JobSummary,
};
use weir_engine::state::{RocksStateStore, StateBatch, StateStore, Table};
use weir_engine::topology::load_str;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{rate, BenchIoArgs, KafkaSection, LatencyMeasurement, Measurement, RunNames};

/// Event time of the first `kafka-source` event: 2026-01-01T00:00:00Z.
const FIRST_EVENT_MS: i64 = 1_767_225_600_000;
/// Events per second of event time in `kafka-source` (1,000,000 events span ~17 minutes).
const EVENTS_PER_EVENT_SECOND: i64 = 1000;
/// Distinct keys of the `kafka-latency` events.
const LATENCY_KEYS: u64 = 16;
/// Results of the first seconds of `kafka-latency` are not counted (connections, first
/// fetches, first transactions).
const WARM_UP: Duration = Duration::from_secs(2);
/// How long the latency section waits for the last event's result after the producer ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The issue's ceiling on the p99 event-to-result latency (ms).
const LATENCY_P99_CEILING_MS: f64 = 250.0;
/// The issue's floor on Weir's rate over the plain consumer's in `kafka-source`.
const SOURCE_FLOOR: f64 = 0.80;
/// State keys per replicated batch (one checkpoint) in `kafka-restore`.
const RESTORE_BATCH_KEYS: u64 = 100_000;
/// Size of each replicated state value in `kafka-restore` (a window accumulator's order).
const STATE_VALUE_BYTES: usize = 40;
/// How long a consumer may see nothing before a read counts as stuck.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a metadata or admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the selected Kafka `sections` against `brokers`; returns the rate comparisons
/// (`kafka-source`, `kafka-restore`) and the latencies (`kafka-latency`). Topics created are
/// deleted even when a section fails.
pub(super) fn run(
    brokers: &str,
    args: &BenchIoArgs,
    names: &RunNames,
    sections: &[KafkaSection],
) -> anyhow::Result<(Vec<Measurement>, Vec<LatencyMeasurement>)> {
    anyhow::ensure!(
        args.kafka_partitions >= 1,
        "--kafka-partitions must be at least 1"
    );
    let mut topics = Topics {
        brokers: brokers.to_string(),
        created: Vec::new(),
    };
    let mut measured = Vec::new();
    let mut latencies = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for section in sections {
            match section {
                KafkaSection::Source => {
                    measured.push(source_section(brokers, args, names, &mut topics, false)?)
                }
                KafkaSection::SourceFleet => {
                    measured.push(source_section(brokers, args, names, &mut topics, true)?)
                }
                KafkaSection::Latency => {
                    latencies.push(latency_section(brokers, args, names, &mut topics, false)?)
                }
                KafkaSection::LatencyFleet => {
                    latencies.push(latency_section(brokers, args, names, &mut topics, true)?)
                }
                KafkaSection::Restore => {
                    measured.push(restore_section(brokers, args, names, &mut topics)?)
                }
            }
            // Each section on a broker that holds only its own topics: noida-db's cost per
            // write (its whole state rewritten) grows with every record it holds.
            if let Err(e) = topics.delete_all() {
                eprintln!("  warning: cannot delete the section's topics: {e:#}");
            }
        }
        Ok(())
    })();
    let cleanup = topics.delete_all();
    result?;
    if let Err(e) = cleanup {
        eprintln!("  warning: cannot delete the benchmark's topics: {e:#}");
    }
    Ok((measured, latencies))
}

/// The topics a run created, deleted at its end.
struct Topics {
    brokers: String,
    created: Vec<String>,
}

impl Topics {
    /// Creates `name` with `partitions` partitions (compacted for changelogs) and waits until
    /// its metadata shows them.
    fn create(&mut self, name: &str, partitions: u32, compacted: bool) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = client(&self.brokers).create()?;
        let policy = if compacted { "compact" } else { "delete" };
        let topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1))
            .set("cleanup.policy", policy);
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = block_on(admin.create_topics([&topic], &options))
            .with_context(|| format!("cannot create topic `{name}`"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("cannot create topic `{topic}`: {code}");
            }
        }
        self.created.push(name.to_string());
        let consumer: BaseConsumer<EofAwareContext> =
            client(&self.brokers).create_with_context(EofAwareContext)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while Instant::now() < deadline {
            if partition_count(&consumer, name).is_ok_and(|n| n == partitions) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("topic `{name}` was created but does not appear")
    }

    /// Records a topic created by someone else (Weir's sinks) for deletion.
    fn adopt(&mut self, name: &str) {
        self.created.push(name.to_string());
    }

    fn delete_all(&mut self) -> anyhow::Result<()> {
        if self.created.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = client(&self.brokers).create()?;
        let names: Vec<&str> = self.created.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = block_on(admin.delete_topics(&names, &options))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => bail!("cannot delete topic `{topic}`: {code}"),
            }
        }
        self.created.clear();
        Ok(())
    }
}

/// A client configuration for `brokers`.
fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    // Some brokers (noida-db) ignore `fetch.max.bytes` and answer a fetch of many partitions
    // with everything they hold: allow responses up to librdkafka's maximum.
    config
        .set("bootstrap.servers", brokers)
        .set("receive.message.max.bytes", "2147483647");
    config
}

/// The partition count of `topic`.
fn partition_count(consumer: &BaseConsumer<EofAwareContext>, topic: &str) -> anyhow::Result<u32> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as u32)
        }
        _ => bail!("topic `{topic}` does not exist"),
    }
}

/// Runs a future to completion on this thread: rdkafka's admin futures are completed by its
/// own background thread, so a waker that unparks this thread is all they need.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// The producer's partition of a key: FNV-1a of the key, modulo the partition count (the
/// same key always lands in the same partition, as a windowed pipeline in a fleet needs).
fn partition_of(key: &str, partitions: u32) -> i32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % u64::from(partitions.max(1))) as i32
}

/// A well-mixed 64-bit value of `i` (SplitMix64), for deterministic keys and values.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Sends `record`, serving delivery reports while librdkafka's queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, str>) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => bail!("cannot produce: {e}"),
        }
    }
}

/// Microseconds since the Unix epoch, wall clock.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// CPU time (user and system) this process has used so far, over all its threads: the plain
/// consumers' or Weir's own work in a phase, whatever the broker on the same cores takes.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the whole struct it is given; zeroed is a valid `rusage` too.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (all cores, every process) the machine has used since boot: the busy fields of
/// `/proc/stat`'s first line; zero where there is no `/proc/stat`.
fn machine_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    // SAFETY: `sysconf` only reads a constant of the system.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user, nice, system, (idle, iowait: not busy), irq, softirq, steal.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum();
    Duration::from_secs_f64(busy as f64 / ticks_per_s)
}

/// CPU time used during one phase: by this process (the plain consumers, or Weir), and by
/// the rest of the machine (the broker on the same cores, mostly).
#[derive(Clone, Copy, Default)]
struct PhaseCpu {
    own: Duration,
    rest: Duration,
}

impl PhaseCpu {
    /// The mean of two phases' figures.
    fn mean(self, other: PhaseCpu) -> PhaseCpu {
        PhaseCpu {
            own: (self.own + other.own) / 2,
            rest: (self.rest + other.rest) / 2,
        }
    }
}

/// The CPU used by this process and by the rest of the machine while `read` ran, with what
/// it returned.
fn timed<T>(read: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, PhaseCpu)> {
    let (own, all) = (process_cpu(), machine_cpu());
    let value = read()?;
    let own = process_cpu().saturating_sub(own);
    let all = machine_cpu().saturating_sub(all);
    Ok((
        value,
        PhaseCpu {
            own,
            rest: all.saturating_sub(own),
        },
    ))
}

/// Longest wait for [`wait_until_quiet`].
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the rest of the machine (the broker, mostly) has used under a tenth of a core
/// for 250 ms; returns how long it waited, or `None` if it was still busy after
/// [`QUIET_TIMEOUT`]. Each measured phase starts so: noida-db rewrites its whole state (every
/// topic's records, as JSON) after changes, which takes seconds of CPU once it holds millions
/// of records, and a phase that started while the broker still persisted the previous
/// phase's writes (a new consumer group's, say) would share the cores with it.
fn wait_until_quiet() -> Option<Duration> {
    const WINDOW: Duration = Duration::from_millis(250);
    let started = Instant::now();
    while started.elapsed() < QUIET_TIMEOUT {
        let window = timed(|| {
            std::thread::sleep(WINDOW);
            Ok(())
        });
        if window.is_ok_and(|((), cpu)| cpu.rest < WINDOW / 10) {
            return Some(started.elapsed());
        }
    }
    None
}

/// How the measured phases began, from their [`wait_until_quiet`] results.
fn describe_waits(waits: &[Option<Duration>]) -> String {
    let busy = waits.iter().filter(|w| w.is_none()).count();
    if busy > 0 {
        return format!(
            "{busy} of {} phases began on a busy machine (after {} s of waiting)",
            waits.len(),
            QUIET_TIMEOUT.as_secs()
        );
    }
    let longest = waits.iter().flatten().max().copied().unwrap_or_default();
    format!(
        "each phase began on a quiet machine (waits up to {:.1} s)",
        longest.as_secs_f64()
    )
}

/// Reads partitions `0..partitions` of `topic` with one consumer from the beginning to the
/// end they have now, counting messages; returns the count and the wall time (consumer
/// creation included).
fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<(u64, Duration)> {
    let all: Vec<i32> = (0..partitions as i32).collect();
    read_partitions(config, topic, &all)
}

/// Like [`read_to_end`], with one consumer (and thread) per partition, as Weir's source
/// reads; the time is until the last one is done.
fn read_to_end_in_parallel(
    config: &ClientConfig,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..partitions as i32)
            .map(|p| scope.spawn(move || read_partitions(config, topic, &[p])))
            .collect();
        readers
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a consumer thread panicked")))
            })
            .collect::<anyhow::Result<Vec<(u64, Duration)>>>()
    })?;
    Ok((counts.iter().map(|(n, _)| n).sum(), started.elapsed()))
}

/// Reads `partitions` of `topic` with one consumer to the end they have now: a partition is
/// done at its last record (its high watermark read first, as Weir's `end_at_tail` does), or
/// at its end-of-partition event when transaction markers follow the last record.
fn read_partitions(
    config: &ClientConfig,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let consumer: BaseConsumer<EofAwareContext> = config.create_with_context(EofAwareContext)?;
    let ends = ends_of(&consumer, topic, partitions.iter().copied())?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let read = count_to_ends(&consumer, topic, ends)?;
    Ok((read, started.elapsed()))
}

/// Reads every partition of `topic` to the end it has now with one consumer that joins a new
/// consumer group `group` (`subscribe`), as a worker's group member does; returns the count
/// and the wall time, the group join included. Not a baseline of the floor: it shows what a
/// group member pays on its own (the broker holds a new group's first join, and noida-db
/// persists its whole state after a join, which a reader with assigned partitions never sets
/// off).
fn read_as_group_member(
    config: &ClientConfig,
    topic: &str,
    partitions: u32,
    group: &str,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut config = config.clone();
    config
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<EofAwareContext> = config.create_with_context(EofAwareContext)?;
    let ends = ends_of(&consumer, topic, 0..partitions as i32)?;
    consumer.subscribe(&[topic])?;
    let read = count_to_ends(&consumer, topic, ends)?;
    Ok((read, started.elapsed()))
}

/// The high watermark of each of `partitions` of `topic` that holds records: where a read
/// from the beginning is done.
fn ends_of(
    consumer: &BaseConsumer<EofAwareContext>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut ends = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
        if high > low {
            ends.insert(p, high);
        }
    }
    Ok(ends)
}

/// Counts `consumer`'s messages until each partition in `ends` is done: at its record just
/// before the offset given, or at its end-of-partition event.
fn count_to_ends(
    consumer: &BaseConsumer<EofAwareContext>,
    topic: &str,
    mut ends: BTreeMap<i32, i64>,
) -> anyhow::Result<u64> {
    let mut read = 0u64;
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                read += 1;
                last_progress = Instant::now();
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => bail!("reading `{topic}`: {e}"),
            None if last_progress.elapsed() > IDLE_TIMEOUT => {
                bail!(
                    "reading `{topic}`: nothing for {} s",
                    IDLE_TIMEOUT.as_secs()
                )
            }
            None => {}
        }
    }
    Ok(read)
}

/// A consumer configuration that reads only committed records and reports partition ends.
fn reader(brokers: &str, group: &str) -> ClientConfig {
    let mut config = client(brokers);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    config
}

fn check_count(who: &str, got: u64, want: u64) -> anyhow::Result<()> {
    if got != want {
        bail!("{who} counted {got}, expected {want}: the measurement is void");
    }
    Ok(())
}

/// Produces `events` JSON events `{"ts_ms", "key", "value"}` over `keys` keys, keyed, each to
/// its key's partition, 1,000 per second of event time in order, in batches compressed with
/// `compression` (librdkafka's `compression.type`).
fn fill_input(
    brokers: &str,
    topic: &str,
    partitions: u32,
    events: u64,
    keys: u64,
    compression: &str,
) -> anyhow::Result<()> {
    let producer: BaseProducer = client(brokers)
        .set("compression.type", compression)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    eprintln!("  kafka: producing {events} events to {partitions} partitions ({compression}) ...");
    let started = Instant::now();
    let keys = keys.max(1);
    let mut line = String::with_capacity(96);
    for i in 0..events {
        let key = format!("u{}", mix(i) % keys);
        let ts = FIRST_EVENT_MS + (i as i64 * 1000) / EVENTS_PER_EVENT_SECOND;
        let value = (mix(i ^ 0x5555) % 10_000) as f64 / 100.0;
        line.clear();
        let _ = write!(line, r#"{{"ts_ms":{ts},"key":"{key}","value":{value}}}"#);
        let record = BaseRecord::to(topic)
            .partition(partition_of(&key, partitions))
            .key(key.as_str())
            .payload(line.as_str());
        send(&producer, record)?;
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("the input did not reach the broker")?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "  kafka: produced in {secs:.1} s ({}/s)",
        rate(events as f64 / secs)
    );
    Ok(())
}

/// `kafka-source`: the plain consumer's rate against Weir's, same topic, same run.
/// `kafka-source` (`fleet`: `kafka-source-fleet`): the input read by plain consumers, before
/// and after Weir reads it. With `fleet`, Weir runs as `weir run` runs a Kafka topology (a fleet
/// worker, a task per partition, changelog replicas); else as one job over every partition.
fn source_section(
    brokers: &str,
    args: &BenchIoArgs,
    names: &RunNames,
    topics: &mut Topics,
    fleet: bool,
) -> anyhow::Result<Measurement> {
    let partitions = args.kafka_partitions;
    let kind = if fleet { "fleet-" } else { "" };
    let input = format!("weir-bench-{}-{kind}events", names.id);
    let results = format!("weir-bench-{}-{kind}results", names.id);
    topics.create(&input, partitions, false)?;
    fill_input(
        brokers,
        &input,
        partitions,
        args.events,
        args.keys,
        &args.kafka_compression,
    )?;

    let mut plain = client(brokers);
    plain
        .set("group.id", format!("weir-bench-{}-plain", names.id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    // Both layouts, before and after Weir: the faster layout (mean of its two reads) is the
    // baseline, so a slow layout does not tilt the ratio. Each read's wall time and the CPU
    // used during it; every phase, Weir's too, starts on a quiet machine.
    let mut waited = Vec::new();
    let mut group_reads = 0;
    let mut read_plain = |when: &str| -> anyhow::Result<[(Duration, PhaseCpu); 3]> {
        waited.push(wait_until_quiet());
        eprintln!("  kafka-source: plain consumer, {when} ...");
        let ((read, one), one_cpu) = timed(|| read_to_end(&plain, &input, partitions))?;
        check_count("the plain consumer", read, args.events)?;
        waited.push(wait_until_quiet());
        eprintln!("  kafka-source: plain consumers, one per partition, {when} ...");
        let ((read, each), each_cpu) =
            timed(|| read_to_end_in_parallel(&plain, &input, partitions))?;
        check_count("the plain consumers", read, args.events)?;
        waited.push(wait_until_quiet());
        eprintln!("  kafka-source: plain consumer in a new consumer group, {when} ...");
        group_reads += 1;
        let group = format!("weir-bench-{}-plain-member-{group_reads}", names.id);
        let ((read, member), member_cpu) =
            timed(|| read_as_group_member(&plain, &input, partitions, &group))?;
        check_count("the group member", read, args.events)?;
        Ok([(one, one_cpu), (each, each_cpu), (member, member_cpu)])
    };
    let before = read_plain("before Weir")?;

    let waited_for_weir = wait_until_quiet();
    eprintln!("  kafka-source: Weir ...");
    let job = format!("bench-io-{}-{kind}kafka", names.id);
    let state = args.dir.join(format!("{}-{kind}kafka", names.id));
    let yaml = SOURCE_TOPOLOGY
        .replace("@JOB@", &job)
        .replace("@BROKERS@", brokers)
        .replace("@INPUT@", &input)
        .replace("@RESULTS@", &results)
        .replace("@STATE@", &state.display().to_string());
    topics.adopt(&results);
    let run = timed(|| {
        if fleet {
            topics.adopt(&format!("{job}-changelog"));
            run_fleet_to_end(&yaml, partitions)
        } else {
            run_in_phases(&yaml)
        }
    });
    let _ = std::fs::remove_dir_all(&state);
    let ((run, build_time, weir_time), weir_cpu) = run?;
    check_count("Weir's source", run.events_in, args.events)?;
    let (landed, _) = read_to_end(
        &reader(brokers, &format!("{job}-check")),
        &results,
        RESULT_PARTITIONS,
    )?;
    check_count(
        "the read_committed reader of the result topic",
        landed,
        run.results_out,
    )?;
    let after = read_plain("after Weir")?;
    let mean = |layout: usize| {
        let (b, a) = (before[layout], after[layout]);
        ((b.0 + a.0) / 2, b.1.mean(a.1))
    };
    let (one, each, member) = (mean(0), mean(1), mean(2));
    let (baseline, (plain_time, plain_cpu)) = if one.0 <= each.0 {
        (
            format!("plain consumer, {partitions} partitions, count only"),
            one,
        )
    } else {
        (
            format!("{partitions} plain consumers (1 per partition), count only"),
            each,
        )
    };
    // This process's CPU and the rest of the machine's apart: the broker shares the cores, and
    // its share differs from phase to phase.
    let cpu_per_event_us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / args.events.max(1) as f64;
    waited.push(waited_for_weir);
    let mut checkpoints_ms: Vec<String> = run
        .checkpoint_durations_us
        .iter()
        .map(|us| (us / 1000).to_string())
        .collect();
    checkpoints_ms.truncate(12);
    let how = if fleet {
        format!("as `weir run` runs it: a fleet worker, {partitions} tasks, changelog replicas")
    } else {
        "one job".to_string()
    };
    Ok(Measurement {
        section: if fleet {
            KafkaSection::SourceFleet.name()
        } else {
            KafkaSection::Source.name()
        },
        baseline,
        weir: format!(
            "Weir: tumbling 1m count+sum per key -> kafka (transactional), exactly once, \
             checkpoint 1 s, {how}"
        ),
        unit: "events",
        baseline_per_s: args.events as f64 / plain_time.as_secs_f64(),
        weir_per_s: run.events_in as f64 / weir_time.as_secs_f64(),
        floor: Some(SOURCE_FLOOR),
        detail: format!(
            "{} events (compression {}); plain before/after Weir: 1 consumer {:.2}/{:.2} s, 1 per \
             partition {:.2}/{:.2} s, 1 in a new consumer group {:.2}/{:.2} s (Weir's rate \
             over it {:.2}, its process CPU per event {:.2} us, the rest's {:.2} us; not the \
             floor's baseline); Weir {:.2} s = start {:.2} s + run {:.2} s (checkpoints {} ms); \
             process CPU per event: baseline {:.2} us, Weir {:.2} us ({:.2}x); the rest of the \
             machine's CPU (the broker, mostly) per event: baseline {:.2} us, Weir {:.2} us; \
             {}; {} window results \
             (all read back committed), {} epochs",
            run.events_in,
            args.kafka_compression,
            before[0].0.as_secs_f64(),
            after[0].0.as_secs_f64(),
            before[1].0.as_secs_f64(),
            after[1].0.as_secs_f64(),
            before[2].0.as_secs_f64(),
            after[2].0.as_secs_f64(),
            member.0.as_secs_f64() / weir_time.as_secs_f64(),
            cpu_per_event_us(member.1.own),
            cpu_per_event_us(member.1.rest),
            weir_time.as_secs_f64(),
            build_time.as_secs_f64(),
            (weir_time - build_time).as_secs_f64(),
            checkpoints_ms.join("+"),
            cpu_per_event_us(plain_cpu.own),
            cpu_per_event_us(weir_cpu.own),
            weir_cpu.own.as_secs_f64() / plain_cpu.own.as_secs_f64().max(1e-9),
            cpu_per_event_us(plain_cpu.rest),
            cpu_per_event_us(weir_cpu.rest),
            describe_waits(&waited),
            run.results_out,
            run.epochs
        ),
    })
}

/// Partitions of the result topics Weir's sinks create.
const RESULT_PARTITIONS: u32 = 3;

/// What Weir did in a section, summed over its tasks.
struct WeirRun {
    events_in: u64,
    results_out: u64,
    epochs: u64,
    checkpoint_durations_us: Vec<u64>,
}

impl WeirRun {
    /// The sums of fleet tasks' job metrics.
    fn sum(tasks: &[Arc<JobMetrics>]) -> WeirRun {
        let sum = |f: fn(&JobMetrics) -> &std::sync::atomic::AtomicU64| -> u64 {
            tasks.iter().map(|t| f(t).load(Ordering::Relaxed)).sum()
        };
        WeirRun {
            events_in: sum(|m| &m.events_in),
            results_out: sum(|m| &m.results_out),
            epochs: sum(|m| &m.epochs_committed),
            checkpoint_durations_us: tasks
                .iter()
                .flat_map(|t| {
                    t.checkpoint_durations_us
                        .lock()
                        .map(|d| d.clone())
                        .unwrap_or_default()
                })
                .collect(),
        }
    }
}

/// `kafka-latency`: a paced producer, an unbounded Weir job, a `read_committed` consumer
/// timing each result against the newest event in it. With `fleet`, Weir runs as `weir run`
/// runs a Kafka topology: one fleet worker in the source's consumer group, a task (job) per
/// partition, each replicating its checkpoints to the changelog topic; else as one job over
/// every partition whose prepared epochs are synced to its local store.
fn latency_section(
    brokers: &str,
    args: &BenchIoArgs,
    names: &RunNames,
    topics: &mut Topics,
    fleet: bool,
) -> anyhow::Result<LatencyMeasurement> {
    anyhow::ensure!(args.latency_rate > 0.0, "--latency-rate must be positive");
    let kind = if fleet { "fleet" } else { "latency" };
    let input = format!("weir-bench-{}-{kind}-live", names.id);
    let results = format!("weir-bench-{}-{kind}-latest", names.id);
    topics.create(&input, args.kafka_partitions, false)?;
    let job_name = format!("bench-io-{}-{kind}", names.id);
    let state = args.dir.join(format!("{}-{kind}", names.id));
    let yaml = LATENCY_TOPOLOGY
        .replace("@JOB@", &job_name)
        .replace("@BROKERS@", brokers)
        .replace("@INPUT@", &input)
        .replace("@RESULTS@", &results)
        .replace("@STATE@", &state.display().to_string());
    topics.adopt(&results);
    if fleet {
        topics.adopt(&format!("{job_name}-changelog"));
    }
    let measure = || measure_latency(brokers, args, &input, &results, &job_name);
    let measured = if fleet {
        run_fleet_while(&yaml, args.kafka_partitions, measure)
    } else {
        run_job_while(&yaml, measure)
    };
    let _ = std::fs::remove_dir_all(&state);
    let ((sent, mut reader), run) = measured?;
    check_count("Weir's source", run.events_in, sent.count)?;
    // The job's last epoch committed after the stop: the reader must see every result.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while reader.seen < run.results_out && Instant::now() < deadline {
        reader.poll_once(Duration::from_millis(100))?;
    }
    if reader.seen < run.results_out {
        bail!(
            "the read_committed reader of the results saw {}, Weir wrote {}",
            reader.seen,
            run.results_out
        );
    }
    let mut lat = reader.latencies_us;
    anyhow::ensure!(
        !lat.is_empty(),
        "no result after the warm-up: run longer (--latency-secs)"
    );
    lat.sort_unstable();
    let mut checkpoints: Vec<i64> = run
        .checkpoint_durations_us
        .iter()
        .map(|&us| us as i64)
        .collect();
    checkpoints.sort_unstable();
    let ms = |sorted: &[i64], q: f64| quantile(sorted, q) as f64 / 1000.0;
    let how = if fleet {
        format!(
            "as `weir run` runs it: a fleet worker, {} tasks, changelog replicas",
            args.kafka_partitions
        )
    } else {
        "one job, synced local checkpoints".to_string()
    };
    Ok(LatencyMeasurement {
        section: if fleet {
            KafkaSection::LatencyFleet.name()
        } else {
            KafkaSection::Latency.name()
        },
        what: format!(
            "event sent -> result visible to read_committed, {}/s for {} s, tumbling 1 s \
             on_update, checkpoint 100 ms, {how}",
            rate(args.latency_rate),
            args.latency_secs
        ),
        p50_ms: ms(&lat, 0.50),
        p99_ms: ms(&lat, 0.99),
        max_ms: ms(&lat, 1.0),
        ceiling_p99_ms: Some(LATENCY_P99_CEILING_MS),
        detail: format!(
            "{} events sent at {}/s, {} results ({} timed after a {} s warm-up), {} epochs, \
             checkpoint p50/p99 {:.0}/{:.0} ms",
            sent.count,
            rate(sent.achieved_rate),
            run.results_out,
            lat.len(),
            WARM_UP.as_secs(),
            run.epochs,
            ms(&checkpoints, 0.50),
            ms(&checkpoints, 0.99)
        ),
    })
}

/// Builds `yaml`'s job, runs `measure` while the job runs, then stops the job (after its
/// last checkpoint).
fn run_job_while<T>(
    yaml: &str,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, WeirRun)> {
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let (built_tx, built_rx) = mpsc::channel::<()>();
        let job = {
            let stop = stop.clone();
            scope.spawn(move || -> anyhow::Result<JobSummary> {
                let job = build_job(yaml, stop)?;
                let _ = built_tx.send(());
                job.run().context("the latency job failed")
            })
        };
        let join = |job: std::thread::ScopedJoinHandle<'_, anyhow::Result<JobSummary>>| {
            job.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the job thread panicked")))
        };
        if built_rx.recv().is_err() {
            // The job thread ended without building its job: its error says why.
            return Err(join(job)
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the latency job ended early")));
        }
        let measured = measure();
        stop.store(true, Ordering::Relaxed);
        let summary = join(job);
        let measured = measured?;
        let summary = summary?;
        let m = &summary.metrics;
        Ok((
            measured,
            WeirRun {
                events_in: m.events_in,
                results_out: m.results_out,
                epochs: m.epochs_committed,
                checkpoint_durations_us: summary.checkpoint_durations_us,
            },
        ))
    })
}

/// Runs `yaml` as one fleet worker (what `weir run` does with a Kafka source), waits until
/// it runs a task for each of the `partitions`, runs `measure`, reads the tasks' counters,
/// then stops the worker (every task commits a last epoch).
fn run_fleet_while<T>(
    yaml: &str,
    partitions: u32,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, WeirRun)> {
    let (topology, backend, options) = open_fleet_worker(yaml)?;
    let (stop, metrics) = (options.stop.clone(), options.metrics.clone());
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| run_worker(&topology, Arc::new(Registry), backend, options));
        let started = Instant::now();
        while metrics.task_metrics().len() < partitions as usize || !metrics.is_ready() {
            if worker.is_finished() || started.elapsed() > DRAIN_TIMEOUT {
                let what = format!("start its {partitions} tasks");
                return Err(give_up(&stop, worker, &what, DRAIN_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let measured = measure();
        // Every event's result is visible now (or `measure` failed): the counters are final
        // but for the last epochs' results, which the drain reads.
        let run = WeirRun::sum(&metrics.task_metrics());
        stop.store(true, Ordering::Relaxed);
        let ended = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the fleet worker panicked"))?;
        let measured = measured?;
        ended.context("the fleet worker failed")?;
        Ok((measured, run))
    })
}

/// The `q` quantile of `sorted` (nearest rank; 0 when empty).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `yaml` to its end as one job; returns its counters, the time its building took
/// (connectors, topics, transactions, recovery) and the total.
fn run_in_phases(yaml: &str) -> anyhow::Result<(WeirRun, Duration, Duration)> {
    let started = Instant::now();
    let job = build_job(yaml, Arc::default())?;
    let built = started.elapsed();
    let summary = job.run().context("the benchmark job failed")?;
    let m = &summary.metrics;
    let run = WeirRun {
        events_in: m.events_in,
        results_out: m.results_out,
        epochs: m.epochs_committed,
        checkpoint_durations_us: summary.checkpoint_durations_us,
    };
    Ok((run, built, started.elapsed()))
}

/// Runs `yaml`, whose input is bounded, as one fleet worker until a task has run over each
/// of the `partitions` and every task has ended; returns the tasks' counters, the time until
/// the last task started (group join, per-task connectors, transactions, changelog) and the
/// total.
fn run_fleet_to_end(yaml: &str, partitions: u32) -> anyhow::Result<(WeirRun, Duration, Duration)> {
    let started = Instant::now();
    let (topology, backend, options) = open_fleet_worker(yaml)?;
    let (stop, metrics) = (options.stop.clone(), options.metrics.clone());
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| run_worker(&topology, Arc::new(Registry), backend, options));
        // A finished task's metrics leave the worker's list: keep each one seen.
        let mut tasks: Vec<Arc<JobMetrics>> = Vec::new();
        let mut all_started = None;
        loop {
            for t in metrics.task_metrics() {
                if !tasks.iter().any(|seen| Arc::ptr_eq(seen, &t)) {
                    tasks.push(t);
                }
            }
            let started_tasks = metrics.tasks_started.load(Ordering::Relaxed);
            if started_tasks >= u64::from(partitions) && all_started.is_none() {
                all_started = Some(started.elapsed());
            }
            if all_started.is_some() && metrics.tasks_running.load(Ordering::Relaxed) == 0 {
                break;
            }
            if worker.is_finished() || started.elapsed() > IDLE_TIMEOUT {
                let what = format!("finish its {partitions} tasks");
                return Err(give_up(&stop, worker, &what, IDLE_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let total = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("the fleet worker panicked"))?
            .context("the fleet worker failed")?;
        anyhow::ensure!(
            tasks.len() == partitions as usize,
            "saw {} tasks' metrics, expected {partitions}",
            tasks.len()
        );
        Ok((WeirRun::sum(&tasks), all_started.unwrap_or(total), total))
    })
}

/// Stops a fleet worker that did not `what` within `timeout` (or ended early) and returns the
/// error that says so, with the worker's own error if it had one.
fn give_up(
    stop: &AtomicBool,
    worker: std::thread::ScopedJoinHandle<'_, Result<(), weir_engine::runtime::JobError>>,
    what: &str,
    timeout: Duration,
) -> anyhow::Error {
    stop.store(true, Ordering::Relaxed);
    let ended = worker.join();
    anyhow::anyhow!(
        "the fleet worker did not {what} in {} s: {:?}",
        timeout.as_secs(),
        ended.map(|r| r.err())
    )
}

/// Loads `yaml` and opens it as `weir run` opens a Kafka topology: the implied fleet, this
/// process its one worker (`bench`).
fn open_fleet_worker(
    yaml: &str,
) -> anyhow::Result<(
    weir_engine::topology::Topology,
    Arc<dyn weir_engine::runtime::fleet::FleetBackend>,
    WorkerOptions,
)> {
    let topology = load_str(yaml, &Registry).map_err(|issues| {
        let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid benchmark topology: {}", list.join("; "))
    })?;
    let mut spec = Registry
        .implied_fleet(&topology)
        .context("a Kafka topology runs as a fleet")?;
    let worker_id = spec.worker_id.get_or_insert_with(|| "bench".into()).clone();
    let backend = Registry
        .open_fleet(&topology, &spec)
        .context("cannot join the fleet")?;
    let options = WorkerOptions {
        worker_id,
        lease_ttl: Duration::from_millis(spec.lease_ttl.as_millis()),
        shards: None,
        stop: Arc::default(),
        metrics: Arc::new(FleetMetrics::default()),
    };
    Ok((topology, backend, options))
}

/// Loads `yaml` and builds its job, which stops (after a last checkpoint) when `stop` is set.
fn build_job(yaml: &str, stop: Arc<AtomicBool>) -> anyhow::Result<Job> {
    let topology = load_str(yaml, &Registry).map_err(|issues| {
        let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid benchmark topology: {}", list.join("; "))
    })?;
    Job::build(
        &topology,
        &Registry,
        JobOptions {
            stop,
            ..JobOptions::default()
        },
    )
    .context("cannot start the benchmark job")
}

/// What the paced producer did.
struct Sent {
    count: u64,
    achieved_rate: f64,
    /// `sent_us` of the last event.
    last_us: i64,
}

/// A `read_committed` consumer of the result topic timing each result.
struct ResultReader {
    consumer: BaseConsumer<EofAwareContext>,
    /// Results seen, warm-up included.
    seen: u64,
    /// `now - sent_us` of each result whose newest event was sent after the warm-up.
    latencies_us: Vec<i64>,
    /// Results whose `sent_us` is before this are not timed.
    timed_from_us: i64,
    /// The newest `sent_us` seen in any result.
    newest_sent_us: i64,
}

impl ResultReader {
    fn open(brokers: &str, topic: &str, group: &str) -> anyhow::Result<ResultReader> {
        let mut config = reader(brokers, group);
        // Results are timed as they arrive: the broker must not hold a fetch back.
        config.set("fetch.wait.max.ms", "10");
        let consumer: BaseConsumer<EofAwareContext> =
            config.create_with_context(EofAwareContext)?;
        let partitions = partition_count(&consumer, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(ResultReader {
            consumer,
            seen: 0,
            latencies_us: Vec::new(),
            timed_from_us: i64::MAX,
            newest_sent_us: 0,
        })
    }

    /// Handles what one poll returns.
    fn poll_once(&mut self, wait: Duration) -> anyhow::Result<()> {
        match self.consumer.poll(wait) {
            Some(Ok(m)) => {
                let now = now_us();
                let value: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default())
                        .context("a result is not JSON")?;
                let sent = value
                    .get("sent_us")
                    .and_then(serde_json::Value::as_f64)
                    .context("a result without `sent_us`")? as i64;
                self.seen += 1;
                if sent >= self.timed_from_us {
                    self.latencies_us.push(now - sent);
                }
                self.newest_sent_us = self.newest_sent_us.max(sent);
                Ok(())
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => Ok(()),
            Some(Err(e)) => bail!("reading the results: {e}"),
        }
    }
}

/// Runs the paced producer while reading results, then reads until the last event's result
/// is visible; returns what was sent and the reader (to drain the job's last epoch later).
fn measure_latency(
    brokers: &str,
    args: &BenchIoArgs,
    input: &str,
    results: &str,
    job: &str,
) -> anyhow::Result<(Sent, ResultReader)> {
    let mut reader = ResultReader::open(brokers, results, &format!("{job}-timer"))?;
    eprintln!(
        "  kafka-latency: {}/s for {} s ...",
        rate(args.latency_rate),
        args.latency_secs
    );
    reader.timed_from_us = now_us() + WARM_UP.as_micros() as i64;
    let sent = std::thread::scope(|scope| {
        let producer = scope.spawn(|| paced_producer(brokers, input, args));
        while !producer.is_finished() {
            reader.poll_once(Duration::from_millis(5))?;
        }
        producer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the producer thread panicked")))
    })?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while reader.newest_sent_us < sent.last_us {
        if Instant::now() > deadline {
            bail!(
                "the last event's result did not appear within {} s",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        reader.poll_once(Duration::from_millis(5))?;
    }
    Ok((sent, reader))
}

/// Sends `{"ts_ms", "key", "sent_us"}` events at `--latency-rate` for `--latency-secs`, each
/// stamped with the wall clock as it is handed to the producer.
fn paced_producer(brokers: &str, topic: &str, args: &BenchIoArgs) -> anyhow::Result<Sent> {
    let producer: BaseProducer = client(brokers).create()?;
    let total = (args.latency_rate * args.latency_secs as f64) as u64;
    let started = Instant::now();
    let mut count = 0u64;
    let mut line = String::with_capacity(96);
    let mut last_us = 0;
    while count < total {
        let due = ((started.elapsed().as_secs_f64() * args.latency_rate) as u64).min(total);
        while count < due {
            let key = format!("k{}", count % LATENCY_KEYS);
            last_us = now_us();
            line.clear();
            let _ = write!(
                line,
                r#"{{"ts_ms":{},"key":"{key}","sent_us":{last_us}}}"#,
                last_us / 1000
            );
            let record = BaseRecord::to(topic)
                .partition(partition_of(&key, args.kafka_partitions))
                .key(key.as_str())
                .payload(line.as_str());
            send(&producer, record)?;
            count += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = started.elapsed();
    producer
        .flush(Duration::from_secs(30))
        .context("the latency events did not reach the broker")?;
    Ok(Sent {
        count,
        achieved_rate: count as f64 / elapsed.as_secs_f64(),
        last_us,
    })
}

/// `kafka-restore`: a changelog partition with `--restore-keys` keys, read plainly and
/// restored into a fresh RocksDB store.
fn restore_section(
    brokers: &str,
    args: &BenchIoArgs,
    names: &RunNames,
    topics: &mut Topics,
) -> anyhow::Result<Measurement> {
    anyhow::ensure!(args.restore_keys >= 1, "--restore-keys must be at least 1");
    let job = format!("bench-io-{}-restore", names.id);
    let topic = format!("{job}-changelog");
    topics.create(&topic, 1, true)?;
    let config = client(brokers);

    eprintln!(
        "  kafka-restore: replicating {} keys of state ...",
        args.restore_keys
    );
    let (batches, bytes, replicate_time) = {
        let owner = ChangelogReplica::open(&config, &job, "p0", &topic, 0)?;
        replicate_state(&owner, args.restore_keys)?
    };

    let mut plain = reader(brokers, &format!("{job}-plain"));
    // The same fetch sizes as the replica's reader, so the ratio is the restore's own cost.
    plain
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "16777216");
    // Before and after the restore; their mean is the baseline.
    let read_plain = |when: &str| -> anyhow::Result<(u64, Duration)> {
        eprintln!("  kafka-restore: plain read_committed consumer, {when} ...");
        read_to_end(&plain, &topic, 1)
    };
    let (records, plain_before) = read_plain("before the restore")?;

    eprintln!("  kafka-restore: ChangelogReplica::restore into RocksDB ...");
    let next = ChangelogReplica::open(&config, &job, "p0", &topic, 0)?;
    let progress_started = Instant::now();
    let progress = next.progress()?;
    let progress_time = progress_started.elapsed();
    let dir = args.dir.join(format!("{}-restore", names.id));
    let _ = std::fs::remove_dir_all(&dir);
    let restored = restore_into(&next, &dir).and_then(|(entries, time, store)| {
        check_restored(&store, args.restore_keys, progress)?;
        Ok((entries, time))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (entries, restore_time) = restored?;
    check_count("the restore", entries, records)?;
    let (records_again, plain_after) = read_plain("after the restore")?;
    check_count("the plain consumer", records_again, records)?;
    let plain_time = (plain_before + plain_after) / 2;
    Ok(Measurement {
        section: KafkaSection::Restore.name(),
        baseline: "read_committed consumer of the changelog partition, count only".into(),
        weir: "Weir: ChangelogReplica::restore into a fresh RocksStateStore (+ flush)".into(),
        unit: "entries",
        baseline_per_s: records as f64 / plain_time.as_secs_f64(),
        weir_per_s: entries as f64 / restore_time.as_secs_f64(),
        floor: None,
        detail: format!(
            "{} keys of {STATE_VALUE_BYTES} B values, {records} records ({:.0} MiB) in {batches} \
             transactions replicated in {:.1} s; plain read before/after {:.2}/{:.2} s vs \
             restore {:.2} s; progress() {:.0} ms",
            args.restore_keys,
            bytes as f64 / (1024.0 * 1024.0),
            replicate_time.as_secs_f64(),
            plain_before.as_secs_f64(),
            plain_after.as_secs_f64(),
            restore_time.as_secs_f64(),
            progress_time.as_secs_f64() * 1000.0
        ),
    })
}

/// The state key of window state entry `i`: operator prefix, the key, the window end.
fn state_key(i: u64) -> Vec<u8> {
    let mut key = vec![0, 1];
    key.extend_from_slice(format!("user_{i:07}").as_bytes());
    key.extend_from_slice(&(FIRST_EVENT_MS + 60_000).to_be_bytes());
    key
}

/// Replicates `keys` window-state entries as checkpoints of [`RESTORE_BATCH_KEYS`] keys
/// (each with its position and epoch records, as the coordinator writes them); returns the
/// batch count, the bytes of keys and values and the time taken.
fn replicate_state(replica: &ChangelogReplica, keys: u64) -> anyhow::Result<(u64, u64, Duration)> {
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut epoch = 0;
    let mut next = 0u64;
    while next < keys {
        epoch += 1;
        let mut batch = StateBatch::default();
        let end = (next + RESTORE_BATCH_KEYS).min(keys);
        for i in next..end {
            let key = state_key(i);
            let value: Vec<u8> = (0..STATE_VALUE_BYTES)
                .map(|b| (mix(i * 64 + b as u64) & 0xff) as u8)
                .collect();
            bytes += (key.len() + value.len()) as u64;
            batch.put(Table::Windows, key, value);
        }
        batch.put(
            Table::Positions,
            b"kafka:events/0".to_vec(),
            (end as i64).to_be_bytes().to_vec(),
        );
        if epoch > 1 {
            write_committed(&mut batch, epoch - 1);
        }
        write_prepared(&mut batch, epoch);
        replica.replicate(&batch)?;
        next = end;
    }
    let mut last = StateBatch::default();
    write_committed(&mut last, epoch);
    replica.replicate(&last)?;
    Ok((epoch + 1, bytes, started.elapsed()))
}

/// Opens a fresh store in `dir`, restores the replica into it and flushes it, as a fleet
/// task taking a partition over does; returns the entries restored and the time taken.
fn restore_into(
    replica: &ChangelogReplica,
    dir: &Path,
) -> anyhow::Result<(u64, Duration, RocksStateStore)> {
    let started = Instant::now();
    let store = RocksStateStore::open(dir).context("cannot open the restore store")?;
    let entries = replica.restore(&store)?;
    store.flush()?;
    Ok((entries, started.elapsed(), store))
}

/// Checks that `store` holds `keys` window entries and the replica's epochs.
fn check_restored(store: &dyn StateStore, keys: u64, progress: Progress) -> anyhow::Result<()> {
    let mut windows = 0u64;
    store.scan(Table::Windows, b"", None, &mut |_, _| {
        windows += 1;
        true
    })?;
    check_count("window entries restored", windows, keys)?;
    let local = read_progress(store)?;
    anyhow::ensure!(
        local == progress,
        "restored epochs {local:?} differ from the replica's {progress:?}"
    );
    Ok(())
}

/// The `kafka-source` job: the input topic through a tumbling window into a result topic.
const SOURCE_TOPOLOGY: &str = r#"
name: "@JOB@"
sources:
  events:
    type: kafka
    brokers: "@BROKERS@"
    topics: ["@INPUT@"]
    group: "@JOB@"
    end_at_tail: true
    event_time: {field: ts_ms, format: epoch_millis}
    watermark: {max_out_of_orderness: 1s}
    # As for the baseline's consumers (`client`): noida-db answers a fetch with all it holds.
    settings: {receive.message.max.bytes: "2147483647"}
pipelines:
  totals:
    source: events
    key_by: [key]
    window: {type: tumbling, size: 1m}
    aggregates:
      - {name: events, fn: count}
      - {name: total, fn: sum, field: value}
    sinks: [results]
sinks:
  results: {type: kafka, brokers: "@BROKERS@", topic: "@RESULTS@", create_partitions: 3}
state: {dir: "@STATE@"}
checkpoint: {interval: 1s}
"#;

/// The `kafka-latency` job: the newest `sent_us` per key and second, on every update.
const LATENCY_TOPOLOGY: &str = r#"
name: "@JOB@"
sources:
  events:
    type: kafka
    brokers: "@BROKERS@"
    topics: ["@INPUT@"]
    group: "@JOB@"
    event_time: {field: ts_ms, format: epoch_millis}
    watermark: {max_out_of_orderness: 1s}
pipelines:
  latest:
    source: events
    key_by: [key]
    window: {type: tumbling, size: 1s}
    aggregates:
      - {name: sent_us, fn: max, field: sent_us}
    emit: {mode: on_update}
    sinks: [results]
sinks:
  results: {type: kafka, brokers: "@BROKERS@", topic: "@RESULTS@", create_partitions: 1}
state: {dir: "@STATE@"}
checkpoint: {interval: 100ms}
"#;

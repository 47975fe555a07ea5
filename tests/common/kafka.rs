//! Kafka helpers shared by the end-to-end tests that talk to a broker.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_connectors::generator::GeneratorConfig;
use weir_connectors::kafka::block_on;
use weir_engine::event::ResultSchema;
use weir_engine::oracle::{self, ResultMap};

use super::{assert_same_results, generate, run_log_tail, Expected};

/// The broker the tests use (`WEIR_TEST_KAFKA`).
pub fn kafka() -> String {
    std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_KAFKA is not set; start a broker with \
             `eval \"$(scripts/services.sh start kafka)\"`"
        )
    })
}

/// Client settings pointing at [`kafka`].
pub fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka());
    c
}

/// A read_committed consumer in group `group` that reports partition ends.
fn committed_reader(group: &str) -> BaseConsumer {
    client()
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap()
}

/// The partition count of `topic` (0 when it does not exist yet).
fn partition_count(consumer: &BaseConsumer, topic: &str) -> usize {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        .unwrap_or(0)
}

/// Every record of the result topic a read_committed consumer sees.
pub fn committed_results(topic: &str) -> Vec<serde_json::Value> {
    let consumer = committed_reader(&format!("{topic}-check"));
    let mut tpl = TopicPartitionList::new();
    let partitions = partition_count(&consumer, topic);
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    if partitions == 0 {
        return Vec::new();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap())
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("reading results: {e}"),
            None => {}
        }
    }
    out
}

/// Per partition of `topic`: where a read_committed reader ends and where the log ends.
pub fn transaction_backlog(topic: &str) -> String {
    let consumer = committed_reader(&format!("{topic}-backlog"));
    let partitions = partition_count(&consumer, topic) as i32;
    let mut report = Vec::new();
    for p in 0..partitions {
        let high = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_or(-1, |(_, high)| high);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut end = -1;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    end = consumer
                        .position()
                        .ok()
                        .and_then(|t| t.find_partition(topic, p).map(|e| e.offset()))
                        .and_then(|o| o.to_raw())
                        .unwrap_or(-1);
                    break;
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    report.push(format!("p{p}: {e}"));
                    break;
                }
            }
        }
        report.push(format!(
            "p{p}: read_committed ends at {end}, log ends at {high}"
        ));
    }
    report.join("; ")
}

/// The running `weir` workers of a crash test, by worker index; whatever is still running
/// when the test ends (a failed assertion included) is killed.
#[derive(Default)]
pub struct Workers(pub BTreeMap<usize, Child>);

impl std::ops::Deref for Workers {
    type Target = BTreeMap<usize, Child>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Workers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.0.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (at most 60 s) until consumer group `group` is `Stable` with at least `members`
/// members (a killed worker may still be listed).
///
/// The crash tests call it before a `kill -9` and after starting workers, so that no kill
/// falls into a rebalance: the test broker (noida-db 0.2.3) expires dead members late and
/// unreliably, and a rebalance that includes a killed worker can wait for it forever (seen
/// stuck in `CompletingRebalance`, then `PreparingRebalance`, for minutes with the dead member
/// listed), where Kafka expires it after `session.timeout.ms`.
pub fn await_stable_group(group: &str, members: usize) {
    let consumer: BaseConsumer = client().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(list) = consumer.fetch_group_list(Some(group), Duration::from_secs(5)) {
            if let Some(g) = list.groups().first() {
                if g.state() == "Stable" && g.members().len() >= members {
                    return;
                }
                last = format!("{} with {} members", g.state(), g.members().len());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("group `{group}` did not become stable with {members} members in 60 s (last: {last})");
}

/// Stops a worker gracefully and waits for it.
pub fn sigterm(child: &mut Child) {
    // SAFETY: signalling our own child process by its PID.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Final results by window, and how many windows had more than one final result.
pub fn finals(results: &[serde_json::Value], schema: &ResultSchema) -> (ResultMap, usize) {
    let finals: Vec<&serde_json::Value> = results
        .iter()
        .filter(|v| v["is_final"] == serde_json::Value::Bool(true))
        .collect();
    let map = oracle::last_results_from_json(finals.iter().copied(), schema);
    let duplicates = finals.len() - map.len();
    (map, duplicates)
}

/// Generates `config`'s events, creates `topic` with `partitions` partitions and produces
/// every event keyed by its user, to the partition `partition_of(line index, user)` picks.
/// Returns one file per partition holding its lines in partition order: the oracle's input.
pub fn produce_events(
    dir: &Path,
    topic: &str,
    partitions: usize,
    config: &GeneratorConfig,
    partition_of: impl Fn(usize, &str) -> usize,
) -> Vec<PathBuf> {
    let all = dir.join("input.jsonl");
    generate(&all, config);
    let admin: AdminClient<DefaultClientContext> = client().create().unwrap();
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let created = block_on(admin.create_topics([&new], &AdminOptions::new())).unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let mut parts = vec![String::new(); partitions];
    // Idempotence keeps each partition in send order even when a batch is retried.
    let producer: BaseProducer = client()
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (i, line) in fs::read_to_string(&all).unwrap().lines().enumerate() {
        let user = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("user_id").map(|u| u.to_string()))
            .unwrap_or_default();
        let partition = partition_of(i, &user);
        parts[partition].push_str(line);
        parts[partition].push('\n');
        let mut record = BaseRecord::<str, str>::to(topic)
            .partition(partition as i32)
            .key(&user)
            .payload(line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    parts
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let path = dir.join(format!("partition{i}.jsonl"));
            fs::write(&path, body).unwrap();
            path
        })
        .collect()
}

/// Writes one worker's topology file under `dir` from `template` (`@P@`: the job prefix,
/// `@KAFKA@`: the broker, `@DIR@`: `dir`); every worker runs the same job with its own state
/// directory, as on separate machines. Returns the file and its text.
pub fn write_worker_topology(template: &str, dir: &Path, prefix: &str) -> (PathBuf, String) {
    fs::create_dir_all(dir).unwrap();
    let text = template
        .replace("@P@", prefix)
        .replace("@KAFKA@", &kafka())
        .replace("@DIR@", &dir.display().to_string());
    let file = dir.join("topology.yaml");
    fs::write(&file, &text).unwrap();
    (file, text)
}

/// Polls `topic` read_committed until it holds every final result of `want` (or 10 minutes
/// pass), failing at once if a worker in `running` exits (with its log, found beside its
/// topology file in `workers`); then stops every worker with SIGTERM, reads the topic a last
/// time and asserts that it holds each window's final result exactly once and equals `want`.
pub fn assert_final_results_exactly_once(
    topic: &str,
    want: &Expected,
    running: &mut Workers,
    workers: &[(PathBuf, String)],
) {
    let schema: &ResultSchema = &want.schema;
    let topology_files: Vec<&PathBuf> = workers.iter().map(|(file, _)| file).collect();
    let want_results = &want.results;
    let want = want_results.len();
    let started = Instant::now();
    let (mut got, mut duplicates) = finals(&committed_results(topic), schema);
    while got.len() < want && started.elapsed() < Duration::from_secs(600) {
        for (w, child) in running.iter_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "worker {w} exited ({status}):\n{}",
                    run_log_tail(topology_files[*w], 4000)
                );
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        (got, duplicates) = finals(&committed_results(topic), schema);
    }
    eprintln!(
        "committed {} of {want} final results after {:?}",
        got.len(),
        started.elapsed()
    );
    if got.len() < want {
        // Tells results held back by an open transaction (the read_committed end stays
        // behind the log end) from results never written.
        eprintln!("{topic}: {}", transaction_backlog(topic));
    }
    for child in running.values_mut() {
        sigterm(child);
    }
    // Late stragglers after the workers stopped would show up here.
    let (got, duplicates_after) = finals(&committed_results(topic), schema);
    assert_eq!(
        duplicates.max(duplicates_after),
        0,
        "windows with two final results"
    );
    assert_same_results(&got, want_results, "committed result topic");
}

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
use rdkafka::message::{BorrowedMessage, Message};
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

/// Assigns `consumer` (a [`committed_reader`]) each `(partition, start offset)` of `topic` and
/// reads until every one reported its end (at most 60 s), calling `each` per record.
fn read_committed(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &[(i32, Offset)],
    mut each: impl FnMut(&BorrowedMessage<'_>),
) {
    if starts.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, start) in starts {
        tpl.add_partition_offset(topic, p, start).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof < starts.len() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => each(&m),
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
}

/// Every record of the result topic a read_committed consumer sees.
pub fn committed_results(topic: &str) -> Vec<serde_json::Value> {
    let consumer = committed_reader(&format!("{topic}-check"));
    let partitions = partition_count(&consumer, topic) as i32;
    let starts: Vec<(i32, Offset)> = (0..partitions).map(|p| (p, Offset::Beginning)).collect();
    let mut out = Vec::new();
    read_committed(&consumer, topic, &starts, |m| {
        out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap())
    });
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

/// The topology files (whose run logs [`run_log_tail`] reads) of the `running` workers, each
/// keyed by its index in `workers`.
pub fn worker_logs<'a>(running: &Workers, workers: &'a [(PathBuf, String)]) -> Vec<&'a Path> {
    running.keys().map(|w| workers[*w].0.as_path()).collect()
}

/// Waits (at most 60 s) until consumer group `group` is `Stable` with exactly `members`
/// members. The crash tests call it before each `kill -9` and after starting workers, so that
/// a kill never falls into a rebalance and no killed worker is still listed. On a timeout it
/// panics with the end of each log in `worker_logs` (topology files, see [`run_log_tail`]):
/// the members' own account of the rebalance that did not end.
pub fn await_stable_group(group: &str, members: usize, worker_logs: &[&Path]) {
    let consumer: BaseConsumer = client().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(list) = consumer.fetch_group_list(Some(group), Duration::from_secs(5)) {
            if let Some(g) = list.groups().first() {
                if g.state() == "Stable" && g.members().len() == members {
                    return;
                }
                let clients: Vec<&str> = g.members().iter().map(|m| m.client_id()).collect();
                last = format!("{} with members {clients:?}", g.state());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs: Vec<String> = worker_logs
        .iter()
        .map(|file| {
            format!(
                "{}, end of its log:\n{}",
                file.display(),
                run_log_tail(file, 8000)
            )
        })
        .collect();
    panic!(
        "group `{group}` did not become stable with {members} members in 60 s (last: {last})\n{}",
        logs.join("\n")
    );
}

/// Kills the worker `child` with SIGKILL, waits `session` (longer than the topology's
/// `session_timeout_ms`), then removes the killed worker's member from consumer group `group`,
/// as a Kafka group coordinator does once a member's session times out. The worker must have
/// been a member (the tests kill only in a stable group): panics unless exactly one member is
/// the killed worker's.
///
/// Why the test does the coordinator's part: noida-db 0.2.3, the test broker, checks a
/// member's session only when that member itself heartbeats, so a killed member stays listed
/// for good, and every later rebalance waits for it forever (as its leader, it never sends the
/// assignment). Everything else of the crash (open transactions, unflushed state, fencing by
/// the next owner) is left to Weir and the broker.
pub fn kill_9_and_expire(mut child: Child, group: &str, session: Duration) {
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    std::thread::sleep(session);
    // A worker's member is named `weir-<job>-<worker id>`, and the default worker id ends
    // with the process id.
    let suffix = format!("-{pid}");
    let consumer: BaseConsumer = client().create().unwrap();
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap();
    let members: Vec<(&str, &str)> = list
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .map(|m| (m.id(), m.client_id()))
        .collect();
    let dead: Vec<&str> = members
        .iter()
        .filter(|(_, client)| client.ends_with(&suffix))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        dead.len(),
        1,
        "expected one member of the killed worker (pid {pid}) in {members:?}"
    );
    leave_group(group, dead[0]);
}

/// Sends a LeaveGroup request (version 0) for `member` of `group` on a plain connection to
/// the first broker of [`kafka`] (the single-node test broker is every group's coordinator).
/// rdkafka has no call that removes another client's member. Panics unless the broker answers
/// "done" or "unknown member" (already gone).
fn leave_group(group: &str, member: &str) {
    use std::io::{Read, Write};
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as i16).to_be_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    const LEAVE_GROUP: i16 = 13;
    const CORRELATION: i32 = 7;
    let mut body = Vec::new();
    body.extend_from_slice(&LEAVE_GROUP.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes()); // API version
    body.extend_from_slice(&CORRELATION.to_be_bytes());
    string(&mut body, "weir-test");
    string(&mut body, group);
    string(&mut body, member);
    let brokers = kafka();
    let address = brokers.split(',').next().unwrap();
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    conn.write_all(&body).unwrap();
    let mut size = [0u8; 4];
    conn.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    conn.read_exact(&mut response).unwrap();
    assert!(
        response.len() >= 6,
        "short LeaveGroup response {response:?}"
    );
    assert_eq!(
        i32::from_be_bytes(response[0..4].try_into().unwrap()),
        CORRELATION
    );
    let error = i16::from_be_bytes(response[4..6].try_into().unwrap());
    const UNKNOWN_MEMBER_ID: i16 = 25;
    assert!(
        error == 0 || error == UNKNOWN_MEMBER_ID,
        "LeaveGroup of {member} in {group} failed with error code {error}"
    );
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
    if let Err(hidden) = await_final_results(topic, want, running, workers, &[]) {
        panic!("{hidden}");
    }
}

/// Like [`assert_final_results_exactly_once`], but when the results stop coming for 30 s,
/// checks whether the broker hides committed records of a topic in `probe` (see
/// [`hidden_committed_records`]); if it does, stops the workers and returns what it hid, so
/// the caller can tell a broker fault from Weir's.
pub fn await_final_results(
    topic: &str,
    want: &Expected,
    running: &mut Workers,
    workers: &[(PathBuf, String)],
    probe: &[String],
) -> Result<(), String> {
    let schema: &ResultSchema = &want.schema;
    let topology_files: Vec<&PathBuf> = workers.iter().map(|(file, _)| file).collect();
    let want_results = &want.results;
    let want = want_results.len();
    let started = Instant::now();
    let (mut got, mut duplicates) = finals(&committed_results(topic), schema);
    let mut progress = (got.len(), Instant::now());
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
        if got.len() != progress.0 {
            progress = (got.len(), Instant::now());
        } else if progress.1.elapsed() > Duration::from_secs(30) {
            progress.1 = Instant::now();
            let hidden: Vec<String> = probe
                .iter()
                .filter_map(|t| hidden_committed_records(t))
                .collect();
            if !hidden.is_empty() {
                for child in running.values_mut() {
                    sigterm(child);
                }
                return Err(format!(
                    "{} of {want} final results, then none for 30 s: {}",
                    got.len(),
                    hidden.join("; ")
                ));
            }
        }
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
        // The workers' own account of the stall (the killed ones' included).
        for (w, file) in topology_files.iter().enumerate() {
            eprintln!("worker {w}, end of its log:\n{}", run_log_tail(file, 6000));
        }
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
    Ok(())
}

/// The offsets of the committed records of partition `p` of `topic` from `start` to the end a
/// fresh read_committed reader sees.
fn committed_offsets(topic: &str, p: i32, start: i64) -> Vec<i64> {
    let mut offsets = Vec::new();
    read_committed(
        &committed_reader(&format!("{topic}-probe")),
        topic,
        &[(p, Offset::Offset(start))],
        |m| offsets.push(m.offset()),
    );
    offsets
}

/// Whether the broker hides committed records of `topic` from a reader that starts late:
/// per partition, a fresh read_committed reader starting 64 records before the end must see
/// every record one starting at the beginning saw there. noida-db 0.2.3 fails this after a
/// transaction of a producer was aborted (a new owner of its `transactional.id` fenced it) and
/// the producer wrote again: a fetch that starts past the abort marker still lists the aborted
/// transaction, and librdkafka then drops every later record of that producer as aborted. A
/// long-lived reader of such a topic stops seeing that producer for good. Returns what was
/// hidden, if anything.
pub fn hidden_committed_records(topic: &str) -> Option<String> {
    let consumer = committed_reader(&format!("{topic}-probe"));
    let partitions = partition_count(&consumer, topic) as i32;
    let mut hidden = Vec::new();
    for p in 0..partitions {
        let all = committed_offsets(topic, p, 0);
        let Some(&start) = all.iter().rev().nth(63).or(all.first()) else {
            continue;
        };
        let last = *all.last().unwrap();
        let late = committed_offsets(topic, p, start);
        let missing = all
            .iter()
            .filter(|&&o| o >= start && o <= last && late.binary_search(&o).is_err())
            .count();
        if missing > 0 {
            hidden.push(format!(
                "{topic}/{p}: a read_committed reader starting at offset {start} misses \
                 {missing} of the committed records up to {last} that one starting at 0 sees"
            ));
        }
    }
    (!hidden.is_empty()).then(|| hidden.join("; "))
}

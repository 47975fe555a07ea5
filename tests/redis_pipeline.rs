//! End to end over real servers: a sharded Redis Streams firehose through windowed and
//! windowless pipelines into every Redis sink and MongoDB, with `kill -9` and restarts, and
//! compared with the oracle.
//!
//! Needs `WEIR_TEST_REDIS` and `WEIR_TEST_MONGODB`
//! (`eval "$(scripts/services.sh start redis mongodb)"`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use redis::Commands;
use weir_connectors::generator::{GeneratorConfig, Shape};
use weir_engine::oracle::ResultMap;

const SHARDS: usize = 4;

/// Windowed pipelines keyed by `user_id`, the shard key, so they stay correct in a fleet.
const TOPOLOGY: &str = r#"
name: "@P@"
sources:
  events:
    type: redis_streams
    url: "@REDIS@"
    stream: "@P@:events"
    shards: 4
    start: earliest
    end_at_tail: true
    event_time: {field: timestamp, format: rfc3339}
    watermark: {max_out_of_orderness: 2s}
pipelines:
  spend:
    source: events
    key_by: [user_id]
    window: {type: tumbling, size: 1m}
    aggregates:
      - {name: events, fn: count}
      - {name: spend, fn: sum, field: value}
    sinks: [spend_hash, spend_board, spend_bridge, spend_mongo]
  feed:
    source: events
    select: [event_id, user_id, event_type, product, timestamp]
    sinks: [feeds, rollups]
sinks:
  spend_hash: {type: redis_hash, url: "@REDIS@", key: "@P@:spend:{user_id}:{window_start}", ttl: 1d}
  spend_board:
    type: redis_leaderboard
    url: "@REDIS@"
    key: "@P@:top:{window_end}"
    member: "{user_id}"
    score: events
    top_n: 5
    ttl: 1d
  spend_bridge: {type: redis_stream, url: "@REDIS@", stream: "@P@:results"}
  feeds:
    type: redis_feed
    url: "@REDIS@"
    feed_key: "@P@:feed:{user_id}"
    member: "{event_id}"
    payload_key: "@P@:activity:{event_id}"
    payload_ttl: 1d
    max_len: 10
    feed_ttl: 1d
  spend_mongo:
    type: mongodb
    uri: "@MONGO@"
    database: "@DB@"
    collection: spend
    mode: timeseries
    timeseries: {granularity: minutes}
  rollups:
    type: mongodb
    uri: "@MONGO@"
    database: "@DB@"
    collection: daily
    mode: rollup
    entity_field: user_id
    counters: {by_type: event_type}
    latest: 3
state: {dir: "@DIR@/state"}
checkpoint: {interval: 200ms}
"#;

/// The producer's shard of a user: FNV-1a of the id, modulo the shard count.
fn shard_of(user: &str) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % SHARDS as u64) as usize
}

/// Generates `count` activity events, splits them into per-shard JSON-lines files (the
/// oracle's partitions) and XADDs each shard's lines, in order, to `<prefix>:events:{i}`.
fn produce(url: &str, dir: &Path, prefix: &str, count: u64) -> Vec<PathBuf> {
    let all = dir.join("input.jsonl");
    generate(
        &all,
        &GeneratorConfig {
            shape: Shape::Activity,
            count: Some(count),
            keys: 300,
            events_per_second_of_event_time: Some(200.0),
            max_out_of_orderness_ms: 1500,
            late_ratio: 0.001,
            malformed_ratio: 0.001,
            seed: 7,
            ..GeneratorConfig::default()
        },
    );
    let mut parts = vec![String::new(); SHARDS];
    for line in fs::read_to_string(&all).unwrap().lines() {
        let user = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("user_id").map(|u| u.to_string()))
            .unwrap_or_default();
        let shard = shard_of(&user);
        parts[shard].push_str(line);
        parts[shard].push('\n');
    }
    let mut conn = conn(url);
    let mut files = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        let path = dir.join(format!("shard{i}.jsonl"));
        fs::write(&path, body).unwrap();
        let key = format!("{prefix}:events:{{{i}}}");
        let lines: Vec<&str> = body.lines().collect();
        for chunk in lines.chunks(5_000) {
            let mut pipe = redis::pipe();
            for line in chunk {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("payload")
                    .arg(*line)
                    .ignore();
            }
            let () = pipe.query(&mut conn).unwrap();
        }
        files.push(path);
    }
    files
}

fn write_topology(dir: &Path, prefix: &str, extra: &str) -> (PathBuf, String) {
    let text = TOPOLOGY
        .replace("@P@", prefix)
        .replace("@REDIS@", &redis_url())
        .replace("@MONGO@", &mongodb_uri())
        .replace("@DB@", &prefix.replace(':', "_"))
        .replace("@DIR@", &dir.display().to_string())
        + extra;
    let file = dir.join("topology.yaml");
    fs::write(&file, &text).unwrap();
    (file, text)
}

/// What every sink must hold, from the oracle.
struct Expectation {
    spend: ResultMap,
    /// Per user, the feed's members newest first.
    feeds: BTreeMap<String, Vec<String>>,
    /// Per (user, day): event count.
    daily: BTreeMap<String, i64>,
    events: usize,
}

fn expectation(text: &str, inputs: &[PathBuf]) -> Expectation {
    let topology = load(text);
    let spend = expected(&topology, "spend", inputs).results;
    let events = expected_events(&topology, "feed", inputs);
    let mut by_user: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let mut daily: BTreeMap<String, i64> = BTreeMap::new();
    for (time, fields) in &events {
        let user = plain(&fields["user_id"]);
        let id = plain(&fields["event_id"]);
        by_user.entry(user.clone()).or_default().push((*time, id));
        let day = chrono::DateTime::from_timestamp_millis(*time)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        *daily.entry(format!("{user}|{day}")).or_default() += 1;
    }
    let feeds = by_user
        .into_iter()
        .map(|(user, mut items)| {
            // Redis orders equal scores by member, and newest-first reads reverse that.
            items.sort();
            let newest: Vec<String> = items
                .iter()
                .rev()
                .take(10)
                .map(|(_, m)| m.clone())
                .collect();
            (user, newest)
        })
        .collect();
    Expectation {
        spend,
        feeds,
        daily,
        events: events.len(),
    }
}

/// A JSON value as a pattern renders it: strings without quotes.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn conn(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Differences between what Redis holds and `want`; empty when they are equal.
fn redis_differences(url: &str, prefix: &str, want: &Expectation) -> Vec<String> {
    let mut c = conn(url);
    let mut diffs = Vec::new();
    let hashes: Vec<String> = c.keys(format!("{prefix}:spend:*")).unwrap();
    if hashes.len() != want.spend.len() {
        diffs.push(format!(
            "{} spend hashes, want {}",
            hashes.len(),
            want.spend.len()
        ));
    }
    let mut boards: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for ((_, start, end), result) in &want.spend {
        let user = plain(&result["user_id"]);
        let key = format!("{prefix}:spend:{user}:{start}");
        let got: HashMap<String, String> = c.hgetall(&key).unwrap();
        let events = result["events"].as_i64().unwrap();
        if got.get("events").map(String::as_str) != Some(events.to_string().as_str()) {
            diffs.push(format!(
                "{key}: events {:?}, want {events}",
                got.get("events")
            ));
        }
        let spend = result["spend"].as_f64().unwrap();
        let got_spend: Option<f64> = got.get("spend").and_then(|s| s.parse().ok());
        if got_spend != Some(spend) {
            diffs.push(format!("{key}: spend {got_spend:?}, want {spend}"));
        }
        boards.entry(*end).or_default().push((events, user));
    }
    for (end, mut entries) in boards {
        entries.sort();
        let want_top: Vec<String> = entries
            .iter()
            .rev()
            .take(5)
            .map(|(_, u)| u.clone())
            .collect();
        let got: Vec<String> = c.zrevrange(format!("{prefix}:top:{end}"), 0, -1).unwrap();
        if got != want_top {
            diffs.push(format!("top of {end}: {got:?}, want {want_top:?}"));
        }
    }
    let bridged: usize = c.xlen(format!("{prefix}:results")).unwrap();
    if bridged != want.spend.len() {
        diffs.push(format!(
            "{bridged} bridged results, want {}",
            want.spend.len()
        ));
    }
    for (user, members) in &want.feeds {
        let key = format!("{prefix}:feed:{user}");
        let got: Vec<String> = c.zrevrange(&key, 0, -1).unwrap();
        if &got != members {
            diffs.push(format!("{key}: {got:?}, want {members:?}"));
        }
    }
    let payloads: Vec<String> = c.keys(format!("{prefix}:activity:*")).unwrap();
    if payloads.len() != want.events {
        diffs.push(format!("{} payloads, want {}", payloads.len(), want.events));
    }
    diffs.truncate(20);
    diffs
}

fn mongo_differences(uri: &str, db: &str, want: &Expectation) -> Vec<String> {
    use mongodb::bson::{doc, Document};
    let client = mongodb::sync::Client::with_uri_str(uri).unwrap();
    let database = client.database(db);
    let mut diffs = Vec::new();
    let spend = database.collection::<Document>("spend");
    let n = spend.count_documents(doc! {}).run().unwrap() as usize;
    if n != want.spend.len() {
        diffs.push(format!(
            "{n} time-series documents, want {}",
            want.spend.len()
        ));
    }
    let daily = database.collection::<Document>("daily");
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for d in daily.find(doc! {}).run().unwrap() {
        let d = d.unwrap();
        let id = d.get_str("_id").unwrap_or_default().to_string();
        let count = d
            .get_i64("count")
            .or_else(|_| d.get_i32("count").map(i64::from))
            .unwrap_or(-1);
        got.insert(id, count);
    }
    if got != want.daily {
        let missing = want
            .daily
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .count();
        diffs.push(format!(
            "{} of {} daily rollups differ (got {} documents)",
            missing,
            want.daily.len(),
            got.len()
        ));
    }
    diffs
}

fn prefix(test: &str) -> String {
    format!("e2e{}{}", test, std::process::id())
}

#[test]
fn sharded_firehose_into_redis_and_mongodb_survives_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let p = prefix("kill");
    let inputs = produce(&redis_url(), root.path(), &p, 1_000_000);
    let (file, text) = write_topology(root.path(), &p, "");
    let want = expectation(&text, &inputs);

    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let kills: Vec<u64> = (0..5).map(|_| rng.random_range(1_500..6_000)).collect();
    let hits = run_with_kills(&file, &kills, &[]);
    assert!(hits >= 3, "only {hits} kills hit a running worker");

    let diffs = redis_differences(&redis_url(), &p, &want);
    assert!(
        diffs.is_empty(),
        "Redis differs from the oracle:\n{}",
        diffs.join("\n")
    );
    let diffs = mongo_differences(&mongodb_uri(), &p.replace(':', "_"), &want);
    assert!(
        diffs.is_empty(),
        "MongoDB differs from the oracle:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn two_workers_share_the_shards_and_survive_losing_one() {
    let root = tempfile::tempdir().unwrap();
    let p = prefix("fleet");
    let inputs = produce(&redis_url(), root.path(), &p, 200_000);
    let mut workers = Vec::new();
    let mut want = None;
    for w in ["a", "b", "c"] {
        let dir = root.path().join(w);
        fs::create_dir_all(&dir).unwrap();
        let fleet = format!(
            "fleet: {{type: redis, url: \"{}\", lease_ttl: 1500ms, worker_id: {w}}}\n",
            redis_url()
        );
        let (file, text) = write_topology(&dir, &p, &fleet);
        want.get_or_insert_with(|| expectation(&text, &inputs));
        workers.push(file);
    }
    let want = want.unwrap();

    let mut a = spawn_run(&workers[0], &[]);
    let mut b = spawn_run(&workers[1], &[]);
    std::thread::sleep(Duration::from_millis(2_500));
    a.kill().unwrap(); // SIGKILL: its tasks move to b once their leases expire
    let _ = a.wait();
    std::thread::sleep(Duration::from_millis(1_000));
    let mut c = spawn_run(&workers[2], &[]); // joins mid-run and takes a share

    let started = Instant::now();
    let mut diffs = redis_differences(&redis_url(), &p, &want);
    while !diffs.is_empty() && started.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
        diffs = redis_differences(&redis_url(), &p, &want);
    }
    for child in [&mut b, &mut c] {
        // SAFETY: signalling our own child process by its PID.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
    }
    let _ = b.wait();
    let _ = c.wait();
    assert!(
        diffs.is_empty(),
        "Redis differs from the oracle:\n{}",
        diffs.join("\n")
    );
    let diffs = mongo_differences(&mongodb_uri(), &p.replace(':', "_"), &want);
    assert!(
        diffs.is_empty(),
        "MongoDB differs from the oracle:\n{}",
        diffs.join("\n")
    );
}

/// A redis-server of this test's own, so it can be stopped and started again on one port.
struct OwnRedis {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(dir: tempfile::TempDir, port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.path().display().to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "no", "--save", ""])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis { dir, port, child }
    }

    /// SIGTERM: Redis writes its AOF and exits.
    fn stop(mut self) -> (tempfile::TempDir, u16) {
        // SAFETY: signalling our own child process by its PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        (self.dir, self.port)
    }
}

#[test]
fn redis_stopped_and_restarted_mid_run_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = OwnRedis::start(tempfile::tempdir().unwrap(), port);
    let url = format!("redis://127.0.0.1:{port}");
    let root = tempfile::tempdir().unwrap();
    let p = prefix("restart");
    let inputs = produce(&url, root.path(), &p, 200_000);
    let (file, text) = write_topology(root.path(), &p, "");
    fs::write(&file, text.replace(&redis_url(), &url)).unwrap();
    let want = expectation(&text, &inputs);

    let mut job = spawn_run(&file, &[]);
    std::thread::sleep(Duration::from_millis(2_000));
    let (dir, port) = server.stop();
    std::thread::sleep(Duration::from_millis(1_500));
    let server = OwnRedis::start(dir, port);
    let status = job.wait().unwrap();
    assert!(
        status.success(),
        "weir run failed after the Redis restart: {status}"
    );

    let diffs = redis_differences(&url, &p, &want);
    drop(server.stop());
    assert!(
        diffs.is_empty(),
        "Redis differs from the oracle:\n{}",
        diffs.join("\n")
    );
}

/// A secantusd-rs (MongoDB-wire server) of this test's own, so it can be stopped and started
/// again on one port and storage path.
struct OwnMongo {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl OwnMongo {
    fn start(dir: tempfile::TempDir, port: u16) -> OwnMongo {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .unwrap();
        let child = std::process::Command::new("secantusd-rs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--storage-path",
                &dir.path().join("data").display().to_string(),
            ])
            .args(["--cache-size", "256M"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("secantusd-rs on PATH (scripts/services.sh installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "secantusd-rs did not start; see {}",
                dir.path().join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnMongo { dir, port, child }
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// SIGTERM: the server shuts down cleanly.
    fn stop(mut self) -> (tempfile::TempDir, u16) {
        // SAFETY: signalling our own child process by its PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        (self.dir, self.port)
    }
}

#[test]
fn mongodb_stopped_and_restarted_mid_run_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = OwnMongo::start(tempfile::tempdir().unwrap(), port);
    let uri = server.uri();
    let root = tempfile::tempdir().unwrap();
    let p = prefix("mongorestart");
    let inputs = produce(&redis_url(), root.path(), &p, 200_000);
    let (file, text) = write_topology(root.path(), &p, "");
    fs::write(&file, text.replace(&mongodb_uri(), &uri)).unwrap();
    let want = expectation(&text, &inputs);

    let mut job = spawn_run(&file, &[]);
    std::thread::sleep(Duration::from_millis(2_000));
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job ended before MongoDB was stopped: the test proves nothing"
    );
    let (dir, port) = server.stop();
    std::thread::sleep(Duration::from_millis(3_000));
    let server = OwnMongo::start(dir, port);
    let status = job.wait().unwrap();
    assert!(
        status.success(),
        "weir run failed after the MongoDB restart: {status}\n{}",
        run_log_tail(&file, 4000)
    );

    let mongo = mongo_differences(&uri, &p.replace(':', "_"), &want);
    drop(server.stop());
    let redis = redis_differences(&redis_url(), &p, &want);
    assert!(
        mongo.is_empty(),
        "MongoDB differs from the oracle:\n{}",
        mongo.join("\n")
    );
    assert!(
        redis.is_empty(),
        "Redis differs from the oracle:\n{}",
        redis.join("\n")
    );
}

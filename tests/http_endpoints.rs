//! `weir run --http ADDR`: `/health`, `/ready` and Prometheus `/metrics` of a running worker.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::weir;

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1)?.to_string();
    Some((status, body))
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[test]
fn a_running_worker_serves_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let topology = dir.path().join("topology.yaml");
    std::fs::write(
        &topology,
        format!(
            r#"
sources:
  events: {{type: generator, shape: bench, rate: 2000, keys: 50, event_time: {{field: ts_ms}}}}
pipelines:
  counts:
    source: events
    key_by: [key]
    window: {{type: tumbling, size: 1s}}
    aggregates: [{{name: n, fn: count}}]
    sinks: [out]
sinks:
  out: {{type: file, path: "{dir}/out.jsonl"}}
state: {{dir: "{dir}/state"}}
checkpoint: {{interval: 100ms}}
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut child = weir()
        .args(["run", "--no-status", "--http", &format!("127.0.0.1:{port}")])
        .arg(&topology)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    let mut seen = (false, false, false);
    while Instant::now() < deadline && !(seen.0 && seen.1 && seen.2) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some((200, body)) = get(port, "/health") {
            seen.0 = body.trim() == "ok";
        }
        if let Some((200, _)) = get(port, "/ready") {
            seen.1 = true;
        }
        if let Some((200, body)) = get(port, "/metrics") {
            let committed = metric(&body, "weir_epochs_committed_total").unwrap_or(0.0);
            let events = metric(&body, "weir_events_in_total").unwrap_or(0.0);
            seen.2 = committed >= 2.0 && events > 0.0;
            metrics = body;
        }
    }
    let not_found = get(port, "/nope").map(|r| r.0);
    child.kill().unwrap();
    let _ = child.wait();

    assert!(seen.0, "/health never answered ok");
    assert!(seen.1, "/ready never answered 200");
    assert!(
        seen.2,
        "metrics never showed committed epochs and events:\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE weir_results_total counter"),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "weir_ready"), Some(1.0), "{metrics}");
    assert_eq!(not_found, Some(404));
}

/// The sum of a labelled metric over its lines (`name{task="p0"} 3`, …).
fn labelled_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `/metrics` until `done` holds for the body (or 60 s pass); returns the last body.
fn wait_for_metrics(port: u16, done: impl Fn(&str) -> bool) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some((200, body)) = get(port, "/metrics") {
            if done(&body) {
                return (true, body);
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (false, last)
}

#[test]
fn a_fleet_worker_serves_its_tasks_restores_and_per_task_metrics() {
    let url = common::redis_url();
    let dir = tempfile::tempdir().unwrap();
    let p = format!("http-fleet-{}", std::process::id());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    // Two shards of events within one minute: every window stays open, so the state holds
    // entries a restore must copy.
    for i in 0..400u32 {
        let user = format!("u{}", i % 10);
        let shard = (i % 10) % 2;
        let _: String = redis::cmd("XADD")
            .arg(format!("{p}:events:{{{shard}}}"))
            .arg("*")
            .arg("payload")
            .arg(
                serde_json::json!({
                    "user_id": user,
                    "timestamp": format!("2026-01-01T00:00:{:02}Z", i % 60),
                })
                .to_string(),
            )
            .query(&mut con)
            .unwrap();
    }
    let topology = dir.path().join("topology.yaml");
    std::fs::write(
        &topology,
        format!(
            r#"
name: "{p}"
sources:
  events:
    type: redis_streams
    url: "{url}"
    stream: "{p}:events"
    shards: 2
    start: earliest
    event_time: {{field: timestamp, format: rfc3339}}
pipelines:
  counts:
    source: events
    key_by: [user_id]
    window: {{type: tumbling, size: 1m}}
    aggregates: [{{name: n, fn: count}}]
    sinks: [out]
sinks:
  out: {{type: file, path: "{dir}/out.jsonl"}}
fleet: {{type: redis, url: "{url}", lease_ttl: 1500ms, worker_id: w1}}
state: {{dir: "{dir}/state"}}
checkpoint: {{interval: 100ms}}
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let spawn = |port: u16| {
        weir()
            .args(["run", "--no-status", "--http", &format!("127.0.0.1:{port}")])
            .arg(&topology)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    // First run: both tasks start, read every event and checkpoint it.
    let port = free_port();
    let mut child = spawn(port);
    let (ok, body) = wait_for_metrics(port, |body| {
        metric(body, "weir_fleet_tasks_running") == Some(2.0)
            && labelled_sum(body, "weir_events_in_total") >= 400.0
            && labelled_sum(body, "weir_open_windows") >= 10.0
            && labelled_sum(body, "weir_epochs_committed_total") >= 4.0
    });
    let ready = get(port, "/ready").map(|r| r.0);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    assert!(ok, "the tasks never ran and checkpointed:\n{body}");
    assert_eq!(ready, Some(200), "{body}");
    assert!(body.contains("weir_events_in_total{task=\"p0\"}"), "{body}");
    assert!(body.contains("weir_events_in_total{task=\"p1\"}"), "{body}");
    assert!(
        body.contains("# TYPE weir_fleet_restore_seconds_total counter"),
        "{body}"
    );

    // Second run without the local state: both tasks are restored from their replicas.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let port = free_port();
    let mut child = spawn(port);
    let (ok, body) = wait_for_metrics(port, |body| {
        metric(body, "weir_fleet_restores_total") == Some(2.0)
            && metric(body, "weir_fleet_tasks_running") == Some(2.0)
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert!(ok, "the tasks were never restored:\n{body}");
    // Each task's three epoch entries, and its positions and open windows besides.
    let entries = metric(&body, "weir_fleet_restored_entries_total").unwrap_or(0.0);
    assert!(entries > 6.0, "restored {entries} entries:\n{body}");
    assert!(
        metric(&body, "weir_fleet_last_restore_seconds").is_some(),
        "{body}"
    );
}

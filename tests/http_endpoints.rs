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

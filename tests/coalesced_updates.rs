//! Coalesced updates (`emit: {mode: on_update, every}`) come out on processing time while
//! their windows stay open, whether the shard runs on the source's thread (one partition, one
//! shard) or on a thread of its own (two partitions, two shards).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

/// A live generator (event time follows the wall clock) into day-long windows: in the seconds
/// a test runs no window closes, so every result is a coalesced update.
const TOPOLOGY: &str = r#"
name: coalesced
sources:
  live:
    type: generator
    rate: 200
    partitions: @PARTITIONS@
    keys: 3
    event_time: {field: ts_ms, format: epoch_millis}
pipelines:
  per_key:
    source: live
    key_by: [key]
    window: {type: tumbling, size: 24h}
    aggregates: [{name: n, fn: count}]
    emit: {mode: on_update, every: 100ms}
    sinks: [out]
sinks:
  out: {type: file, path: @DIR@/out.jsonl}
state: {dir: @DIR@/state}
checkpoint: {interval: 200ms}
"#;

fn updates_arrive_while_windows_are_open(partitions: u32, shards: &str) {
    let dir = tempfile::tempdir().unwrap();
    let text = TOPOLOGY
        .replace("@PARTITIONS@", &partitions.to_string())
        .replace("@DIR@", &dir.path().display().to_string());
    let topology_file = dir.path().join("topology.yaml");
    fs::write(&topology_file, text).unwrap();
    let mut child = spawn_run(&topology_file, &["--shards", shards]);
    let out = dir.path().join("out.jsonl");
    let started = Instant::now();
    let mut lines = Vec::new();
    while lines.is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        lines = read_json_lines(&out);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !lines.is_empty(),
        "no coalesced update within 30 s ({partitions} partitions, {shards} shards); log:\n{}",
        run_log_tail(&topology_file, 4000)
    );
    for line in &lines {
        let n = line["n"].as_u64();
        assert!(
            n.is_some_and(|n| n > 0),
            "an update without a count: {line}"
        );
    }
}

#[test]
fn updates_arrive_from_a_shard_on_the_source_thread() {
    updates_arrive_while_windows_are_open(1, "1");
}

#[test]
fn updates_arrive_from_shards_on_their_own_threads() {
    updates_arrive_while_windows_are_open(2, "2");
}

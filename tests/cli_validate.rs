//! `weir validate`: every problem at once, each with its YAML path, exit code 2, nothing
//! started.

mod common;

use std::fs;

use common::weir;

#[test]
fn reports_every_problem_with_its_path_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    fs::write(
        &file,
        r#"
sources:
  events:
    type: generator
    rate: fast
pipelines:
  views:
    source: events
    key_by: [product]
    window: {type: sliding, size: 5m, slide: 10m, sise: 1m}
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum}
    sinks: [nowhere]
  sessions:
    source: events
    key_by: [user_id]
    window: {type: session, gap: 5 minutes}
    aggregates: [{name: n, fn: count}]
    sinks: [out]
sinks:
  out: {type: file, path: "DIR/out.jsonl"}
state: {dir: "DIR/state"}
"#
        .replace("DIR", &dir.path().display().to_string()),
    )
    .unwrap();
    let out = weir().arg("validate").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "sources.events.rate",
        "pipelines.views.window.sise",
        "pipelines.views.window",
        "pipelines.views.aggregates[1]",
        "pipelines.views.sinks",
        "pipelines.sessions.window.gap",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert!(err.contains("nowhere"), "{err}");
    assert!(err.contains("5 minutes"), "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "validate must not start anything"
    );

    // `run` refuses the same file the same way, before any I/O.
    let out = weir().arg("run").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.path().join("state").exists());
}

#[test]
fn the_default_topology_is_valid() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topology.yaml");
    let out = weir().arg("validate").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The crash test of the engine issue: one million events, `kill -9` at five random moments,
//! restart each time; the output file must equal the oracle's results line for line (order
//! aside): nothing missing, nothing twice.

mod common;

use std::fs;
use std::time::Instant;

use common::*;
use rand::{Rng, SeedableRng};
use weir_connectors::generator::GeneratorConfig;

const TOPOLOGY: &str = r#"
name: crash
sources:
  input:
    type: file
    paths: @PATHS@
    format: jsonl
    event_time: {field: ts_ms, format: epoch_millis}
    watermark: {max_out_of_orderness: 100ms}
    dead_letter: dead
pipelines:
  counts:
    source: input
    key_by: [key]
    window: {type: tumbling, size: 1m}
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum, field: value}
      - {name: mean, fn: avg, field: value}
    sinks: [results]
    late_output: late
sinks:
  results: {type: file, path: "@DIR@/results.jsonl"}
  late: {type: file, path: "@DIR@/late.jsonl"}
  dead: {type: file, path: "@DIR@/dead.jsonl"}
state: {dir: "@DIR@/state"}
checkpoint: {interval: 200ms}
"#;

#[test]
fn one_million_events_survive_five_kills() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("input.jsonl");
    generate(
        &input,
        &GeneratorConfig {
            count: Some(1_000_000),
            keys: 10_000,
            events_per_second_of_event_time: Some(1_000_000.0 / 600.0),
            max_out_of_orderness_ms: 100,
            late_ratio: 0.0005,
            malformed_ratio: 0.0005,
            seed: 2026,
            ..GeneratorConfig::default()
        },
    );
    let inputs = vec![input];

    // A straight run tells how long the job takes here, so the kills land while it runs.
    let straight_dir = root.path().join("straight");
    fs::create_dir_all(&straight_dir).unwrap();
    let straight_file = straight_dir.join("topology.yaml");
    fs::write(
        &straight_file,
        instantiate(TOPOLOGY, &straight_dir, &inputs),
    )
    .unwrap();
    let started = Instant::now();
    run_to_end(&straight_file, &[]);
    let straight_ms = started.elapsed().as_millis() as u64;

    let dir = root.path().join("killed");
    fs::create_dir_all(&dir).unwrap();
    let text = instantiate(TOPOLOGY, &dir, &inputs);
    let topology_file = dir.join("topology.yaml");
    fs::write(&topology_file, &text).unwrap();
    // Each restart resumes from its last checkpoint, so later runs have less left to do: pick
    // kill moments over the first ~15% of a full run each time.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let upper = (straight_ms * 15 / 100).max(50);
    let kills: Vec<u64> = (0..5).map(|_| rng.random_range(upper / 5..upper)).collect();
    let hits = run_with_kills(&topology_file, &kills, &[]);
    assert!(
        hits >= 3,
        "only {hits} of 5 kills hit a running job (straight run: {straight_ms} ms)"
    );

    let topology = load(&text);
    let expected = expected(&topology, "counts", &inputs);
    let mut expected_lines = std::collections::BTreeMap::new();
    for result in expected.results.values() {
        let line = serde_json::to_string(result).unwrap();
        *expected_lines.entry(line).or_insert(0usize) += 1;
    }
    let actual_lines = line_multiset(&dir.join("results.jsonl"));
    let missing: Vec<_> = expected_lines
        .keys()
        .filter(|l| !actual_lines.contains_key(*l))
        .take(5)
        .collect();
    let extra: Vec<_> = actual_lines
        .keys()
        .filter(|l| !expected_lines.contains_key(*l))
        .take(5)
        .collect();
    let twice: Vec<_> = actual_lines
        .iter()
        .filter(|(_, n)| **n > 1)
        .take(5)
        .collect();
    assert!(
        actual_lines == expected_lines,
        "results differ from the oracle: {} lines vs {} expected; missing {missing:?}; extra {extra:?}; duplicated {twice:?}",
        actual_lines.values().sum::<usize>(),
        expected_lines.len()
    );
    // The straight run produced the same file content.
    assert_eq!(
        line_multiset(&straight_dir.join("results.jsonl")),
        actual_lines
    );
    assert_eq!(
        read_json_lines(&dir.join("late.jsonl")).len(),
        expected.late
    );
    assert_eq!(
        read_json_lines(&dir.join("dead.jsonl")).len(),
        expected.rejected
    );
    assert_eq!(
        line_multiset(&dir.join("late.jsonl")),
        line_multiset(&straight_dir.join("late.jsonl"))
    );
}

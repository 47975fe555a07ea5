//! A bad-input corpus: every record is either processed (counted in a window result or as
//! late) or in the dead-letter output with its reason; the counts add up to the input.

mod common;

use std::fs;

use common::*;

const TOPOLOGY: &str = r#"
name: bad-input
sources:
  input:
    type: file
    paths: @PATHS@
    format: jsonl
    event_time: {field: ts, format: auto}
    watermark: {max_out_of_orderness: 1s, max_future_skew: 1h}
    dead_letter: dead
pipelines:
  all:
    source: input
    key_by: [key]
    window: {type: tumbling, size: 1h}
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum, field: value}
    sinks: [results]
    late_output: late
sinks:
  results: {type: file, path: "@DIR@/results.jsonl"}
  late: {type: file, path: "@DIR@/late.jsonl"}
  dead: {type: file, path: "@DIR@/dead.jsonl"}
state: {dir: "@DIR@/state"}
checkpoint: {interval: 50ms}
"#;

/// (line, whether it must be rejected, a word the rejection reason must contain).
fn corpus() -> Vec<(Vec<u8>, bool, &'static str)> {
    let base = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let good = |i: i64| {
        format!(
            r#"{{"ts": {}, "key": "k{}", "value": {}}}"#,
            base + i * 1000,
            i % 7,
            i
        )
    };
    let mut lines: Vec<(Vec<u8>, bool, &str)> = Vec::new();
    for i in 0..200 {
        lines.push((good(i).into_bytes(), false, ""));
    }
    let far_future = base + 10 * 365 * 86_400_000 * 2;
    let huge_key = "k".repeat(1 << 20);
    let huge_value = "v".repeat(1 << 20);
    let cases: Vec<(String, bool, &str)> = vec![
        // Invalid JSON.
        (
            r#"{"ts": 1767225600000, "key": "a", "value": 1"#.into(),
            true,
            "",
        ),
        ("not json at all".into(), true, ""),
        ("[1, 2, 3]".into(), true, ""),
        (
            r#"{"ts": 1767225600000, "key": "a", "value": 1}}"#.into(),
            true,
            "",
        ),
        (r#"{"ts": , "key": "a"}"#.into(), true, ""),
        (
            r#"{"ts": 1767225600000, "key": "a\q", "value": 1}"#.into(),
            true,
            "",
        ),
        // Missing or wrong-typed fields.
        (r#"{"key": "a", "value": 1}"#.into(), true, "ts"),
        (r#"{"ts": 1767225600000, "value": 1}"#.into(), true, "key"),
        (
            r#"{"ts": 1767225600000, "key": null, "value": 1}"#.into(),
            true,
            "key",
        ),
        (
            r#"{"ts": 1767225600000, "key": "a", "value": "abc"}"#.into(),
            true,
            "value",
        ),
        (
            format!(r#"{{"ts": 1767225600000, "key": "a", "value": "{huge_value}"}}"#),
            true,
            "value",
        ),
        // Timestamps in odd formats: rejected ...
        (
            r#"{"ts": "yesterday", "key": "a", "value": 1}"#.into(),
            true,
            "",
        ),
        (r#"{"ts": "", "key": "a", "value": 1}"#.into(), true, ""),
        (
            r#"{"ts": "2026-13-45T99:00:00Z", "key": "a", "value": 1}"#.into(),
            true,
            "",
        ),
        (r#"{"ts": true, "key": "a", "value": 1}"#.into(), true, ""),
        (r#"{"ts": null, "key": "a", "value": 1}"#.into(), true, ""),
        (r#"{"ts": 1e300, "key": "a", "value": 1}"#.into(), true, ""),
        // ... and accepted.
        (
            r#"{"ts": "2026-01-01T00:10:00Z", "key": "a", "value": 1}"#.into(),
            false,
            "",
        ),
        (
            r#"{"ts": "2026-01-01T01:10:00.250+01:00", "key": "a", "value": 2}"#.into(),
            false,
            "",
        ),
        (
            r#"{"ts": 1767226200, "key": "a", "value": 3}"#.into(),
            false,
            "",
        ),
        (
            r#"{"ts": 1767226200000000, "key": "a", "value": 4}"#.into(),
            false,
            "",
        ),
        // Far in the future: quarantined.
        (
            format!(r#"{{"ts": {far_future}, "key": "a", "value": 1}}"#),
            true,
            "future",
        ),
        // A huge but valid key is processed.
        (
            format!(r#"{{"ts": 1767225601000, "key": "{huge_key}", "value": 1}}"#),
            false,
            "",
        ),
        // Late: behind the watermark by far.
        (
            r#"{"ts": 1767225000000, "key": "a", "value": 1}"#.into(),
            false,
            "",
        ),
    ];
    for (line, bad, word) in cases {
        lines.push((line.into_bytes(), bad, word));
    }
    // Not UTF-8.
    lines.push((
        b"{\"ts\": 1767225600000, \"key\": \"\xff\xfe\", \"value\": 1}".to_vec(),
        true,
        "",
    ));
    // Longer than the 16 MiB line limit.
    let mut giant = br#"{"ts": 1767225600000, "key": "a", "value": ""#.to_vec();
    giant.extend(std::iter::repeat_n(b'x', 17 << 20));
    giant.extend_from_slice(br#""}"#);
    lines.push((giant, true, ""));
    for i in 200..300 {
        lines.push((good(i).into_bytes(), false, ""));
    }
    lines
}

#[test]
fn every_bad_record_is_dead_lettered_and_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let corpus = corpus();
    let mut body = Vec::new();
    for (line, _, _) in &corpus {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    fs::write(&input, body).unwrap();
    let topology_file = dir.path().join("topology.yaml");
    fs::write(&topology_file, instantiate(TOPOLOGY, dir.path(), &[input])).unwrap();
    run_to_end(&topology_file, &[]);

    let dead = read_json_lines(&dir.path().join("dead.jsonl"));
    let late = read_json_lines(&dir.path().join("late.jsonl"));
    let results = read_json_lines(&dir.path().join("results.jsonl"));
    let processed: u64 = results.iter().map(|r| r["n"].as_u64().unwrap()).sum();
    let expected_bad = corpus.iter().filter(|(_, bad, _)| *bad).count();

    assert_eq!(dead.len(), expected_bad, "dead letters: {dead:#?}");
    assert_eq!(late.len(), 1, "late: {late:?}");
    assert_eq!(
        processed as usize + late.len() + dead.len(),
        corpus.len(),
        "processed + late + dead letters must add up to the input"
    );
    for d in &dead {
        assert!(!d["error"].as_str().unwrap().is_empty(), "{d}");
        assert!(!d["partition"].as_str().unwrap().is_empty(), "{d}");
        assert!(!d["offset"].as_str().unwrap().is_empty(), "{d}");
        assert!(!d["raw"].as_str().unwrap().is_empty(), "{d}");
    }
    // Reasons name what was wrong.
    let errors: Vec<String> = dead
        .iter()
        .map(|d| d["error"].as_str().unwrap().to_lowercase())
        .collect();
    for (_, bad, word) in &corpus {
        if *bad && !word.is_empty() {
            assert!(
                errors.iter().any(|e| e.contains(word)),
                "no dead letter mentions `{word}`: {errors:#?}"
            );
        }
    }
}

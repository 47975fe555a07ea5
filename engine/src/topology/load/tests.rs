use std::collections::HashMap;

use super::*;
use crate::topology::*;

/// Accepts every connector.
struct AcceptAll;

impl ConnectorCatalog for AcceptAll {
    fn check_source(&self, _: &str, _: &SourceSpec) -> Vec<ConfigIssue> {
        Vec::new()
    }
    fn check_sink(&self, _: &str, _: &SinkSpec) -> Vec<ConfigIssue> {
        Vec::new()
    }
}

/// Knows `generator` sources and `console`/`file` sinks; `file` needs a `path`. Quotes option
/// values in its messages, as a careless connector might.
struct Strict;

impl ConnectorCatalog for Strict {
    fn check_source(&self, name: &str, spec: &SourceSpec) -> Vec<ConfigIssue> {
        if spec.kind == "generator" {
            return Vec::new();
        }
        vec![ConfigIssue {
            path: format!("sources.{name}.type"),
            message: format!("unknown source type `{}`", spec.kind),
        }]
    }
    fn check_sink(&self, name: &str, spec: &SinkSpec) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        if spec.kind == "file" && !spec.options.contains_key("path") {
            out.push(ConfigIssue {
                path: format!("sinks.{name}.path"),
                message: "the file sink needs `path`".into(),
            });
        }
        if let Some(pw) = spec.options.get("password") {
            out.push(ConfigIssue {
                path: format!("sinks.{name}.password"),
                message: format!("password {pw} rejected"),
            });
        }
        out
    }
}

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn issues(yaml: &str) -> Vec<ConfigIssue> {
    load_str_with_env(yaml, &AcceptAll, &no_env).expect_err("expected issues")
}

fn render(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}\n"))
        .collect::<String>()
}

/// Asserts an issue at exactly `path` whose message contains `fragment`.
fn assert_issue(issues: &[ConfigIssue], path: &str, fragment: &str) {
    assert!(
        issues
            .iter()
            .any(|i| i.path == path && i.message.contains(fragment)),
        "no issue at `{path}` containing `{fragment}`; got:\n{}",
        render(issues)
    );
}

/// The topology as the model's derived `Deserialize` reads it. Through JSON, because
/// serde_yaml 0.9 reads enums only in its `!tag` form, not as the single-key mappings
/// (`- filter: ...`) that the loader and the JSON Schema use.
fn derived(yaml: &str) -> Topology {
    let json: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    serde_json::from_value(json).unwrap()
}

const MINIMAL: &str = "
sources:
  in: { type: generator }
pipelines:
  p:
    source: in
    key_by: [k]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
sinks:
  out: { type: console }
";

#[test]
fn valid_topology_loads() {
    let t = load_str_with_env(&fixture("topology_valid.yaml"), &AcceptAll, &no_env)
        .unwrap_or_else(|e| panic!("unexpected issues:\n{}", render(&e)));
    assert_eq!(t.name, "shop");
    let clicks = &t.sources["clicks"];
    assert_eq!(clicks.kind, "generator");
    assert_eq!(clicks.options["rate"], serde_json::json!(1000));
    assert_eq!(clicks.dead_letter.as_deref(), Some("bad"));
    assert_eq!(clicks.event_time.format, TimeFormat::EpochMillis);
    assert_eq!(clicks.watermark.max_out_of_orderness.as_millis(), 5_000);
    let views = &t.pipelines["views"];
    assert_eq!(
        views.window,
        Some(WindowSpec::Sliding {
            size: Duration::from_millis(600_000),
            slide: Duration::from_millis(60_000),
            allowed_lateness: Some(Duration::from_millis(30_000)),
        })
    );
    assert_eq!(views.steps.len(), 2);
    assert_eq!(views.aggregates[2].q, Some(0.99));
    assert_eq!(views.emit.mode, EmitMode::Both);
    assert_eq!(t.pipelines["sessions"].emit, EmitSpec::default());
    assert_eq!(
        t.sinks["late"].options["path"],
        serde_json::json!("./late.jsonl")
    );
    assert_eq!(t.state.memory_budget, ByteSize(256 << 20));
    assert_eq!(t.checkpoint.interval.as_millis(), 500);
    assert_eq!(t.parallelism.shards, Some(4));

    // The hand-read parts agree with the derived deserializer.
    assert_eq!(derived(&fixture("topology_valid.yaml")), t);
}

#[test]
fn defaults_apply_to_a_minimal_topology() {
    let t = load_str_with_env(MINIMAL, &AcceptAll, &no_env).unwrap();
    assert_eq!(t.name, "weir");
    assert_eq!(t.state, StateConfig::default());
    assert_eq!(t.checkpoint, CheckpointConfig::default());
    assert_eq!(t.parallelism, ParallelismConfig::default());
    assert_eq!(derived(MINIMAL), t);
}

#[test]
fn every_mistake_is_reported_with_its_path() {
    let found = issues(&fixture("topology_many_mistakes.yaml"));
    let expected = [
        (
            "sources.clicks.dead_letter",
            "sink `nowhere` is not defined; defined sinks: out",
        ),
        (
            "sources.clicks.watermark.max_out_of_orderness",
            "invalid duration `5 minutes`",
        ),
        (
            "pipelines.views.steps[0].filter",
            "invalid CEL expression: syntax error at 1:",
        ),
        (
            "pipelines.views.window.slide",
            "window slide 10m is larger than size 5m",
        ),
        ("pipelines.views.aggregates[1].q", "`percentile` needs `q`"),
        (
            "pipelines.views.aggregates[2].fn",
            "unknown variant `median`, expected one of",
        ),
        (
            "pipelines.views.sinks[1]",
            "sink `missing_sink` is not defined; defined sinks: out",
        ),
        (
            "pipelines.sessions.source",
            "source `clickz` is not defined; defined sources: clicks",
        ),
        ("pipelines.sessions.key_by", "`key_by` is empty"),
        (
            "pipelines.sessions.window.sise",
            "unknown field `sise`, expected `size` or `allowed_lateness`",
        ),
        ("checkpoint.interval", "invalid duration `abc`"),
        (
            "parallelism.shards",
            "invalid type: string \"many\", expected u32",
        ),
    ];
    for (path, fragment) in expected {
        assert_issue(&found, path, fragment);
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "unexpected extra issues:\n{}",
        render(&found)
    );
}

#[test]
fn structural_problems() {
    let found = issues("");
    assert_issue(&found, "(root)", "the topology is empty");

    let found = issues("[1, 2]");
    assert_issue(
        &found,
        "(root)",
        "expected the topology (a mapping), found a list",
    );

    let found = issues("sources: {a: [}\n");
    assert_issue(&found, "(root)", "not valid YAML");

    let found = issues("extra: 1\nsources: {}\n");
    assert_issue(
        &found,
        "extra",
        "unknown field `extra`, expected one of `name`",
    );
    assert_issue(&found, "sources", "no source is defined");
    assert_issue(&found, "pipelines", "required field `pipelines` is missing");
    assert_issue(&found, "sinks", "required field `sinks` is missing");
}

#[test]
fn pipeline_field_problems() {
    let found = issues(
        "
sources:
  in: { type: generator, dead_letter: out }
pipelines:
  p:
    source: in
    steps:
      - filtr: 'x > 1'
      - compute: { name: y, expr: 'x +' }
      - compute: { name: '', expr: 'x' }
    key_by: [k, k]
    window: { type: hopping, size: 1m }
    aggregates:
      - { name: k, fn: count }
      - { name: total, fn: sum }
      - { name: total, fn: max, field: v, q: 0.5 }
      - { name: window_end, fn: min, field: v }
      - { name: top, fn: top_n, field: v, n: 0 }
      - { name: med, fn: percentile, field: v, q: 1.5 }
      - { name: c, fn: count, n: 3 }
    having: 'nope > 1 && total > 0'
    emit: { mode: on_close, every: 1s }
    sinks: []
    late_output: gone
    extra_field: true
  q:
    source: in
    key_by: k
    window: { size: 1m }
    aggregates: []
    sinks: [out]
  r:
    source: in
    key_by: [k]
    window: { type: session, gap: 0s }
    aggregates: []
    having: 'window_start > ('
    sinks: [out]
  s:
    key_by: [k]
    window: { type: count, size: 0 }
    aggregates: []
  t:
    source: in
    key_by: [k]
    window: { type: tumbling, size: 0ms }
    aggregates: not-a-list
    emit: { mode: on_update, every: 0s }
    sinks: [out]
sinks:
  out: { type: console }
",
    );
    for (path, fragment) in [
        (
            "pipelines.p.steps[0].filtr",
            "unknown step `filtr`, expected `filter` or `compute`",
        ),
        (
            "pipelines.p.steps[1].compute.expr",
            "invalid CEL expression",
        ),
        ("pipelines.p.steps[2].compute.name", "must not be empty"),
        ("pipelines.p.key_by[1]", "key field `k` is listed twice"),
        ("pipelines.p.window.type", "unknown window type `hopping`"),
        ("pipelines.p.aggregates[0].name", "is also a `key_by` field"),
        ("pipelines.p.aggregates[1].field", "`sum` needs a `field`"),
        (
            "pipelines.p.aggregates[2].name",
            "already used by aggregates[1]",
        ),
        (
            "pipelines.p.aggregates[2].q",
            "`q` applies only to `percentile`, not to `max`",
        ),
        ("pipelines.p.aggregates[3].name", "is reserved"),
        ("pipelines.p.aggregates[4].n", "`n` must be at least 1"),
        (
            "pipelines.p.aggregates[5].q",
            "`q` must be in [0, 1], got 1.5",
        ),
        ("pipelines.p.aggregates[6].n", "`n` applies only to `top_n`"),
        (
            "pipelines.p.having",
            "`having` uses `nope`, which is not a result field",
        ),
        (
            "pipelines.p.emit.every",
            "applies only with `mode: on_update`",
        ),
        ("pipelines.p.sinks", "`sinks` is empty"),
        ("pipelines.p.late_output", "sink `gone` is not defined"),
        (
            "pipelines.p.extra_field",
            "unknown field `extra_field`, expected one of `source`",
        ),
        (
            "pipelines.q.key_by",
            "invalid type: string \"k\", expected a sequence",
        ),
        (
            "pipelines.q.window.type",
            "required field `type` is missing",
        ),
        (
            "pipelines.r.window.gap",
            "session gap must be longer than 0ms",
        ),
        ("pipelines.r.having", "invalid CEL expression: syntax error"),
        ("pipelines.s.source", "required field `source` is missing"),
        ("pipelines.s.sinks", "required field `sinks` is missing"),
        (
            "pipelines.s.window.size",
            "count window size must be at least 1",
        ),
        (
            "pipelines.t.window.size",
            "window size must be longer than 0ms",
        ),
        ("pipelines.t.aggregates", "expected a list, found a string"),
        ("pipelines.t.emit.every", "`every` must be longer than 0ms"),
    ] {
        assert_issue(&found, path, fragment);
    }
}

#[test]
fn wrong_types_read_in_yaml_terms() {
    let found = issues(
        "
sources:
  in: { type: generator, event_time: 5 }
pipelines:
  p:
    source: in
    key_by: [k]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }, 'sum']
    steps: ['x > 1', { filter: a, compute: { name: b, expr: c } }, !filter 'x > 2']
    emit: { mode: sometimes }
    sinks: [out]
sinks:
  out: { type: console }
state: { memory_budget: 5 parsecs }
checkpoint: { interval: 1ms }
parallelism: { shards: 0 }
",
    );
    assert_issue(&found, "sources.in.event_time", "expected a mapping");
    assert_issue(&found, "pipelines.p.aggregates[1]", "expected a mapping");
    assert_issue(
        &found,
        "pipelines.p.steps[0]",
        "expected a step: `filter: <expr>` or `compute: {name, expr}`, found a string",
    );
    assert_issue(
        &found,
        "pipelines.p.steps[1]",
        "a step has exactly one of them, found `filter`, `compute`",
    );
    assert_issue(
        &found,
        "pipelines.p.emit.mode",
        "unknown variant `sometimes`",
    );
    assert_issue(&found, "state.memory_budget", "unknown unit `parsecs`");
    assert_issue(
        &found,
        "checkpoint.interval",
        "too short; use at least 10ms",
    );
    assert_issue(&found, "parallelism.shards", "must be at least 1");
    for issue in &found {
        assert!(!issue.message.contains("struct "), "{issue}");
        assert!(!issue.message.contains("enum "), "{issue}");
    }
}

#[test]
fn connector_catalog_issues_are_collected() {
    let yaml = "
sources:
  in: { type: kafka }
pipelines:
  p:
    source: in
    key_by: [k]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out, f]
sinks:
  out: { type: console }
  f: { type: file }
";
    let found = load_str_with_env(yaml, &Strict, &no_env).unwrap_err();
    assert_issue(&found, "sources.in.type", "unknown source type `kafka`");
    assert_issue(&found, "sinks.f.path", "the file sink needs `path`");
    assert_eq!(found.len(), 2, "{}", render(&found));
}

#[test]
fn environment_variables_are_substituted() {
    let vars: HashMap<&str, &str> = [
        ("SINK_PATH", "/tmp/out.jsonl"),
        ("SHARDS", "3"),
        ("WINDOW", "5m"),
        ("JOB", "12345"),
    ]
    .into_iter()
    .collect();
    let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
    let yaml = "
name: ${JOB}
sources:
  in: { type: generator, label: 'rate-${RATE:-100}' }
pipelines:
  p:
    source: in
    key_by: [k]
    window: { type: tumbling, size: '${WINDOW}' }
    aggregates: [{ name: n, fn: count }]
    sinks: [f]
sinks:
  f: { type: file, path: '${SINK_PATH}', port: '${SHARDS}' }
parallelism:
  shards: ${SHARDS}
checkpoint:
  interval: ${INTERVAL:-250ms}
";
    let t = load_str_with_env(yaml, &AcceptAll, &lookup)
        .unwrap_or_else(|e| panic!("unexpected issues:\n{}", render(&e)));
    assert_eq!(t.name, "12345", "a string field keeps the digits as text");
    assert_eq!(
        t.sources["in"].options["label"],
        serde_json::json!("rate-100")
    );
    assert_eq!(
        t.pipelines["p"].window,
        Some(WindowSpec::Tumbling {
            size: Duration::from_millis(300_000),
            allowed_lateness: None,
        })
    );
    assert_eq!(
        t.sinks["f"].options["path"],
        serde_json::json!("/tmp/out.jsonl")
    );
    // Connector options stay strings: connectors decide what they accept.
    assert_eq!(t.sinks["f"].options["port"], serde_json::json!("3"));
    assert_eq!(
        t.parallelism.shards,
        Some(3),
        "a whole reference may spell a number"
    );
    assert_eq!(t.checkpoint.interval.as_millis(), 250);
}

#[test]
fn missing_variables_are_reported_by_path_without_values() {
    let secret = "s3cr3t-Pa55";
    let lookup = |name: &str| (name == "PASSWORD").then(|| secret.to_string());
    let yaml = "
sources:
  in: { type: generator }
pipelines:
  p:
    source: in
    key_by: [k]
    window: { type: tumbling, size: '${PASSWORD}' }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
sinks:
  out: { type: console, password: '${PASSWORD}', user: '${DB_USER}' }
parallelism: { shards: '${PASSWORD}' }
";
    let found = load_str_with_env(yaml, &Strict, &lookup).unwrap_err();
    assert_issue(
        &found,
        "sinks.out.user",
        "environment variable `DB_USER` is not set",
    );
    assert_issue(
        &found,
        "pipelines.p.window.size",
        "invalid duration `<redacted>`",
    );
    assert_issue(&found, "parallelism.shards", "<redacted>");
    for issue in &found {
        assert!(!issue.message.contains(secret), "leaked: {issue}");
    }
    // The catalog saw the value (it is needed to connect) but its message is redacted.
    assert_issue(
        &found,
        "sinks.out.password",
        "password \"<redacted>\" rejected",
    );
}

#[test]
fn yaml_merge_keys_are_applied() {
    let yaml = "
sources:
  in: { type: generator }
pipelines:
  a: &base
    source: in
    key_by: [k]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
  b:
    <<: *base
    key_by: [j]
sinks:
  out: { type: console }
";
    let t = load_str_with_env(yaml, &AcceptAll, &no_env).unwrap();
    assert_eq!(t.pipelines["b"].key_by, vec!["j".to_string()]);
    assert_eq!(t.pipelines["b"].source, "in");
}

#[test]
fn load_file_reads_and_reports_unreadable_files() {
    let t = load_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/topology_valid.yaml"),
        &AcceptAll,
    );
    assert!(t.is_ok());
    let err = load_file(
        std::path::Path::new("/nonexistent/topology.yaml"),
        &AcceptAll,
    )
    .unwrap_err();
    assert_eq!(err[0].path, "(file)");
    assert!(err[0].message.contains("cannot read"));
}

#[test]
fn window_field_mirrors_match_the_model() {
    let cases = [
        "{ type: tumbling, size: 1m, allowed_lateness: 5s }",
        "{ type: sliding, size: 1m, slide: 10s, allowed_lateness: 5s }",
        "{ type: session, gap: 1m, allowed_lateness: 5s }",
        "{ type: count, size: 10 }",
    ];
    for case in cases {
        let direct: WindowSpec = serde_yaml::from_str(case).unwrap();
        let node: Value = serde_yaml::from_str(case).unwrap();
        let mut loader = Loader {
            issues: Vec::new(),
            subs: Vec::new(),
        };
        let ours = loader.window(&node, "w");
        assert_eq!(ours, Some(direct), "{case}: {:?}", loader.issues);
    }
}

#[test]
fn pipeline_field_list_matches_the_model() {
    let schema = serde_json::to_value(schemars::schema_for!(PipelineSpec)).unwrap();
    let mut props: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    props.sort_unstable();
    let mut ours = PIPELINE_FIELDS.to_vec();
    ours.sort_unstable();
    assert_eq!(props, ours);

    let schema = serde_json::to_value(schemars::schema_for!(Topology)).unwrap();
    let mut props: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    props.sort_unstable();
    let mut ours = TOPOLOGY_FIELDS.to_vec();
    ours.sort_unstable();
    assert_eq!(props, ours);
}

#[test]
fn the_default_topology_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology.yaml");
    if !path.exists() {
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    if let Err(found) = load_str_with_env(&text, &AcceptAll, &no_env) {
        panic!("topology.yaml has issues:\n{}", render(&found));
    }
}

/// Accepts every connector; `kafka` sources can repartition.
struct Repartitioning;

impl ConnectorCatalog for Repartitioning {
    fn check_source(&self, _: &str, _: &SourceSpec) -> Vec<ConfigIssue> {
        Vec::new()
    }
    fn check_sink(&self, _: &str, _: &SinkSpec) -> Vec<ConfigIssue> {
        Vec::new()
    }
    fn supports_repartition(&self, source_type: &str) -> bool {
        source_type == "kafka"
    }
}

#[test]
fn repartition_needs_a_window_and_a_source_that_can_carry_it() {
    let yaml = "
sources:
  k: { type: kafka }
  g: { type: generator }
pipelines:
  ok:
    source: k
    key_by: [product]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
    repartition: true
  generated:
    source: g
    key_by: [product]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
    repartition: true
  passthrough:
    source: k
    select: [product]
    sinks: [out]
    repartition: true
  typo:
    source: k
    key_by: [product]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
    repartition: sometimes
sinks:
  out: { type: console }
";
    let found = load_str_with_env(yaml, &Repartitioning, &no_env).expect_err("issues");
    assert_issue(
        &found,
        "pipelines.generated.repartition",
        "type `generator`",
    );
    assert_issue(
        &found,
        "pipelines.passthrough.repartition",
        "needs a `window`",
    );
    assert_issue(&found, "pipelines.typo.repartition", "");
    assert!(
        !found.iter().any(|i| i.path.starts_with("pipelines.ok")),
        "{}",
        render(&found)
    );

    let ok = "
sources:
  k: { type: kafka }
pipelines:
  ok:
    source: k
    key_by: [product]
    window: { type: tumbling, size: 1m }
    aggregates: [{ name: n, fn: count }]
    sinks: [out]
    repartition: true
sinks:
  out: { type: console }
";
    let t = load_str_with_env(ok, &Repartitioning, &no_env).unwrap();
    assert!(t.pipelines["ok"].repartition);
    assert_eq!(t, derived(ok));
    // A catalog without exchanges refuses it.
    let found = load_str_with_env(ok, &AcceptAll, &no_env).expect_err("issues");
    assert_issue(&found, "pipelines.ok.repartition", "kafka");
    // Off by default.
    assert!(!derived(MINIMAL).pipelines["p"].repartition);
}

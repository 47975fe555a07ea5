//! Helpers of the end-to-end tests: driving the `weir` binary, generating inputs, and the
//! oracle's expected results for a topology.

#![allow(dead_code)]

pub mod kafka;

use std::collections::BTreeMap;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_connectors::generator::{write_events, GeneratorConfig, OutputFormat};
use weir_connectors::Registry;
use weir_engine::aggregate::{Aggregates, CompiledAggregate};
use weir_engine::event::decode::JsonDecoder;
use weir_engine::event::{FieldSlots, ResultSchema, Value};
use weir_engine::expr::{RecordExpr, ResultPredicate};
use weir_engine::oracle::{self, OracleInput, OracleSpec, ResultMap};
use weir_engine::runtime::DecodeContext;
use weir_engine::topology::{load_str, AggregateFunction, StepSpec, Topology};

/// The `weir` binary under test, logging warnings (or `WEIR_TEST_LOG`, a `WEIR_LOG` filter).
pub fn weir() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.env(
        "WEIR_LOG",
        std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

/// Writes `config`'s events as JSON lines to `path`.
pub fn generate(path: &Path, config: &GeneratorConfig) {
    let mut out = BufWriter::new(fs::File::create(path).unwrap());
    write_events(config, OutputFormat::Jsonl, &mut out).unwrap();
}

/// Splits the lines of `input` round-robin into `parts` files beside it (partitions).
pub fn split_lines(input: &Path, parts: usize) -> Vec<PathBuf> {
    let text = fs::read_to_string(input).unwrap();
    let mut outs: Vec<String> = vec![String::new(); parts];
    for (i, line) in text.lines().enumerate() {
        outs[i % parts].push_str(line);
        outs[i % parts].push('\n');
    }
    outs.into_iter()
        .enumerate()
        .map(|(i, body)| {
            let p = input.with_extension(format!("part{i}.jsonl"));
            fs::write(&p, body).unwrap();
            p
        })
        .collect()
}

/// Fills a topology template: `@DIR@` becomes `dir`, `@PATHS@` the YAML list of `inputs`.
pub fn instantiate(template: &str, dir: &Path, inputs: &[PathBuf]) -> String {
    let paths: Vec<String> = inputs
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    template
        .replace("@DIR@", &dir.display().to_string())
        .replace("@PATHS@", &format!("[{}]", paths.join(", ")))
}

/// Loads a topology from text, panicking with every issue if it is invalid.
pub fn load(text: &str) -> Topology {
    load_str(text, &Registry).unwrap_or_else(|issues| {
        panic!("invalid test topology: {issues:#?}");
    })
}

/// Runs `weir run FILE` to completion and asserts success.
pub fn run_to_end(topology_file: &Path, extra: &[&str]) {
    let out = weir()
        .arg("run")
        .arg("--no-status")
        .args(extra)
        .arg(topology_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weir run failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where [`spawn_run`] appends the standard error of runs of `topology_file`: a file, not a
/// pipe, so a chatty worker never blocks on a pipe nobody reads.
pub fn run_log(topology_file: &Path) -> PathBuf {
    topology_file.with_extension("stderr.log")
}

/// Starts `weir run FILE` in the background; its standard error goes to [`run_log`].
pub fn spawn_run(topology_file: &Path, extra: &[&str]) -> Child {
    spawn_run_logging(topology_file, extra, None)
}

/// [`spawn_run`] with the `WEIR_LOG` filter `log_filter` instead of the tests' default, so a
/// test can keep the account it prints when it fails (a group's protocol trace, say).
pub fn spawn_run_logging(topology_file: &Path, extra: &[&str], log_filter: Option<&str>) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_log(topology_file))
        .unwrap();
    let mut cmd = weir();
    if let Some(filter) = log_filter {
        cmd.env("WEIR_LOG", filter);
    }
    cmd.arg("run")
        .arg("--no-status")
        .args(extra)
        .arg(topology_file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The last `max` bytes of the runs' standard error of `topology_file`.
pub fn run_log_tail(topology_file: &Path, max: usize) -> String {
    let text = fs::read(run_log(topology_file)).unwrap_or_default();
    String::from_utf8_lossy(&text[text.len().saturating_sub(max)..]).into_owned()
}

/// Runs the topology, killing the process with SIGKILL after each delay in `kills` (ms after
/// that run's start) and restarting it, then lets the last run finish. Returns how many kills
/// hit a running process.
pub fn run_with_kills(topology_file: &Path, kills: &[u64], extra: &[&str]) -> usize {
    let mut hits = 0;
    for &delay in kills {
        let mut child = spawn_run(topology_file, extra);
        let started = Instant::now();
        let mut exited = None;
        while exited.is_none() && started.elapsed() < Duration::from_millis(delay) {
            exited = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        if exited.is_none() {
            child.kill().unwrap(); // SIGKILL
        }
        let status = child.wait().unwrap();
        match exited {
            Some(status) => assert!(
                status.success(),
                "weir run failed before it was killed: {status}\n{}",
                run_log_tail(topology_file, 4000)
            ),
            // It may have finished just before the signal.
            None if status.success() => {}
            None => hits += 1,
        }
    }
    run_to_end(topology_file, extra);
    hits
}

/// Reads the JSON lines of a results file.
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// What the oracle says a pipeline of a topology must produce from its input files.
pub struct Expected {
    /// The final result per window.
    pub results: ResultMap,
    /// Late records.
    pub late: usize,
    /// Input lines rejected (undecodable or invalid for the pipeline).
    pub rejected: usize,
    /// Names for reading results back.
    pub schema: Arc<ResultSchema>,
}

/// Computes the oracle's results of pipeline `pipeline` of `topology`, whose source reads the
/// JSON-lines files `inputs` (each a partition, in order).
pub fn expected(topology: &Topology, pipeline: &str, inputs: &[PathBuf]) -> Expected {
    let spec = &topology.pipelines[pipeline];
    let source = &topology.sources[&spec.source];
    let mut slots = FieldSlots::default();
    let key_slots: Vec<usize> = spec.key_by.iter().map(|k| slots.slot(k)).collect();
    let mut steps = Vec::new();
    for step in &spec.steps {
        match step {
            StepSpec::Filter(src) => {
                let e = RecordExpr::compile(src).unwrap();
                for f in e.referenced_fields() {
                    slots.slot(&f);
                }
                steps.push((None, e));
            }
            StepSpec::Compute(c) => {
                let e = RecordExpr::compile(&c.expr).unwrap();
                for f in e.referenced_fields() {
                    slots.slot(&f);
                }
                steps.push((Some(slots.slot(&c.name)), e));
            }
        }
    }
    let mut numeric = Vec::new();
    let aggregates: Vec<CompiledAggregate> = spec
        .aggregates
        .iter()
        .map(|a| {
            let slot = a.field.as_deref().map(|f| slots.slot(f));
            if matches!(
                a.function,
                AggregateFunction::Sum | AggregateFunction::Avg | AggregateFunction::Percentile
            ) {
                numeric.extend(slot);
            }
            CompiledAggregate {
                name: a.name.as_str().into(),
                function: a.function,
                slot,
                q: a.q.unwrap_or(0.5),
                n: a.n.unwrap_or(10),
            }
        })
        .collect();
    let schema = Arc::new(ResultSchema {
        pipeline: pipeline.into(),
        key_fields: spec.key_by.iter().map(|k| k.as_str().into()).collect(),
        aggregate_names: spec
            .aggregates
            .iter()
            .map(|a| a.name.as_str().into())
            .collect(),
    });
    let slots = Arc::new(slots);
    let ctx = DecodeContext {
        source_name: spec.source.as_str().into(),
        slots: slots.clone(),
        event_time: source.event_time.clone(),
    };
    let mut records = Vec::new();
    let mut rejected = 0;
    for (partition, path) in inputs.iter().enumerate() {
        let mut decoder = JsonDecoder::new(&ctx);
        let text = fs::read(path).unwrap();
        'lines: for line in text.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(mut record) = decoder.decode(line) else {
                rejected += 1;
                continue;
            };
            record.fields.resize(slots.len(), Value::Null);
            for (target, expr) in &steps {
                match target {
                    None => match expr.eval_bool(&slots, &record) {
                        Ok(true) => {}
                        Ok(false) => continue 'lines,
                        Err(_) => {
                            rejected += 1;
                            continue 'lines;
                        }
                    },
                    Some(slot) => match expr.eval(&slots, &record) {
                        Ok(v) => record.fields[*slot] = v,
                        Err(_) => {
                            rejected += 1;
                            continue 'lines;
                        }
                    },
                }
            }
            let key_missing = key_slots.iter().any(|&s| record.fields[s] == Value::Null);
            let not_numeric = numeric.iter().any(|&s| {
                !matches!(
                    record.fields[s],
                    Value::Null | Value::Int(_) | Value::Float(_)
                )
            });
            if key_missing || not_numeric {
                rejected += 1;
                continue;
            }
            records.push(OracleInput { partition, record });
        }
    }
    let oracle_spec = OracleSpec {
        key_slots,
        window: spec
            .window
            .clone()
            .expect("the oracle computes windowed pipelines"),
        aggregates: Aggregates::new(aggregates),
        having: spec
            .having
            .as_ref()
            .map(|h| Arc::new(ResultPredicate::compile(h).unwrap())),
        max_out_of_orderness_ms: source.watermark.max_out_of_orderness.as_millis_i64(),
        schema: schema.clone(),
    };
    Expected {
        results: oracle::final_results(&oracle_spec, &records),
        late: oracle::late_count(&oracle_spec, &records),
        rejected,
        schema,
    }
}

/// The final results (`is_final: true`) in a results file, by window; panics if a window
/// has more than one final result.
pub fn actual_finals(path: &Path, schema: &ResultSchema) -> ResultMap {
    let finals: Vec<serde_json::Value> = read_json_lines(path)
        .into_iter()
        .filter(|v| v["is_final"] == serde_json::Value::Bool(true))
        .collect();
    let map = oracle::last_results_from_json(finals.iter(), schema);
    assert_eq!(
        map.len(),
        finals.len(),
        "a window has more than one final result in {}",
        path.display()
    );
    map
}

/// The last result per window in a results file.
pub fn actual_last(path: &Path, schema: &ResultSchema) -> ResultMap {
    let lines = read_json_lines(path);
    oracle::last_results_from_json(lines.iter(), schema)
}

/// Asserts two result maps are equal, printing the first differences.
pub fn assert_same_results(actual: &ResultMap, expected: &ResultMap, what: &str) {
    if actual == expected {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing {}", serde_json::Value::Object(v.clone()))),
            Some(a) if a != v => diffs.push(format!(
                "differs: got {} want {}",
                serde_json::Value::Object(a.clone()),
                serde_json::Value::Object(v.clone())
            )),
            _ => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            diffs.push(format!(
                "unexpected {}",
                serde_json::Value::Object(v.clone())
            ));
        }
    }
    let total = diffs.len();
    diffs.truncate(10);
    panic!(
        "{what}: {} results, expected {}; {total} differences, first: {diffs:#?}",
        actual.len(),
        expected.len()
    );
}

/// Counts of each distinct line of a file (a multiset, order aside).
pub fn line_multiset(path: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        *m.entry(line.to_string()).or_insert(0) += 1;
    }
    m
}

/// The events windowless pipeline `pipeline` (without steps) passes on from the JSON-lines
/// files `inputs`: each decodable line's event time and `select` fields, partition by
/// partition in order.
pub fn expected_events(
    topology: &Topology,
    pipeline: &str,
    inputs: &[PathBuf],
) -> Vec<(i64, serde_json::Map<String, serde_json::Value>)> {
    let spec = &topology.pipelines[pipeline];
    assert!(spec.window.is_none() && spec.steps.is_empty());
    let source = &topology.sources[&spec.source];
    let mut slots = FieldSlots::default();
    for f in &spec.select {
        slots.slot(f);
    }
    let mut event_time = source.event_time.clone();
    event_time.source_timestamp = false;
    let ctx = DecodeContext {
        source_name: spec.source.as_str().into(),
        slots: Arc::new(slots),
        event_time,
    };
    let mut out = Vec::new();
    for path in inputs {
        let mut decoder = JsonDecoder::new(&ctx);
        for line in fs::read_to_string(path).unwrap().lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Ok(record) = decoder.decode(line.as_bytes()) {
                let fields = spec
                    .select
                    .iter()
                    .zip(record.fields.iter())
                    .map(|(n, v)| (n.clone(), v.to_json()))
                    .collect();
                out.push((record.time, fields));
            }
        }
    }
    out
}

/// The address of the test Redis server (`WEIR_TEST_REDIS`); panics with how to start one.
pub fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_REDIS is not set; start the test servers with \
             `eval \"$(scripts/services.sh start redis mongodb)\"`"
        )
    })
}

/// The address of the test MongoDB-wire server (`WEIR_TEST_MONGODB`); panics with how to
/// start one.
pub fn mongodb_uri() -> String {
    std::env::var("WEIR_TEST_MONGODB").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_MONGODB is not set; start the test servers with \
             `eval \"$(scripts/services.sh start redis mongodb)\"`"
        )
    })
}

//! `repartition: true` through the engine alone, without a broker: the exchange is an
//! in-memory log with the same contract as the Kafka one (fenced epoch commits, positions with
//! the upstream state). Four tasks, each reading one input partition as a fleet task does, run
//! concurrently; one is stopped mid-run and restarted from its checkpoint. The union of their
//! results must equal the oracle; the same tasks without `repartition` must not.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use weir_connectors::generator::{GeneratorConfig, Shape};
use weir_connectors::Registry;
use weir_engine::checkpoint::Epoch;
use weir_engine::event::{Output, Timestamp};
use weir_engine::oracle::ResultMap;
use weir_engine::runtime::exchange::UpstreamWatermarks;
use weir_engine::runtime::exchange::{self, Exchange, ExchangeMessage, ExchangeRequest};
use weir_engine::runtime::{
    Connectors, DecodeContext, Job, JobOptions, PartitionSelection, PollStatus, Sink, SinkEncoder,
    SinkError, SinkScope, SourceBatch, SourceError, SourcePartition,
};
use weir_engine::topology::{
    load_str, ConfigIssue, ConnectorCatalog, FleetSpec, SinkSpec, SourceSpec, Topology,
};

const PARTITIONS: usize = 4;

const TOPOLOGY: &str = r#"
name: mem
sources:
  events:
    type: file
    paths: @PATHS@
    event_time: {field: timestamp, format: rfc3339}
    watermark: {max_out_of_orderness: 2s}
pipelines:
  per_product:
    source: events
    steps:
      - filter: "event_type != 'login_failed'"
    key_by: [product]
    window: {type: tumbling, size: 1m}
    aggregates:
      - {name: events, fn: count}
      - {name: spend, fn: sum, field: value}
    sinks: [results]
    repartition: @REPARTITION@
sinks:
  results: {type: file, path: "@OUT@"}
state: {dir: "@DIR@/state"}
checkpoint: {interval: 50ms}
"#;

/// The in-memory exchange topics: partitions of values, and the epoch fence of each writer.
#[derive(Default)]
struct Log {
    topics: HashMap<String, Vec<Vec<Vec<u8>>>>,
    fences: HashMap<String, Epoch>,
}

type Shared = Arc<Mutex<Log>>;

/// The built-in connectors, plus an in-memory exchange for any source.
struct MemConnectors {
    log: Shared,
}

impl ConnectorCatalog for MemConnectors {
    fn check_source(&self, name: &str, spec: &SourceSpec) -> Vec<ConfigIssue> {
        Registry.check_source(name, spec)
    }
    fn check_sink(&self, name: &str, spec: &SinkSpec) -> Vec<ConfigIssue> {
        Registry.check_sink(name, spec)
    }
    fn supports_repartition(&self, _source_type: &str) -> bool {
        true
    }
}

impl Connectors for MemConnectors {
    fn partition_count(&self, name: &str, spec: &SourceSpec) -> Result<u32, SourceError> {
        Registry.partition_count(name, spec)
    }
    fn open_source(
        &self,
        name: &str,
        spec: &SourceSpec,
        ctx: &DecodeContext,
        selection: &PartitionSelection,
    ) -> Result<Vec<Box<dyn SourcePartition>>, SourceError> {
        Registry.open_source(name, spec, ctx, selection)
    }
    fn open_fleet(
        &self,
        topology: &Topology,
        spec: &FleetSpec,
    ) -> Result<Arc<dyn weir_engine::runtime::fleet::FleetBackend>, weir_engine::runtime::JobError>
    {
        Registry.open_fleet(topology, spec)
    }
    fn open_sink(
        &self,
        scope: &SinkScope,
        name: &str,
        spec: &SinkSpec,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Registry.open_sink(scope, name, spec)
    }
    fn open_exchange(
        &self,
        request: &ExchangeRequest<'_>,
    ) -> Result<Exchange, weir_engine::runtime::JobError> {
        let topic = format!("{}-{}", request.scope.job, request.pipeline);
        let n = request.partitions;
        self.log
            .lock()
            .unwrap()
            .topics
            .entry(topic.clone())
            .or_insert_with(|| vec![Vec::new(); n as usize]);
        let partitions = (0..n)
            .filter(|q| request.selection.contains(*q))
            .map(|q| {
                Box::new(MemPartition {
                    id: format!("mem:{topic}/{q}"),
                    topic: topic.clone(),
                    partition: q as usize,
                    log: self.log.clone(),
                    next: 0,
                    upstreams: UpstreamWatermarks::new(n),
                }) as Box<dyn SourcePartition>
            })
            .collect();
        Ok(Exchange {
            sink: Box::new(MemSink {
                name: request.sink_name.to_string(),
                fence: format!("{}/{}", request.sink_name, request.scope.task),
                topic,
                partitions: n,
                log: self.log.clone(),
            }),
            partitions,
        })
    }
}

struct NoEncoder;

impl SinkEncoder for NoEncoder {
    fn encode(&mut self, _: &Output, _: &mut Vec<u8>) {}
}

/// Appends an epoch's items atomically, once per (sink, task, epoch).
struct MemSink {
    name: String,
    fence: String,
    topic: String,
    partitions: u32,
    log: Shared,
}

impl Sink for MemSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn encoder(&self) -> Box<dyn SinkEncoder> {
        Box::new(NoEncoder)
    }
    fn recover(&mut self, _: Option<Epoch>) -> Result<(), SinkError> {
        Ok(())
    }
    fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        let mut log = self.log.lock().unwrap();
        if log.fences.get(&self.fence).is_some_and(|f| *f >= epoch) {
            return Ok(());
        }
        let items = exchange::read_staged(staged).map_err(SinkError::Fatal)?;
        let topic = log.topics.get_mut(&self.topic).unwrap();
        for item in items {
            let targets = match item.partition {
                Some(p) => p..p + 1,
                None => 0..self.partitions,
            };
            for p in targets {
                topic[p as usize].push(item.value.to_vec());
            }
        }
        log.fences.insert(self.fence.clone(), epoch);
        Ok(())
    }
}

/// Reads one partition of the in-memory exchange.
struct MemPartition {
    id: String,
    topic: String,
    partition: usize,
    log: Shared,
    next: usize,
    upstreams: UpstreamWatermarks,
}

impl SourcePartition for MemPartition {
    fn id(&self) -> &str {
        &self.id
    }
    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let (offset, rest) = position.split_at(8);
        self.next = u64::from_be_bytes(offset.try_into().unwrap()) as usize;
        self.upstreams.restore(rest).map_err(SourceError::Fatal)
    }
    fn poll(&mut self, out: &mut SourceBatch, max: usize) -> Result<PollStatus, SourceError> {
        if self.upstreams.all_ended() {
            return Ok(PollStatus::End);
        }
        let log = self.log.lock().unwrap();
        let values = &log.topics[&self.topic][self.partition];
        let mut read = 0;
        while self.next < values.len() && read < max && !self.upstreams.all_ended() {
            match exchange::decode(&values[self.next]).map_err(SourceError::Fatal)? {
                ExchangeMessage::Record {
                    record,
                    partition_watermark,
                } => {
                    out.records.push(record);
                    out.record_watermarks.push(partition_watermark);
                }
                ExchangeMessage::Marker(m) => {
                    self.upstreams.observe(&m);
                }
            }
            self.next += 1;
            read += 1;
        }
        Ok(if read > 0 {
            PollStatus::Data
        } else {
            PollStatus::Idle
        })
    }
    fn position(&self) -> Vec<u8> {
        let mut out = (self.next as u64).to_be_bytes().to_vec();
        out.extend_from_slice(&self.upstreams.snapshot());
        out
    }
    fn watermark(&self) -> Option<Timestamp> {
        Some(self.upstreams.watermark())
    }
}

fn task_topology(
    dir: &Path,
    inputs: &[PathBuf],
    task: usize,
    repartition: bool,
    catalog: &MemConnectors,
) -> (Topology, PathBuf) {
    let out = dir.join(format!("results-p{task}.jsonl"));
    let text = instantiate(TOPOLOGY, &dir.join(format!("task{task}")), inputs)
        .replace("@OUT@", &out.display().to_string())
        .replace("@REPARTITION@", if repartition { "true" } else { "false" });
    let topology = load_str(&text, catalog).unwrap_or_else(|i| panic!("{i:#?}"));
    (topology, out)
}

/// Runs the four tasks concurrently (as a fleet would), stopping task 1 after `stop_after`
/// and restarting it from its checkpoint. Returns the result files.
fn run_tasks(
    dir: &Path,
    inputs: &[PathBuf],
    repartition: bool,
    stop_after: Option<Duration>,
) -> Vec<PathBuf> {
    let connectors = Arc::new(MemConnectors {
        log: Shared::default(),
    });
    let mut outs = Vec::new();
    let mut threads = Vec::new();
    for task in 0..PARTITIONS {
        let (topology, out) = task_topology(dir, inputs, task, repartition, &connectors);
        outs.push(out);
        let connectors = connectors.clone();
        let dir = dir.to_path_buf();
        threads.push(std::thread::spawn(move || {
            let options = |stop: Arc<AtomicBool>| JobOptions {
                shards: Some(2),
                stop,
                selection: PartitionSelection::Only(vec![task as u32]),
                task: Some(format!("p{task}")),
                state_dir: Some(dir.join(format!("state-p{task}"))),
                store: None,
                replica: None,
                lease: None,
            };
            if task == 1 {
                if let Some(after) = stop_after {
                    let stop = Arc::new(AtomicBool::new(false));
                    let job =
                        Job::build(&topology, connectors.as_ref(), options(stop.clone())).unwrap();
                    let stopper = {
                        let stop = stop.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(after);
                            stop.store(true, Ordering::Relaxed);
                        })
                    };
                    job.run().unwrap();
                    stopper.join().unwrap();
                }
            }
            let job = Job::build(
                &topology,
                connectors.as_ref(),
                options(Arc::new(AtomicBool::new(false))),
            )
            .unwrap();
            job.run().unwrap();
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    outs
}

/// Final results of all tasks, and how many (key, window) pairs had more than one.
fn union_finals(outs: &[PathBuf], schema: &weir_engine::event::ResultSchema) -> (ResultMap, usize) {
    let mut lines = Vec::new();
    for out in outs {
        lines.extend(
            read_json_lines(out)
                .into_iter()
                .filter(|v| v["is_final"] == serde_json::Value::Bool(true)),
        );
    }
    let map = weir_engine::oracle::last_results_from_json(lines.iter(), schema);
    let duplicates = lines.len() - map.len();
    (map, duplicates)
}

#[test]
fn repartitioned_tasks_equal_the_oracle_and_unshuffled_ones_do_not() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("input.jsonl");
    generate(
        &input,
        &GeneratorConfig {
            shape: Shape::Activity,
            count: Some(40_000),
            keys: 300,
            events_per_second_of_event_time: Some(100.0),
            max_out_of_orderness_ms: 1500,
            late_ratio: 0.003,
            malformed_ratio: 0.001,
            seed: 5,
            ..GeneratorConfig::default()
        },
    );
    let inputs = split_lines(&input, PARTITIONS);
    let catalog = MemConnectors {
        log: Shared::default(),
    };
    let (topology, _) = task_topology(root.path(), &inputs, 0, true, &catalog);
    let want = expected(&topology, "per_product", &inputs);
    assert!(want.late > 0);

    let shuffled = root.path().join("shuffled");
    fs::create_dir_all(&shuffled).unwrap();
    let outs = run_tasks(&shuffled, &inputs, true, Some(Duration::from_millis(300)));
    let (got, duplicates) = union_finals(&outs, &want.schema);
    assert_eq!(duplicates, 0, "windows with two final results");
    assert_same_results(&got, &want.results, "repartitioned tasks");

    let local = root.path().join("local");
    fs::create_dir_all(&local).unwrap();
    let outs = run_tasks(&local, &inputs, false, None);
    let (got, duplicates) = union_finals(&outs, &want.schema);
    assert!(
        duplicates > want.results.len() && got != want.results,
        "without repartition each task should give its own partial results \
         ({duplicates} duplicates)"
    );
}

//! Assembling and running a job: recovery, tasks, channels and the coordinator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};

use crate::checkpoint::{
    decide_recovery, next_epoch, read_positions, read_progress, read_staged, write_committed,
    RecoveryDecision,
};
use crate::event::FieldSlots;
use crate::state::{RocksStateStore, StateBatch, StateStore};
use crate::time::PartitionWatermark;
use crate::topology::{SinkSpec, SourceSpec, Topology};
use crate::window::WindowOperator;

use super::coordinator::{commit_with_retry, Coordinator, SourceHandle};
use super::fleet::{persist, CheckpointReplica};
use super::metrics::{JobMetrics, MetricsSnapshot};
use super::plan::PipelinePlan;
use super::shard_task::ShardTask;
use super::sink::{Sink, SinkError, SinkScope};
use super::source::{DecodeContext, PartitionSelection, SourceError, SourcePartition};
use super::source_task::{Route, SourceTask};
use super::staging::{SinkIndex, Staging};
use super::JobError;

/// Batches buffered between a source task and a shard; bounds memory and back-pressures the
/// sources when shards or sinks fall behind.
const CHANNEL_BATCHES: usize = 8;

/// Opens the connectors a topology names; implemented by the binary over the connectors it
/// was built with.
pub trait Connectors: Send + Sync {
    /// How many partitions source `name` has (files, generator instances, stream shards).
    fn partition_count(&self, name: &str, spec: &SourceSpec) -> Result<u32, SourceError>;

    /// Opens the `selection` of source `name`'s partitions, decoding with `ctx`.
    fn open_source(
        &self,
        name: &str,
        spec: &SourceSpec,
        ctx: &DecodeContext,
        selection: &PartitionSelection,
    ) -> Result<Vec<Box<dyn SourcePartition>>, SourceError>;

    /// Opens the backend the topology's `fleet` section names.
    fn open_fleet(
        &self,
        _topology: &crate::topology::Topology,
        spec: &crate::topology::FleetSpec,
    ) -> Result<Arc<dyn super::fleet::FleetBackend>, JobError> {
        Err(JobError::Config(format!(
            "fleet.type: unknown fleet backend `{}`",
            spec.kind
        )))
    }

    /// Opens sink `name` for commits from `scope` (which scopes its fences).
    fn open_sink(
        &self,
        scope: &SinkScope,
        name: &str,
        spec: &SinkSpec,
    ) -> Result<Box<dyn Sink>, SinkError>;
}

/// Options that do not come from the topology.
#[derive(Clone, Default)]
pub struct JobOptions {
    /// Overrides `parallelism.shards`.
    pub shards: Option<u32>,
    /// Set to request a graceful stop: the job commits a last epoch and returns.
    pub stop: Arc<AtomicBool>,
    /// Which partitions of the sources this job reads (a fleet task reads a subset).
    pub selection: PartitionSelection,
    /// The task id scoping sink fences (`None`: `main`, a job reading everything).
    pub task: Option<String>,
    /// Overrides `state.dir` (a fleet task keeps its state in its own directory).
    pub state_dir: Option<std::path::PathBuf>,
    /// A fleet task's checkpoint replica: every checkpoint batch is written there first.
    pub replica: Option<Arc<dyn CheckpointReplica>>,
}

impl std::fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOptions")
            .field("shards", &self.shards)
            .field("selection", &self.selection)
            .field("task", &self.task)
            .field("state_dir", &self.state_dir)
            .field("replicated", &self.replica.is_some())
            .finish()
    }
}

/// What a finished job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// Counters at the end.
    pub metrics: MetricsSnapshot,
    /// Duration of every checkpoint, barrier to commit, in µs.
    pub checkpoint_durations_us: Vec<u64>,
    /// Wall time of [`Job::run`].
    pub elapsed: Duration,
}

/// A job ready to run: state recovered, connectors open, positions restored.
pub struct Job {
    metrics: Arc<JobMetrics>,
    coordinator: Coordinator,
    source_tasks: Vec<SourceTask>,
    shard_tasks: Vec<ShardTask>,
}

impl Job {
    /// Opens state and connectors for `topology` and recovers from the last checkpoint: an
    /// epoch that was prepared but not confirmed is committed again from its staged outputs
    /// (sink fences make that a no-op where it already landed), and every partition is moved
    /// to its stored position and watermark.
    pub fn build(
        topology: &Topology,
        connectors: &dyn Connectors,
        options: JobOptions,
    ) -> Result<Job, JobError> {
        let shards = options
            .shards
            .or(topology.parallelism.shards)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
            .max(1);
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| Path::new(&topology.state.dir).to_path_buf());
        let store: Arc<dyn StateStore> = Arc::new(RocksStateStore::open(&state_dir)?);
        let scope = SinkScope {
            job: topology.name.clone(),
            task: options.task.clone().unwrap_or_else(|| "main".into()),
        };
        let metrics = Arc::new(JobMetrics::default());

        let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(topology.sinks.len());
        let mut sink_index: HashMap<&str, SinkIndex> = HashMap::new();
        for (name, spec) in &topology.sinks {
            sink_index.insert(name.as_str(), sinks.len());
            sinks.push(connectors.open_sink(&scope, name, spec)?);
        }

        let progress = read_progress(store.as_ref())?;
        let decision = decide_recovery(&progress).map_err(|e| JobError::Recovery(e.to_string()))?;
        for sink in sinks.iter_mut() {
            sink.recover(progress.committed)?;
        }
        if let RecoveryDecision::RecommitThenResume { epoch } = decision {
            tracing::info!(
                epoch,
                "re-committing an epoch that was prepared before the last stop"
            );
            let staged: HashMap<String, Vec<u8>> =
                read_staged(store.as_ref(), epoch)?.into_iter().collect();
            for sink in sinks.iter_mut() {
                let bytes = staged.get(sink.name()).map(Vec::as_slice).unwrap_or(&[]);
                commit_with_retry(sink.as_mut(), epoch, bytes, &options.stop, &metrics)?;
            }
            let mut batch = StateBatch::default();
            write_committed(&mut batch, epoch);
            persist(options.replica.as_ref(), store.as_ref(), batch)?;
        }
        match decision {
            RecoveryDecision::Fresh => tracing::info!("starting fresh"),
            RecoveryDecision::Resume { epoch } | RecoveryDecision::RecommitThenResume { epoch } => {
                tracing::info!(epoch, "resuming from checkpoint")
            }
        }

        let (coord_tx, coord_rx) = unbounded();
        let pipeline_count = topology.pipelines.len().max(1);
        let budget = (topology.state.memory_budget.0 as usize) / (pipeline_count * shards as usize);
        let mut source_tasks = Vec::new();
        let mut shard_tasks = Vec::new();
        let mut handles = Vec::new();
        let resolve = |n: &String| sink_index.get(n.as_str()).copied();
        for (source_name, source_spec) in &topology.sources {
            let pipelines: Vec<_> = topology
                .pipelines
                .iter()
                .filter(|(_, p)| &p.source == source_name)
                .collect();
            if pipelines.is_empty() {
                continue;
            }
            // Records of a source are decoded once, with the fields of all its pipelines.
            let mut slots = FieldSlots::default();
            let mut plans = Vec::with_capacity(pipelines.len());
            for (name, spec) in &pipelines {
                let plan = PipelinePlan::compile(topology, name, spec, &mut slots, shards, budget)
                    .map_err(|e| JobError::Config(format!("pipelines.{name}: {e}")))?;
                plans.push(plan);
            }
            let slots = Arc::new(slots);
            let plans: Vec<Arc<PipelinePlan>> = plans
                .into_iter()
                .map(|mut p| {
                    p.set_slots(slots.clone());
                    Arc::new(p)
                })
                .collect();
            let ctx = DecodeContext {
                source_name: source_name.as_str().into(),
                slots,
                event_time: source_spec.event_time.clone(),
            };
            let mut partitions =
                connectors.open_source(source_name, source_spec, &ctx, &options.selection)?;
            let positions = read_positions(store.as_ref(), source_name)?;
            let mut watermarks = Vec::with_capacity(partitions.len());
            for partition in partitions.iter_mut() {
                let mut wm = PartitionWatermark::new(&source_spec.watermark);
                if let Some(cp) = positions.get(partition.id()) {
                    partition.seek(&cp.position)?;
                    wm.restore(&cp.watermark).map_err(|e| {
                        JobError::Recovery(format!(
                            "watermark of partition `{}`: {e}",
                            partition.id()
                        ))
                    })?;
                }
                watermarks.push(wm);
            }

            // Per pipeline, one channel per (partition, shard): each shard sees each partition's
            // records in order.
            let mut routes: Vec<Vec<Route>> = (0..partitions.len()).map(|_| Vec::new()).collect();
            for plan in &plans {
                let result_sinks: Vec<SinkIndex> = plan.sinks.iter().filter_map(resolve).collect();
                let late_sink = plan.late_output.as_ref().and_then(resolve);
                let Some(operator_spec) = &plan.operator else {
                    // Windowless: the source task stages the pipeline's events itself.
                    for partition_routes in routes.iter_mut() {
                        partition_routes.push(Route::stateless(plan.clone(), result_sinks.clone()));
                    }
                    continue;
                };
                let mut shard_inputs: Vec<Vec<_>> = (0..shards).map(|_| Vec::new()).collect();
                for partition_routes in routes.iter_mut() {
                    let mut outputs = Vec::with_capacity(shards as usize);
                    for inputs in shard_inputs.iter_mut() {
                        let (tx, rx) = bounded(CHANNEL_BATCHES);
                        outputs.push(tx);
                        inputs.push(rx);
                    }
                    partition_routes.push(Route::new(plan.clone(), outputs));
                }
                for (shard, inputs) in shard_inputs.into_iter().enumerate() {
                    let mut op_spec = operator_spec.clone();
                    op_spec.shard = shard as u32;
                    let operator = Box::new(WindowOperator::new(op_spec, store.clone())?);
                    shard_tasks.push(ShardTask {
                        task: shard_tasks.len(),
                        operator,
                        inputs,
                        staging: Staging::new(sinks.iter().map(|s| s.encoder()).collect()),
                        result_sinks: result_sinks.clone(),
                        late_sink,
                        coordinator: coord_tx.clone(),
                        metrics: metrics.clone(),
                    });
                }
            }
            let dead_letter = source_spec.dead_letter.as_ref().and_then(resolve);
            for ((partition, watermark), routes) in
                partitions.into_iter().zip(watermarks).zip(routes)
            {
                let (control_tx, control_rx) = unbounded();
                handles.push(SourceHandle {
                    control: control_tx,
                    source: source_name.clone(),
                    partition_id: partition.id().to_string(),
                });
                source_tasks.push(SourceTask {
                    task: source_tasks.len(),
                    source: source_name.clone(),
                    routes,
                    partition,
                    watermark,
                    staging: Staging::new(sinks.iter().map(|s| s.encoder()).collect()),
                    dead_letter,
                    control: control_rx,
                    coordinator: coord_tx.clone(),
                    metrics: metrics.clone(),
                });
            }
        }

        let coordinator = Coordinator {
            store,
            sinks,
            sources: handles,
            shard_count: shard_tasks.len(),
            acks: coord_rx,
            interval: Duration::from_millis(topology.checkpoint.interval.as_millis().max(1)),
            next_epoch: next_epoch(&progress),
            stop: options.stop,
            metrics: metrics.clone(),
            replica: options.replica,
        };
        Ok(Job {
            metrics,
            coordinator,
            source_tasks,
            shard_tasks,
        })
    }

    /// The job's live counters.
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }

    /// Runs the job to the end of its input (bounded sources) or until a stop is requested.
    /// Every result is committed to the sinks before this returns `Ok`.
    pub fn run(self) -> Result<JobSummary, JobError> {
        let started = Instant::now();
        let Job {
            metrics,
            coordinator,
            source_tasks,
            shard_tasks,
        } = self;
        let mut threads = Vec::new();
        for (i, task) in shard_tasks.into_iter().enumerate() {
            threads.push(spawn(format!("weir-shard-{i}"), move || task.run())?);
        }
        for (i, task) in source_tasks.into_iter().enumerate() {
            threads.push(spawn(format!("weir-source-{i}"), move || task.run())?);
        }
        metrics
            .running
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let result = coordinator.run();
        metrics
            .running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            if t.join().is_err() {
                return Err(JobError::Task("a task panicked".into()));
            }
        }
        result?;
        let checkpoint_durations_us = metrics
            .checkpoint_durations_us
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        Ok(JobSummary {
            metrics: metrics.snapshot(),
            checkpoint_durations_us,
            elapsed: started.elapsed(),
        })
    }
}

fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, JobError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| JobError::Task(format!("cannot start a thread: {e}")))
}

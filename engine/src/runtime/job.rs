//! Assembling and running a job: recovery, tasks, channels and the coordinator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Sender};

use crate::checkpoint::{
    decide_recovery, next_epoch, read_positions, read_progress, read_staged, RecoveryDecision,
};
use crate::event::FieldSlots;
use crate::state::{RocksStateStore, StateStore};
use crate::time::PartitionWatermark;
use crate::topology::{SinkSpec, SourceSpec, Topology};
use crate::window::{WindowOperator, WindowOperatorSpec};

use super::coordinator::{Coordinator, EpochCommit, SourceHandle};
use super::exchange::{Exchange, ExchangeRequest};
use super::fleet::{CheckpointReplica, LeaseGuard};
use super::messages::CoordMessage;
use super::metrics::{JobMetrics, MetricsSnapshot};
use super::plan::PipelinePlan;
use super::shard_task::{InlineShard, Shard, ShardTask};
use super::sink::{Sink, SinkError, SinkScope};
use super::source::{DecodeContext, PartitionSelection, SourceError, SourcePartition};
use super::source_task::{ExchangeRoute, Route, ShardLink, SourceTask};
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

    /// Opens the exchange of a pipeline with `repartition: true` (see [`super::exchange`]).
    /// Default: not supported.
    fn open_exchange(&self, request: &ExchangeRequest<'_>) -> Result<Exchange, JobError> {
        Err(JobError::Config(format!(
            "pipelines.{}.repartition: source `{}` (type `{}`) cannot repartition",
            request.pipeline, request.source, request.source_spec.kind
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
    /// The state store, already open (a fleet task's, just made to hold its replica's
    /// state); without it the job opens the one in its state directory. Opening a store
    /// writes and syncs files, which took a fleet task 140–180 ms on a busy machine.
    pub store: Option<Arc<dyn StateStore>>,
    /// A fleet task's checkpoint replica: every checkpoint batch is written there first.
    pub replica: Option<Arc<dyn CheckpointReplica>>,
    /// A fleet task's lease, checked before each sink commit.
    pub lease: Option<Arc<LeaseGuard>>,
}

impl std::fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOptions")
            .field("shards", &self.shards)
            .field("selection", &self.selection)
            .field("task", &self.task)
            .field("state_dir", &self.state_dir)
            .field("store", &self.store.is_some())
            .field("replicated", &self.replica.is_some())
            .field("lease", &self.lease)
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
            .unwrap_or_else(super::available_cores)
            .max(1);
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| Path::new(&topology.state.dir).to_path_buf());
        let store: Arc<dyn StateStore> = match options.store.clone() {
            Some(store) => store,
            None => Arc::new(RocksStateStore::open(&state_dir)?),
        };
        let scope = SinkScope {
            job: topology.name.clone(),
            task: options.task.clone().unwrap_or_else(|| "main".into()),
        };
        let metrics = Arc::new(JobMetrics::default());

        let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(topology.sinks.len());
        let mut sink_index: HashMap<String, SinkIndex> = HashMap::new();
        for (name, spec) in &topology.sinks {
            sink_index.insert(name.clone(), sinks.len());
            sinks.push(connectors.open_sink(&scope, name, spec)?);
        }

        let pipeline_count = topology.pipelines.len().max(1);
        let budget = (topology.state.memory_budget.0 as usize) / (pipeline_count * shards as usize);

        // Repartitioned pipelines: stage 2 (the windows) reads the exchange; its sink takes part
        // in recovery like any other sink.
        let mut stage2: Vec<Stage2> = Vec::new();
        for (name, spec) in topology.pipelines.iter().filter(|(_, p)| p.repartition) {
            let source_spec = topology.sources.get(&spec.source).ok_or_else(|| {
                JobError::Config(format!("pipelines.{name}.source: unknown source"))
            })?;
            let mut inner = spec.clone();
            inner.steps.clear();
            inner.repartition = false;
            let mut slots = FieldSlots::default();
            let mut plan =
                PipelinePlan::compile(topology, name, &inner, &mut slots, shards, budget)
                    .map_err(|e| JobError::Config(format!("pipelines.{name}: {e}")))?;
            let slots = Arc::new(slots);
            plan.set_slots(slots.clone());
            let partitions = connectors.partition_count(&spec.source, source_spec)?;
            let sink_name = exchange_sink_name(name);
            let ctx = DecodeContext {
                source_name: sink_name.as_str().into(),
                slots,
                event_time: source_spec.event_time.clone(),
            };
            let exchange = connectors.open_exchange(&ExchangeRequest {
                pipeline: name,
                source: &spec.source,
                source_spec,
                partitions,
                sink_name: &sink_name,
                scope: &scope,
                selection: &options.selection,
                ctx: &ctx,
            })?;
            if sink_index.contains_key(&sink_name) {
                return Err(JobError::Config(format!(
                    "sinks.{sink_name}: the name is reserved for the exchange of pipeline `{name}`"
                )));
            }
            sink_index.insert(sink_name.clone(), sinks.len());
            sinks.push(exchange.sink);
            stage2.push(Stage2 {
                pipeline: name.clone(),
                source: spec.source.clone(),
                plan: Arc::new(plan),
                partitions: exchange.partitions,
                upstreams: partitions,
            });
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
            let bytes: Vec<&[u8]> = sinks
                .iter()
                .map(|sink| staged.get(sink.name()).map(Vec::as_slice).unwrap_or(&[]))
                .collect();
            EpochCommit {
                store: store.as_ref(),
                replica: options.replica.as_ref(),
                replicate_marker: true,
                lease: options.lease.as_deref(),
                stop: &options.stop,
                metrics: &metrics,
            }
            .run(&mut sinks, epoch, &bytes)?;
        }
        match decision {
            RecoveryDecision::Fresh => tracing::info!("starting fresh"),
            RecoveryDecision::Resume { epoch } | RecoveryDecision::RecommitThenResume { epoch } => {
                tracing::info!(epoch, "resuming from checkpoint")
            }
        }

        let (coord_tx, coord_rx) = unbounded();
        let mut tasks = Tasks {
            shards,
            store: store.clone(),
            sinks: &sinks,
            sink_index: &sink_index,
            coordinator: coord_tx,
            metrics: metrics.clone(),
            source_tasks: Vec::new(),
            shard_tasks: Vec::new(),
            shard_count: 0,
            handles: Vec::new(),
        };
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
                slots: slots.clone(),
                event_time: source_spec.event_time.clone(),
            };
            let mut partitions =
                connectors.open_source(source_name, source_spec, &ctx, &options.selection)?;
            let watermarks = tasks.restore(source_name, source_spec, &mut partitions)?;

            let mut routes: Vec<Vec<Route>> = (0..partitions.len()).map(|_| Vec::new()).collect();
            for plan in &plans {
                if let Some(stage) = stage2.iter().find(|s| s.pipeline == plan.name) {
                    // Stage 1: records go to the exchange, each task marking its upstream index.
                    let upstreams: Vec<u32> = (0..stage.upstreams)
                        .filter(|i| options.selection.contains(*i))
                        .collect();
                    if upstreams.len() != routes.len() {
                        return Err(JobError::Config(format!(
                            "pipelines.{}: the source opened {} partitions but {} are selected",
                            plan.name,
                            routes.len(),
                            upstreams.len()
                        )));
                    }
                    let projection = stage
                        .plan
                        .slots
                        .names()
                        .iter()
                        .map(|n| {
                            slots.get(n).ok_or_else(|| {
                                JobError::Config(format!(
                                    "pipelines.{}: field `{n}` has no slot",
                                    plan.name
                                ))
                            })
                        })
                        .collect::<Result<Vec<usize>, JobError>>()?;
                    let Some(sink) = tasks.resolve(&exchange_sink_name(&plan.name)) else {
                        return Err(JobError::Config(format!(
                            "pipelines.{}: no exchange sink",
                            plan.name
                        )));
                    };
                    for (partition_routes, upstream) in routes.iter_mut().zip(upstreams) {
                        partition_routes.push(Route::exchange(
                            plan.clone(),
                            ExchangeRoute {
                                sink,
                                partitions: stage.upstreams,
                                projection: projection.clone(),
                                upstream,
                            },
                        ));
                    }
                    continue;
                }
                tasks.add_pipeline(plan, &mut routes)?;
            }
            tasks.add_sources(source_name, source_spec, partitions, watermarks, routes);
        }
        // Stage 2 of each repartitioned pipeline: its exchange partitions feed its windows.
        for stage in stage2 {
            let spec = &topology.sources[&stage.source];
            let name = exchange_sink_name(&stage.pipeline);
            let mut partitions = stage.partitions;
            let watermarks = tasks.restore(&name, spec, &mut partitions)?;
            let mut routes: Vec<Vec<Route>> = (0..partitions.len()).map(|_| Vec::new()).collect();
            tasks.add_pipeline(&stage.plan, &mut routes)?;
            tasks.add_sources(&name, spec, partitions, watermarks, routes);
        }
        let Tasks {
            source_tasks,
            shard_tasks,
            shard_count,
            handles,
            ..
        } = tasks;

        let coordinator = Coordinator {
            store,
            sinks,
            sources: handles,
            shard_count,
            acks: coord_rx,
            interval: Duration::from_millis(topology.checkpoint.interval.as_millis().max(1)),
            next_epoch: next_epoch(&progress),
            stop: options.stop,
            metrics: metrics.clone(),
            replica: options.replica,
            lease: options.lease,
            last_committed: match decision {
                RecoveryDecision::Fresh => None,
                RecoveryDecision::Resume { epoch }
                | RecoveryDecision::RecommitThenResume { epoch } => Some(epoch),
            },
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

/// The name of a repartitioned pipeline's exchange: its sink's name and the source name its
/// stage-2 positions are stored under.
fn exchange_sink_name(pipeline: &str) -> String {
    format!("{pipeline}#repartition")
}

/// Stage 2 of a repartitioned pipeline, opened before recovery.
struct Stage2 {
    pipeline: String,
    /// The user source the pipeline reads (stage 1).
    source: String,
    /// The pipeline without its steps, over the fields stage 1 sends.
    plan: Arc<PipelinePlan>,
    /// The selected exchange partitions.
    partitions: Vec<Box<dyn SourcePartition>>,
    /// The source's partition count: exchange partitions and upstream tasks.
    upstreams: u32,
}

/// Builds a job's tasks and the channels between them.
struct Tasks<'a> {
    shards: u32,
    store: Arc<dyn StateStore>,
    sinks: &'a [Box<dyn Sink>],
    sink_index: &'a HashMap<String, SinkIndex>,
    coordinator: Sender<CoordMessage>,
    metrics: Arc<JobMetrics>,
    source_tasks: Vec<SourceTask>,
    /// The shards on threads of their own.
    shard_tasks: Vec<ShardTask>,
    /// Every shard of the job, those run on a source task's thread included.
    shard_count: usize,
    handles: Vec<SourceHandle>,
}

impl Tasks<'_> {
    fn resolve(&self, name: &str) -> Option<SinkIndex> {
        self.sink_index.get(name).copied()
    }

    fn staging(&self) -> Staging {
        Staging::new(self.sinks.iter().map(|s| s.encoder()).collect())
    }

    /// Moves `partitions` to the positions stored under `source` and restores their
    /// watermarks.
    fn restore(
        &self,
        source: &str,
        spec: &SourceSpec,
        partitions: &mut [Box<dyn SourcePartition>],
    ) -> Result<Vec<PartitionWatermark>, JobError> {
        let positions = read_positions(self.store.as_ref(), source)?;
        let mut watermarks = Vec::with_capacity(partitions.len());
        for partition in partitions.iter_mut() {
            let mut wm = PartitionWatermark::new(&spec.watermark);
            if let Some(cp) = positions.get(partition.id()) {
                partition.seek(&cp.position)?;
                wm.restore(&cp.watermark).map_err(|e| {
                    JobError::Recovery(format!("watermark of partition `{}`: {e}", partition.id()))
                })?;
            }
            watermarks.push(wm);
        }
        Ok(watermarks)
    }

    /// Adds `plan`'s route to every partition's `routes`, with its shard tasks for a windowed
    /// pipeline: one channel per (partition, shard), so each shard sees each partition's
    /// records in order.
    fn add_pipeline(
        &mut self,
        plan: &Arc<PipelinePlan>,
        routes: &mut [Vec<Route>],
    ) -> Result<(), JobError> {
        let result_sinks: Vec<SinkIndex> =
            plan.sinks.iter().filter_map(|n| self.resolve(n)).collect();
        let late_sink = plan.late_output.as_ref().and_then(|n| self.resolve(n));
        let Some(operator_spec) = &plan.operator else {
            // Windowless: the source task stages the pipeline's events itself.
            for partition_routes in routes.iter_mut() {
                partition_routes.push(Route::stateless(plan.clone(), result_sinks.clone()));
            }
            return Ok(());
        };
        if let [partition_routes] = routes {
            if self.shards == 1 {
                // One partition feeds the pipeline's one shard: the shard runs on the source
                // task's thread, without a channel between them.
                let shard = self.shard(operator_spec, 0, &result_sinks, late_sink)?;
                let link = ShardLink::Inline(Box::new(InlineShard::new(shard)));
                partition_routes.push(Route::new(plan.clone(), vec![link]));
                return Ok(());
            }
        }
        let mut shard_inputs: Vec<Vec<_>> = (0..self.shards).map(|_| Vec::new()).collect();
        for partition_routes in routes.iter_mut() {
            let mut outputs = Vec::with_capacity(self.shards as usize);
            for inputs in shard_inputs.iter_mut() {
                let (tx, rx) = bounded(CHANNEL_BATCHES);
                outputs.push(ShardLink::Channel(tx));
                inputs.push(rx);
            }
            partition_routes.push(Route::new(plan.clone(), outputs));
        }
        for (index, inputs) in shard_inputs.into_iter().enumerate() {
            let shard = self.shard(operator_spec, index as u32, &result_sinks, late_sink)?;
            self.shard_tasks.push(ShardTask { shard, inputs });
        }
        Ok(())
    }

    /// Shard `index` of a pipeline's windows, numbered next in the job.
    fn shard(
        &mut self,
        operator_spec: &WindowOperatorSpec,
        index: u32,
        result_sinks: &[SinkIndex],
        late_sink: Option<SinkIndex>,
    ) -> Result<Shard, JobError> {
        let mut op_spec = operator_spec.clone();
        op_spec.shard = index;
        let operator = Box::new(WindowOperator::new(op_spec, self.store.clone())?);
        let task = self.shard_count;
        self.shard_count += 1;
        Ok(Shard {
            task,
            operator,
            staging: self.staging(),
            result_sinks: result_sinks.to_vec(),
            late_sink,
            coordinator: self.coordinator.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// One source task per partition, positions stored under `source`.
    fn add_sources(
        &mut self,
        source: &str,
        spec: &SourceSpec,
        partitions: Vec<Box<dyn SourcePartition>>,
        watermarks: Vec<PartitionWatermark>,
        routes: Vec<Vec<Route>>,
    ) {
        let dead_letter = spec.dead_letter.as_ref().and_then(|n| self.resolve(n));
        for ((partition, watermark), routes) in partitions.into_iter().zip(watermarks).zip(routes) {
            let (control_tx, control_rx) = unbounded();
            self.handles.push(SourceHandle {
                control: control_tx,
                source: source.to_string(),
                partition_id: partition.id().to_string(),
            });
            let staging = self.staging();
            self.source_tasks.push(SourceTask {
                task: self.source_tasks.len(),
                source: source.to_string(),
                routes,
                partition,
                watermark,
                staging,
                dead_letter,
                control: control_rx,
                coordinator: self.coordinator.clone(),
                metrics: self.metrics.clone(),
                value: Vec::new(),
            });
        }
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

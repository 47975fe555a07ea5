//! The `topology.yaml` model. Every field is documented: these docs become the JSON Schema in
//! `schemas/topology.schema.json`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::size::ByteSize;

/// A whole topology: named sources, pipelines and sinks, plus state and checkpoint settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// A name for the job; prefixes state and sink fences.
    #[serde(default = "default_job_name")]
    pub name: String,
    /// Inputs by name.
    pub sources: IndexMap<String, SourceSpec>,
    /// Processing pipelines by name; each reads one source and writes to sinks.
    pub pipelines: IndexMap<String, PipelineSpec>,
    /// Outputs by name.
    pub sinks: IndexMap<String, SinkSpec>,
    /// Where and how window state is kept.
    #[serde(default)]
    pub state: StateConfig,
    /// How often state, positions and outputs are checkpointed and committed.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Parallelism inside one worker.
    #[serde(default)]
    pub parallelism: ParallelismConfig,
    /// Run as one worker of a fleet sharing the job (absent: this process reads every
    /// partition itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSpec>,
}

/// Several `weir run` processes sharing one job: each partition of the (single) source is a
/// task owned by one worker at a time through a lease; a task's checkpoints are replicated in
/// the backend, so a dead worker's tasks move to the others with their window state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FleetSpec {
    /// Where workers meet: `redis`.
    #[serde(rename = "type")]
    pub kind: String,
    /// How long a task's lease lasts without renewal; a dead worker's tasks move after this.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// This worker's name in the fleet. Default: host name and process id.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Backend options (for `redis`: `url`, `username`, `password`).
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_millis(10_000)
}

fn default_job_name() -> String {
    "weir".into()
}

/// An input. `type` picks the connector; the connector's own options sit beside it and are
/// checked by the connector (see the connector's schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SourceSpec {
    /// Connector type: `generator`, `file` (and `kafka`, `redis_streams` where built in).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where each record's event time comes from.
    #[serde(default)]
    pub event_time: EventTimeSpec,
    /// How the watermark of each partition of this source advances.
    #[serde(default)]
    pub watermark: WatermarkConfig,
    /// Sink receiving records that cannot be decoded or lack required fields. Without one,
    /// such records are counted and logged (with their coordinates) but not kept.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Connector-specific options.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// How event time is read from a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    /// Field holding the event time. Ignored when `processing_time` is true.
    #[serde(default = "default_time_field")]
    pub field: String,
    /// How the field is written.
    #[serde(default)]
    pub format: TimeFormat,
    /// Use the wall-clock time at which the record is read instead of a field
    /// (processing-time windows).
    #[serde(default)]
    pub processing_time: bool,
    /// Use the timestamp the source itself attaches to each record instead of a field: the
    /// Kafka record timestamp, or the milliseconds part of a Redis Streams entry id.
    #[serde(default)]
    pub source_timestamp: bool,
}

fn default_time_field() -> String {
    "timestamp".into()
}

impl Default for EventTimeSpec {
    fn default() -> Self {
        EventTimeSpec {
            field: default_time_field(),
            format: TimeFormat::default(),
            processing_time: false,
            source_timestamp: false,
        }
    }
}

/// Encodings of an event-time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Accept RFC 3339 strings, and numbers as epoch milliseconds (or seconds/microseconds when
    /// their magnitude says so: < 1e11 is seconds, > 1e14 is microseconds).
    #[default]
    Auto,
    /// RFC 3339 / ISO 8601 strings, e.g. `2026-11-25T10:00:00.123Z`.
    Rfc3339,
    /// Integer milliseconds since the Unix epoch.
    EpochMillis,
    /// Integer microseconds since the Unix epoch.
    EpochMicros,
    /// Seconds since the Unix epoch (integer or fractional).
    EpochSeconds,
}

/// Watermark settings of a source, applied to each of its partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// How far behind the largest event time seen a partition's watermark trails.
    #[serde(default = "default_out_of_orderness")]
    pub max_out_of_orderness: Duration,
    /// A partition with no record for this long (wall clock) stops holding the watermark back.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// Events further ahead of the wall clock than this go to the dead-letter output instead of
    /// advancing the watermark.
    #[serde(default)]
    pub max_future_skew: Option<Duration>,
}

fn default_out_of_orderness() -> Duration {
    Duration::from_millis(0)
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_out_of_orderness: default_out_of_orderness(),
            idle_timeout: None,
            max_future_skew: None,
        }
    }
}

/// One processing pipeline: source → steps → key_by → window → aggregates → having → sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The source to read.
    pub source: String,
    /// Record-level steps applied in order before grouping.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Grouping fields; one or more (windowed pipelines only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_by: Vec<String>,
    /// The window. Without one the pipeline is stateless: each record that passes the steps
    /// goes to the sinks as an event with the `select` fields (feeds, bridges, raw archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Aggregates computed per key and window; output names must be unique (windowed
    /// pipelines only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<AggregateConfig>,
    /// The fields a windowless pipeline passes on, in order (required without `window`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<String>,
    /// A CEL predicate over a result's fields (key fields, aggregate names, `window_start`,
    /// `window_end`); only results for which it is true are emitted (alerting).
    #[serde(default)]
    pub having: Option<String>,
    /// When results are emitted.
    #[serde(default)]
    pub emit: EmitSpec,
    /// Sinks receiving the results.
    pub sinks: Vec<String>,
    /// Sink receiving late events. Without one, late events are dropped and counted.
    #[serde(default)]
    pub late_output: Option<String>,
    /// Send records through an internal topic keyed by the grouping key
    /// (`<job>-<pipeline>-repartition`, as many partitions as the source) before windowing, so
    /// each key's windows are computed in one place even when the key arrives on several input
    /// partitions read by different workers. Windowed pipelines on Kafka sources only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repartition: bool,
}

/// A record-level step: a single-key map, `{filter: EXPR}` or `{compute: {name, expr}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "StepRepr", into = "StepRepr")]
#[schemars(with = "StepRepr")]
pub enum StepSpec {
    /// Keep only records for which this CEL expression is true.
    Filter(String),
    /// Add (or replace) a field computed by a CEL expression.
    Compute(ComputeSpec),
}

/// The YAML form of a step: exactly one of its keys is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRepr {
    /// Keep only records for which this CEL expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Add (or replace) a field computed by a CEL expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeSpec>,
}

impl TryFrom<StepRepr> for StepSpec {
    type Error = String;

    fn try_from(repr: StepRepr) -> Result<Self, String> {
        match (repr.filter, repr.compute) {
            (Some(f), None) => Ok(StepSpec::Filter(f)),
            (None, Some(c)) => Ok(StepSpec::Compute(c)),
            _ => Err("a step has exactly one key: `filter` or `compute`".into()),
        }
    }
}

impl From<StepSpec> for StepRepr {
    fn from(step: StepSpec) -> Self {
        match step {
            StepSpec::Filter(f) => StepRepr {
                filter: Some(f),
                compute: None,
            },
            StepSpec::Compute(c) => StepRepr {
                filter: None,
                compute: Some(c),
            },
        }
    }
}

/// A computed field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    /// Name of the field to set.
    pub name: String,
    /// CEL expression over the record's fields.
    pub expr: String,
}

/// Window kinds. Times are event time unless the source uses processing time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling {
        /// Window length.
        size: Duration,
        /// How long after its end a window still accepts late events (and emits updates).
        #[serde(default)]
        allowed_lateness: Option<Duration>,
    },
    /// Windows of `size` starting every `slide` (hopping); computed from panes of
    /// gcd(size, slide) so each event touches one pane.
    Sliding {
        /// Window length.
        size: Duration,
        /// Distance between window starts; must not exceed `size`.
        slide: Duration,
        /// How long after its end a window still accepts late events (and emits updates).
        #[serde(default)]
        allowed_lateness: Option<Duration>,
    },
    /// Per-key activity sessions that close after `gap` without events; overlapping sessions
    /// merge.
    Session {
        /// Inactivity gap that ends a session.
        gap: Duration,
        /// How long after its end a session still accepts late events (and emits updates).
        #[serde(default)]
        allowed_lateness: Option<Duration>,
    },
    /// Per-key windows of `size` events, in event-time order (ties by arrival within a
    /// partition); a window closes when it holds `size` events, or at end of input.
    Count {
        /// Events per window.
        size: u64,
    },
}

/// When results leave a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    /// `on_close`: one final result when the watermark passes the window end;
    /// `on_update`: the changed result after updates; `both`: updates then the final one.
    #[serde(default)]
    pub mode: EmitMode,
    /// With `on_update`/`both`: emit a key's changed result at most once per this interval
    /// (processing time). Without it, every change is emitted.
    #[serde(default)]
    pub every: Option<Duration>,
}

impl Default for EmitSpec {
    fn default() -> Self {
        EmitSpec {
            mode: EmitMode::OnClose,
            every: None,
        }
    }
}

/// Emit modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmitMode {
    /// One final result per window.
    #[default]
    OnClose,
    /// Updates as the window changes (none marked final).
    OnUpdate,
    /// Updates, then one final result.
    Both,
}

/// One aggregate: an output name, a function and its input field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Output name in results.
    pub name: String,
    /// The function.
    #[serde(rename = "fn")]
    pub function: AggregateFunction,
    /// Input field; required by every function but `count`.
    #[serde(default)]
    pub field: Option<String>,
    /// For `percentile`: the quantile in [0, 1].
    #[serde(default)]
    pub q: Option<f64>,
    /// For `top_n`: how many values to keep.
    #[serde(default)]
    pub n: Option<u32>,
}

/// Aggregate functions; all are mergeable, so panes and sessions combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    /// Number of events.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Mean of a numeric field.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Value of the earliest event (by event time; ties by the smaller value).
    First,
    /// Value of the latest event (by event time; ties by the larger value).
    Last,
    /// Approximate number of distinct values (HyperLogLog, ~0.8% standard error).
    CountDistinct,
    /// Approximate quantile `q` (relative-error sketch, 1%).
    Percentile,
    /// The `n` most frequent values with their counts.
    TopN,
}

/// An output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SinkSpec {
    /// Connector type: `console`, `file` (and `kafka`, `redis`, `mongodb` where built in).
    #[serde(rename = "type")]
    pub kind: String,
    /// Connector-specific options.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// State settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the RocksDB state (created if missing).
    #[serde(default = "default_state_dir")]
    pub dir: String,
    /// Memory for hot window state; colder keys are evicted to RocksDB beyond it.
    #[serde(default = "default_memory_budget")]
    pub memory_budget: ByteSize,
}

fn default_state_dir() -> String {
    "./data/state".into()
}

fn default_memory_budget() -> ByteSize {
    ByteSize(512 * 1024 * 1024)
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
            memory_budget: default_memory_budget(),
        }
    }
}

/// Checkpoint settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Time between checkpoint epochs; results become visible in transactional sinks at this
    /// pace.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Duration,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_millis(1000)
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: default_checkpoint_interval(),
        }
    }
}

/// Parallelism inside one worker.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParallelismConfig {
    /// Keyed shards per pipeline (threads owning a slice of the keys; a single shard fed by a
    /// single partition runs on that partition's source thread). Default: the number of cores.
    #[serde(default)]
    pub shards: Option<u32>,
}

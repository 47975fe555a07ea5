//! Weir's connectors. Each connector is one module behind one cargo feature; the engine's
//! traits are all they depend on. [`Registry`] is the one place that maps a topology's
//! `type:` names to connectors.

pub mod console;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "generator")]
pub mod generator;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(feature = "redis")]
pub mod redis;

use serde::de::DeserializeOwned;
use std::sync::Arc;
use weir_engine::runtime::{
    Connectors, DecodeContext, PartitionSelection, Sink, SinkError, SinkScope, SourceError,
    SourcePartition,
};

use weir_engine::runtime::exchange::{Exchange, ExchangeRequest};
use weir_engine::runtime::fleet::FleetBackend;
use weir_engine::runtime::JobError;
use weir_engine::topology::{
    ConfigIssue, ConnectorCatalog, FleetSpec, SinkSpec, SourceSpec, Topology,
};

/// Parses a connector's options map into its config type; every issue's path starts with
/// `prefix`.
pub(crate) fn parse_options<T: DeserializeOwned>(
    prefix: &str,
    options: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, Vec<ConfigIssue>> {
    let value = serde_json::Value::Object(options.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{inner}")
        };
        vec![ConfigIssue {
            path,
            message: e.into_inner().to_string(),
        }]
    })
}

/// Source connector types built into this binary.
pub fn source_types() -> Vec<&'static str> {
    let mut types = Vec::new();
    if cfg!(feature = "file") {
        types.push("file");
    }
    if cfg!(feature = "generator") {
        types.push("generator");
    }
    if cfg!(feature = "redis") {
        types.push("redis_streams");
    }
    if cfg!(feature = "kafka") {
        types.push("kafka");
    }
    types
}

/// Sink connector types built into this binary.
pub fn sink_types() -> Vec<&'static str> {
    let mut types = vec!["console"];
    if cfg!(feature = "file") {
        types.push("file");
    }
    if cfg!(feature = "redis") {
        types.extend([
            "redis_stream",
            "redis_feed",
            "redis_hash",
            "redis_leaderboard",
        ]);
    }
    if cfg!(feature = "mongodb") {
        types.push("mongodb");
    }
    if cfg!(feature = "kafka") {
        types.push("kafka");
    }
    types
}

/// Fleet backends built into this binary.
pub fn fleet_types() -> Vec<&'static str> {
    let mut types = Vec::new();
    if cfg!(feature = "redis") {
        types.push("redis");
    }
    if cfg!(feature = "kafka") {
        types.push("kafka");
    }
    types
}

/// The connectors built into this binary: checks their options and opens them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registry;

impl Registry {
    /// The fleet a topology runs in when it names none: a topology whose one source is a Kafka
    /// consumer group runs as a member of that group (so 1, 2 or N processes share the
    /// partitions); others run alone.
    pub fn implied_fleet(&self, topology: &Topology) -> Option<FleetSpec> {
        if let Some(fleet) = &topology.fleet {
            return Some(fleet.clone());
        }
        match topology.sources.values().collect::<Vec<_>>()[..] {
            [source] if cfg!(feature = "kafka") && source.kind == "kafka" => {
                serde_json::from_value(serde_json::json!({"type": "kafka"})).ok()
            }
            _ => None,
        }
    }
}

impl ConnectorCatalog for Registry {
    fn supports_repartition(&self, source_type: &str) -> bool {
        cfg!(feature = "kafka") && source_type == "kafka"
    }

    fn check_fleet(&self, spec: &FleetSpec) -> Vec<ConfigIssue> {
        match spec.kind.as_str() {
            #[cfg(feature = "redis")]
            "redis" => parse_options::<redis::RedisEndpoint>("fleet", &spec.options)
                .err()
                .unwrap_or_default(),
            #[cfg(feature = "kafka")]
            "kafka" => parse_options::<kafka::KafkaFleetConfig>("fleet", &spec.options)
                .err()
                .unwrap_or_default(),
            other => vec![ConfigIssue {
                path: "fleet.type".into(),
                message: format!(
                    "unknown fleet backend `{other}`; this build has: {}",
                    fleet_types().join(", ")
                ),
            }],
        }
    }

    fn check_source(&self, name: &str, spec: &SourceSpec) -> Vec<ConfigIssue> {
        let prefix = format!("sources.{name}");
        let result: Result<(), Vec<ConfigIssue>> = match spec.kind.as_str() {
            #[cfg(feature = "file")]
            "file" => {
                file::source::FileSourceConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "generator")]
            "generator" => {
                generator::GeneratorConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "redis")]
            "redis_streams" => {
                redis::source::RedisStreamsConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "kafka")]
            "kafka" => kafka::KafkaSourceConfig::from_options(&prefix, &spec.options).map(drop),
            other => Err(vec![ConfigIssue {
                path: format!("{prefix}.type"),
                message: format!(
                    "unknown source type `{other}`; this build has: {}",
                    source_types().join(", ")
                ),
            }]),
        };
        result.err().unwrap_or_default()
    }

    fn check_sink(&self, name: &str, spec: &SinkSpec) -> Vec<ConfigIssue> {
        let prefix = format!("sinks.{name}");
        let result: Result<(), Vec<ConfigIssue>> = match spec.kind.as_str() {
            "console" => console::ConsoleSinkConfig::from_options(&prefix, &spec.options).map(drop),
            #[cfg(feature = "file")]
            "file" => file::sink::FileSinkConfig::from_options(&prefix, &spec.options).map(drop),
            #[cfg(feature = "redis")]
            "redis_stream" => {
                redis::sink::StreamSinkConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "redis")]
            "redis_feed" => {
                redis::sink::FeedSinkConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "redis")]
            "redis_hash" => {
                redis::sink::HashSinkConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "redis")]
            "redis_leaderboard" => {
                redis::sink::LeaderboardSinkConfig::from_options(&prefix, &spec.options).map(drop)
            }
            #[cfg(feature = "mongodb")]
            "mongodb" => mongodb::MongoSinkConfig::from_options(&prefix, &spec.options).map(drop),
            #[cfg(feature = "kafka")]
            "kafka" => kafka::KafkaSinkConfig::from_options(&prefix, &spec.options).map(drop),
            other => Err(vec![ConfigIssue {
                path: format!("{prefix}.type"),
                message: format!(
                    "unknown sink type `{other}`; this build has: {}",
                    sink_types().join(", ")
                ),
            }]),
        };
        result.err().unwrap_or_default()
    }
}

fn config_error(issues: Vec<ConfigIssue>) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keeps the partitions of `all` (indexed in order) that `selection` names.
fn select(
    all: Vec<Box<dyn SourcePartition>>,
    selection: &PartitionSelection,
) -> Vec<Box<dyn SourcePartition>> {
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| selection.contains(*i as u32))
        .map(|(_, p)| p)
        .collect()
}

impl Connectors for Registry {
    fn open_fleet(
        &self,
        topology: &Topology,
        spec: &FleetSpec,
    ) -> Result<Arc<dyn FleetBackend>, JobError> {
        let job = topology.name.as_str();
        match spec.kind.as_str() {
            #[cfg(feature = "redis")]
            "redis" => {
                let endpoint: redis::RedisEndpoint = parse_options("fleet", &spec.options)
                    .map_err(|i| JobError::Config(config_error(i)))?;
                Ok(Arc::new(redis::fleet::RedisFleet::new(job, endpoint)))
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let config: kafka::KafkaFleetConfig = parse_options("fleet", &spec.options)
                    .map_err(|i| JobError::Config(config_error(i)))?;
                let source =
                    match topology.sources.iter().collect::<Vec<_>>()[..] {
                        [(name, source)] if source.kind == "kafka" => {
                            kafka::KafkaSourceConfig::from_options(
                                &format!("sources.{name}"),
                                &source.options,
                            )
                            .map_err(|i| JobError::Config(config_error(i)))?
                        }
                        _ => return Err(JobError::Config(
                            "fleet.type: a `kafka` fleet needs exactly one source, of type kafka"
                                .into(),
                        )),
                    };
                Ok(Arc::new(
                    kafka::KafkaFleet::join(job, &source, &config, spec.worker_id.as_deref())
                        .map_err(|e| JobError::Task(e.to_string()))?,
                ))
            }
            other => Err(JobError::Config(format!(
                "fleet.type: unknown fleet backend `{other}`; this build has: {}",
                fleet_types().join(", ")
            ))),
        }
    }

    fn open_exchange(&self, request: &ExchangeRequest<'_>) -> Result<Exchange, JobError> {
        let prefix = format!("sources.{}", request.source);
        match request.source_spec.kind.as_str() {
            #[cfg(feature = "kafka")]
            "kafka" => {
                let config =
                    kafka::KafkaSourceConfig::from_options(&prefix, &request.source_spec.options)
                        .map_err(|i| JobError::Config(config_error(i)))?;
                kafka::repartition::open_exchange(request, &config)
            }
            other => Err(JobError::Config(format!(
                "pipelines.{}.repartition: source `{}` is of type `{other}`, which cannot \
                 repartition (kafka can)",
                request.pipeline, request.source
            ))),
        }
    }

    fn partition_count(&self, name: &str, spec: &SourceSpec) -> Result<u32, SourceError> {
        let prefix = format!("sources.{name}");
        match spec.kind.as_str() {
            #[cfg(feature = "file")]
            "file" => {
                let config = file::source::FileSourceConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SourceError::Fatal(config_error(i)))?;
                Ok(config.files().len() as u32)
            }
            #[cfg(feature = "generator")]
            "generator" => {
                let config = generator::GeneratorConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SourceError::Fatal(config_error(i)))?;
                Ok(config.partitions)
            }
            #[cfg(feature = "redis")]
            "redis_streams" => {
                let config =
                    redis::source::RedisStreamsConfig::from_options(&prefix, &spec.options)
                        .map_err(|i| SourceError::Fatal(config_error(i)))?;
                Ok(config.partition_count())
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let config = kafka::KafkaSourceConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SourceError::Fatal(config_error(i)))?;
                Ok(kafka::source::task_partitions(&config)?.len() as u32)
            }
            other => Err(SourceError::Fatal(format!("unknown source type `{other}`"))),
        }
    }

    fn open_source(
        &self,
        name: &str,
        spec: &SourceSpec,
        ctx: &DecodeContext,
        selection: &PartitionSelection,
    ) -> Result<Vec<Box<dyn SourcePartition>>, SourceError> {
        let prefix = format!("sources.{name}");
        match spec.kind.as_str() {
            #[cfg(feature = "file")]
            "file" => {
                let config = file::source::FileSourceConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SourceError::Fatal(config_error(i)))?;
                Ok(select(
                    file::source::open_file_source(name, &config, ctx)?,
                    selection,
                ))
            }
            #[cfg(feature = "generator")]
            "generator" => {
                let config = generator::GeneratorConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SourceError::Fatal(config_error(i)))?;
                Ok(select(
                    generator::open_generator(name, &config, ctx)?,
                    selection,
                ))
            }
            #[cfg(feature = "redis")]
            "redis_streams" => {
                let config =
                    redis::source::RedisStreamsConfig::from_options(&prefix, &spec.options)
                        .map_err(|i| SourceError::Fatal(config_error(i)))?;
                redis::source::open_redis_streams(name, &config, ctx, selection)
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let config = kafka::KafkaSourceConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SourceError::Fatal(config_error(i)))?;
                kafka::source::open_kafka_source(name, &config, ctx, selection)
            }
            other => Err(SourceError::Fatal(format!("unknown source type `{other}`"))),
        }
    }

    fn open_sink(
        &self,
        scope: &SinkScope,
        name: &str,
        spec: &SinkSpec,
    ) -> Result<Box<dyn Sink>, SinkError> {
        let prefix = format!("sinks.{name}");
        match spec.kind.as_str() {
            "console" => {
                let config = console::ConsoleSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(console::ConsoleSink::new(name, &config)))
            }
            #[cfg(feature = "file")]
            "file" => {
                let config = file::sink::FileSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(file::sink::FileSink::open(name, &config)?))
            }
            #[cfg(feature = "redis")]
            "redis_stream" => {
                let config = redis::sink::StreamSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(redis::sink::StreamSink::open(
                    name, scope, &config,
                )?))
            }
            #[cfg(feature = "redis")]
            "redis_feed" => {
                let config = redis::sink::FeedSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(redis::sink::FeedSink::open(name, scope, &config)?))
            }
            #[cfg(feature = "redis")]
            "redis_hash" => {
                let config = redis::sink::HashSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(redis::sink::HashSink::open(name, scope, &config)?))
            }
            #[cfg(feature = "redis")]
            "redis_leaderboard" => {
                let config =
                    redis::sink::LeaderboardSinkConfig::from_options(&prefix, &spec.options)
                        .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(redis::sink::LeaderboardSink::open(
                    name, scope, &config,
                )?))
            }
            #[cfg(feature = "mongodb")]
            "mongodb" => {
                let config = mongodb::MongoSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(mongodb::MongoSink::open(name, scope, &config)?))
            }
            #[cfg(feature = "kafka")]
            "kafka" => {
                let config = kafka::KafkaSinkConfig::from_options(&prefix, &spec.options)
                    .map_err(|i| SinkError::Fatal(config_error(i)))?;
                Ok(Box::new(kafka::KafkaSink::open(name, scope, &config)?))
            }
            other => Err(SinkError::Fatal(format!("unknown sink type `{other}`"))),
        }
    }
}

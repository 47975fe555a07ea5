//! The Kafka exchange of `repartition: true`: an internal topic `<job>-<pipeline>-repartition`
//! with one partition per source partition (so fleet task `p` owns input partition `p` and
//! exchange partition `p`), written by a transactional [`KafkaSink`] per (job, pipeline, task)
//! and read `read_committed` by [`KafkaPartition`]s whose positions live with the state.

use weir_engine::runtime::exchange::{Exchange, ExchangeRequest};
use weir_engine::runtime::{JobError, SinkError, SourcePartition};

use super::config::{KafkaSinkConfig, KafkaSourceConfig, SinkFormat};
use super::sink::KafkaSink;
use super::source::KafkaPartition;

/// The exchange topic of `pipeline` in job `job`.
pub fn exchange_topic(job: &str, pipeline: &str) -> String {
    format!("{job}-{pipeline}-repartition")
}

/// Opens the exchange `request` asks for over the brokers and settings of `source`.
pub fn open_exchange(
    request: &ExchangeRequest<'_>,
    source: &KafkaSourceConfig,
) -> Result<Exchange, JobError> {
    let topic = exchange_topic(&request.scope.job, request.pipeline);
    let sink_config = KafkaSinkConfig {
        brokers: source.brokers.clone(),
        topic: topic.clone(),
        key: Vec::new(),
        format: SinkFormat::Json,
        create_partitions: Some(request.partitions),
        replication_factor: source.replication_factor,
        transaction_timeout_ms: 60_000,
        settings: source.settings.clone(),
    };
    let sink = KafkaSink::open_exchange(
        request.sink_name,
        request.scope,
        &sink_config,
        request.partitions,
    )
    .map_err(|e| match e {
        SinkError::Fatal(m) => {
            JobError::Config(format!("pipelines.{}.repartition: {m}", request.pipeline))
        }
        retryable => JobError::Sink(retryable),
    })?;
    let mut partitions: Vec<Box<dyn SourcePartition>> = Vec::new();
    for q in (0..request.partitions).filter(|q| request.selection.contains(*q)) {
        partitions.push(Box::new(KafkaPartition::open_exchange(
            request.sink_name,
            source,
            request.ctx,
            topic.clone(),
            q as i32,
            request.partitions,
        )?));
    }
    Ok(Exchange {
        sink: Box::new(sink),
        partitions,
    })
}

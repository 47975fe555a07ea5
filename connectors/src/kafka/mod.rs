//! Kafka: a source reading each partition as its own task, a transactional sink, a
//! changelog-backed checkpoint replica and a fleet backend driven by consumer-group
//! assignments.

mod changelog;
mod client;
pub mod config;
pub mod decode;
pub mod fleet;
mod offsets;
mod partition_queue;
mod read_ahead;
pub mod repartition;
pub mod sink;
pub mod source;

pub use changelog::ChangelogReplica;
pub use client::{block_on, finish_background_closes, EofAwareContext};
pub use config::{KafkaFleetConfig, KafkaSinkConfig, KafkaSourceConfig};
pub use fleet::KafkaFleet;
pub use read_ahead::waiting_read_ahead;
pub use sink::KafkaSink;

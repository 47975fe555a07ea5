//! The YAML options of the Kafka source, sink and fleet.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::topology::ConfigIssue;

use super::decode::{AvroConfig, PayloadFormat};

/// Where a partition starts when no checkpoint holds a position for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest record still in the partition.
    #[default]
    Earliest,
    /// Only records produced after the partition was first opened.
    Latest,
}

/// `sources.<name>` with `type: kafka`: one or more topics read as one consumer group.
///
/// Each partition is a task; a fleet of workers shares the tasks through the group's
/// assignments, and each task's window state moves with it through a compacted changelog topic
/// (`<job>-changelog`, one partition per task). Positions are stored with the state; the
/// group's committed offsets follow each committed epoch, so lag tools see progress.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to read. Tasks are numbered over the topics in this order, then by partition.
    pub topics: Vec<String>,
    /// The consumer group the workers join.
    pub group: String,
    /// Payload encoding: `json` (default) or `avro` (Confluent wire format).
    #[serde(default)]
    pub format: PayloadFormat,
    /// Where Avro schemas come from (with `format: avro`).
    #[serde(default)]
    pub avro: Option<AvroConfig>,
    /// Where a partition without a stored position starts: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: StartFrom,
    /// Stop each partition at the end it had when it was opened (a bounded backfill).
    #[serde(default)]
    pub end_at_tail: bool,
    /// Replication factor of the internal topics Weir creates (changelog, dead letters).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// librdkafka settings passed through to every client of this source (SASL, SSL, fetch
    /// sizes...). `${ENV}` references are expanded when the topology is loaded.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

fn default_replication() -> i32 {
    1
}

impl KafkaSourceConfig {
    /// Parses and checks the options; issues carry YAML paths under `prefix`.
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: KafkaSourceConfig = crate::parse_options(prefix, options)?;
        let mut issues = Vec::new();
        let mut issue = |field: &str, message: String| {
            issues.push(ConfigIssue {
                path: format!("{prefix}.{field}"),
                message,
            })
        };
        if config.brokers.trim().is_empty() {
            issue("brokers", "must name at least one broker".into());
        }
        if config.topics.is_empty() {
            issue("topics", "must name at least one topic".into());
        }
        if config.group.trim().is_empty() {
            issue("group", "must not be empty".into());
        }
        if config.replication_factor < 1 {
            issue("replication_factor", "must be at least 1".into());
        }
        for key in config.settings.keys() {
            if RESERVED_SETTINGS.contains(&key.as_str()) {
                issue(
                    &format!("settings.{key}"),
                    "is set by Weir (exactly-once depends on it); remove it".into(),
                );
            }
        }
        match (config.format, &config.avro) {
            (PayloadFormat::Avro, None) => issue(
                "avro",
                "`format: avro` needs `avro.schemas` (an id mapping file) or `avro.registry`"
                    .into(),
            ),
            (PayloadFormat::Avro, Some(avro)) => {
                issues.extend(avro.validate(prefix));
            }
            _ => {}
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }
}

/// librdkafka settings Weir owns: overriding them would break exactly-once.
pub(crate) const RESERVED_SETTINGS: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "group.id",
];

/// How a Kafka sink turns outputs into record values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// One JSON object per record (window results, events, late records). Dead letters keep
    /// their original bytes with the error and origin in headers.
    #[default]
    Json,
}

/// `sinks.<name>` with `type: kafka`: a transactional producer per task. Each checkpoint epoch
/// is one transaction, so `read_committed` consumers see every output exactly once.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic written to.
    pub topic: String,
    /// Fields whose values, joined with `:`, form the record key. Default: a window result's
    /// `key_by` fields; events and late records have no key unless this is set.
    #[serde(default)]
    pub key: Vec<String>,
    /// Record value encoding.
    #[serde(default)]
    pub format: SinkFormat,
    /// Create the topic with this many partitions when it does not exist (else it must exist).
    #[serde(default)]
    pub create_partitions: Option<u32>,
    /// Replication factor when the topic is created.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long a transaction may stay open before the broker aborts it (ms).
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// librdkafka settings passed through (SASL, SSL, compression...).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

fn default_transaction_timeout_ms() -> u64 {
    60_000
}

impl KafkaSinkConfig {
    /// Parses and checks the options; issues carry YAML paths under `prefix`.
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: KafkaSinkConfig = crate::parse_options(prefix, options)?;
        let mut issues = Vec::new();
        if config.brokers.trim().is_empty() {
            issues.push(ConfigIssue {
                path: format!("{prefix}.brokers"),
                message: "must name at least one broker".into(),
            });
        }
        if config.topic.trim().is_empty() {
            issues.push(ConfigIssue {
                path: format!("{prefix}.topic"),
                message: "must not be empty".into(),
            });
        }
        if config.create_partitions == Some(0) {
            issues.push(ConfigIssue {
                path: format!("{prefix}.create_partitions"),
                message: "must be at least 1".into(),
            });
        }
        for key in config.settings.keys() {
            if RESERVED_SETTINGS.contains(&key.as_str()) {
                issues.push(ConfigIssue {
                    path: format!("{prefix}.settings.{key}"),
                    message: "is set by Weir (exactly-once depends on it); remove it".into(),
                });
            }
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }
}

/// `fleet` with `type: kafka`: workers share the source's partitions through its consumer
/// group. Brokers, group and settings come from the (single) Kafka source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaFleetConfig {
    /// How long the group waits for a silent worker before moving its partitions (ms).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long a rebalance may take (librdkafka `max.poll.interval.ms`, ms). Revoked tasks get
    /// half of it for their last checkpoint. Some brokers wait this long for a dead member
    /// during a rebalance, so it is kept well below librdkafka's 5-minute default.
    #[serde(default = "default_rebalance_timeout_ms")]
    pub rebalance_timeout_ms: u64,
    /// Whether a worker that finds its group empty reads every partition ahead while the
    /// broker holds its first join (each reader stops fetching once
    /// `queued.max.messages.kbytes` are queued); readers of partitions the group assigns
    /// elsewhere are then closed.
    #[serde(default = "default_read_ahead")]
    pub read_ahead: bool,
}

fn default_read_ahead() -> bool {
    true
}

fn default_rebalance_timeout_ms() -> u64 {
    30_000
}

fn default_session_timeout_ms() -> u64 {
    10_000
}

impl Default for KafkaFleetConfig {
    fn default() -> Self {
        KafkaFleetConfig {
            session_timeout_ms: default_session_timeout_ms(),
            rebalance_timeout_ms: default_rebalance_timeout_ms(),
            read_ahead: default_read_ahead(),
        }
    }
}

//! Turning one Kafka message into a [`Record`] for one pipeline.
//!
//! A [`MessageDecoder`] fills exactly the slots of its [`DecodeContext`]:
//!
//! - **Payload fields.** [`PayloadFormat::Json`]: the payload is one JSON object, decoded by the
//!   engine's [`JsonDecoder`] (same rules as files and Redis Streams). [`PayloadFormat::Avro`]:
//!   the payload is in the Confluent wire format (magic byte `0`, a 4-byte big-endian schema
//!   id, one Avro binary datum); the writer schema comes from a mapping file or a schema
//!   registry ([`AvroConfig`]) and the top-level value must be a record. A slot takes the
//!   record field of the same name: `null`→`Null`, `boolean`→`Bool`, `int`/`long` and the
//!   integer logical types (`date`, `time-*`, `timestamp-*`, `local-timestamp-*`)→`Int`,
//!   `float`/`double`→`Float`, `string`/`enum`/`uuid`→`Str`, a union→its branch,
//!   `bytes`/`fixed`→`Str` (lossy UTF-8), `decimal`→`Str` (exact decimal text; an approximate
//!   `Float` beyond 128 bits), `array`/`map`/`record`/`duration`→`Str` holding compact JSON.
//!   A slot naming no field of the record is `Null`.
//! - **Metadata fields.** A slot named `_key` (the key as lossy UTF-8, `Null` without a key),
//!   `_topic`, `_partition`, `_offset`, `_timestamp` (the message timestamp in ms, `Null` when
//!   absent) or `_header_<name>` (the value of the last header called `<name>` as lossy UTF-8,
//!   `Null` when absent or valueless) takes that value, overriding a payload field of the same
//!   name. A metadata field can also be the event-time field (e.g. a header holding the time).
//! - **Event time.** From the context's `event_time`: the field parsed with its
//!   [`TimeFormat`](weir_engine::topology::TimeFormat) (by the engine's [`parse_time`]), the
//!   wall clock for `processing_time`, or the message timestamp (CreateTime or LogAppendTime)
//!   for `source_timestamp`.
//!
//! Every problem with a message is an `Err(reason)`: the caller turns it into a dead letter.
//! Decoding never panics, whatever the bytes.

mod avro;

use std::path::PathBuf;

use compact_str::CompactString;
use rdkafka::message::Headers;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::event::decode::{
    parse_time, wall_clock_ms, JsonDecoder, MAX_EVENT_TIME, MIN_EVENT_TIME,
};
use weir_engine::event::{Fields, Record, Timestamp, Value};
use weir_engine::runtime::{DecodeContext, SourceError};
use weir_engine::topology::{ConfigIssue, TimeFormat};

pub use avro::AvroEncoder;
/// The `rdkafka` crate this module's API is written against, re-exported so that the `weir`
/// binary (which has no direct dependency on it) uses the very same version.
pub use rdkafka;

/// Payload encoding of a Kafka source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// Avro in the Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then
    /// one Avro binary datum whose schema is found through [`AvroConfig`].
    Avro,
}

/// Where Avro schemas come from (Confluent wire format: magic byte 0, 4-byte big-endian schema
/// id, Avro binary datum). With both set, the mapping file is consulted first.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroConfig {
    /// A YAML/JSON mapping file `{<schema id>: <path of .avsc relative to the mapping file>}`
    /// (e.g. schemas/avro/ids.yaml). Read once when the source starts. YAML is accepted in its
    /// block form (`1: activity.avsc`, one per line, `#` comments, optional quotes) and its
    /// flow form (`{1: activity.avsc}`); JSON as an object with the ids as keys.
    pub schemas: Option<PathBuf>,
    /// A schema-registry base URL (`http://host:8081`; plain HTTP); schemas are fetched once
    /// per id from `GET {registry}/schemas/ids/{id}` (the JSON reply's `schema` string) and
    /// cached. An id the registry does not know is asked for again at most once a minute, an
    /// unreachable registry at most every 5 seconds; meanwhile its messages are rejected.
    pub registry: Option<String>,
}

impl AvroConfig {
    /// Checks the settings, reading the mapping file and every schema it names; each issue's
    /// path starts with `{prefix}.avro` (`prefix` is e.g. `sources.events`). Starts nothing
    /// and never contacts the registry.
    pub fn validate(&self, prefix: &str) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.schemas.is_none() && self.registry.is_none() {
            issues.push(ConfigIssue {
                path: format!("{prefix}.avro"),
                message: "set `schemas` (a file mapping schema ids to .avsc files) or \
                          `registry` (a schema-registry URL), or both"
                    .into(),
            });
        }
        if let Some(path) = &self.schemas {
            if let Err(e) = avro::load_mapping(path) {
                issues.push(ConfigIssue {
                    path: format!("{prefix}.avro.schemas"),
                    message: e,
                });
            }
        }
        if let Some(url) = &self.registry {
            if let Err(e) = avro::check_registry_url(url) {
                issues.push(ConfigIssue {
                    path: format!("{prefix}.avro.registry"),
                    message: e,
                });
            }
        }
        issues
    }
}

/// A message attribute a slot can name.
#[derive(Debug, Clone, PartialEq)]
enum Meta {
    Key,
    Topic,
    Partition,
    Offset,
    Timestamp,
    /// The last header with this name.
    Header(String),
}

impl Meta {
    /// The attribute a field name refers to, if it is a metadata name.
    fn parse(name: &str) -> Option<Meta> {
        Some(match name {
            "_key" => Meta::Key,
            "_topic" => Meta::Topic,
            "_partition" => Meta::Partition,
            "_offset" => Meta::Offset,
            "_timestamp" => Meta::Timestamp,
            _ => Meta::Header(name.strip_prefix("_header_")?.to_owned()),
        })
    }

    fn value<M: rdkafka::Message>(&self, msg: &M) -> Value {
        match self {
            Meta::Key => msg.key().map_or(Value::Null, lossy),
            Meta::Topic => Value::Str(msg.topic().into()),
            Meta::Partition => Value::Int(i64::from(msg.partition())),
            Meta::Offset => Value::Int(msg.offset()),
            Meta::Timestamp => msg.timestamp().to_millis().map_or(Value::Null, Value::Int),
            Meta::Header(name) => msg
                .headers()
                .and_then(|h| {
                    (0..h.count())
                        .rev()
                        .filter_map(|i| h.try_get(i))
                        .find(|header| header.key == name.as_str())
                })
                .and_then(|header| header.value)
                .map_or(Value::Null, lossy),
        }
    }
}

fn lossy(bytes: &[u8]) -> Value {
    Value::Str(CompactString::from_utf8_lossy(bytes))
}

/// Where a record's event time comes from.
#[derive(Debug, Clone)]
enum TimeRule {
    /// The wall clock when the message is decoded.
    Processing,
    /// The message timestamp.
    Source,
    /// A payload field; for JSON the [`JsonDecoder`] resolves it itself.
    Payload {
        field: CompactString,
        format: TimeFormat,
    },
    /// A metadata field.
    Meta {
        field: CompactString,
        format: TimeFormat,
        meta: Meta,
    },
}

/// Parses the time value of `field`, with the same messages as the engine's decoders.
fn field_time(field: &str, format: TimeFormat, value: Option<&Value>) -> Result<Timestamp, String> {
    let value = value.ok_or_else(|| format!("missing event time field `{field}`"))?;
    parse_time(value, format).map_err(|e| format!("event time field `{field}`: {}", e.0))
}

/// The payload decoder of one format.
enum Payload {
    Json(JsonDecoder),
    Avro(Box<avro::AvroPayloadDecoder>),
}

/// Decodes Kafka messages into records for one pipeline's [`DecodeContext`]; see the module
/// documentation for the rules. One per source partition task (it caches schemas).
pub struct MessageDecoder {
    payload: Payload,
    nslots: usize,
    /// Slots filled from message attributes, after the payload.
    meta: Vec<(usize, Meta)>,
    time: TimeRule,
}

impl std::fmt::Debug for MessageDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDecoder")
            .field("nslots", &self.nslots)
            .field("meta", &self.meta)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

impl MessageDecoder {
    /// A decoder for `ctx`. For [`PayloadFormat::Avro`] it needs `avro` and reads the mapping
    /// file and every schema it names now. Errors are configuration errors
    /// ([`SourceError::Fatal`]) whose text starts with the YAML path
    /// (`sources.<name>.avro...`).
    pub fn new(
        format: PayloadFormat,
        avro: Option<&AvroConfig>,
        ctx: &DecodeContext,
    ) -> Result<Self, SourceError> {
        let spec = &ctx.event_time;
        let time = if spec.processing_time {
            TimeRule::Processing
        } else if spec.source_timestamp {
            TimeRule::Source
        } else if let Some(meta) = Meta::parse(&spec.field) {
            TimeRule::Meta {
                field: spec.field.as_str().into(),
                format: spec.format,
                meta,
            }
        } else {
            TimeRule::Payload {
                field: spec.field.as_str().into(),
                format: spec.format,
            }
        };
        let meta: Vec<(usize, Meta)> = ctx
            .slots
            .names()
            .iter()
            .enumerate()
            .filter_map(|(slot, name)| Meta::parse(name).map(|m| (slot, m)))
            .collect();
        let payload = match format {
            PayloadFormat::Json => {
                let mut json_ctx = ctx.clone();
                // The JSON decoder then takes the wall clock, which is replaced below.
                json_ctx.event_time.processing_time = !matches!(time, TimeRule::Payload { .. });
                Payload::Json(JsonDecoder::new(&json_ctx))
            }
            PayloadFormat::Avro => {
                let prefix = format!("sources.{}.avro", ctx.source_name);
                let config = avro.ok_or_else(|| {
                    SourceError::Fatal(format!(
                        "{prefix}: `format: avro` needs an `avro` section with `schemas` or \
                         `registry`"
                    ))
                })?;
                let wanted: Vec<(usize, CompactString)> = ctx
                    .slots
                    .names()
                    .iter()
                    .enumerate()
                    .filter(|(_, name)| Meta::parse(name).is_none())
                    .map(|(slot, name)| (slot, name.clone()))
                    .collect();
                let time_field = match &time {
                    TimeRule::Payload { field, .. } => Some(field.clone()),
                    _ => None,
                };
                Payload::Avro(Box::new(
                    avro::AvroPayloadDecoder::new(config, &prefix, wanted, time_field)
                        .map_err(SourceError::Fatal)?,
                ))
            }
        };
        Ok(MessageDecoder {
            payload,
            nslots: ctx.slots.len(),
            meta,
            time,
        })
    }

    /// Decodes one message. `Err(reason)` means the message belongs in the dead-letter output
    /// (the caller adds topic, partition, offset and the raw bytes).
    pub fn decode<M: rdkafka::Message>(&mut self, msg: &M) -> Result<Record, String> {
        let payload = msg
            .payload()
            .ok_or("the message has no payload (a tombstone)")?;
        let mut record = match &mut self.payload {
            Payload::Json(json) => json.decode(payload).map_err(|e| e.0)?,
            Payload::Avro(avro) => {
                let mut fields = Fields::from_elem(Value::Null, self.nslots);
                let time_value = avro.decode(payload, &mut fields)?;
                let time = match &self.time {
                    TimeRule::Payload { field, format } => {
                        field_time(field, *format, time_value.as_ref())?
                    }
                    // Any other rule sets the time below.
                    _ => 0,
                };
                Record { time, fields }
            }
        };
        for (slot, meta) in &self.meta {
            if let Some(f) = record.fields.get_mut(*slot) {
                *f = meta.value(msg);
            }
        }
        match &self.time {
            TimeRule::Payload { .. } => {}
            TimeRule::Processing => record.time = wall_clock_ms(),
            TimeRule::Source => {
                let ms = msg
                    .timestamp()
                    .to_millis()
                    .ok_or("the message has no timestamp (event_time.source_timestamp is set)")?;
                if !(MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ms) {
                    return Err(format!(
                        "the message timestamp {ms} ms is outside the supported event-time range"
                    ));
                }
                record.time = ms;
            }
            TimeRule::Meta {
                field,
                format,
                meta,
            } => {
                let value = meta.value(msg);
                let seen = (value != Value::Null).then_some(&value);
                record.time = field_time(field, *format, seen)?;
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests;

//! `redis_stream`: every output as an entry of a Redis stream (a bridge for consumers that read
//! streams rather than Kafka).
//!
//! ```yaml
//! sinks:
//!   bridge:
//!     type: redis_stream
//!     url: redis://localhost:6379
//!     stream: "weir:{pipeline}"   # one stream per pipeline
//!     maxlen: 100000              # XADD MAXLEN ~ 100000
//!     format: json                # one field `data` holding the JSON output; or `fields`
//! ```
//!
//! Entry ids are assigned by Redis (`*`); the fence keeps an epoch from being added twice.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::event::Output;
use weir_engine::runtime::{SinkError, SinkScope};
use weir_engine::topology::ConfigIssue;

use super::ops::{self, KeyType, Skip, WriteOps};
use super::pattern::{json_text, Pattern, Vars};
use super::{check_positive, check_url, endpoint, finish, missing, RedisSink};
use crate::parse_options;

/// Options of a `redis_stream` sink.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSinkConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS.
    pub url: String,
    /// ACL user name (AUTH); overrides one in the URL.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (AUTH); overrides one in the URL. Write `${REDIS_PASSWORD}` rather than the
    /// secret itself.
    #[serde(default)]
    pub password: Option<String>,
    /// Group each epoch's writes by Redis Cluster slot, one fence per slot, so every script
    /// touches one slot (required by Redis Cluster, e.g. behind a cluster-aware proxy).
    #[serde(default)]
    pub cluster: bool,
    /// Stream key pattern, e.g. `weir:{pipeline}`.
    pub stream: Pattern,
    /// Trim each stream to about this many entries (`XADD MAXLEN ~`); unbounded if absent.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Entry layout: `json` (one field `data`, the output as JSON text) or `fields`.
    #[serde(default)]
    pub format: StreamFormat,
}

/// How an output is laid out in a stream entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// One field, `data`, holding the output's JSON text.
    #[default]
    Json,
    /// One field per member of the output's JSON object, the value as text (strings bare,
    /// numbers and booleans as written in JSON, arrays and objects as JSON); `null` members
    /// are left out.
    Fields,
}

impl StreamSinkConfig {
    /// Parses and checks the sink's options; issue paths start with `prefix` (e.g.
    /// `sinks.bridge`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: Self = parse_options(prefix, options)?;
        let mut issues = Vec::new();
        check_url(prefix, &config.url, &mut issues);
        if let Some(maxlen) = config.maxlen {
            check_positive(prefix, "maxlen", maxlen, &mut issues);
        }
        finish(config, issues)
    }
}

/// What a `redis_stream` sink writes per output: one XADD.
#[derive(Debug, Clone)]
pub struct StreamOps {
    stream: Pattern,
    maxlen: Option<String>,
    format: StreamFormat,
}

/// A `redis_stream` sink.
pub type StreamSink = RedisSink<StreamOps>;

impl RedisSink<StreamOps> {
    /// Opens the `redis_stream` sink `name` for `scope` (no connection before `recover`).
    pub fn open(
        name: &str,
        scope: &SinkScope,
        config: &StreamSinkConfig,
    ) -> Result<StreamSink, SinkError> {
        let writer = StreamOps {
            stream: config.stream.clone(),
            maxlen: config.maxlen.map(|n| n.to_string()),
            format: config.format,
        };
        let endpoint = endpoint(&config.url, &config.username, &config.password);
        RedisSink::new(name, scope, endpoint, config.cluster, writer)
    }
}

impl WriteOps for StreamOps {
    fn write_ops(&self, output: &Output, staged: &mut Vec<u8>) -> Result<(), Skip> {
        let key = self
            .stream
            .render(&Vars::of(output))
            .map_err(|name| missing(&self.stream, name))?;
        let json = output.to_json();
        let fields: Vec<(&str, Cow<'_, str>)> = match self.format {
            StreamFormat::Json => vec![("data", Cow::Owned(json.to_string()))],
            StreamFormat::Fields => json
                .as_object()
                .map(|members| {
                    members
                        .iter()
                        .filter_map(|(name, v)| json_text(v).map(|text| (name.as_str(), text)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if fields.is_empty() {
            return Err(Skip("the output has no non-null members".to_string()));
        }
        let mut xadd = vec!["XADD", &key];
        if let Some(maxlen) = &self.maxlen {
            xadd.extend(["MAXLEN", "~", maxlen]);
        }
        xadd.push("*");
        for (name, value) in &fields {
            xadd.extend([*name, value.as_ref()]);
        }
        ops::data(staged, KeyType::Stream, &xadd);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_engine::event::{EventRecord, Value};

    use super::*;

    fn options(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().cloned().unwrap()
    }

    fn event() -> Output {
        Output::Event(EventRecord {
            pipeline: "clicks".into(),
            time: 5,
            fields: vec![
                ("user".into(), Value::Str("ann".into())),
                ("n".into(), Value::Int(3)),
                ("gone".into(), Value::Null),
            ],
        })
    }

    fn ops_of(writer: &StreamOps, output: &Output) -> Vec<Vec<String>> {
        let mut staged = Vec::new();
        writer.write_ops(output, &mut staged).unwrap();
        ops::decode(&staged)
            .unwrap()
            .iter()
            .map(|op| {
                [op.command, op.key]
                    .into_iter()
                    .chain(op.args.iter().copied())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn json_and_fields_layouts() {
        let config = StreamSinkConfig::from_options(
            "sinks.s",
            &options(
                serde_json::json!({"url": "redis://h", "stream": "s:{pipeline}", "maxlen": 10}),
            ),
        )
        .unwrap();
        let mut writer = StreamOps {
            stream: config.stream,
            maxlen: Some("10".into()),
            format: StreamFormat::Json,
        };
        assert_eq!(
            ops_of(&writer, &event()),
            vec![vec![
                "XADD",
                "s:clicks",
                "MAXLEN",
                "~",
                "10",
                "*",
                "data",
                r#"{"user":"ann","n":3,"gone":null}"#
            ]]
        );
        writer.format = StreamFormat::Fields;
        writer.maxlen = None;
        assert_eq!(
            ops_of(&writer, &event()),
            vec![vec!["XADD", "s:clicks", "*", "user", "ann", "n", "3"]]
        );
    }

    #[test]
    fn config_errors_carry_paths() {
        let err = StreamSinkConfig::from_options(
            "sinks.bridge",
            &options(serde_json::json!({"url": "redis://h", "stream": "s:{", "maxlen": 0})),
        )
        .unwrap_err();
        assert_eq!(err[0].path, "sinks.bridge.stream");
        let err = StreamSinkConfig::from_options(
            "sinks.bridge",
            &options(serde_json::json!({"url": "redis://h", "stream": "s", "maxlen": 0})),
        )
        .unwrap_err();
        assert_eq!(err[0].path, "sinks.bridge.maxlen");
        let err = StreamSinkConfig::from_options(
            "sinks.bridge",
            &options(serde_json::json!({"url": "redis://h", "stream": "s", "format": "xml"})),
        )
        .unwrap_err();
        assert_eq!(err[0].path, "sinks.bridge.format");
        let err = StreamSinkConfig::from_options(
            "sinks.bridge",
            &options(serde_json::json!({"url": "redis://h", "stream": "s", "maxlen_": 1})),
        )
        .unwrap_err();
        assert_eq!(err[0].path, "sinks.bridge.maxlen_");
    }
}

//! `redis_hash`: window results into hashes, one field per aggregate.
//!
//! ```yaml
//! sinks:
//!   views:
//!     type: redis_hash
//!     url: redis://localhost:6379
//!     key: "views:{product}:{window_start}"
//!     mode: overwrite          # or increment
//!     ttl: 2d
//! ```
//!
//! - `overwrite` (default): `HSET key window_start S window_end E agg1 v1 ...`; a later result
//!   for the same key (an `on_update` change, the final result) replaces the fields. `null`
//!   aggregates are left out.
//! - `increment`: only final results (`is_final`) count, since updates are superseded by
//!   them; each numeric aggregate is added with `HINCRBY` (integers) or `HINCRBYFLOAT`. With
//!   a key pattern without the window (`views:{product}`) the hash holds all-time totals. A
//!   result with a non-numeric aggregate is skipped.
//!
//! With `ttl`, each hash written in an epoch gets `PEXPIRE key ttl` once, at the epoch's end.

use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::event::Output;
use weir_engine::runtime::{SinkError, SinkScope};
use weir_engine::topology::{ConfigIssue, Duration};

use super::ops::{self, KeyType, Skip, WriteOps};
use super::pattern::{json_text, Pattern, Vars};
use super::{check_ttl, check_url, endpoint, finish, missing, RedisSink};
use crate::parse_options;

/// Options of a `redis_hash` sink.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashSinkConfig {
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
    /// The hash of a result, e.g. `views:{product}:{window_start}`.
    pub key: Pattern,
    /// `overwrite` (HSET the latest result) or `increment` (add final results' aggregates).
    #[serde(default)]
    pub mode: HashMode,
    /// Time to live of each hash, renewed by every epoch that writes to it; hashes never
    /// expire if absent.
    #[serde(default)]
    pub ttl: Option<Duration>,
}

/// How a `redis_hash` sink writes a result's aggregates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashMode {
    /// Set the fields to the result's values (HSET), also `window_start` and `window_end`.
    #[default]
    Overwrite,
    /// Add final results' numeric aggregates to the fields (HINCRBY / HINCRBYFLOAT).
    Increment,
}

impl HashSinkConfig {
    /// Parses and checks the sink's options; issue paths start with `prefix` (e.g.
    /// `sinks.views`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: Self = parse_options(prefix, options)?;
        let mut issues = Vec::new();
        check_url(prefix, &config.url, &mut issues);
        check_ttl(prefix, "ttl", config.ttl, &mut issues);
        finish(config, issues)
    }
}

/// What a `redis_hash` sink writes per result (see the module docs).
#[derive(Debug, Clone)]
pub struct HashOps {
    key: Pattern,
    mode: HashMode,
    ttl_ms: Option<String>,
}

/// A `redis_hash` sink.
pub type HashSink = RedisSink<HashOps>;

impl RedisSink<HashOps> {
    /// Opens the `redis_hash` sink `name` for `scope` (no connection before `recover`).
    pub fn open(
        name: &str,
        scope: &SinkScope,
        config: &HashSinkConfig,
    ) -> Result<HashSink, SinkError> {
        let writer = HashOps {
            key: config.key.clone(),
            mode: config.mode,
            ttl_ms: config.ttl.map(|t| t.as_millis().to_string()),
        };
        let endpoint = endpoint(&config.url, &config.username, &config.password);
        RedisSink::new(name, scope, endpoint, config.cluster, writer)
    }
}

impl WriteOps for HashOps {
    fn write_ops(&self, output: &Output, staged: &mut Vec<u8>) -> Result<(), Skip> {
        let Output::Result(result) = output else {
            return Err(Skip("a hash sink takes window results only".to_string()));
        };
        if self.mode == HashMode::Increment && !result.is_final {
            return Ok(());
        }
        let key = self
            .key
            .render(&Vars::of(output))
            .map_err(|name| missing(&self.key, name))?;
        let aggregates = result.schema.aggregate_names.iter().zip(&result.aggregates);
        match self.mode {
            HashMode::Overwrite => {
                let start = result.window_start.to_string();
                let end = result.window_end.to_string();
                let values: Vec<_> = aggregates
                    .filter_map(|(name, v)| json_text(v).map(|t| (name, t)))
                    .collect();
                let mut hset = vec!["HSET", &key, "window_start", &start, "window_end", &end];
                for (name, value) in &values {
                    hset.extend([name.as_str(), value.as_ref()]);
                }
                ops::data(staged, KeyType::Hash, &hset);
            }
            HashMode::Increment => {
                for (name, value) in aggregates {
                    let (command, by) = match value {
                        serde_json::Value::Null => continue,
                        serde_json::Value::Number(n) if n.is_i64() => ("HINCRBY", n.to_string()),
                        serde_json::Value::Number(n) => ("HINCRBYFLOAT", n.to_string()),
                        _ => return Err(not_a_number(name)),
                    };
                    ops::data(staged, KeyType::Hash, &[command, &key, name, &by]);
                }
            }
        }
        if let Some(ttl) = &self.ttl_ms {
            ops::tail(staged, KeyType::Any, &["PEXPIRE", &key, ttl]);
        }
        Ok(())
    }
}

fn not_a_number(aggregate: &str) -> Skip {
    Skip(format!(
        "aggregate `{aggregate}` is not a number; increment mode adds numbers only"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_engine::event::{Key, ResultSchema, Value, WindowResult};

    use super::*;

    fn result(aggregates: Vec<serde_json::Value>, is_final: bool) -> Output {
        Output::Result(WindowResult {
            schema: Arc::new(ResultSchema {
                pipeline: "views".into(),
                key_fields: vec!["product".into()],
                aggregate_names: vec!["n".into(), "avg".into()],
            }),
            key: Key::from_values([Value::Str("hat".into())].iter()),
            window_start: 0,
            window_end: 60_000,
            aggregates,
            is_final,
        })
    }

    fn commands(mode: HashMode, output: &Output) -> Result<Vec<String>, Skip> {
        let writer = HashOps {
            key: Pattern::parse("views:{product}").unwrap(),
            mode,
            ttl_ms: Some("1000".into()),
        };
        let mut staged = Vec::new();
        writer.write_ops(output, &mut staged)?;
        Ok(ops::decode(&staged)
            .unwrap()
            .iter()
            .map(|op| {
                let mut words = vec![op.command, op.key];
                words.extend(op.args.iter().copied());
                let words: Vec<_> = words.iter().map(|w| String::from_utf8_lossy(w)).collect();
                words.join(" ")
            })
            .collect())
    }

    #[test]
    fn overwrite_sets_every_field() {
        let got = commands(
            HashMode::Overwrite,
            &result(vec![3.into(), serde_json::Value::Null], false),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                "HSET views:hat window_start 0 window_end 60000 n 3",
                "PEXPIRE views:hat 1000"
            ]
        );
    }

    #[test]
    fn increment_adds_final_results_only() {
        let got = commands(
            HashMode::Increment,
            &result(vec![3.into(), 1.5.into()], true),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                "HINCRBY views:hat n 3",
                "HINCRBYFLOAT views:hat avg 1.5",
                "PEXPIRE views:hat 1000"
            ]
        );
        let updates = commands(
            HashMode::Increment,
            &result(vec![3.into(), 1.5.into()], false),
        );
        assert_eq!(updates.unwrap(), Vec::<String>::new());
        let text = commands(
            HashMode::Increment,
            &result(vec!["x".into(), 1.into()], true),
        );
        assert!(text.is_err());
    }

    #[test]
    fn config_errors_carry_paths() {
        let options =
            serde_json::json!({"url": "redis://h", "key": "k", "mode": "sum", "ttl": "1d"});
        let issues =
            HashSinkConfig::from_options("sinks.views", options.as_object().unwrap()).unwrap_err();
        assert_eq!(issues[0].path, "sinks.views.mode");
        let options = serde_json::json!({"url": "redis://h", "key": "k", "ttl": "0ms"});
        let issues =
            HashSinkConfig::from_options("sinks.views", options.as_object().unwrap()).unwrap_err();
        assert_eq!(issues[0].path, "sinks.views.ttl");
    }
}

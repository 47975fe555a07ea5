//! `redis_leaderboard`: window results into sorted sets holding each window's top N.
//!
//! ```yaml
//! sinks:
//!   top:
//!     type: redis_leaderboard
//!     url: redis://localhost:6379
//!     key: "top:{pipeline}:{window_end}"
//!     member: "{product}"
//!     score: views             # an aggregate of the pipeline
//!     top_n: 10
//!     ttl: 1d
//! ```
//!
//! Per result: `ZADD key SCORE member` (a later result for the same member replaces its
//! score); once per key and epoch: `ZREMRANGEBYRANK key 0 -(top_n+1)` and, with `ttl`,
//! `PEXPIRE key ttl`. Read it with `ZREVRANGE top:views:1718000060000 0 9 WITHSCORES`.
//! A result whose score aggregate is missing, `null` or not a number is skipped.

use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::event::Output;
use weir_engine::runtime::{SinkError, SinkScope};
use weir_engine::topology::{ConfigIssue, Duration};

use super::ops::{self, KeyType, Skip, WriteOps};
use super::pattern::{Pattern, Vars};
use super::{check_positive, check_ttl, check_url, endpoint, finish, missing, RedisSink};
use crate::parse_options;

/// Options of a `redis_leaderboard` sink.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardSinkConfig {
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
    /// The sorted set of a result, e.g. `top:{pipeline}:{window_end}`.
    pub key: Pattern,
    /// The member of a result, e.g. `{product}`.
    pub member: Pattern,
    /// The aggregate whose value is the member's score.
    pub score: String,
    /// Keep this many highest-scored members of each sorted set.
    #[serde(default = "default_top_n")]
    pub top_n: u64,
    /// Time to live of each sorted set, renewed by every epoch that writes to it; never
    /// expires if absent.
    #[serde(default)]
    pub ttl: Option<Duration>,
}

fn default_top_n() -> u64 {
    100
}

impl LeaderboardSinkConfig {
    /// Parses and checks the sink's options; issue paths start with `prefix` (e.g.
    /// `sinks.top`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: Self = parse_options(prefix, options)?;
        let mut issues = Vec::new();
        check_url(prefix, &config.url, &mut issues);
        check_positive(prefix, "top_n", config.top_n, &mut issues);
        check_ttl(prefix, "ttl", config.ttl, &mut issues);
        if config.score.trim().is_empty() {
            issues.push(ConfigIssue {
                path: format!("{prefix}.score"),
                message: "name the aggregate that scores the members".to_string(),
            });
        }
        finish(config, issues)
    }
}

/// What a `redis_leaderboard` sink writes per result (see the module docs).
#[derive(Debug, Clone)]
pub struct LeaderboardOps {
    key: Pattern,
    member: Pattern,
    score: String,
    trim_stop: String,
    ttl_ms: Option<String>,
}

/// A `redis_leaderboard` sink.
pub type LeaderboardSink = RedisSink<LeaderboardOps>;

impl RedisSink<LeaderboardOps> {
    /// Opens the `redis_leaderboard` sink `name` for `scope` (no connection before `recover`).
    pub fn open(
        name: &str,
        scope: &SinkScope,
        config: &LeaderboardSinkConfig,
    ) -> Result<LeaderboardSink, SinkError> {
        let writer = LeaderboardOps {
            key: config.key.clone(),
            member: config.member.clone(),
            score: config.score.clone(),
            trim_stop: format!("-{}", config.top_n.saturating_add(1)),
            ttl_ms: config.ttl.map(|t| t.as_millis().to_string()),
        };
        let endpoint = endpoint(&config.url, &config.username, &config.password);
        RedisSink::new(name, scope, endpoint, config.cluster, writer)
    }
}

impl WriteOps for LeaderboardOps {
    fn write_ops(&self, output: &Output, staged: &mut Vec<u8>) -> Result<(), Skip> {
        let Output::Result(result) = output else {
            return Err(Skip("a leaderboard takes window results only".to_string()));
        };
        let score = result
            .schema
            .aggregate_names
            .iter()
            .position(|name| *name == self.score)
            .and_then(|i| result.aggregates.get(i))
            .ok_or_else(|| {
                Skip(format!(
                    "pipeline `{}` has no aggregate `{}` to score by",
                    result.schema.pipeline, self.score
                ))
            })?;
        let serde_json::Value::Number(score) = score else {
            return Err(Skip(format!(
                "aggregate `{}` is {score}, not a number",
                self.score
            )));
        };
        let vars = Vars::of(output);
        let key = self.key.render(&vars).map_err(|n| missing(&self.key, n))?;
        let member = self
            .member
            .render(&vars)
            .map_err(|n| missing(&self.member, n))?;
        let score = score.to_string();
        ops::data(staged, KeyType::ZSet, &["ZADD", &key, &score, &member]);
        let trim = ["ZREMRANGEBYRANK", &key, "0", &self.trim_stop];
        ops::tail(staged, KeyType::ZSet, &trim);
        if let Some(ttl) = &self.ttl_ms {
            ops::tail(staged, KeyType::Any, &["PEXPIRE", &key, ttl]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_engine::event::{Key, ResultSchema, Value, WindowResult};

    use super::*;

    fn result(product: &str, views: serde_json::Value) -> Output {
        Output::Result(WindowResult {
            schema: Arc::new(ResultSchema {
                pipeline: "top".into(),
                key_fields: vec!["product".into()],
                aggregate_names: vec!["views".into()],
            }),
            key: Key::from_values([Value::Str(product.into())].iter()),
            window_start: 0,
            window_end: 60_000,
            aggregates: vec![views],
            is_final: true,
        })
    }

    fn writer(score: &str) -> LeaderboardOps {
        LeaderboardOps {
            key: Pattern::parse("top:{pipeline}:{window_end}").unwrap(),
            member: Pattern::parse("{product}").unwrap(),
            score: score.to_string(),
            trim_stop: "-4".into(),
            ttl_ms: None,
        }
    }

    #[test]
    fn a_result_becomes_add_and_trim() {
        let mut staged = Vec::new();
        writer("views")
            .write_ops(&result("hat", 7.into()), &mut staged)
            .unwrap();
        let ops = ops::decode(&staged).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].command, b"ZADD");
        assert_eq!(ops[0].key, b"top:top:60000");
        assert_eq!(ops[0].args, vec![&b"7"[..], b"hat"]);
        assert_eq!(ops[1].args, vec![&b"0"[..], b"-4"]);
    }

    #[test]
    fn unusable_scores_are_skipped() {
        let mut staged = Vec::new();
        let w = writer("views");
        assert!(w
            .write_ops(&result("hat", serde_json::Value::Null), &mut staged)
            .is_err());
        assert!(w
            .write_ops(&result("hat", "7".into()), &mut staged)
            .is_err());
        assert!(writer("clicks")
            .write_ops(&result("hat", 7.into()), &mut staged)
            .is_err());
    }

    #[test]
    fn config_errors_carry_paths() {
        let options = serde_json::json!({
            "url": "redis://h", "key": "k", "member": "{p", "score": "", "top_n": 0
        });
        let issues = LeaderboardSinkConfig::from_options("sinks.top", options.as_object().unwrap())
            .unwrap_err();
        assert_eq!(issues[0].path, "sinks.top.member");
        let options = serde_json::json!({
            "url": "redis://h", "key": "k", "member": "{p}", "score": " ", "top_n": 0
        });
        let issues = LeaderboardSinkConfig::from_options("sinks.top", options.as_object().unwrap())
            .unwrap_err();
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, vec!["sinks.top.top_n", "sinks.top.score"]);
    }
}

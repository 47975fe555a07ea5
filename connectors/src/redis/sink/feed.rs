//! `redis_feed`: activity feeds. Each event goes into its entity's feed, a sorted set scored
//! by event time (ms) and trimmed to its newest `max_len` members; its JSON payload is stored
//! beside it as a string with a TTL.
//!
//! ```yaml
//! sinks:
//!   feeds:
//!     type: redis_feed
//!     url: redis://localhost:6379
//!     feed_key: "feed:user:{user_id}"
//!     member: "{event_id}"
//!     payload_key: "activity:{event_id}"
//!     payload_ttl: 7d
//!     max_len: 500
//!     feed_ttl: 30d
//! ```
//!
//! Per output: `SET activity:ID JSON PX ttl`, `ZADD feed:user:U TIME ID`; once per feed and
//! epoch: `ZREMRANGEBYRANK feed:user:U 0 -(max_len+1)` and `PEXPIRE feed:user:U ttl`. Window
//! results are accepted too (scored by `window_end`); late events and dead letters are
//! skipped. See the module docs of `redis::sink` for reading feeds.

use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::event::Output;
use weir_engine::runtime::{SinkError, SinkScope};
use weir_engine::topology::{ConfigIssue, Duration};

use super::ops::{self, KeyType, Skip, WriteOps};
use super::pattern::{Pattern, Vars};
use super::{check_positive, check_ttl, check_url, endpoint, finish, missing, RedisSink};
use crate::parse_options;

/// Options of a `redis_feed` sink.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedSinkConfig {
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
    /// The feed (sorted set) of an output, e.g. `feed:user:{user_id}`.
    pub feed_key: Pattern,
    /// The feed member of an output, e.g. `{event_id}`; unique per activity (an equal member
    /// replaces the earlier one).
    pub member: Pattern,
    /// Where the output's JSON payload is stored (SET), e.g. `activity:{event_id}`; no
    /// payload is stored if absent.
    #[serde(default)]
    pub payload_key: Option<Pattern>,
    /// Time to live of each payload (e.g. `7d`); payloads never expire if absent.
    #[serde(default)]
    pub payload_ttl: Option<Duration>,
    /// Keep each feed's newest this many members.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Time to live of a feed, renewed by every epoch that writes to it (e.g. `30d`); feeds
    /// never expire if absent.
    #[serde(default)]
    pub feed_ttl: Option<Duration>,
}

fn default_max_len() -> u64 {
    1000
}

impl FeedSinkConfig {
    /// Parses and checks the sink's options; issue paths start with `prefix` (e.g.
    /// `sinks.feeds`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: Self = parse_options(prefix, options)?;
        let mut issues = Vec::new();
        check_url(prefix, &config.url, &mut issues);
        check_positive(prefix, "max_len", config.max_len, &mut issues);
        check_ttl(prefix, "payload_ttl", config.payload_ttl, &mut issues);
        check_ttl(prefix, "feed_ttl", config.feed_ttl, &mut issues);
        if config.payload_ttl.is_some() && config.payload_key.is_none() {
            issues.push(ConfigIssue {
                path: format!("{prefix}.payload_ttl"),
                message: "set `payload_key` too: without it no payload is stored".to_string(),
            });
        }
        finish(config, issues)
    }
}

/// What a `redis_feed` sink writes per output (see the module docs).
#[derive(Debug, Clone)]
pub struct FeedOps {
    feed_key: Pattern,
    member: Pattern,
    payload_key: Option<Pattern>,
    payload_ttl_ms: Option<String>,
    trim_stop: String,
    feed_ttl_ms: Option<String>,
}

/// A `redis_feed` sink.
pub type FeedSink = RedisSink<FeedOps>;

impl RedisSink<FeedOps> {
    /// Opens the `redis_feed` sink `name` for `scope` (no connection before `recover`).
    pub fn open(
        name: &str,
        scope: &SinkScope,
        config: &FeedSinkConfig,
    ) -> Result<FeedSink, SinkError> {
        let writer = FeedOps {
            feed_key: config.feed_key.clone(),
            member: config.member.clone(),
            payload_key: config.payload_key.clone(),
            payload_ttl_ms: config.payload_ttl.map(|t| t.as_millis().to_string()),
            trim_stop: format!("-{}", config.max_len.saturating_add(1)),
            feed_ttl_ms: config.feed_ttl.map(|t| t.as_millis().to_string()),
        };
        let endpoint = endpoint(&config.url, &config.username, &config.password);
        RedisSink::new(name, scope, endpoint, config.cluster, writer)
    }
}

impl WriteOps for FeedOps {
    fn write_ops(&self, output: &Output, staged: &mut Vec<u8>) -> Result<(), Skip> {
        let score = match output {
            Output::Event(e) => e.time,
            Output::Result(r) => r.window_end,
            Output::Late(_) | Output::DeadLetter(_) => {
                return Err(Skip(
                    "a feed takes events and window results, not late events or dead letters"
                        .to_string(),
                ))
            }
        };
        let vars = Vars::of(output);
        let render = |p: &Pattern| p.render(&vars).map_err(|name| missing(p, name));
        let feed = render(&self.feed_key)?;
        let member = render(&self.member)?;
        let payload_key = self.payload_key.as_ref().map(render).transpose()?;

        if let Some(payload_key) = payload_key {
            let payload = output.to_json().to_string();
            let mut set = vec!["SET", &payload_key, &payload];
            if let Some(ttl) = &self.payload_ttl_ms {
                set.extend(["PX", ttl]);
            }
            ops::data(staged, KeyType::String, &set);
        }
        let score = score.to_string();
        ops::data(staged, KeyType::ZSet, &["ZADD", &feed, &score, &member]);
        let trim = ["ZREMRANGEBYRANK", &feed, "0", &self.trim_stop];
        ops::tail(staged, KeyType::ZSet, &trim);
        if let Some(ttl) = &self.feed_ttl_ms {
            ops::tail(staged, KeyType::Any, &["PEXPIRE", &feed, ttl]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_engine::event::{DeadLetter, EventRecord, Value};

    use super::*;

    fn config(json: serde_json::Value) -> Result<FeedSinkConfig, Vec<ConfigIssue>> {
        FeedSinkConfig::from_options("sinks.feeds", json.as_object().unwrap())
    }

    fn writer(json: serde_json::Value) -> FeedOps {
        let sink = FeedSink::open("feeds", &SinkScope::main("job"), &config(json).unwrap());
        FeedOps::clone(&sink.unwrap().writer)
    }

    fn commands(writer: &FeedOps, output: &Output) -> Result<Vec<String>, Skip> {
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

    fn event(user: i64, id: &str, time: i64) -> Output {
        Output::Event(EventRecord {
            pipeline: "activity".into(),
            time,
            fields: vec![
                ("user_id".into(), Value::Int(user)),
                ("event_id".into(), Value::Str(id.into())),
            ],
        })
    }

    #[test]
    fn an_event_becomes_payload_add_trim_expire() {
        let w = writer(serde_json::json!({
            "url": "redis://h", "feed_key": "feed:user:{user_id}", "member": "{event_id}",
            "payload_key": "activity:{event_id}", "payload_ttl": "1h", "max_len": 3,
            "feed_ttl": "1d"
        }));
        let got = commands(&w, &event(42, "e1", 1000)).unwrap();
        assert_eq!(got.len(), 4);
        assert!(got[0].starts_with("SET activity:e1 {"), "{}", got[0]);
        assert!(got[0].ends_with(" PX 3600000"), "{}", got[0]);
        assert_eq!(got[1], "ZADD feed:user:42 1000 e1");
        assert_eq!(got[2], "ZREMRANGEBYRANK feed:user:42 0 -4");
        assert_eq!(got[3], "PEXPIRE feed:user:42 86400000");
    }

    #[test]
    fn missing_values_and_foreign_outputs_are_skipped() {
        let w = writer(serde_json::json!({
            "url": "redis://h", "feed_key": "feed:{team}", "member": "{event_id}"
        }));
        let skip = commands(&w, &event(1, "e", 1)).unwrap_err();
        assert!(skip.0.contains("{team}"), "{}", skip.0);
        let dead = Output::DeadLetter(DeadLetter {
            source: "s".into(),
            partition: "p".into(),
            offset: "0".into(),
            raw: vec![],
            error: "bad".into(),
        });
        assert!(commands(&w, &dead).is_err());
    }

    #[test]
    fn config_errors_carry_paths() {
        let issues = config(serde_json::json!({
            "url": "redis://h", "feed_key": "f", "member": "m", "max_len": 0,
            "payload_ttl": "0s", "feed_ttl": "5 minutes"
        }))
        .unwrap_err();
        assert_eq!(issues[0].path, "sinks.feeds.feed_ttl");
        let issues = config(serde_json::json!({
            "url": "redis://h", "feed_key": "f", "member": "m", "max_len": 0,
            "payload_ttl": "0s"
        }))
        .unwrap_err();
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "sinks.feeds.max_len",
                "sinks.feeds.payload_ttl",
                "sinks.feeds.payload_ttl"
            ]
        );
        let issues = config(serde_json::json!({"url": "redis://h", "feed_key": "f"})).unwrap_err();
        assert_eq!(issues[0].path, "sinks.feeds");
        assert!(
            issues[0].message.contains("member"),
            "{}",
            issues[0].message
        );
    }
}

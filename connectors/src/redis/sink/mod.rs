//! The Redis sinks: a Redis Streams bridge, activity feeds, hash aggregates and leaderboards,
//! each exactly once.
//!
//! | `type:` | writes | config | sink |
//! |---|---|---|---|
//! | `redis_stream` | every output as a stream entry (XADD) | [`StreamSinkConfig`] | [`StreamSink`] |
//! | `redis_feed` | events (and results) into per-entity sorted sets + payload strings | [`FeedSinkConfig`] | [`FeedSink`] |
//! | `redis_hash` | window results into hashes, overwritten or summed | [`HashSinkConfig`] | [`HashSink`] |
//! | `redis_leaderboard` | window results into top-N sorted sets | [`LeaderboardSinkConfig`] | [`LeaderboardSink`] |
//!
//! Every sink takes `url`, `username`, `password` (see [`RedisEndpoint`]) and `cluster`.
//!
//! # Patterns
//!
//! Keys and members are [`Pattern`]s: `{name}` is filled from each output (a result's key
//! fields, aggregates, `pipeline`, `window_start`, `window_end`; an event's fields,
//! `pipeline`, `event_time`; see [`Vars`]), `{{` and `}}` are literal braces. Which names a
//! result or event has depends on the pipeline, which a sink's options do not know, so names
//! are checked per output: an output lacking a value (absent, or `null`) is not written; it is
//! counted ([`RedisSink::skipped`]) and logged with `tracing::warn!` (at the 1st, 2nd, 4th,
//! 8th, ... occurrence, so a misconfigured sink cannot flood the log). The same goes for
//! outputs a sink type cannot write (e.g. a dead letter sent to a leaderboard).
//!
//! # Exactly once
//!
//! An encoder turns each output into Redis operations (staged bytes, see `ops.rs`). A commit
//! applies an epoch's operations through one Lua script (`apply.lua`, run with EVALSHA) that
//! checks and advances a *fence* atomically with the data:
//!
//! - the fence key of a sink is `weir-fence:JOB:SINK:TASK` (from the [`SinkScope`]) and
//!   holds `EPOCH:N`, "N operations of epoch EPOCH have landed";
//! - an epoch's operations are cut into chunks (at most 2000 operations or about 1 MiB per
//!   script call, [`ChunkLimits`], so Redis is never blocked long); a chunk applies only its
//!   operations numbered N or above, and a chunk of an earlier epoch applies nothing;
//! - so re-committing an epoch after a crash skips exactly what landed (even if the chunk
//!   limits changed in between), a repeated commit changes nothing, and increments are never
//!   doubled;
//! - before writing, the script checks that every key it writes is absent or of the type
//!   the sink writes, because Redis keeps the writes of a script that fails half-way.
//!
//! Trims (`ZREMRANGEBYRANK`) and expiries run once per key at the end of each epoch, not after
//! every write: the result is the same.
//!
//! With `cluster: true` an epoch's operations are grouped by cluster slot and each slot has
//! its own fence, `weir-fence:{TAG}:JOB:SINK:TASK` where `TAG` hashes to that slot, so every
//! script touches keys of one slot only, as Redis Cluster requires. This build talks to one
//! endpoint: a standalone server, or a cluster through a cluster-aware proxy.
//!
//! Requirements: fence keys must never be evicted (`maxmemory-policy` `noeviction` or a
//! `volatile-*` policy; fences have no TTL), and two jobs sharing a Redis need different
//! names. A fence ahead of the job's own checkpoints (its state was reset, or another job has
//! the same name) would make every commit a no-op; [`Sink::recover`] refuses to start then
//! (standalone mode), telling which key to delete.
//!
//! Connection loss: the failing call returns [`SinkError::Retryable`] and the next call
//! reconnects; the runtime retries the commit with backoff.
//!
//! # Reading feeds
//!
//! A feed is a sorted set of members scored by event time (ms), newest last; payloads are
//! strings. All reads are cheap:
//!
//! ```text
//! ZREVRANGE feed:user:42 0 19 WITHSCORES                      # newest 20 (first page)
//! ZREVRANGEBYSCORE feed:user:42 (1718000000000 -inf WITHSCORES LIMIT 0 20
//!                                                             # next page: older than the
//!                                                             # last score seen (the cursor)
//! MGET activity:e-17 activity:e-16 ...                        # the page's payloads
//! ```
//!
//! A merged feed of several users: read each user's page with `ZREVRANGE ... WITHSCORES` and
//! merge the pages by score in the client (one round trip with a pipeline), or, for a
//! feed read many times, `ZUNIONSTORE tmp:feed:42+7 2 feed:user:42 feed:user:7 AGGREGATE MAX`,
//! `EXPIRE tmp:feed:42+7 30` and page through it as above (on Redis 6.2+,
//! `ZUNION 2 feed:user:42 feed:user:7 AGGREGATE MAX WITHSCORES` without storing). In
//! cluster mode the users' feeds must share a hash tag for server-side unions.
//!
//! [`Sink::recover`]: weir_engine::runtime::Sink::recover
//! [`SinkError::Retryable`]: weir_engine::runtime::SinkError::Retryable
//! [`RedisEndpoint`]: crate::redis::RedisEndpoint

mod feed;
mod hash;
mod leaderboard;
mod ops;
mod pattern;
mod stream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use weir_engine::checkpoint::Epoch;
use weir_engine::event::Output;
use weir_engine::runtime::{Sink, SinkEncoder, SinkError, SinkScope};
use weir_engine::topology::{ConfigIssue, Duration};

use crate::redis::slot::tag_for_slot;
use crate::redis::{sink_error, RedisEndpoint};
use ops::{Skip, WriteOps};

pub use feed::{FeedOps, FeedSink, FeedSinkConfig};
pub use hash::{HashMode, HashOps, HashSink, HashSinkConfig};
pub use leaderboard::{LeaderboardOps, LeaderboardSink, LeaderboardSinkConfig};
pub use ops::ChunkLimits;
pub use pattern::{Pattern, Vars};
pub use stream::{StreamFormat, StreamOps, StreamSink, StreamSinkConfig};

/// The Lua script that applies one chunk behind its fence.
const APPLY_SCRIPT: &str = include_str!("apply.lua");

/// A Redis sink; `W` is the sink type ([`StreamOps`], [`FeedOps`], [`HashOps`],
/// [`LeaderboardOps`]). Nothing is sent to Redis before [`Sink::recover`]; see the module docs
/// for the commit protocol.
pub struct RedisSink<W> {
    name: String,
    endpoint: RedisEndpoint,
    cluster: bool,
    /// `JOB:SINK:TASK`, the part of every fence key that names this sink.
    fence_id: String,
    writer: Arc<W>,
    script: redis::Script,
    limits: ChunkLimits,
    conn: Option<redis::Connection>,
    skipped: Arc<AtomicU64>,
}

impl<W: WriteOps> RedisSink<W> {
    fn new(
        name: &str,
        scope: &SinkScope,
        endpoint: RedisEndpoint,
        cluster: bool,
        writer: W,
    ) -> Result<Self, SinkError> {
        // Fails on a malformed URL only; no connection is made here.
        endpoint
            .client()
            .map_err(|e| SinkError::Fatal(format!("sink `{name}`: {e}")))?;
        Ok(RedisSink {
            name: name.to_string(),
            endpoint,
            cluster,
            fence_id: format!("{}:{}:{}", scope.job, name, scope.task),
            writer: Arc::new(writer),
            script: redis::Script::new(APPLY_SCRIPT),
            limits: ChunkLimits::default(),
            conn: None,
            skipped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Sets how much one script call carries. Safe to change at any time, even between a
    /// crash and the re-commit of the epoch it interrupted: fences count operations, not
    /// chunks.
    pub fn with_chunk_limits(mut self, limits: ChunkLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How many outputs were not written since the sink was opened (missing placeholder
    /// values, outputs this sink type cannot write).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The fence key of this sink: `weir-fence:JOB:SINK:TASK`, or in cluster mode the one of
    /// `slot`, `weir-fence:{TAG}:JOB:SINK:TASK`.
    pub fn fence_key(&self, slot: Option<u16>) -> String {
        match slot {
            Some(slot) => format!("weir-fence:{{{}}}:{}", tag_for_slot(slot), self.fence_id),
            None => format!("weir-fence:{}", self.fence_id),
        }
    }

    /// Applies one chunk; returns how many operations it applied, or -1 if a later epoch
    /// holds the fence.
    fn apply_chunk(
        &mut self,
        fence: &str,
        epoch: Epoch,
        first: usize,
        ops: &[ops::Op<'_>],
    ) -> Result<i64, SinkError> {
        let mut call = self.script.prepare_invoke();
        call.key(fence).arg(epoch).arg(first);
        for op in ops {
            call.key(op.key)
                .arg(op.key_type.redis_name())
                .arg(op.args.len())
                .arg(op.command);
            for arg in &op.args {
                call.arg(*arg);
            }
        }
        let conn = connection(&mut self.conn, &self.endpoint, &self.name)?;
        call.invoke(conn)
            .map_err(|e| failed(&mut self.conn, &self.name, "commit", &e))
    }
}

/// The open connection, connecting first if there is none.
fn connection<'c>(
    conn: &'c mut Option<redis::Connection>,
    endpoint: &RedisEndpoint,
    sink: &str,
) -> Result<&'c mut redis::Connection, SinkError> {
    if conn.is_none() {
        let fresh = endpoint
            .connect()
            .map_err(|e| sink_error(&format!("sink `{sink}`: connect"), &e))?;
        *conn = Some(fresh);
    }
    conn.as_mut()
        .ok_or_else(|| SinkError::Retryable(format!("sink `{sink}`: not connected")))
}

/// `e` as a sink error; a connection that failed is dropped so the next call reconnects.
fn failed(
    conn: &mut Option<redis::Connection>,
    sink: &str,
    what: &str,
    e: &redis::RedisError,
) -> SinkError {
    let error = sink_error(&format!("sink `{sink}`: {what}"), e);
    if matches!(error, SinkError::Retryable(_)) {
        *conn = None;
    }
    error
}

/// The epoch in a fence value `EPOCH:N`.
fn fence_epoch(value: &str) -> Option<Epoch> {
    let (epoch, ops) = value.split_once(':')?;
    ops.parse::<u64>().ok()?;
    epoch.parse().ok()
}

impl<W: WriteOps> Sink for RedisSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn encoder(&self) -> Box<dyn SinkEncoder> {
        Box::new(Encoder {
            sink: self.name.clone(),
            writer: Arc::clone(&self.writer),
            skipped: Arc::clone(&self.skipped),
        })
    }

    /// Connects, loads the script and (standalone mode) checks that the fence is not ahead of
    /// the job's checkpoints. Nothing to undo: every chunk landed whole or not at all.
    fn recover(&mut self, committed: Option<Epoch>) -> Result<(), SinkError> {
        let fence_key = self.fence_key(None);
        let conn = connection(&mut self.conn, &self.endpoint, &self.name)?;
        let loaded = self.script.load(conn).and_then(|_| {
            redis::cmd("GET")
                .arg(&fence_key)
                .query::<Option<String>>(conn)
        });
        let stored = loaded.map_err(|e| failed(&mut self.conn, &self.name, "recover", &e))?;
        if self.cluster {
            // Slot fences cannot be listed cheaply; the check is standalone-only.
            return Ok(());
        }
        let Some(value) = stored else {
            return Ok(());
        };
        let Some(epoch) = fence_epoch(&value) else {
            return Err(SinkError::Fatal(format!(
                "sink `{}`: Redis key `{fence_key}` is not a Weir fence; delete it or rename the job",
                self.name
            )));
        };
        // The runtime re-commits at most the one epoch after the last committed one.
        let newest_possible = committed.unwrap_or(0).saturating_add(1);
        if epoch > newest_possible {
            return Err(SinkError::Fatal(format!(
                "sink `{}`: Redis key `{fence_key}` records epoch {epoch} as written, but this \
                 job's checkpoints end at epoch {}, so every commit would be ignored; the job's \
                 state was reset or another job has the same name. Delete the key to write \
                 again from epoch 1 (or rename the job)",
                self.name,
                committed.unwrap_or(0)
            )));
        }
        Ok(())
    }

    fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        let ops = ops::decode(staged)
            .map_err(|e| SinkError::Fatal(format!("sink `{}`: {e}", self.name)))?;
        if ops.is_empty() {
            return Ok(());
        }
        for group in ops::plan(ops, self.cluster) {
            let fence = self.fence_key(group.slot);
            for range in ops::chunks(&group.ops, self.limits) {
                let first = range.start;
                if self.apply_chunk(&fence, epoch, first, &group.ops[range])? < 0 {
                    tracing::warn!(
                        sink = %self.name,
                        epoch,
                        fence = %fence,
                        "a later epoch was already written (another worker owns this task?); \
                         nothing written"
                    );
                    break;
                }
            }
        }
        Ok(())
    }
}

/// A shard's encoder: the sink type's operations, with skipped outputs counted and logged.
struct Encoder<W> {
    sink: String,
    writer: Arc<W>,
    skipped: Arc<AtomicU64>,
}

impl<W: WriteOps> SinkEncoder for Encoder<W> {
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>) {
        let mark = staged.len();
        if let Err(Skip(reason)) = self.writer.write_ops(output, staged) {
            staged.truncate(mark);
            let skipped = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
            if skipped.is_power_of_two() {
                tracing::warn!(sink = %self.sink, skipped, %reason, "output not written to Redis");
            }
        }
    }
}

/// The endpoint of a sink config's `url`, `username` and `password`.
fn endpoint(url: &str, username: &Option<String>, password: &Option<String>) -> RedisEndpoint {
    RedisEndpoint {
        url: url.to_string(),
        username: username.clone(),
        password: password.clone(),
    }
}

/// Checks the options every Redis sink has; the URL is not echoed (it may hold a password).
fn check_url(prefix: &str, url: &str, issues: &mut Vec<ConfigIssue>) {
    if RedisEndpoint::from_url(url).client().is_err() {
        issues.push(ConfigIssue {
            path: format!("{prefix}.url"),
            message: "not a Redis URL; expected `redis://host:port[/db]` or `rediss://host:port` \
                      (TLS)"
                .to_string(),
        });
    }
}

/// Checks that a count option is at least 1.
fn check_positive(prefix: &str, field: &str, value: u64, issues: &mut Vec<ConfigIssue>) {
    if value == 0 {
        issues.push(ConfigIssue {
            path: format!("{prefix}.{field}"),
            message: "must be at least 1".to_string(),
        });
    }
}

/// Checks that a TTL option, when set, is not zero (which would delete the key at once).
fn check_ttl(prefix: &str, field: &str, ttl: Option<Duration>, issues: &mut Vec<ConfigIssue>) {
    if ttl.is_some_and(|t| t.as_millis() == 0) {
        issues.push(ConfigIssue {
            path: format!("{prefix}.{field}"),
            message: "a TTL must be longer than 0 (leave it out for keys that never expire)"
                .to_string(),
        });
    }
}

/// `Ok(value)` when there are no issues.
fn finish<T>(value: T, issues: Vec<ConfigIssue>) -> Result<T, Vec<ConfigIssue>> {
    if issues.is_empty() {
        Ok(value)
    } else {
        Err(issues)
    }
}

/// The reason for skipping an output whose pattern lacks a value.
fn missing(pattern: &Pattern, name: String) -> Skip {
    Skip(format!(
        "the output has no value for `{{{name}}}` in `{}`",
        pattern.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_values_parse() {
        assert_eq!(fence_epoch("12:4000"), Some(12));
        assert_eq!(fence_epoch("12"), None);
        assert_eq!(fence_epoch("x:1"), None);
        assert_eq!(fence_epoch("3:y"), None);
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        let mut issues = Vec::new();
        check_url("sinks.s", "redis://127.0.0.1:6379", &mut issues);
        assert!(issues.is_empty());
        check_url("sinks.s", "http://user:secret@host", &mut issues);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "sinks.s.url");
        assert!(!issues[0].message.contains("secret"));
    }
}

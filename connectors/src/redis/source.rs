//! The Redis Streams source (`type: redis_streams`): reads one stream, or `N` shard streams
//! `KEY:{0}` … `KEY:{N-1}`, through a consumer group.
//!
//! # Delivery
//!
//! Each partition reads as its own consumer, named after the partition (`<group>-<i>`), so the
//! group's pending entries list (PEL) of that consumer belongs to the partition rather than to
//! a process: whichever worker runs the partition next finds what an earlier run read but did
//! not finish.
//!
//! - **Position**: the id of the last entry returned, as text (`1700000000000-0`); empty
//!   before anything was returned.
//! - **Restart**: a partition first re-reads its consumer's PEL (`XREADGROUP … 0`, page by
//!   page) and only then reads new entries (`>`). After `seek(P)` the entries up to `P` were
//!   committed with the checkpoint that stored `P`: they are acknowledged and skipped, the
//!   rest is returned. Without a seek nothing was committed and the whole PEL is returned.
//! - **Commit**: `on_committed(P)` acknowledges (`XACK`) every entry returned up to `P`, then
//!   applies the trim policy. Entries are acknowledged only once the checkpoint covering them
//!   is committed to every sink, so a crash at any point loses nothing and, with the seek
//!   above, repeats nothing.
//! - **Connection loss**: the call fails with [`SourceError::Retryable`] and the next call
//!   reconnects; the PEL is re-read from the last returned entry, which recovers entries whose
//!   reply was lost in transit. A consumer group that disappeared (a server restarted without
//!   persistence) is created again at the last entry read.
//!
//! # Shared mode
//!
//! `shared: true` (only for an unsharded stream, meant for stateless pipelines) lets several
//! independent processes read one stream as different consumers of the same group, each
//! getting a share of the entries. The consumer name comes from `consumer` (default
//! `<hostname>-<pid>`, so a restarted process is a new consumer). Every `claim_idle` ms a
//! partition runs `XAUTOCLAIM` to take over entries that stayed pending longer than that, which
//! is how entries of a crashed consumer get processed. Delivery in shared mode is
//! **at-least-once**: a claimed entry may already have been processed by a consumer that was
//! merely slow, and after a restart with a stable `consumer` name the whole PEL is returned
//! again (positions cannot tell committed entries from claimed ones).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use redis::Value;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::event::decode::{JsonDecoder, MAX_EVENT_TIME};
use weir_engine::event::{DeadLetter, Record};
use weir_engine::runtime::{
    DecodeContext, PartitionSelection, PollStatus, SourceBatch, SourceError, SourcePartition,
};
use weir_engine::topology::ConfigIssue;

use super::resp::{self, Cursor, Item, RawConnection};
use super::{is_retryable, source_error, RedisEndpoint};

/// The longest `block_ms` allowed: a poll must return in about 100 ms so the source task can
/// answer checkpoint barriers.
pub const MAX_BLOCK_MS: u64 = 100;

/// Pages of already-committed pending entries skipped within one poll before it returns, so a
/// long PEL does not hold the task past a checkpoint barrier.
const MAX_SKIPPED_PAGES_PER_POLL: usize = 16;

/// Ids acknowledged per `XACK` command.
const ACK_CHUNK: usize = 1000;

/// Where a newly created consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// From the beginning of the stream (`XGROUP CREATE … 0`): entries written before the
    /// first start are read too.
    #[default]
    Earliest,
    /// Only entries added after the group is created (`XGROUP CREATE … $`).
    Latest,
}

/// How an entry's fields become a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamFormat {
    /// One field (`payload_field`) holds the record as a JSON object.
    #[default]
    Json,
    /// Every entry field is a record field; values that are JSON numbers become numbers,
    /// everything else strings.
    Fields,
}

/// When to remove entries from the stream, applied after each commit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrimConfig {
    /// Keep about this many newest entries (`XTRIM key MAXLEN ~ N`). Entries beyond it are
    /// removed whether or not they were read; size it well above the expected backlog.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// `true`: remove the entries this group has committed (`XTRIM key MINID …`), never one
    /// still pending. Other consumer groups of the same stream are not considered: use it only
    /// when Weir is the stream's sole reader.
    #[serde(default)]
    pub acked: bool,
}

/// The trim policy a [`TrimConfig`] resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimPolicy {
    /// Never trim.
    None,
    /// `XTRIM key MAXLEN ~ N` after each commit.
    MaxLen(u64),
    /// `XTRIM key MINID <first id not yet committed>` after each commit.
    Acked,
}

/// Options of a `type: redis_streams` source. The common keys `type`, `event_time`,
/// `watermark` and `dead_letter` are handled by the engine and not part of this struct.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamsConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// ACL user name (AUTH); overrides one in the URL.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (AUTH); overrides one in the URL. Use `${REDIS_PASSWORD}`-style interpolation
    /// rather than writing secrets into the topology.
    #[serde(default)]
    pub password: Option<String>,
    /// The stream key (e.g. `events`). With `shards` it is the prefix of the shard keys.
    pub stream: String,
    /// Read the `N` streams `STREAM:{0}` … `STREAM:{N-1}` (the braces are a Redis Cluster hash
    /// tag, so shards spread over a cluster); partition `i` is stream `i`. Without it the
    /// source is the single stream `stream`.
    #[serde(default)]
    pub shards: Option<u32>,
    /// Consumer group name.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where the consumer group starts when it does not exist yet (it is then created, and
    /// the stream too if missing): `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: StartFrom,
    /// Entries read per command (`COUNT`).
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// How long one read waits for new entries (`BLOCK`, milliseconds, 1 to 100).
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// `json` (default): the record is the JSON object in `payload_field`. `fields`: the
    /// entry's fields are the record's fields.
    #[serde(default)]
    pub format: StreamFormat,
    /// With `format: json`, the entry field holding the JSON object.
    #[serde(default = "default_payload_field")]
    pub payload_field: String,
    /// Trimming after each commit: `{maxlen: N}` or `{acked: true}`. Default: never trim.
    #[serde(default)]
    pub trim: Option<TrimConfig>,
    /// Shared mode: every process reading this source is one more consumer of the group and
    /// gets a share of the entries (at-least-once; for stateless pipelines). Not with `shards`.
    #[serde(default)]
    pub shared: bool,
    /// Shared mode: this process's consumer name. Default: `<hostname>-<pid>`.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Shared mode: entries pending longer than this many milliseconds (a consumer died) are
    /// claimed with `XAUTOCLAIM`, checked as often. Default 30000.
    #[serde(default)]
    pub claim_idle: Option<u64>,
    /// End each partition once it has returned every entry of its stream (backfills, tests):
    /// the watermark then jumps to the end and every open window closes. Default: keep
    /// waiting for new entries.
    #[serde(default)]
    pub end_at_tail: bool,
}

fn default_group() -> String {
    "weir".into()
}

fn default_batch() -> u32 {
    1000
}

fn default_block_ms() -> u64 {
    MAX_BLOCK_MS
}

fn default_payload_field() -> String {
    "payload".into()
}

/// `claim_idle` when not configured.
const DEFAULT_CLAIM_IDLE_MS: u64 = 30_000;

impl RedisStreamsConfig {
    /// Parses the connector options of a source, reporting problems with their YAML path
    /// under `prefix` (e.g. `sources.events.block_ms`). Type errors stop at the first one;
    /// the semantic checks after a successful parse are all reported together.
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: RedisStreamsConfig = crate::parse_options(prefix, options)?;
        let mut issues = Vec::new();
        let mut issue = |key: &str, message: String| {
            issues.push(ConfigIssue {
                path: format!("{prefix}.{key}"),
                message,
            })
        };
        if let Err(e) = config.endpoint().client() {
            // The URL itself is left out: it may carry a password.
            issue("url", format!("not a valid Redis URL: {e}"));
        }
        if config.stream.is_empty() {
            issue("stream", "the stream key is empty".into());
        }
        if config.shards == Some(0) {
            issue("shards", "must be at least 1".into());
        }
        if config.group.is_empty() {
            issue("group", "the group name is empty".into());
        }
        if config.batch == 0 {
            issue("batch", "must be at least 1".into());
        }
        if !(1..=MAX_BLOCK_MS).contains(&config.block_ms) {
            issue(
                "block_ms",
                format!(
                    "must be between 1 and {MAX_BLOCK_MS} (a poll must return quickly to \
                     answer checkpoint barriers; 0 would block forever)"
                ),
            );
        }
        if config.format == StreamFormat::Json && config.payload_field.is_empty() {
            issue("payload_field", "the field name is empty".into());
        }
        if let Some(trim) = &config.trim {
            if trim.maxlen.is_some() && trim.acked {
                issue(
                    "trim",
                    "choose one of `maxlen` and `acked: true`, not both".into(),
                );
            }
            if trim.maxlen == Some(0) {
                issue("trim.maxlen", "must be at least 1".into());
            }
        }
        if config.shared && config.shards.is_some() {
            issue(
                "shared",
                "shared mode reads a single stream; remove `shards` or `shared`".into(),
            );
        }
        if !config.shared {
            if config.consumer.is_some() {
                issue(
                    "consumer",
                    "only used with `shared: true` (otherwise consumers are named after the \
                     partition)"
                        .into(),
                );
            }
            if config.claim_idle.is_some() {
                issue("claim_idle", "only used with `shared: true`".into());
            }
        }
        if config.consumer.as_deref() == Some("") {
            issue("consumer", "the consumer name is empty".into());
        }
        if config.claim_idle == Some(0) {
            issue("claim_idle", "must be at least 1 ms".into());
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }

    /// Number of partitions: `shards`, or 1 for a single stream (also in shared mode, where
    /// each process reads that one partition as its own consumer).
    pub fn partition_count(&self) -> u32 {
        self.shards.unwrap_or(1)
    }

    /// The stream key of partition `index`: `STREAM:{index}` with shards, else `STREAM`.
    pub fn stream_key(&self, index: u32) -> String {
        match self.shards {
            Some(_) => format!("{}:{{{index}}}", self.stream),
            None => self.stream.clone(),
        }
    }

    /// The consumer name partition `index` reads as: `<group>-<index>`, or in shared mode
    /// `consumer` (default `<hostname>-<pid>`).
    pub fn consumer_name(&self, index: u32) -> String {
        if self.shared {
            match &self.consumer {
                Some(name) => name.clone(),
                None => format!("{}-{}", hostname(), std::process::id()),
            }
        } else {
            format!("{}-{index}", self.group)
        }
    }

    /// The resolved trim policy.
    pub fn trim_policy(&self) -> TrimPolicy {
        match &self.trim {
            Some(TrimConfig {
                maxlen: Some(n), ..
            }) => TrimPolicy::MaxLen(*n),
            Some(TrimConfig { acked: true, .. }) => TrimPolicy::Acked,
            _ => TrimPolicy::None,
        }
    }

    /// How to reach the server.
    pub fn endpoint(&self) -> RedisEndpoint {
        RedisEndpoint {
            url: self.url.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "weir".into())
}

/// Opens the selected partitions of a Redis Streams source, in index order, with ids
/// `redis:<stream key>`.
///
/// Nothing is contacted yet: the first `poll` connects and creates the consumer group (and
/// the stream) when missing, so an unreachable server is a retryable poll error rather than a
/// failed start. In shared mode the single partition 0 is opened when selected.
pub fn open_redis_streams(
    source_name: &str,
    config: &RedisStreamsConfig,
    ctx: &DecodeContext,
    selection: &PartitionSelection,
) -> Result<Vec<Box<dyn SourcePartition>>, SourceError> {
    let mut partitions: Vec<Box<dyn SourcePartition>> = Vec::new();
    for index in 0..config.partition_count() {
        if selection.contains(index) {
            partitions.push(Box::new(StreamPartition::new(
                source_name,
                config,
                index,
                ctx,
            )));
        }
    }
    Ok(partitions)
}

/// A stream entry id `<milliseconds>-<sequence>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id above this one.
    fn next(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry as read: `fields` is `None` when the entry is still pending but was deleted from
/// the stream (trimmed before it was processed).
#[derive(Debug)]
struct Entry {
    id: StreamId,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Turns entries into records.
struct EntryDecoder {
    json: JsonDecoder,
    format: StreamFormat,
    payload_field: Vec<u8>,
    source_timestamp: bool,
    /// Reused buffer for the JSON object built from `fields` entries.
    scratch: Vec<u8>,
}

impl EntryDecoder {
    fn new(config: &RedisStreamsConfig, ctx: &DecodeContext) -> Self {
        EntryDecoder {
            json: JsonDecoder::new(ctx),
            format: config.format,
            payload_field: config.payload_field.as_bytes().to_vec(),
            source_timestamp: ctx.event_time.source_timestamp,
            scratch: Vec::new(),
        }
    }

    fn decode(&mut self, entry: &Entry) -> Result<Record, String> {
        let Some(fields) = &entry.fields else {
            return Err(
                "the entry was deleted from the stream (trimmed?) before it was processed".into(),
            );
        };
        let mut record = match self.format {
            StreamFormat::Json => {
                // The last occurrence wins, as for duplicate keys in JSON.
                let payload = fields
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == self.payload_field)
                    .ok_or_else(|| {
                        format!(
                            "the entry has no field `{}`",
                            String::from_utf8_lossy(&self.payload_field)
                        )
                    })?;
                self.json.decode(&payload.1).map_err(|e| {
                    format!(
                        "field `{}`: {}",
                        String::from_utf8_lossy(&self.payload_field),
                        e.0
                    )
                })?
            }
            StreamFormat::Fields => {
                fields_to_json(fields, &mut self.scratch)?;
                self.json.decode(&self.scratch).map_err(|e| e.0)?
            }
        };
        if self.source_timestamp {
            record.time = i64::try_from(entry.id.ms)
                .ok()
                .filter(|t| *t <= MAX_EVENT_TIME)
                .ok_or_else(|| {
                    format!(
                        "the entry id's time {} ms is beyond the supported event-time range",
                        entry.id.ms
                    )
                })?;
        }
        Ok(record)
    }
}

/// Whether `s` is a JSON number (`-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?`) that fits in an `f64`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    // The decoder rejects numbers beyond f64; such values stay strings instead.
    i == b.len() && s.parse::<f64>().is_ok_and(f64::is_finite)
}

fn push_json_string(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    serde_json::to_writer(&mut *out, s).map_err(|e| e.to_string())
}

/// Writes `fields` into `out` as one JSON object: numbers as numbers, other values as strings.
fn fields_to_json(fields: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    out.push(b'{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let name = std::str::from_utf8(name).map_err(|_| {
            format!(
                "field name `{}` is not UTF-8",
                String::from_utf8_lossy(name).escape_debug()
            )
        })?;
        push_json_string(out, name)?;
        out.push(b':');
        let value = std::str::from_utf8(value)
            .map_err(|_| format!("the value of field `{name}` is not UTF-8"))?;
        if is_json_number(value) {
            out.extend_from_slice(value.as_bytes());
        } else {
            push_json_string(out, value)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// The entry's fields as JSON object text with string values, for dead letters; bytes that are
/// not UTF-8 are replaced.
fn raw_fields(entry: &Entry) -> Vec<u8> {
    let Some(fields) = &entry.fields else {
        return Vec::new();
    };
    let mut out = vec![b'{'];
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string into a Vec cannot fail.
        let _ = push_json_string(&mut out, &String::from_utf8_lossy(name));
        out.push(b':');
        let _ = push_json_string(&mut out, &String::from_utf8_lossy(value));
    }
    out.push(b'}');
    out
}

/// What the next read of a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Re-reading this consumer's pending entries with ids above `cursor`. Entries up to
    /// `committed` were committed by an earlier run: they are acknowledged, not returned.
    Pending {
        cursor: StreamId,
        committed: Option<StreamId>,
    },
    /// Reading new entries (`>`).
    Live,
}

/// One stream read through the consumer group.
struct StreamPartition {
    id: String,
    source: CompactString,
    key: String,
    partition: CompactString,
    group: String,
    consumer: String,
    endpoint: RedisEndpoint,
    start: StartFrom,
    batch: usize,
    block_ms: u64,
    trim: TrimPolicy,
    shared: bool,
    claim_idle_ms: u64,
    end_at_tail: bool,
    decoder: EntryDecoder,
    conn: Option<redis::Connection>,
    /// The lean connection `XREADGROUP` goes through on plain TCP endpoints (see `resp.rs`);
    /// opened and dropped together with `conn`.
    raw: Option<RawConnection>,
    mode: Mode,
    /// The id of the last entry returned.
    last: Option<StreamId>,
    /// Ids returned and not yet acknowledged, in the order returned (ascending, except for
    /// entries claimed in shared mode).
    delivered: VecDeque<StreamId>,
    /// Shared mode: the ids in `delivered`, so entries claimed or re-read are not returned
    /// twice.
    outstanding: HashSet<StreamId>,
    /// Shared mode: when the next `XAUTOCLAIM` scan starts, and where the current one is.
    next_claim: Instant,
    claim_cursor: StreamId,
}

/// The bytes of a string-like reply.
fn reply_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn bad_reply(what: &str, v: &Value) -> SourceError {
    SourceError::Fatal(format!("unexpected {what} reply from Redis: {v:?}"))
}

/// Parses one entry `[id, [field, value, …] | nil]`.
fn parse_entry(v: Value) -> Result<Entry, SourceError> {
    let Value::Array(mut parts) = v else {
        return Err(bad_reply("stream entry", &v));
    };
    if parts.len() != 2 {
        return Err(bad_reply("stream entry", &Value::Array(parts)));
    }
    let fields_value = parts.pop().unwrap_or(Value::Nil);
    let id_value = parts.pop().unwrap_or(Value::Nil);
    let id = reply_bytes(&id_value)
        .and_then(StreamId::parse)
        .ok_or_else(|| bad_reply("entry id", &id_value))?;
    let fields = match fields_value {
        Value::Nil => None,
        Value::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                pairs.push((into_bytes(name)?, into_bytes(value)?));
            }
            Some(pairs)
        }
        Value::Map(map) => Some(
            map.into_iter()
                .map(|(n, v)| Ok((into_bytes(n)?, into_bytes(v)?)))
                .collect::<Result<_, SourceError>>()?,
        ),
        other => return Err(bad_reply("entry fields", &other)),
    };
    Ok(Entry { id, fields })
}

fn into_bytes(v: Value) -> Result<Vec<u8>, SourceError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(bad_reply("entry field", &other)),
    }
}

fn parse_entries(v: Value) -> Result<Vec<Entry>, SourceError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => items.into_iter().map(parse_entry).collect(),
        other => Err(bad_reply("stream entries", &other)),
    }
}

/// Parses an `XREADGROUP` reply for a single stream (nil when nothing came).
fn parse_read_reply(v: Value) -> Result<Vec<Entry>, SourceError> {
    let streams: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(map) => map,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop().unwrap_or(Value::Nil);
                    let key = kv.pop().unwrap_or(Value::Nil);
                    Ok((key, entries))
                }
                other => Err(bad_reply("XREADGROUP", &other)),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(bad_reply("XREADGROUP", &other)),
    };
    let mut entries = Vec::new();
    for (_, stream_entries) in streams {
        entries.extend(parse_entries(stream_entries)?);
    }
    Ok(entries)
}

/// A reply of another shape than expected, as an error.
fn unexpected_item(what: &str, item: Item<'_>) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::ParseError,
        "unexpected reply from Redis",
        format!("{what}: {item:?}"),
    ))
}

/// The bytes of a string-like reply value.
fn item_bytes(what: &str, item: Item<'_>) -> redis::RedisResult<Vec<u8>> {
    match item {
        Item::Bulk(Some(b)) | Item::Status(b) => Ok(b.to_vec()),
        Item::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(unexpected_item(what, other)),
    }
}

/// Parses an `XREADGROUP` reply read through the lean connection (RESP2: an array of
/// `[key, entries]`, or null when nothing came); an error reply becomes its `redis` error.
fn parse_raw_read_reply(reply: &mut Cursor<'_>) -> redis::RedisResult<Vec<Entry>> {
    let streams = match reply.next()? {
        Item::Error(line) => return Err(resp::server_error(line)),
        Item::Array(None) | Item::Bulk(None) => return Ok(Vec::new()),
        Item::Array(Some(n)) => n,
        other => return Err(unexpected_item("XREADGROUP", other)),
    };
    let mut entries = Vec::new();
    for _ in 0..streams {
        match reply.next()? {
            Item::Array(Some(2)) => {}
            other => return Err(unexpected_item("XREADGROUP stream", other)),
        }
        item_bytes("stream key", reply.next()?)?;
        let count = match reply.next()? {
            Item::Array(Some(n)) => n,
            Item::Array(None) => 0,
            other => return Err(unexpected_item("stream entries", other)),
        };
        entries.reserve(count);
        for _ in 0..count {
            match reply.next()? {
                Item::Array(Some(2)) => {}
                other => return Err(unexpected_item("stream entry", other)),
            }
            let id = match reply.next()? {
                Item::Bulk(Some(b)) => StreamId::parse(b)
                    .ok_or_else(|| unexpected_item("entry id", Item::Bulk(Some(b))))?,
                other => return Err(unexpected_item("entry id", other)),
            };
            let fields = match reply.next()? {
                Item::Array(None) | Item::Bulk(None) => None,
                Item::Array(Some(n)) => {
                    let mut pairs = Vec::with_capacity(n / 2);
                    for _ in 0..n / 2 {
                        let name = item_bytes("entry field", reply.next()?)?;
                        let value = item_bytes("entry field", reply.next()?)?;
                        pairs.push((name, value));
                    }
                    if n % 2 == 1 {
                        // A name without a value cannot come from Redis; skipped like the
                        // `redis` crate path does.
                        item_bytes("entry field", reply.next()?)?;
                    }
                    Some(pairs)
                }
                other => return Err(unexpected_item("entry fields", other)),
            };
            entries.push(Entry { id, fields });
        }
    }
    Ok(entries)
}

/// Whether `e` says the consumer group (or its stream) does not exist.
fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl StreamPartition {
    fn new(
        source_name: &str,
        config: &RedisStreamsConfig,
        index: u32,
        ctx: &DecodeContext,
    ) -> Self {
        let key = config.stream_key(index);
        StreamPartition {
            id: format!("redis:{key}"),
            source: source_name.into(),
            partition: key.as_str().into(),
            key,
            group: config.group.clone(),
            consumer: config.consumer_name(index),
            endpoint: config.endpoint(),
            start: config.start,
            batch: config.batch.max(1) as usize,
            block_ms: config.block_ms.clamp(1, MAX_BLOCK_MS),
            trim: config.trim_policy(),
            shared: config.shared,
            claim_idle_ms: config.claim_idle.unwrap_or(DEFAULT_CLAIM_IDLE_MS).max(1),
            end_at_tail: config.end_at_tail,
            decoder: EntryDecoder::new(config, ctx),
            conn: None,
            raw: None,
            // Nothing is known to be committed: a previous run's unfinished entries come first.
            mode: Mode::Pending {
                cursor: StreamId::ZERO,
                committed: None,
            },
            last: None,
            delivered: VecDeque::new(),
            outstanding: HashSet::new(),
            next_claim: Instant::now(),
            claim_cursor: StreamId::ZERO,
        }
    }

    /// `e` as a source error. A lost connection is dropped, and reading resumes by re-reading
    /// the PEL, where entries whose reply was lost in transit wait.
    fn fail(&mut self, what: &str, e: &redis::RedisError) -> SourceError {
        if is_retryable(e) {
            self.conn = None;
            self.raw = None;
            if self.mode == Mode::Live {
                self.mode = Mode::Pending {
                    // Shared mode re-reads all of it: claimed entries may sit below `last`.
                    cursor: if self.shared {
                        StreamId::ZERO
                    } else {
                        self.last.unwrap_or(StreamId::ZERO)
                    },
                    committed: None,
                };
            }
        }
        source_error(&format!("{}: {what}", self.id), e)
    }

    /// The id a missing group is created at: after the last entry read (so a group lost with a
    /// server restart continues where this partition was), else the configured start.
    fn group_start(&self) -> String {
        match (self.last, self.shared, self.start) {
            (Some(last), false, _) => last.to_string(),
            (_, _, StartFrom::Earliest) => "0".into(),
            (_, _, StartFrom::Latest) => "$".into(),
        }
    }

    /// Creates the consumer group (and the stream) unless it exists.
    fn create_group(&mut self) -> Result<(), SourceError> {
        let start = self.group_start();
        let Some(conn) = self.conn.as_mut() else {
            return Err(SourceError::Retryable(format!(
                "{}: not connected",
                self.id
            )));
        };
        let result: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&start)
            .arg("MKSTREAM")
            .query(conn);
        match result {
            Ok(_) => {
                tracing::info!(partition = %self.id, group = %self.group, start = %start, "created the consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.fail("cannot create the consumer group", &e)),
        }
    }

    /// Connects (and makes sure the group exists) unless connected.
    fn connect(&mut self) -> Result<(), SourceError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let conn = self
            .endpoint
            .connect()
            .map_err(|e| source_error(&format!("{}: cannot connect", self.id), &e))?;
        self.conn = Some(conn);
        let created = self.create_group().and_then(|()| {
            self.raw = self
                .endpoint
                .connect_raw()
                .map_err(|e| source_error(&format!("{}: cannot connect", self.id), &e))?;
            Ok(())
        });
        if created.is_err() {
            self.conn = None;
            self.raw = None;
        }
        created
    }

    /// Runs `cmd` on the connection.
    fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self.conn.as_mut() {
            Some(conn) => cmd.query(conn),
            None => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected",
            ))),
        }
    }

    /// Handles a group that vanished (a server restart without persistence, or deleted):
    /// creates it again; its PEL is gone, so reading continues with new entries.
    fn recreate_group(&mut self) -> Result<(), SourceError> {
        tracing::warn!(partition = %self.id, group = %self.group, "the consumer group is gone; creating it again");
        self.create_group()?;
        self.mode = Mode::Live;
        Ok(())
    }

    /// `XREADGROUP` from `from` (`>` or an id); `None` when the group had to be recreated.
    fn read_group(
        &mut self,
        from: &str,
        count: usize,
        block: bool,
    ) -> Result<Option<Vec<Entry>>, SourceError> {
        if let Some(raw) = self.raw.as_mut() {
            let count = count.to_string();
            let block_ms = self.block_ms.to_string();
            let mut args: Vec<&[u8]> = vec![
                b"XREADGROUP",
                b"GROUP",
                self.group.as_bytes(),
                self.consumer.as_bytes(),
                b"COUNT",
                count.as_bytes(),
            ];
            if block {
                args.extend([&b"BLOCK"[..], block_ms.as_bytes()]);
            }
            args.extend([&b"STREAMS"[..], self.key.as_bytes(), from.as_bytes()]);
            let read = raw
                .request(&args)
                .and_then(|mut reply| parse_raw_read_reply(&mut reply));
            return match read {
                Ok(entries) => Ok(Some(entries)),
                Err(e) if is_nogroup(&e) => {
                    self.recreate_group()?;
                    Ok(None)
                }
                Err(e) => Err(self.fail("XREADGROUP failed", &e)),
            };
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if block {
            cmd.arg("BLOCK").arg(self.block_ms);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(from);
        match self.query(&cmd) {
            Ok(reply) => parse_read_reply(reply).map(Some),
            Err(e) if is_nogroup(&e) => {
                self.recreate_group()?;
                Ok(None)
            }
            Err(e) => Err(self.fail("XREADGROUP failed", &e)),
        }
    }

    /// Decodes `entry` into `out` and records it as returned.
    fn emit(&mut self, entry: &Entry, out: &mut SourceBatch) {
        match self.decoder.decode(entry) {
            Ok(record) => out.records.push(record),
            Err(error) => out.dead_letters.push(DeadLetter {
                source: self.source.clone(),
                partition: self.partition.clone(),
                offset: entry.id.to_string().into(),
                raw: raw_fields(entry),
                error,
            }),
        }
        self.last = Some(entry.id);
        self.delivered.push_back(entry.id);
        if self.shared {
            self.outstanding.insert(entry.id);
        }
    }

    /// Acknowledges `ids`.
    fn ack(&mut self, ids: &[StreamId]) -> Result<(), SourceError> {
        for chunk in ids.chunks(ACK_CHUNK) {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.key).arg(&self.group);
            for id in chunk {
                cmd.arg(id.to_string());
            }
            if let Err(e) = self.query(&cmd) {
                return Err(self.fail("XACK failed", &e));
            }
        }
        Ok(())
    }

    /// Reads one page of this consumer's PEL; returns how many entries it produced.
    fn read_pending_page(
        &mut self,
        cursor: StreamId,
        committed: Option<StreamId>,
        count: usize,
        out: &mut SourceBatch,
    ) -> Result<usize, SourceError> {
        let Some(entries) = self.read_group(&cursor.to_string(), count, false)? else {
            return Ok(0);
        };
        let Some(page_end) = entries.last().map(|e| e.id) else {
            self.mode = Mode::Live;
            return Ok(0);
        };
        let done: Vec<StreamId> = entries
            .iter()
            .map(|e| e.id)
            .filter(|id| committed.is_some_and(|c| *id <= c))
            .collect();
        // Acknowledged before anything is returned, so a failure redoes the page as a whole.
        self.ack(&done)?;
        let mut produced = 0;
        for entry in &entries {
            let already_returned = if self.shared {
                self.outstanding.contains(&entry.id)
            } else {
                self.last.is_some_and(|last| entry.id <= last)
            };
            if committed.is_some_and(|c| entry.id <= c) || already_returned {
                continue;
            }
            if entry.fields.is_none() {
                tracing::warn!(partition = %self.id, entry = %entry.id, "a pending entry was deleted from the stream before it was processed");
            }
            self.emit(entry, out);
            produced += 1;
        }
        self.mode = Mode::Pending {
            cursor: page_end,
            committed,
        };
        Ok(produced)
    }

    /// Shared mode: claims entries pending too long with other (dead) consumers; returns how
    /// many it produced.
    fn claim(&mut self, count: usize, out: &mut SourceBatch) -> Result<usize, SourceError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle_ms)
            .arg(self.claim_cursor.to_string())
            .arg("COUNT")
            .arg(count);
        let reply = match self.query(&cmd) {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                self.recreate_group()?;
                return Ok(0);
            }
            Err(e) => return Err(self.fail("XAUTOCLAIM failed", &e)),
        };
        let Value::Array(mut parts) = reply else {
            return Err(bad_reply("XAUTOCLAIM", &reply));
        };
        if parts.len() < 2 {
            return Err(bad_reply("XAUTOCLAIM", &Value::Array(parts)));
        }
        let deleted = match parts.get(2) {
            Some(Value::Array(ids)) => ids.len(),
            _ => 0,
        };
        let entries = parse_entries(parts.swap_remove(1))?;
        let cursor = parts.swap_remove(0);
        let next = reply_bytes(&cursor)
            .and_then(StreamId::parse)
            .ok_or_else(|| bad_reply("XAUTOCLAIM cursor", &cursor))?;
        if next == StreamId::ZERO {
            self.claim_cursor = StreamId::ZERO;
            self.next_claim = Instant::now() + Duration::from_millis(self.claim_idle_ms);
        } else {
            self.claim_cursor = next;
        }
        let mut produced = 0;
        for entry in &entries {
            // This consumer's own entries come back too when a commit takes longer than
            // `claim_idle`; they were returned already.
            if self.outstanding.contains(&entry.id) {
                continue;
            }
            self.emit(entry, out);
            produced += 1;
        }
        if produced > 0 || deleted > 0 {
            tracing::info!(
                partition = %self.id,
                consumer = %self.consumer,
                claimed = produced,
                deleted,
                "claimed entries left pending by other consumers (at-least-once)"
            );
        }
        Ok(produced)
    }

    /// The first id the trim policy `Acked` keeps after `committed`: nothing at or above it was
    /// committed, or something below it is still pending in the group.
    fn acked_trim_floor(&mut self, committed: StreamId) -> Result<Option<StreamId>, SourceError> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key).arg(&self.group);
        let reply = match self.query(&cmd) {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => return Ok(None),
            Err(e) => return Err(self.fail("XPENDING failed", &e)),
        };
        let floor = committed.next();
        let Value::Array(parts) = &reply else {
            return Err(bad_reply("XPENDING", &reply));
        };
        let smallest_pending = parts.get(1).and_then(reply_bytes).and_then(StreamId::parse);
        Ok(Some(match smallest_pending {
            Some(pending) => pending.min(floor),
            None => floor,
        }))
    }

    fn apply_trim(&mut self, committed: StreamId) -> Result<(), SourceError> {
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(&self.key);
        match self.trim {
            TrimPolicy::None => return Ok(()),
            TrimPolicy::MaxLen(n) => {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            TrimPolicy::Acked => {
                // In shared mode other consumers may still hold entries below `committed`.
                let Some(floor) = self.acked_trim_floor(committed)? else {
                    return Ok(());
                };
                cmd.arg("MINID").arg(floor.to_string());
            }
        }
        match self.query(&cmd) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail("XTRIM failed", &e)),
        }
    }

    fn parse_position(&self, position: &[u8]) -> Result<Option<StreamId>, SourceError> {
        if position.is_empty() {
            return Ok(None);
        }
        StreamId::parse(position).map(Some).ok_or_else(|| {
            SourceError::Fatal(format!(
                "{}: invalid stored position `{}` (expected a stream entry id)",
                self.id,
                String::from_utf8_lossy(position)
            ))
        })
    }
}

impl SourcePartition for StreamPartition {
    fn id(&self) -> &str {
        &self.id
    }

    /// Resumes after `position`; no command is sent until the next `poll`.
    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let committed = self.parse_position(position)?;
        self.last = committed;
        self.delivered.clear();
        self.outstanding.clear();
        self.mode = Mode::Pending {
            cursor: StreamId::ZERO,
            // Shared mode cannot tell committed from claimed entries by id: all are returned.
            committed: if self.shared { None } else { committed },
        };
        Ok(())
    }

    fn poll(
        &mut self,
        out: &mut SourceBatch,
        max_records: usize,
    ) -> Result<PollStatus, SourceError> {
        let count = self.batch.min(max_records);
        if count == 0 {
            return Ok(PollStatus::Data);
        }
        self.connect()?;
        if self.shared && Instant::now() >= self.next_claim && self.claim(count, out)? > 0 {
            return Ok(PollStatus::Data);
        }
        for _ in 0..MAX_SKIPPED_PAGES_PER_POLL {
            let Mode::Pending { cursor, committed } = self.mode else {
                break;
            };
            if self.read_pending_page(cursor, committed, count, out)? > 0 {
                return Ok(PollStatus::Data);
            }
        }
        if self.mode != Mode::Live {
            // More committed entries to skip: come back right away.
            return Ok(PollStatus::Data);
        }
        let Some(entries) = self.read_group(">", count, true)? else {
            return Ok(PollStatus::Idle);
        };
        if entries.is_empty() && self.end_at_tail {
            return Ok(PollStatus::End);
        }
        let mut produced = 0;
        for entry in &entries {
            if !self.shared && self.last.is_some_and(|last| entry.id <= last) {
                // Only after the group's last-delivered id was moved back (XGROUP SETID):
                // returning it would break the order positions rely on.
                tracing::warn!(partition = %self.id, entry = %entry.id, "skipping an entry at or below the last one returned");
                continue;
            }
            self.emit(entry, out);
            produced += 1;
        }
        Ok(if produced > 0 {
            PollStatus::Data
        } else {
            PollStatus::Idle
        })
    }

    fn position(&self) -> Vec<u8> {
        self.last
            .map(|id| id.to_string().into_bytes())
            .unwrap_or_default()
    }

    /// Acknowledges the entries returned up to `position`, then trims. On failure the entries
    /// stay tracked and a later commit acknowledges them.
    fn on_committed(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let Some(committed) = self.parse_position(position)? else {
            return Ok(());
        };
        let n = if self.shared {
            // Claimed entries break the id order: acknowledge what was returned up to the
            // entry that was last when the position was taken.
            self.delivered
                .iter()
                .rposition(|id| *id == committed)
                .map_or(0, |i| i + 1)
        } else {
            self.delivered.partition_point(|id| *id <= committed)
        };
        if n == 0 && self.trim == TrimPolicy::None {
            return Ok(());
        }
        self.connect()?;
        let mut remaining = n;
        while remaining > 0 {
            let take = remaining.min(ACK_CHUNK);
            let ids: Vec<StreamId> = self.delivered.iter().take(take).copied().collect();
            self.ack(&ids)?;
            for id in self.delivered.drain(..take) {
                self.outstanding.remove(&id);
            }
            remaining -= take;
        }
        self.apply_trim(committed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_engine::event::{FieldSlots, Value as FieldValue};
    use weir_engine::topology::{EventTimeSpec, TimeFormat};

    use super::*;

    fn ctx(source_timestamp: bool) -> DecodeContext {
        let mut slots = FieldSlots::default();
        slots.slot("key");
        slots.slot("value");
        DecodeContext {
            source_name: "events".into(),
            slots: Arc::new(slots),
            event_time: EventTimeSpec {
                field: "ts".into(),
                format: TimeFormat::Auto,
                processing_time: false,
                source_timestamp,
            },
        }
    }

    fn config(extra: serde_json::Value) -> RedisStreamsConfig {
        let mut options = serde_json::json!({"url": "redis://127.0.0.1:1", "stream": "s"});
        if let (Some(o), Some(e)) = (options.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        RedisStreamsConfig::from_options("sources.s", options.as_object().unwrap()).unwrap()
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
        Entry {
            id: StreamId::parse(id.as_bytes()).unwrap(),
            fields: Some(
                fields
                    .iter()
                    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn stream_ids_parse_order_and_print() {
        let a = StreamId::parse(b"1700000000000-5").unwrap();
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!(a < StreamId::parse(b"1700000000000-6").unwrap());
        assert!(a < StreamId::parse(b"1700000000001-0").unwrap());
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert_eq!(
            StreamId {
                ms: 1,
                seq: u64::MAX
            }
            .next(),
            StreamId { ms: 2, seq: 0 }
        );
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1 -2",
            "99999999999999999999-0",
        ] {
            assert_eq!(StreamId::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn json_numbers() {
        for yes in [
            "0",
            "-0",
            "12",
            "-3.5",
            "1e3",
            "1E-2",
            "2.5e+10",
            "123456789012345678901",
        ] {
            assert!(is_json_number(yes), "{yes}");
        }
        for no in [
            "", "-", "01", "1.", ".5", "1e", "+1", " 1", "1 ", "0x10", "NaN", "inf", "1e999",
        ] {
            assert!(!is_json_number(no), "{no}");
        }
    }

    #[test]
    fn fields_format_builds_typed_json() {
        let mut d = EntryDecoder::new(
            &config(serde_json::json!({"format": "fields"})),
            &ctx(false),
        );
        let r = d
            .decode(&entry(
                "5-0",
                &[
                    ("ts", "1700000000000"),
                    ("key", "a \"quoted\" key"),
                    ("value", "2.5"),
                ],
            ))
            .unwrap();
        assert_eq!(r.time, 1_700_000_000_000);
        assert_eq!(r.fields[0], FieldValue::Str("a \"quoted\" key".into()));
        assert_eq!(r.fields[1], FieldValue::Float(2.5));
        let r = d
            .decode(&entry(
                "5-1",
                &[("ts", "2023-11-14T22:13:20Z"), ("value", "007")],
            ))
            .unwrap();
        assert_eq!(r.time, 1_700_000_000_000);
        assert_eq!(r.fields[1], FieldValue::Str("007".into()));
    }

    #[test]
    fn source_timestamp_comes_from_the_id() {
        let mut d = EntryDecoder::new(&config(serde_json::json!({})), &ctx(true));
        let r = d
            .decode(&entry("1700000000123-7", &[("payload", r#"{"key":"k"}"#)]))
            .unwrap();
        assert_eq!(r.time, 1_700_000_000_123);
        let err = d
            .decode(&entry("18446744073709551615-0", &[("payload", "{}")]))
            .unwrap_err();
        assert!(
            err.contains("beyond the supported event-time range"),
            "{err}"
        );
    }

    #[test]
    fn undecodable_entries_explain_why() {
        let mut d = EntryDecoder::new(&config(serde_json::json!({})), &ctx(false));
        let err = d.decode(&entry("1-0", &[("other", "x")])).unwrap_err();
        assert_eq!(err, "the entry has no field `payload`");
        let err = d
            .decode(&entry("1-0", &[("payload", "{oops")]))
            .unwrap_err();
        assert!(err.starts_with("field `payload`: "), "{err}");
        let deleted = Entry {
            id: StreamId::ZERO,
            fields: None,
        };
        assert!(d.decode(&deleted).unwrap_err().contains("deleted"));
        assert_eq!(raw_fields(&deleted), b"");
        let raw = raw_fields(&entry("1-0", &[("a", "1"), ("b\"", "x\ny")]));
        assert_eq!(String::from_utf8(raw).unwrap(), r#"{"a":"1","b\"":"x\ny"}"#);
        let mut f = EntryDecoder::new(
            &config(serde_json::json!({"format": "fields"})),
            &ctx(false),
        );
        let binary = Entry {
            id: StreamId::ZERO,
            fields: Some(vec![(b"key".to_vec(), vec![0xff, 0xfe])]),
        };
        assert_eq!(
            f.decode(&binary).unwrap_err(),
            "the value of field `key` is not UTF-8"
        );
    }

    #[test]
    fn read_replies_parse_in_resp2_and_resp3_shapes() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entries = Value::Array(vec![
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("f"), bulk("v")])]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        for reply in [resp2, resp3] {
            let got = parse_read_reply(reply).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].fields, Some(vec![(b"f".to_vec(), b"v".to_vec())]));
            assert_eq!(got[1].fields, None);
        }
        assert!(parse_read_reply(Value::Nil).unwrap().is_empty());
        assert!(parse_read_reply(Value::Int(3)).is_err());
    }

    /// The whole reply `bytes` through the lean connection's parser.
    fn raw_reply(bytes: &[u8]) -> redis::RedisResult<Vec<Entry>> {
        let mut cursor = Cursor::over(bytes);
        parse_raw_read_reply(&mut cursor)
    }

    #[test]
    fn raw_read_replies_parse_entries_nils_and_errors() {
        let got = raw_reply(
            b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n\
              *2\r\n$3\r\n2-5\r\n*-1\r\n",
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, StreamId { ms: 1, seq: 0 });
        assert_eq!(got[0].fields, Some(vec![(b"f".to_vec(), b"v".to_vec())]));
        assert_eq!(got[1].id, StreamId { ms: 2, seq: 5 });
        assert_eq!(got[1].fields, None);
        // Nothing new: null (BLOCK timed out) or an empty entry list.
        assert!(raw_reply(b"*-1\r\n").unwrap().is_empty());
        assert!(raw_reply(b"*1\r\n*2\r\n$1\r\ns\r\n*0\r\n")
            .unwrap()
            .is_empty());
        let nogroup = raw_reply(b"-NOGROUP No such key 's' or consumer group 'g'\r\n").unwrap_err();
        assert!(is_nogroup(&nogroup));
        assert!(raw_reply(b":3\r\n").is_err());
        assert!(raw_reply(b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$2\r\nxx\r\n*-1\r\n").is_err());
    }
}

//! The Redis sections of `weir bench-io`: reading a sharded stream (`redis-source`) and
//! writing activity feeds (`feed`), each by a plain client and by Weir, from one filled stream.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use weir_connectors::generator::{write_events, GeneratorConfig, OutputFormat, Shape};
use weir_connectors::redis::client::{self as redis, Value};

use super::{rate, run_job, BenchIoArgs, Measurement, RunNames, Section};

/// Entries per `XREADGROUP`, for the plain consumers and for Weir's source (its default).
const READ_COUNT: usize = 1000;
/// Entries per `XADD` pipeline while filling the stream.
const FILL_CHUNK: usize = 2000;
/// Newest activities kept per feed, and the TTL of feeds and payloads (ms).
const FEED_MAX_LEN: u64 = 100;
const FEED_TTL_MS: u64 = 3_600_000;

/// The fields of an activity event the plain clients look at.
#[derive(Deserialize)]
struct Activity<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow, default)]
    event_id: Cow<'a, str>,
    #[serde(borrow, default)]
    timestamp: Cow<'a, str>,
}

/// The stream every Redis section of a run reads: `<ns>:events:{0}` … `{S-1}`.
struct Firehose {
    /// Key prefix of everything this run writes to Redis.
    ns: String,
    /// The source's `stream` option (shard keys are `STREAM:{i}`).
    stream: String,
    /// The shard keys.
    keys: Vec<String>,
    events: u64,
}

/// Fills the stream, runs the `sections` over it, then deletes every key the run wrote.
pub(super) fn run(
    url: &str,
    args: &BenchIoArgs,
    names: &RunNames,
    sections: &[Section],
) -> anyhow::Result<Vec<Measurement>> {
    let client = redis::Client::open(url).context("--redis is not a Redis URL")?;
    let mut conn = client
        .get_connection()
        .context("cannot connect to --redis")?;
    let ns = format!("weir-bench:{}", names.id);
    let fire = fill(&mut conn, &ns, args)?;
    let mut out = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for section in sections {
            match section {
                Section::RedisSource => out.push(source_section(url, &fire, args, names)?),
                Section::Feed => out.push(feed_section(url, &fire, args, names)?),
                Section::Mongodb => {}
            }
        }
        Ok(())
    })();
    let cleanup = delete_matching(&mut conn, &format!("{ns}:*"))
        .and_then(|()| delete_matching(&mut conn, &format!("weir-fence:bench-io-{}-*", names.id)));
    result?;
    cleanup.context("cannot delete the benchmark's keys")?;
    Ok(out)
}

/// The producer's shard of a user: FNV-1a of the id, modulo the shard count (so a windowed
/// pipeline keyed by user would also be correct in a fleet).
fn shard_of(user: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards as u64) as usize
}

/// Generates `args.events` activity events (the generator's `activity` shape, 1,000 events
/// per second of event time, up to 500 ms out of order) and XADDs each as a `payload` field
/// to its user's shard.
fn fill(conn: &mut redis::Connection, ns: &str, args: &BenchIoArgs) -> anyhow::Result<Firehose> {
    let shards = args.shards as usize;
    let config = GeneratorConfig {
        shape: Shape::Activity,
        count: Some(args.events),
        keys: args.keys,
        events_per_second_of_event_time: Some(1000.0),
        max_out_of_orderness_ms: 500,
        seed: 11,
        ..GeneratorConfig::default()
    };
    let mut text = Vec::with_capacity(args.events as usize * 220);
    write_events(&config, OutputFormat::Jsonl, &mut text)?;
    let mut per_shard: Vec<Vec<&[u8]>> = vec![Vec::new(); shards];
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let activity: Activity = serde_json::from_slice(line)?;
        per_shard[shard_of(&activity.user_id, shards)].push(line);
    }
    let stream = format!("{ns}:events");
    let keys: Vec<String> = (0..shards).map(|i| format!("{stream}:{{{i}}}")).collect();
    eprintln!(
        "  filling {} shards with {} events ...",
        shards, args.events
    );
    let started = Instant::now();
    for (key, lines) in keys.iter().zip(&per_shard) {
        for chunk in lines.chunks(FILL_CHUNK) {
            let mut pipe = redis::pipe();
            for line in chunk {
                pipe.cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg("payload")
                    .arg(*line)
                    .ignore();
            }
            pipe.query::<()>(conn).context("XADD failed")?;
        }
    }
    eprintln!(
        "  filled in {:.1} s ({}/s)",
        started.elapsed().as_secs_f64(),
        rate(args.events as f64 / started.elapsed().as_secs_f64())
    );
    Ok(Firehose {
        ns: ns.to_string(),
        stream,
        keys,
        events: args.events,
    })
}

/// One entry as the plain consumers see it: its id and its `payload` field.
type Entry = (Vec<u8>, Option<Vec<u8>>);

/// What a plain consumer does with a batch besides acknowledging it: adds its writes to the
/// pipeline that carries the `XACK`.
type Handler<'a> = dyn Fn(&[Entry], &mut redis::Pipeline) -> anyhow::Result<()> + Sync + 'a;

/// Reads every shard to its end through a new consumer group `group`, one connection and
/// thread per shard: `XREADGROUP COUNT 1000`, then one pipeline with the handler's writes and
/// the `XACK`. Returns the entries read and the wall time.
fn consume_all(
    url: &str,
    keys: &[String],
    group: &str,
    handle: &Handler<'_>,
) -> anyhow::Result<(u64, Duration)> {
    let client = redis::Client::open(url)?;
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .iter()
            .map(|key| {
                let client = &client;
                scope.spawn(move || -> anyhow::Result<u64> {
                    let mut conn = client.get_connection()?;
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(key)
                        .arg(group)
                        .arg("0")
                        .query::<()>(&mut conn)?;
                    let mut read = 0u64;
                    loop {
                        let reply: Value = redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(group)
                            .arg("plain")
                            .arg("COUNT")
                            .arg(READ_COUNT)
                            .arg("STREAMS")
                            .arg(key)
                            .arg(">")
                            .query(&mut conn)?;
                        let entries = entries(reply)?;
                        if entries.is_empty() {
                            return Ok(read);
                        }
                        read += entries.len() as u64;
                        let mut pipe = redis::pipe();
                        handle(&entries, &mut pipe)?;
                        pipe.cmd("XACK").arg(key).arg(group);
                        for (id, _) in &entries {
                            pipe.arg(id.as_slice());
                        }
                        pipe.ignore().query::<()>(&mut conn)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| bail!("a consumer thread panicked"))
            })
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok((counts.iter().sum(), started.elapsed()))
}

/// The entries of a single-stream `XREADGROUP` reply (RESP2 or RESP3; nil or empty when the
/// stream has nothing new).
fn entries(reply: Value) -> anyhow::Result<Vec<Entry>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Ok(kv.swap_remove(1)),
                other => bail!("unexpected XREADGROUP reply: {other:?}"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        Value::Map(map) => map.into_iter().map(|(_, v)| v).collect(),
        other => bail!("unexpected XREADGROUP reply: {other:?}"),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(items) = stream else {
            bail!("unexpected stream entries: {stream:?}");
        };
        for item in items {
            let Value::Array(mut parts) = item else {
                bail!("unexpected stream entry: {item:?}");
            };
            let fields = parts.pop();
            let Some(Value::BulkString(id)) = parts.pop() else {
                bail!("a stream entry without an id");
            };
            let mut payload = None;
            if let Some(Value::Array(fields)) = fields {
                let mut it = fields.into_iter();
                while let (Some(name), Some(value)) = (it.next(), it.next()) {
                    if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
                        if name == b"payload" {
                            payload = Some(value);
                        }
                    }
                }
            }
            out.push((id, payload));
        }
    }
    Ok(out)
}

/// The source section: plain `XREADGROUP` + `XACK` against Weir reading the same shards
/// through a tumbling window into a `redis_hash` sink, exactly once.
fn source_section(
    url: &str,
    fire: &Firehose,
    args: &BenchIoArgs,
    names: &RunNames,
) -> anyhow::Result<Measurement> {
    eprintln!("  redis-source: plain consumers ...");
    let (read, plain_time) = consume_all(url, &fire.keys, "plain-read", &|_, _| Ok(()))?;
    check_count("the plain consumers", read, fire.events)?;
    eprintln!("  redis-source: Weir ...");
    let state = args.dir.join(format!("{}-hash", names.id));
    let yaml = SOURCE_TOPOLOGY
        .replace("@JOB@", &format!("bench-io-{}-hash", names.id))
        .replace("@URL@", url)
        .replace("@STREAM@", &fire.stream)
        .replace("@SHARDS@", &args.shards.to_string())
        .replace("@NS@", &fire.ns)
        .replace("@STATE@", &state.display().to_string());
    let run = run_job(&yaml);
    let _ = std::fs::remove_dir_all(&state);
    let (metrics, weir_time) = run?;
    check_count("Weir", metrics.events_in, fire.events)?;
    Ok(Measurement {
        section: Section::RedisSource.name(),
        baseline: format!("XREADGROUP+XACK, {} consumers", fire.keys.len()),
        weir: "Weir: tumbling 1m count+sum per user -> redis_hash, exactly once, checkpoint 1 s"
            .into(),
        unit: "events",
        baseline_per_s: read as f64 / plain_time.as_secs_f64(),
        weir_per_s: metrics.events_in as f64 / weir_time.as_secs_f64(),
        floor: Some(0.70),
        detail: format!(
            "{} events, {} window results, {} epochs",
            metrics.events_in, metrics.results_out, metrics.epochs_committed
        ),
    })
}

/// The feed section: a plain consumer writing feeds with pipelined commands against a
/// windowless Weir pipeline into a `redis_feed` sink.
fn feed_section(
    url: &str,
    fire: &Firehose,
    args: &BenchIoArgs,
    names: &RunNames,
) -> anyhow::Result<Measurement> {
    eprintln!("  feed: plain consumers writing feeds ...");
    let ns = &fire.ns;
    let trim_stop = format!("-{}", FEED_MAX_LEN + 1);
    let write_feeds = |entries: &[Entry], pipe: &mut redis::Pipeline| -> anyhow::Result<()> {
        let mut feeds = HashSet::new();
        for (_, payload) in entries {
            let Some(payload) = payload else { continue };
            let activity: Activity = serde_json::from_slice(payload)?;
            let score = chrono::DateTime::parse_from_rfc3339(&activity.timestamp)
                .map_or(0, |t| t.timestamp_millis());
            pipe.cmd("SET")
                .arg(format!("{ns}:plain-activity:{}", activity.event_id))
                .arg(payload.as_slice())
                .arg("PX")
                .arg(FEED_TTL_MS)
                .ignore();
            let feed = format!("{ns}:plain-feed:{}", activity.user_id);
            pipe.cmd("ZADD")
                .arg(&feed)
                .arg(score)
                .arg(activity.event_id.as_ref())
                .ignore();
            feeds.insert(feed);
        }
        for feed in feeds {
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&feed)
                .arg(0)
                .arg(&trim_stop)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&feed).arg(FEED_TTL_MS).ignore();
        }
        Ok(())
    };
    let (written, plain_time) = consume_all(url, &fire.keys, "plain-feed", &write_feeds)?;
    check_count("the plain feed writers", written, fire.events)?;
    eprintln!("  feed: Weir ...");
    let state = args.dir.join(format!("{}-feed", names.id));
    let yaml = FEED_TOPOLOGY
        .replace("@JOB@", &format!("bench-io-{}-feed", names.id))
        .replace("@URL@", url)
        .replace("@STREAM@", &fire.stream)
        .replace("@SHARDS@", &args.shards.to_string())
        .replace("@NS@", ns)
        .replace("@MAXLEN@", &FEED_MAX_LEN.to_string())
        .replace("@STATE@", &state.display().to_string());
    let run = run_job(&yaml);
    let _ = std::fs::remove_dir_all(&state);
    let (metrics, weir_time) = run?;
    check_count("Weir", metrics.events_in, fire.events)?;
    Ok(Measurement {
        section: Section::Feed.name(),
        baseline: "XREADGROUP, pipelined SET PX+ZADD, trim+expire per feed, XACK".into(),
        weir: "Weir: windowless select -> redis_feed (payload, feed, trim, TTLs), exactly once"
            .into(),
        unit: "activities",
        baseline_per_s: written as f64 / plain_time.as_secs_f64(),
        weir_per_s: metrics.events_in as f64 / weir_time.as_secs_f64(),
        floor: None,
        detail: format!(
            "{} activities, max {FEED_MAX_LEN} per feed, {} epochs",
            metrics.events_in, metrics.epochs_committed
        ),
    })
}

fn check_count(who: &str, got: u64, want: u64) -> anyhow::Result<()> {
    if got != want {
        bail!("{who} read {got} events, the stream holds {want}: the measurement is void");
    }
    Ok(())
}

/// Deletes every key matching `pattern` (SCAN + UNLINK).
fn delete_matching(conn: &mut redis::Connection, pattern: &str) -> anyhow::Result<()> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query(conn)?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(&keys).query::<()>(conn)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The `redis-source` job: the shards through a tumbling window into hashes.
const SOURCE_TOPOLOGY: &str = r#"
name: "@JOB@"
sources:
  events:
    type: redis_streams
    url: "@URL@"
    stream: "@STREAM@"
    shards: @SHARDS@
    group: weir-hash
    start: earliest
    end_at_tail: true
    event_time: {field: timestamp, format: rfc3339}
    watermark: {max_out_of_orderness: 1s}
pipelines:
  spend:
    source: events
    key_by: [user_id]
    window: {type: tumbling, size: 1m}
    aggregates:
      - {name: events, fn: count}
      - {name: spend, fn: sum, field: value}
    sinks: [hash]
sinks:
  hash: {type: redis_hash, url: "@URL@", key: "@NS@:spend:{user_id}:{window_start}", ttl: 1h}
state: {dir: "@STATE@"}
checkpoint: {interval: 1s}
"#;

/// The `feed` job: every event into its user's feed, with its payload.
const FEED_TOPOLOGY: &str = r#"
name: "@JOB@"
sources:
  events:
    type: redis_streams
    url: "@URL@"
    stream: "@STREAM@"
    shards: @SHARDS@
    group: weir-feed
    start: earliest
    end_at_tail: true
    event_time: {field: timestamp, format: rfc3339}
    watermark: {max_out_of_orderness: 1s}
pipelines:
  activity:
    source: events
    select: [event_id, user_id, event_type, product, timestamp]
    sinks: [feeds]
sinks:
  feeds:
    type: redis_feed
    url: "@URL@"
    feed_key: "@NS@:feed:{user_id}"
    member: "{event_id}"
    payload_key: "@NS@:activity:{event_id}"
    payload_ttl: 1h
    max_len: @MAXLEN@
    feed_ttl: 1h
state: {dir: "@STATE@"}
checkpoint: {interval: 1s}
"#;

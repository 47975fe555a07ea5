//! The Redis Streams source against a real `redis-server`.
//!
//! Start one with
//! `eval "$(scripts/services.sh start redis)"` (exports `WEIR_TEST_REDIS`); every test uses
//! its own stream keys, prefixed with the process id so reruns do not see old entries.

#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use weir_connectors::redis::source::{open_redis_streams, RedisStreamsConfig};
use weir_engine::event::{FieldSlots, Value};
use weir_engine::runtime::{
    DecodeContext, PartitionSelection, PollStatus, SourceBatch, SourceError, SourcePartition,
};
use weir_engine::topology::{EventTimeSpec, TimeFormat};

fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_REDIS is not set. Start a test server with \
             `eval \"$(scripts/services.sh start redis)\"` (stop it with \
             `scripts/services.sh stop`)"
        )
    })
}

/// A URL for database `db` of the test server.
fn redis_url_db(db: u32) -> String {
    format!("{}/{db}", redis_url().trim_end_matches('/'))
}

fn conn_to(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn conn() -> redis::Connection {
    conn_to(&redis_url())
}

/// A stream key unique to this test run.
fn key(name: &str) -> String {
    format!("weir-test:{}:{name}", std::process::id())
}

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

fn config(options: serde_json::Value) -> RedisStreamsConfig {
    let mut all = serde_json::json!({"url": redis_url()});
    all.as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    RedisStreamsConfig::from_options("sources.events", all.as_object().unwrap()).unwrap()
}

fn open_all(config: &RedisStreamsConfig, ctx: &DecodeContext) -> Vec<Box<dyn SourcePartition>> {
    open_redis_streams("events", config, ctx, &PartitionSelection::All).unwrap()
}

fn open_one(config: &RedisStreamsConfig, ctx: &DecodeContext) -> Box<dyn SourcePartition> {
    let mut all = open_all(config, ctx);
    assert_eq!(all.len(), 1);
    all.pop().unwrap()
}

/// Polls (`max` records per poll) until `n` records plus dead letters arrived, failing after
/// 5 s. Retryable errors are retried, as the runtime does; returns how many there were.
fn poll_n(p: &mut dyn SourcePartition, n: usize, max: usize) -> (SourceBatch, usize) {
    let mut all = SourceBatch::default();
    let mut retried = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while all.records.len() + all.dead_letters.len() < n {
        assert!(
            Instant::now() < deadline,
            "got {} of {n} entries",
            all.records.len() + all.dead_letters.len()
        );
        let mut batch = SourceBatch::default();
        match p.poll(&mut batch, max) {
            Ok(_) => {}
            Err(SourceError::Retryable(_)) => {
                retried += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(batch.records.len() + batch.dead_letters.len() <= max);
        all.records.extend(batch.records);
        all.dead_letters.extend(batch.dead_letters);
    }
    assert_eq!(
        all.records.len() + all.dead_letters.len(),
        n,
        "more entries than expected"
    );
    (all, retried)
}

/// Asserts that polling returns nothing (the stream has no more entries for this partition).
fn assert_nothing_more(p: &mut dyn SourcePartition) {
    for _ in 0..3 {
        let mut batch = SourceBatch::default();
        let status = p.poll(&mut batch, 100).unwrap();
        assert!(
            batch.records.is_empty() && batch.dead_letters.is_empty(),
            "unexpected {batch:?}"
        );
        if status == PollStatus::Idle {
            return;
        }
    }
    panic!("the partition never became idle");
}

fn xadd(c: &mut redis::Connection, key: &str, id: &str, fields: &[(&str, &str)]) -> String {
    c.xadd(key, id, fields).unwrap()
}

/// Adds `{"ts": ..., "key": "k<i>", "value": i}` payload entries for each `i` in `values`;
/// returns their ids.
fn add_json(
    c: &mut redis::Connection,
    key: &str,
    values: impl IntoIterator<Item = i64>,
) -> Vec<String> {
    values
        .into_iter()
        .map(|i| {
            let payload = format!(
                r#"{{"ts":{},"key":"k{i}","value":{i}}}"#,
                1_700_000_000_000 + i
            );
            xadd(c, key, "*", &[("payload", &payload)])
        })
        .collect()
}

fn values(batch: &SourceBatch) -> Vec<i64> {
    batch
        .records
        .iter()
        .map(|r| match &r.fields[1] {
            Value::Int(i) => *i,
            other => panic!("value is {other:?}"),
        })
        .collect()
}

fn pending(c: &mut redis::Connection, key: &str, group: &str) -> i64 {
    let reply: redis::Value = redis::cmd("XPENDING").arg(key).arg(group).query(c).unwrap();
    match reply {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING count is {other:?}"),
        },
        other => panic!("XPENDING reply is {other:?}"),
    }
}

fn xlen(c: &mut redis::Connection, key: &str) -> i64 {
    c.xlen(key).unwrap()
}

#[test]
fn json_format_with_event_time_from_a_field() {
    let k = key("json");
    let mut c = conn();
    let ids = add_json(&mut c, &k, 1..=3);
    let mut p = open_one(&config(serde_json::json!({"stream": k})), &ctx(false));
    assert_eq!(p.id(), format!("redis:{k}"));
    assert!(p.position().is_empty());
    let (batch, _) = poll_n(p.as_mut(), 3, 100);
    assert_eq!(values(&batch), [1, 2, 3]);
    assert_eq!(batch.records[0].fields[0], Value::Str("k1".into()));
    let times: Vec<_> = batch.records.iter().map(|r| r.time).collect();
    assert_eq!(
        times,
        [1_700_000_000_001, 1_700_000_000_002, 1_700_000_000_003]
    );
    assert_eq!(p.position(), ids[2].as_bytes());
    assert_nothing_more(p.as_mut());
}

#[test]
fn fields_format_types_numbers() {
    let k = key("fields");
    let mut c = conn();
    xadd(
        &mut c,
        &k,
        "*",
        &[("ts", "1700000000005"), ("key", "a"), ("value", "42")],
    );
    xadd(
        &mut c,
        &k,
        "*",
        &[
            ("ts", "2023-11-14T22:13:20.5Z"),
            ("key", "b"),
            ("value", "1.5e2"),
        ],
    );
    xadd(
        &mut c,
        &k,
        "*",
        &[("ts", "1700000000007"), ("key", "17"), ("value", "n/a")],
    );
    let cfg = config(serde_json::json!({"stream": k, "format": "fields"}));
    let mut p = open_one(&cfg, &ctx(false));
    let (batch, _) = poll_n(p.as_mut(), 3, 100);
    assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
    let r = &batch.records;
    assert_eq!(
        (r[0].time, &r[0].fields[1]),
        (1_700_000_000_005, &Value::Int(42))
    );
    assert_eq!(r[1].time, 1_700_000_000_500);
    assert_eq!(r[1].fields[1], Value::Float(150.0));
    // A numeric key stays a number too: values are typed by their text alone.
    assert_eq!(r[2].fields[0], Value::Int(17));
    assert_eq!(r[2].fields[1], Value::Str("n/a".into()));
}

#[test]
fn event_time_from_the_entry_id() {
    let k = key("idtime");
    let mut c = conn();
    xadd(
        &mut c,
        &k,
        "1700000000123-0",
        &[("payload", r#"{"key":"a","value":1}"#)],
    );
    // A time field in the payload is ignored, even a malformed one.
    xadd(
        &mut c,
        &k,
        "1700000000456-3",
        &[("payload", r#"{"ts":"garbage","key":"b","value":2}"#)],
    );
    xadd(
        &mut c,
        &k,
        "1700000000456-4",
        &[("key", "c"), ("value", "3")],
    );
    let mut p = open_one(&config(serde_json::json!({"stream": k})), &ctx(true));
    let (batch, _) = poll_n(p.as_mut(), 3, 100);
    let times: Vec<_> = batch.records.iter().map(|r| r.time).collect();
    assert_eq!(times, [1_700_000_000_123, 1_700_000_000_456]);
    assert_eq!(batch.dead_letters.len(), 1);
    assert_eq!(p.position(), b"1700000000456-4");

    let k2 = key("idtime-fields");
    xadd(
        &mut c,
        &k2,
        "1700000000789-0",
        &[("key", "c"), ("value", "3")],
    );
    let cfg = config(serde_json::json!({"stream": k2, "format": "fields"}));
    let mut p = open_one(&cfg, &ctx(true));
    let (batch, _) = poll_n(p.as_mut(), 1, 100);
    assert_eq!(batch.records[0].time, 1_700_000_000_789);
}

#[test]
fn malformed_entries_become_dead_letters() {
    let k = key("malformed");
    let mut c = conn();
    add_json(&mut c, &k, [1]);
    let missing = xadd(&mut c, &k, "*", &[("body", "{}")]);
    let bad_json = xadd(&mut c, &k, "*", &[("payload", "{\"ts\":1700000000000,")]);
    let bad_time = xadd(
        &mut c,
        &k,
        "*",
        &[("payload", r#"{"ts":"yesterday","key":"x"}"#)],
    );
    add_json(&mut c, &k, [2]);
    let mut p = open_one(&config(serde_json::json!({"stream": k})), &ctx(false));
    let (batch, _) = poll_n(p.as_mut(), 5, 100);
    assert_eq!(values(&batch), [1, 2]);
    let dead = &batch.dead_letters;
    assert_eq!(dead.len(), 3);
    for d in dead {
        assert_eq!(d.source, "events");
        assert_eq!(d.partition, k.as_str());
    }
    assert_eq!(dead[0].offset, missing.as_str());
    assert_eq!(dead[0].raw, br#"{"body":"{}"}"#);
    assert_eq!(dead[0].error, "the entry has no field `payload`");
    assert_eq!(dead[1].offset, bad_json.as_str());
    assert_eq!(
        String::from_utf8(dead[1].raw.clone()).unwrap(),
        r#"{"payload":"{\"ts\":1700000000000,"}"#
    );
    assert!(
        dead[1].error.starts_with("field `payload`: "),
        "{}",
        dead[1].error
    );
    assert_eq!(dead[2].offset, bad_time.as_str());
    assert!(
        dead[2].error.contains("event time field `ts`"),
        "{}",
        dead[2].error
    );
    // Dead letters are entries like any other: acknowledged with the checkpoint.
    p.on_committed(&p.position()).unwrap();
    assert_eq!(pending(&mut c, &k, "weir"), 0);
}

#[test]
fn seek_after_a_crash_neither_loses_nor_repeats() {
    let k = key("crash");
    let mut c = conn();
    add_json(&mut c, &k, 1..=10);
    let cfg = config(serde_json::json!({"stream": k, "batch": 3}));

    let mut first = open_one(&cfg, &ctx(false));
    let (batch, _) = poll_n(first.as_mut(), 3, 3);
    assert_eq!(values(&batch), [1, 2, 3]);
    // The checkpoint stores this position; 4..=6 are read afterwards but never checkpointed.
    let checkpoint = first.position();
    let (batch, _) = poll_n(first.as_mut(), 3, 3);
    assert_eq!(values(&batch), [4, 5, 6]);
    drop(first);
    assert_eq!(pending(&mut c, &k, "weir"), 6);

    add_json(&mut c, &k, 11..=12);
    let mut second = open_one(&cfg, &ctx(false));
    second.seek(&checkpoint).unwrap();
    assert_eq!(second.position(), checkpoint);
    let (batch, _) = poll_n(second.as_mut(), 9, 4);
    assert_eq!(values(&batch), [4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_nothing_more(second.as_mut());
    // Entries up to the checkpoint were committed: the re-read acknowledged them.
    assert_eq!(pending(&mut c, &k, "weir"), 9);
    second.on_committed(&second.position()).unwrap();
    assert_eq!(pending(&mut c, &k, "weir"), 0);
}

#[test]
fn a_fresh_start_returns_the_whole_pending_list() {
    let k = key("fresh");
    let mut c = conn();
    add_json(&mut c, &k, 1..=4);
    let cfg = config(serde_json::json!({"stream": k}));
    let mut first = open_one(&cfg, &ctx(false));
    let (batch, _) = poll_n(first.as_mut(), 4, 2);
    assert_eq!(values(&batch), [1, 2, 3, 4]);
    drop(first);
    // No checkpoint was ever stored: the next run starts without a seek.
    add_json(&mut c, &k, [5]);
    let mut second = open_one(&cfg, &ctx(false));
    let (batch, _) = poll_n(second.as_mut(), 5, 100);
    assert_eq!(values(&batch), [1, 2, 3, 4, 5]);
    assert_nothing_more(second.as_mut());
}

#[test]
fn on_committed_acknowledges_and_trims_acked_entries() {
    let k = key("trim-acked");
    let mut c = conn();
    add_json(&mut c, &k, 1..=5);
    let cfg = config(serde_json::json!({"stream": k, "trim": {"acked": true}}));
    let mut p = open_one(&cfg, &ctx(false));
    let (_, _) = poll_n(p.as_mut(), 3, 3);
    let after_three = p.position();
    let (_, _) = poll_n(p.as_mut(), 2, 3);
    assert_eq!(pending(&mut c, &k, "weir"), 5);
    p.on_committed(&after_three).unwrap();
    assert_eq!(pending(&mut c, &k, "weir"), 2);
    assert_eq!(xlen(&mut c, &k), 2);
    p.on_committed(&p.position()).unwrap();
    assert_eq!(pending(&mut c, &k, "weir"), 0);
    assert_eq!(xlen(&mut c, &k), 0);
    // A repeated commit changes nothing.
    p.on_committed(&p.position()).unwrap();
    add_json(&mut c, &k, [6]);
    let (batch, _) = poll_n(p.as_mut(), 1, 3);
    assert_eq!(values(&batch), [6]);
}

#[test]
fn on_committed_trims_to_maxlen() {
    let k = key("trim-maxlen");
    let mut c = conn();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.xadd(
            &k,
            "*",
            &[("payload", format!(r#"{{"ts":1700000000000,"value":{i}}}"#))],
        )
        .ignore();
    }
    pipe.query::<()>(&mut c).unwrap();
    let cfg = config(serde_json::json!({"stream": k, "trim": {"maxlen": 10}}));
    let mut p = open_one(&cfg, &ctx(false));
    let (_, _) = poll_n(p.as_mut(), 1000, 1000);
    p.on_committed(&p.position()).unwrap();
    assert_eq!(pending(&mut c, &k, "weir"), 0);
    let len = xlen(&mut c, &k);
    // `~` trims whole stream nodes (100 entries by default), never below the limit.
    assert!((10..=200).contains(&len), "XLEN {len}");
}

#[test]
fn group_creation_earliest_and_latest() {
    let mut c = conn();
    // MKSTREAM: neither stream nor group exist yet.
    let k = key("mkstream");
    let mut p = open_one(&config(serde_json::json!({"stream": k})), &ctx(false));
    assert_nothing_more(p.as_mut());
    let exists: bool = c.exists(&k).unwrap();
    assert!(exists);
    add_json(&mut c, &k, [1]);
    assert_eq!(values(&poll_n(p.as_mut(), 1, 10).0), [1]);

    let earliest = key("earliest");
    add_json(&mut c, &earliest, 1..=2);
    let cfg = config(serde_json::json!({"stream": earliest, "start": "earliest", "group": "g"}));
    let mut p = open_one(&cfg, &ctx(false));
    assert_eq!(values(&poll_n(p.as_mut(), 2, 10).0), [1, 2]);

    let latest = key("latest");
    add_json(&mut c, &latest, 1..=2);
    let cfg = config(serde_json::json!({"stream": latest, "start": "latest", "group": "g"}));
    let mut p = open_one(&cfg, &ctx(false));
    assert_nothing_more(p.as_mut());
    add_json(&mut c, &latest, [3]);
    assert_eq!(values(&poll_n(p.as_mut(), 1, 10).0), [3]);
    // An existing group is used as it is: `start` only applies to creating it.
    let cfg = config(serde_json::json!({"stream": latest, "start": "earliest", "group": "g"}));
    let mut again = open_one(&cfg, &ctx(false));
    p.on_committed(&p.position()).unwrap();
    assert_nothing_more(again.as_mut());
}

#[test]
fn sharded_partitions_have_stable_ids_consumers_and_selection() {
    let k = key("sharded");
    let cfg = config(serde_json::json!({"stream": k, "shards": 3}));
    assert_eq!(cfg.partition_count(), 3);
    let all = open_all(&cfg, &ctx(false));
    let ids: Vec<_> = all.iter().map(|p| p.id().to_owned()).collect();
    assert_eq!(
        ids,
        [
            format!("redis:{k}:{{0}}"),
            format!("redis:{k}:{{1}}"),
            format!("redis:{k}:{{2}}")
        ]
    );
    let mut some = open_redis_streams(
        "events",
        &cfg,
        &ctx(false),
        &PartitionSelection::Only(vec![2, 1]),
    )
    .unwrap();
    let ids: Vec<_> = some.iter().map(|p| p.id().to_owned()).collect();
    assert_eq!(
        ids,
        [format!("redis:{k}:{{1}}"), format!("redis:{k}:{{2}}")]
    );

    let mut c = conn();
    add_json(&mut c, &format!("{k}:{{1}}"), [10]);
    add_json(&mut c, &format!("{k}:{{2}}"), [20, 21]);
    assert_eq!(values(&poll_n(some[0].as_mut(), 1, 10).0), [10]);
    assert_eq!(values(&poll_n(some[1].as_mut(), 2, 10).0), [20, 21]);
    // Each partition reads as the consumer named after it, whichever process runs it.
    let consumers: redis::streams::StreamInfoConsumersReply =
        c.xinfo_consumers(format!("{k}:{{2}}"), "weir").unwrap();
    let names: Vec<_> = consumers.consumers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["weir-2"]);
}

#[test]
fn shared_mode_claims_entries_of_a_dead_consumer() {
    let k = key("shared");
    let mut c = conn();
    add_json(&mut c, &k, 1..=4);
    let _: () = c.xgroup_create(&k, "g", "0").unwrap();
    // A consumer reads everything and dies without acknowledging.
    let opts = redis::streams::StreamReadOptions::default()
        .group("g", "dead")
        .count(10);
    let _: redis::streams::StreamReadReply = c.xread_options(&[&k], &[">"], &opts).unwrap();
    assert_eq!(pending(&mut c, &k, "g"), 4);

    let cfg = config(serde_json::json!({
        "stream": k, "group": "g", "shared": true, "consumer": "alive", "claim_idle": 1000
    }));
    let mut p = open_one(&cfg, &ctx(false));
    assert_eq!(p.id(), format!("redis:{k}"));
    // Not idle long enough yet: nothing is claimed.
    assert_nothing_more(p.as_mut());
    std::thread::sleep(Duration::from_millis(1100));
    let (batch, _) = poll_n(p.as_mut(), 4, 100);
    assert_eq!(values(&batch), [1, 2, 3, 4]);
    add_json(&mut c, &k, [5]);
    assert_eq!(values(&poll_n(p.as_mut(), 1, 100).0), [5]);
    // Its own entries pending beyond `claim_idle` (a slow commit) are claimed again but not
    // returned twice.
    std::thread::sleep(Duration::from_millis(1100));
    assert_nothing_more(p.as_mut());
    let owners: redis::streams::StreamPendingReply = c.xpending(&k, "g").unwrap();
    match owners {
        redis::streams::StreamPendingReply::Data(data) => {
            assert_eq!(data.count, 5);
            let names: Vec<_> = data.consumers.iter().map(|c| c.name.clone()).collect();
            assert_eq!(names, ["alive"]);
        }
        other => panic!("{other:?}"),
    }
    p.on_committed(&p.position()).unwrap();
    assert_eq!(pending(&mut c, &k, "g"), 0);
}

#[test]
fn reconnects_and_rereads_what_a_lost_reply_delivered() {
    // Database 9 holds only this test's clients, so killing them disturbs no other test.
    let url = redis_url_db(9);
    let k = key("reconnect");
    let mut c = conn_to(&url);
    add_json(&mut c, &k, 1..=3);
    let options = serde_json::json!({"url": url, "stream": k});
    let cfg =
        RedisStreamsConfig::from_options("sources.events", options.as_object().unwrap()).unwrap();
    let mut p = open_one(&cfg, &ctx(false));
    assert_eq!(values(&poll_n(p.as_mut(), 2, 2).0), [1, 2]);
    // Entry 3 is delivered to the partition's consumer, but the reply never reaches it.
    let opts = redis::streams::StreamReadOptions::default()
        .group("weir", "weir-0")
        .count(1);
    let _: redis::streams::StreamReadReply = c.xread_options(&[&k], &[">"], &opts).unwrap();
    let me: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    for line in list.lines().filter(|l| l.contains(" db=9 ")) {
        let id: i64 = line
            .split(' ')
            .find_map(|f| f.strip_prefix("id="))
            .unwrap()
            .parse()
            .unwrap();
        if id != me {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query(&mut c)
                .unwrap();
        }
    }
    add_json(&mut c, &k, [4]);
    let (batch, retried) = poll_n(p.as_mut(), 2, 10);
    assert!(retried > 0, "the lost connection was not noticed");
    assert_eq!(values(&batch), [3, 4]);

    // The group vanishes (deleted, or lost in a server restart without persistence): it is
    // created again at the last entry read, so entries added meanwhile are not skipped and
    // earlier ones not repeated.
    let _: () = c.xgroup_destroy(&k, "weir").unwrap();
    add_json(&mut c, &k, [5]);
    let mut batch = SourceBatch::default();
    assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Idle);
    add_json(&mut c, &k, [6]);
    assert_eq!(values(&poll_n(p.as_mut(), 2, 10).0), [5, 6]);
    assert_nothing_more(p.as_mut());
}

#[test]
fn an_unreachable_server_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = serde_json::json!({"url": format!("redis://127.0.0.1:{port}"), "stream": "s"});
    let cfg =
        RedisStreamsConfig::from_options("sources.events", options.as_object().unwrap()).unwrap();
    let mut p = open_one(&cfg, &ctx(false));
    let err = p.poll(&mut SourceBatch::default(), 10).unwrap_err();
    assert!(matches!(err, SourceError::Retryable(_)), "{err}");
    assert!(matches!(p.seek(b"not-an-id"), Err(SourceError::Fatal(_))));
}

#[test]
fn config_errors_carry_their_yaml_path() {
    let check = |options: serde_json::Value| {
        let mut issues =
            RedisStreamsConfig::from_options("sources.events", options.as_object().unwrap())
                .unwrap_err();
        issues.sort_by(|a, b| a.path.cmp(&b.path));
        issues
    };
    let url = "redis://127.0.0.1:6379";
    let issues = check(serde_json::json!({"url": url, "stream": "s", "block_ms": 500}));
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].path, "sources.events.block_ms");
    let issues = check(serde_json::json!({"url": url, "stream": "s", "batch": "many"}));
    assert_eq!(issues[0].path, "sources.events.batch");
    let issues = check(serde_json::json!({"url": url, "stream": "s", "format": "xml"}));
    assert_eq!(issues[0].path, "sources.events.format");
    let issues = check(serde_json::json!({"url": url, "stream": "s", "trim": {"maxlen": "x"}}));
    assert_eq!(issues[0].path, "sources.events.trim.maxlen");
    let issues = check(serde_json::json!({"url": url, "stream": "s", "strem": "t"}));
    assert!(
        issues[0].message.contains("unknown field `strem`"),
        "{:?}",
        issues
    );
    let issues = check(serde_json::json!({"url": url}));
    assert!(issues[0].message.contains("stream"), "{:?}", issues);
    let issues = check(serde_json::json!({
        "url": "not a url", "stream": "", "shards": 0, "shared": true, "claim_idle": 0,
        "trim": {"maxlen": 5, "acked": true}
    }));
    let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sources.events.claim_idle",
            "sources.events.shards",
            "sources.events.shared",
            "sources.events.stream",
            "sources.events.trim",
            "sources.events.url"
        ]
    );
    let issues = check(serde_json::json!({"url": url, "stream": "s", "consumer": "me"}));
    assert_eq!(issues[0].path, "sources.events.consumer");
}

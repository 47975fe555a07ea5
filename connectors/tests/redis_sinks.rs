//! The Redis sinks against a real `redis-server`: data as `redis-cli` reads it, idempotent and
//! fenced commits, resumption of a half-applied epoch, cluster-mode grouping, recovery checks.
//!
//! Start a server with `eval "$(scripts/services.sh start redis)"` (exports
//! `WEIR_TEST_REDIS`). Every test uses its own job name and key prefix, unique per run, so
//! tests can run in parallel and again on the same server.

#![cfg(feature = "redis")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::streams::StreamRangeReply;
use redis::Commands;
use weir_connectors::redis::sink::{
    ChunkLimits, FeedSink, FeedSinkConfig, HashSink, HashSinkConfig, LeaderboardSink,
    LeaderboardSinkConfig, StreamSink, StreamSinkConfig,
};
use weir_engine::event::{EventRecord, Key, Output, ResultSchema, Value, WindowResult};
use weir_engine::runtime::{Sink, SinkError, SinkScope};

fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_REDIS is not set. Start a test server with \
             `eval \"$(scripts/services.sh start redis)\"` (stop it with \
             `scripts/services.sh stop`)"
        )
    })
}

fn conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A name unique to this test and run: the job name and the prefix of every key.
fn unique(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("wt-{test}-{}-{nanos}", std::process::id())
}

/// Options with the test server's URL added.
fn options(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut all = json.as_object().unwrap().clone();
    all.insert("url".into(), redis_url().into());
    all
}

fn result(
    pipeline: &str,
    product: &str,
    window: (i64, i64),
    aggregates: &[(&str, serde_json::Value)],
    is_final: bool,
) -> Output {
    Output::Result(WindowResult {
        schema: Arc::new(ResultSchema {
            pipeline: pipeline.into(),
            key_fields: vec!["product".into()],
            aggregate_names: aggregates.iter().map(|(n, _)| (*n).into()).collect(),
        }),
        key: Key::from_values([Value::Str(product.into())].iter()),
        window_start: window.0,
        window_end: window.1,
        aggregates: aggregates.iter().map(|(_, v)| v.clone()).collect(),
        is_final,
    })
}

fn event(user: &str, id: &str, time: i64) -> Output {
    Output::Event(EventRecord {
        pipeline: "activity".into(),
        time,
        fields: vec![
            ("user_id".into(), Value::Str(user.into())),
            ("event_id".into(), Value::Str(id.into())),
            ("kind".into(), Value::Str("view".into())),
        ],
    })
}

/// What the runtime stages for one epoch: the outputs through two shard encoders.
fn stage(sink: &dyn Sink, outputs: &[Output]) -> Vec<u8> {
    let mut shards = [sink.encoder(), sink.encoder()];
    let mut staged = [Vec::new(), Vec::new()];
    for (i, output) in outputs.iter().enumerate() {
        shards[i % 2].encode(output, &mut staged[i % 2]);
    }
    staged.concat()
}

fn recovered<S: Sink>(sink: Result<S, SinkError>, committed: Option<u64>) -> S {
    let mut sink = sink.unwrap();
    sink.recover(committed).unwrap();
    sink
}

fn hash(conn: &mut redis::Connection, key: &str) -> BTreeMap<String, String> {
    conn.hgetall(key).unwrap()
}

fn zrevrange(conn: &mut redis::Connection, key: &str) -> Vec<(String, f64)> {
    conn.zrevrange_withscores(key, 0, -1).unwrap()
}

fn stream_data(conn: &mut redis::Connection, key: &str) -> Vec<serde_json::Value> {
    let reply: StreamRangeReply = conn.xrange_all(key).unwrap();
    reply
        .ids
        .iter()
        .map(|entry| serde_json::from_str(&entry.get::<String>("data").unwrap()).unwrap())
        .collect()
}

#[test]
fn hash_overwrite_keeps_the_latest_result_with_a_ttl() {
    let id = unique("hash-overwrite");
    let config = HashSinkConfig::from_options(
        "sinks.views",
        &options(serde_json::json!({
            "key": format!("{id}:views:{{product}}:{{window_start}}"), "ttl": "1h"
        })),
    )
    .unwrap();
    let mut sink = recovered(
        HashSink::open("views", &SinkScope::main(&id), &config),
        None,
    );
    let window = (60_000, 120_000);
    let staged = stage(
        &sink,
        &[
            result(
                "v",
                "hat",
                window,
                &[("n", 1.into()), ("avg", 2.5.into())],
                false,
            ),
            result(
                "v",
                "hat",
                window,
                &[("n", 3.into()), ("avg", 1.5.into())],
                true,
            ),
            result(
                "v",
                "cap",
                window,
                &[("n", 7.into()), ("avg", serde_json::Value::Null)],
                true,
            ),
        ],
    );
    sink.commit(1, &staged).unwrap();

    let mut c = conn();
    let hat = hash(&mut c, &format!("{id}:views:hat:60000"));
    let expected: BTreeMap<String, String> = [
        ("window_start", "60000"),
        ("window_end", "120000"),
        ("n", "3"),
        ("avg", "1.5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(hat, expected);
    let cap = hash(&mut c, &format!("{id}:views:cap:60000"));
    assert_eq!(cap.get("n").map(String::as_str), Some("7"));
    assert!(!cap.contains_key("avg"));
    let ttl: i64 = c.pttl(format!("{id}:views:hat:60000")).unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
    let fence: String = c.get(sink.fence_key(None)).unwrap();
    assert_eq!(fence, format!("1:{}", 3 + 2));
}

#[test]
fn hash_increments_are_never_doubled() {
    let id = unique("hash-increment");
    let config = HashSinkConfig::from_options(
        "sinks.totals",
        &options(
            serde_json::json!({"key": format!("{id}:total:{{product}}"), "mode": "increment"}),
        ),
    )
    .unwrap();
    let mut sink = recovered(
        HashSink::open("totals", &SinkScope::main(&id), &config),
        None,
    );
    let w1 = (0, 60_000);
    let w2 = (60_000, 120_000);
    let epoch1 = stage(
        &sink,
        &[
            result(
                "v",
                "hat",
                w1,
                &[("n", 100.into()), ("sum", 9.0.into())],
                false,
            ),
            result(
                "v",
                "hat",
                w1,
                &[("n", 3.into()), ("sum", 1.5.into())],
                true,
            ),
        ],
    );
    let epoch2 = stage(
        &sink,
        &[result(
            "v",
            "hat",
            w2,
            &[("n", 2.into()), ("sum", 2.25.into())],
            true,
        )],
    );
    // An integer after floats in the same field: HINCRBY would fail on "3.75".
    let epoch3 = stage(
        &sink,
        &[result(
            "v",
            "hat",
            (120_000, 180_000),
            &[("n", 1.into()), ("sum", 1.into())],
            true,
        )],
    );
    for (epoch, staged) in [
        (1, &epoch1),
        (1, &epoch1),
        (2, &epoch2),
        (1, &epoch1),
        (2, &epoch2),
    ] {
        sink.commit(epoch, staged).unwrap();
    }
    let mut c = conn();
    let key = format!("{id}:total:hat");
    assert_eq!(hash(&mut c, &key).get("n").map(String::as_str), Some("5"));
    assert_eq!(
        hash(&mut c, &key).get("sum").map(String::as_str),
        Some("3.75")
    );
    sink.commit(3, &epoch3).unwrap();
    sink.commit(3, &epoch3).unwrap();
    let totals = hash(&mut c, &key);
    assert_eq!(totals.get("n").map(String::as_str), Some("6"));
    assert_eq!(totals.get("sum").map(String::as_str), Some("4.75"));
    assert_eq!(totals.len(), 2, "{totals:?}");
}

#[test]
fn leaderboard_keeps_the_top_n_of_each_window() {
    let id = unique("leaderboard");
    let config = LeaderboardSinkConfig::from_options(
        "sinks.top",
        &options(serde_json::json!({
            "key": format!("{id}:top:{{pipeline}}:{{window_end}}"), "member": "{product}",
            "score": "views", "top_n": 3, "ttl": "1d"
        })),
    )
    .unwrap();
    let mut sink = recovered(
        LeaderboardSink::open("top", &SinkScope::main(&id), &config),
        None,
    );
    let w = (0, 60_000);
    let views = |product: &str, n: i64| result("shop", product, w, &[("views", n.into())], true);
    let epoch1 = stage(
        &sink,
        &[
            views("a", 5),
            views("b", 9),
            views("c", 1),
            views("d", 7),
            views("e", 3),
        ],
    );
    sink.commit(1, &epoch1).unwrap();
    let key = format!("{id}:top:shop:60000");
    let mut c = conn();
    let top = vec![("b".to_string(), 9.0), ("d".into(), 7.0), ("a".into(), 5.0)];
    assert_eq!(zrevrange(&mut c, &key), top);
    let ttl: i64 = c.pttl(&key).unwrap();
    assert!(ttl > 0, "{ttl}");

    let epoch2 = stage(&sink, &[views("e", 8)]);
    sink.commit(2, &epoch2).unwrap();
    let after = vec![("b".to_string(), 9.0), ("e".into(), 8.0), ("d".into(), 7.0)];
    assert_eq!(zrevrange(&mut c, &key), after);
    sink.commit(1, &epoch1).unwrap();
    sink.commit(2, &epoch2).unwrap();
    assert_eq!(zrevrange(&mut c, &key), after);
}

fn feed_config(id: &str, cluster: bool) -> FeedSinkConfig {
    FeedSinkConfig::from_options(
        "sinks.feeds",
        &options(serde_json::json!({
            "feed_key": format!("{id}:feed:user:{{user_id}}"), "member": "{event_id}",
            "payload_key": format!("{id}:activity:{{event_id}}"), "payload_ttl": "1h",
            "max_len": 3, "feed_ttl": "1d", "cluster": cluster
        })),
    )
    .unwrap()
}

fn feed_events() -> Vec<Output> {
    let mut events: Vec<Output> = (1..=5)
        .map(|i| event("42", &format!("e{i}"), 1000 * i))
        .collect();
    events.push(event("7", "x1", 500));
    events
}

#[test]
fn feeds_hold_the_newest_events_and_their_payloads() {
    let id = unique("feed");
    let mut sink = recovered(
        FeedSink::open("feeds", &SinkScope::main(&id), &feed_config(&id, false)),
        None,
    );
    let staged = stage(&sink, &feed_events());
    sink.commit(1, &staged).unwrap();
    sink.commit(1, &staged).unwrap();

    let mut c = conn();
    let feed = format!("{id}:feed:user:42");
    let newest = vec![
        ("e5".to_string(), 5000.0),
        ("e4".into(), 4000.0),
        ("e3".into(), 3000.0),
    ];
    assert_eq!(zrevrange(&mut c, &feed), newest);
    let page: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
        .arg(&feed)
        .arg("(5000")
        .arg("-inf")
        .arg("LIMIT")
        .arg(0)
        .arg(1)
        .query(&mut c)
        .unwrap();
    assert_eq!(page, vec!["e4"]);
    let payloads: Vec<Option<String>> = c
        .mget(vec![
            format!("{id}:activity:e5"),
            format!("{id}:activity:e1"),
        ])
        .unwrap();
    let e5: serde_json::Value = serde_json::from_str(payloads[0].as_deref().unwrap()).unwrap();
    assert_eq!(
        e5,
        serde_json::json!({"user_id": "42", "event_id": "e5", "kind": "view"})
    );
    // Trimmed members keep their payloads until the payload TTL.
    assert!(payloads[1].is_some());
    let payload_ttl: i64 = c.pttl(format!("{id}:activity:e5")).unwrap();
    assert!(payload_ttl > 0 && payload_ttl <= 3_600_000, "{payload_ttl}");
    let feed_ttl: i64 = c.pttl(&feed).unwrap();
    assert!(feed_ttl > 3_600_000, "{feed_ttl}");
    assert_eq!(
        zrevrange(&mut c, &format!("{id}:feed:user:7")),
        vec![("x1".to_string(), 500.0)]
    );
}

#[test]
fn streams_get_each_output_once() {
    let id = unique("stream");
    let config = StreamSinkConfig::from_options(
        "sinks.bridge",
        &options(serde_json::json!({"stream": format!("{id}:{{pipeline}}"), "maxlen": 1000})),
    )
    .unwrap();
    let mut sink = recovered(
        StreamSink::open("bridge", &SinkScope::main(&id), &config),
        None,
    );
    let epoch1 = stage(&sink, &[event("1", "a", 1), event("2", "b", 2)]);
    let epoch2 = stage(&sink, &[event("3", "c", 3)]);
    for (epoch, staged) in [(1, &epoch1), (2, &epoch2), (2, &epoch2), (1, &epoch1)] {
        sink.commit(epoch, staged).unwrap();
    }
    let mut c = conn();
    let data = stream_data(&mut c, &format!("{id}:activity"));
    let ids: Vec<_> = data.iter().map(|d| d["event_id"].clone()).collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    assert_eq!(data[0]["kind"], "view");

    let fields = StreamSinkConfig::from_options(
        "sinks.bridge",
        &options(serde_json::json!({"stream": format!("{id}:fields"), "format": "fields"})),
    )
    .unwrap();
    let mut sink = recovered(
        StreamSink::open("fields", &SinkScope::main(&id), &fields),
        None,
    );
    let staged = stage(
        &sink,
        &[result("v", "hat", (0, 60_000), &[("n", 4.into())], true)],
    );
    sink.commit(1, &staged).unwrap();
    let reply: StreamRangeReply = c.xrange_all(format!("{id}:fields")).unwrap();
    assert_eq!(reply.ids.len(), 1);
    let entry = &reply.ids[0];
    assert_eq!(entry.get::<String>("product").as_deref(), Some("hat"));
    assert_eq!(entry.get::<String>("n").as_deref(), Some("4"));
    assert_eq!(entry.get::<String>("window_end").as_deref(), Some("60000"));
    assert_eq!(entry.get::<String>("is_final").as_deref(), Some("true"));
}

/// A commit that fails after some chunks landed (a key of the wrong type stops chunk 3), then
/// a re-commit after a "restart" with other chunk limits: every increment and stream entry
/// lands exactly once.
#[test]
fn a_half_applied_epoch_resumes_where_it_stopped() {
    let id = unique("resume");
    let scope = SinkScope::main(&id);
    let config = HashSinkConfig::from_options(
        "sinks.totals",
        &options(
            serde_json::json!({"key": format!("{id}:total:{{product}}"), "mode": "increment"}),
        ),
    )
    .unwrap();
    let small = ChunkLimits {
        max_ops: 2,
        max_bytes: 1 << 20,
    };
    let mut sink =
        recovered(HashSink::open("totals", &scope, &config), None).with_chunk_limits(small);
    let products = ["p0", "p1", "p2", "p3", "p4", "p5", "p0"];
    let outputs: Vec<Output> = products
        .iter()
        .enumerate()
        .map(|(i, p)| result("v", p, (0, 1), &[("n", (i as i64 + 1).into())], true))
        .collect();
    let staged = stage(&sink, &outputs);
    // Staging alternates shards: the epoch's op order is shard 0's outputs, then shard 1's.
    let order = [0, 2, 4, 6, 1, 3, 5];
    let mut c = conn();
    let blocker = format!("{id}:total:{}", products[order[4]]);
    let _: () = c.set(&blocker, "not a hash").unwrap();
    assert!(matches!(sink.commit(1, &staged), Err(SinkError::Fatal(_))));
    let fence: String = c.get(sink.fence_key(None)).unwrap();
    assert_eq!(fence, "1:4");

    let _: () = c.del(&blocker).unwrap();
    let mut restarted = recovered(HashSink::open("totals", &scope, &config), None);
    restarted.commit(1, &staged).unwrap();
    restarted.commit(1, &staged).unwrap();
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, p) in products.iter().enumerate() {
        *expected.entry(p).or_default() += i as i64 + 1;
    }
    for (p, total) in expected {
        let got: i64 = c.hget(format!("{id}:total:{p}"), "n").unwrap();
        assert_eq!(got, total, "{p}");
    }

    // The same with stream entries, one operation per chunk.
    let config = StreamSinkConfig::from_options(
        "sinks.bridge",
        &options(serde_json::json!({"stream": format!("{id}:s:{{user_id}}")})),
    )
    .unwrap();
    let one = ChunkLimits {
        max_ops: 1,
        max_bytes: 1 << 20,
    };
    let mut sink =
        recovered(StreamSink::open("bridge", &scope, &config), None).with_chunk_limits(one);
    let staged = stage(
        &sink,
        &[
            event("a", "1", 1),
            event("c", "2", 2),
            event("b", "3", 3),
            event("a", "4", 4),
        ],
    );
    // Shard 0: a/1, b/3; shard 1: c/2, a/4. The third operation (c/2) meets the blocker.
    let _: () = c.set(format!("{id}:s:c"), "x").unwrap();
    assert!(sink.commit(1, &staged).is_err());
    let _: () = c.del(format!("{id}:s:c")).unwrap();
    let mut restarted = recovered(StreamSink::open("bridge", &scope, &config), None);
    restarted.commit(1, &staged).unwrap();
    let ids = |c: &mut redis::Connection, user: &str| -> Vec<String> {
        stream_data(c, &format!("{id}:s:{user}"))
            .iter()
            .map(|d| d["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&mut c, "a"), vec!["1", "4"]);
    assert_eq!(ids(&mut c, "b"), vec!["3"]);
    assert_eq!(ids(&mut c, "c"), vec!["2"]);
}

/// Everything a feed sink wrote under `id`, with `id` taken out of the keys.
fn feed_snapshot(c: &mut redis::Connection, id: &str) -> BTreeMap<String, String> {
    let keys: Vec<String> = c.keys(format!("{id}:*")).unwrap();
    keys.into_iter()
        .map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(c).unwrap();
            let value = match kind.as_str() {
                "zset" => format!("{:?}", zrevrange(c, &key)),
                _ => c.get::<_, String>(&key).unwrap(),
            };
            (key.replacen(id, "ID", 1), value.replace(id, "ID"))
        })
        .collect()
}

#[test]
fn cluster_mode_fences_each_slot_and_writes_the_same_data() {
    let plain = unique("cluster-off");
    let clustered = unique("cluster-on");
    let mut c = conn();
    for (id, cluster) in [(&plain, false), (&clustered, true)] {
        let mut sink = recovered(
            FeedSink::open("feeds", &SinkScope::main(id), &feed_config(id, cluster)),
            None,
        )
        .with_chunk_limits(ChunkLimits {
            max_ops: 3,
            max_bytes: 1 << 20,
        });
        let staged = stage(&sink, &feed_events());
        sink.commit(1, &staged).unwrap();
        sink.commit(1, &staged).unwrap();
    }
    assert_eq!(
        feed_snapshot(&mut c, &plain),
        feed_snapshot(&mut c, &clustered)
    );

    let data_keys: Vec<String> = c.keys(format!("{clustered}:*")).unwrap();
    let slots: BTreeSet<u16> = data_keys
        .iter()
        .map(|k| weir_connectors::redis::slot::key_slot(k.as_bytes()))
        .collect();
    let fences: Vec<String> = c
        .keys(format!("weir-fence:*:{clustered}:feeds:main"))
        .unwrap();
    let fenced_slots: BTreeSet<u16> = fences
        .iter()
        .map(|k| weir_connectors::redis::slot::key_slot(k.as_bytes()))
        .collect();
    assert!(
        slots.len() > 1,
        "the keys should spread over slots: {slots:?}"
    );
    assert_eq!(fences.len(), slots.len());
    assert_eq!(fenced_slots, slots);
    let plain_fence: Option<String> = c.get(format!("weir-fence:{clustered}:feeds:main")).unwrap();
    assert_eq!(plain_fence, None);
}

#[test]
fn recover_refuses_a_fence_ahead_of_the_checkpoints() {
    let id = unique("stale");
    let config = StreamSinkConfig::from_options(
        "sinks.bridge",
        &options(serde_json::json!({"stream": format!("{id}:s")})),
    )
    .unwrap();
    let scope = SinkScope::main(&id);
    let mut sink = recovered(StreamSink::open("bridge", &scope, &config), None);
    let staged = stage(&sink, &[event("1", "a", 1)]);
    sink.commit(5, &staged).unwrap();

    let mut fresh = StreamSink::open("bridge", &scope, &config).unwrap();
    match fresh.recover(Some(3)) {
        Err(SinkError::Fatal(message)) => {
            assert!(message.contains(&sink.fence_key(None)), "{message}")
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
    // Epoch 5 may be the one being re-committed after epoch 4.
    fresh.recover(Some(4)).unwrap();
    fresh.recover(Some(5)).unwrap();
}

#[test]
fn an_unreachable_server_is_a_retryable_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut options = serde_json::Map::new();
    options.insert("url".into(), format!("redis://127.0.0.1:{port}").into());
    options.insert("stream".into(), "s".into());
    let config = StreamSinkConfig::from_options("sinks.bridge", &options).unwrap();
    let mut sink = StreamSink::open("bridge", &SinkScope::main("j"), &config).unwrap();
    assert!(matches!(sink.recover(None), Err(SinkError::Retryable(_))));
    let staged = stage(&sink, &[event("1", "a", 1)]);
    assert!(matches!(
        sink.commit(1, &staged),
        Err(SinkError::Retryable(_))
    ));
}

#[test]
fn outputs_missing_a_placeholder_are_skipped_and_counted() {
    let id = unique("skip");
    let config = LeaderboardSinkConfig::from_options(
        "sinks.top",
        &options(serde_json::json!({
            "key": format!("{id}:top:{{region}}"), "member": "{product}", "score": "views"
        })),
    )
    .unwrap();
    let mut sink = recovered(
        LeaderboardSink::open("top", &SinkScope::main(&id), &config),
        None,
    );
    let staged = stage(
        &sink,
        &[
            result("v", "hat", (0, 1), &[("views", 1.into())], true),
            event("1", "a", 1),
        ],
    );
    assert!(staged.is_empty());
    assert_eq!(sink.skipped(), 2);
    sink.commit(1, &staged).unwrap();
    let keys: Vec<String> = conn().keys(format!("*{id}*")).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn config_errors_carry_yaml_paths() {
    let bad = |json: serde_json::Value| options(json);
    let issues = FeedSinkConfig::from_options(
        "sinks.feeds",
        &bad(serde_json::json!({"feed_key": "feed:{user", "member": "m"})),
    )
    .unwrap_err();
    assert_eq!(issues[0].path, "sinks.feeds.feed_key");
    let issues = HashSinkConfig::from_options(
        "sinks.views",
        &bad(serde_json::json!({"key": "k", "ttl": 60})),
    )
    .unwrap_err();
    assert_eq!(issues[0].path, "sinks.views.ttl");
    let issues = LeaderboardSinkConfig::from_options(
        "sinks.top",
        &bad(serde_json::json!({"key": "k", "member": "m", "score": "n", "top_n": -1})),
    )
    .unwrap_err();
    assert_eq!(issues[0].path, "sinks.top.top_n");
    let mut no_url = serde_json::Map::new();
    no_url.insert("url".into(), "localhost:6379".into());
    no_url.insert("stream".into(), "s".into());
    let issues = StreamSinkConfig::from_options("sinks.bridge", &no_url).unwrap_err();
    assert_eq!(issues[0].path, "sinks.bridge.url");
}

//! The MongoDB sink against a real MongoDB-wire server.
//!
//! Start one with `eval "$(scripts/services.sh start mongodb)"` (exports `WEIR_TEST_MONGODB`);
//! every test uses its own database, dropped when the test starts.

#![cfg(feature = "mongodb")]

use std::sync::Arc;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::sync::{Client, Database};
use weir_connectors::mongodb::{MongoSink, MongoSinkConfig};
use weir_engine::event::{EventRecord, Key, Output, ResultSchema, Timestamp, Value, WindowResult};
use weir_engine::runtime::{Sink, SinkError, SinkScope};

fn mongodb_uri() -> String {
    std::env::var("WEIR_TEST_MONGODB").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_MONGODB is not set. Start a test server with \
             `eval \"$(scripts/services.sh start mongodb)\"` (stop it with \
             `scripts/services.sh stop`)"
        )
    })
}

/// A fresh database for one test.
fn fresh_db(test: &str) -> (Client, Database, String) {
    let client = Client::with_uri_str(mongodb_uri()).unwrap();
    let name = format!("weir_{test}_{}", std::process::id());
    let db = client.database(&name);
    db.drop().run().unwrap();
    (client, db, name)
}

fn config(db: &str, extra: serde_json::Value) -> MongoSinkConfig {
    let mut options = serde_json::json!({
        "uri": mongodb_uri(),
        "database": db,
        "collection": "out",
    });
    let (serde_json::Value::Object(base), serde_json::Value::Object(extra)) = (&mut options, extra)
    else {
        panic!("options must be objects")
    };
    base.extend(extra);
    MongoSinkConfig::from_options("sinks.out", base).unwrap()
}

fn open(config: &MongoSinkConfig, task: &str) -> MongoSink {
    let scope = SinkScope {
        job: "job".into(),
        task: task.into(),
    };
    MongoSink::open("out", &scope, config).unwrap()
}

/// Stages `outputs` as two shards would (alternating), concatenated in shard order.
fn stage(sink: &MongoSink, outputs: &[Output]) -> Vec<u8> {
    let mut shards = [Vec::new(), Vec::new()];
    let mut encoders = [sink.encoder(), sink.encoder()];
    for (i, output) in outputs.iter().enumerate() {
        encoders[i % 2].encode(output, &mut shards[i % 2]);
    }
    shards.concat()
}

fn result(user: &str, end: Timestamp, n: i64, is_final: bool) -> Output {
    Output::Result(WindowResult {
        schema: Arc::new(ResultSchema {
            pipeline: "per_user".into(),
            key_fields: vec!["user".into()],
            aggregate_names: vec!["n".into(), "avg".into()],
        }),
        key: Key::from_values(&[Value::Str(user.into())]),
        window_start: end - 60_000,
        window_end: end,
        aggregates: vec![serde_json::json!(n), serde_json::json!(n as f64 / 2.0)],
        is_final,
    })
}

fn event(user: &str, event_type: &str, amount: f64, time: Timestamp) -> Output {
    Output::Event(EventRecord {
        pipeline: "raw".into(),
        time,
        fields: vec![
            ("user".into(), Value::Str(user.into())),
            ("event_type".into(), Value::Str(event_type.into())),
            ("amount".into(), Value::Float(amount)),
        ],
    })
}

fn all(db: &Database, collection: &str, filter: Document) -> Vec<Document> {
    db.collection::<Document>(collection)
        .find(filter)
        .sort(doc! {"ts": 1, "_id": 1})
        .run()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn count(db: &Database) -> u64 {
    db.collection::<Document>("out")
        .count_documents(doc! {})
        .run()
        .unwrap()
}

fn collection_info(db: &Database, name: &str) -> Document {
    let reply = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": name}})
        .run()
        .unwrap();
    reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .first()
        .and_then(Bson::as_document)
        .cloned()
        .unwrap_or_else(|| panic!("collection {name} does not exist"))
}

fn fence(db: &Database, task: &str) -> Option<i64> {
    db.collection::<Document>("weir_fences")
        .find_one(doc! {"_id": format!("job/out/{task}")})
        .run()
        .unwrap()
        .map(|d| d.get_i64("epoch").unwrap())
}

/// Each index's fields and directions, in order.
fn index_keys(db: &Database, collection: &str) -> Vec<Vec<(String, i64)>> {
    db.collection::<Document>(collection)
        .list_indexes()
        .run()
        .unwrap()
        .map(|index| {
            index
                .unwrap()
                .keys
                .iter()
                .map(|(field, direction)| (field.clone(), as_i64(Some(direction))))
                .collect()
        })
        .collect()
}

fn as_i64(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Double(f)) => *f as i64,
        other => panic!("not a number: {other:?}"),
    }
}

#[test]
fn timeseries_collection_is_created_with_its_options_and_indexes() {
    let (_client, db, name) = fresh_db("ts_create");
    let config = config(
        &name,
        serde_json::json!({
            "mode": "timeseries",
            "timeseries": {"granularity": "minutes", "expire_after": "2d"},
            "indexes": [{"keys": {"meta.user": 1, "ts": -1}}],
        }),
    );
    let mut sink = open(&config, "main");
    sink.recover(None).unwrap();

    let info = collection_info(&db, "out");
    assert_eq!(info.get_str("type").unwrap(), "timeseries", "{info}");
    let options = info.get_document("options").unwrap();
    let ts = options.get_document("timeseries").unwrap();
    assert_eq!(ts.get_str("timeField").unwrap(), "ts");
    assert_eq!(ts.get_str("metaField").unwrap(), "meta");
    assert_eq!(ts.get_str("granularity").unwrap(), "minutes");
    assert_eq!(as_i64(options.get("expireAfterSeconds")), 172_800);

    let keys = index_keys(&db, "out");
    assert!(
        keys.contains(&vec![("meta.user".to_string(), 1), ("ts".to_string(), -1)]),
        "{keys:?}"
    );

    // A second start finds the collection as configured and changes nothing.
    let mut again = open(&config, "main");
    again.recover(None).unwrap();
}

#[test]
fn an_existing_collection_with_other_options_is_a_clear_error() {
    let (_client, db, name) = fresh_db("ts_mismatch");
    db.run_command(doc! {
        "create": "out",
        "timeseries": {"timeField": "time", "metaField": "meta", "granularity": "hours"},
    })
    .run()
    .unwrap();
    let config = config(
        &name,
        serde_json::json!({"mode": "timeseries", "timeseries": {"granularity": "minutes"}}),
    );
    let mut sink = open(&config, "main");
    let err = sink.recover(None).unwrap_err();
    let SinkError::Fatal(message) = &err else {
        panic!("expected a fatal error, got {err}")
    };
    assert!(
        message.contains("sinks.out.timeseries.granularity"),
        "{message}"
    );
    assert!(message.contains("`hours`"), "{message}");
    assert!(
        message.contains("sinks.out.timeseries.time_field"),
        "{message}"
    );
    assert!(
        !message.contains("sinks.out.timeseries.meta_field"),
        "{message}"
    );

    // A rollup cannot go into that time-series collection either.
    let rollup = config_rollup(&name, None);
    let err = open(&rollup, "main").recover(None).unwrap_err().to_string();
    assert!(err.contains("sinks.out.mode"), "{err}");
    assert!(err.contains("time-series"), "{err}");
}

#[test]
fn result_documents_as_a_driver_reads_them() {
    let (_client, db, name) = fresh_db("ts_shape");
    let config = config(&name, serde_json::json!({"mode": "timeseries"}));
    let mut sink = open(&config, "main");
    sink.recover(None).unwrap();
    let staged = stage(
        &sink,
        &[
            result("u1", 120_000, 4, true),
            result("u2", 120_000, 3, false),
        ],
    );
    sink.commit(1, &staged).unwrap();

    let docs = all(&db, "out", doc! {"meta.user": "u1"});
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(
        d.get_datetime("ts").unwrap(),
        &DateTime::from_millis(120_000)
    );
    assert_eq!(
        d.get_datetime("window_start").unwrap(),
        &DateTime::from_millis(60_000)
    );
    assert_eq!(as_i64(d.get("n")), 4);
    assert_eq!(d.get_f64("avg").unwrap(), 2.0);
    assert!(d.get_bool("is_final").unwrap());
    assert_eq!(
        d.get_document("meta").unwrap(),
        &doc! {
            "user": "u1",
            "pipeline": "per_user",
            "weir": {"job": "job", "sink": "out", "task": "main", "epoch": 1_i64},
        }
    );
    assert!(d.get_object_id("_id").is_ok());
    let u2 = all(&db, "out", doc! {"meta.user": "u2"});
    assert!(!u2[0].get_bool("is_final").unwrap());
    // The fence trails by one epoch: it moves to 1 alongside epoch 2's insert.
    assert_eq!(fence(&db, "main"), Some(0));
}

#[test]
fn events_documents_in_an_ordinary_and_a_time_series_collection() {
    let (_client, db, name) = fresh_db("events");
    let plain = config(
        &name,
        serde_json::json!({"mode": "events", "meta_fields": ["user"]}),
    );
    let mut sink = open(&plain, "main");
    sink.recover(None).unwrap();
    sink.commit(1, &stage(&sink, &[event("u1", "view", 2.5, 1_000)]))
        .unwrap();
    assert_eq!(
        collection_info(&db, "out").get_str("type").unwrap(),
        "collection"
    );
    let docs = all(&db, "out", doc! {});
    let mut d = docs[0].clone();
    d.remove("_id");
    assert_eq!(
        d,
        doc! {
            "ts": DateTime::from_millis(1_000),
            "meta": {
                "pipeline": "raw",
                "user": "u1",
                "weir": {"job": "job", "sink": "out", "task": "main", "epoch": 1_i64},
            },
            "event_type": "view",
            "amount": 2.5,
        }
    );

    let mut series = config(
        &name,
        serde_json::json!({
            "mode": "events",
            "timeseries": {"time_field": "at", "meta_field": "m"},
        }),
    );
    series.collection = "clicks".into();
    let mut sink = open(&series, "main");
    sink.recover(None).unwrap();
    sink.commit(1, &stage(&sink, &[event("u1", "view", 1.0, 5_000)]))
        .unwrap();
    let info = collection_info(&db, "clicks");
    assert_eq!(info.get_str("type").unwrap(), "timeseries");
    let docs: Vec<Document> = db
        .collection::<Document>("clicks")
        .find(doc! {"m.weir.epoch": 1_i64})
        .run()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0].get_datetime("at").unwrap(),
        &DateTime::from_millis(5_000)
    );
    assert_eq!(docs[0].get_str("user").unwrap(), "u1");
}

#[test]
fn commits_are_idempotent_and_fenced() {
    let (_client, db, name) = fresh_db("idempotent");
    let config = config(&name, serde_json::json!({"mode": "timeseries"}));
    let mut sink = open(&config, "main");
    sink.recover(None).unwrap();
    let e1 = stage(
        &sink,
        &[result("u1", 60_000, 1, true), result("u2", 60_000, 2, true)],
    );
    let e2 = stage(&sink, &[result("u1", 120_000, 3, true)]);
    sink.commit(1, &e1).unwrap();
    sink.commit(1, &e1).unwrap();
    assert_eq!(count(&db), 2);
    sink.commit(2, &e2).unwrap();
    sink.commit(1, &e1).unwrap();
    assert_eq!(count(&db), 3);
    // The fence trails by one epoch: epoch 1's fence write ran alongside epoch 2's insert.
    assert_eq!(fence(&db, "main"), Some(1));

    // A restart that confirmed epoch 2: its re-commit changes nothing.
    let mut sink = open(&config, "main");
    sink.recover(Some(2)).unwrap();
    sink.commit(2, &e2).unwrap();
    assert_eq!(count(&db), 3);

    // Another task of the same job and sink has its own fence.
    let mut other = open(&config, "p1");
    other.recover(None).unwrap();
    other.commit(1, &e1).unwrap();
    assert_eq!(count(&db), 5);
    assert_eq!(fence(&db, "p1"), Some(0));
    assert_eq!(fence(&db, "main"), Some(2));
}

#[test]
fn a_taken_over_sink_stops_at_its_next_fence_write() {
    let (_client, db, name) = fresh_db("takeover");
    let config = config(&name, serde_json::json!({"mode": "timeseries"}));
    let encoder = open(&config, "p0");
    let e = |n: i64| stage(&encoder, &[result("u1", 60_000 * n, n, true)]);
    let mut old = open(&config, "p0");
    old.recover(None).unwrap();
    old.commit(1, &e(1)).unwrap();

    // A new owner recovers from committed epoch 1 and claims the fence.
    let mut new = open(&config, "p0");
    new.recover(Some(1)).unwrap();

    // The old owner's next commit writes epoch 1's fence alongside its insert, finds the fence
    // claimed and fails fatally; its insert of epoch 2 landed all the same.
    let err = old.commit(2, &e(2)).unwrap_err();
    assert!(matches!(err, SinkError::Fatal(_)), "{err}");
    assert!(
        err.to_string().contains("claimed by another process"),
        "{err}"
    );
    let epoch_2 = || {
        all(
            &db,
            "out",
            doc! {"meta.weir.task": "p0", "meta.weir.epoch": 2_i64},
        )
    };
    assert_eq!(epoch_2().len(), 1);

    // The new owner's first commit removes what the old one left of that epoch: no duplicate.
    new.commit(2, &e(2)).unwrap();
    assert_eq!(epoch_2().len(), 1, "{:?}", epoch_2());
    new.commit(3, &e(3)).unwrap();
    assert_eq!(fence(&db, "p0"), Some(2));
    assert_eq!(count(&db), 3);
}

#[test]
fn recover_removes_what_an_unconfirmed_epoch_left() {
    let (_client, db, name) = fresh_db("recover");
    let config = config(&name, serde_json::json!({"mode": "timeseries"}));
    let mut sink = open(&config, "main");
    sink.recover(None).unwrap();
    let e1 = stage(&sink, &[result("u1", 60_000, 1, true)]);
    let e2 = stage(
        &sink,
        &[
            result("u1", 120_000, 2, true),
            result("u2", 120_000, 5, true),
        ],
    );
    sink.commit(1, &e1).unwrap();

    // A crash in the middle of epoch 2: one of its documents landed, the fence did not move.
    // Another task's document of epoch 2 is not ours to remove.
    let out = db.collection::<Document>("out");
    let leftover = |task: &str| {
        doc! {
            "ts": DateTime::from_millis(120_000),
            "meta": {
                "user": "u1", "pipeline": "per_user",
                "weir": {"job": "job", "sink": "out", "task": task, "epoch": 2_i64},
            },
            "n": 2_i64,
        }
    };
    out.insert_many([leftover("main"), leftover("p9")])
        .run()
        .unwrap();
    assert_eq!(count(&db), 3);

    let mut sink = open(&config, "main");
    sink.recover(Some(1)).unwrap();
    assert_eq!(count(&db), 2, "{:?}", all(&db, "out", doc! {}));
    assert_eq!(all(&db, "out", doc! {"meta.weir.task": "p9"}).len(), 1);
    sink.commit(2, &e2).unwrap();
    assert_eq!(all(&db, "out", doc! {"meta.weir.task": "main"}).len(), 3);

    // Epoch 2 fully committed but not confirmed by the engine: recovery rolls the sink back
    // to epoch 1 and the re-commit restores it, once.
    let mut sink = open(&config, "main");
    sink.recover(Some(1)).unwrap();
    assert_eq!(fence(&db, "main"), Some(1));
    assert_eq!(all(&db, "out", doc! {"meta.weir.task": "main"}).len(), 1);
    sink.commit(2, &e2).unwrap();
    sink.commit(2, &e2).unwrap();
    assert_eq!(all(&db, "out", doc! {"meta.weir.task": "main"}).len(), 3);

    // A state that is older than the sink by more than one epoch was replaced: refused. (The
    // fence trails by one epoch, so it reads 3 after epoch 4.)
    sink.commit(3, &e1).unwrap();
    sink.commit(4, &e1).unwrap();
    let err = open(&config, "main").recover(Some(1)).unwrap_err();
    assert!(matches!(err, SinkError::Fatal(_)), "{err}");
    assert!(
        err.to_string().contains("state directory replaced"),
        "{err}"
    );
}

fn config_rollup(db: &str, latest: Option<u32>) -> MongoSinkConfig {
    let mut extra = serde_json::json!({
        "mode": "rollup",
        "entity_field": "user",
        "counters": {"counts": "event_type"},
        "sum_fields": ["amount"],
        "indexes": [{"keys": {"day": 1}}],
    });
    if let Some(n) = latest {
        extra["latest"] = n.into();
    }
    config(db, extra)
}

const DAY: i64 = 86_400_000;

#[test]
fn rollup_counts_sums_and_keeps_the_latest_once() {
    let (_client, db, name) = fresh_db("rollup");
    let config = config_rollup(&name, Some(2));
    let mut sink = open(&config, "main");
    sink.recover(None).unwrap();
    let e1 = stage(
        &sink,
        &[
            event("u1", "view", 1.0, 1_000),
            event("u1", "view", 2.0, 3_000),
            event("u1", "buy", 10.5, 2_000),
            event("u2", "view", 1.0, 1_000),
            event("u1", "view", 1.0, DAY + 5),
        ],
    );
    sink.commit(1, &e1).unwrap();
    sink.commit(1, &e1).unwrap();

    let out = db.collection::<Document>("out");
    let u1 = out
        .find_one(doc! {"_id": "u1|1970-01-01"})
        .run()
        .unwrap()
        .unwrap();
    assert_eq!(u1.get_str("entity").unwrap(), "u1");
    assert_eq!(u1.get_str("day").unwrap(), "1970-01-01");
    assert_eq!(as_i64(u1.get("count")), 3);
    let counts = u1.get_document("counts").unwrap();
    assert_eq!(
        (as_i64(counts.get("view")), as_i64(counts.get("buy"))),
        (2, 1)
    );
    assert_eq!(
        u1.get_document("sums").unwrap().get_f64("amount").unwrap(),
        13.5
    );
    let latest: Vec<i64> = u1
        .get_array("latest")
        .unwrap()
        .iter()
        .map(|e| {
            e.as_document()
                .unwrap()
                .get_datetime("ts")
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert_eq!(latest, [2_000, 3_000]);
    assert!(u1.get_datetime("updated_at").is_ok());
    assert_eq!(
        as_i64(u1.get_document("weir_applied").unwrap().get("job/out/main")),
        1
    );
    assert_eq!(out.count_documents(doc! {}).run().unwrap(), 3);

    // Epoch 2 partly applied (u1's document only) before a crash; the fence still says 1.
    let e2_part = stage(&sink, &[event("u1", "view", 1.0, 4_000)]);
    let e2 = stage(
        &sink,
        &[
            event("u1", "view", 1.0, 4_000),
            event("u2", "buy", 4.0, 4_000),
        ],
    );
    sink.commit(2, &e2_part).unwrap();
    db.collection::<Document>("weir_fences")
        .update_one(
            doc! {"_id": "job/out/main"},
            doc! {"$set": {"epoch": 1_i64}},
        )
        .run()
        .unwrap();
    let mut sink = open(&config, "main");
    sink.recover(Some(1)).unwrap();
    sink.commit(2, &e2).unwrap();
    sink.commit(2, &e2).unwrap();
    sink.commit(1, &e1).unwrap();

    let doc_of = |id: &str| out.find_one(doc! {"_id": id}).run().unwrap().unwrap();
    let u1 = doc_of("u1|1970-01-01");
    assert_eq!(as_i64(u1.get("count")), 4);
    assert_eq!(as_i64(u1.get_document("counts").unwrap().get("view")), 3);
    let latest: Vec<i64> = u1
        .get_array("latest")
        .unwrap()
        .iter()
        .map(|e| {
            e.as_document()
                .unwrap()
                .get_datetime("ts")
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert_eq!(latest, [3_000, 4_000]);
    let u2 = doc_of("u2|1970-01-01");
    assert_eq!(as_i64(u2.get("count")), 2);
    assert_eq!(as_i64(u2.get_document("counts").unwrap().get("buy")), 1);
    assert_eq!(
        u2.get_document("sums").unwrap().get_f64("amount").unwrap(),
        5.0
    );
    assert_eq!(fence(&db, "main"), Some(2));

    // Another task applies its own epoch 1 to the same documents.
    let mut other = open(&config, "p1");
    other.recover(None).unwrap();
    other
        .commit(1, &stage(&other, &[event("u2", "view", 1.0, 9_000)]))
        .unwrap();
    let u2 = doc_of("u2|1970-01-01");
    assert_eq!(as_i64(u2.get("count")), 3);
    let applied = u2.get_document("weir_applied").unwrap();
    assert_eq!(
        (
            as_i64(applied.get("job/out/main")),
            as_i64(applied.get("job/out/p1"))
        ),
        (2, 1)
    );

    let keys = index_keys(&db, "out");
    assert!(keys.contains(&vec![("day".to_string(), 1)]), "{keys:?}");
}

#[test]
fn an_unreachable_server_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = MongoSinkConfig::from_options(
        "sinks.out",
        serde_json::json!({
            "uri": format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300"),
            "database": "weir_down",
            "collection": "out",
            "mode": "timeseries",
        })
        .as_object()
        .unwrap(),
    )
    .unwrap();
    let mut sink = open(&config, "main");
    let err = sink.recover(None).unwrap_err();
    assert!(matches!(err, SinkError::Retryable(_)), "{err}");
    let err = sink
        .commit(1, &stage(&sink, &[result("u1", 1, 1, true)]))
        .unwrap_err();
    assert!(matches!(err, SinkError::Retryable(_)), "{err}");
}

#[test]
fn config_errors_name_their_paths() {
    let options = serde_json::json!({
        "uri": "localhost:27017",
        "database": "d",
        "collection": "c",
        "mode": "rollup",
        "timeseries": {"granularity": "minutes"},
    });
    let issues =
        MongoSinkConfig::from_options("sinks.daily", options.as_object().unwrap()).unwrap_err();
    let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "sinks.daily.entity_field",
            "sinks.daily.timeseries",
            "sinks.daily.uri"
        ]
    );
    let options = serde_json::json!({
        "uri": "mongodb://h", "database": "d", "collection": "c", "mode": "timeseries",
        "timeseries": {"granularity": "weekly"},
    });
    let issues =
        MongoSinkConfig::from_options("sinks.m", options.as_object().unwrap()).unwrap_err();
    assert_eq!(issues[0].path, "sinks.m.timeseries.granularity");
    assert!(
        issues[0].message.contains("minutes"),
        "{}",
        issues[0].message
    );
}

#[test]
fn documents_staged_without_an_epoch_placeholder_are_tagged_at_commit() {
    // An earlier version staged documents without the tag; a prepared epoch of such a
    // staging is committed after an upgrade.
    let (_client, db, name) = fresh_db("untagged");
    let config = config(&name, serde_json::json!({"mode": "timeseries"}));
    let mut sink = open(&config, "main");
    sink.recover(None).unwrap();
    let mut staged = Vec::new();
    for user in ["u1", "u2"] {
        doc! {
            "ts": DateTime::from_millis(60_000),
            "meta": {"user": user, "pipeline": "per_user"},
            "n": 1_i64,
        }
        .to_writer(&mut staged)
        .unwrap();
    }
    sink.commit(1, &staged).unwrap();
    let docs = all(
        &db,
        "out",
        doc! {"meta.weir.epoch": 1_i64, "meta.weir.task": "main"},
    );
    assert_eq!(docs.len(), 2, "{docs:?}");

    // A document without the meta field cannot be tagged: a clear error, nothing inserted.
    let mut bad = Vec::new();
    doc! {"ts": DateTime::from_millis(60_000), "n": 1_i64}
        .to_writer(&mut bad)
        .unwrap();
    let err = sink.commit(2, &bad).unwrap_err();
    assert!(err.to_string().contains("lacks its meta field"), "{err}");
    assert_eq!(count(&db), 2);
}

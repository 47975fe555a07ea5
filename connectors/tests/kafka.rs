//! The Kafka source, transactional sink and changelog replica against a real Kafka-protocol
//! broker.
//!
//! Needs `WEIR_TEST_KAFKA` (e.g. `eval "$(scripts/services.sh start kafka)"`).

#![cfg(feature = "kafka")]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_connectors::kafka::source::open_kafka_source;
use weir_connectors::kafka::{
    block_on, waiting_read_ahead, ChangelogReplica, KafkaFleet, KafkaFleetConfig, KafkaSink,
    KafkaSinkConfig, KafkaSourceConfig,
};
use weir_engine::checkpoint::{read_progress, write_committed, write_prepared, Progress};
use weir_engine::event::{EventRecord, FieldSlots, Output, Value};
use weir_engine::runtime::fleet::{CheckpointReplica, FleetBackend, FleetError};
use weir_engine::runtime::{
    DecodeContext, PartitionSelection, PollStatus, Sink, SinkError, SinkScope, SourceBatch,
    SourceError, SourcePartition,
};
use weir_engine::state::{MemoryStateStore, StateBatch, StateStore, Table};
use weir_engine::topology::EventTimeSpec;

fn brokers() -> String {
    std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_KAFKA is not set; start a broker with \
             `eval \"$(scripts/services.sh start kafka)\"`"
        )
    })
}

/// A name no other test run uses.
/// The scope of task `task` of a job of its own.
fn task_scope(task: &str) -> SinkScope {
    SinkScope {
        job: unique("job"),
        task: task.into(),
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t-{name}-{}-{nanos}", std::process::id())
}

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers());
    c
}

fn create_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = client().create().unwrap();
    let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let fut = admin.create_topics([&topic], &AdminOptions::new());
    let result = block_on(fut).unwrap();
    assert!(result.iter().all(Result::is_ok), "{result:?}");
    let consumer: BaseConsumer = client().create().unwrap();
    for _ in 0..100 {
        let md = consumer
            .fetch_metadata(Some(topic.name), Duration::from_secs(5))
            .unwrap();
        if md
            .topics()
            .iter()
            .any(|t| t.partitions().len() == partitions as usize)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("topic {} did not appear", topic.name);
}

fn produce(topic: &str, records: &[(i32, Option<&str>, &str)]) {
    let producer: BaseProducer = client().create().unwrap();
    for (partition, key, value) in records {
        let mut r = BaseRecord::<str, str>::to(topic)
            .partition(*partition)
            .payload(value);
        if let Some(k) = key {
            r = r.key(k);
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Every value of `topic` a read_committed consumer sees, by partition.
fn read_committed(topic: &str, partitions: i32) -> Vec<(Option<String>, String)> {
    let consumer: BaseConsumer = client()
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    out
}

/// A new one-partition topic named after `name` holding two unkeyed records, `ts` 1 and 2.
fn topic_with_two_records(name: &str) -> String {
    let topic = unique(name);
    create_topic(&topic, 1);
    produce(
        &topic,
        &[(0, None, r#"{"ts":1}"#), (0, None, r#"{"ts":2}"#)],
    );
    topic
}

fn decode_ctx(fields: &[&str]) -> DecodeContext {
    let mut slots = FieldSlots::default();
    for f in fields {
        slots.slot(f);
    }
    DecodeContext {
        source_name: "in".into(),
        slots: Arc::new(slots),
        event_time: serde_json::from_value::<EventTimeSpec>(
            serde_json::json!({"field": "ts", "format": "epoch_millis"}),
        )
        .unwrap(),
    }
}

fn source_config(topic: &str, extra: serde_json::Value) -> KafkaSourceConfig {
    let mut options = serde_json::json!({
        "brokers": brokers(), "topics": [topic], "group": unique("g"), "end_at_tail": true
    });
    options
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    KafkaSourceConfig::from_options("sources.in", options.as_object().unwrap()).unwrap()
}

#[test]
fn source_reads_each_partition_in_order_and_resumes_at_its_position() {
    let topic = unique("src");
    create_topic(&topic, 2);
    produce(
        &topic,
        &[
            (0, Some("a"), r#"{"user":"a","ts":1000}"#),
            (1, Some("b"), r#"{"user":"b","ts":1001}"#),
            (0, Some("a"), "{not json"),
            (0, None, r#"{"user":"c","ts":1002}"#),
        ],
    );
    let config = source_config(&topic, serde_json::json!({}));
    let ctx = decode_ctx(&["user", "_key", "_partition", "_offset"]);
    let mut parts = open_kafka_source("in", &config, &ctx, &PartitionSelection::All).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].id(), format!("kafka:{topic}/0"));

    let mut batch = SourceBatch::default();
    let mut status = PollStatus::Idle;
    let deadline = Instant::now() + Duration::from_secs(20);
    while status != PollStatus::End && Instant::now() < deadline {
        status = parts[0].poll(&mut batch, 1).unwrap();
        if batch.records.len() == 1 && batch.dead_letters.is_empty() {
            // Resume from the position after the first record on a fresh reader.
            let position = parts[0].position();
            let mut again =
                open_kafka_source("in", &config, &ctx, &PartitionSelection::Only(vec![0])).unwrap();
            again[0].seek(&position).unwrap();
            let mut b2 = SourceBatch::default();
            let until = Instant::now() + Duration::from_secs(20);
            while b2.records.len() + b2.dead_letters.len() < 2 && Instant::now() < until {
                again[0].poll(&mut b2, 10).unwrap();
            }
            assert_eq!(b2.dead_letters.len(), 1, "the bad record, once");
            assert_eq!(b2.records.len(), 1);
            assert_eq!(b2.records[0].fields[0], Value::Str("c".into()));
        }
    }
    assert_eq!(status, PollStatus::End, "end_at_tail ends the partition");
    assert_eq!(batch.records.len(), 2);
    assert_eq!(batch.records[0].time, 1000);
    assert_eq!(batch.records[0].fields[1], Value::Str("a".into()));
    assert_eq!(batch.records[0].fields[2], Value::Int(0));
    assert_eq!(batch.records[1].fields[1], Value::Null, "no key");
    assert_eq!(batch.records[1].fields[3], Value::Int(2));
    assert_eq!(batch.dead_letters.len(), 1);
    let dead = &batch.dead_letters[0];
    assert_eq!(dead.partition, format!("{topic}/0"));
    assert_eq!(dead.offset, "1");
    assert_eq!(dead.raw, b"{not json");

    let mut other = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while parts[1].poll(&mut other, 100).unwrap() != PollStatus::End {
        assert!(Instant::now() < deadline, "partition 1 never ended");
    }
    assert_eq!(other.records.len(), 1);
}

#[test]
fn committed_positions_become_the_groups_offsets() {
    let topic = topic_with_two_records("offsets");
    let config = source_config(&topic, serde_json::json!({}));
    let ctx = decode_ctx(&[]);
    let mut parts = open_kafka_source("in", &config, &ctx, &PartitionSelection::All).unwrap();
    let mut batch = SourceBatch::default();
    while parts[0].poll(&mut batch, 100).unwrap() != PollStatus::End {}
    let position = parts[0].position();
    parts[0].on_committed(&position).unwrap();

    // A reader without a stored position starts at the group's committed offset.
    produce(&topic, &[(0, None, r#"{"ts":3}"#)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut fresh = open_kafka_source(
            "in",
            &source_config(&topic, serde_json::json!({"group": config.group})),
            &ctx,
            &PartitionSelection::All,
        )
        .unwrap();
        let mut b = SourceBatch::default();
        while fresh[0].poll(&mut b, 100).unwrap() != PollStatus::End {}
        if b.records.len() == 1 {
            assert_eq!(b.records[0].time, 3);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group offset was not used: {} records",
            b.records.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The position of a reader that caught up with its partition is the partition's end (past
/// the transaction markers), not one past it: a reader resuming there reads the next record.
/// librdkafka's batch read moves its own position one past the end-of-partition entry, so a
/// source that took its position from there skipped one record after a restart.
#[test]
fn a_reader_at_the_end_resumes_at_the_next_record() {
    let topic = topic_with_two_records("at-end");
    let txn: BaseProducer = client()
        .set("transactional.id", unique("txn"))
        .create()
        .unwrap();
    txn.init_transactions(Duration::from_secs(10)).unwrap();
    txn.begin_transaction().unwrap();
    txn.send(
        BaseRecord::<str, str>::to(&topic)
            .partition(0)
            .payload(r#"{"ts":3}"#),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    txn.commit_transaction(Duration::from_secs(10)).unwrap();
    // Offsets 0 to 2 are records, 3 is the commit marker.
    let end = 4i64;

    let config = source_config(&topic, serde_json::json!({"end_at_tail": false}));
    let ctx = decode_ctx(&[]);
    let mut parts = open_kafka_source("in", &config, &ctx, &PartitionSelection::All).unwrap();
    let mut batch = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while batch.records.len() < 3 || parts[0].position() != end.to_be_bytes() {
        assert!(
            Instant::now() < deadline,
            "{} records, position {:?}",
            batch.records.len(),
            parts[0].position()
        );
        parts[0].poll(&mut batch, 100).unwrap();
    }
    // Polls that see nothing new (the end-of-partition entry among them) keep the position.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        parts[0].poll(&mut batch, 100).unwrap();
    }
    assert_eq!(batch.records.len(), 3);
    let position = parts[0].position();
    assert_eq!(position, end.to_be_bytes(), "the partition's end");

    produce(&topic, &[(0, None, r#"{"ts":4}"#)]);
    let mut again = open_kafka_source("in", &config, &ctx, &PartitionSelection::All).unwrap();
    again[0].seek(&position).unwrap();
    let mut resumed = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while resumed.records.is_empty() {
        assert!(Instant::now() < deadline, "the next record was skipped");
        again[0].poll(&mut resumed, 100).unwrap();
    }
    assert_eq!(resumed.records[0].time, 4);
}

/// Reads partition 0 of `topic` to its end with a fresh source of `config`, `max` records per
/// poll.
/// Appends records `{"n": i, "ts": i}` for each `i` of `numbers` to partition 0 of `topic`.
fn produce_numbered(topic: &str, numbers: std::ops::Range<i64>) {
    let values: Vec<String> = numbers
        .map(|i| format!(r#"{{"n":{i},"ts":{i}}}"#))
        .collect();
    let records: Vec<(i32, Option<&str>, &str)> =
        values.iter().map(|v| (0, None, v.as_str())).collect();
    produce(topic, &records);
}

/// A new one-partition topic named after `name` holding records `{"n": i, "ts": i}` for
/// each `i` of `numbers`, and a reader of it decoding `n` (`extra`: source options).
fn numbered_topic_and_reader(
    name: &str,
    numbers: std::ops::Range<i64>,
    extra: serde_json::Value,
) -> (String, Box<dyn SourcePartition>) {
    let topic = unique(name);
    create_topic(&topic, 1);
    produce_numbered(&topic, numbers);
    let config = source_config(&topic, extra);
    let mut parts =
        open_kafka_source("in", &config, &decode_ctx(&["n"]), &PartitionSelection::All).unwrap();
    (topic, parts.remove(0))
}

/// Has the broker delete every record of partition 0 of `topic` before `offset`, as
/// retention does.
fn delete_records_before(topic: &str, offset: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<_> = client().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    let deleted = block_on(admin.delete_records(&tpl, &AdminOptions::new())).unwrap();
    assert_eq!(
        deleted.elements()[0].offset(),
        Offset::Offset(offset),
        "the broker's new log start"
    );
}

/// The `n` field of each record of `batch`.
fn numbers(batch: &SourceBatch) -> Vec<i64> {
    batch
        .records
        .iter()
        .map(|r| match &r.fields[0] {
            Value::Int(n) => *n,
            other => panic!("n is {other:?}"),
        })
        .collect()
}

#[test]
fn a_position_whose_records_were_deleted_resumes_at_the_log_start() {
    // Records 0 to 9, 0 to 4 deleted; the reader stood at 2.
    let (topic, mut reader) = numbered_topic_and_reader("deleted", 0..10, serde_json::json!({}));
    delete_records_before(&topic, 5);
    reader.seek(&2i64.to_be_bytes()).unwrap();
    let mut batch = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.poll(&mut batch, 100).unwrap() != PollStatus::End {
        assert!(Instant::now() < deadline, "the partition never ended");
    }
    // librdkafka's own answer to the refused offset would have been the end: nothing read.
    assert_eq!(numbers(&batch), vec![5, 6, 7, 8, 9]);
    assert_eq!(reader.position(), 10i64.to_be_bytes());
}

#[test]
fn a_position_past_the_end_waits_for_the_partition_to_reach_it() {
    let (topic, mut reader) =
        numbered_topic_and_reader("past-end", 0..4, serde_json::json!({"end_at_tail": false}));
    reader.seek(&6i64.to_be_bytes()).unwrap();
    let mut batch = SourceBatch::default();
    match reader.poll(&mut batch, 100) {
        Err(SourceError::Retryable(reason)) => {
            assert!(reason.contains("past the partition's end 4"), "{reason}")
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    // Once the partition reaches the position, reading starts there and nothing before it
    // is read twice.
    produce_numbered(&topic, 4..8);
    let deadline = Instant::now() + Duration::from_secs(30);
    while batch.records.len() < 2 {
        assert!(Instant::now() < deadline, "read {:?}", numbers(&batch));
        let _ = reader.poll(&mut batch, 100);
    }
    assert_eq!(numbers(&batch), vec![6, 7]);
}

#[test]
fn a_partition_that_loses_records_under_a_reader_is_not_skipped_to_its_end() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let (topic, mut reader) =
        numbered_topic_and_reader("recreated", 0..5, serde_json::json!({"end_at_tail": false}));
    let mut batch = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while batch.records.len() < 5 {
        assert!(Instant::now() < deadline, "read {:?}", numbers(&batch));
        reader.poll(&mut batch, 100).unwrap();
    }
    // The topic is recreated under the reader: its position 5 is past the new end.
    let admin: AdminClient<_> = client().create().unwrap();
    block_on(admin.delete_topics(&[&topic], &AdminOptions::new())).unwrap();
    create_topic(&topic, 1);
    produce_numbered(&topic, 100..102);
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        assert!(Instant::now() < deadline, "read {:?}", numbers(&batch));
        match reader.poll(&mut batch, 100) {
            Err(SourceError::Retryable(reason)) if reason.contains("past the partition") => {
                break reason
            }
            _ => {}
        }
    };
    assert!(
        reason.contains("position 5 is past the partition's end 2"),
        "{reason}"
    );
    assert_eq!(
        numbers(&batch),
        vec![0, 1, 2, 3, 4],
        "nothing of the new topic read"
    );
}

fn read_partition_to_end(
    config: &KafkaSourceConfig,
    ctx: &DecodeContext,
    max: usize,
) -> SourceBatch {
    let mut parts = open_kafka_source("in", config, ctx, &PartitionSelection::All).unwrap();
    let mut batch = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while parts[0].poll(&mut batch, max).unwrap() != PollStatus::End {
        assert!(Instant::now() < deadline, "the partition never ended");
    }
    batch
}

#[test]
fn source_reads_metadata_skips_aborted_transactions_and_keeps_order_across_batches() {
    use rdkafka::message::{Header, OwnedHeaders};
    let topic = unique("batches");
    create_topic(&topic, 1);
    // More records than one poll takes, each with a header and its own timestamp. The
    // timestamps are recent: the broker's time-based retention (7 days) deletes older records.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let producer: BaseProducer = client().create().unwrap();
    let first = 2500;
    for i in 0..first {
        let value = format!(r#"{{"user":"u{i}","ts":{i}}}"#);
        let trace = format!("t{i}");
        let record = BaseRecord::<str, str>::to(&topic)
            .partition(0)
            .payload(&value)
            .timestamp(base + i)
            .headers(OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some(&trace),
            }));
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    // An aborted transaction, then a committed one: the aborted records and both markers lie
    // between the last records, and the reader must still reach the end.
    let txn: BaseProducer = client()
        .set("transactional.id", unique("txn"))
        .create()
        .unwrap();
    txn.init_transactions(Duration::from_secs(10)).unwrap();
    txn.begin_transaction().unwrap();
    for _ in 0..3 {
        let record = BaseRecord::<str, str>::to(&topic)
            .partition(0)
            .payload(r#"{"user":"aborted","ts":0}"#);
        txn.send(record).map_err(|(e, _)| e).unwrap();
    }
    txn.flush(Duration::from_secs(10)).unwrap();
    txn.abort_transaction(Duration::from_secs(10)).unwrap();
    txn.begin_transaction().unwrap();
    let record = BaseRecord::<str, str>::to(&topic)
        .partition(0)
        .payload(r#"{"user":"committed","ts":1}"#)
        .timestamp(base);
    txn.send(record).map_err(|(e, _)| e).unwrap();
    txn.commit_transaction(Duration::from_secs(10)).unwrap();

    let config = source_config(&topic, serde_json::json!({}));
    let ctx = DecodeContext {
        event_time: serde_json::from_value::<EventTimeSpec>(
            serde_json::json!({"source_timestamp": true}),
        )
        .unwrap(),
        ..decode_ctx(&["user", "_topic", "_offset", "_header_trace", "_timestamp"])
    };
    for max in [1, 7, 1024, 100_000] {
        let batch = read_partition_to_end(&config, &ctx, max);
        assert!(batch.dead_letters.is_empty(), "max {max}");
        let users: Vec<&Value> = batch.records.iter().map(|r| &r.fields[0]).collect();
        assert_eq!(
            users.len(),
            first as usize + 1,
            "max {max}: no aborted record"
        );
        for (i, record) in batch.records.iter().take(first as usize).enumerate() {
            assert_eq!(
                record.fields[0],
                Value::Str(format!("u{i}").into()),
                "max {max}"
            );
            assert_eq!(record.fields[1], Value::Str(topic.as_str().into()));
            assert_eq!(record.fields[2], Value::Int(i as i64), "in offset order");
            assert_eq!(record.fields[3], Value::Str(format!("t{i}").into()));
            let ts = base + i as i64;
            assert_eq!(record.fields[4], Value::Int(ts));
            assert_eq!(record.time, ts, "event time from the message timestamp");
        }
        let last = batch.records.last().unwrap();
        assert_eq!(last.fields[0], Value::Str("committed".into()));
        assert_eq!(last.fields[3], Value::Null, "no such header");
    }
}

fn sink_config(topic: &str) -> KafkaSinkConfig {
    let options = serde_json::json!({
        "brokers": brokers(), "topic": topic, "key": ["user"], "create_partitions": 3
    });
    KafkaSinkConfig::from_options("sinks.out", options.as_object().unwrap()).unwrap()
}

fn stage(sink: &KafkaSink, users: &[&str]) -> Vec<u8> {
    let mut encoder = sink.encoder();
    let mut staged = Vec::new();
    for u in users {
        encoder.encode(
            &Output::Event(EventRecord {
                pipeline: "p".into(),
                time: 1,
                fields: vec![("user".into(), Value::Str((*u).into()))],
            }),
            &mut staged,
        );
    }
    staged
}

fn counts(records: &[(Option<String>, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (key, value) in records {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(key.as_deref(), v["user"].as_str(), "keyed by user");
        *m.entry(v["user"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

#[test]
fn sink_commits_each_epoch_once_even_when_committed_again() {
    let topic = unique("sink");
    let scope = task_scope("p0");
    let mut sink = KafkaSink::open("out", &scope, &sink_config(&topic)).unwrap();
    sink.recover(None).unwrap();
    let e1 = stage(&sink, &["a", "b"]);
    let e2 = stage(&sink, &["a"]);
    sink.commit(1, &e1).unwrap();
    sink.commit(1, &e1).unwrap();
    sink.commit(2, &e2).unwrap();

    // A restarted task re-commits epoch 2 (it was prepared but not confirmed).
    let mut again = KafkaSink::open("out", &scope, &sink_config(&topic)).unwrap();
    again.recover(Some(1)).unwrap();
    again.commit(2, &e2).unwrap();
    again.commit(3, &stage(&again, &["c"])).unwrap();

    let seen = counts(&read_committed(&topic, 3));
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 2), ("b".into(), 1), ("c".into(), 1)])
    );
}

#[test]
fn a_sink_topic_that_does_not_exist_fails_the_first_commit_naming_its_yaml_path() {
    // The sink connects in the background from `open` on; its first commit reports what
    // connecting found, and a missing topic (no `create_partitions`) is not retried.
    let topic = unique("absent");
    let scope = task_scope("p0");
    let options = serde_json::json!({"brokers": brokers(), "topic": topic, "key": ["user"]});
    let config = KafkaSinkConfig::from_options("sinks.out", options.as_object().unwrap()).unwrap();
    let mut sink = KafkaSink::open("out", &scope, &config).unwrap();
    sink.recover(None).unwrap();
    let err = sink.commit(1, &stage(&sink, &["a"])).unwrap_err();
    assert!(matches!(err, SinkError::Fatal(_)), "{err}");
    assert!(err.to_string().contains("sinks.out.topic"), "{err}");
    assert!(err.to_string().contains(&topic), "{err}");
}

#[test]
fn a_zombie_sink_is_fenced_and_its_open_transaction_is_invisible() {
    let topic = unique("zombie");
    let scope = task_scope("p1");
    let config = sink_config(&topic);
    let mut old = KafkaSink::open("out", &scope, &config).unwrap();
    old.recover(None).unwrap();
    old.commit(1, &stage(&old, &["a"])).unwrap();

    // A transaction left open by a crashed instance with the same transactional.id.
    let crashed: BaseProducer = client()
        .set(
            "transactional.id",
            weir_connectors::kafka::sink::fence_id(&scope, "out"),
        )
        .create()
        .unwrap();
    crashed.init_transactions(Duration::from_secs(30)).unwrap();
    crashed.begin_transaction().unwrap();
    crashed
        .send(
            BaseRecord::<str, str>::to(&topic)
                .key("ghost")
                .payload(r#"{"user":"ghost"}"#),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    crashed.flush(Duration::from_secs(10)).unwrap();

    let mut new = KafkaSink::open("out", &scope, &config).unwrap();
    new.recover(Some(1)).unwrap();
    new.commit(2, &stage(&new, &["b"])).unwrap();
    drop(crashed);

    // The old instance was fenced by the new one's initialisation.
    let err = old.commit(3, &stage(&old, &["x"])).unwrap_err();
    assert!(
        err.to_string().contains("took this task over") || err.to_string().contains("enced"),
        "{err}"
    );

    let seen = counts(&read_committed(&topic, 3));
    assert_eq!(seen, BTreeMap::from([("a".into(), 1), ("b".into(), 1)]));
}

fn all(store: &MemoryStateStore, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan(table, b"", None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[test]
fn changelog_restores_the_state_and_fences_an_older_owner() {
    let job = unique("cl");
    let topic = format!("{job}-changelog");
    create_topic(&topic, 2);
    let replica = ChangelogReplica::open(&client(), &job, "p1", &topic, 1).unwrap();
    let local = MemoryStateStore::new();
    let apply = |batch: StateBatch| {
        replica.replicate(&batch).unwrap();
        local.write(batch).unwrap();
    };
    let mut b = StateBatch::default();
    for i in 0..2_000u32 {
        b.put(Table::Windows, i.to_be_bytes().to_vec(), vec![1; 10]);
    }
    b.put(
        Table::Positions,
        b"kafka:x/1".to_vec(),
        7u64.to_be_bytes().to_vec(),
    );
    b.put(
        Table::Staged,
        vec![0, 0, 0, 0, 0, 0, 0, 1],
        vec![7; 1_500_000],
    );
    // Values above a broker's record limit are chunked in the log.
    let big: Vec<u8> = (0..1_200_000u32).map(|i| (i % 251) as u8).collect();
    b.put(Table::Sessions, b"big".to_vec(), big.clone());
    b.put(Table::Sessions, b"shrinks".to_vec(), vec![3; 2_000_000]);
    write_prepared(&mut b, 1);
    apply(b);
    let mut b = StateBatch::default();
    write_committed(&mut b, 1);
    b.delete_range(
        Table::Windows,
        100u32.to_be_bytes().to_vec(),
        1_000u32.to_be_bytes().to_vec(),
    );
    b.delete(Table::Windows, 1_500u32.to_be_bytes().to_vec());
    b.put(Table::Windows, 150u32.to_be_bytes().to_vec(), vec![2; 3]);
    b.delete_range(
        Table::Staged,
        0u64.to_be_bytes().to_vec(),
        2u64.to_be_bytes().to_vec(),
    );
    b.put(Table::Sessions, b"shrinks".to_vec(), vec![4; 10]);
    write_prepared(&mut b, 2);
    apply(b);

    // A new owner: opening fences the old one, then the replica restores what it wrote.
    let next = ChangelogReplica::open(&client(), &job, "p1", &topic, 1).unwrap();
    assert_eq!(
        next.progress().unwrap(),
        Progress {
            prepared: Some(2),
            committed: Some(1)
        }
    );
    let restored = MemoryStateStore::new();
    next.restore(&restored).unwrap();
    for table in Table::ALL {
        assert_eq!(all(&restored, table), all(&local, table), "{table:?}");
    }
    assert_eq!(
        read_progress(&restored).unwrap(),
        read_progress(&local).unwrap()
    );
    assert_eq!(all(&restored, Table::Windows).len(), 2_000 - 900 - 1 + 1);
    assert_eq!(restored.get(Table::Sessions, b"big").unwrap(), Some(big));
    assert_eq!(
        restored.get(Table::Sessions, b"shrinks").unwrap(),
        Some(vec![4; 10])
    );
    assert!(all(&restored, Table::Staged).is_empty());

    let mut late = StateBatch::default();
    write_committed(&mut late, 2);
    match replica.replicate(&late) {
        Err(FleetError::Fenced(_)) => {}
        other => panic!("the old owner must be fenced, got {other:?}"),
    }
    assert_eq!(next.progress().unwrap().committed, Some(1));
}

#[test]
fn a_replica_of_an_empty_changelog_reports_no_progress_and_restores_nothing() {
    let job = unique("cl-empty");
    let topic = format!("{job}-changelog");
    create_topic(&topic, 1);
    let replica = ChangelogReplica::open(&client(), &job, "p0", &topic, 0).unwrap();
    assert_eq!(replica.progress().unwrap(), Progress::default());
    let restored = MemoryStateStore::new();
    assert_eq!(replica.restore(&restored).unwrap(), 0);
    for table in Table::ALL {
        assert!(all(&restored, table).is_empty(), "{table:?}");
    }
    // What it then replicates is read back by the next owner.
    let mut b = StateBatch::default();
    b.put(Table::Windows, b"k".to_vec(), b"v".to_vec());
    write_prepared(&mut b, 1);
    replica.replicate(&b).unwrap();
    let next = ChangelogReplica::open(&client(), &job, "p0", &topic, 0).unwrap();
    assert_eq!(next.progress().unwrap().prepared, Some(1));
    let restored = MemoryStateStore::new();
    assert!(next.restore(&restored).unwrap() > 0);
    assert_eq!(
        restored.get(Table::Windows, b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

/// The event times of the records `part` reads until its end (20 s at most).
fn times_to_end(part: &mut dyn SourcePartition) -> Vec<i64> {
    let mut batch = SourceBatch::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while part.poll(&mut batch, 10).unwrap() != PollStatus::End && Instant::now() < deadline {}
    batch.records.iter().map(|r| r.time).collect()
}

/// `source`'s fleet joined as worker `w1` of a new job.
fn join_as_w1(source: &KafkaSourceConfig, config: &KafkaFleetConfig) -> KafkaFleet {
    KafkaFleet::join(&unique("job"), source, config, Some("w1")).unwrap()
}

#[test]
fn a_fleet_members_wait_ends_when_the_group_assigns_its_partitions() {
    let topic = unique("fleet-wait");
    create_topic(&topic, 2);
    let source = source_config(&topic, serde_json::json!({}));
    let fleet = join_as_w1(&source, &KafkaFleetConfig::default());
    let ttl = Duration::from_secs(10);
    assert_eq!(
        fleet.acquire("p0", "w1", ttl).unwrap(),
        None,
        "nothing is assigned yet"
    );

    // A member that only slept would wait the whole minute; this one wakes when its first
    // join ends, with both partitions assigned.
    let (timeout, stop) = (Duration::from_secs(60), AtomicBool::new(false));
    let started = Instant::now();
    fleet.wait(timeout, &stop);
    assert!(
        started.elapsed() < timeout,
        "wait ran out its timeout instead of ending at the assignment"
    );
    for task in ["p0", "p1"] {
        assert!(
            fleet.acquire(task, "w1", ttl).unwrap().is_some(),
            "{task} is assigned once wait returns"
        );
    }

    // With nothing to serve, wait ends when asked to stop.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    fleet.wait(timeout, &stop);
    assert!(started.elapsed() < timeout, "wait ignored its stop flag");
    fleet.leave("w1").unwrap();
}

#[test]
fn a_worker_alone_in_its_group_reads_ahead_while_joining_and_its_tasks_continue_there() {
    let topic = unique("read-ahead");
    create_topic(&topic, 2);
    produce(
        &topic,
        &[
            (0, None, r#"{"ts":1}"#),
            (1, None, r#"{"ts":2}"#),
            (0, None, r#"{"ts":3}"#),
        ],
    );
    let source = source_config(&topic, serde_json::json!({}));
    let fleet = join_as_w1(&source, &KafkaFleetConfig::default());
    // The member has not been polled: no assignment yet, but both readers open meanwhile.
    let both = vec![(topic.clone(), 0), (topic.clone(), 1)];
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting_read_ahead(&source.brokers, &source.group) != both && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(waiting_read_ahead(&source.brokers, &source.group), both);

    let (timeout, stop) = (Duration::from_secs(60), AtomicBool::new(false));
    fleet.wait(timeout, &stop);
    let ttl = Duration::from_secs(10);
    for task in ["p0", "p1"] {
        assert!(fleet.acquire(task, "w1", ttl).unwrap().is_some());
    }
    assert_eq!(
        waiting_read_ahead(&source.brokers, &source.group),
        both,
        "partitions assigned here keep their readers"
    );

    // The tasks' readers are the ones read ahead, and each reads its partition once, in order.
    let ctx = decode_ctx(&[]);
    let mut parts = open_kafka_source("in", &source, &ctx, &PartitionSelection::All).unwrap();
    assert!(waiting_read_ahead(&source.brokers, &source.group).is_empty());
    let times: Vec<Vec<i64>> = parts.iter_mut().map(|p| times_to_end(p.as_mut())).collect();
    assert_eq!(times, vec![vec![1, 3], vec![2]]);
    assert_eq!(parts[0].position(), 2i64.to_be_bytes().to_vec());
    fleet.leave("w1").unwrap();
}

#[test]
fn a_task_whose_state_says_otherwise_moves_a_read_ahead_reader_to_its_position() {
    let topic = unique("read-ahead-moved");
    create_topic(&topic, 1);
    produce(
        &topic,
        &[
            (0, None, r#"{"ts":1}"#),
            (0, None, r#"{"ts":2}"#),
            (0, None, r#"{"ts":3}"#),
        ],
    );
    let source = source_config(&topic, serde_json::json!({}));
    let fleet = join_as_w1(&source, &KafkaFleetConfig::default());
    let (timeout, stop) = (Duration::from_secs(60), AtomicBool::new(false));
    fleet.wait(timeout, &stop);
    assert_eq!(
        waiting_read_ahead(&source.brokers, &source.group),
        vec![(topic.clone(), 0)]
    );
    // Long enough for the reader to have fetched from offset 0.
    std::thread::sleep(Duration::from_millis(500));

    let mut parts =
        open_kafka_source("in", &source, &decode_ctx(&[]), &PartitionSelection::All).unwrap();
    parts[0].seek(&2i64.to_be_bytes()).unwrap();
    assert_eq!(
        times_to_end(parts[0].as_mut()),
        vec![3],
        "only the record at the stored position, once"
    );
    fleet.leave("w1").unwrap();
}

#[test]
fn a_worker_reads_nothing_ahead_when_read_ahead_is_off() {
    let topic = topic_with_two_records("no-read-ahead");
    let source = source_config(&topic, serde_json::json!({}));
    let config = KafkaFleetConfig {
        read_ahead: false,
        ..KafkaFleetConfig::default()
    };
    let fleet = join_as_w1(&source, &config);
    // The first join takes the broker's whole hold: a read-ahead would have opened by then.
    let (timeout, stop) = (Duration::from_secs(60), AtomicBool::new(false));
    fleet.wait(timeout, &stop);
    assert!(fleet
        .acquire("p0", "w1", Duration::from_secs(10))
        .unwrap()
        .is_some());
    assert!(waiting_read_ahead(&source.brokers, &source.group).is_empty());
    fleet.leave("w1").unwrap();
}

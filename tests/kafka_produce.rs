//! `weir produce` against a real Kafka-protocol broker: every generated event arrives once,
//! keyed by user so that a user always lands in one partition, with its event time as the
//! message timestamp; Avro payloads are Confluent-framed and decode with the Kafka source's
//! `MessageDecoder`.
//!
//! Needs `WEIR_TEST_KAFKA` (`eval "$(scripts/services.sh start kafka)"`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use weir_connectors::generator::{write_events, GeneratorConfig, OutputFormat, Shape};
use weir_connectors::kafka::decode::{AvroConfig, MessageDecoder, PayloadFormat};
use weir_engine::event::{FieldSlots, Value};
use weir_engine::runtime::DecodeContext;
use weir_engine::topology::{EventTimeSpec, TimeFormat};

const EVENTS: usize = 10_000;
const KEYS: u64 = 500;
const PARTITIONS: usize = 4;

fn kafka() -> String {
    std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_KAFKA is not set; start a broker with \
             `eval \"$(scripts/services.sh start kafka)\"`"
        )
    })
}

fn fresh_topic(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("produce-{name}-{}-{nanos}", std::process::id())
}

fn weir_produce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("produce")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn produce_ok(topic: &str, format: &str) {
    let events = EVENTS.to_string();
    let keys = KEYS.to_string();
    let partitions = PARTITIONS.to_string();
    let broker = kafka();
    let start = start_time();
    let out = weir_produce(&[
        "--start-time",
        &start,
        "--brokers",
        &broker,
        "--topic",
        topic,
        "--events",
        &events,
        "--keys",
        &keys,
        "--format",
        format,
        "--create-topic",
        "--partitions",
        &partitions,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir produce failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!(
            "produced {EVENTS} events to `{topic}` ({format}, {PARTITIONS} partitions) in "
        )),
        "{stdout}"
    );
}

/// Every message of `topic`, read from the beginning of each partition.
fn consume_all(topic: &str, expected: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", format!("{topic}-check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    assert_eq!(partitions, PARTITIONS);
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while messages.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            messages.push(m.unwrap().detach());
        }
    }
    // Anything beyond the expected count would be a duplicate.
    let extra_deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < extra_deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            messages.push(m.unwrap().detach());
        }
    }
    messages
}

/// Asserts the count, that each key is in one partition and that every message has a key and a
/// timestamp.
fn check_keys(messages: &[OwnedMessage]) {
    assert_eq!(messages.len(), EVENTS);
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    for m in messages {
        let key = m.key().expect("every event is keyed").to_vec();
        let p = *partition_of.entry(key.clone()).or_insert(m.partition());
        assert_eq!(
            p,
            m.partition(),
            "key {} is in two partitions",
            String::from_utf8_lossy(&key)
        );
        assert!(m.timestamp().to_millis().is_some());
    }
    let used: std::collections::BTreeSet<i32> = partition_of.values().copied().collect();
    assert!(used.len() > 1, "all keys landed in one partition: {used:?}");
    assert!(partition_of.len() as u64 <= KEYS);
}

/// The event time of the first event every test here produces: an hour ago, so the broker's
/// time-based retention keeps the records; fixed for the test run.
fn start_time() -> String {
    static START: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    START
        .get_or_init(|| {
            (chrono::Utc::now() - chrono::Duration::hours(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .clone()
}

/// The lines `weir produce` publishes for this key count and start time.
fn generated_lines() -> Vec<String> {
    let config = GeneratorConfig {
        shape: Shape::Activity,
        count: Some(EVENTS as u64),
        keys: KEYS,
        start_time: Some(start_time()),
        ..GeneratorConfig::default()
    };
    let mut out = Vec::new();
    write_events(&config, OutputFormat::Jsonl, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn decode_context(fields: &[&str]) -> DecodeContext {
    let mut slots = FieldSlots::default();
    for f in fields {
        slots.slot(f);
    }
    DecodeContext {
        source_name: "events".into(),
        slots: Arc::new(slots),
        event_time: EventTimeSpec {
            field: "timestamp".into(),
            format: TimeFormat::Auto,
            processing_time: false,
            source_timestamp: false,
        },
    }
}

#[test]
fn produce_json_keyed_by_user_with_event_time_timestamps() {
    let topic = fresh_topic("json");
    produce_ok(&topic, "json");
    let messages = consume_all(&topic, EVENTS);
    check_keys(&messages);

    let mut decoder = MessageDecoder::new(
        PayloadFormat::Json,
        None,
        &decode_context(&["user_id", "_key"]),
    )
    .unwrap();
    let mut payloads: Vec<String> = Vec::new();
    for m in &messages {
        let r = decoder.decode(m).unwrap();
        assert_eq!(r.fields[0], r.fields[1], "the key is the user");
        assert_eq!(Some(r.time), m.timestamp().to_millis());
        payloads.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
    }
    // Exactly the generator's events, each once.
    let mut expected = generated_lines();
    payloads.sort();
    expected.sort();
    assert!(
        payloads == expected,
        "the payloads are not the generated events"
    );
}

#[test]
fn produce_avro_in_the_confluent_wire_format() {
    let topic = fresh_topic("avro");
    produce_ok(&topic, "avro");
    let messages = consume_all(&topic, EVENTS);
    check_keys(&messages);

    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/avro/ids.yaml");
    let avro = AvroConfig {
        schemas: Some(schemas),
        registry: None,
    };
    let ctx = decode_context(&["user_id", "event_type", "event_id", "_key"]);
    let mut decoder = MessageDecoder::new(PayloadFormat::Avro, Some(&avro), &ctx).unwrap();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for m in &messages {
        assert_eq!(
            &m.payload().unwrap()[..5],
            &[0, 0, 0, 0, 1],
            "magic 0, id 1"
        );
        let r = decoder.decode(m).unwrap();
        assert_eq!(r.fields[0], r.fields[3], "the key is the user");
        assert_eq!(Some(r.time), m.timestamp().to_millis());
        let Value::Str(t) = &r.fields[1] else {
            panic!("event_type {:?}", r.fields[1])
        };
        *by_type.entry(t.to_string()).or_default() += 1;
        ids.insert(format!("{:?}", r.fields[2]));
    }
    assert_eq!(ids.len(), EVENTS, "every event once");
    assert_eq!(by_type.len(), 5, "{by_type:?}");
}

#[test]
fn delivery_failures_exit_non_zero() {
    // Nothing listens on port 1: every event times out.
    let out = weir_produce(&[
        "--brokers",
        "127.0.0.1:1",
        "--topic",
        "nowhere",
        "--events",
        "5",
        "-X",
        "message.timeout.ms=1500",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("5 events failed"), "{stderr}");
}

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Timestamp as KafkaTime;
use weir_engine::event::FieldSlots;
use weir_engine::topology::EventTimeSpec;

use super::avro::decimal;
use super::*;

const T0: i64 = 1_767_225_600_000;

fn ctx_spec(fields: &[&str], event_time: EventTimeSpec) -> DecodeContext {
    let mut slots = FieldSlots::default();
    for f in fields {
        slots.slot(f);
    }
    DecodeContext {
        source_name: "events".into(),
        slots: Arc::new(slots),
        event_time,
    }
}

fn ctx(fields: &[&str], time_field: &str) -> DecodeContext {
    ctx_spec(
        fields,
        EventTimeSpec {
            field: time_field.into(),
            format: TimeFormat::Auto,
            processing_time: false,
            source_timestamp: false,
        },
    )
}

fn source_ts_ctx(fields: &[&str]) -> DecodeContext {
    ctx_spec(
        fields,
        EventTimeSpec {
            source_timestamp: true,
            ..EventTimeSpec::default()
        },
    )
}

fn msg(payload: Option<&[u8]>, key: Option<&[u8]>, ts: KafkaTime) -> OwnedMessage {
    OwnedMessage::new(
        payload.map(<[u8]>::to_vec),
        key.map(<[u8]>::to_vec),
        "events".into(),
        ts,
        3,
        42,
        None,
    )
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

fn json_decoder(c: &DecodeContext) -> MessageDecoder {
    MessageDecoder::new(PayloadFormat::Json, None, c).unwrap()
}

fn ids_yaml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro/ids.yaml")
}

fn avro_config(path: &Path) -> AvroConfig {
    AvroConfig {
        schemas: Some(path.to_path_buf()),
        registry: None,
    }
}

fn avro_decoder(c: &DecodeContext, config: &AvroConfig) -> MessageDecoder {
    MessageDecoder::new(PayloadFormat::Avro, Some(config), c).unwrap()
}

/// A Confluent-framed datum of `value` written with `schema`.
fn framed(id: u32, schema: &Schema, value: Avro) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    let writer = GenericDatumWriter::builder(schema).build().unwrap();
    writer.write_value(&mut out, value).unwrap();
    out
}

/// A mapping file in a temporary directory with one schema per id.
fn mapping(dir: &Path, schemas: &[(u32, &str)]) -> PathBuf {
    let mut yaml = String::new();
    for (id, json) in schemas {
        let file = format!("s{id}.avsc");
        std::fs::write(dir.join(&file), json).unwrap();
        yaml.push_str(&format!("{id}: {file}\n"));
    }
    let path = dir.join("ids.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn activity_event() -> Vec<(&'static str, Value)> {
    vec![
        ("event_id", s("evt-0-7")),
        ("user_id", s("user_12")),
        ("event_type", s("purchase")),
        ("product", s("sku_9")),
        ("session_id", s("sess_12_981250")),
        ("value", Value::Int(250)),
        ("timestamp", s("2026-01-01T00:00:00.123Z")),
    ]
}

fn encode_activity(event: &[(&str, Value)]) -> Vec<u8> {
    let enc = AvroEncoder::from_mapping(&ids_yaml(), 1).unwrap();
    let mut out = Vec::new();
    enc.encode(
        |name| event.iter().find(|(n, _)| *n == name).map(|(_, v)| v),
        &mut out,
    )
    .unwrap();
    out
}

fn err<T: std::fmt::Debug>(r: Result<T, String>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn json_fields_and_time() {
    let c = ctx(&["user_id", "value", "missing"], "ts");
    let mut d = json_decoder(&c);
    let m = msg(
        Some(br#"{"ts":1767225600123,"user_id":"u1","value":2.5,"x":[1]}"#),
        None,
        KafkaTime::CreateTime(5),
    );
    let r = d.decode(&m).unwrap();
    assert_eq!(r.time, T0 + 123);
    assert_eq!(
        r.fields.to_vec(),
        vec![s("u1"), Value::Float(2.5), Value::Null]
    );
}

#[test]
fn json_errors_are_reasons() {
    let c = ctx(&["user_id"], "ts");
    let mut d = json_decoder(&c);
    let tomb = err(d.decode(&msg(None, Some(b"k"), KafkaTime::NotAvailable)));
    assert!(tomb.contains("tombstone"), "{tomb}");
    let bad = err(d.decode(&msg(Some(b"{\"ts\":"), None, KafkaTime::NotAvailable)));
    assert!(!bad.is_empty());
    let no_time = err(d.decode(&msg(
        Some(br#"{"user_id":"u"}"#),
        None,
        KafkaTime::NotAvailable,
    )));
    assert_eq!(no_time, "missing event time field `ts`");
}

#[test]
fn metadata_fields() {
    let fields = [
        "_key",
        "_topic",
        "_partition",
        "_offset",
        "_timestamp",
        "_header_trace",
        "_header_absent",
        "_header_empty",
        "v",
    ];
    let c = ctx(&fields, "ts");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "trace",
            value: Some("first"),
        })
        .insert(Header {
            key: "empty",
            value: None::<&[u8]>,
        })
        .insert(Header {
            key: "trace",
            value: Some(&b"la\xffst"[..]),
        });
    let payload = br#"{"ts":1767225600000,"_key":"from-payload","v":1}"#;
    let m = OwnedMessage::new(
        Some(payload.to_vec()),
        Some(b"user_1".to_vec()),
        "events".into(),
        KafkaTime::LogAppendTime(T0 + 9),
        3,
        42,
        Some(headers),
    );
    let r = json_decoder(&c).decode(&m).unwrap();
    assert_eq!(r.time, T0);
    assert_eq!(
        r.fields.to_vec(),
        vec![
            s("user_1"),
            s("events"),
            Value::Int(3),
            Value::Int(42),
            Value::Int(T0 + 9),
            s("la\u{fffd}st"),
            Value::Null,
            Value::Null,
            Value::Int(1),
        ]
    );
    // No key, no timestamp, no headers.
    let m = msg(Some(payload), None, KafkaTime::NotAvailable);
    let r = json_decoder(&c).decode(&m).unwrap();
    assert_eq!(r.fields[0], Value::Null);
    assert_eq!(r.fields[4], Value::Null);
    assert_eq!(r.fields[5], Value::Null);
}

#[test]
fn source_timestamp() {
    let c = source_ts_ctx(&["v"]);
    let mut d = json_decoder(&c);
    let payload = br#"{"v":1}"#;
    for ts in [KafkaTime::CreateTime(T0), KafkaTime::LogAppendTime(T0)] {
        assert_eq!(d.decode(&msg(Some(payload), None, ts)).unwrap().time, T0);
    }
    let e = err(d.decode(&msg(Some(payload), None, KafkaTime::NotAvailable)));
    assert!(e.contains("no timestamp"), "{e}");
    let e = err(d.decode(&msg(Some(payload), None, KafkaTime::CreateTime(i64::MAX))));
    assert!(e.contains("outside"), "{e}");
    // The same for Avro, whose payload has no time field at all.
    let mut a = avro_decoder(&source_ts_ctx(&["user_id"]), &avro_config(&ids_yaml()));
    let payload = encode_activity(&activity_event());
    let r = a
        .decode(&msg(Some(&payload), None, KafkaTime::CreateTime(T0 + 1)))
        .unwrap();
    assert_eq!((r.time, r.fields[0].clone()), (T0 + 1, s("user_12")));
    let e = err(a.decode(&msg(Some(&payload), None, KafkaTime::NotAvailable)));
    assert!(e.contains("no timestamp"), "{e}");
}

#[test]
fn processing_time_and_metadata_time() {
    let c = ctx_spec(
        &["v"],
        EventTimeSpec {
            processing_time: true,
            ..EventTimeSpec::default()
        },
    );
    let before = wall_clock_ms();
    let r = json_decoder(&c)
        .decode(&msg(Some(br#"{"v":1}"#), None, KafkaTime::NotAvailable))
        .unwrap();
    assert!(r.time >= before && r.time <= wall_clock_ms());

    // Event time from a header, which is not a slot.
    let c = ctx(&["v"], "_header_ts");
    let mut d = json_decoder(&c);
    let with = |h: Option<&str>| {
        let headers = h.map(|v| {
            OwnedHeaders::new().insert(Header {
                key: "ts",
                value: Some(v),
            })
        });
        OwnedMessage::new(
            Some(br#"{"v":1}"#.to_vec()),
            None,
            "events".into(),
            KafkaTime::NotAvailable,
            0,
            0,
            headers,
        )
    };
    assert_eq!(
        d.decode(&with(Some("2026-01-01T00:00:01Z"))).unwrap().time,
        T0 + 1000
    );
    assert_eq!(
        err(d.decode(&with(None))),
        "missing event time field `_header_ts`"
    );
    let e = err(d.decode(&with(Some("soon"))));
    assert!(e.starts_with("event time field `_header_ts`: "), "{e}");
}

#[test]
fn avro_activity_schema_from_the_mapping_file() {
    let c = ctx(
        &[
            "user_id",
            "event_type",
            "value",
            "timestamp",
            "_key",
            "nope",
        ],
        "timestamp",
    );
    let mut d = avro_decoder(&c, &avro_config(&ids_yaml()));
    let payload = encode_activity(&activity_event());
    assert_eq!(&payload[..5], &[0, 0, 0, 0, 1]);
    let r = d
        .decode(&msg(
            Some(&payload),
            Some(b"user_12"),
            KafkaTime::CreateTime(1),
        ))
        .unwrap();
    assert_eq!(r.time, T0 + 123);
    assert_eq!(
        r.fields.to_vec(),
        vec![
            s("user_12"),
            s("purchase"),
            Value::Int(250),
            Value::Int(T0 + 123),
            s("user_12"),
            Value::Null,
        ]
    );
    // The time field need not be a slot.
    let c = ctx(&["product"], "timestamp");
    let r = avro_decoder(&c, &avro_config(&ids_yaml()))
        .decode(&msg(Some(&payload), None, KafkaTime::NotAvailable))
        .unwrap();
    assert_eq!((r.time, r.fields.to_vec()), (T0 + 123, vec![s("sku_9")]));
}

#[test]
fn avro_framing_errors() {
    let c = ctx(&["user_id"], "timestamp");
    let mut d = avro_decoder(&c, &avro_config(&ids_yaml()));
    let good = encode_activity(&activity_event());
    let mut decode = |p: &[u8]| err(d.decode(&msg(Some(p), None, KafkaTime::NotAvailable)));

    let e = decode(b"{\"user_id\":1}");
    assert!(e.contains("bad magic byte 123"), "{e}");
    let e = decode(&[0, 0, 1]);
    assert!(e.contains("3 bytes, fewer than the 5-byte"), "{e}");
    let e = decode(&[0, 0, 0, 0, 99, 2, b'a']);
    assert_eq!(
        e,
        "schema id 99 is not in the schema mapping file (and no registry is set)"
    );
    let e = decode(&good[..good.len() - 3]);
    assert!(e.contains("does not match schema id 1"), "{e}");
    let mut long = good.clone();
    long.push(7);
    let e = decode(&long);
    assert!(e.contains("1 bytes left after the Avro datum"), "{e}");
    let e = decode(&[0, 0, 0, 0, 1]);
    assert!(e.contains("does not match schema id 1"), "{e}");
}

#[test]
fn avro_non_record_schema_and_missing_time_field() {
    let dir = tempfile::tempdir().unwrap();
    let no_time = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    let path = mapping(dir.path(), &[(5, r#""string""#), (6, no_time)]);
    let c = ctx(&["a"], "ts");
    let mut d = avro_decoder(&c, &avro_config(&path));

    let p = framed(5, &Schema::String, Avro::String("x".into()));
    let e = err(d.decode(&msg(Some(&p), None, KafkaTime::NotAvailable)));
    assert_eq!(
        e,
        "schema id 5 is a `string`, not a record (the top-level value must be a record)"
    );

    let schema = Schema::parse_str(no_time).unwrap();
    let p = framed(6, &schema, Avro::Record(vec![("a".into(), Avro::Int(4))]));
    let e = err(d.decode(&msg(Some(&p), None, KafkaTime::NotAvailable)));
    assert_eq!(e, "missing event time field `ts`");
    // With the message timestamp as event time the same record decodes.
    let mut d = avro_decoder(&source_ts_ctx(&["a"]), &avro_config(&path));
    let r = d
        .decode(&msg(Some(&p), None, KafkaTime::CreateTime(T0)))
        .unwrap();
    assert_eq!((r.time, r.fields.to_vec()), (T0, vec![Value::Int(4)]));
}

const ALL_TYPES: &str = r#"{
  "type": "record", "name": "All", "namespace": "t",
  "fields": [
    {"name": "n", "type": "null"},
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "by", "type": "bytes"},
    {"name": "fx", "type": {"type": "fixed", "name": "F2", "size": 2}},
    {"name": "s", "type": "string"},
    {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
    {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "un", "type": ["null", "string"]},
    {"name": "ul", "type": ["null", "long"]},
    {"name": "arr", "type": {"type": "array", "items": "int"}},
    {"name": "m", "type": {"type": "map", "values": "bytes"}},
    {"name": "rec", "type": {"type": "record", "name": "Inner",
      "fields": [{"name": "x", "type": "int"}, {"name": "dec",
        "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}]}},
    {"name": "again", "type": "Inner"},
    {"name": "dt", "type": {"type": "int", "logicalType": "date"}},
    {"name": "tu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3}}
  ]
}"#;

#[test]
fn avro_type_mapping() {
    let schema = Schema::parse_str(ALL_TYPES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = mapping(dir.path(), &[(3, ALL_TYPES)]);
    let names = [
        "n", "b", "i", "l", "f", "d", "by", "fx", "s", "e", "u", "un", "ul", "arr", "m", "rec",
        "again", "dt", "tu", "dec",
    ];
    let c = ctx(&names, "tu");
    let inner = |x: i32, cents: i64| {
        Avro::Record(vec![
            ("x".into(), Avro::Int(x)),
            (
                "dec".into(),
                Avro::Decimal(apache_avro::Decimal::from(cents.to_be_bytes().to_vec())),
            ),
        ])
    };
    let uuid = apache_avro::Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
    let value = Avro::Record(vec![
        ("n".into(), Avro::Null),
        ("b".into(), Avro::Boolean(true)),
        ("i".into(), Avro::Int(-7)),
        ("l".into(), Avro::Long(1 << 40)),
        ("f".into(), Avro::Float(1.5)),
        ("d".into(), Avro::Double(-0.25)),
        ("by".into(), Avro::Bytes(b"h\xffi".to_vec())),
        ("fx".into(), Avro::Fixed(2, b"ok".to_vec())),
        ("s".into(), Avro::String("text".into())),
        ("e".into(), Avro::Enum(1, "B".into())),
        ("u".into(), Avro::Uuid(uuid)),
        (
            "un".into(),
            Avro::Union(1, Box::new(Avro::String("in".into()))),
        ),
        ("ul".into(), Avro::Union(0, Box::new(Avro::Null))),
        ("arr".into(), Avro::Array(vec![Avro::Int(1), Avro::Int(2)])),
        (
            "m".into(),
            Avro::Map(
                [
                    ("z".to_string(), Avro::Bytes(b"1".to_vec())),
                    ("a".to_string(), Avro::Bytes(b"2".to_vec())),
                ]
                .into(),
            ),
        ),
        ("rec".into(), inner(5, 1234)),
        ("again".into(), inner(6, -5)),
        ("dt".into(), Avro::Date(20_454)),
        ("tu".into(), Avro::TimestampMicros((T0 + 5) * 1000 + 999)),
        (
            "dec".into(),
            Avro::Decimal(apache_avro::Decimal::from(vec![0xff, 0x85])),
        ),
    ]);
    let p = framed(3, &schema, value);
    let mut d = avro_decoder(&c, &avro_config(&path));
    let r = d
        .decode(&msg(Some(&p), None, KafkaTime::NotAvailable))
        .unwrap();
    assert_eq!(r.time, T0 + 5);
    let expected = vec![
        Value::Null,
        Value::Bool(true),
        Value::Int(-7),
        Value::Int(1 << 40),
        Value::Float(1.5),
        Value::Float(-0.25),
        s("h\u{fffd}i"),
        s("ok"),
        s("text"),
        s("B"),
        s("67e55044-10b1-426f-9247-bb680e5fe0c8"),
        s("in"),
        Value::Null,
        s("[1,2]"),
        s(r#"{"a":"2","z":"1"}"#),
        s(r#"{"x":5,"dec":"12.34"}"#),
        s(r#"{"x":6,"dec":"-0.05"}"#),
        Value::Int(20_454),
        Value::Int((T0 + 5) * 1000 + 999),
        s("-0.123"),
    ];
    for ((name, got), want) in names.iter().zip(r.fields.iter()).zip(expected.iter()) {
        assert_eq!(got, want, "field {name}");
    }
}

#[test]
fn decimal_text() {
    let d = |bytes: &[u8], scale| decimal(&apache_avro::Decimal::from(bytes.to_vec()), scale);
    assert_eq!(d(&[0x04, 0xd2], 0), s("1234"));
    assert_eq!(d(&[0x04, 0xd2], 2), s("12.34"));
    assert_eq!(d(&[0x04, 0xd2], 6), s("0.001234"));
    assert_eq!(d(&[0xfb, 0x2e], 2), s("-12.34"));
    assert_eq!(d(&[], 2), s("0.00"));
    let Value::Float(big) = d(&[1; 20], 0) else {
        panic!("a 20-byte decimal is a float")
    };
    let want = (0..20).fold(0.0, |x: f64, _| x * 256.0 + 1.0);
    assert!((big / want - 1.0).abs() < 1e-12, "{big}");
    assert_eq!(d(&[0xff; 20], 1), Value::Float(-0.1));
}

#[test]
fn registry_fetch_is_cached_and_unknown_ids_are_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    let schema_json = r#"{"type":"record","name":"R","fields":[{"name":"ts","type":"long"},{"name":"a","type":"string"}]}"#;
    let reply_ok = serde_json::json!({ "schema": schema_json }).to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let (status, body) = if request_line.starts_with("GET /schemas/ids/7 ") {
                ("200 OK", reply_ok.clone())
            } else {
                (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let config = AvroConfig {
        schemas: None,
        registry: Some(format!("{url}/")),
    };
    let c = ctx(&["a"], "ts");
    let mut d = avro_decoder(&c, &config);
    let schema = Schema::parse_str(schema_json).unwrap();
    let record = |a: &str| {
        Avro::Record(vec![
            ("ts".into(), Avro::Long(T0)),
            ("a".into(), Avro::String(a.into())),
        ])
    };
    for a in ["x", "y", "z"] {
        let p = framed(7, &schema, record(a));
        let r = d
            .decode(&msg(Some(&p), None, KafkaTime::NotAvailable))
            .unwrap();
        assert_eq!((r.time, r.fields.to_vec()), (T0, vec![s(a)]));
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one fetch per id");
    let p = framed(8, &schema, record("x"));
    for _ in 0..2 {
        let e = err(d.decode(&msg(Some(&p), None, KafkaTime::NotAvailable)));
        assert_eq!(
            e,
            format!("schema id 8 is unknown to the schema registry at {url}")
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "an unknown id is remembered"
    );
}

#[test]
fn unreachable_registry_is_an_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = AvroConfig {
        schemas: None,
        registry: Some(format!("http://127.0.0.1:{port}")),
    };
    let mut d = avro_decoder(&ctx(&["a"], "ts"), &config);
    let e = err(d.decode(&msg(
        Some(&[0, 0, 0, 0, 1, 0]),
        None,
        KafkaTime::NotAvailable,
    )));
    assert!(e.starts_with("schema registry http://127.0.0.1:"), "{e}");
}

/// A small deterministic generator for the fuzz tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() % (max as u64 + 1)) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = mapping(dir.path(), &[(3, ALL_TYPES), (4, r#"["null","string"]"#)]);
    let fields = [
        "n", "b", "i", "l", "f", "d", "by", "fx", "s", "e", "u", "un", "ul", "arr", "m", "rec",
        "again", "dt", "tu", "dec", "_key",
    ];
    let c = ctx(&fields, "l");
    let mut avro = avro_decoder(&c, &avro_config(&path));
    let mut activity = avro_decoder(&ctx(&["user_id"], "timestamp"), &avro_config(&ids_yaml()));
    let mut json = json_decoder(&c);
    let valid = encode_activity(&activity_event());
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..30_000u32 {
        let mut p = rng.bytes(64);
        match i % 4 {
            // Valid headers of known ids followed by random data.
            0 => {
                let id = [1u8, 3, 4][(rng.next() % 3) as usize];
                p.splice(0..0, [0, 0, 0, 0, id]);
            }
            // A valid payload with a few bytes changed.
            1 => {
                p = valid.clone();
                for _ in 0..1 + rng.next() % 3 {
                    let at = (rng.next() as usize) % p.len();
                    p[at] = rng.next() as u8;
                }
                p.truncate((rng.next() as usize) % (p.len() + 1) + 5);
            }
            _ => {}
        }
        let key = (i % 3 == 0).then(|| p.clone());
        let m = msg(
            Some(&p),
            key.as_deref(),
            KafkaTime::CreateTime(i64::from(i)),
        );
        let _ = avro.decode(&m);
        let _ = activity.decode(&m);
        let _ = json.decode(&m);
    }
}

#[test]
fn new_reports_config_errors_with_their_path() {
    let c = ctx(&["a"], "ts");
    let fatal = |r: Result<MessageDecoder, SourceError>| match r {
        Err(SourceError::Fatal(m)) => m,
        other => panic!("expected a fatal error, got {other:?}"),
    };
    let e = fatal(MessageDecoder::new(PayloadFormat::Avro, None, &c));
    assert!(e.starts_with("sources.events.avro: "), "{e}");
    let missing = avro_config(Path::new("/nonexistent/ids.yaml"));
    let e = fatal(MessageDecoder::new(PayloadFormat::Avro, Some(&missing), &c));
    assert!(
        e.starts_with("sources.events.avro.schemas: cannot read /nonexistent/ids.yaml"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = mapping(dir.path(), &[(1, "{not json")]);
    let e = fatal(MessageDecoder::new(
        PayloadFormat::Avro,
        Some(&avro_config(&path)),
        &c,
    ));
    assert!(
        e.contains("schema id 1: ") && e.contains("not an Avro schema"),
        "{e}"
    );
    // JSON ignores the avro section.
    assert!(MessageDecoder::new(PayloadFormat::Json, Some(&missing), &c).is_ok());
}

#[test]
fn validate_reports_every_problem() {
    let issues = |config: AvroConfig| -> Vec<String> {
        config
            .validate("sources.k")
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(issues(avro_config(&ids_yaml())), Vec::<String>::new());
    let none = issues(AvroConfig::default());
    assert_eq!(none.len(), 1);
    assert!(
        none[0].starts_with("sources.k.avro: set `schemas`"),
        "{none:?}"
    );
    let both = issues(AvroConfig {
        schemas: Some("/nonexistent.yaml".into()),
        registry: Some("https://registry:8081".into()),
    });
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[0].starts_with("sources.k.avro.schemas: cannot read"));
    assert!(both[1].starts_with("sources.k.avro.registry: https is not supported"));
    assert_eq!(
        issues(AvroConfig {
            schemas: None,
            registry: Some("http://".into()),
        }),
        vec!["sources.k.avro.registry: `http://` has no host"]
    );
}

#[test]
fn mapping_file_forms() {
    let parse = avro::parse_mapping;
    let want = vec![(1, "a.avsc".to_string()), (20, "dir/b c.avsc".to_string())];
    let block = "---\n# ids\n1: a.avsc   # the first\n\n'20': \"dir/b c.avsc\"\n";
    assert_eq!(parse(block).unwrap(), want);
    assert_eq!(parse("{1: a.avsc, 20: 'dir/b c.avsc'}").unwrap(), want);
    assert_eq!(
        parse(r#"{"1": "a.avsc", "20": "dir/b c.avsc"}"#).unwrap(),
        want
    );
    assert!(parse("1: a\n1: b\n").unwrap_err().contains("appears twice"));
    assert!(parse("x: a\n").unwrap_err().contains("not a schema id"));
    assert!(parse("1 a\n")
        .unwrap_err()
        .contains("expected `<id>: <file>`"));
    assert!(parse("# nothing\n").unwrap_err().contains("empty"));
    assert!(parse("1:\n").unwrap_err().contains("has no file"));
}

#[test]
fn encoder_converts_and_rejects() {
    let enc = AvroEncoder::from_mapping(&ids_yaml(), 1).unwrap();
    assert_eq!(
        enc.field_names(),
        [
            "event_id",
            "user_id",
            "event_type",
            "product",
            "session_id",
            "value",
            "timestamp"
        ]
    );
    let mut event = activity_event();
    event[2].1 = s("dance");
    let mut out = vec![9];
    let e = enc
        .encode(
            |n| event.iter().find(|(k, _)| *k == n).map(|(_, v)| v),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(
        e,
        "field `event_type`: `dance` is not a symbol of enum weir.generator.EventType"
    );
    assert_eq!(out, vec![9], "nothing written on error");
    let e = enc.encode(|_| None, &mut out).unwrap_err();
    assert!(e.starts_with("field `event_id`: no value"), "{e}");
    assert!(AvroEncoder::from_mapping(&ids_yaml(), 77)
        .unwrap_err()
        .contains("has no schema id 77"));
    assert!(AvroEncoder::from_schema_json(1, r#""int""#)
        .unwrap_err()
        .contains("not a record"));
    // Nullable and numeric conversions.
    let enc = AvroEncoder::from_schema_json(
        9,
        r#"{"type":"record","name":"N","fields":[{"name":"o","type":["null","double"]},
            {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
    )
    .unwrap();
    let vals = [("o", Value::Int(2)), ("t", Value::Int(T0))];
    let mut out = Vec::new();
    enc.encode(
        |n| vals.iter().find(|(k, _)| *k == n).map(|(_, v)| v),
        &mut out,
    )
    .unwrap();
    let c = ctx(&["o", "t"], "t");
    let dir = tempfile::tempdir().unwrap();
    let path = mapping(
        dir.path(),
        &[(
            9,
            r#"{"type":"record","name":"N","fields":[{"name":"o","type":["null","double"]},
            {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
        )],
    );
    let r = avro_decoder(&c, &avro_config(&path))
        .decode(&msg(Some(&out), None, KafkaTime::NotAvailable))
        .unwrap();
    assert_eq!(
        r.fields.to_vec(),
        vec![Value::Float(2.0), Value::Int(T0 * 1000)]
    );
    assert_eq!(r.time, T0);
}

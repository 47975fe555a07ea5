//! Decode throughput: JSON lines and CSV rows of the benchmark shape
//! (`{"ts_ms":…,"key":"key_<n>","value":…}`), reported per record.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_engine::event::decode::{parse_time, CsvDecoder, JsonDecoder};
use weir_engine::event::{FieldSlots, Value};
use weir_engine::runtime::DecodeContext;
use weir_engine::topology::{EventTimeSpec, TimeFormat};

const LINES: usize = 1024;

fn context(time_field: &str) -> DecodeContext {
    let mut slots = FieldSlots::default();
    slots.slot("key");
    slots.slot("value");
    DecodeContext {
        source_name: "bench".into(),
        slots: Arc::new(slots),
        event_time: EventTimeSpec {
            field: time_field.into(),
            format: TimeFormat::Auto,
            processing_time: false,
            source_timestamp: false,
        },
    }
}

fn json_lines() -> Vec<String> {
    (0..LINES)
        .map(|i| {
            format!(
                r#"{{"ts_ms":{},"key":"key_{}","value":{}.5}}"#,
                1_700_000_000_000u64 + i as u64 * 7,
                (i * 7919) % 10_000,
                i % 1000
            )
        })
        .collect()
}

fn csv_rows() -> Vec<String> {
    (0..LINES)
        .map(|i| {
            format!(
                "{},key_{},{}.5",
                1_700_000_000_000u64 + i as u64 * 7,
                (i * 7919) % 10_000,
                i % 1000
            )
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(LINES as u64));

    let lines = json_lines();
    let mut json = JsonDecoder::new(&context("ts_ms"));
    group.bench_function("json_bench_shape", |b| {
        b.iter(|| {
            for line in &lines {
                let _ = black_box(json.decode(black_box(line.as_bytes())));
            }
        })
    });

    let rows = csv_rows();
    let mut csv = match CsvDecoder::new(&context("ts_ms"), b"ts_ms,key,value") {
        Ok(d) => d,
        Err(e) => panic!("bench header: {e}"),
    };
    group.bench_function("csv_bench_shape", |b| {
        b.iter(|| {
            for row in &rows {
                let _ = black_box(csv.decode(black_box(row.as_bytes())));
            }
        })
    });

    let stamps: Vec<Value> = (0..LINES)
        .map(|i| Value::Str(format!("2026-11-25T10:{:02}:{:02}.{:03}Z", i % 60, i % 59, i).into()))
        .collect();
    group.bench_function("parse_time_rfc3339", |b| {
        b.iter(|| {
            for v in &stamps {
                let _ = black_box(parse_time(black_box(v), TimeFormat::Auto));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);

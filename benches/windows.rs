//! Window operator hot paths: records/s of `process` + `advance_watermark` for tumbling,
//! sliding and session windows over 10k keys, and the cost of a snapshot.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_engine::aggregate::{Aggregates, CompiledAggregate};
use weir_engine::event::{
    FieldSlots, Fields, Key, KeyedRecord, Record, ResultSchema, Value, MAX_TIMESTAMP,
};
use weir_engine::state::{MemoryStateStore, StateBatch};
use weir_engine::topology::{AggregateFunction, Duration, EmitMode, WindowSpec};
use weir_engine::window::{WindowOperator, WindowOperatorSpec};

const KEYS: u64 = 10_000;
/// Records per iteration; event time advances 1 ms per record (1000 events/s of event time
/// per key would be unrealistic; this keeps several windows open and closing).
const RECORDS: usize = 200_000;
const OUT_OF_ORDERNESS: i64 = 2_000;

fn agg(name: &str, function: AggregateFunction, slot: Option<usize>) -> CompiledAggregate {
    CompiledAggregate {
        name: name.into(),
        function,
        slot,
        q: 0.5,
        n: 10,
    }
}

fn spec(window: WindowSpec, budget: usize) -> WindowOperatorSpec {
    let mut slots = FieldSlots::default();
    slots.slot("user");
    slots.slot("value");
    WindowOperatorSpec {
        operator_id: "bench".into(),
        schema: Arc::new(ResultSchema {
            pipeline: "bench".into(),
            key_fields: vec!["user".into()],
            aggregate_names: vec!["n".into(), "sum".into(), "avg".into()],
        }),
        slots: Arc::new(slots),
        window,
        aggregates: Aggregates::new(vec![
            agg("n", AggregateFunction::Count, None),
            agg("sum", AggregateFunction::Sum, Some(1)),
            agg("avg", AggregateFunction::Avg, Some(1)),
        ]),
        emit: EmitMode::OnClose,
        emit_every_ms: None,
        having: None,
        late_output: false,
        shard: 0,
        shards: 1,
        memory_budget_bytes: budget,
    }
}

/// Records over `KEYS` keys, slightly out of order, with their partition watermark.
fn records(n: usize, time_step: i64) -> Vec<KeyedRecord> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut max = i64::MIN;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = Value::Str(format!("user-{}", x % KEYS).into());
            let key = Key::from_values([&user]);
            let time = i as i64 * time_step - (x % 1000) as i64;
            let watermark = max.saturating_sub(OUT_OF_ORDERNESS);
            max = max.max(time);
            let mut fields = Fields::new();
            fields.push(user);
            fields.push(Value::Int((x % 1000) as i64));
            KeyedRecord {
                key_hash: key.stable_hash(),
                key,
                record: Record { time, fields },
                partition_watermark: watermark,
            }
        })
        .collect()
}

fn run(spec: &WindowOperatorSpec, recs: Vec<KeyedRecord>) -> usize {
    let store = Arc::new(MemoryStateStore::new());
    let mut op = WindowOperator::new(spec.clone(), store).expect("empty store");
    let mut emitted = 0usize;
    let mut out = |o| {
        black_box(o);
        emitted += 1;
    };
    for rec in recs {
        let w = rec.partition_watermark;
        op.process(rec, &mut out).expect("in memory");
        op.advance_watermark(w, &mut out).expect("in memory");
    }
    op.advance_watermark(MAX_TIMESTAMP, &mut out)
        .expect("in memory");
    emitted
}

fn bench_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("window_process");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.sample_size(10);
    let ms = Duration::from_millis;
    let cases = [
        (
            "tumbling_1m_count_sum_avg",
            WindowSpec::Tumbling {
                size: ms(60_000),
                allowed_lateness: None,
            },
            // A window every 60k records: ~6 updates per key and window.
            1,
        ),
        (
            "sliding_5m_1m_count_sum_avg",
            WindowSpec::Sliding {
                size: ms(300_000),
                slide: ms(60_000),
                allowed_lateness: None,
            },
            1,
        ),
        (
            "session_30s_gap",
            WindowSpec::Session {
                gap: ms(30_000),
                allowed_lateness: None,
            },
            // Sparse per key so sessions close: ~1 event per key per 40 s.
            200,
        ),
    ];
    for (name, window, step) in cases {
        let sp = spec(window, usize::MAX);
        let recs = records(RECORDS, step);
        g.bench_function(name, |b| {
            b.iter_batched(
                || recs.clone(),
                |recs| run(&sp, recs),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("window_snapshot");
    g.sample_size(10);
    let sp = spec(
        WindowSpec::Tumbling {
            size: Duration::from_millis(3_600_000),
            allowed_lateness: None,
        },
        usize::MAX,
    );
    // One open window with every key dirty.
    let recs = records(50_000, 1);
    g.throughput(Throughput::Elements(KEYS));
    g.bench_function("tumbling_10k_dirty_keys", |b| {
        b.iter_batched(
            || {
                let store = Arc::new(MemoryStateStore::new());
                let mut op = WindowOperator::new(sp.clone(), store).expect("empty store");
                for rec in recs.clone() {
                    op.process(rec, &mut |o| drop(black_box(o)))
                        .expect("in memory");
                }
                op
            },
            |mut op| {
                let mut batch = StateBatch::default();
                op.snapshot(&mut batch).expect("in memory");
                batch
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_process, bench_snapshot);
criterion_main!(benches);

//! Accumulator hot paths: update, merge, encode/decode.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_engine::aggregate::{Aggregates, CompiledAggregate};
use weir_engine::event::{Fields, Record, Value};
use weir_engine::topology::AggregateFunction;

fn spec(function: AggregateFunction, slot: Option<usize>) -> CompiledAggregate {
    CompiledAggregate {
        name: format!("{function:?}").into(),
        function,
        slot,
        q: 0.99,
        n: 10,
    }
}

/// Records with an integer in slot 0, a float in slot 1 and a string in slot 2.
fn records(n: usize) -> Vec<Record> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|i| {
            // xorshift: cheap, deterministic inputs.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut fields = Fields::new();
            fields.push(Value::Int((x % 10_000) as i64));
            fields.push(Value::Float((x % 1_000_000) as f64 / 1000.0 + 0.001));
            fields.push(Value::Str(format!("user-{}", x % 50_000).into()));
            Record {
                time: i as i64,
                fields,
            }
        })
        .collect()
}

fn bench_update(c: &mut Criterion) {
    let recs = records(10_000);
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(recs.len() as u64));

    let cases: Vec<(&str, Vec<CompiledAggregate>)> = vec![
        (
            "count_sum_avg",
            vec![
                spec(AggregateFunction::Count, None),
                spec(AggregateFunction::Sum, Some(0)),
                spec(AggregateFunction::Avg, Some(1)),
            ],
        ),
        (
            "min_max",
            vec![
                spec(AggregateFunction::Min, Some(0)),
                spec(AggregateFunction::Max, Some(1)),
            ],
        ),
        (
            "count_distinct_str",
            vec![spec(AggregateFunction::CountDistinct, Some(2))],
        ),
        (
            "count_distinct_int",
            vec![spec(AggregateFunction::CountDistinct, Some(0))],
        ),
        (
            "percentile",
            vec![spec(AggregateFunction::Percentile, Some(1))],
        ),
        ("top_n", vec![spec(AggregateFunction::TopN, Some(0))]),
    ];
    for (name, specs) in cases {
        let aggs = Aggregates::new(specs);
        g.bench_function(name, |b| {
            let mut acc = aggs.create();
            b.iter(|| {
                for r in &recs {
                    aggs.update(&mut acc, black_box(r));
                }
            });
            black_box(aggs.finish(&acc));
        });
    }
    g.finish();
}

fn all_aggregates() -> Aggregates {
    Aggregates::new(vec![
        spec(AggregateFunction::Count, None),
        spec(AggregateFunction::Sum, Some(0)),
        spec(AggregateFunction::Avg, Some(1)),
        spec(AggregateFunction::Min, Some(0)),
        spec(AggregateFunction::Max, Some(0)),
        spec(AggregateFunction::First, Some(2)),
        spec(AggregateFunction::Last, Some(2)),
        spec(AggregateFunction::CountDistinct, Some(2)),
        spec(AggregateFunction::Percentile, Some(1)),
        spec(AggregateFunction::TopN, Some(0)),
    ])
}

fn bench_merge_and_codec(c: &mut Criterion) {
    let aggs = all_aggregates();
    let mut g = c.benchmark_group("state");
    // Small panes (a few records each, sparse sketches) and large ones (dense HLL).
    for (label, per_pane) in [("small", 20usize), ("large", 20_000)] {
        let recs = records(per_pane * 2);
        let (left, right) = recs.split_at(per_pane);
        let mut a = aggs.create();
        let mut b = aggs.create();
        for r in left {
            aggs.update(&mut a, r);
        }
        for r in right {
            aggs.update(&mut b, r);
        }
        g.bench_function(format!("merge_{label}"), |bench| {
            bench.iter_batched(
                || a.clone(),
                |mut into| {
                    aggs.merge(&mut into, black_box(&b));
                    into
                },
                BatchSize::SmallInput,
            );
        });
        let mut buf = Vec::new();
        aggs.encode(&a, &mut buf);
        g.bench_function(format!("encode_{label}"), |bench| {
            let mut out = Vec::with_capacity(buf.len());
            bench.iter(|| {
                out.clear();
                aggs.encode(black_box(&a), &mut out);
                out.len()
            });
        });
        g.bench_function(format!("decode_{label}"), |bench| {
            bench.iter(|| aggs.decode(black_box(&buf)).map(|acc| acc.len()));
        });
        g.bench_function(format!("finish_{label}"), |bench| {
            bench.iter(|| aggs.finish(black_box(&a)));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_update, bench_merge_and_codec);
criterion_main!(benches);

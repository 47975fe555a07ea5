use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::event::Fields;

fn spec(function: AggregateFunction, slot: Option<usize>) -> CompiledAggregate {
    CompiledAggregate {
        name: format!("{function:?}").into(),
        function,
        slot,
        q: 0.5,
        n: 3,
    }
}

fn one(function: AggregateFunction) -> Aggregates {
    let slot = (function != AggregateFunction::Count).then_some(0);
    Aggregates::new(vec![spec(function, slot)])
}

fn rec(time: Timestamp, v: Value) -> Record {
    let mut fields = Fields::new();
    fields.push(v);
    Record { time, fields }
}

fn s(x: &str) -> Value {
    Value::Str(x.into())
}

/// Runs one aggregate over values (times 0, 1, 2, ...) and returns its result.
fn run(function: AggregateFunction, vals: &[Value]) -> serde_json::Value {
    let aggs = one(function);
    let mut acc = aggs.create();
    for (i, v) in vals.iter().enumerate() {
        aggs.update(&mut acc, &rec(i as i64, v.clone()));
    }
    aggs.finish(&acc).remove(0)
}

fn all_functions() -> Aggregates {
    use AggregateFunction::*;
    let mut specs = vec![spec(Count, None), spec(Count, Some(0))];
    for f in [
        Sum,
        Avg,
        Min,
        Max,
        First,
        Last,
        CountDistinct,
        Percentile,
        TopN,
    ] {
        specs.push(spec(f, Some(0)));
    }
    specs.push(CompiledAggregate {
        q: 0.9,
        ..spec(Percentile, Some(0))
    });
    specs.push(CompiledAggregate {
        n: 0,
        ..spec(TopN, Some(0))
    });
    Aggregates::new(specs)
}

#[test]
fn accumulator_is_compact() {
    assert!(
        std::mem::size_of::<Acc>() <= 40,
        "{}",
        std::mem::size_of::<Acc>()
    );
}

#[test]
fn empty_results() {
    let aggs = all_functions();
    let acc = aggs.create();
    let got = aggs.finish(&acc);
    let mut want = vec![json!(0), json!(0), json!(0)];
    want.extend(std::iter::repeat_n(json!(null), 10));
    assert_eq!(got, want);
    assert_eq!(acc.len(), 13);
    assert!(!acc.is_empty());
}

#[test]
fn count_counts_records_or_non_null_fields() {
    use AggregateFunction::Count;
    let aggs = Aggregates::new(vec![
        spec(Count, None),
        spec(Count, Some(0)),
        spec(Count, Some(7)),
    ]);
    let mut acc = aggs.create();
    for v in [Value::Int(1), Value::Null, s("x"), Value::Float(f64::NAN)] {
        aggs.update(&mut acc, &rec(0, v));
    }
    assert_eq!(aggs.finish(&acc), vec![json!(4), json!(3), json!(0)]);
}

#[test]
fn sum_of_ints_is_exact_integer() {
    use AggregateFunction::Sum;
    assert_eq!(run(Sum, &[Value::Int(5)]), json!(5));
    assert_eq!(run(Sum, &[Value::Int(-5), Value::Int(3)]), json!(-2));
    assert_eq!(
        run(Sum, &[Value::Int(i64::MAX), Value::Int(1), Value::Int(-1)]),
        json!(i64::MAX)
    );
    assert_eq!(
        run(Sum, &[Value::Int(i64::MAX), Value::Int(i64::MAX)]),
        json!(u64::MAX - 1)
    );
    assert_eq!(
        run(Sum, &[Value::Int(i64::MIN), Value::Int(-1)]),
        json!(i64::MIN as f64 - 1.0)
    );
    // Non-numbers are ignored.
    assert_eq!(
        run(
            Sum,
            &[Value::Int(2), s("3"), Value::Null, Value::Bool(true)]
        ),
        json!(2)
    );
}

#[test]
fn sum_with_floats_is_float() {
    use AggregateFunction::Sum;
    assert_eq!(run(Sum, &[Value::Int(1), Value::Float(0.5)]), json!(1.5));
    assert_eq!(run(Sum, &[Value::Int(1), Value::Float(2.0)]), json!(3.0));
    assert_eq!(
        run(Sum, &[Value::Float(-0.25), Value::Float(-0.5)]),
        json!(-0.75)
    );
    assert_eq!(run(Sum, &[Value::Float(f64::NAN), Value::Int(1)]), json!(1));
    // Large integral floats stay exact in the integer part.
    assert_eq!(
        run(
            Sum,
            &[Value::Float(1e18), Value::Float(1.0), Value::Float(-1e18)]
        ),
        json!(1.0)
    );
}

#[test]
fn avg() {
    use AggregateFunction::Avg;
    assert_eq!(run(Avg, &[]), json!(null));
    assert_eq!(run(Avg, &[s("x")]), json!(null));
    assert_eq!(run(Avg, &[Value::Int(2)]), json!(2.0));
    assert_eq!(run(Avg, &[Value::Int(1), Value::Int(2)]), json!(1.5));
    assert_eq!(
        run(
            Avg,
            &[
                Value::Int(-3),
                Value::Float(0.5),
                Value::Null,
                Value::Float(-1.0)
            ]
        ),
        json!(-3.5 / 3.0)
    );
}

#[test]
fn min_max() {
    use AggregateFunction::{Max, Min};
    assert_eq!(run(Min, &[]), json!(null));
    assert_eq!(run(Min, &[Value::Int(3)]), json!(3));
    let nums = [
        Value::Int(3),
        Value::Float(-1.5),
        Value::Int(-7),
        Value::Float(2.5),
    ];
    assert_eq!(run(Min, &nums), json!(-7));
    assert_eq!(run(Max, &nums), json!(3));
    // Int kept as Int; on equal value Int < Float.
    assert_eq!(run(Max, &[Value::Float(3.0), Value::Int(3)]), json!(3.0));
    assert_eq!(run(Min, &[Value::Float(3.0), Value::Int(3)]), json!(3));
    let strs = [s("pear"), s("apple"), s("zebra")];
    assert_eq!(run(Min, &strs), json!("apple"));
    assert_eq!(run(Max, &strs), json!("zebra"));
    // Mixed: numbers < strings; nulls and NaN ignored.
    let mixed = [s("a"), Value::Int(10), Value::Null, Value::Float(f64::NAN)];
    assert_eq!(run(Min, &mixed), json!(10));
    assert_eq!(run(Max, &mixed), json!("a"));
}

#[test]
fn first_last_by_time_then_value() {
    use AggregateFunction::{First, Last};
    let aggs = Aggregates::new(vec![spec(First, Some(0)), spec(Last, Some(0))]);
    let mut acc = aggs.create();
    assert_eq!(aggs.finish(&acc), vec![json!(null), json!(null)]);
    for (t, v) in [
        (5, s("m")),
        (1, s("late-arrival-but-earliest")),
        (9, Value::Int(1)),
        (9, Value::Int(2)),
        (1, s("a")),
        (0, Value::Null),
        (10, Value::Null),
    ] {
        aggs.update(&mut acc, &rec(t, v));
    }
    assert_eq!(aggs.finish(&acc), vec![json!("a"), json!(2)]);
    assert_eq!(run(First, &[Value::Float(-2.5)]), json!(-2.5));
}

#[test]
fn count_distinct_small_sets_are_exact() {
    use AggregateFunction::CountDistinct;
    assert_eq!(run(CountDistinct, &[]), json!(null));
    assert_eq!(run(CountDistinct, &[Value::Null]), json!(null));
    assert_eq!(run(CountDistinct, &[s("a")]), json!(1));
    let vals = [
        s("a"),
        s("b"),
        s("a"),
        Value::Int(1),
        Value::Float(1.0),
        Value::Float(1.5),
        Value::Int(-1),
        Value::Bool(true),
        Value::Null,
    ];
    assert_eq!(run(CountDistinct, &vals), json!(6));
    let many: Vec<Value> = (0..1000).map(|i| Value::Int(i % 500)).collect();
    assert_eq!(run(CountDistinct, &many), json!(500));
}

#[test]
fn count_distinct_accuracy() {
    use AggregateFunction::CountDistinct;
    for n in [10_000i64, 100_000] {
        let vals: Vec<Value> = (0..n).map(|i| s(&format!("user-{i}"))).collect();
        let got = run(CountDistinct, &vals).as_f64().unwrap();
        let rel = (got - n as f64).abs() / n as f64;
        assert!(rel < 0.03, "n={n} got={got}");
        let vals: Vec<Value> = (0..n).map(|i| Value::Int(i * 7919)).collect();
        let got = run(CountDistinct, &vals).as_f64().unwrap();
        let rel = (got - n as f64).abs() / n as f64;
        assert!(rel < 0.03, "n={n} got={got}");
    }
}

#[test]
fn percentile() {
    use AggregateFunction::Percentile;
    assert_eq!(run(Percentile, &[]), json!(null));
    assert_eq!(run(Percentile, &[s("x")]), json!(null));
    assert_eq!(run(Percentile, &[Value::Int(7)]), json!(7.0));
    let neg: Vec<Value> = (1..=101).map(|i| Value::Int(-i)).collect();
    let got = run(Percentile, &neg).as_f64().unwrap();
    assert!((got + 51.0).abs() <= 0.51, "{got}");
    let mixed = [
        Value::Int(0),
        Value::Float(-1.5),
        Value::Int(2),
        Value::Float(0.0),
        Value::Int(5),
    ];
    assert_eq!(run(Percentile, &mixed), json!(0.0));

    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let xs: Vec<f64> = (0..50_000)
        .map(|_| rng.random_range(0.001..10_000.0))
        .collect();
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    for q in [0.05, 0.5, 0.99] {
        let aggs = Aggregates::new(vec![CompiledAggregate {
            q,
            ..spec(Percentile, Some(0))
        }]);
        let mut acc = aggs.create();
        for &x in &xs {
            aggs.update(&mut acc, &rec(0, Value::Float(x)));
        }
        let got = aggs.finish(&acc)[0].as_f64().unwrap();
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        assert!(
            (got - want).abs() / want <= 0.0101,
            "q={q} got={got} want={want}"
        );
    }
}

#[test]
fn top_n_output() {
    use AggregateFunction::TopN;
    assert_eq!(run(TopN, &[]), json!(null));
    let vals = [
        s("b"),
        s("a"),
        Value::Int(1),
        s("b"),
        s("a"),
        s("c"),
        Value::Float(1.0),
        Value::Null,
    ];
    assert_eq!(
        run(TopN, &vals),
        json!([
            {"value": 1, "count": 2},
            {"value": "a", "count": 2},
            {"value": "b", "count": 2},
        ])
    );
}

#[test]
fn encode_decode_round_trip_and_errors() {
    let aggs = all_functions();
    let mut acc = aggs.create();
    for (i, v) in [
        Value::Int(3),
        s("a string that is longer than 24 bytes"),
        Value::Float(-0.5),
        Value::Null,
    ]
    .into_iter()
    .enumerate()
    {
        aggs.update(&mut acc, &rec(i as i64 * 1000 - 5, v));
    }
    for a in [aggs.create(), acc] {
        let mut buf = Vec::new();
        aggs.encode(&a, &mut buf);
        assert_eq!(buf.first(), Some(&FORMAT_VERSION));
        let back = aggs.decode(&buf).unwrap();
        assert_eq!(back, a);
        assert_eq!(aggs.finish(&back), aggs.finish(&a));
        for cut in 0..buf.len() {
            assert!(aggs.decode(&buf[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = buf.clone();
        trailing.push(0);
        assert!(aggs.decode(&trailing).is_err());
        let mut version = buf.clone();
        version[0] = 99;
        assert!(aggs.decode(&version).is_err());
        // Another pipeline's aggregates reject these bytes.
        assert!(one(AggregateFunction::Sum).decode(&buf).is_err());
        let mut reordered: Vec<CompiledAggregate> = aggs.specs().to_vec();
        reordered.swap(2, 3);
        assert!(Aggregates::new(reordered).decode(&buf).is_err());
    }
}

#[test]
fn empty_encoding_is_small() {
    let aggs = all_functions();
    let mut buf = Vec::new();
    aggs.encode(&aggs.create(), &mut buf);
    assert!(buf.len() < 40, "{}", buf.len());
}

#[test]
fn heap_size_tracks_state() {
    let aggs = all_functions();
    let mut acc = aggs.create();
    // Thirteen accumulators spill the inline SmallVec.
    assert_eq!(aggs.heap_size(&acc), 16 * std::mem::size_of::<Acc>());
    let before = aggs.heap_size(&acc);
    for i in 0..5000 {
        aggs.update(&mut acc, &rec(i, Value::Int(i)));
    }
    let after = aggs.heap_size(&acc);
    // Dense HLL (16 KiB), top_n entries, sketch buckets.
    assert!(after > before + 16 * 1024, "{after}");
    let small = one(AggregateFunction::Sum);
    let mut a = small.create();
    small.update(&mut a, &rec(0, Value::Int(1)));
    assert_eq!(small.heap_size(&a), 0);
}

#[test]
fn merge_ignores_mismatched_accumulators() {
    let a = one(AggregateFunction::Sum);
    let b = one(AggregateFunction::Min);
    let mut x = a.create();
    a.update(&mut x, &rec(0, Value::Int(1)));
    let mut y = b.create();
    b.update(&mut y, &rec(0, Value::Int(5)));
    a.merge(&mut x, &y);
    assert_eq!(a.finish(&x), vec![json!(1)]);
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        4 => (-50i64..50).prop_map(Value::Int),
        1 => prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(0)].prop_map(Value::Int),
        // Dyadic floats: their sums are exact, so even float sums are order independent.
        3 => (-400i64..400).prop_map(|k| Value::Float(k as f64 / 4.0)),
        1 => Just(Value::Float(-0.0)),
        2 => prop_oneof![
            Just("a"), Just("b"), Just("zz"), Just(""),
            Just("a rather long string that lives on the heap"),
        ]
        .prop_map(|x| Value::Str(x.into())),
    ]
}

/// Accumulates `records` split into parts by `parts[i]`, each part in shuffled order, and
/// merges the parts in a random order and grouping.
fn split_and_merge(
    aggs: &Aggregates,
    records: &[Record],
    parts: &[usize],
    seed: u64,
) -> Accumulators {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let nparts = parts.iter().copied().max().unwrap_or(0) + 1;
    let mut groups: Vec<Vec<&Record>> = vec![Vec::new(); nparts];
    for (r, &p) in records.iter().zip(parts) {
        groups[p].push(r);
    }
    let mut accs: Vec<Accumulators> = groups
        .into_iter()
        .map(|mut g| {
            g.shuffle(&mut rng);
            let mut a = aggs.create();
            for r in g {
                aggs.update(&mut a, r);
            }
            a
        })
        .collect();
    // Random merge tree: repeatedly merge two random accumulators.
    while accs.len() > 1 {
        let i = rng.random_range(0..accs.len());
        let from = accs.swap_remove(i);
        let j = rng.random_range(0..accs.len());
        // Also exercise a round trip through the stored format now and then.
        if rng.random_bool(0.3) {
            let mut buf = Vec::new();
            aggs.encode(&accs[j], &mut buf);
            accs[j] = aggs.decode(&buf).unwrap();
        }
        aggs.merge(&mut accs[j], &from);
    }
    accs.pop().unwrap_or_else(|| aggs.create())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn split_merge_equals_single_pass(
        items in prop::collection::vec((0i64..20, value_strategy(), 0usize..5), 0..200),
        seed in any::<u64>(),
    ) {
        let aggs = all_functions();
        let records: Vec<Record> = items.iter().map(|(t, v, _)| rec(*t, v.clone())).collect();
        let parts: Vec<usize> = items.iter().map(|(_, _, p)| *p).collect();
        let mut single = aggs.create();
        for r in &records {
            aggs.update(&mut single, r);
        }
        let merged = split_and_merge(&aggs, &records, &parts, seed);
        prop_assert_eq!(aggs.finish(&merged), aggs.finish(&single));
        prop_assert_eq!(&merged, &single);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        aggs.encode(&merged, &mut a);
        aggs.encode(&single, &mut b);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn arbitrary_floats_merge_identically_except_float_sums(
        xs in prop::collection::vec((any::<f64>(), 0usize..4), 0..300),
        seed in any::<u64>(),
    ) {
        let aggs = all_functions();
        let records: Vec<Record> = xs.iter().map(|(x, _)| rec(0, Value::Float(*x))).collect();
        let parts: Vec<usize> = xs.iter().map(|(_, p)| *p).collect();
        let mut single = aggs.create();
        for r in &records {
            aggs.update(&mut single, r);
        }
        let merged = split_and_merge(&aggs, &records, &parts, seed);
        let (got, want) = (aggs.finish(&merged), aggs.finish(&single));
        // Float addition is not associative: allow rounding relative to the magnitudes added.
        let scale: f64 = xs.iter().map(|(x, _)| x.abs()).filter(|x| x.is_finite()).sum();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let f = aggs.specs()[i].function;
            if matches!(f, AggregateFunction::Sum | AggregateFunction::Avg) {
                if !scale.is_finite() {
                    continue;
                }
                if let (Some(g), Some(w)) = (g.as_f64(), w.as_f64()) {
                    prop_assert!((g - w).abs() <= 1e-10 * scale, "{:?}: {} vs {}", f, g, w);
                } else {
                    prop_assert_eq!(g.is_null(), w.is_null());
                }
            } else {
                prop_assert_eq!(g, w, "{:?}", f);
            }
        }
    }

    #[test]
    fn encode_decode_round_trip(
        items in prop::collection::vec((any::<i64>(), value_strategy()), 0..100),
        bulk in 0i64..3000,
    ) {
        let aggs = all_functions();
        let mut acc = aggs.create();
        for (t, v) in &items {
            aggs.update(&mut acc, &rec(*t, v.clone()));
        }
        // Enough distinct values to make the HyperLogLog dense sometimes.
        for i in 0..bulk {
            aggs.update(&mut acc, &rec(i, Value::Int(i * 31)));
        }
        let mut buf = Vec::new();
        aggs.encode(&acc, &mut buf);
        let back = aggs.decode(&buf).unwrap();
        prop_assert_eq!(aggs.finish(&back), aggs.finish(&acc));
        prop_assert_eq!(&back, &acc);
        let mut again = Vec::new();
        aggs.encode(&back, &mut again);
        prop_assert_eq!(again, buf);
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), flip in any::<(usize, u8)>()) {
        let aggs = all_functions();
        let _ = aggs.decode(&bytes);
        let mut with_version = vec![FORMAT_VERSION, 13];
        with_version.extend_from_slice(&bytes);
        let _ = aggs.decode(&with_version);
        // Corrupt a valid encoding.
        let mut acc = aggs.create();
        for i in 0..20 {
            aggs.update(&mut acc, &rec(i, Value::Int(i)));
        }
        let mut buf = Vec::new();
        aggs.encode(&acc, &mut buf);
        let at = flip.0 % buf.len();
        buf[at] ^= flip.1;
        if let Ok(a) = aggs.decode(&buf) {
            let _ = aggs.finish(&a);
        }
    }
}

use std::sync::Arc;

use compact_str::CompactString;
use proptest::prelude::*;
use smallvec::smallvec;

use super::*;
use crate::event::{Key, ResultSchema};

fn slots(names: &[&str]) -> FieldSlots {
    let mut s = FieldSlots::default();
    for n in names {
        s.slot(n);
    }
    s
}

fn record(values: Vec<Value>) -> Record {
    Record {
        time: 0,
        fields: values.into_iter().collect(),
    }
}

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

#[test]
fn filter_on_fields() {
    let slots = slots(&["country", "amount"]);
    let mut expr = RecordExpr::compile(r#"country == "DE" && amount > 100.0"#).unwrap();
    expr.bind(&slots);
    assert!(expr
        .eval_bool(&slots, &record(vec![s("DE"), Value::Float(150.0)]))
        .unwrap());
    assert!(!expr
        .eval_bool(&slots, &record(vec![s("FR"), Value::Float(150.0)]))
        .unwrap());
    assert!(!expr
        .eval_bool(&slots, &record(vec![s("DE"), Value::Float(50.0)]))
        .unwrap());
}

#[test]
fn unbound_and_rebound_slots_give_the_same_answer() {
    let expr = RecordExpr::compile("b - a").unwrap();
    let one = slots(&["a", "b"]);
    let other = slots(&["b", "x", "a"]);
    assert_eq!(
        expr.eval(&one, &record(vec![Value::Int(1), Value::Int(10)]))
            .unwrap(),
        Value::Int(9)
    );
    let mut bound = RecordExpr::compile("b - a").unwrap();
    bound.bind(&one);
    // Evaluated with other slots than the bound ones: must still look fields up by name.
    assert_eq!(
        bound
            .eval(
                &other,
                &record(vec![Value::Int(10), Value::Null, Value::Int(1)])
            )
            .unwrap(),
        Value::Int(9)
    );
}

#[test]
fn missing_fields_are_null() {
    let slots = slots(&["a"]);
    let expr = RecordExpr::compile("b == null").unwrap();
    assert!(expr
        .eval_bool(&slots, &record(vec![Value::Int(1)]))
        .unwrap());
    // A slot beyond the record's values is null too.
    let expr = RecordExpr::compile("a == null").unwrap();
    assert!(expr.eval_bool(&slots, &record(vec![])).unwrap());
}

#[test]
fn compute_arithmetic_and_strings() {
    let slots = slots(&["price", "qty", "name", "ratio"]);
    let rec = record(vec![
        Value::Int(3),
        Value::Int(4),
        s("Widget"),
        Value::Float(0.5),
    ]);
    let eval = |src: &str| RecordExpr::compile(src).unwrap().eval(&slots, &rec);
    assert_eq!(eval("price * qty + 1").unwrap(), Value::Int(13));
    assert_eq!(eval("double(price) * ratio").unwrap(), Value::Float(1.5));
    assert_eq!(eval("name.startsWith('Wid')").unwrap(), Value::Bool(true));
    assert_eq!(eval("name.contains('dge')").unwrap(), Value::Bool(true));
    assert_eq!(eval("name.endsWith('x')").unwrap(), Value::Bool(false));
    assert_eq!(eval("name + '-' + string(qty)").unwrap(), s("Widget-4"));
    assert_eq!(eval("name.lowerAscii()").unwrap(), s("widget"));
    assert_eq!(eval("size(name)").unwrap(), Value::Int(6));
    assert_eq!(eval("qty > 3 ? 'big' : 'small'").unwrap(), s("big"));
    assert_eq!(eval("math.greatest(price, qty)").unwrap(), Value::Int(4));
    assert_eq!(eval("null").unwrap(), Value::Null);
    assert_eq!(eval("5u").unwrap(), Value::Int(5));
}

#[test]
fn evaluation_errors_are_errors_not_panics() {
    let slots = slots(&["a", "b", "name"]);
    let rec = record(vec![Value::Int(1), Value::Int(0), s("x")]);
    for src in [
        "a / b",
        "a % b",
        "a + name",
        "name.startsWith(1)",
        "[1, 2][5]",
        "{'k': 1}['nope']",
        "9223372036854775807 + a",
        "unknown_fn(a)",
        "18446744073709551615u",
        "[a, b]",
        "{'a': a}",
        "b'bytes'",
    ] {
        let expr = RecordExpr::compile(src).unwrap();
        let err = expr.eval(&slots, &rec).unwrap_err();
        assert!(!err.0.is_empty(), "{src}");
    }
    let err = RecordExpr::compile("a + 1")
        .unwrap()
        .eval_bool(&slots, &rec)
        .unwrap_err();
    assert!(err.0.contains("expected a bool"), "{err}");
}

#[test]
fn syntax_errors_carry_the_position() {
    let err = RecordExpr::compile("amount >").unwrap_err();
    assert!(err.0.starts_with("syntax error at 1:"), "{err}");
    assert!(RecordExpr::compile("").is_err());
    assert!(RecordExpr::compile("   ").is_err());
    assert!(ResultPredicate::compile("count >> 2").is_err());
}

#[test]
fn referenced_fields_are_free_identifiers() {
    let expr = RecordExpr::compile(
        "user.startsWith('a') && amount > 1.0 && tags.exists(t, t == user) && type(x) == int \
         && math.abs(delta) > 0 && type == 'click' && amount < 10.0",
    )
    .unwrap();
    assert_eq!(
        expr.referenced_fields(),
        vec!["user", "amount", "tags", "x", "delta", "type"]
    );
    let expr = RecordExpr::compile("[1, 2].map(v, v * k)").unwrap();
    assert_eq!(expr.referenced_fields(), vec!["k"]);
}

#[test]
fn a_field_named_type_and_type_names_both_work() {
    let slots = slots(&["type", "x"]);
    let expr = RecordExpr::compile("type == 'click' && type(x) == int").unwrap();
    assert!(expr
        .eval_bool(&slots, &record(vec![s("click"), Value::Int(2)]))
        .unwrap());
}

fn result(aggregates: Vec<serde_json::Value>) -> WindowResult {
    WindowResult {
        schema: Arc::new(ResultSchema {
            pipeline: "logins".into(),
            key_fields: vec![CompactString::from("user"), CompactString::from("region")],
            aggregate_names: vec!["failures".into(), "p99".into(), "top".into()],
        }),
        key: Key::from_values(&[s("alice"), Value::Int(7)]),
        window_start: 1_000,
        window_end: 61_000,
        aggregates,
        is_final: true,
    }
}

#[test]
fn having_over_a_result() {
    let r = result(vec![
        serde_json::json!(6),
        serde_json::json!(12.5),
        serde_json::json!([{"value": "a", "count": 3}]),
    ]);
    let check = |src: &str| ResultPredicate::compile(src).unwrap().eval(&r);
    assert!(check("failures > 5").unwrap());
    assert!(!check("failures > 6").unwrap());
    assert!(check("user == 'alice' && region == 7").unwrap());
    assert!(check("window_end - window_start == 60000").unwrap());
    assert!(check("p99 >= 12.0 && is_final").unwrap());
    assert!(check("size(top) == 1 && top[0].value == 'a' && top[0]['count'] == 3").unwrap());
    assert!(check("failures + 1").is_err());
    assert!(check("nope > 1").is_err());
    let p = ResultPredicate::compile("failures > 5 && window_start > 0").unwrap();
    assert_eq!(p.referenced_names(), vec!["failures", "window_start"]);
}

#[test]
fn having_with_null_aggregate_is_an_error_or_false() {
    let r = result(vec![
        serde_json::Value::Null,
        serde_json::Value::Null,
        serde_json::Value::Null,
    ]);
    assert!(ResultPredicate::compile("failures > 5")
        .unwrap()
        .eval(&r)
        .is_err());
    assert!(!ResultPredicate::compile("failures != null")
        .unwrap()
        .eval(&r)
        .unwrap());
}

#[test]
fn expressions_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RecordExpr>();
    assert_send_sync::<ResultPredicate>();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_sources_never_panic(src in "[a-z0-9 ()+*/%.<>=!&|'\"\\[\\]{}:,?-]{0,40}") {
        if let Ok(expr) = RecordExpr::compile(&src) {
            let slots = slots(&["a", "b"]);
            let rec = Record { time: 0, fields: smallvec![Value::Int(0), Value::Str("x".into())] };
            let _ = expr.eval(&slots, &rec);
            let _ = expr.eval_bool(&slots, &rec);
        }
    }
}

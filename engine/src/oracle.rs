//! Brute-force reference for window results, written independently of the window operators.
//!
//! Given the whole input (each partition's records in arrival order), [`final_results`]
//! computes every window's final result from scratch: a record's partition watermark is the
//! largest time of the earlier records of its partition minus the out-of-orderness bound
//! (`MIN` before any), a record is late for a window if `end + allowed_lateness ≤` that
//! watermark, and each window's accumulators are built with a fresh `create()` and `update`
//! over all its non-late records. Property and crash tests compare an operator's (or a sink's)
//! last result per window with it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::aggregate::Aggregates;
use crate::event::{Key, Output, Record, ResultSchema, Value, WindowResult};
use crate::expr::ResultPredicate;
use crate::topology::WindowSpec;

/// What the oracle needs to know about a pipeline.
#[derive(Clone)]
pub struct OracleSpec {
    /// Slots of the `key_by` fields.
    pub key_slots: Vec<usize>,
    /// The window.
    pub window: WindowSpec,
    /// The aggregates.
    pub aggregates: Aggregates,
    /// The `having` filter.
    pub having: Option<Arc<ResultPredicate>>,
    /// The sources' `max_out_of_orderness`, in ms.
    pub max_out_of_orderness_ms: i64,
    /// Names for rendering results.
    pub schema: Arc<ResultSchema>,
}

/// One input record with the partition it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleInput {
    /// Partition index.
    pub partition: usize,
    /// The record.
    pub record: Record,
}

/// Identifies a window result: key, window start, window end.
pub type ResultKey = (Key, i64, i64);

/// Results by window, each as [`WindowResult::to_json`] renders it.
pub type ResultMap = BTreeMap<ResultKey, serde_json::Map<String, serde_json::Value>>;

/// A record with its key and the watermark of its partition just before it was read.
struct Seen<'a> {
    key: Key,
    record: &'a Record,
    watermark: i64,
}

fn annotate<'a>(spec: &OracleSpec, inputs: &'a [OracleInput]) -> Vec<Seen<'a>> {
    let mut max_by_partition: BTreeMap<usize, i64> = BTreeMap::new();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        let watermark = match max_by_partition.get(&input.partition) {
            Some(m) => m.saturating_sub(spec.max_out_of_orderness_ms),
            None => i64::MIN,
        };
        let m = max_by_partition
            .entry(input.partition)
            .or_insert(input.record.time);
        *m = (*m).max(input.record.time);
        let null = Value::Null;
        let key = Key::from_values(
            spec.key_slots
                .iter()
                .map(|&s| input.record.fields.get(s).unwrap_or(&null)),
        );
        out.push(Seen {
            key,
            record: &input.record,
            watermark,
        });
    }
    out
}

fn ms(d: Option<crate::topology::Duration>) -> i128 {
    d.map_or(0, |d| i128::from(d.as_millis()))
}

/// Windows `(start, end)` of a tumbling or sliding window containing `t`.
fn hopping_windows(t: i64, size: i128, slide: i128) -> Vec<(i128, i128)> {
    let t = i128::from(t);
    let mut k = t.div_euclid(slide);
    let mut v = Vec::new();
    while k * slide + size > t {
        if k * slide <= t {
            v.push((k * slide, k * slide + size));
        }
        k -= 1;
    }
    v
}

/// For each record: the windows it is not late for, as (start, end); and whether it was late
/// for all of its windows.
fn assign(spec: &OracleSpec, seen: &[Seen<'_>]) -> (Vec<Vec<(i128, i128)>>, Vec<bool>) {
    let mut windows = Vec::new();
    let mut late = Vec::new();
    for s in seen {
        let wm = i128::from(s.watermark);
        let t = i128::from(s.record.time);
        let (mine, is_late) = match &spec.window {
            WindowSpec::Tumbling {
                size,
                allowed_lateness,
            } => {
                let size = i128::from(size.as_millis().max(1));
                let all = hopping_windows(s.record.time, size, size);
                let l = ms(*allowed_lateness);
                let ok: Vec<_> = all.iter().copied().filter(|w| w.1 + l > wm).collect();
                let is_late = ok.is_empty() && !all.is_empty();
                (ok, is_late)
            }
            WindowSpec::Sliding {
                size,
                slide,
                allowed_lateness,
            } => {
                let all = hopping_windows(
                    s.record.time,
                    i128::from(size.as_millis().max(1)),
                    i128::from(slide.as_millis().max(1)),
                );
                let l = ms(*allowed_lateness);
                let ok: Vec<_> = all.iter().copied().filter(|w| w.1 + l > wm).collect();
                let is_late = ok.is_empty() && !all.is_empty();
                (ok, is_late)
            }
            WindowSpec::Session {
                gap,
                allowed_lateness,
            } => {
                let g = i128::from(gap.as_millis().max(1));
                let is_late = t + g + ms(*allowed_lateness) <= wm;
                (Vec::new(), is_late)
            }
            WindowSpec::Count { .. } => (Vec::new(), t <= wm),
        };
        windows.push(mine);
        late.push(is_late);
    }
    (windows, late)
}

fn value_order(a: &Value, b: &Value) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Null => 0u8,
        Value::Bool(_) => 1,
        Value::Int(_) => 2,
        Value::Float(_) => 3,
        Value::Str(_) => 4,
    };
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn record_order(a: &Record, b: &Record) -> Ordering {
    if a.time != b.time {
        return a.time.cmp(&b.time);
    }
    for (x, y) in a.fields.iter().zip(b.fields.iter()) {
        let o = value_order(x, y);
        if o != Ordering::Equal {
            return o;
        }
    }
    a.fields.len().cmp(&b.fields.len())
}

fn clamp(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The final result of every window (rendered with `is_final = true`), after `having`.
pub fn final_results(spec: &OracleSpec, inputs: &[OracleInput]) -> ResultMap {
    let seen = annotate(spec, inputs);
    let (windows, late) = assign(spec, &seen);
    // Per window, the records that count for it.
    let mut groups: BTreeMap<ResultKey, Vec<&Record>> = BTreeMap::new();
    match &spec.window {
        WindowSpec::Tumbling { .. } | WindowSpec::Sliding { .. } => {
            for (s, ws) in seen.iter().zip(&windows) {
                for &(start, end) in ws {
                    groups
                        .entry((s.key.clone(), clamp(start), clamp(end)))
                        .or_default()
                        .push(s.record);
                }
            }
        }
        WindowSpec::Session { gap, .. } => {
            let g = i128::from(gap.as_millis().max(1));
            let mut by_key: BTreeMap<&Key, Vec<&Record>> = BTreeMap::new();
            for (s, l) in seen.iter().zip(&late) {
                if !l {
                    by_key.entry(&s.key).or_default().push(s.record);
                }
            }
            for (key, mut recs) in by_key {
                recs.sort_by(|a, b| record_order(a, b));
                let mut begin = 0;
                for i in 1..=recs.len() {
                    let split = i == recs.len()
                        || i128::from(recs[i].time) > i128::from(recs[i - 1].time) + g;
                    if split {
                        let part = &recs[begin..i];
                        let k = (
                            key.clone(),
                            part[0].time,
                            clamp(i128::from(part[part.len() - 1].time) + g),
                        );
                        groups.insert(k, part.to_vec());
                        begin = i;
                    }
                }
            }
        }
        WindowSpec::Count { size } => {
            let n = (*size).max(1) as usize;
            let mut by_key: BTreeMap<&Key, Vec<&Record>> = BTreeMap::new();
            for (s, l) in seen.iter().zip(&late) {
                if !l {
                    by_key.entry(&s.key).or_default().push(s.record);
                }
            }
            for (key, mut recs) in by_key {
                recs.sort_by(|a, b| record_order(a, b));
                for chunk in recs.chunks(n) {
                    let (first, last) = (chunk[0].time, chunk[chunk.len() - 1].time);
                    groups.insert((key.clone(), first, last.saturating_add(1)), chunk.to_vec());
                }
            }
        }
    }
    let mut out = ResultMap::new();
    for ((key, start, end), recs) in groups {
        let mut acc = spec.aggregates.create();
        for r in &recs {
            spec.aggregates.update(&mut acc, r);
        }
        let result = WindowResult {
            schema: spec.schema.clone(),
            key: key.clone(),
            window_start: start,
            window_end: end,
            aggregates: spec.aggregates.finish(&acc),
            is_final: true,
        };
        if let Some(h) = &spec.having {
            if !matches!(h.eval(&result), Ok(true)) {
                continue;
            }
        }
        out.insert((key, start, end), result.to_json());
    }
    out
}

/// How many records are late for every window they belong to.
pub fn late_count(spec: &OracleSpec, inputs: &[OracleInput]) -> usize {
    let seen = annotate(spec, inputs);
    assign(spec, &seen).1.into_iter().filter(|l| *l).count()
}

/// The last result per window among an operator's outputs (in emission order).
pub fn last_results<'a>(outputs: impl IntoIterator<Item = &'a Output>) -> ResultMap {
    let mut map = ResultMap::new();
    for o in outputs {
        if let Output::Result(r) = o {
            map.insert((r.key.clone(), r.window_start, r.window_end), r.to_json());
        }
    }
    map
}

/// Turns a result line as sinks write it (a JSON object from [`WindowResult::to_json`]) back
/// into its window and object; `None` if it is not such an object.
pub fn result_entry(
    value: &serde_json::Value,
    schema: &ResultSchema,
) -> Option<(ResultKey, serde_json::Map<String, serde_json::Value>)> {
    let obj = value.as_object()?;
    let mut key_values = Vec::with_capacity(schema.key_fields.len());
    for name in &schema.key_fields {
        key_values.push(json_to_value(obj.get(name.as_str())?)?);
    }
    let start = obj.get("window_start")?.as_i64()?;
    let end = obj.get("window_end")?.as_i64()?;
    Some(((Key::from_values(&key_values), start, end), obj.clone()))
}

/// Adds each result line to `map`, later lines replacing earlier ones for the same window.
pub fn last_results_from_json<'a>(
    lines: impl IntoIterator<Item = &'a serde_json::Value>,
    schema: &ResultSchema,
) -> ResultMap {
    let mut map = ResultMap::new();
    for v in lines {
        if let Some((k, obj)) = result_entry(v, schema) {
            map.insert(k, obj);
        }
    }
    map
}

fn json_to_value(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => Value::Int(i),
            _ => Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::Str(s.as_str().into()),
        _ => return None,
    })
}

/// A copy of `map` without the `is_final` field, to compare results regardless of it.
pub fn without_is_final(map: &ResultMap) -> ResultMap {
    map.iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.remove("is_final");
            (k.clone(), v)
        })
        .collect()
}

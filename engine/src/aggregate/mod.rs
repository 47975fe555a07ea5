//! Mergeable aggregates: one accumulator per aggregate of a pipeline, updated per record,
//! merged across panes, sessions and partitions, finished into JSON values, and stored in a
//! compact versioned binary format.
//!
//! # Order independence
//!
//! Window results are compared exactly against a brute-force oracle, after restarts and under
//! any interleaving of partitions, so `update` and `merge` in any order and grouping give the
//! same `finish` output:
//!
//! - `count` counts records (with a field: records where it is not null).
//! - `sum` adds integer-valued inputs (`Int`, and `Float`s with an integral value that fits an
//!   `i64`) exactly in 128 bits, and other floats in a separate `f64`. The result is a JSON
//!   integer when every input was an `Int` and the sum fits 64 bits, else a float (the integer
//!   part plus the float part). Float sums of non-integral inputs may differ in the last bits across
//!   orders, as float addition is not associative. `avg` is that sum over the number of
//!   numeric inputs, always a float.
//! - `min`/`max` and the ties of `first`/`last`/`top_n` use the total order of
//!   [`value::cmp_values`]: `Null < Bool < numbers < strings`, numbers by exact value.
//! - `first`/`last` take the value of the earliest/latest event time; on equal times, the
//!   smallest/largest value.
//! - `count_distinct` is a HyperLogLog ([`hll`]) over a fixed, stable hash of the value's
//!   canonical bytes; `percentile` a log-bucket sketch ([`sketch`]) merged by adding counts;
//!   `top_n` keeps exact counts per value ([`top_n`]).
//!
//! Inputs an aggregate cannot use — `Null` everywhere, non-numbers in `sum`/`avg`/
//! `percentile`, NaN — are ignored; the runtime already routes badly typed records to the
//! dead-letter output. Nothing here panics on input or on decoded bytes.
//!
//! An empty accumulator finishes as `0` for `count` and `sum`, `null` for the others.

mod codec;
pub mod hll;
pub mod sketch;
pub mod top_n;
pub mod value;

use std::cmp::Ordering;
use std::sync::Arc;

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::event::{Record, Timestamp, Value};
use crate::topology::AggregateFunction;

use codec::{err, put_f64, put_i128, put_ivarint, put_uvarint, put_value, Reader};
pub use hll::Hll;
pub use sketch::QuantileSketch;
pub use top_n::TopN;
use value::{cmp_values, float_as_int, stable_hash};

/// Version byte that starts every encoding written by [`Aggregates::encode`].
pub const FORMAT_VERSION: u8 = 1;

/// One aggregate of a pipeline, with its input resolved to a record slot.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledAggregate {
    /// Output name.
    pub name: CompactString,
    /// The function.
    pub function: AggregateFunction,
    /// Slot of the input field in [`Record::fields`]; `None` only for `count`.
    pub slot: Option<usize>,
    /// Quantile for `percentile`.
    pub q: f64,
    /// Size for `top_n`.
    pub n: u32,
}

/// Failure to decode stored accumulators.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode accumulators: {0}")]
pub struct AggregateError(pub String);

/// The accumulators of one (key, window or pane): one per aggregate, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulators {
    accs: SmallVec<[Acc; 4]>,
}

impl Accumulators {
    /// Number of accumulators (the number of aggregates they were created for).
    pub fn len(&self) -> usize {
        self.accs.len()
    }

    /// Whether there are no accumulators (a pipeline without aggregates).
    pub fn is_empty(&self) -> bool {
        self.accs.is_empty()
    }
}

/// Exact integer part and float part of a sum, with the number of numeric inputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct SumAcc {
    // The 128-bit integer part is split in two words so the enum keeps 8-byte alignment
    // (an i128 field would make every accumulator 16-aligned and larger).
    int_lo: u64,
    int_hi: i64,
    float: f64,
    /// Numeric inputs; the top bit records that a `Float` input was seen (a count never
    /// reaches 2^63).
    n: u64,
}

const FLOAT_SEEN: u64 = 1 << 63;

impl SumAcc {
    #[inline]
    fn int(&self) -> i128 {
        (i128::from(self.int_hi) << 64) | i128::from(self.int_lo)
    }

    #[inline]
    fn set_int(&mut self, v: i128) {
        self.int_lo = v as u64;
        self.int_hi = (v >> 64) as i64;
    }

    #[inline]
    fn count(&self) -> u64 {
        self.n & !FLOAT_SEEN
    }

    #[inline]
    fn add(&mut self, v: &Value) {
        match v {
            Value::Int(i) => {
                self.set_int(self.int().wrapping_add(i128::from(*i)));
                self.n += 1;
            }
            Value::Float(f) => self.add_float(*f),
            _ => {}
        }
    }

    fn add_float(&mut self, f: f64) {
        if f.is_nan() {
            return;
        }
        match float_as_int(f) {
            Some(i) => self.set_int(self.int().wrapping_add(i128::from(i))),
            None => self.float += f,
        }
        self.n = (self.n + 1) | FLOAT_SEEN;
    }

    fn merge(&mut self, o: &SumAcc) {
        self.set_int(self.int().wrapping_add(o.int()));
        self.float += o.float;
        self.n =
            (self.count().wrapping_add(o.count()) & !FLOAT_SEEN) | ((self.n | o.n) & FLOAT_SEEN);
    }

    fn total_f64(&self) -> f64 {
        self.int() as f64 + self.float
    }

    fn sum_json(&self) -> serde_json::Value {
        if self.n & FLOAT_SEEN == 0 {
            let i = self.int();
            if let Ok(v) = i64::try_from(i) {
                return serde_json::Value::from(v);
            }
            if let Ok(v) = u64::try_from(i) {
                return serde_json::Value::from(v);
            }
        }
        float_json(self.total_f64())
    }

    fn avg_json(&self) -> serde_json::Value {
        match self.count() {
            0 => serde_json::Value::Null,
            n => float_json(self.total_f64() / n as f64),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_uvarint(
            buf,
            (self.count() << 1) | u64::from(self.n & FLOAT_SEEN != 0),
        );
        put_i128(buf, self.int());
        if self.n & FLOAT_SEEN != 0 {
            put_f64(buf, self.float);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, AggregateError> {
        let word = r.uvarint()?;
        let n = (word >> 1) | if word & 1 != 0 { FLOAT_SEEN } else { 0 };
        let mut s = SumAcc {
            n,
            ..SumAcc::default()
        };
        s.set_int(r.i128()?);
        if n & FLOAT_SEEN != 0 {
            s.float = r.f64()?;
            if s.float.is_nan() {
                return Err(err("sum is NaN"));
            }
        } else if s.count() == 0 && s.int() != 0 {
            return Err(err("non-zero sum of no inputs"));
        }
        Ok(s)
    }
}

fn float_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// A value with its event time, for `first`/`last`; `Value::Null` when empty.
#[derive(Debug, Clone, PartialEq, Default)]
struct Timed {
    time: Timestamp,
    value: Value,
}

impl Timed {
    /// Whether `(time, v)` should replace the current one: earlier (first) or later (last),
    /// ties by value.
    #[inline]
    fn wins(&self, time: Timestamp, v: &Value, want: Ordering) -> bool {
        if matches!(self.value, Value::Null) {
            return true;
        }
        time.cmp(&self.time)
            .then_with(|| cmp_values(v, &self.value))
            == want
    }

    #[inline]
    fn offer(&mut self, time: Timestamp, v: &Value, want: Ordering) {
        if !is_usable(v) {
            return;
        }
        if self.wins(time, v, want) {
            self.time = time;
            self.value = v.clone();
        }
    }
}

/// Values that min/max/first/last consider: not null, not NaN.
#[inline]
fn is_usable(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Float(f) => !f.is_nan(),
        _ => true,
    }
}

#[inline]
fn offer_extreme(cur: &mut Value, v: &Value, want: Ordering) {
    if is_usable(v) && (matches!(cur, Value::Null) || cmp_values(v, cur) == want) {
        *cur = v.clone();
    }
}

/// One accumulator; heavy states live behind a pointer or allocate only when non-empty, so
/// the enum stays 40 bytes.
#[derive(Debug, Clone, PartialEq)]
enum Acc {
    Count(u64),
    Sum(SumAcc),
    Avg(SumAcc),
    Min(Value),
    Max(Value),
    First(Timed),
    Last(Timed),
    CountDistinct(Hll),
    Percentile(Option<Box<QuantileSketch>>),
    TopN(TopN),
}

const TAG_COUNT: u8 = 0;
const TAG_SUM: u8 = 1;
const TAG_AVG: u8 = 2;
const TAG_MIN: u8 = 3;
const TAG_MAX: u8 = 4;
const TAG_FIRST: u8 = 5;
const TAG_LAST: u8 = 6;
const TAG_COUNT_DISTINCT: u8 = 7;
const TAG_PERCENTILE: u8 = 8;
const TAG_TOP_N: u8 = 9;

fn tag_of(f: AggregateFunction) -> u8 {
    match f {
        AggregateFunction::Count => TAG_COUNT,
        AggregateFunction::Sum => TAG_SUM,
        AggregateFunction::Avg => TAG_AVG,
        AggregateFunction::Min => TAG_MIN,
        AggregateFunction::Max => TAG_MAX,
        AggregateFunction::First => TAG_FIRST,
        AggregateFunction::Last => TAG_LAST,
        AggregateFunction::CountDistinct => TAG_COUNT_DISTINCT,
        AggregateFunction::Percentile => TAG_PERCENTILE,
        AggregateFunction::TopN => TAG_TOP_N,
    }
}

fn value_heap(v: &Value) -> usize {
    match v {
        Value::Str(s) if s.is_heap_allocated() => s.capacity(),
        _ => 0,
    }
}

impl Acc {
    fn new(f: AggregateFunction) -> Acc {
        match f {
            AggregateFunction::Count => Acc::Count(0),
            AggregateFunction::Sum => Acc::Sum(SumAcc::default()),
            AggregateFunction::Avg => Acc::Avg(SumAcc::default()),
            AggregateFunction::Min => Acc::Min(Value::Null),
            AggregateFunction::Max => Acc::Max(Value::Null),
            AggregateFunction::First => Acc::First(Timed::default()),
            AggregateFunction::Last => Acc::Last(Timed::default()),
            AggregateFunction::CountDistinct => Acc::CountDistinct(Hll::new()),
            AggregateFunction::Percentile => Acc::Percentile(None),
            AggregateFunction::TopN => Acc::TopN(TopN::new()),
        }
    }

    fn merge(&mut self, from: &Acc) {
        match (self, from) {
            (Acc::Count(a), Acc::Count(b)) => *a = a.wrapping_add(*b),
            (Acc::Sum(a), Acc::Sum(b)) | (Acc::Avg(a), Acc::Avg(b)) => a.merge(b),
            (Acc::Min(a), Acc::Min(b)) => offer_extreme(a, b, Ordering::Less),
            (Acc::Max(a), Acc::Max(b)) => offer_extreme(a, b, Ordering::Greater),
            (Acc::First(a), Acc::First(b)) => a.offer(b.time, &b.value, Ordering::Less),
            (Acc::Last(a), Acc::Last(b)) => a.offer(b.time, &b.value, Ordering::Greater),
            (Acc::CountDistinct(a), Acc::CountDistinct(b)) => a.merge(b),
            (Acc::Percentile(a), Acc::Percentile(Some(b))) => match a {
                Some(a) => a.merge(b),
                None => *a = Some(b.clone()),
            },
            (Acc::Percentile(_), Acc::Percentile(None)) => {}
            (Acc::TopN(a), Acc::TopN(b)) => a.merge(b),
            // Accumulators of different pipelines: nothing sensible to merge.
            _ => {}
        }
    }

    fn finish(&self, spec: &CompiledAggregate) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Acc::Count(c) => J::from(*c),
            Acc::Sum(s) => s.sum_json(),
            Acc::Avg(s) => s.avg_json(),
            Acc::Min(v) | Acc::Max(v) => v.to_json(),
            Acc::First(t) | Acc::Last(t) => t.value.to_json(),
            Acc::CountDistinct(h) => {
                if h.is_empty() {
                    J::Null
                } else {
                    J::from(h.estimate().round() as u64)
                }
            }
            Acc::Percentile(s) => s
                .as_ref()
                .and_then(|s| s.quantile(spec.q))
                .map_or(J::Null, float_json),
            Acc::TopN(t) => {
                if t.is_empty() {
                    return J::Null;
                }
                let n = usize::try_from(spec.n).unwrap_or(usize::MAX);
                J::Array(
                    t.top(n)
                        .into_iter()
                        .map(|(v, c)| {
                            let mut o = serde_json::Map::with_capacity(2);
                            o.insert("value".into(), v.to_json());
                            o.insert("count".into(), J::from(c));
                            J::Object(o)
                        })
                        .collect(),
                )
            }
        }
    }

    fn heap_size(&self) -> usize {
        match self {
            Acc::Count(_) | Acc::Sum(_) | Acc::Avg(_) => 0,
            Acc::Min(v) | Acc::Max(v) => value_heap(v),
            Acc::First(t) | Acc::Last(t) => value_heap(&t.value),
            Acc::CountDistinct(h) => h.heap_size(),
            Acc::Percentile(s) => s
                .as_ref()
                .map_or(0, |s| std::mem::size_of::<QuantileSketch>() + s.heap_size()),
            Acc::TopN(t) => t.heap_size(),
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Acc::Count(_) => TAG_COUNT,
            Acc::Sum(_) => TAG_SUM,
            Acc::Avg(_) => TAG_AVG,
            Acc::Min(_) => TAG_MIN,
            Acc::Max(_) => TAG_MAX,
            Acc::First(_) => TAG_FIRST,
            Acc::Last(_) => TAG_LAST,
            Acc::CountDistinct(_) => TAG_COUNT_DISTINCT,
            Acc::Percentile(_) => TAG_PERCENTILE,
            Acc::TopN(_) => TAG_TOP_N,
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(self.tag());
        match self {
            Acc::Count(c) => put_uvarint(buf, *c),
            Acc::Sum(s) | Acc::Avg(s) => s.encode(buf),
            Acc::Min(v) | Acc::Max(v) => put_value(buf, v),
            Acc::First(t) | Acc::Last(t) => {
                put_value(buf, &t.value);
                if !matches!(t.value, Value::Null) {
                    put_ivarint(buf, t.time);
                }
            }
            Acc::CountDistinct(h) => h.encode(buf),
            Acc::Percentile(s) => match s {
                Some(s) => s.encode(buf),
                None => put_uvarint(buf, 0),
            },
            Acc::TopN(t) => t.encode(buf),
        }
    }

    fn decode(r: &mut Reader<'_>, f: AggregateFunction) -> Result<Acc, AggregateError> {
        let tag = r.u8()?;
        if tag != tag_of(f) {
            return Err(err(format!(
                "accumulator type {tag} does not match aggregate {f:?}"
            )));
        }
        let usable = |v: Value| {
            if matches!(v, Value::Null) || is_usable(&v) {
                Ok(v)
            } else {
                Err(err("unusable stored value"))
            }
        };
        Ok(match f {
            AggregateFunction::Count => Acc::Count(r.uvarint()?),
            AggregateFunction::Sum => Acc::Sum(SumAcc::decode(r)?),
            AggregateFunction::Avg => Acc::Avg(SumAcc::decode(r)?),
            AggregateFunction::Min => Acc::Min(usable(r.value()?)?),
            AggregateFunction::Max => Acc::Max(usable(r.value()?)?),
            AggregateFunction::First | AggregateFunction::Last => {
                let value = usable(r.value()?)?;
                let time = if matches!(value, Value::Null) {
                    0
                } else {
                    r.ivarint()?
                };
                let t = Timed { time, value };
                if f == AggregateFunction::First {
                    Acc::First(t)
                } else {
                    Acc::Last(t)
                }
            }
            AggregateFunction::CountDistinct => Acc::CountDistinct(Hll::decode(r)?),
            AggregateFunction::Percentile => {
                let s = QuantileSketch::decode(r)?;
                Acc::Percentile((s.count() > 0).then(|| Box::new(s)))
            }
            AggregateFunction::TopN => Acc::TopN(TopN::decode(r)?),
        })
    }
}

/// A pipeline's aggregates; cheap to clone.
#[derive(Debug, Clone)]
pub struct Aggregates {
    specs: Arc<[CompiledAggregate]>,
}

impl Aggregates {
    /// Builds the set.
    pub fn new(specs: Vec<CompiledAggregate>) -> Self {
        Aggregates {
            specs: specs.into(),
        }
    }

    /// The aggregate specs.
    pub fn specs(&self) -> &[CompiledAggregate] {
        &self.specs
    }

    /// Empty accumulators.
    pub fn create(&self) -> Accumulators {
        Accumulators {
            accs: self.specs.iter().map(|s| Acc::new(s.function)).collect(),
        }
    }

    /// Adds one record.
    #[inline]
    pub fn update(&self, acc: &mut Accumulators, record: &Record) {
        for (spec, a) in self.specs.iter().zip(acc.accs.iter_mut()) {
            let field = spec.slot.and_then(|s| record.fields.get(s));
            match a {
                Acc::Count(c) => {
                    let counted = match spec.slot {
                        None => true,
                        Some(_) => field.is_some_and(|v| !matches!(v, Value::Null)),
                    };
                    *c += u64::from(counted);
                }
                Acc::Sum(s) | Acc::Avg(s) => {
                    if let Some(v) = field {
                        s.add(v);
                    }
                }
                Acc::Min(cur) => {
                    if let Some(v) = field {
                        offer_extreme(cur, v, Ordering::Less);
                    }
                }
                Acc::Max(cur) => {
                    if let Some(v) = field {
                        offer_extreme(cur, v, Ordering::Greater);
                    }
                }
                Acc::First(t) => {
                    if let Some(v) = field {
                        t.offer(record.time, v, Ordering::Less);
                    }
                }
                Acc::Last(t) => {
                    if let Some(v) = field {
                        t.offer(record.time, v, Ordering::Greater);
                    }
                }
                Acc::CountDistinct(h) => {
                    if let Some(hash) = field.and_then(stable_hash) {
                        h.insert_hash(hash);
                    }
                }
                Acc::Percentile(s) => {
                    if let Some(x) = field.and_then(Value::as_f64) {
                        if x.is_finite() {
                            s.get_or_insert_with(Box::default).insert(x);
                        }
                    }
                }
                Acc::TopN(t) => {
                    if let Some(v) = field {
                        t.insert(v);
                    }
                }
            }
        }
    }

    /// Merges `from` into `into`; merge is associative and commutative.
    pub fn merge(&self, into: &mut Accumulators, from: &Accumulators) {
        for (a, b) in into.accs.iter_mut().zip(from.accs.iter()) {
            a.merge(b);
        }
    }

    /// The aggregate values, in declaration order.
    pub fn finish(&self, acc: &Accumulators) -> Vec<serde_json::Value> {
        self.specs
            .iter()
            .zip(acc.accs.iter())
            .map(|(spec, a)| a.finish(spec))
            .collect()
    }

    /// Appends the versioned binary encoding of `acc` to `buf`.
    ///
    /// Format (version 1): the version byte, the number of accumulators (LEB128 varint), then
    /// per accumulator its function tag byte and payload; see the module sources for payloads.
    /// Integers are LEB128 varints (signed ones zigzag), floats 8 bytes little endian.
    pub fn encode(&self, acc: &Accumulators, buf: &mut Vec<u8>) {
        buf.push(FORMAT_VERSION);
        put_uvarint(buf, acc.accs.len() as u64);
        for a in &acc.accs {
            a.encode(buf);
        }
    }

    /// Decodes bytes written by [`Aggregates::encode`].
    pub fn decode(&self, bytes: &[u8]) -> Result<Accumulators, AggregateError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(err(format!("unsupported format version {version}")));
        }
        let n = r.uvarint()?;
        if n != self.specs.len() as u64 {
            return Err(err(format!(
                "{n} accumulators stored, {} aggregates defined",
                self.specs.len()
            )));
        }
        let mut accs = SmallVec::with_capacity(self.specs.len());
        for spec in self.specs.iter() {
            accs.push(Acc::decode(&mut r, spec.function)?);
        }
        if r.remaining() != 0 {
            return Err(err("trailing bytes"));
        }
        Ok(Accumulators { accs })
    }

    /// Approximate heap bytes held by `acc` beyond its inline size (for the memory budget).
    pub fn heap_size(&self, acc: &Accumulators) -> usize {
        let spilled = if acc.accs.spilled() {
            acc.accs.capacity() * std::mem::size_of::<Acc>()
        } else {
            0
        };
        spilled + acc.accs.iter().map(Acc::heap_size).sum::<usize>()
    }
}

#[cfg(test)]
mod tests;

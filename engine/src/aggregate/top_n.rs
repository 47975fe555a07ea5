//! Exact frequency counts per value, for `top_n`.
//!
//! Every distinct value keeps its exact count, so merging adds counts and the result (the `n`
//! most frequent, ties by the smaller value in [`cmp_values`] order) does not depend on
//! partitioning or order. Memory grows with the number of distinct values.

use std::cmp::Ordering;

use compact_str::CompactString;
use rustc_hash::FxHashMap;

use super::codec::{err, put_uvarint, put_value, Reader};
use super::value::{canonical, cmp_values};
use super::AggregateError;
use crate::event::Value;

/// A canonical, hashable value (see [`canonical`]): floats by their bits, never NaN and never
/// integral (those are `Int`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(CompactString),
}

impl Key {
    fn from_value(v: &Value) -> Option<Key> {
        Some(match canonical(v)? {
            Value::Bool(b) => Key::Bool(b),
            Value::Int(i) => Key::Int(i),
            Value::Float(f) => Key::Float(f.to_bits()),
            Value::Str(s) => Key::Str(s),
            Value::Null => return None,
        })
    }

    fn to_value(&self) -> Value {
        match self {
            Key::Bool(b) => Value::Bool(*b),
            Key::Int(i) => Value::Int(*i),
            Key::Float(bits) => Value::Float(f64::from_bits(*bits)),
            Key::Str(s) => Value::Str(s.clone()),
        }
    }

    fn heap_size(&self) -> usize {
        match self {
            Key::Str(s) if s.is_heap_allocated() => s.capacity(),
            _ => 0,
        }
    }
}

fn cmp_keys(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Str(x), Key::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Key::Int(x), Key::Int(y)) => x.cmp(y),
        // Other pairs involve no string, so converting is allocation-free.
        _ => cmp_values(&a.to_value(), &b.to_value()),
    }
}

/// Counts per distinct value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopN {
    counts: FxHashMap<Key, u64>,
}

impl TopN {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no value was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Number of distinct values counted.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Counts one value; `Null` and NaN are ignored.
    pub fn insert(&mut self, v: &Value) {
        self.add(v, 1);
    }

    fn add(&mut self, v: &Value, count: u64) {
        if let Some(k) = Key::from_value(v) {
            let c = self.counts.entry(k).or_insert(0);
            *c = c.wrapping_add(count);
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &TopN) {
        // No `reserve(other.len())`: partials of one key mostly share values, and reserving
        // for the sum would rehash large maps on every merge.
        for (k, &c) in &other.counts {
            match self.counts.get_mut(k) {
                Some(mine) => *mine = mine.wrapping_add(c),
                None => {
                    self.counts.insert(k.clone(), c);
                }
            }
        }
    }

    /// The `n` most frequent values with their counts: count descending, then value ascending.
    pub fn top(&self, n: usize) -> Vec<(Value, u64)> {
        let mut entries: Vec<(&Key, u64)> = self.counts.iter().map(|(k, &c)| (k, c)).collect();
        let order =
            |a: &(&Key, u64), b: &(&Key, u64)| b.1.cmp(&a.1).then_with(|| cmp_keys(a.0, b.0));
        if n == 0 {
            return Vec::new();
        }
        if entries.len() > n {
            entries.select_nth_unstable_by(n - 1, order);
            entries.truncate(n);
        }
        entries.sort_unstable_by(order);
        entries
            .into_iter()
            .map(|(k, c)| (k.to_value(), c))
            .collect()
    }

    /// Approximate heap bytes.
    pub fn heap_size(&self) -> usize {
        let slot = std::mem::size_of::<(Key, u64)>() + 1;
        self.counts.capacity() * slot + self.counts.keys().map(Key::heap_size).sum::<usize>()
    }

    /// Appends the encoding: the number of values, then each value and its count, values in
    /// ascending order so equal states encode to equal bytes.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut entries: Vec<(&Key, u64)> = self.counts.iter().map(|(k, &c)| (k, c)).collect();
        entries.sort_unstable_by(|a, b| cmp_keys(a.0, b.0));
        put_uvarint(buf, entries.len() as u64);
        for (k, c) in entries {
            put_value(buf, &k.to_value());
            put_uvarint(buf, c);
        }
    }

    /// Reads what [`TopN::encode`] wrote; values must be canonical, distinct, counts non-zero.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, AggregateError> {
        let n = r.length(2)?;
        let mut counts = FxHashMap::default();
        counts.reserve(n);
        for _ in 0..n {
            let v = r.value()?;
            let key = Key::from_value(&v).ok_or_else(|| err("top_n value is null"))?;
            if key.to_value() != v {
                return Err(err("top_n value is not canonical"));
            }
            let c = r.uvarint()?;
            if c == 0 {
                return Err(err("top_n count is zero"));
            }
            if counts.insert(key, c).is_some() {
                return Err(err("duplicate top_n value"));
            }
        }
        Ok(TopN { counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn ranks_by_count_then_value() {
        let mut t = TopN::new();
        for v in [
            s("b"),
            s("a"),
            s("c"),
            s("b"),
            s("a"),
            Value::Int(3),
            Value::Null,
        ] {
            t.insert(&v);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.top(3), vec![(s("a"), 2), (s("b"), 2), (Value::Int(3), 1)]);
        assert_eq!(t.top(0), vec![]);
        assert_eq!(t.top(10).len(), 4);
    }

    #[test]
    fn integral_floats_are_ints() {
        let mut t = TopN::new();
        t.insert(&Value::Float(2.0));
        t.insert(&Value::Int(2));
        t.insert(&Value::Float(2.5));
        assert_eq!(t.top(5), vec![(Value::Int(2), 2), (Value::Float(2.5), 1)]);
    }

    #[test]
    fn encode_rejects_non_canonical() {
        let mut buf = Vec::new();
        put_uvarint(&mut buf, 1);
        put_value(&mut buf, &Value::Float(1.0));
        put_uvarint(&mut buf, 1);
        assert!(TopN::decode(&mut Reader::new(&buf)).is_err());
        let mut t = TopN::new();
        t.insert(&s("x"));
        t.insert(&Value::Bool(true));
        let mut buf = Vec::new();
        t.encode(&mut buf);
        assert_eq!(TopN::decode(&mut Reader::new(&buf)).unwrap(), t);
    }
}

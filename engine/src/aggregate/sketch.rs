//! A mergeable quantile sketch with relative-error guarantees (DDSketch-style log buckets).
//!
//! A positive value `x` falls in bucket `i = ceil(ln x / ln γ)`, covering `(γ^(i-1), γ^i]`,
//! with `γ = (1 + α) / (1 − α)` and `α` = [`RELATIVE_ACCURACY`]; the bucket is reported as
//! `2γ^i / (γ + 1)`, which is within `α` of every value in it. Negative values use a mirrored
//! set of buckets on `|x|`; values smaller in magnitude than `f64::MIN_POSITIVE` (including
//! zero) are counted apart. The exact minimum and maximum are kept too, to clamp estimates and
//! to answer q = 0 and q = 1 exactly.
//!
//! The state is a multiset of bucket counts, merged by adding counts, so it does not depend on
//! insertion or merge order. Memory is bounded: each side keeps at most [`MAX_SPAN`] consecutive
//! bucket indexes and folds smaller magnitudes into the lowest kept bucket. The fold depends
//! only on the largest index ever seen, so it is order independent as well.

use std::cmp::Ordering;

use super::codec::{err, put_f64, put_ivarint, put_uvarint, Reader};
use super::AggregateError;

/// Relative accuracy of quantile estimates.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Widest range of bucket indexes kept per sign (about 35 orders of magnitude at 1%).
pub const MAX_SPAN: i32 = 4096;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// Bucket counts for one sign, sorted by index, every count non-zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Store {
    bins: Vec<(i32, u64)>,
}

impl Store {
    fn add(&mut self, index: i32, count: u64) {
        let index = match self.bins.last() {
            Some(&(max, _)) => index.max(max.saturating_sub(MAX_SPAN - 1)),
            None => index,
        };
        match self.bins.binary_search_by(|b| b.0.cmp(&index)) {
            Ok(pos) => {
                if let Some(b) = self.bins.get_mut(pos) {
                    b.1 = b.1.wrapping_add(count);
                }
            }
            Err(pos) => {
                self.bins.insert(pos, (index, count));
                if pos + 1 == self.bins.len() {
                    self.fold_low();
                }
            }
        }
    }

    /// Folds bins more than `MAX_SPAN - 1` below the highest into the lowest allowed index.
    fn fold_low(&mut self) {
        let Some(&(max, _)) = self.bins.last() else {
            return;
        };
        let floor = max.saturating_sub(MAX_SPAN - 1);
        let below = self.bins.partition_point(|b| b.0 < floor);
        if below == 0 {
            return;
        }
        let folded: u64 = self
            .bins
            .drain(..below)
            .fold(0u64, |acc, b| acc.wrapping_add(b.1));
        match self.bins.first_mut() {
            Some(first) if first.0 == floor => first.1 = first.1.wrapping_add(folded),
            _ => self.bins.insert(0, (floor, folded)),
        }
    }

    fn merge(&mut self, other: &Store) {
        if other.bins.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.bins.len() + other.bins.len());
        let (a, b) = (&self.bins, &other.bins);
        let (mut i, mut j) = (0, 0);
        while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
            match x.0.cmp(&y.0) {
                Ordering::Less => {
                    out.push(x);
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(y);
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((x.0, x.1.wrapping_add(y.1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(a.get(i..).unwrap_or_default());
        out.extend_from_slice(b.get(j..).unwrap_or_default());
        self.bins = out;
        self.fold_low();
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_uvarint(buf, self.bins.len() as u64);
        let mut prev: Option<i32> = None;
        for &(index, count) in &self.bins {
            match prev {
                None => put_ivarint(buf, i64::from(index)),
                Some(p) => put_uvarint(buf, (i64::from(index) - i64::from(p)) as u64),
            }
            put_uvarint(buf, count);
            prev = Some(index);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<(Self, u64), AggregateError> {
        let n = r.length(2)?;
        let mut bins = Vec::with_capacity(n);
        let mut total = 0u64;
        let mut prev: Option<i32> = None;
        for _ in 0..n {
            let index = match prev {
                None => r.ivarint()?,
                Some(p) => {
                    let delta = r.uvarint()?;
                    if delta == 0 {
                        return Err(err("sketch buckets out of order"));
                    }
                    i64::from(p).saturating_add(i64::try_from(delta).unwrap_or(i64::MAX))
                }
            };
            let index = i32::try_from(index).map_err(|_| err("sketch bucket out of range"))?;
            let count = r.uvarint()?;
            if count == 0 {
                return Err(err("empty sketch bucket"));
            }
            total = total
                .checked_add(count)
                .ok_or_else(|| err("sketch count overflows"))?;
            bins.push((index, count));
            prev = Some(index);
        }
        if let (Some(lo), Some(hi)) = (bins.first(), bins.last()) {
            if i64::from(hi.0) - i64::from(lo.0) >= i64::from(MAX_SPAN) {
                return Err(err("sketch buckets span too wide"));
            }
        }
        Ok((Store { bins }, total))
    }
}

/// A quantile sketch.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantileSketch {
    count: u64,
    zero: u64,
    min: f64,
    max: f64,
    pos: Store,
    neg: Store,
}

impl Default for QuantileSketch {
    fn default() -> Self {
        QuantileSketch {
            count: 0,
            zero: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            pos: Store::default(),
            neg: Store::default(),
        }
    }
}

fn bucket_index(magnitude: f64) -> i32 {
    // |x| is in [MIN_POSITIVE, MAX], so the index is within ±36000 and the cast is exact.
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

fn bucket_value(index: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(index) / (g + 1.0)
}

impl QuantileSketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds a value; NaN and infinities are ignored (they have no bucket).
    pub fn insert(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        // total_cmp, so that -0.0 and 0.0 order deterministically.
        if x.total_cmp(&self.min) == Ordering::Less {
            self.min = x;
        }
        if x.total_cmp(&self.max) == Ordering::Greater {
            self.max = x;
        }
        let a = x.abs();
        if a < f64::MIN_POSITIVE {
            self.zero += 1;
        } else if x > 0.0 {
            self.pos.add(bucket_index(a), 1);
        } else {
            self.neg.add(bucket_index(a), 1);
        }
    }

    /// Merges `other` into `self` (adds bucket counts).
    pub fn merge(&mut self, other: &QuantileSketch) {
        if other.count == 0 {
            return;
        }
        self.count = self.count.wrapping_add(other.count);
        self.zero = self.zero.wrapping_add(other.zero);
        if other.min.total_cmp(&self.min) == Ordering::Less {
            self.min = other.min;
        }
        if other.max.total_cmp(&self.max) == Ordering::Greater {
            self.max = other.max;
        }
        self.pos.merge(&other.pos);
        self.neg.merge(&other.neg);
    }

    /// The estimated `q`-quantile (q clamped to [0, 1]), or `None` when empty. The estimate is
    /// within [`RELATIVE_ACCURACY`] of the value of rank `floor(q · (count − 1))`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        let mut found = None;
        for &(index, count) in self.neg.bins.iter().rev() {
            seen = seen.saturating_add(count);
            if seen > rank {
                found = Some(-bucket_value(index));
                break;
            }
        }
        if found.is_none() {
            seen = seen.saturating_add(self.zero);
            if seen > rank {
                found = Some(0.0);
            }
        }
        if found.is_none() {
            for &(index, count) in &self.pos.bins {
                seen = seen.saturating_add(count);
                if seen > rank {
                    found = Some(bucket_value(index));
                    break;
                }
            }
        }
        let v = found.unwrap_or(self.max);
        Some(v.clamp(self.min, self.max))
    }

    /// Approximate heap bytes.
    pub fn heap_size(&self) -> usize {
        (self.pos.bins.capacity() + self.neg.bins.capacity()) * std::mem::size_of::<(i32, u64)>()
    }

    /// Appends the encoding: count; if non-zero, min and max (f64 bits), the zero count, then
    /// positive and negative buckets (number of buckets, first index zigzag, later indexes as
    /// deltas, each with its count).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        put_uvarint(buf, self.count);
        if self.count == 0 {
            return;
        }
        put_f64(buf, self.min);
        put_f64(buf, self.max);
        put_uvarint(buf, self.zero);
        self.pos.encode(buf);
        self.neg.encode(buf);
    }

    /// Reads what [`QuantileSketch::encode`] wrote, checking that counts add up.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, AggregateError> {
        let count = r.uvarint()?;
        if count == 0 {
            return Ok(Self::default());
        }
        let min = r.f64()?;
        let max = r.f64()?;
        if !min.is_finite() || !max.is_finite() || min.total_cmp(&max) == Ordering::Greater {
            return Err(err("bad sketch bounds"));
        }
        let zero = r.uvarint()?;
        let (pos, np) = Store::decode(r)?;
        let (neg, nn) = Store::decode(r)?;
        let total = zero
            .checked_add(np)
            .and_then(|t| t.checked_add(nn))
            .ok_or_else(|| err("sketch count overflows"))?;
        if total != count {
            return Err(err("sketch counts do not add up"));
        }
        Ok(QuantileSketch {
            count,
            zero,
            min,
            max,
            pos,
            neg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        let rank = (q * (sorted.len() - 1) as f64).floor() as usize;
        sorted[rank]
    }

    fn check_accuracy(values: &[f64]) {
        let mut s = QuantileSketch::new();
        for &v in values {
            s.insert(v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact_quantile(&sorted, q);
            let got = s.quantile(q).unwrap();
            let tol = RELATIVE_ACCURACY * want.abs() * 1.000_001;
            assert!((got - want).abs() <= tol, "q={q} want={want} got={got}");
        }
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(QuantileSketch::new().quantile(0.5), None);
        let mut s = QuantileSketch::new();
        s.insert(42.0);
        for q in [0.0, 0.5, 1.0] {
            assert_eq!(s.quantile(q), Some(42.0));
        }
    }

    #[test]
    fn accuracy_on_random_data() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let uniform: Vec<f64> = (0..100_000)
            .map(|_| rng.random_range(0.0..1000.0))
            .collect();
        check_accuracy(&uniform);
        let lognormal: Vec<f64> = (0..100_000)
            .map(|_| (rng.random_range(-10.0f64..10.0)).exp())
            .collect();
        check_accuracy(&lognormal);
        let mixed: Vec<f64> = (0..50_000)
            .map(|i| {
                if i % 10 == 0 {
                    0.0
                } else {
                    rng.random_range(-500.0..500.0)
                }
            })
            .collect();
        check_accuracy(&mixed);
    }

    #[test]
    fn negatives_and_zero() {
        let mut s = QuantileSketch::new();
        for v in [-10.0, -1.0, 0.0, 0.0, 1.0, 10.0, f64::NAN, f64::INFINITY] {
            s.insert(v);
        }
        assert_eq!(s.count(), 6);
        assert_eq!(s.quantile(0.0), Some(-10.0));
        assert_eq!(s.quantile(0.5), Some(0.0));
        let q = s.quantile(0.2).unwrap();
        assert!((q + 1.0).abs() <= 0.01 * 1.000_001, "{q}");
        assert_eq!(s.quantile(1.0), Some(10.0));
    }

    #[test]
    fn span_is_bounded_and_order_independent() {
        let values = [1e-200, 1e-100, 1.0, 1e100, 1e200, 3.0];
        let mut a = QuantileSketch::new();
        for v in values {
            a.insert(v);
        }
        let mut b = QuantileSketch::new();
        for v in values.iter().rev() {
            b.insert(*v);
        }
        assert_eq!(a, b);
        let mut c = QuantileSketch::new();
        c.insert(1e-200);
        c.insert(1.0);
        let mut d = QuantileSketch::new();
        d.insert(1e200);
        d.insert(3.0);
        d.insert(1e-100);
        d.insert(1e100);
        c.merge(&d);
        assert_eq!(a, c);
        let span = a.pos.bins.last().unwrap().0 - a.pos.bins.first().unwrap().0;
        assert!(span < MAX_SPAN);
    }

    #[test]
    fn encode_round_trip_and_corruption() {
        let mut s = QuantileSketch::new();
        for v in [-3.5, 0.0, 1.0, 2.0, 2.0, 1e9] {
            s.insert(v);
        }
        for sk in [QuantileSketch::new(), s] {
            let mut buf = Vec::new();
            sk.encode(&mut buf);
            let mut r = Reader::new(&buf);
            assert_eq!(QuantileSketch::decode(&mut r).unwrap(), sk);
            assert_eq!(r.remaining(), 0);
            for cut in 0..buf.len() {
                let mut r = Reader::new(&buf[..cut]);
                assert!(QuantileSketch::decode(&mut r).is_err());
            }
            let mut bad = buf.clone();
            if let Some(first) = bad.first_mut() {
                *first = first.wrapping_add(1);
            }
            assert!(QuantileSketch::decode(&mut Reader::new(&bad)).is_err());
        }
    }
}

//! HyperLogLog distinct counting with a sparse representation for small sets.
//!
//! Precision is fixed at [`PRECISION`] (16384 registers, ~0.81% standard error). The logical
//! state is the register array (`register[i]` = max rank of hashes with index `i`); merge takes
//! the register-wise max, so any order and grouping of inserts and merges gives the same
//! registers, and the estimate is a pure function of the registers.
//!
//! Small sets use a sparse list instead (as in HyperLogLog++): for each hash seen, its top
//! [`SPARSE_PRECISION`] bits as an index and the rank of the remaining bits, keeping the
//! largest rank per index, sorted by index, packed as `index << 7 | rank`. With 2^25 possible
//! indexes, linear counting over the list is almost exact. Past [`SPARSE_MAX`] entries the
//! list is folded into the dense registers (each entry determines its dense register and rank
//! exactly). The switch happens when the number of distinct sparse indexes — which only grows,
//! whatever the order of inserts and merges — exceeds the limit, so equal inputs always end in
//! the same representation and equal states compare equal.

use super::codec::{err, put_uvarint, Reader};
use super::AggregateError;

/// Index bits of the dense registers: 2^14 registers.
pub const PRECISION: u32 = 14;
/// Index bits of sparse entries.
pub const SPARSE_PRECISION: u32 = 25;
const M: usize = 1 << PRECISION;
const M_SPARSE: f64 = (1u64 << SPARSE_PRECISION) as f64;
/// Largest dense rank: the remaining 50 hash bits all zero gives rank 51.
const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;
/// Largest sparse rank (39 remaining bits).
const MAX_SPARSE_RANK: u32 = 64 - SPARSE_PRECISION + 1;
/// Beyond this many entries the sparse list (4 bytes per entry) switches to the dense array
/// (1 byte per register); at the switch the list is half the dense array's size.
pub const SPARSE_MAX: usize = M / 8;
/// Below this linear-counting estimate, linear counting is used (it is nearly exact for small
/// sets); above, Ertl's improved raw estimator (unbiased without empirical correction tables).
const LINEAR_COUNTING_MAX: f64 = 11_500.0;

const REPR_SPARSE: u8 = 0;
const REPR_DENSE: u8 = 1;

/// A HyperLogLog sketch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hll {
    /// Sparse entries `index << 7 | rank` at [`SPARSE_PRECISION`], sorted, one per index.
    Sparse(Vec<u32>),
    /// All `2^PRECISION` registers.
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(Vec::new())
    }
}

#[inline]
fn dense_of_hash(hash: u64) -> (usize, u8) {
    let index = (hash >> (64 - PRECISION)) as usize;
    let rank = ((hash << PRECISION).leading_zeros() + 1).min(u32::from(MAX_RANK)) as u8;
    (index, rank)
}

#[inline]
fn sparse_of_hash(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
    let rank = ((hash << SPARSE_PRECISION).leading_zeros() + 1).min(MAX_SPARSE_RANK);
    (index << 7) | rank
}

/// The dense register and rank an entry stands for: the dense index is the top bits of the
/// sparse index; the rank counts the leading zeros of the sparse index's remaining bits and,
/// when those are all zero, continues into the sparse rank.
#[inline]
fn dense_of_sparse(entry: u32) -> (usize, u8) {
    const EXTRA: u32 = SPARSE_PRECISION - PRECISION;
    let index = entry >> 7;
    let sparse_rank = entry & 0x7f;
    let extra = index & ((1 << EXTRA) - 1);
    let rank = if extra == 0 {
        EXTRA + sparse_rank
    } else {
        // `extra` has EXTRA significant bits inside a u32.
        extra.leading_zeros() - (32 - EXTRA) + 1
    };
    (
        (index >> EXTRA) as usize,
        rank.min(u32::from(MAX_RANK)) as u8,
    )
}

impl Hll {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no value was added.
    pub fn is_empty(&self) -> bool {
        match self {
            Hll::Sparse(v) => v.is_empty(),
            Hll::Dense(r) => r.iter().all(|&x| x == 0),
        }
    }

    /// Adds a value by its 64-bit hash.
    #[inline]
    pub fn insert_hash(&mut self, hash: u64) {
        match self {
            Hll::Dense(regs) => {
                let (index, rank) = dense_of_hash(hash);
                if let Some(r) = regs.get_mut(index) {
                    *r = (*r).max(rank);
                }
            }
            Hll::Sparse(list) => {
                let e = sparse_of_hash(hash);
                match list.binary_search_by(|x| (x >> 7).cmp(&(e >> 7))) {
                    Ok(pos) => {
                        if let Some(x) = list.get_mut(pos) {
                            *x = (*x).max(e);
                        }
                    }
                    Err(pos) => {
                        list.insert(pos, e);
                        if list.len() > SPARSE_MAX {
                            self.densify();
                        }
                    }
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Hll::Sparse(list) = self {
            let mut regs = vec![0u8; M].into_boxed_slice();
            for &e in list.iter() {
                let (index, rank) = dense_of_sparse(e);
                if let Some(r) = regs.get_mut(index) {
                    *r = (*r).max(rank);
                }
            }
            *self = Hll::Dense(regs);
        }
    }

    /// Merges `other` into `self` (register-wise max).
    pub fn merge(&mut self, other: &Hll) {
        match (&mut *self, other) {
            (Hll::Dense(ours), Hll::Dense(theirs)) => {
                for (a, &b) in ours.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(b);
                }
            }
            (Hll::Dense(ours), Hll::Sparse(theirs)) => {
                for &e in theirs {
                    let (index, rank) = dense_of_sparse(e);
                    if let Some(r) = ours.get_mut(index) {
                        *r = (*r).max(rank);
                    }
                }
            }
            (Hll::Sparse(_), Hll::Dense(_)) => {
                self.densify();
                self.merge(other);
            }
            (Hll::Sparse(ours), Hll::Sparse(theirs)) => {
                if theirs.is_empty() {
                    return;
                }
                *ours = merge_sparse(ours, theirs);
                if ours.len() > SPARSE_MAX {
                    self.densify();
                }
            }
        }
    }

    /// The estimated number of distinct values.
    pub fn estimate(&self) -> f64 {
        let regs = match self {
            Hll::Sparse(list) => {
                let k = list.len() as f64;
                return M_SPARSE * (M_SPARSE / (M_SPARSE - k)).ln();
            }
            Hll::Dense(regs) => regs,
        };
        let mut hist = [0u32; MAX_RANK as usize + 1];
        for &r in regs.iter() {
            if let Some(h) = hist.get_mut(usize::from(r)) {
                *h += 1;
            }
        }
        let m = M as f64;
        let zeros = f64::from(hist[0]);
        if zeros == m {
            return 0.0;
        }
        if zeros > 0.0 {
            let lc = m * (m / zeros).ln();
            if lc <= LINEAR_COUNTING_MAX {
                return lc;
            }
        }
        ertl_estimate(&hist)
    }

    /// Approximate heap bytes.
    pub fn heap_size(&self) -> usize {
        match self {
            Hll::Sparse(v) => v.capacity() * 4,
            Hll::Dense(r) => r.len(),
        }
    }

    /// Appends the encoding: precision byte, representation byte, then either the number of
    /// sparse entries and each entry as a varint delta from the previous one, or the
    /// `2^precision` register bytes.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(PRECISION as u8);
        match self {
            Hll::Sparse(list) => {
                buf.push(REPR_SPARSE);
                put_uvarint(buf, list.len() as u64);
                let mut prev = 0u32;
                for &e in list {
                    put_uvarint(buf, u64::from(e.wrapping_sub(prev)));
                    prev = e;
                }
            }
            Hll::Dense(regs) => {
                buf.push(REPR_DENSE);
                buf.extend_from_slice(regs);
            }
        }
    }

    /// Reads what [`Hll::encode`] wrote, checking every entry and register.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, AggregateError> {
        if u32::from(r.u8()?) != PRECISION {
            return Err(err("unsupported HyperLogLog precision"));
        }
        match r.u8()? {
            REPR_SPARSE => {
                let n = r.length(1)?;
                if n > SPARSE_MAX {
                    return Err(err("too many sparse HyperLogLog entries"));
                }
                let mut list = Vec::with_capacity(n);
                let mut prev: Option<u32> = None;
                for _ in 0..n {
                    let delta =
                        u32::try_from(r.uvarint()?).map_err(|_| err("bad HyperLogLog entry"))?;
                    let e = prev
                        .unwrap_or(0)
                        .checked_add(delta)
                        .ok_or_else(|| err("bad HyperLogLog entry"))?;
                    let rank = e & 0x7f;
                    if rank == 0 || rank > MAX_SPARSE_RANK {
                        return Err(err("bad HyperLogLog entry"));
                    }
                    if prev.is_some_and(|p| (p >> 7) >= (e >> 7)) {
                        return Err(err("HyperLogLog entries out of order"));
                    }
                    list.push(e);
                    prev = Some(e);
                }
                Ok(Hll::Sparse(list))
            }
            REPR_DENSE => {
                let regs = r.take(M)?;
                if regs.iter().any(|&x| x > MAX_RANK) {
                    return Err(err("bad HyperLogLog register"));
                }
                Ok(Hll::Dense(regs.into()))
            }
            _ => Err(err("unknown HyperLogLog representation")),
        }
    }
}

/// Union of two sorted sparse lists, keeping the larger rank per index.
fn merge_sparse(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        let (xi, yi) = (x >> 7, y >> 7);
        if xi < yi {
            out.push(x);
            i += 1;
        } else if yi < xi {
            out.push(y);
            j += 1;
        } else {
            out.push(x.max(y));
            i += 1;
            j += 1;
        }
    }
    out.extend_from_slice(a.get(i..).unwrap_or_default());
    out.extend_from_slice(b.get(j..).unwrap_or_default());
    out
}

/// Ertl's improved raw estimator ("New cardinality estimation algorithms for HyperLogLog
/// sketches", 2017), from the rank histogram.
fn ertl_estimate(hist: &[u32; MAX_RANK as usize + 1]) -> f64 {
    let m = M as f64;
    let q = usize::from(MAX_RANK) - 1;
    let mut z = m * tau(1.0 - f64::from(hist[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(hist[k]));
    }
    z += m * sigma(f64::from(hist[0]) / m);
    let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
    alpha_inf * m * m / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let old = z;
        z += x * y;
        y += y;
        if z == old {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let old = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == old {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::value::hash_bytes;
    use super::*;

    fn hll_of(range: std::ops::Range<u64>) -> Hll {
        let mut h = Hll::new();
        for i in range {
            h.insert_hash(hash_bytes(3, &i.to_le_bytes()));
        }
        h
    }

    #[test]
    fn empty_and_tiny_sets() {
        assert_eq!(Hll::new().estimate(), 0.0);
        assert!(Hll::new().is_empty());
        for n in [1u64, 2, 10, 100, 500, 1000, 2000] {
            assert_eq!(hll_of(0..n).estimate().round() as u64, n);
        }
    }

    #[test]
    fn accuracy_within_three_percent() {
        for n in [1_000u64, 10_000, 50_000, 100_000, 1_000_000] {
            let est = hll_of(0..n).estimate();
            let rel = (est - n as f64).abs() / n as f64;
            assert!(rel < 0.03, "n={n} est={est} rel={rel}");
        }
    }

    #[test]
    fn sparse_entries_map_to_the_dense_register_of_their_hash() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for h in [x, x >> 30, x & !((1 << 39) - 1), x & (u64::MAX << 50)] {
                assert_eq!(
                    dense_of_sparse(sparse_of_hash(h)),
                    dense_of_hash(h),
                    "{h:x}"
                );
            }
        }
    }

    #[test]
    fn duplicates_do_not_count() {
        let mut h = hll_of(0..1000);
        let before = h.clone();
        for i in 0..1000u64 {
            h.insert_hash(hash_bytes(3, &i.to_le_bytes()));
        }
        assert_eq!(h, before);
    }

    #[test]
    fn sparse_dense_switch_and_merge_are_order_independent() {
        let a = hll_of(0..1500);
        let b = hll_of(1000..4000);
        assert!(matches!(a, Hll::Sparse(_)));
        assert!(matches!(hll_of(0..2000), Hll::Sparse(_)));
        assert!(matches!(b, Hll::Dense(_)));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab, hll_of(0..4000));
        // Two sparse halves whose union is dense.
        let mut c = hll_of(0..1500);
        c.merge(&hll_of(1500..3000));
        assert_eq!(c, hll_of(0..3000));
    }

    #[test]
    fn encode_round_trip_and_corruption() {
        for h in [Hll::new(), hll_of(0..500), hll_of(0..100_000)] {
            let mut buf = Vec::new();
            h.encode(&mut buf);
            let mut r = Reader::new(&buf);
            assert_eq!(Hll::decode(&mut r).unwrap(), h);
            assert_eq!(r.remaining(), 0);
            for cut in 0..buf.len().min(64) {
                assert!(Hll::decode(&mut Reader::new(&buf[..cut])).is_err());
            }
        }
        // Dense register out of range.
        let mut buf = vec![PRECISION as u8, REPR_DENSE];
        buf.extend(std::iter::repeat_n(0u8, M));
        buf[5] = 60;
        assert!(Hll::decode(&mut Reader::new(&buf)).is_err());
        // Sparse with duplicate index.
        let buf = vec![PRECISION as u8, REPR_SPARSE, 2, 1, 1];
        assert!(Hll::decode(&mut Reader::new(&buf)).is_err());
        // Sparse rank out of range.
        let buf = vec![PRECISION as u8, REPR_SPARSE, 1, 50];
        assert!(Hll::decode(&mut Reader::new(&buf)).is_err());
        // Wrong precision.
        assert!(Hll::decode(&mut Reader::new(&[12, REPR_SPARSE, 0])).is_err());
    }
}

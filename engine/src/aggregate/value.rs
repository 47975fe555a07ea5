//! A deterministic total order on [`Value`]s, their canonical form, and a stable hash.
//!
//! Results must not depend on the order in which records or partial accumulators arrive, so
//! every tie (min/max, first/last, top_n) is broken by this order, and `count_distinct` hashes
//! with a fixed function of the value's canonical bytes rather than a per-process random hasher.

use std::cmp::Ordering;

use crate::event::Value;

/// 2^63 as a float: the first float above every `i64`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// Compares two values in Weir's total order over values.
///
/// `Null < Bool < numbers < strings`; `false < true`; numbers by their exact numeric value (an
/// `Int` and a `Float` are compared exactly, without rounding the integer), and on equal value
/// `Int` before `Float`, then floats by [`f64::total_cmp`] (so `-0.0 < 0.0`, NaN at the ends);
/// strings by their bytes (lexicographic).
pub fn cmp_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 3,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Int(i), Value::Float(f)) => cmp_int_float(*i, *f).then(Ordering::Less),
        (Value::Float(f), Value::Int(i)) => cmp_int_float(*i, *f).reverse().then(Ordering::Greater),
        (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Exact comparison of an integer with a float.
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        // Consistent with `total_cmp`: positive NaN above everything, negative NaN below.
        return if f.is_sign_negative() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    if f >= TWO_POW_63 {
        return Ordering::Less;
    }
    if f < -TWO_POW_63 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    // Exact: |t| < 2^63 or t == -2^63, both representable as i64.
    let ti = t as i64;
    i.cmp(&ti).then_with(|| {
        let frac = f - t;
        0.0_f64.partial_cmp(&frac).unwrap_or(Ordering::Equal)
    })
}

/// The canonical form used for distinct counting and top_n: `None` for values that are not
/// counted (`Null`, NaN); a float with an integral value in `i64` range becomes an `Int` (so
/// `1` and `1.0` are one value).
pub fn canonical(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Float(f) if f.is_nan() => None,
        Value::Float(f) => match float_as_int(*f) {
            Some(i) => Some(Value::Int(i)),
            None => Some(Value::Float(*f)),
        },
        other => Some(other.clone()),
    }
}

/// The integer equal to `f`, if `f` is integral and fits an `i64`.
pub(crate) fn float_as_int(f: f64) -> Option<i64> {
    if f.trunc() == f && (-TWO_POW_63..TWO_POW_63).contains(&f) {
        Some(f as i64)
    } else {
        None
    }
}

/// Stable 64-bit hash of a value's canonical bytes (a type tag, then the payload). Identical on
/// every platform and release, so sketches built by different processes merge correctly.
/// `None` for values that are not counted (see [`canonical`]).
pub fn stable_hash(v: &Value) -> Option<u64> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(hash_bytes(1, &[u8::from(*b)])),
        Value::Int(i) => Some(hash_bytes(3, &i.to_le_bytes())),
        Value::Float(f) if f.is_nan() => None,
        Value::Float(f) => Some(match float_as_int(*f) {
            Some(i) => hash_bytes(3, &i.to_le_bytes()),
            None => hash_bytes(4, &f.to_bits().to_le_bytes()),
        }),
        Value::Str(s) => Some(hash_bytes(5, s.as_bytes())),
    }
}

const P1: u64 = 0x9e37_79b9_7f4a_7c15;
const P2: u64 = 0xd6e8_feb8_6659_fd93;
const P3: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// 64×64→128 multiply, folded to 64 bits: cheap and mixes every input bit into the output.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Final avalanche (the MurmurHash3 64-bit finaliser constants), so every output bit depends
/// on every input bit; HyperLogLog reads both the top and the bottom bits.
#[inline]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hashes a type tag and bytes. Version-stable: changing it would change stored sketches'
/// meaning, so it is part of the encoding format.
pub(crate) fn hash_bytes(tag: u8, bytes: &[u8]) -> u64 {
    let mut h = P1 ^ u64::from(tag).wrapping_mul(P2) ^ (bytes.len() as u64).wrapping_mul(P3);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = fold_mul(h ^ u64::from_le_bytes(w), P2).rotate_left(29) ^ P3;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(w), P2).rotate_left(29) ^ P3;
    }
    avalanche(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<Value>) -> Vec<Value> {
        v.sort_by(cmp_values);
        v
    }

    #[test]
    fn total_order_across_types() {
        let vals = vec![
            Value::Str("b".into()),
            Value::Float(1.5),
            Value::Int(1),
            Value::Float(1.0),
            Value::Bool(true),
            Value::Null,
            Value::Str("a".into()),
            Value::Int(-3),
            Value::Bool(false),
            Value::Float(-0.0),
            Value::Float(0.0),
            Value::Int(0),
        ];
        let want = vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(-3),
            Value::Int(0),
            Value::Float(-0.0),
            Value::Float(0.0),
            Value::Int(1),
            Value::Float(1.0),
            Value::Float(1.5),
            Value::Str("a".into()),
            Value::Str("b".into()),
        ];
        assert_eq!(sorted(vals), want);
    }

    #[test]
    fn int_float_comparison_is_exact() {
        let big = (1i64 << 53) + 1;
        assert_eq!(
            cmp_values(&Value::Int(big), &Value::Float((1i64 << 53) as f64)),
            Ordering::Greater
        );
        assert_eq!(
            cmp_values(&Value::Int(i64::MAX), &Value::Float(TWO_POW_63)),
            Ordering::Less
        );
        assert_eq!(
            cmp_values(&Value::Int(i64::MIN), &Value::Float(-TWO_POW_63)),
            Ordering::Less
        );
        assert_eq!(
            cmp_values(&Value::Int(-2), &Value::Float(-1.5)),
            Ordering::Less
        );
        assert_eq!(
            cmp_values(&Value::Float(f64::NAN), &Value::Int(i64::MAX)),
            Ordering::Greater
        );
    }

    #[test]
    fn hash_is_stable_and_canonical() {
        assert_eq!(stable_hash(&Value::Int(1)), stable_hash(&Value::Float(1.0)));
        assert_ne!(
            stable_hash(&Value::Int(1)),
            stable_hash(&Value::Str("1".into()))
        );
        assert_eq!(stable_hash(&Value::Null), None);
        assert_eq!(stable_hash(&Value::Float(f64::NAN)), None);
        // Pinned: the hash is part of the stored format.
        assert_eq!(
            stable_hash(&Value::Str("weir".into())),
            Some(0x3f4a_00b7_cdfd_7e13)
        );
        assert_eq!(stable_hash(&Value::Int(42)), Some(0xc755_7fdf_427e_4043));
        let a = hash_bytes(5, b"abcdefgh");
        let b = hash_bytes(5, b"abcdefgi");
        assert!((a ^ b).count_ones() > 10);
    }
}

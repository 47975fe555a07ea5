use compact_str::CompactString;
use smallvec::SmallVec;

use super::Value;

/// A grouping key: the `key_by` field values, encoded into bytes that compare, hash and store
/// the same on every worker. Keys of up to 22 bytes need no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(SmallVec<[u8; INLINE_KEY]>);

/// The longest key encoding held without an allocation.
const INLINE_KEY: usize = 22;

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_FLOAT: u8 = 4;
const TAG_STR: u8 = 5;

impl Key {
    /// Encodes key values in order: each is a one-byte tag, then 8 big-endian bytes for a
    /// number, or a 4-byte big-endian length and the bytes for a string.
    pub fn from_values<'a, I>(values: I) -> Key
    where
        I: IntoIterator<Item = &'a Value>,
    {
        let mut key = Key::default();
        key.set_values(values);
        key
    }

    /// Makes this key the encoding of `values` (as [`Key::from_values`]), reusing its room
    /// when the encoding does not fit inline.
    #[inline]
    pub fn set_values<'a, I>(&mut self, values: I)
    where
        I: IntoIterator<Item = &'a Value>,
    {
        // Most keys fit inline: encoded on the stack and moved in whole, which costs a third
        // of growing the vector piece by piece (each growth checks where its bytes live). A
        // key that outgrows the stack buffer carries on in the vector from where it stopped.
        let mut inline = [0u8; INLINE_KEY];
        let mut len = 0;
        let mut fits = true;
        self.0.clear();
        encode(values, |bytes| {
            if fits {
                if let Some(dst) = inline.get_mut(len..len + bytes.len()) {
                    dst.copy_from_slice(bytes);
                    len += bytes.len();
                    return;
                }
                fits = false;
                self.0.extend_from_slice(&inline[..len]);
            }
            self.0.extend_from_slice(bytes);
        });
        if fits {
            self.0 = SmallVec::from_buf_and_len(inline, len);
        }
    }

    /// [`Key::stable_hash`] of the key [`Key::from_values`] would build, without building it.
    #[inline]
    pub fn stable_hash_of<'a>(values: impl IntoIterator<Item = &'a Value>) -> u64 {
        let mut h = FNV_OFFSET;
        encode(values, |bytes| h = fnv(h, bytes));
        h
    }

    /// Rebuilds a key from bytes produced by [`Key::as_bytes`] (e.g. read back from state).
    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(SmallVec::from_slice(bytes))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the key values; `None` if the bytes are not a valid encoding.
    pub fn values(&self) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        let mut rest: &[u8] = &self.0;
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            match tag {
                TAG_NULL => out.push(Value::Null),
                TAG_FALSE => out.push(Value::Bool(false)),
                TAG_TRUE => out.push(Value::Bool(true)),
                TAG_INT | TAG_FLOAT => {
                    let (num, tail) = rest.split_first_chunk::<8>()?;
                    rest = tail;
                    let bits = u64::from_be_bytes(*num);
                    out.push(if tag == TAG_INT {
                        Value::Int(bits as i64)
                    } else {
                        Value::Float(f64::from_bits(bits))
                    });
                }
                TAG_STR => {
                    let (len, tail) = rest.split_first_chunk::<4>()?;
                    let len = u32::from_be_bytes(*len) as usize;
                    let s = tail.get(..len)?;
                    rest = &tail[len..];
                    out.push(Value::Str(CompactString::from_utf8(s).ok()?));
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// A hash of the key that is the same on every machine and run (FNV-1a, 64 bit); decides
    /// which shard owns the key.
    pub fn stable_hash(&self) -> u64 {
        fnv(FNV_OFFSET, &self.0)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `bytes` into the FNV-1a hash `h`.
#[inline]
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Passes the encoding of `values` to `out`, piece by piece, in order: the one place that
/// decides the bytes of a key, for building it and for hashing it.
#[inline]
fn encode<'a>(values: impl IntoIterator<Item = &'a Value>, mut out: impl FnMut(&[u8])) {
    for v in values {
        match v {
            Value::Null => out(&[TAG_NULL]),
            Value::Bool(false) => out(&[TAG_FALSE]),
            Value::Bool(true) => out(&[TAG_TRUE]),
            Value::Int(i) => {
                out(&[TAG_INT]);
                out(&i.to_be_bytes());
            }
            Value::Float(f) => {
                out(&[TAG_FLOAT]);
                out(&f.to_bits().to_be_bytes());
            }
            Value::Str(s) => {
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                let [a, b, c, d] = len.to_be_bytes();
                out(&[TAG_STR, a, b, c, d]);
                out(&s.as_bytes()[..len as usize]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_mixed_values() {
        let vals = vec![
            Value::Str("user_1".into()),
            Value::Int(-42),
            Value::Float(1.5),
            Value::Bool(true),
            Value::Null,
        ];
        let key = Key::from_values(&vals);
        assert_eq!(key.values().unwrap(), vals);
        assert_eq!(Key::from_bytes(key.as_bytes()), key);
    }

    #[test]
    fn keys_on_both_sides_of_the_inline_size_encode_as_documented() {
        for n in 0..=40 {
            let text: String = "abcdefghij".chars().cycle().take(n).collect();
            for values in [
                vec![Value::Str(text.as_str().into())],
                vec![Value::Int(-3), Value::Str(text.as_str().into())],
            ] {
                let mut expected = Vec::new();
                if values.len() == 2 {
                    expected.push(TAG_INT);
                    expected.extend_from_slice(&(-3i64).to_be_bytes());
                }
                expected.push(TAG_STR);
                expected.extend_from_slice(&(n as u32).to_be_bytes());
                expected.extend_from_slice(text.as_bytes());
                let key = Key::from_values(&values);
                assert_eq!(key.as_bytes(), expected.as_slice(), "{values:?}");
                assert_eq!(key.values().as_ref(), Some(&values));
            }
        }
    }

    #[test]
    fn different_values_give_different_keys() {
        let a = Key::from_values(&[Value::Str("ab".into()), Value::Str("c".into())]);
        let b = Key::from_values(&[Value::Str("a".into()), Value::Str("bc".into())]);
        assert_ne!(a, b);
        assert_ne!(a.stable_hash(), b.stable_hash());
    }

    #[test]
    fn a_reused_key_and_a_hash_without_a_key_match_a_built_key() {
        let value_sets: Vec<Vec<Value>> = vec![
            vec![
                Value::Str("a fairly long user name that spills".into()),
                Value::Int(7),
            ],
            vec![Value::Str("u1".into())],
            vec![],
            vec![Value::Float(-0.5), Value::Null, Value::Bool(false)],
        ];
        // One key reused from long to short: nothing of an earlier value may remain.
        let mut reused = Key::from_values(&value_sets[0]);
        for values in &value_sets {
            let built = Key::from_values(values);
            reused.set_values(values);
            assert_eq!(reused, built, "{values:?}");
            assert_eq!(
                Key::stable_hash_of(values),
                built.stable_hash(),
                "{values:?}"
            );
        }
        assert_ne!(
            Key::stable_hash_of(&value_sets[1]),
            Key::stable_hash_of(&value_sets[2])
        );
    }
}

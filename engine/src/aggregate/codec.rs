//! Byte-level helpers of the accumulator encoding: LEB128 varints, zigzag, fixed-width floats,
//! and a bounds-checked reader that turns every malformed input into an [`AggregateError`].

use compact_str::CompactString;

use super::AggregateError;
use crate::event::Value;

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zigzag-encoded, so small negative numbers stay short.
pub(crate) fn put_ivarint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a 128-bit signed integer zigzag-encoded as an unsigned LEB128 varint.
pub(crate) fn put_i128(buf: &mut Vec<u8>, v: i128) {
    let mut z = ((v << 1) ^ (v >> 127)) as u128;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Appends the IEEE-754 bits of `v`, little endian.
pub(crate) fn put_f64(buf: &mut Vec<u8>, v: f64) {
    buf.extend_from_slice(&v.to_bits().to_le_bytes());
}

const VALUE_NULL: u8 = 0;
const VALUE_FALSE: u8 = 1;
const VALUE_TRUE: u8 = 2;
const VALUE_INT: u8 = 3;
const VALUE_FLOAT: u8 = 4;
const VALUE_STR: u8 = 5;

/// Appends one [`Value`]: a type byte, then its payload.
pub(crate) fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => buf.push(VALUE_NULL),
        Value::Bool(false) => buf.push(VALUE_FALSE),
        Value::Bool(true) => buf.push(VALUE_TRUE),
        Value::Int(i) => {
            buf.push(VALUE_INT);
            put_ivarint(buf, *i);
        }
        Value::Float(f) => {
            buf.push(VALUE_FLOAT);
            put_f64(buf, *f);
        }
        Value::Str(s) => {
            buf.push(VALUE_STR);
            put_uvarint(buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// Reads the encoding; every read checks bounds.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

pub(crate) fn err(msg: impl Into<String>) -> AggregateError {
    AggregateError(msg.into())
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Bytes not read yet; also an upper bound for any element count read from the input, so
    /// corrupt lengths cannot trigger huge allocations.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, AggregateError> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| err("truncated input"))?;
        self.bytes = rest;
        Ok(b)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], AggregateError> {
        if n > self.bytes.len() {
            return Err(err("truncated input"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn uvarint(&mut self) -> Result<u64, AggregateError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(err("varint overflows 64 bits"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    pub(crate) fn ivarint(&mut self) -> Result<i64, AggregateError> {
        let z = self.uvarint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub(crate) fn i128(&mut self) -> Result<i128, AggregateError> {
        let mut z: u128 = 0;
        for shift in (0..128).step_by(7) {
            let b = self.u8()?;
            let part = u128::from(b & 0x7f);
            if shift == 126 && part > 3 {
                return Err(err("varint overflows 128 bits"));
            }
            z |= part << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i128) ^ -((z & 1) as i128));
            }
        }
        Err(err("varint too long"))
    }

    /// A length or element count, bounded by the bytes left (each element takes at least
    /// `min_elem_bytes`).
    pub(crate) fn length(&mut self, min_elem_bytes: usize) -> Result<usize, AggregateError> {
        let n = self.uvarint()?;
        let n = usize::try_from(n).map_err(|_| err("length out of range"))?;
        if n.saturating_mul(min_elem_bytes.max(1)) > self.remaining() {
            return Err(err("length exceeds input"));
        }
        Ok(n)
    }

    pub(crate) fn f64(&mut self) -> Result<f64, AggregateError> {
        let b = self.take(8)?;
        let arr: [u8; 8] = b.try_into().map_err(|_| err("truncated input"))?;
        Ok(f64::from_bits(u64::from_le_bytes(arr)))
    }

    pub(crate) fn value(&mut self) -> Result<Value, AggregateError> {
        Ok(match self.u8()? {
            VALUE_NULL => Value::Null,
            VALUE_FALSE => Value::Bool(false),
            VALUE_TRUE => Value::Bool(true),
            VALUE_INT => Value::Int(self.ivarint()?),
            VALUE_FLOAT => Value::Float(self.f64()?),
            VALUE_STR => {
                let n = self.length(1)?;
                let s =
                    std::str::from_utf8(self.take(n)?).map_err(|_| err("string is not UTF-8"))?;
                Value::Str(CompactString::from(s))
            }
            t => return Err(err(format!("unknown value type {t}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        let mut buf = Vec::new();
        let us = [0u64, 1, 127, 128, 300, u64::MAX];
        let is = [0i64, -1, 1, i64::MIN, i64::MAX];
        let bs = [0i128, -1, i128::MIN, i128::MAX, 1 << 70];
        for &u in &us {
            put_uvarint(&mut buf, u);
        }
        for &i in &is {
            put_ivarint(&mut buf, i);
        }
        for &b in &bs {
            put_i128(&mut buf, b);
        }
        let mut r = Reader::new(&buf);
        for &u in &us {
            assert_eq!(r.uvarint().unwrap(), u);
        }
        for &i in &is {
            assert_eq!(r.ivarint().unwrap(), i);
        }
        for &b in &bs {
            assert_eq!(r.i128().unwrap(), b);
        }
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn overlong_varints_are_rejected() {
        assert!(Reader::new(&[0xff; 11]).uvarint().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .uvarint()
                .is_err()
        );
        assert!(Reader::new(&[0x80]).uvarint().is_err());
        assert!(Reader::new(&[0xff; 20]).i128().is_err());
    }

    #[test]
    fn values_round_trip() {
        let vals = [
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-5),
            Value::Float(2.5),
            Value::Str("a string longer than twenty-four bytes".into()),
        ];
        let mut buf = Vec::new();
        for v in &vals {
            put_value(&mut buf, v);
        }
        let mut r = Reader::new(&buf);
        for v in &vals {
            assert_eq!(&r.value().unwrap(), v);
        }
        assert!(Reader::new(&[VALUE_STR, 5, b'a']).value().is_err());
        assert!(Reader::new(&[VALUE_STR, 1, 0xff]).value().is_err());
        assert!(Reader::new(&[9]).value().is_err());
    }
}

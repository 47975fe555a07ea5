//! How window state is laid out in the state store.
//!
//! Every key starts with the operator id, a `0x00` byte, and (in [`Table::Windows`]) a
//! one-byte kind tag. Times in keys are big-endian `t as u64 ^ 1 << 63`, so they order like
//! the signed times. Integers in values are big-endian.
//!
//! | table | key | value |
//! |---|---|---|
//! | `Windows` | `op 00 'W' pane_end key` | `v=1, flags, key_hash u64, len u32, acc, n u16, n × (first_window i64, len u32, acc)` |
//! | `Windows` | `op 00 'C' key` | `v=1, key_hash u64, n u64, first i64, last i64, has_acc u8, [len u32, acc], m u32, m × record` |
//! | `Windows` | `op 00 'M' shard u32` | `v=1, watermark i64` |
//! | `Sessions` | `op 00 key` | `v=1, key_hash u64, n u32, n × (start i64, end i64, flags u8, len u32, acc)` |
//!
//! `acc` is [`Aggregates::encode`](crate::aggregate::Aggregates::encode) output; `flags` bit 0
//! marks a change not yet emitted (coalesced updates). A `'W'` entry is one (key, pane) of a
//! tumbling or sliding window (a tumbling pane is the whole window); the extra accumulators
//! hold records that were late for the pane's earlier windows, by the first window they count
//! for. A record in a count buffer is `time i64, n u16, n × value` with a value tag byte
//! (0 null, 1 false, 2 true, 3 int i64, 4 float f64 bits, 5 string len u32 bytes). The key
//! hash is stored so that a restoring shard can pick its keys without rehashing them. Shards
//! of one operator share the prefix, so purges delete single keys, never ranges.

use compact_str::CompactString;

use crate::event::{Fields, Key, Record, Timestamp, Value};
use crate::state::{StateError, Table};

/// Version byte at the start of every value.
pub(crate) const VERSION: u8 = 1;
/// Kind tag of pane entries.
pub(crate) const KIND_PANE: u8 = b'W';
/// Kind tag of count-window entries.
pub(crate) const KIND_COUNT: u8 = b'C';
/// Kind tag of the per-shard watermark.
pub(crate) const KIND_META: u8 = b'M';
/// Value flag: a change not emitted yet.
pub(crate) const FLAG_PENDING: u8 = 1;

/// `op 00`.
pub(crate) fn prefix(operator_id: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(operator_id.len() + 1);
    p.extend_from_slice(operator_id.as_bytes());
    p.push(0);
    p
}

/// Order-preserving encoding of a time.
pub(crate) fn encode_ts(t: Timestamp) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`encode_ts`].
pub(crate) fn decode_ts(b: [u8; 8]) -> Timestamp {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// `prefix kind`.
pub(crate) fn kind_prefix(prefix: &[u8], kind: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 1);
    k.extend_from_slice(prefix);
    k.push(kind);
    k
}

/// `prefix 'W' pane_end`.
pub(crate) fn pane_prefix(prefix: &[u8], pane_end: Timestamp) -> Vec<u8> {
    let mut k = kind_prefix(prefix, KIND_PANE);
    k.extend_from_slice(&encode_ts(pane_end));
    k
}

/// `prefix 'W' pane_end key`.
pub(crate) fn pane_key(prefix: &[u8], pane_end: Timestamp, key: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 9 + key.as_bytes().len());
    k.extend_from_slice(prefix);
    k.push(KIND_PANE);
    k.extend_from_slice(&encode_ts(pane_end));
    k.extend_from_slice(key.as_bytes());
    k
}

/// `prefix 'C' key`.
pub(crate) fn count_key(prefix: &[u8], key: &Key) -> Vec<u8> {
    let mut k = kind_prefix(prefix, KIND_COUNT);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `prefix 'M' shard`.
pub(crate) fn meta_key(prefix: &[u8], shard: u32) -> Vec<u8> {
    let mut k = kind_prefix(prefix, KIND_META);
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

/// `prefix key` (in [`Table::Sessions`]).
pub(crate) fn session_key(prefix: &[u8], key: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.as_bytes().len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Appends a length-prefixed byte string.
pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Appends `acc`'s encoding with a length prefix, encoding in place.
pub(crate) fn put_encoded(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    encode(buf);
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a record (count-window buffers).
pub(crate) fn put_record(buf: &mut Vec<u8>, r: &Record) {
    buf.extend_from_slice(&r.time.to_be_bytes());
    buf.extend_from_slice(&(r.fields.len().min(u16::MAX as usize) as u16).to_be_bytes());
    for v in r.fields.iter().take(u16::MAX as usize) {
        match v {
            Value::Null => buf.push(0),
            Value::Bool(false) => buf.push(1),
            Value::Bool(true) => buf.push(2),
            Value::Int(i) => {
                buf.push(3);
                buf.extend_from_slice(&i.to_be_bytes());
            }
            Value::Float(f) => {
                buf.push(4);
                buf.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Value::Str(s) => {
                buf.push(5);
                put_bytes(buf, s.as_bytes());
            }
        }
    }
}

/// Reads stored values; every failure is [`StateError::Corrupt`] for its table.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    table: Table,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, found in `table`.
    pub fn new(buf: &'a [u8], table: Table) -> Self {
        Reader { buf, table }
    }

    /// A corruption error for this table.
    pub fn corrupt(&self, reason: impl Into<String>) -> StateError {
        StateError::Corrupt {
            table: self.table,
            reason: reason.into(),
        }
    }

    /// Checks the version byte.
    pub fn version(&mut self) -> Result<(), StateError> {
        let v = self.u8()?;
        if v != VERSION {
            return Err(StateError::Version {
                found: u32::from(v),
                supported: u32::from(VERSION),
            });
        }
        Ok(())
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.buf.len() < n {
            return Err(self.corrupt("truncated window state"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let b = self.take(N)?;
        let mut a = [0; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian i64.
    pub fn i64(&mut self) -> Result<i64, StateError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A record written by [`put_record`].
    pub fn record(&mut self) -> Result<Record, StateError> {
        let time = self.i64()?;
        let n = self.u16()?;
        let mut fields = Fields::new();
        for _ in 0..n {
            let v = match self.u8()? {
                0 => Value::Null,
                1 => Value::Bool(false),
                2 => Value::Bool(true),
                3 => Value::Int(self.i64()?),
                4 => Value::Float(f64::from_bits(self.u64()?)),
                5 => {
                    let b = self.bytes()?;
                    Value::Str(
                        CompactString::from_utf8(b)
                            .map_err(|_| self.corrupt("string field is not UTF-8"))?,
                    )
                }
                t => return Err(self.corrupt(format!("unknown value tag {t}"))),
            };
            fields.push(v);
        }
        Ok(Record { time, fields })
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), StateError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes in window state"))
        }
    }
}

/// Wraps an accumulator decoding error.
pub(crate) fn acc_error(table: Table, e: crate::aggregate::AggregateError) -> StateError {
    StateError::Corrupt {
        table,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_order_in_keys() {
        let ts = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in ts.windows(2) {
            assert!(encode_ts(w[0]) < encode_ts(w[1]));
        }
        for t in ts {
            assert_eq!(decode_ts(encode_ts(t)), t);
        }
    }

    #[test]
    fn records_round_trip_and_truncation_is_corrupt() {
        let r = Record {
            time: -3,
            fields: [
                Value::Null,
                Value::Bool(true),
                Value::Int(-9),
                Value::Float(2.5),
                Value::Str("héllo".into()),
            ]
            .into_iter()
            .collect(),
        };
        let mut buf = Vec::new();
        put_record(&mut buf, &r);
        let mut rd = Reader::new(&buf, Table::Windows);
        assert_eq!(rd.record().unwrap(), r);
        rd.finish().unwrap();
        for cut in 0..buf.len() {
            let mut rd = Reader::new(&buf[..cut], Table::Windows);
            assert!(matches!(rd.record(), Err(StateError::Corrupt { .. })));
        }
    }
}

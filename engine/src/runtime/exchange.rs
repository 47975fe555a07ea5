//! Repartitioning through an external exchange (`repartition: true`): the pure parts the
//! engine and an exchange connector share.
//!
//! Stage 1 (the task reading input partition `p`) runs a pipeline's steps and key extraction,
//! then stages each record for the exchange sink: explicit target partition
//! [`exchange_partition`] of the key hash, the grouping key, and a value holding the record's
//! fields, event time and the watermark of its input partition when it was read. At every
//! barrier it also stages one [`Marker`] for *every* exchange partition. The sink commits these
//! in the task's epoch exactly like any other output.
//!
//! Stage 2 reads exchange partition `q` and hands each record to the window operator with the
//! partition watermark it carries, so late/on-time decisions are those of the original input
//! partition. The exchange partition's own watermark is the minimum over every upstream task's
//! latest marker ([`UpstreamWatermarks`]): windows close only after every upstream delivered
//! its data up to that point.
//!
//! The formats here are versioned bytes; a connector only moves them.

use crate::event::{Fields, Record, Timestamp, Value, MAX_TIMESTAMP, MIN_TIMESTAMP};

use super::sink::Sink;
use super::source::SourcePartition;

/// Version byte of exchange record values.
const VALUE_VERSION: u8 = 1;
/// Kind byte of a data record.
const KIND_RECORD: u8 = 0;
/// Kind byte of a watermark marker.
const KIND_MARKER: u8 = 1;
/// Target partition of a staged item that goes to every exchange partition.
const EVERY_PARTITION: u32 = u32::MAX;
/// Version byte of [`UpstreamWatermarks::snapshot`].
const SNAPSHOT_VERSION: u8 = 1;

/// The exchange partition of a record whose key hashes to `key_hash`, among `partitions`.
///
/// The key hash is mixed first: stage 2 also spreads keys over its shards by
/// `key_hash % shards`, and taking both moduli of the same number would leave shards idle
/// (with 4 partitions and 2 shards, partition 0 would only hold keys of shard 0).
pub fn exchange_partition(key_hash: u64, partitions: u32) -> u32 {
    let mut z = key_hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(partitions.max(1))) as u32
}

/// Stage 1's progress report to every exchange partition, staged at each barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The upstream task: the index of its input partition in the source.
    pub upstream: u32,
    /// The upstream partition's watermark at the barrier. Every record the upstream stages
    /// after this marker carries a partition watermark at or above it.
    pub watermark: Timestamp,
    /// The upstream input has ended (bounded runs): it stages no more records.
    pub ended: bool,
    /// The upstream input is idle: it does not hold the exchange watermark back.
    pub idle: bool,
}

/// A decoded exchange record value.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeMessage {
    /// A data record with the watermark of its input partition when it was read.
    Record {
        /// The record (fields in the stage-2 pipeline's slot order).
        record: Record,
        /// The watermark of its original input partition when it was read.
        partition_watermark: Timestamp,
    },
    /// An upstream's progress.
    Marker(Marker),
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends the value of a data record: event time, carried watermark and `fields` in order.
pub fn encode_record<'a>(
    out: &mut Vec<u8>,
    time: Timestamp,
    partition_watermark: Timestamp,
    fields: impl ExactSizeIterator<Item = &'a Value>,
) {
    out.push(VALUE_VERSION);
    out.push(KIND_RECORD);
    put_i64(out, time);
    put_i64(out, partition_watermark);
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for value in fields {
        match value {
            Value::Null => out.push(0),
            Value::Bool(false) => out.push(1),
            Value::Bool(true) => out.push(2),
            Value::Int(i) => {
                out.push(3);
                put_i64(out, *i);
            }
            Value::Float(f) => {
                out.push(4);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Value::Str(s) => {
                out.push(5);
                put_u32(out, s.len() as u32);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// Appends the value of a marker.
pub fn encode_marker(out: &mut Vec<u8>, marker: &Marker) {
    out.push(VALUE_VERSION);
    out.push(KIND_MARKER);
    put_u32(out, marker.upstream);
    put_i64(out, marker.watermark);
    out.push(u8::from(marker.ended) | (u8::from(marker.idle) << 1));
}

/// A cursor over bytes that reports truncation as an error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("exchange bytes are truncated".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

/// Decodes a value written by [`encode_record`] or [`encode_marker`].
pub fn decode(value: &[u8]) -> Result<ExchangeMessage, String> {
    let mut r = Reader(value);
    let version = r.u8()?;
    if version != VALUE_VERSION {
        return Err(format!(
            "exchange record version {version} is not supported (this build reads {VALUE_VERSION})"
        ));
    }
    let message = match r.u8()? {
        KIND_RECORD => {
            let time = r.i64()?;
            let partition_watermark = r.i64()?;
            let count = r.u16()? as usize;
            let mut fields = Fields::with_capacity(count);
            for _ in 0..count {
                fields.push(match r.u8()? {
                    0 => Value::Null,
                    1 => Value::Bool(false),
                    2 => Value::Bool(true),
                    3 => Value::Int(r.i64()?),
                    4 => Value::Float(f64::from_bits(r.i64()? as u64)),
                    5 => {
                        let len = r.u32()? as usize;
                        let text = std::str::from_utf8(r.take(len)?)
                            .map_err(|_| "exchange string is not UTF-8".to_string())?;
                        Value::Str(text.into())
                    }
                    tag => return Err(format!("unknown exchange value tag {tag}")),
                });
            }
            ExchangeMessage::Record {
                record: Record { time, fields },
                partition_watermark,
            }
        }
        KIND_MARKER => {
            let upstream = r.u32()?;
            let watermark = r.i64()?;
            let flags = r.u8()?;
            ExchangeMessage::Marker(Marker {
                upstream,
                watermark,
                ended: flags & 1 != 0,
                idle: flags & 2 != 0,
            })
        }
        kind => return Err(format!("unknown exchange record kind {kind}")),
    };
    if !r.0.is_empty() {
        return Err(format!(
            "{} unexpected bytes after an exchange record",
            r.0.len()
        ));
    }
    Ok(message)
}

/// Stages one item for the exchange sink: `[partition u32][key len u32][key][value len
/// u32][value]`, partition `u32::MAX` meaning every partition.
pub fn stage(staged: &mut Vec<u8>, partition: Option<u32>, key: &[u8], value: &[u8]) {
    put_u32(staged, partition.unwrap_or(EVERY_PARTITION));
    put_u32(staged, key.len() as u32);
    staged.extend_from_slice(key);
    put_u32(staged, value.len() as u32);
    staged.extend_from_slice(value);
}

/// One item staged with [`stage`], borrowed from the staged bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedItem<'a> {
    /// The target partition; `None`: every partition (markers).
    pub partition: Option<u32>,
    /// The record key (the grouping key's bytes; empty for markers).
    pub key: &'a [u8],
    /// The record value.
    pub value: &'a [u8],
}

/// Reads the items [`stage`] wrote, in order. Malformed framing is an error.
pub fn read_staged(bytes: &[u8]) -> Result<Vec<StagedItem<'_>>, String> {
    let mut r = Reader(bytes);
    let mut items = Vec::new();
    while !r.0.is_empty() {
        let partition = r.u32()?;
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?;
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?;
        items.push(StagedItem {
            partition: (partition != EVERY_PARTITION).then_some(partition),
            key,
            value,
        });
    }
    Ok(items)
}

/// What stage 2 knows of one upstream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// No marker seen yet: holds the watermark back.
    Unknown,
    /// The latest marker's watermark and flags.
    Known {
        watermark: Timestamp,
        ended: bool,
        idle: bool,
    },
}

/// The watermark of one exchange partition: the minimum over all upstream tasks' latest
/// markers.
///
/// - An upstream without a marker yet holds the watermark at [`MIN_TIMESTAMP`] (it may still
///   deliver anything).
/// - Ended and idle upstreams do not constrain it. When every upstream has ended it is
///   [`MAX_TIMESTAMP`]; when the remaining ones are all idle it holds where it is (an idle
///   upstream may resume).
/// - It never decreases; an upstream's watermark never decreases either (a lower marker, e.g.
///   replayed after a restart of the upstream, is ignored).
/// - A marker from an upstream index outside `0..upstreams` is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamWatermarks {
    upstreams: Vec<Upstream>,
    combined: Timestamp,
}

impl UpstreamWatermarks {
    /// `upstreams` upstream tasks, none heard from.
    pub fn new(upstreams: u32) -> Self {
        UpstreamWatermarks {
            upstreams: vec![Upstream::Unknown; upstreams as usize],
            combined: MIN_TIMESTAMP,
        }
    }

    /// Takes `marker` into account; returns the combined watermark afterwards.
    pub fn observe(&mut self, marker: &Marker) -> Timestamp {
        if let Some(slot) = self.upstreams.get_mut(marker.upstream as usize) {
            let previous = match *slot {
                Upstream::Unknown => MIN_TIMESTAMP,
                Upstream::Known { watermark, .. } => watermark,
            };
            let was_ended = matches!(*slot, Upstream::Known { ended: true, .. });
            *slot = Upstream::Known {
                watermark: previous.max(marker.watermark),
                ended: marker.ended || was_ended,
                idle: marker.idle && !marker.ended,
            };
        }
        self.recompute();
        self.combined
    }

    fn recompute(&mut self) {
        let mut min: Option<Timestamp> = None;
        let mut all_ended = true;
        for u in &self.upstreams {
            match *u {
                Upstream::Unknown => return,
                Upstream::Known { ended: true, .. } => {}
                Upstream::Known {
                    watermark, idle, ..
                } => {
                    all_ended = false;
                    if !idle {
                        min = Some(min.map_or(watermark, |m| m.min(watermark)));
                    }
                }
            }
        }
        let candidate = match min {
            Some(m) => m,
            None if all_ended => MAX_TIMESTAMP,
            None => return,
        };
        self.combined = self.combined.max(candidate);
    }

    /// The combined watermark.
    pub fn watermark(&self) -> Timestamp {
        self.combined
    }

    /// Whether every upstream has reported that its input ended (never with zero upstreams).
    pub fn all_ended(&self) -> bool {
        !self.upstreams.is_empty()
            && self
                .upstreams
                .iter()
                .all(|u| matches!(u, Upstream::Known { ended: true, .. }))
    }

    /// The state to store with the exchange partition's position: without it, a restarted
    /// reader would wait for markers from upstreams that already ended and send no more.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        put_i64(&mut out, self.combined);
        put_u32(&mut out, self.upstreams.len() as u32);
        for u in &self.upstreams {
            match *u {
                Upstream::Unknown => out.push(0),
                Upstream::Known {
                    watermark,
                    ended,
                    idle,
                } => {
                    out.push(1 | (u8::from(ended) << 1) | (u8::from(idle) << 2));
                    put_i64(&mut out, watermark);
                }
            }
        }
        out
    }

    /// Restores a [`UpstreamWatermarks::snapshot`]. A snapshot of another upstream count is an
    /// error (the source's partition count changed), as are corrupt bytes; `self` is unchanged
    /// then.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != SNAPSHOT_VERSION {
            return Err(format!(
                "exchange watermark snapshot version {version} is not supported"
            ));
        }
        let combined = r.i64()?;
        let count = r.u32()? as usize;
        if count != self.upstreams.len() {
            return Err(format!(
                "exchange watermark snapshot has {count} upstreams, expected {} (did the \
                 source's partition count change?)",
                self.upstreams.len()
            ));
        }
        let mut upstreams = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = r.u8()?;
            upstreams.push(if flags & 1 == 0 {
                Upstream::Unknown
            } else {
                Upstream::Known {
                    watermark: r.i64()?,
                    ended: flags & 2 != 0,
                    idle: flags & 4 != 0,
                }
            });
        }
        if !r.0.is_empty() {
            return Err("exchange watermark snapshot has trailing bytes".into());
        }
        self.upstreams = upstreams;
        self.combined = combined;
        Ok(())
    }
}

/// What [`super::Connectors::open_exchange`] is asked to open for one repartitioned pipeline.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The pipeline's (user) source name.
    pub source: &'a str,
    /// The pipeline's source.
    pub source_spec: &'a crate::topology::SourceSpec,
    /// The source's partition count: the exchange has as many partitions, and as many
    /// upstream tasks.
    pub partitions: u32,
    /// The name the exchange sink must report from [`Sink::name`] (its staged outputs are
    /// stored under it).
    pub sink_name: &'a str,
    /// The scope fencing the exchange sink's commits.
    pub scope: &'a super::SinkScope,
    /// Which exchange partitions to read (the same selection as the source's).
    pub selection: &'a super::PartitionSelection,
    /// The fields stage-2 records hold, in slot order.
    pub ctx: &'a super::DecodeContext,
}

/// An opened exchange: stage 1 writes through `sink`, stage 2 reads `partitions`.
pub struct Exchange {
    /// The exchange sink. Its staged bytes are items written by [`stage`]; it produces each to
    /// its target partition (every partition for markers), committed per epoch with the same
    /// exactly-once contract as any [`Sink`]. Its encoder is never given outputs.
    pub sink: Box<dyn Sink>,
    /// The selected exchange partitions, in index order. Each decodes values with [`decode`],
    /// returns records with their carried watermark in
    /// [`super::SourceBatch::record_watermarks`], reports [`UpstreamWatermarks::watermark`]
    /// from [`SourcePartition::watermark`], stores the upstream state in its position, and
    /// ends (for bounded runs) once every upstream ended.
    pub partitions: Vec<Box<dyn SourcePartition>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("sink", &self.sink.name())
            .field("partitions", &self.partitions.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(upstream: u32, watermark: Timestamp) -> Marker {
        Marker {
            upstream,
            watermark,
            ended: false,
            idle: false,
        }
    }

    #[test]
    fn records_round_trip() {
        let fields = [
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-7),
            Value::Float(2.5),
            Value::Str("ü-long-string-beyond-inline-capacity".into()),
        ];
        let mut value = Vec::new();
        encode_record(&mut value, 1_000, 400, fields.iter());
        let ExchangeMessage::Record {
            record,
            partition_watermark,
        } = decode(&value).unwrap()
        else {
            panic!("not a record");
        };
        assert_eq!(record.time, 1_000);
        assert_eq!(partition_watermark, 400);
        assert_eq!(record.fields.as_slice(), &fields);
        assert!(decode(&value[..value.len() - 1]).is_err());
        let mut longer = value.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn markers_round_trip() {
        for m in [
            marker(3, MIN_TIMESTAMP),
            Marker {
                upstream: 0,
                watermark: MAX_TIMESTAMP,
                ended: true,
                idle: false,
            },
            Marker {
                upstream: u32::MAX - 1,
                watermark: -5,
                ended: false,
                idle: true,
            },
        ] {
            let mut value = Vec::new();
            encode_marker(&mut value, &m);
            assert_eq!(decode(&value).unwrap(), ExchangeMessage::Marker(m));
        }
        assert!(decode(&[VALUE_VERSION + 1, KIND_MARKER]).is_err());
        assert!(decode(&[VALUE_VERSION, 9]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn staged_items_round_trip() {
        let mut staged = Vec::new();
        stage(&mut staged, Some(2), b"k1", b"v1");
        stage(&mut staged, None, b"", b"marker");
        let items = read_staged(&staged).unwrap();
        assert_eq!(
            items,
            vec![
                StagedItem {
                    partition: Some(2),
                    key: b"k1",
                    value: b"v1"
                },
                StagedItem {
                    partition: None,
                    key: b"",
                    value: b"marker"
                },
            ]
        );
        assert!(read_staged(&staged[..staged.len() - 1]).is_err());
    }

    #[test]
    fn partitions_spread_keys_independently_of_shards() {
        // Keys of one exchange partition still spread over both shards.
        let mut shards_seen = [false; 2];
        for h in 0..1000u64 {
            let key_hash = h.wrapping_mul(0x9e37_79b9);
            if exchange_partition(key_hash, 4) == 0 {
                shards_seen[(key_hash % 2) as usize] = true;
            }
            assert!(exchange_partition(key_hash, 4) < 4);
        }
        assert_eq!(shards_seen, [true, true]);
        assert_eq!(exchange_partition(42, 0), 0);
    }

    #[test]
    fn unknown_upstreams_hold_the_watermark_back() {
        let mut w = UpstreamWatermarks::new(3);
        assert_eq!(w.watermark(), MIN_TIMESTAMP);
        assert_eq!(w.observe(&marker(0, 100)), MIN_TIMESTAMP);
        assert_eq!(w.observe(&marker(1, 50)), MIN_TIMESTAMP);
        // The last upstream reports: the minimum of all three.
        assert_eq!(w.observe(&marker(2, 70)), 50);
        assert_eq!(w.observe(&marker(1, 200)), 70);
        assert_eq!(w.observe(&marker(2, 300)), 100);
        // A lower (replayed) marker changes nothing; the combined value never decreases.
        assert_eq!(w.observe(&marker(0, 10)), 100);
        // Out-of-range upstreams are ignored.
        assert_eq!(w.observe(&marker(9, 1_000)), 100);
        assert!(!w.all_ended());
    }

    #[test]
    fn ended_and_idle_upstreams_do_not_hold_it_back() {
        let mut w = UpstreamWatermarks::new(3);
        let ended = |upstream| Marker {
            upstream,
            watermark: MAX_TIMESTAMP,
            ended: true,
            idle: false,
        };
        // An ended upstream with the others unknown: still held back.
        assert_eq!(w.observe(&ended(0)), MIN_TIMESTAMP);
        w.observe(&marker(1, 40));
        assert_eq!(
            w.observe(&Marker {
                upstream: 2,
                watermark: 10,
                ended: false,
                idle: true
            }),
            40
        );
        // Only idle upstreams left: holds where it is.
        w.observe(&Marker {
            upstream: 1,
            watermark: 45,
            ended: false,
            idle: true,
        });
        assert_eq!(w.watermark(), 40);
        // Idle upstream 2 resumes behind: the watermark does not go back.
        assert_eq!(w.observe(&marker(2, 20)), 40);
        assert_eq!(w.observe(&marker(2, 60)), 60);
        assert!(!w.all_ended());
        w.observe(&ended(1));
        assert_eq!(w.observe(&ended(2)), MAX_TIMESTAMP);
        assert!(w.all_ended());
        // An ended upstream stays ended even if a stale marker says otherwise.
        w.observe(&marker(2, 5));
        assert!(w.all_ended());
        assert!(!UpstreamWatermarks::new(0).all_ended());
    }

    #[test]
    fn snapshots_restore_the_upstream_state() {
        let mut w = UpstreamWatermarks::new(3);
        w.observe(&marker(0, 10));
        w.observe(&Marker {
            upstream: 1,
            watermark: MAX_TIMESTAMP,
            ended: true,
            idle: false,
        });
        let mut restored = UpstreamWatermarks::new(3);
        restored.restore(&w.snapshot()).unwrap();
        assert_eq!(restored, w);
        assert_eq!(restored.observe(&marker(2, 30)), 10);
        let before = UpstreamWatermarks::new(4);
        let mut wrong = before.clone();
        assert!(wrong.restore(&w.snapshot()).is_err());
        assert_eq!(wrong, before);
        assert!(wrong.restore(&[]).is_err());
        let snap = w.snapshot();
        assert!(restored.restore(&snap[..snap.len() - 1]).is_err());
    }
}

//! Redis operations as staged bytes, and how a commit plans them into fenced script calls.
//!
//! Encoders append one frame per operation ([`data`], [`tail`]); `commit` decodes the frames
//! ([`decode`]), orders them ([`plan`]: data operations in staged order, then each distinct
//! trim/expire once), groups them by cluster slot when asked, and cuts each group into
//! chunks ([`chunks`]) that one script call applies.
//!
//! Frame layout, all lengths u32 big-endian:
//! `phase (1 = data, 2 = tail) ‖ key type ‖ part count ‖ (length ‖ bytes)*`, where the parts
//! are the command, the key, then the command's arguments.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use weir_engine::event::Output;

use crate::redis::slot::key_slot;

/// When an operation runs within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// In staged order.
    Data,
    /// After every data operation, once per distinct operation: feed and leaderboard trims
    /// and expiries, which give the same result once at the end as after every write.
    Tail,
}

/// The type a key must have (or be absent) for an operation to run; the script checks every
/// key before it writes anything, because Redis keeps the writes of a script that fails
/// half-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// No check (EXPIRE-like commands work on any type).
    Any,
    /// A string (SET).
    String,
    /// A hash.
    Hash,
    /// A sorted set.
    ZSet,
    /// A stream.
    Stream,
}

impl KeyType {
    /// The name `TYPE` reports, or `""` for no check.
    pub fn redis_name(self) -> &'static str {
        match self {
            KeyType::Any => "",
            KeyType::String => "string",
            KeyType::Hash => "hash",
            KeyType::ZSet => "zset",
            KeyType::Stream => "stream",
        }
    }

    fn code(self) -> u8 {
        match self {
            KeyType::Any => 0,
            KeyType::String => 1,
            KeyType::Hash => 2,
            KeyType::ZSet => 3,
            KeyType::Stream => 4,
        }
    }

    fn from_code(code: u8) -> Option<KeyType> {
        Some(match code {
            0 => KeyType::Any,
            1 => KeyType::String,
            2 => KeyType::Hash,
            3 => KeyType::ZSet,
            4 => KeyType::Stream,
            _ => return None,
        })
    }
}

/// Appends `command` (name, its one key, arguments), to run in staged order.
pub fn data(staged: &mut Vec<u8>, key_type: KeyType, command: &[&str]) {
    push(staged, Phase::Data, key_type, command);
}

/// Appends `command` (name, its one key, arguments), to run once per epoch after every data
/// operation (see [`Phase::Tail`]).
pub fn tail(staged: &mut Vec<u8>, key_type: KeyType, command: &[&str]) {
    push(staged, Phase::Tail, key_type, command);
}

fn push(staged: &mut Vec<u8>, phase: Phase, key_type: KeyType, command: &[&str]) {
    debug_assert!(command.len() >= 2, "a command needs a name and a key");
    staged.push(match phase {
        Phase::Data => 1,
        Phase::Tail => 2,
    });
    staged.push(key_type.code());
    put_u32(staged, command.len());
    for part in command {
        put_u32(staged, part.len());
        staged.extend_from_slice(part.as_bytes());
    }
}

fn put_u32(buf: &mut Vec<u8>, n: usize) {
    // Parts are keys and payloads; none comes near 4 GiB.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    buf.extend_from_slice(&n.to_be_bytes());
}

/// One decoded operation, borrowing from the staged bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op<'a> {
    /// When it runs.
    pub phase: Phase,
    /// The type its key must have.
    pub key_type: KeyType,
    /// The Redis command.
    pub command: &'a [u8],
    /// The one key it touches.
    pub key: &'a [u8],
    /// The arguments after the key.
    pub args: Vec<&'a [u8]>,
}

impl Op<'_> {
    /// Bytes this operation adds to a script call, for chunk sizing.
    pub fn size(&self) -> usize {
        let overhead = 16;
        self.command.len()
            + self.key.len()
            + self.args.iter().map(|a| a.len() + overhead).sum::<usize>()
            + 3 * overhead
    }
}

/// Decodes every frame of `staged`; an error means the bytes were not written by this
/// version's encoders.
pub fn decode(staged: &[u8]) -> Result<Vec<Op<'_>>, String> {
    let mut ops = Vec::new();
    let mut rest = staged;
    while !rest.is_empty() {
        let at = staged.len() - rest.len();
        let op = decode_one(&mut rest).ok_or_else(|| {
            format!("staged bytes are not Redis operations of this Weir version (at byte {at})")
        })?;
        ops.push(op);
    }
    Ok(ops)
}

fn decode_one<'a>(rest: &mut &'a [u8]) -> Option<Op<'a>> {
    let phase = match take(rest, 1)?[0] {
        1 => Phase::Data,
        2 => Phase::Tail,
        _ => return None,
    };
    let key_type = KeyType::from_code(take(rest, 1)?[0])?;
    let count = take_u32(rest)?;
    if count < 2 {
        return None;
    }
    let command = take_part(rest)?;
    let key = take_part(rest)?;
    let args = (2..count)
        .map(|_| take_part(rest))
        .collect::<Option<Vec<_>>>()?;
    Some(Op {
        phase,
        key_type,
        command,
        key,
        args,
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_u32(rest: &mut &[u8]) -> Option<usize> {
    let bytes: [u8; 4] = take(rest, 4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

fn take_part<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(rest)?;
    take(rest, len)
}

/// The operations of one epoch that share a fence: all of them, or (cluster mode) those of one
/// slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Group<'a> {
    /// The cluster slot of every key in the group; `None` outside cluster mode.
    pub slot: Option<u16>,
    /// The operations, in the order they are applied.
    pub ops: Vec<Op<'a>>,
}

/// Orders an epoch's operations (data in staged order, then each distinct tail operation
/// once, at its first position among the tails) and groups them by slot in cluster mode.
/// Deterministic: the same staged bytes always give the same groups.
pub fn plan(ops: Vec<Op<'_>>, cluster: bool) -> Vec<Group<'_>> {
    let (data, tails): (Vec<_>, Vec<_>) = ops.into_iter().partition(|op| op.phase == Phase::Data);
    let mut seen = HashSet::new();
    let mut ordered = data;
    for op in tails {
        if seen.insert(op.clone()) {
            ordered.push(op);
        }
    }
    if !cluster {
        return vec![Group {
            slot: None,
            ops: ordered,
        }];
    }
    let mut by_slot: BTreeMap<u16, Vec<Op<'_>>> = BTreeMap::new();
    for op in ordered {
        by_slot.entry(key_slot(op.key)).or_default().push(op);
    }
    by_slot
        .into_iter()
        .map(|(slot, ops)| Group {
            slot: Some(slot),
            ops,
        })
        .collect()
}

/// How much one script call may carry. Redis runs a script to completion before serving
/// anyone else, so calls are kept small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// At most this many operations per call.
    pub max_ops: usize,
    /// At most about this many bytes of keys and arguments per call (an operation larger than
    /// this goes alone).
    pub max_bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_ops: 2000,
            max_bytes: 1 << 20,
        }
    }
}

/// Cuts `ops` into consecutive ranges within `limits` (each range holds at least one op).
pub fn chunks(ops: &[Op<'_>], limits: ChunkLimits) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, op) in ops.iter().enumerate() {
        let size = op.size();
        let full = i - start >= limits.max_ops.max(1) || bytes + size > limits.max_bytes;
        if i > start && full {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < ops.len() {
        ranges.push(start..ops.len());
    }
    ranges
}

/// Why an output was not written (it is counted and logged instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

/// How one sink type turns an output into operations. Implemented by the sink types of this
/// module only.
pub trait WriteOps: Send + Sync + 'static {
    /// Appends `output`'s operations to `staged`, or says why it cannot be written. On `Err`,
    /// whatever was appended is discarded by the caller.
    fn write_ops(&self, output: &Output, staged: &mut Vec<u8>) -> Result<(), Skip>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_bytes() -> Vec<u8> {
        let mut staged = Vec::new();
        data(&mut staged, KeyType::ZSet, &["ZADD", "feed:1", "5", "a"]);
        tail(
            &mut staged,
            KeyType::ZSet,
            &["ZREMRANGEBYRANK", "feed:1", "0", "-3"],
        );
        data(&mut staged, KeyType::String, &["SET", "p:a", "{}"]);
        tail(
            &mut staged,
            KeyType::ZSet,
            &["ZREMRANGEBYRANK", "feed:1", "0", "-3"],
        );
        staged
    }

    #[test]
    fn frames_round_trip() {
        let staged = op_bytes();
        let ops = decode(&staged).unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0].command, b"ZADD");
        assert_eq!(ops[0].key, b"feed:1");
        assert_eq!(ops[0].args, vec![&b"5"[..], b"a"]);
        assert_eq!(ops[1].phase, Phase::Tail);
        assert_eq!(ops[2].key_type, KeyType::String);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_an_error() {
        let staged = op_bytes();
        assert!(decode(&staged[..staged.len() - 1]).is_err());
        assert!(decode(b"{\"a\":1}\n").is_err());
        assert_eq!(decode(b"").unwrap(), vec![]);
    }

    #[test]
    fn plan_puts_distinct_tails_last() {
        let staged = op_bytes();
        let groups = plan(decode(&staged).unwrap(), false);
        assert_eq!(groups.len(), 1);
        let commands: Vec<_> = groups[0].ops.iter().map(|op| op.command).collect();
        assert_eq!(commands, vec![&b"ZADD"[..], b"SET", b"ZREMRANGEBYRANK"]);
    }

    #[test]
    fn cluster_plan_groups_by_slot_in_order() {
        let mut staged = Vec::new();
        for key in ["a{x}", "b", "c{x}", "d"] {
            data(&mut staged, KeyType::Hash, &["HSET", key]);
        }
        let groups = plan(decode(&staged).unwrap(), true);
        let total: usize = groups.iter().map(|g| g.ops.len()).sum();
        assert_eq!(total, 4);
        for group in &groups {
            for op in &group.ops {
                assert_eq!(Some(key_slot(op.key)), group.slot);
            }
        }
        let x = groups
            .iter()
            .find(|g| g.slot == Some(key_slot(b"x")))
            .unwrap();
        let keys: Vec<_> = x.ops.iter().map(|op| op.key).collect();
        assert_eq!(keys, vec![&b"a{x}"[..], b"c{x}"]);
        assert!(groups.windows(2).all(|w| w[0].slot < w[1].slot));
    }

    #[test]
    fn chunks_respect_both_limits() {
        let mut staged = Vec::new();
        for i in 0..10 {
            let arg = "x".repeat(if i == 4 { 500 } else { 10 });
            data(&mut staged, KeyType::String, &["SET", "k", &arg]);
        }
        let ops = decode(&staged).unwrap();
        let by_count = chunks(
            &ops,
            ChunkLimits {
                max_ops: 3,
                max_bytes: usize::MAX,
            },
        );
        assert_eq!(by_count, vec![0..3, 3..6, 6..9, 9..10]);
        let by_size = chunks(
            &ops,
            ChunkLimits {
                max_ops: 100,
                max_bytes: 200,
            },
        );
        assert_eq!(by_size.first(), Some(&(0..2)));
        assert!(by_size.contains(&(4..5)), "{by_size:?}");
        let covered: usize = by_size.iter().map(|r| r.len()).sum();
        assert_eq!(covered, 10);
        assert!(chunks(&[], ChunkLimits::default()).is_empty());
    }
}

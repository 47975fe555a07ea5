//! The checkpoint protocol of one worker, as pure decisions plus the key layouts it stores.
//!
//! An epoch `E` goes through four steps, in this order:
//!
//! 1. every source partition and every shard reaches barrier `E` ([`EpochTracker`]);
//! 2. ONE atomic [`StateBatch`] holds all state changes, every source position and watermark
//!    ([`write_position`]), the sink outputs staged for `E` ([`write_staged`]) and
//!    `prepared = E` ([`write_prepared`]);
//! 3. each sink commits `E` from its staged outputs (idempotent and fenced by epoch);
//! 4. a batch sets `committed = E` and deletes the staged outputs ([`write_committed`]).
//!
//! On start a worker reads [`Progress`] ([`read_progress`]) and [`decide_recovery`] says what to
//! do: start fresh, resume, or first re-commit a prepared epoch from [`read_staged`].
//!
//! # Key layouts
//!
//! | table | key | value |
//! |---|---|---|
//! | `Meta` | `epoch_prepared` | epoch, u64 big-endian |
//! | `Meta` | `epoch_committed` | epoch, u64 big-endian |
//! | `Staged` | epoch (u64 BE) ‖ sink name (UTF-8) | the sink's staged output, opaque |
//! | `Positions` | len(pipeline) (u32 BE) ‖ pipeline ‖ partition id (UTF-8) | [`PartitionCheckpoint::encode`] |
//!
//! The fixed-width big-endian epoch makes one epoch's staged outputs a contiguous key range;
//! the length prefix keeps a pipeline's positions a contiguous range even when one pipeline
//! name is a prefix of another.

use std::collections::HashMap;

use super::Epoch;
use crate::state::{prefix_end, scan_prefix, StateBatch, StateError, StateStore, Table};

/// `Meta` key of the last epoch whose state was durably prepared.
pub const PREPARED_KEY: &[u8] = b"epoch_prepared";
/// `Meta` key of the last epoch every sink confirmed.
pub const COMMITTED_KEY: &[u8] = b"epoch_committed";

/// What the store says about epochs, as read at start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last epoch written by step 2 (state, positions, staged outputs).
    pub prepared: Option<Epoch>,
    /// The last epoch written by step 4 (all sinks committed).
    pub committed: Option<Epoch>,
}

/// What a starting worker must do, from its stored [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryDecision {
    /// Nothing was ever checkpointed: start sources from their configured start, epoch 1.
    Fresh,
    /// Epoch `epoch` is fully committed: load its state and positions and continue with
    /// `epoch + 1`.
    Resume {
        /// The last committed epoch.
        epoch: Epoch,
    },
    /// Epoch `epoch` was prepared but not confirmed committed: commit every sink again from
    /// `epoch`'s staged outputs (sink fences make this a no-op where it already landed), write
    /// `committed = epoch`, then resume as [`RecoveryDecision::Resume`].
    RecommitThenResume {
        /// The prepared, unconfirmed epoch.
        epoch: Epoch,
    },
}

/// Stored epoch metadata that no run of the protocol can produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An epoch is marked committed that was never prepared, or a later one than prepared.
    #[error(
        "checkpoint metadata is inconsistent: epoch {committed} is marked committed but the last \
         prepared epoch is {prepared:?}; an epoch is committed only after it was prepared"
    )]
    CommittedAhead {
        /// The stored prepared epoch.
        prepared: Option<Epoch>,
        /// The stored committed epoch.
        committed: Epoch,
    },
    /// The prepared epoch is more than one past the committed one: epochs were skipped, so the
    /// outputs of the epochs in between may never have reached the sinks.
    #[error(
        "checkpoint metadata is inconsistent: epoch {prepared} is prepared but the last committed \
         epoch is {committed:?}; an epoch is prepared only after the previous one was committed"
    )]
    PreparedGap {
        /// The stored prepared epoch.
        prepared: Epoch,
        /// The stored committed epoch.
        committed: Option<Epoch>,
    },
    /// Epoch 0 is stored; epochs start at 1.
    #[error("checkpoint metadata is corrupt: epoch 0 is stored as {which}, but epochs start at 1")]
    ZeroEpoch {
        /// `"prepared"` or `"committed"`.
        which: &'static str,
    },
}

/// Decides what a starting worker does from its stored progress.
///
/// Only three states are reachable by the protocol: nothing stored; `committed == prepared`;
/// `prepared == committed + 1` (with "nothing committed" counting as 0, so the first epoch is
/// 1). Anything else is corrupt metadata and an error, because guessing could lose or duplicate
/// results.
pub fn decide_recovery(p: &Progress) -> Result<RecoveryDecision, ProtocolError> {
    if p.prepared == Some(0) {
        return Err(ProtocolError::ZeroEpoch { which: "prepared" });
    }
    if p.committed == Some(0) {
        return Err(ProtocolError::ZeroEpoch { which: "committed" });
    }
    match (p.prepared, p.committed) {
        (None, None) => Ok(RecoveryDecision::Fresh),
        (None, Some(committed)) => Err(ProtocolError::CommittedAhead {
            prepared: None,
            committed,
        }),
        (Some(prepared), Some(committed)) if committed > prepared => {
            Err(ProtocolError::CommittedAhead {
                prepared: Some(prepared),
                committed,
            })
        }
        (Some(prepared), Some(committed)) if prepared == committed => {
            Ok(RecoveryDecision::Resume { epoch: committed })
        }
        (Some(prepared), committed) if prepared == committed.unwrap_or(0).saturating_add(1) => {
            Ok(RecoveryDecision::RecommitThenResume { epoch: prepared })
        }
        (Some(prepared), committed) => Err(ProtocolError::PreparedGap {
            prepared,
            committed,
        }),
    }
}

/// The first epoch to run after start-up: 1 on a fresh store, else one past the last stored
/// epoch (so an epoch number is never reused, even on metadata the decision refused).
pub fn next_epoch(p: &Progress) -> Epoch {
    p.prepared
        .max(p.committed)
        .map_or(1, |e| e.saturating_add(1))
}

/// Which kind of participant reached a barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Participant {
    /// A source partition task.
    Source,
    /// A keyed shard.
    Shard,
}

impl std::fmt::Display for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Participant::Source => "source",
            Participant::Shard => "shard",
        })
    }
}

/// A coordinator called [`EpochTracker`] out of order: always a bug in the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// `begin` while another epoch is still in flight.
    #[error("cannot begin epoch {epoch}: epoch {in_flight} is still in flight")]
    Busy {
        /// The epoch asked for.
        epoch: Epoch,
        /// The epoch in flight.
        in_flight: Epoch,
    },
    /// `begin` with another number than the next epoch.
    #[error("cannot begin epoch {got}: the next epoch is {expected}")]
    UnexpectedEpoch {
        /// The next epoch.
        expected: Epoch,
        /// The epoch asked for.
        got: Epoch,
    },
    /// A barrier, prepare or commit for an epoch that is not in flight.
    #[error("epoch {epoch} is not in flight (in flight: {in_flight:?})")]
    NotInFlight {
        /// The epoch named by the call.
        epoch: Epoch,
        /// The epoch in flight, if any.
        in_flight: Option<Epoch>,
    },
    /// A participant index beyond the number of participants.
    #[error("{kind} {index} does not exist (there are {count})")]
    NoSuchParticipant {
        /// Source or shard.
        kind: Participant,
        /// The index given.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// A participant reported the same barrier twice.
    #[error("{kind} {index} reported barrier {epoch} twice")]
    DuplicateReady {
        /// Source or shard.
        kind: Participant,
        /// Its index.
        index: usize,
        /// The epoch.
        epoch: Epoch,
    },
    /// `prepared` before every participant reached the barrier.
    #[error(
        "epoch {epoch} cannot be prepared: {missing_sources} source(s) and {missing_shards} \
         shard(s) have not reached the barrier"
    )]
    Incomplete {
        /// The epoch.
        epoch: Epoch,
        /// Sources still missing.
        missing_sources: usize,
        /// Shards still missing.
        missing_shards: usize,
    },
    /// A barrier or a second prepare after the epoch was prepared.
    #[error("epoch {epoch} is already prepared")]
    AlreadyPrepared {
        /// The epoch.
        epoch: Epoch,
    },
    /// `committed` before `prepared`.
    #[error("epoch {epoch} cannot be marked committed before it is prepared")]
    NotPrepared {
        /// The epoch.
        epoch: Epoch,
    },
}

/// Where the in-flight epoch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochPhase {
    /// No epoch in flight; `next` is the one to begin.
    Idle {
        /// The next epoch.
        next: Epoch,
    },
    /// Barriers of `epoch` are being collected (see [`EpochTracker::is_complete`]).
    Aligning {
        /// The epoch.
        epoch: Epoch,
    },
    /// `epoch` is durably prepared; sinks are committing it.
    Prepared {
        /// The epoch.
        epoch: Epoch,
    },
}

/// The coordinator's view of one epoch at a time, enforcing the protocol's order:
/// `begin(E)` → every source and shard ready for `E` → `prepared(E)` → `committed(E)` →
/// `begin(E + 1)`. Every out-of-order call returns a [`TrackerError`] and changes nothing.
///
/// The participant counts are fixed for the tracker's life; a rebalance that changes them
/// starts a new tracker from the recovered [`Progress`].
#[derive(Debug, Clone)]
pub struct EpochTracker {
    phase: EpochPhase,
    sources_ready: Vec<bool>,
    shards_ready: Vec<bool>,
    missing_sources: usize,
    missing_shards: usize,
}

impl EpochTracker {
    /// A tracker for `sources` source partitions and `shards` shards, idle, whose next epoch is
    /// `next` (from [`next_epoch`]).
    pub fn new(sources: usize, shards: usize, next: Epoch) -> Self {
        EpochTracker {
            phase: EpochPhase::Idle { next },
            sources_ready: vec![false; sources],
            shards_ready: vec![false; shards],
            missing_sources: 0,
            missing_shards: 0,
        }
    }

    /// Where the tracker stands.
    pub fn phase(&self) -> EpochPhase {
        self.phase
    }

    /// The epoch in flight (aligning or prepared), if any.
    pub fn in_flight(&self) -> Option<Epoch> {
        match self.phase {
            EpochPhase::Idle { .. } => None,
            EpochPhase::Aligning { epoch } | EpochPhase::Prepared { epoch } => Some(epoch),
        }
    }

    /// The next epoch to begin once the one in flight (if any) is committed.
    pub fn next_epoch(&self) -> Epoch {
        match self.phase {
            EpochPhase::Idle { next } => next,
            EpochPhase::Aligning { epoch } | EpochPhase::Prepared { epoch } => {
                epoch.saturating_add(1)
            }
        }
    }

    /// Starts epoch `epoch`: barriers are being injected into the sources.
    pub fn begin(&mut self, epoch: Epoch) -> Result<(), TrackerError> {
        match self.phase {
            EpochPhase::Idle { next } if next == epoch => {
                self.sources_ready.iter_mut().for_each(|r| *r = false);
                self.shards_ready.iter_mut().for_each(|r| *r = false);
                self.missing_sources = self.sources_ready.len();
                self.missing_shards = self.shards_ready.len();
                self.phase = EpochPhase::Aligning { epoch };
                Ok(())
            }
            EpochPhase::Idle { next } => Err(TrackerError::UnexpectedEpoch {
                expected: next,
                got: epoch,
            }),
            EpochPhase::Aligning { epoch: in_flight }
            | EpochPhase::Prepared { epoch: in_flight } => {
                Err(TrackerError::Busy { epoch, in_flight })
            }
        }
    }

    /// Source partition `index` reached barrier `epoch` (its position and watermark for the
    /// epoch are known). Returns whether the epoch is now complete.
    pub fn on_source_ready(&mut self, epoch: Epoch, index: usize) -> Result<bool, TrackerError> {
        self.ready(Participant::Source, epoch, index)
    }

    /// Shard `index` received barrier `epoch` from every input (its state changes for the epoch
    /// are staged). Returns whether the epoch is now complete.
    pub fn on_shard_ready(&mut self, epoch: Epoch, index: usize) -> Result<bool, TrackerError> {
        self.ready(Participant::Shard, epoch, index)
    }

    /// Whether every source and shard reached the barrier of the epoch being aligned.
    pub fn is_complete(&self) -> bool {
        matches!(self.phase, EpochPhase::Aligning { .. })
            && self.missing_sources == 0
            && self.missing_shards == 0
    }

    /// Records that the atomic prepare batch of `epoch` was durably written (step 2).
    pub fn prepared(&mut self, epoch: Epoch) -> Result<(), TrackerError> {
        self.check_in_flight(epoch)?;
        match self.phase {
            EpochPhase::Prepared { .. } => Err(TrackerError::AlreadyPrepared { epoch }),
            _ if !self.is_complete() => Err(TrackerError::Incomplete {
                epoch,
                missing_sources: self.missing_sources,
                missing_shards: self.missing_shards,
            }),
            _ => {
                self.phase = EpochPhase::Prepared { epoch };
                Ok(())
            }
        }
    }

    /// Records that every sink committed `epoch` and `committed = epoch` was written (step 4);
    /// the tracker becomes idle, ready for `epoch + 1`.
    pub fn committed(&mut self, epoch: Epoch) -> Result<(), TrackerError> {
        self.check_in_flight(epoch)?;
        match self.phase {
            EpochPhase::Prepared { .. } => {
                self.phase = EpochPhase::Idle {
                    next: epoch.saturating_add(1),
                };
                Ok(())
            }
            _ => Err(TrackerError::NotPrepared { epoch }),
        }
    }

    fn check_in_flight(&self, epoch: Epoch) -> Result<(), TrackerError> {
        let in_flight = self.in_flight();
        if in_flight == Some(epoch) {
            Ok(())
        } else {
            Err(TrackerError::NotInFlight { epoch, in_flight })
        }
    }

    fn ready(
        &mut self,
        kind: Participant,
        epoch: Epoch,
        index: usize,
    ) -> Result<bool, TrackerError> {
        self.check_in_flight(epoch)?;
        if let EpochPhase::Prepared { .. } = self.phase {
            return Err(TrackerError::AlreadyPrepared { epoch });
        }
        let (flags, missing) = match kind {
            Participant::Source => (&mut self.sources_ready, &mut self.missing_sources),
            Participant::Shard => (&mut self.shards_ready, &mut self.missing_shards),
        };
        let count = flags.len();
        let Some(flag) = flags.get_mut(index) else {
            return Err(TrackerError::NoSuchParticipant { kind, index, count });
        };
        if *flag {
            return Err(TrackerError::DuplicateReady { kind, index, epoch });
        }
        *flag = true;
        *missing -= 1;
        Ok(self.is_complete())
    }
}

/// Adds `prepared = epoch` to the prepare batch of step 2.
pub fn write_prepared(batch: &mut StateBatch, epoch: Epoch) {
    batch.put(Table::Meta, PREPARED_KEY, epoch.to_be_bytes().to_vec());
}

/// Adds `committed = epoch` to the batch of step 4, with the deletion of the staged outputs of
/// `epoch` — and of any earlier epoch, since once `epoch` is committed none of them can be
/// needed again and a leftover would otherwise live forever.
pub fn write_committed(batch: &mut StateBatch, epoch: Epoch) {
    batch.put(Table::Meta, COMMITTED_KEY, epoch.to_be_bytes().to_vec());
    let end = prefix_end(&epoch.to_be_bytes()).unwrap_or_else(|| vec![0xff; 9]);
    batch.delete_range(Table::Staged, 0u64.to_be_bytes().to_vec(), end);
}

/// The `Staged` key of `sink`'s output for `epoch`: epoch (u64 BE) then the sink name.
pub fn staged_key(epoch: Epoch, sink_name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + sink_name.len());
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(sink_name.as_bytes());
    key
}

/// Adds `sink`'s staged output for `epoch` to the prepare batch of step 2.
pub fn write_staged(batch: &mut StateBatch, epoch: Epoch, sink_name: &str, output: Vec<u8>) {
    batch.put(Table::Staged, staged_key(epoch, sink_name), output);
}

/// Reads the stored epochs.
pub fn read_progress(store: &dyn StateStore) -> Result<Progress, StateError> {
    Ok(Progress {
        prepared: read_epoch(store, PREPARED_KEY)?,
        committed: read_epoch(store, COMMITTED_KEY)?,
    })
}

fn read_epoch(store: &dyn StateStore, key: &[u8]) -> Result<Option<Epoch>, StateError> {
    let Some(bytes) = store.get(Table::Meta, key)? else {
        return Ok(None);
    };
    let raw: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StateError::Corrupt {
            table: Table::Meta,
            reason: format!(
                "{} has {} bytes, expected an 8-byte epoch",
                String::from_utf8_lossy(key),
                bytes.len()
            ),
        })?;
    Ok(Some(u64::from_be_bytes(raw)))
}

/// The staged outputs of `epoch`, as (sink name, output), ordered by sink name.
pub fn read_staged(
    store: &dyn StateStore,
    epoch: Epoch,
) -> Result<Vec<(String, Vec<u8>)>, StateError> {
    let mut out = Vec::new();
    let mut bad = None;
    scan_prefix(store, Table::Staged, &epoch.to_be_bytes(), &mut |k, v| {
        let name = k.get(8..).unwrap_or_default();
        match std::str::from_utf8(name) {
            Ok(name) => {
                out.push((name.to_owned(), v.to_vec()));
                true
            }
            Err(_) => {
                bad = Some(format!(
                    "staged output of epoch {epoch} has a non-UTF-8 sink name"
                ));
                false
            }
        }
    })?;
    match bad {
        Some(reason) => Err(StateError::Corrupt {
            table: Table::Staged,
            reason,
        }),
        None => Ok(out),
    }
}

/// The `Positions` key prefix of every partition of `pipeline`.
fn positions_prefix(pipeline: &str) -> Vec<u8> {
    // Pipeline names are short config identifiers; a name past 4 GiB cannot come from YAML.
    let len = u32::try_from(pipeline.len()).unwrap_or(u32::MAX);
    let mut key = Vec::with_capacity(4 + pipeline.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(pipeline.as_bytes());
    key
}

/// The `Positions` key of one source partition of `pipeline`.
pub fn position_key(pipeline: &str, partition_id: &str) -> Vec<u8> {
    let mut key = positions_prefix(pipeline);
    key.extend_from_slice(partition_id.as_bytes());
    key
}

/// Adds a source partition's checkpoint to the prepare batch of step 2.
pub fn write_position(
    batch: &mut StateBatch,
    pipeline: &str,
    partition_id: &str,
    checkpoint: &PartitionCheckpoint,
) {
    batch.put(
        Table::Positions,
        position_key(pipeline, partition_id),
        checkpoint.encode(),
    );
}

/// Every stored partition checkpoint of `pipeline`, by partition id.
pub fn read_positions(
    store: &dyn StateStore,
    pipeline: &str,
) -> Result<HashMap<String, PartitionCheckpoint>, StateError> {
    let prefix = positions_prefix(pipeline);
    let mut out = HashMap::new();
    let mut bad = None;
    scan_prefix(store, Table::Positions, &prefix, &mut |k, v| {
        let id = k.get(prefix.len()..).unwrap_or_default();
        let Ok(id) = std::str::from_utf8(id) else {
            bad = Some(StateError::Corrupt {
                table: Table::Positions,
                reason: format!("pipeline `{pipeline}` has a non-UTF-8 partition id"),
            });
            return false;
        };
        match PartitionCheckpoint::decode(v) {
            Ok(cp) => {
                out.insert(id.to_owned(), cp);
                true
            }
            Err(e) => {
                bad = Some(e);
                false
            }
        }
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// What is stored per source partition at each epoch: where to resume reading and the
/// partition's watermark state, both opaque to the protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    /// The connector's position (e.g. the next Kafka offset), in its own encoding.
    pub position: Vec<u8>,
    /// [`crate::time::PartitionWatermark::snapshot`].
    pub watermark: Vec<u8>,
}

impl PartitionCheckpoint {
    /// The encoding version written by [`PartitionCheckpoint::encode`].
    pub const VERSION: u8 = 1;

    /// Encodes as: version (u8) ‖ len(position) (u64 BE) ‖ position ‖ len(watermark) (u64 BE)
    /// ‖ watermark.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.position.len() + self.watermark.len());
        out.push(Self::VERSION);
        for part in [&self.position, &self.watermark] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Decodes bytes written by [`PartitionCheckpoint::encode`]; any other bytes are
    /// [`StateError::Corrupt`] (or [`StateError::Version`] for an unknown version).
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let corrupt = |reason: &str| StateError::Corrupt {
            table: Table::Positions,
            reason: format!("partition checkpoint: {reason}"),
        };
        let (&version, mut rest) = bytes.split_first().ok_or_else(|| corrupt("empty value"))?;
        if version != Self::VERSION {
            return Err(StateError::Version {
                found: u32::from(version),
                supported: u32::from(Self::VERSION),
            });
        }
        let mut take = |what: &str| -> Result<Vec<u8>, StateError> {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| corrupt(&format!("truncated length of {what}")))?;
            let len = usize::try_from(u64::from_be_bytes(*len))
                .map_err(|_| corrupt(&format!("length of {what} overflows")))?;
            if tail.len() < len {
                return Err(corrupt(&format!("{what} is truncated")));
            }
            let (part, tail) = tail.split_at(len);
            rest = tail;
            Ok(part.to_vec())
        };
        let position = take("position")?;
        let watermark = take("watermark")?;
        if !rest.is_empty() {
            return Err(corrupt(&format!("{} trailing bytes", rest.len())));
        }
        Ok(PartitionCheckpoint {
            position,
            watermark,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemoryStateStore, RocksStateStore};

    // ---- decide_recovery --------------------------------------------------------------------

    /// The protocol's reachable states, written out independently of `decide_recovery`.
    fn expected(prepared: Option<u64>, committed: Option<u64>) -> Option<RecoveryDecision> {
        use RecoveryDecision::*;
        match (prepared, committed) {
            (None, None) => Some(Fresh),
            (Some(1), None) => Some(RecommitThenResume { epoch: 1 }),
            (Some(p), Some(c)) if p >= 1 && c >= 1 && p == c => Some(Resume { epoch: c }),
            (Some(p), Some(c)) if c >= 1 && p == c + 1 => Some(RecommitThenResume { epoch: p }),
            _ => None,
        }
    }

    #[test]
    fn decide_recovery_all_small_combinations() {
        let values: Vec<Option<u64>> = std::iter::once(None).chain((0..=6).map(Some)).collect();
        let mut ok = 0;
        for &prepared in &values {
            for &committed in &values {
                let p = Progress {
                    prepared,
                    committed,
                };
                let got = decide_recovery(&p);
                match expected(prepared, committed) {
                    Some(want) => {
                        assert_eq!(got, Ok(want), "{p:?}");
                        ok += 1;
                    }
                    None => {
                        let err = got.expect_err(&format!("{p:?} must be refused"));
                        assert!(!err.to_string().is_empty());
                    }
                }
            }
        }
        // Fresh, (1, None), six Resume and five RecommitThenResume.
        assert_eq!(ok, 1 + 1 + 6 + 5);
    }

    #[test]
    fn decide_recovery_error_kinds() {
        let d = |prepared, committed| {
            decide_recovery(&Progress {
                prepared,
                committed,
            })
        };
        assert!(matches!(
            d(None, Some(3)),
            Err(ProtocolError::CommittedAhead {
                prepared: None,
                committed: 3
            })
        ));
        assert!(matches!(
            d(Some(2), Some(3)),
            Err(ProtocolError::CommittedAhead { .. })
        ));
        assert!(matches!(
            d(Some(5), Some(3)),
            Err(ProtocolError::PreparedGap {
                prepared: 5,
                committed: Some(3)
            })
        ));
        assert!(matches!(
            d(Some(2), None),
            Err(ProtocolError::PreparedGap {
                prepared: 2,
                committed: None
            })
        ));
        assert!(matches!(
            d(Some(0), None),
            Err(ProtocolError::ZeroEpoch { which: "prepared" })
        ));
        assert!(matches!(
            d(Some(1), Some(0)),
            Err(ProtocolError::ZeroEpoch { which: "committed" })
        ));
        assert_eq!(
            d(Some(u64::MAX), Some(u64::MAX - 1)),
            Ok(RecoveryDecision::RecommitThenResume { epoch: u64::MAX })
        );
        assert!(d(Some(u64::MAX), Some(u64::MAX)).is_ok());
    }

    #[test]
    fn next_epoch_follows_the_last_stored_epoch() {
        let n = |prepared, committed| {
            next_epoch(&Progress {
                prepared,
                committed,
            })
        };
        assert_eq!(n(None, None), 1);
        assert_eq!(n(Some(1), None), 2);
        assert_eq!(n(Some(4), Some(4)), 5);
        assert_eq!(n(Some(5), Some(4)), 6);
        assert_eq!(n(Some(2), Some(7)), 8);
        assert_eq!(n(Some(u64::MAX), None), u64::MAX);
    }

    // ---- EpochTracker ------------------------------------------------------------------------

    #[test]
    fn tracker_happy_path() {
        let mut t = EpochTracker::new(2, 1, 1);
        assert_eq!(t.phase(), EpochPhase::Idle { next: 1 });
        for epoch in 1..=3 {
            t.begin(epoch).unwrap();
            assert_eq!(t.in_flight(), Some(epoch));
            assert!(!t.is_complete());
            assert_eq!(t.on_source_ready(epoch, 1), Ok(false));
            assert_eq!(t.on_shard_ready(epoch, 0), Ok(false));
            assert_eq!(t.on_source_ready(epoch, 0), Ok(true));
            assert!(t.is_complete());
            t.prepared(epoch).unwrap();
            assert_eq!(t.phase(), EpochPhase::Prepared { epoch });
            assert!(!t.is_complete());
            t.committed(epoch).unwrap();
            assert_eq!(t.phase(), EpochPhase::Idle { next: epoch + 1 });
        }
    }

    #[test]
    fn tracker_without_participants_completes_at_once() {
        let mut t = EpochTracker::new(0, 0, 7);
        t.begin(7).unwrap();
        assert!(t.is_complete());
        t.prepared(7).unwrap();
        t.committed(7).unwrap();
        assert_eq!(t.next_epoch(), 8);
    }

    #[test]
    fn tracker_refuses_misuse_without_changing_state() {
        let mut t = EpochTracker::new(1, 1, 5);
        // Nothing in flight.
        assert_eq!(
            t.on_source_ready(5, 0),
            Err(TrackerError::NotInFlight {
                epoch: 5,
                in_flight: None
            })
        );
        assert_eq!(
            t.prepared(5),
            Err(TrackerError::NotInFlight {
                epoch: 5,
                in_flight: None
            })
        );
        assert_eq!(
            t.committed(5),
            Err(TrackerError::NotInFlight {
                epoch: 5,
                in_flight: None
            })
        );
        assert_eq!(
            t.begin(4),
            Err(TrackerError::UnexpectedEpoch {
                expected: 5,
                got: 4
            })
        );
        assert_eq!(
            t.begin(6),
            Err(TrackerError::UnexpectedEpoch {
                expected: 5,
                got: 6
            })
        );
        assert_eq!(t.phase(), EpochPhase::Idle { next: 5 });

        t.begin(5).unwrap();
        assert_eq!(
            t.begin(5),
            Err(TrackerError::Busy {
                epoch: 5,
                in_flight: 5
            })
        );
        assert_eq!(
            t.begin(6),
            Err(TrackerError::Busy {
                epoch: 6,
                in_flight: 5
            })
        );
        // Barrier of an unknown epoch.
        assert_eq!(
            t.on_shard_ready(4, 0),
            Err(TrackerError::NotInFlight {
                epoch: 4,
                in_flight: Some(5)
            })
        );
        assert_eq!(
            t.on_source_ready(5, 1),
            Err(TrackerError::NoSuchParticipant {
                kind: Participant::Source,
                index: 1,
                count: 1
            })
        );
        // Commit before prepare, prepare before alignment.
        assert_eq!(t.committed(5), Err(TrackerError::NotPrepared { epoch: 5 }));
        assert_eq!(
            t.prepared(5),
            Err(TrackerError::Incomplete {
                epoch: 5,
                missing_sources: 1,
                missing_shards: 1
            })
        );
        t.on_source_ready(5, 0).unwrap();
        assert_eq!(
            t.on_source_ready(5, 0),
            Err(TrackerError::DuplicateReady {
                kind: Participant::Source,
                index: 0,
                epoch: 5
            })
        );
        assert_eq!(
            t.prepared(5),
            Err(TrackerError::Incomplete {
                epoch: 5,
                missing_sources: 0,
                missing_shards: 1
            })
        );
        t.on_shard_ready(5, 0).unwrap();
        t.prepared(5).unwrap();
        assert_eq!(
            t.prepared(5),
            Err(TrackerError::AlreadyPrepared { epoch: 5 })
        );
        assert_eq!(
            t.on_shard_ready(5, 0),
            Err(TrackerError::AlreadyPrepared { epoch: 5 })
        );
        assert_eq!(
            t.begin(6),
            Err(TrackerError::Busy {
                epoch: 6,
                in_flight: 5
            })
        );
        assert_eq!(
            t.committed(6),
            Err(TrackerError::NotInFlight {
                epoch: 6,
                in_flight: Some(5)
            })
        );
        t.committed(5).unwrap();
        assert_eq!(
            t.committed(5),
            Err(TrackerError::NotInFlight {
                epoch: 5,
                in_flight: None
            })
        );
        // A fresh epoch forgets the previous one's barriers.
        t.begin(6).unwrap();
        assert!(!t.is_complete());
        assert_eq!(t.on_source_ready(6, 0), Ok(false));
    }

    // ---- key layouts and encodings -----------------------------------------------------------

    #[test]
    fn staged_keys_group_by_epoch() {
        assert_eq!(
            staged_key(1, "out"),
            [0, 0, 0, 0, 0, 0, 0, 1, b'o', b'u', b't']
        );
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        write_staged(&mut b, 1, "redis", b"r1".to_vec());
        write_staged(&mut b, 2, "kafka", b"k2".to_vec());
        write_staged(&mut b, 2, "kafka-late", b"kl2".to_vec());
        write_staged(&mut b, 2, "", b"anon".to_vec());
        write_staged(&mut b, 3, "redis", b"r3".to_vec());
        s.write(b).unwrap();
        assert_eq!(
            read_staged(&s, 2).unwrap(),
            vec![
                (String::new(), b"anon".to_vec()),
                ("kafka".into(), b"k2".to_vec()),
                ("kafka-late".into(), b"kl2".to_vec()),
            ]
        );
        assert!(read_staged(&s, 4).unwrap().is_empty());

        let mut b = StateBatch::default();
        write_committed(&mut b, 2);
        s.write(b).unwrap();
        assert!(read_staged(&s, 1).unwrap().is_empty());
        assert!(read_staged(&s, 2).unwrap().is_empty());
        assert_eq!(
            read_staged(&s, 3).unwrap(),
            vec![("redis".into(), b"r3".to_vec())]
        );
        assert_eq!(
            read_progress(&s).unwrap(),
            Progress {
                prepared: None,
                committed: Some(2)
            }
        );
    }

    #[test]
    fn commit_of_the_last_possible_epoch_deletes_its_outputs() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        write_staged(&mut b, u64::MAX, "s", b"x".to_vec());
        write_committed(&mut b, u64::MAX);
        s.write(b).unwrap();
        assert!(read_staged(&s, u64::MAX).unwrap().is_empty());
    }

    #[test]
    fn corrupt_meta_and_staged_are_errors() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        b.put(Table::Meta, PREPARED_KEY, vec![1, 2, 3]);
        b.put(
            Table::Staged,
            [&1u64.to_be_bytes()[..], &[0xff, 0xfe]].concat(),
            vec![],
        );
        s.write(b).unwrap();
        assert!(matches!(
            read_progress(&s),
            Err(StateError::Corrupt {
                table: Table::Meta,
                ..
            })
        ));
        assert!(matches!(
            read_staged(&s, 1),
            Err(StateError::Corrupt {
                table: Table::Staged,
                ..
            })
        ));
    }

    #[test]
    fn positions_are_per_pipeline() {
        let s = MemoryStateStore::new();
        let cp = |p: &str| PartitionCheckpoint {
            position: p.as_bytes().to_vec(),
            watermark: vec![1, 2, 3],
        };
        let mut b = StateBatch::default();
        write_position(&mut b, "clicks", "topic-0", &cp("10"));
        write_position(&mut b, "clicks", "topic-1", &cp("20"));
        write_position(&mut b, "clicks2", "topic-0", &cp("99"));
        write_position(&mut b, "click", "stopic-0", &cp("77"));
        s.write(b).unwrap();
        let got = read_positions(&s, "clicks").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["topic-0"], cp("10"));
        assert_eq!(got["topic-1"], cp("20"));
        assert_eq!(read_positions(&s, "click").unwrap().len(), 1);
        assert!(read_positions(&s, "nope").unwrap().is_empty());
        assert_ne!(position_key("ab", "c"), position_key("a", "bc"));
    }

    #[test]
    fn partition_checkpoint_round_trips_and_rejects_garbage() {
        for cp in [
            PartitionCheckpoint::default(),
            PartitionCheckpoint {
                position: vec![7; 300],
                watermark: vec![],
            },
            PartitionCheckpoint {
                position: b"42".to_vec(),
                watermark: vec![1, 0, 0, 0, 0, 0, 0, 0, 9],
            },
        ] {
            assert_eq!(PartitionCheckpoint::decode(&cp.encode()).unwrap(), cp);
        }
        let good = PartitionCheckpoint {
            position: b"pos".to_vec(),
            watermark: b"wm".to_vec(),
        }
        .encode();
        // Every truncation and one extra byte are refused.
        for len in 0..good.len() {
            assert!(
                PartitionCheckpoint::decode(&good[..len]).is_err(),
                "prefix {len}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(PartitionCheckpoint::decode(&long).is_err());
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(matches!(
            PartitionCheckpoint::decode(&v2),
            Err(StateError::Version { found: 2, .. })
        ));
        let mut huge = vec![1];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(PartitionCheckpoint::decode(&huge).is_err());
        let mut s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        b.put(Table::Positions, position_key("p", "x"), vec![1, 0]);
        s.write(b).unwrap();
        assert!(read_positions(&s, "p").is_err());
        s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        b.put(
            Table::Positions,
            [&positions_prefix("p")[..], &[0xc3]].concat(),
            good,
        );
        s.write(b).unwrap();
        assert!(read_positions(&s, "p").is_err());
    }

    #[test]
    fn partition_checkpoint_decode_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..5000 {
            let len = rng.random_range(0..40);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(b) = bytes.first_mut() {
                *b = 1;
            }
            let _ = PartitionCheckpoint::decode(&bytes);
        }
    }

    // ---- crash simulation on RocksDB -----------------------------------------------------------

    /// What a recovery re-committed: the staged outputs of one epoch.
    type StagedOutputs = Vec<(String, Vec<u8>)>;

    /// The step after which the simulated worker dies.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum CrashAfter {
        /// Barriers aligned, nothing written.
        Aligned,
        /// Step 2: the prepare batch is durable.
        Prepared,
        /// Step 3: sinks committed (nothing in the store changes).
        SinksCommitted,
        /// Step 4: `committed` written.
        Committed,
    }

    fn prepare_batch(epoch: Epoch) -> StateBatch {
        let mut b = StateBatch::default();
        b.put(
            Table::Windows,
            b"acc".to_vec(),
            epoch.to_be_bytes().to_vec(),
        );
        write_position(
            &mut b,
            "pipe",
            "p0",
            &PartitionCheckpoint {
                position: (epoch * 100).to_be_bytes().to_vec(),
                watermark: vec![epoch as u8],
            },
        );
        write_staged(&mut b, epoch, "redis", format!("out-{epoch}").into_bytes());
        write_staged(&mut b, epoch, "kafka", format!("k-{epoch}").into_bytes());
        write_prepared(&mut b, epoch);
        b
    }

    /// Runs the protocol from a store's stored progress as a worker does on start-up; returns
    /// the epoch it resumed after (None on fresh).
    fn recover(
        store: &RocksStateStore,
        recommitted: &mut Vec<(Epoch, StagedOutputs)>,
    ) -> Option<Epoch> {
        let progress = read_progress(store).unwrap();
        match decide_recovery(&progress).unwrap() {
            RecoveryDecision::Fresh => None,
            RecoveryDecision::Resume { epoch } => Some(epoch),
            RecoveryDecision::RecommitThenResume { epoch } => {
                recommitted.push((epoch, read_staged(store, epoch).unwrap()));
                let mut b = StateBatch::default();
                write_committed(&mut b, epoch);
                store.write(b).unwrap();
                Some(epoch)
            }
        }
    }

    #[test]
    fn crash_between_every_step_recovers_consistently() {
        let steps = [
            CrashAfter::Aligned,
            CrashAfter::Prepared,
            CrashAfter::SinksCommitted,
            CrashAfter::Committed,
        ];
        for crash_epoch in 1..=3u64 {
            for crash in steps {
                let dir = tempfile::tempdir().unwrap();
                let mut recommitted = Vec::new();
                // First life: runs epochs up to crash_epoch and dies at `crash`.
                {
                    let store = RocksStateStore::open(dir.path()).unwrap();
                    assert_eq!(recover(&store, &mut recommitted), None);
                    let mut tracker =
                        EpochTracker::new(1, 1, next_epoch(&read_progress(&store).unwrap()));
                    for epoch in 1..=crash_epoch {
                        tracker.begin(epoch).unwrap();
                        tracker.on_source_ready(epoch, 0).unwrap();
                        assert!(tracker.on_shard_ready(epoch, 0).unwrap());
                        if epoch == crash_epoch && crash == CrashAfter::Aligned {
                            break;
                        }
                        store.write(prepare_batch(epoch)).unwrap();
                        tracker.prepared(epoch).unwrap();
                        if epoch == crash_epoch
                            && matches!(crash, CrashAfter::Prepared | CrashAfter::SinksCommitted)
                        {
                            break;
                        }
                        let mut b = StateBatch::default();
                        write_committed(&mut b, epoch);
                        store.write(b).unwrap();
                        tracker.committed(epoch).unwrap();
                    }
                } // crash: drop without any cleanup

                let store = RocksStateStore::open(dir.path()).unwrap();
                let progress = read_progress(&store).unwrap();
                let decision = decide_recovery(&progress).unwrap();
                let last_committed = crash_epoch - 1;
                let want = match crash {
                    CrashAfter::Aligned if last_committed == 0 => RecoveryDecision::Fresh,
                    CrashAfter::Aligned => RecoveryDecision::Resume {
                        epoch: last_committed,
                    },
                    CrashAfter::Prepared | CrashAfter::SinksCommitted => {
                        RecoveryDecision::RecommitThenResume { epoch: crash_epoch }
                    }
                    CrashAfter::Committed => RecoveryDecision::Resume { epoch: crash_epoch },
                };
                assert_eq!(
                    decision, want,
                    "crash after {crash:?} in epoch {crash_epoch}"
                );

                // State and positions are those of the last prepared epoch, never a mix.
                let durable = match want {
                    RecoveryDecision::Fresh => None,
                    RecoveryDecision::Resume { epoch }
                    | RecoveryDecision::RecommitThenResume { epoch } => Some(epoch),
                };
                assert_eq!(
                    store.get(Table::Windows, b"acc").unwrap(),
                    durable.map(|e| e.to_be_bytes().to_vec())
                );
                let positions = read_positions(&store, "pipe").unwrap();
                assert_eq!(
                    positions.get("p0").map(|cp| cp.position.clone()),
                    durable.map(|e| (e * 100).to_be_bytes().to_vec())
                );
                // Staged outputs exist exactly for a prepared, unconfirmed epoch.
                for epoch in 1..=crash_epoch {
                    let staged = read_staged(&store, epoch).unwrap();
                    if want == (RecoveryDecision::RecommitThenResume { epoch }) {
                        assert_eq!(
                            staged,
                            vec![
                                ("kafka".to_string(), format!("k-{epoch}").into_bytes()),
                                ("redis".to_string(), format!("out-{epoch}").into_bytes()),
                            ]
                        );
                    } else {
                        assert!(staged.is_empty(), "epoch {epoch} after {crash:?}");
                    }
                }

                // Second life: recovery, then one more epoch, then a clean restart resumes.
                let resumed = recover(&store, &mut recommitted);
                assert_eq!(resumed, durable);
                let next = next_epoch(&read_progress(&store).unwrap());
                assert_eq!(next, durable.map_or(1, |e| e + 1));
                store.write(prepare_batch(next)).unwrap();
                let mut b = StateBatch::default();
                write_committed(&mut b, next);
                store.write(b).unwrap();
                drop(store);
                let store = RocksStateStore::open(dir.path()).unwrap();
                assert_eq!(
                    decide_recovery(&read_progress(&store).unwrap()),
                    Ok(RecoveryDecision::Resume { epoch: next })
                );
                assert!(read_staged(&store, next).unwrap().is_empty());
                let expect_recommit =
                    matches!(crash, CrashAfter::Prepared | CrashAfter::SinksCommitted);
                assert_eq!(recommitted.len(), usize::from(expect_recommit));
            }
        }
    }
}

//! Progress reports from partition readers to their worker's group member.
//!
//! While a consumer group has members, the broker refuses offset commits from anyone else, so
//! in a fleet the readers hand their committed positions to the worker's member (the
//! [`super::fleet::KafkaFleet`] of that group), which commits them every few seconds. The
//! offsets are for lag tools only: restarts resume from the positions stored with the state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Offsets waiting to be committed by one group member: (topic, partition) → next offset.
pub(crate) type PendingOffsets = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

fn members() -> &'static Mutex<HashMap<String, PendingOffsets>> {
    static MEMBERS: OnceLock<Mutex<HashMap<String, PendingOffsets>>> = OnceLock::new();
    MEMBERS.get_or_init(Default::default)
}

/// Registers this process's member of `group`; returns where reports for it accumulate.
pub(crate) fn register(group: &str) -> PendingOffsets {
    let pending = PendingOffsets::default();
    members()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(group.to_string(), pending.clone());
    pending
}

/// Removes the member of `group` (it left the group).
pub(crate) fn unregister(group: &str) {
    members()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(group);
}

/// Hands `offset` (the next offset to read) of a partition to this process's member of
/// `group`; `false` when there is none (the reader commits by itself).
pub(crate) fn report(group: &str, topic: &str, partition: i32, offset: i64) -> bool {
    let members = members().lock().unwrap_or_else(|e| e.into_inner());
    let Some(pending) = members.get(group) else {
        return false;
    };
    pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((topic.to_string(), partition), offset);
    true
}

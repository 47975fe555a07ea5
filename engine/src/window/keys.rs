//! Hash maps keyed by a grouping key with its precomputed hash, so a lookup never rehashes the
//! key bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::event::Key;

/// A key with its stable hash (the one that routed it to this shard).
#[derive(Debug, Clone)]
pub(crate) struct HKey {
    pub hash: u64,
    pub key: Key,
}

impl PartialEq for HKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl Eq for HKey {}

impl Hash for HKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Mixes the precomputed hash once. All keys of a shard share `hash % shards`, so the low bits
/// are correlated and must not be used as they are.
#[derive(Default)]
pub(crate) struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, h: u64) {
        let x = (h ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

/// A map from keys to per-key state.
pub(crate) type KeyMap<V> = HashMap<HKey, V, BuildHasherDefault<MixHasher>>;

//! A growable Bloom filter over the key hashes of a bucket's evicted entries.
//!
//! A bucket with evicted entries must otherwise read the store for every key it does not hold
//! in memory, although most such keys (new keys) were never evicted. The filter answers
//! "certainly never evicted" without a read; a false positive only costs the read.
//!
//! It never forgets a key (no false negatives): keys reloaded into memory stay in it, which
//! only adds false positives. It grows as a *scalable* Bloom filter: a list of blocked Bloom
//! filters, each twice the capacity of the previous one; a key goes into the newest, a query
//! checks them all. That needs no rebuild (the hashes of evicted keys are not kept anywhere in
//! memory, and a store scan could not see entries of a snapshot batch not written yet), at
//! the cost of one cache line per stage on a miss. Later stages get more bits per key so the
//! summed false positive rate stays around 1–2%.

/// Bits of one block (one cache line).
const BLOCK_BITS: u64 = 512;
/// Bits set per key, all in one block.
const PROBES: u32 = 7;
/// Keys the first stage holds.
const FIRST_CAPACITY: u64 = 4096;
/// Bits per key of the first stage; each later stage adds one (up to `MAX_BITS_PER_KEY`).
const FIRST_BITS_PER_KEY: u64 = 10;
const MAX_BITS_PER_KEY: u64 = 16;

/// One cache line of filter bits.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; 8]);

struct Stage {
    blocks: Vec<Block>,
    /// `blocks.len() - 1` (a power of two minus one).
    mask: u64,
    capacity: u64,
    len: u64,
}

impl Stage {
    fn new(capacity: u64, bits_per_key: u64) -> Self {
        let n = (capacity * bits_per_key)
            .div_ceil(BLOCK_BITS)
            .next_power_of_two();
        Stage {
            blocks: vec![Block::default(); n as usize],
            mask: n - 1,
            capacity,
            len: 0,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }

    #[inline]
    fn block_of(&self, h: u64) -> usize {
        ((h >> 32) & self.mask) as usize
    }

    fn insert(&mut self, h: u64) {
        let i = self.block_of(h);
        let b = &mut self.blocks[i].0;
        let mut bits = probe_bits(h);
        for _ in 0..PROBES {
            let bit = bits & (BLOCK_BITS - 1);
            b[(bit >> 6) as usize] |= 1 << (bit & 63);
            bits >>= 9;
        }
        self.len += 1;
    }

    #[inline]
    fn may_contain(&self, h: u64) -> bool {
        let b = &self.blocks[self.block_of(h)].0;
        let mut bits = probe_bits(h);
        for _ in 0..PROBES {
            let bit = bits & (BLOCK_BITS - 1);
            if b[(bit >> 6) as usize] & (1 << (bit & 63)) == 0 {
                return false;
            }
            bits >>= 9;
        }
        true
    }
}

/// Remixes a routing hash: all keys of a shard share `hash % shards`, so its bits are not
/// uniform as they are.
#[inline]
fn mix(hash: u64) -> u64 {
    let mut x = hash ^ (hash >> 31);
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Bit positions inside a block, independent of the block choice (which uses `h >> 32`).
#[inline]
fn probe_bits(h: u64) -> u64 {
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

/// The evicted key hashes of one bucket (see the module documentation).
#[derive(Default)]
pub(crate) struct EvictedFilter {
    stages: Vec<Stage>,
}

impl EvictedFilter {
    /// Records that the entry with routing hash `hash` was evicted; returns the heap bytes
    /// this allocated (when a new stage was needed).
    pub fn insert(&mut self, hash: u64) -> usize {
        let mut added = 0;
        let full = self.stages.last().is_none_or(|s| s.len >= s.capacity);
        if full {
            let n = self.stages.len() as u64;
            let capacity = FIRST_CAPACITY << n.min(40);
            let bits = (FIRST_BITS_PER_KEY + n).min(MAX_BITS_PER_KEY);
            let stage = Stage::new(capacity, bits);
            added = stage.heap_bytes();
            self.stages.push(stage);
        }
        if let Some(s) = self.stages.last_mut() {
            s.insert(mix(hash));
        }
        added
    }

    /// Whether an entry with routing hash `hash` may have been evicted (`false`: certainly not).
    #[inline]
    pub fn may_contain(&self, hash: u64) -> bool {
        if self.stages.is_empty() {
            return false;
        }
        let h = mix(hash);
        // Newest (largest) stages first: they hold most keys.
        self.stages.iter().rev().any(|s| s.may_contain(h))
    }

    /// Forgets every key (the bucket has no evicted entry left).
    pub fn clear(&mut self) {
        self.stages = Vec::new();
    }

    /// Heap bytes held (the sum of what `insert` reported since the last `clear`).
    pub fn heap_bytes(&self) -> usize {
        self.stages.iter().map(Stage::heap_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = EvictedFilter::default();
        assert!(!f.may_contain(1));
        // Hashes sharing their residue mod 4, as one shard's keys do.
        let n = 200_000u64;
        for i in 0..n {
            f.insert(i * 4 + 1);
        }
        for i in 0..n {
            assert!(f.may_contain(i * 4 + 1));
        }
        let fp = (n..2 * n).filter(|i| f.may_contain(i * 4 + 1)).count();
        assert!(fp < (n / 25) as usize, "{fp} false positives");
        assert!(f.heap_bytes() > 0);
        f.clear();
        assert!(!f.may_contain(1));
        assert_eq!(f.heap_bytes(), 0);
    }
}

//! Redis Cluster key slots: which of the 16384 slots a key lives in, and a hash tag for each
//! slot so a fence key can be placed in the same slot as the data keys a script touches
//! (a script may only touch keys of one slot in a cluster).

use std::sync::OnceLock;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of `key` that is hashed: the text between the first `{` and the next `}` when that
/// is non-empty (a hash tag), else the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The cluster slot of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) % SLOTS
}

/// A short string whose slot is `slot`: `{tag}` in a key places the key in that slot.
pub fn tag_for_slot(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<String>> = vec![None; SLOTS as usize];
        let mut missing = SLOTS as usize;
        let mut n: u64 = 0;
        while missing > 0 {
            let candidate = format!("s{n:x}");
            let s = key_slot(candidate.as_bytes()) as usize;
            if tags[s].is_none() {
                tags[s] = Some(candidate);
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(Option::unwrap_or_default).collect()
    });
    tags.get(slot as usize).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_specification() {
        // Reference values from the Redis Cluster specification's CRC16 test vector and
        // `CLUSTER KEYSLOT` on a real server.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"user:{42}:feed"), key_slot(b"42"));
        assert_eq!(key_slot(b"a{}b"), crc16(b"a{}b") % SLOTS);
    }

    #[test]
    fn every_slot_has_a_tag_in_that_slot() {
        for slot in [0, 1, 777, 12182, SLOTS - 1] {
            let tag = tag_for_slot(slot);
            assert_eq!(key_slot(format!("fence:{{{tag}}}").as_bytes()), slot);
        }
    }
}

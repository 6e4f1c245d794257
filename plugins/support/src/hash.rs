//! A cheap hasher for maps keyed by code addresses (the callbacks look blocks up on every
//! block entry; SipHash's resistance to chosen keys buys nothing there).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative hashing of integer keys (Fibonacci hashing, with the high bits folded
/// down so that the table's low-bit bucket index sees them).
#[derive(Clone, Copy, Debug, Default)]
pub struct AddrHasher {
    hash: u64,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.hash ^ (self.hash >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.hash = (self.hash.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` keyed by addresses, with [`AddrHasher`].
pub type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// A `HashSet` of addresses, with [`AddrHasher`].
pub type AddrSet<K> = HashSet<K, BuildHasherDefault<AddrHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_and_nearby_addresses_spread_over_buckets() {
        let mut m: AddrMap<u64, u32> = AddrMap::default();
        for i in 0..1000u64 {
            m.insert(0x40_1000 + 16 * i, i as u32);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m[&(0x40_1000 + 16 * 7)], 7);
        // Addresses 16 bytes apart must not collide in the low bits a table uses.
        let low: std::collections::HashSet<u64> = (0..256u64)
            .map(|i| {
                let mut h = AddrHasher::default();
                h.write_u64(0x40_1000 + 16 * i);
                h.finish() & 0xff
            })
            .collect();
        assert!(low.len() > 128, "only {} distinct low bytes", low.len());
    }
}

//! Longest-prefix-match tables for IPv4 and IPv6 client ranges.
//!
//! One hash map per prefix length that occurs, longest first: a lookup masks the address to
//! each present length and probes that map, so it costs at most one probe per distinct length
//! (a handful in real data) and memory grows with the number of prefixes, never with the
//! number of addresses they cover (the original kept every address: a /12 cost ~94 MiB).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

/// An address family: its integer form and width.
pub trait Family: Copy {
    /// The address as an integer (`u32` or `u128`).
    type Bits: Copy + Eq + std::hash::Hash + std::fmt::Debug;
    /// Address width in bits (32 or 128).
    const WIDTH: u8;
    /// The address as an integer.
    fn bits(self) -> Self::Bits;
    /// `bits` with everything after the first `len` bits cleared.
    fn mask(bits: Self::Bits, len: u8) -> Self::Bits;
}

impl Family for Ipv4Addr {
    type Bits = u32;
    const WIDTH: u8 = 32;
    fn bits(self) -> u32 {
        u32::from(self)
    }
    fn mask(bits: u32, len: u8) -> u32 {
        match len {
            0 => 0,
            l => bits & (u32::MAX << (32 - u32::from(l.min(32)))),
        }
    }
}

impl Family for Ipv6Addr {
    type Bits = u128;
    const WIDTH: u8 = 128;
    fn bits(self) -> u128 {
        u128::from(self)
    }
    fn mask(bits: u128, len: u8) -> u128 {
        match len {
            0 => 0,
            l => bits & (u128::MAX << (128 - u32::from(l.min(128)))),
        }
    }
}

/// A multiply-xorshift hasher for integer keys. The keys come from the operator's data file,
/// not from clients, so a keyed (DoS-resistant) hash buys nothing and costs a few times more
/// per probe.
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// The prefixes of one length.
#[derive(Debug, Clone)]
struct Level<F: Family> {
    len: u8,
    map: IntMap<F::Bits, u32>,
}

/// Maps prefixes (network, length) to a value (a region index); answers the value of the
/// longest prefix containing an address.
#[derive(Debug, Clone)]
pub struct PrefixTable<F: Family> {
    /// Sorted by length, longest first.
    levels: Vec<Level<F>>,
    len: usize,
}

impl<F: Family> Default for PrefixTable<F> {
    fn default() -> Self {
        PrefixTable {
            levels: Vec::new(),
            len: 0,
        }
    }
}

impl<F: Family> PrefixTable<F> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `network/len` to `value`; a prefix inserted again takes the new value (the later
    /// section wins). Host bits of `network` are ignored; `len` is capped at the width.
    pub fn insert(&mut self, network: F, len: u8, value: u32) {
        let len = len.min(F::WIDTH);
        let key = F::mask(network.bits(), len);
        let at = match self.levels.binary_search_by(|l| len.cmp(&l.len)) {
            Ok(i) => i,
            Err(i) => {
                self.levels.insert(
                    i,
                    Level {
                        len,
                        map: IntMap::default(),
                    },
                );
                i
            }
        };
        if self.levels[at].map.insert(key, value).is_none() {
            self.len += 1;
        }
    }

    /// The value of the longest prefix that contains `addr`.
    pub fn longest_match(&self, addr: F) -> Option<u32> {
        let bits = addr.bits();
        self.levels
            .iter()
            .find_map(|level| level.map.get(&F::mask(bits, level.len)).copied())
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Releases spare capacity once the table is complete.
    pub fn shrink_to_fit(&mut self) {
        for level in &mut self.levels {
            level.map.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::new();
        t.insert(v4("10.0.0.0"), 8, 1);
        t.insert(v4("10.1.0.0"), 16, 2);
        t.insert(v4("10.1.2.3"), 32, 3);
        assert_eq!(t.longest_match(v4("10.9.9.9")), Some(1));
        assert_eq!(t.longest_match(v4("10.1.9.9")), Some(2));
        assert_eq!(t.longest_match(v4("10.1.2.3")), Some(3));
        assert_eq!(t.longest_match(v4("11.0.0.0")), None);
    }

    #[test]
    fn network_and_broadcast_addresses_match() {
        let mut t = PrefixTable::new();
        t.insert(v4("192.168.4.0"), 22, 7);
        assert_eq!(t.longest_match(v4("192.168.4.0")), Some(7));
        assert_eq!(t.longest_match(v4("192.168.7.255")), Some(7));
        assert_eq!(t.longest_match(v4("192.168.8.0")), None);
        assert_eq!(t.longest_match(v4("192.168.3.255")), None);
    }

    #[test]
    fn same_prefix_again_takes_the_later_value() {
        let mut t = PrefixTable::new();
        t.insert(v4("3.80.0.0"), 12, 1);
        t.insert(v4("3.80.0.0"), 12, 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.longest_match(v4("3.80.1.1")), Some(2));
    }

    #[test]
    fn zero_length_prefix_matches_everything() {
        let mut t = PrefixTable::new();
        t.insert(Ipv6Addr::UNSPECIFIED, 0, 4);
        t.insert("2600:1f18::".parse::<Ipv6Addr>().unwrap(), 36, 5);
        assert_eq!(t.longest_match("::1".parse::<Ipv6Addr>().unwrap()), Some(4));
        let inside: Ipv6Addr = "2600:1f18:0fff::1".parse().unwrap();
        assert_eq!(t.longest_match(inside), Some(5));
    }

    /// The reference: a linear scan keeping the longest containing prefix, later entries
    /// winning on equal prefixes.
    fn naive<F: Family>(prefixes: &[(F, u8, u32)], addr: F) -> Option<u32> {
        let mut best: Option<(u8, u32)> = None;
        for &(net, len, value) in prefixes {
            let len = len.min(F::WIDTH);
            if F::mask(net.bits(), len) == F::mask(addr.bits(), len)
                && best.is_none_or(|(l, _)| len >= l)
            {
                best = Some((len, value));
            }
        }
        best.map(|(_, v)| v)
    }

    fn check<F: Family + std::fmt::Debug>(
        prefixes: &[(F, u8, u32)],
        addrs: &[F],
    ) -> Result<(), TestCaseError> {
        let mut t = PrefixTable::new();
        for &(net, len, value) in prefixes {
            t.insert(net, len, value);
        }
        for &addr in addrs {
            prop_assert_eq!(t.longest_match(addr), naive(prefixes, addr), "{:?}", addr);
        }
        Ok(())
    }

    /// Addresses near the prefixes as well as random ones, so matches are not all misses.
    fn near<F: Family>(prefixes: &[(F, u8, u32)], pick: usize) -> Option<F> {
        prefixes.get(pick % prefixes.len().max(1)).map(|p| p.0)
    }

    proptest! {
        #[test]
        fn v4_table_agrees_with_linear_scan(
            prefixes in prop::collection::vec((any::<u32>(), 0u8..=32, 0u32..50), 0..200),
            addrs in prop::collection::vec(any::<u32>(), 1..100),
            picks in prop::collection::vec((any::<usize>(), any::<u32>(), 0u32..=32), 0..100),
        ) {
            let prefixes: Vec<_> = prefixes
                .into_iter()
                .map(|(n, l, v)| (Ipv4Addr::from(n), l, v))
                .collect();
            let mut all: Vec<Ipv4Addr> = addrs.into_iter().map(Ipv4Addr::from).collect();
            for (pick, noise, shift) in picks {
                if let Some(base) = near(&prefixes, pick) {
                    let low = noise.checked_shr(shift).unwrap_or(0);
                    all.push(Ipv4Addr::from(u32::from(base) ^ low));
                }
            }
            check(&prefixes, &all)?;
        }

        #[test]
        fn v6_table_agrees_with_linear_scan(
            prefixes in prop::collection::vec((any::<u128>(), 0u8..=128, 0u32..50), 0..200),
            addrs in prop::collection::vec(any::<u128>(), 1..100),
            picks in prop::collection::vec((any::<usize>(), any::<u128>(), 0u32..=128), 0..100),
        ) {
            let prefixes: Vec<_> = prefixes
                .into_iter()
                .map(|(n, l, v)| (Ipv6Addr::from(n), l, v))
                .collect();
            let mut all: Vec<Ipv6Addr> = addrs.into_iter().map(Ipv6Addr::from).collect();
            for (pick, noise, shift) in picks {
                if let Some(base) = near(&prefixes, pick) {
                    let low = noise.checked_shr(shift).unwrap_or(0);
                    all.push(Ipv6Addr::from(u128::from(base) ^ low));
                }
            }
            check(&prefixes, &all)?;
        }
    }
}

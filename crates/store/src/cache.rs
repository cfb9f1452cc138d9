//! `MessageCache`: recently read messages in memory, so hot GETs skip the database and the
//! blocking pool.
//!
//! Correct without invalidation because the store is content-addressed: a digest names
//! exactly one message, so a cached entry can never be stale. Only hits are cached (a miss
//! can become a hit at any moment). Bounded by bytes: the map is split into shards by the
//! digest's first byte, and a shard that would exceed its share of the budget is emptied
//! before the insert (crude, O(1), and hot entries come back on their next read).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Digest;

const SHARDS: usize = 16;
/// Approximate bookkeeping cost of one entry besides the message bytes.
const ENTRY_OVERHEAD: usize = 96;

/// A byte-bounded map from digest to message.
#[derive(Debug)]
pub(crate) struct MessageCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Digest, Arc<str>, BuildHasherDefault<DigestHasher>>,
    bytes: usize,
}

impl MessageCache {
    /// A cache holding about `budget` bytes; 0 disables it.
    pub(crate) fn new(budget: usize) -> MessageCache {
        MessageCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_budget: budget / SHARDS,
        }
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<str>> {
        if self.shard_budget == 0 {
            return None;
        }
        self.shard(digest).map.get(digest).cloned()
    }

    pub(crate) fn insert(&self, digest: &Digest, message: Arc<str>) {
        let cost = message.len() + ENTRY_OVERHEAD;
        if cost > self.shard_budget {
            return;
        }
        let mut shard = self.shard(digest);
        if shard.bytes + cost > self.shard_budget {
            shard.map.clear();
            shard.bytes = 0;
        }
        if shard.map.insert(*digest, message).is_none() {
            shard.bytes += cost;
        }
    }

    fn shard(&self, digest: &Digest) -> MutexGuard<'_, Shard> {
        let index = usize::from(digest.0[0]) % SHARDS;
        // The critical sections cannot leave a shard inconsistent, so a poisoned lock is fine.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Digests are already uniformly random: use 8 of their bytes as the hash instead of
/// running SipHash over all 32.
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (i, byte) in bytes.iter().take(16).enumerate() {
            self.0 ^= u64::from(*byte) << ((i % 8) * 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        let mut bytes = [n; 32];
        bytes[0] = 0; // same shard for every digest of these tests
        Digest(bytes)
    }

    #[test]
    fn returns_what_was_inserted() {
        let cache = MessageCache::new(1 << 20);
        cache.insert(&digest(1), Arc::from("foo"));
        assert_eq!(cache.get(&digest(1)).as_deref(), Some("foo"));
        assert_eq!(cache.get(&digest(2)), None);
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let cache = MessageCache::new(0);
        cache.insert(&digest(1), Arc::from("foo"));
        assert_eq!(cache.get(&digest(1)), None);
    }

    #[test]
    fn stays_within_its_budget() {
        let cache = MessageCache::new(SHARDS * 1000);
        for n in 0..100u8 {
            cache.insert(&digest(n), Arc::from("x".repeat(100).as_str()));
            let shard = cache.shard(&digest(n));
            assert!(shard.bytes <= 1000, "{} bytes", shard.bytes);
        }
        assert_eq!(cache.get(&digest(99)).as_deref().map(str::len), Some(100));
    }

    #[test]
    fn skips_messages_larger_than_a_shard() {
        let cache = MessageCache::new(SHARDS * 1000);
        cache.insert(&digest(1), Arc::from("x".repeat(2000).as_str()));
        assert_eq!(cache.get(&digest(1)), None);
    }
}

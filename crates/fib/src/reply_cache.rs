//! The REST tier's cache of back-end replies (the original client library's cache, but one
//! that only ever holds successful answers). Bounded by bytes; the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

pub struct ReplyCache {
    inner: Mutex<Entries>,
    budget: u64,
}

#[derive(Default)]
struct Entries {
    texts: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
    bytes: u64,
}

impl ReplyCache {
    pub fn new(budget: u64) -> Self {
        ReplyCache {
            inner: Mutex::new(Entries::default()),
            budget,
        }
    }

    /// The cached text of the first `n` numbers.
    pub fn get(&self, n: u64) -> Option<Bytes> {
        self.lock().texts.get(&n).cloned()
    }

    /// Keeps `text` (a successful answer) unless it alone is over budget.
    pub fn insert(&self, n: u64, text: Bytes) {
        let size = text.len() as u64;
        if size > self.budget {
            return;
        }
        let mut entries = self.lock();
        if entries.texts.contains_key(&n) {
            return;
        }
        while entries.bytes + size > self.budget {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            if let Some(gone) = entries.texts.remove(&oldest) {
                entries.bytes -= gone.len() as u64;
            }
        }
        entries.bytes += size;
        entries.order.push_back(n);
        entries.texts.insert(n, text);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map is consistent after every statement; a panic elsewhere leaves it usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_entries_make_room_and_the_budget_holds() {
        let cache = ReplyCache::new(10);
        cache.insert(1, Bytes::from_static(b"0"));
        cache.insert(5, Bytes::from_static(b"0 1 1 2 3"));
        assert_eq!(cache.get(1).as_deref(), Some(&b"0"[..]));
        cache.insert(2, Bytes::from_static(b"0 1"));
        assert_eq!(cache.get(1), None);
        assert_eq!(cache.get(5), None);
        assert_eq!(cache.get(2).as_deref(), Some(&b"0 1"[..]));
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = ReplyCache::new(0);
        cache.insert(1, Bytes::from_static(b"0"));
        assert_eq!(cache.get(1), None);
    }
}

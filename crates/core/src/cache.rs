//! Values read from a service's store, kept until the next write.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A read-through cache cleared by every write. A read that raced a write (it took its
/// [`ReadCache::generation`] before the write's [`ReadCache::clear`] and finished after) is
/// answered but not cached, so the cache never keeps what a committed write replaced.
pub struct ReadCache<V> {
    entries: RwLock<HashMap<String, V>>,
    generation: AtomicU64,
    /// Entries held before the cache starts over.
    capacity: usize,
}

impl<V: Clone> ReadCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Taken before reading the store; hand it back to [`ReadCache::insert_if_current`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches `value` unless a write cleared the cache since `generation` was taken.
    pub fn insert_if_current(&self, generation: u64, key: String, value: V) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// Forgets everything; call after a write commits.
    pub fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = ReadCache::new(10);
        let before_write = cache.generation();
        cache.clear(); // a write committed while the read was under way
        cache.insert_if_current(before_write, "k".into(), "stale");
        assert_eq!(cache.get("k"), None);

        let fresh = cache.generation();
        cache.insert_if_current(fresh, "k".into(), "fresh");
        assert_eq!(cache.get("k"), Some("fresh"));
        cache.clear();
        assert_eq!(cache.get("k"), None);
    }

    #[test]
    fn starts_over_when_full() {
        let cache = ReadCache::new(2);
        for key in ["a", "b", "c"] {
            cache.insert_if_current(cache.generation(), key.into(), 1);
        }
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("c"), Some(1));
    }
}

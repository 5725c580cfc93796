//! A small least-recently-used map bounded by entry count. Formatter caches hold at most a few
//! hundred entries, so eviction scans linearly instead of keeping a linked list.

use std::collections::HashMap;
use std::hash::Hash;

pub(crate) struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<K, (u64, V)>,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Returns the entry and marks it as the most recently used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(used, v)| {
            *used = tick;
            v
        })
    }

    /// Inserts or replaces an entry; evicts the least recently used ones beyond the capacity.
    /// Returns the evicted values so that the caller drops them outside its lock.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Vec<V> {
        self.tick += 1;
        self.entries.insert(key, (self.tick, value));
        let mut evicted = Vec::new();
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            match oldest.and_then(|k| self.entries.remove(&k)) {
                Some((_, v)) => evicted.push(v),
                None => break,
            }
        }
        evicted
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(2);
        assert!(lru.insert("a", 1).is_empty());
        assert!(lru.insert("b", 2).is_empty());
        // Touch `a` so that `b` is the oldest.
        assert_eq!(lru.get_mut(&"a"), Some(&mut 1));
        assert_eq!(lru.insert("c", 3), vec![2]);
        assert_eq!(lru.len(), 2);
        assert!(lru.get_mut(&"b").is_none());
        assert!(lru.get_mut(&"a").is_some() && lru.get_mut(&"c").is_some());
    }
}

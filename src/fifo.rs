//! A map bounded in size that evicts the oldest-inserted entry first: the
//! aggregator's cache of order books.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// At most `max` entries; inserting past that evicts the oldest-inserted
/// first. Replacing an entry keeps its place in line.
#[derive(Debug)]
pub struct FifoMap<K, V> {
    max: usize,
    map: HashMap<K, V>,
    /// Keys in insertion order; may hold keys removed since (dropped when
    /// they reach the front, or when they outnumber the entries twice).
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V> FifoMap<K, V> {
    /// An empty map of at most `max` entries.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// An empty map of at most `max` entries, with room for all of them
    /// allocated up front.
    pub fn with_capacity(max: usize) -> Self {
        Self {
            max,
            map: HashMap::with_capacity(max + 1),
            order: VecDeque::with_capacity(max + 1),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    /// Takes the entry out (it counts as inserted anew when put back).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key)
    }

    /// Inserts or replaces, then evicts the oldest entries past `max`.
    pub fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Drop keys removed and not inserted again, so `order` stays bounded.
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many keys wait in line (tests check it stays bounded).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_inserted_is_evicted_first_and_a_replacement_keeps_its_place() {
        let mut m = FifoMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        m.insert("a", 3);
        assert_eq!((m.get("a"), m.len()), (Some(&3), 2));
        m.insert("c", 4);
        assert_eq!(
            (m.get("a"), m.get("b"), m.get("c")),
            (None, Some(&2), Some(&4))
        );
    }

    #[test]
    fn removed_keys_do_not_pile_up_in_line() {
        let mut m = FifoMap::new(2);
        for i in 0..100 {
            m.insert(i, i);
            assert_eq!(m.remove(&i), Some(i));
        }
        assert!(m.is_empty());
        assert!(m.queued() <= 2 * 2 + 1, "{}", m.queued());
    }
}

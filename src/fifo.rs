//! A map bounded in size that evicts the oldest-inserted entry first: the
//! aggregator's cache of order books, and the dispatcher's states of
//! caught-up orders ([`crate::dispatcher`]'s `idle`).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// At most `max` entries; inserting past that evicts the oldest-inserted
/// first. Replacing an entry keeps its place in line; an entry taken out
/// with [`FifoMap::remove`] and put back counts as inserted anew.
///
/// Every operation is amortised O(1): the line holds each insertion with its
/// generation, an entry of the line whose key was removed or inserted again
/// since is stale and skipped, and the stale ones are swept out once the
/// line is twice `max` (so the line never holds more than `2 × max + 1`).
#[derive(Debug)]
pub struct FifoMap<K, V> {
    max: usize,
    /// Each value with the generation of its insertion.
    map: HashMap<K, (u64, V)>,
    /// Insertions in order: (key, generation).
    order: VecDeque<(K, u64)>,
    next_generation: u64,
}

impl<K: Hash + Eq + Clone, V> FifoMap<K, V> {
    /// An empty map of at most `max` entries.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            map: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|(_, v)| v)
    }

    /// Takes the entry out (it counts as inserted anew when put back).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key).map(|(_, v)| v)
    }

    /// Inserts or replaces, then evicts the oldest entries past `max`.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.map.get_mut(&key) {
            slot.1 = value;
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.map.insert(key.clone(), (generation, value));
        self.order.push_back((key, generation));
        while self.map.len() > self.max {
            let Some((old, generation)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(g, _)| *g == generation) {
                self.map.remove(&old);
            }
        }
        // Sweep out the stale insertions, so `order` stays bounded; what is
        // left is one per entry (≤ max), so this runs at most once every
        // `max` insertions.
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order
                .retain(|(k, generation)| map.get(k).is_some_and(|(g, _)| g == generation));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many insertions wait in line (tests check it stays bounded).
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
    fn an_entry_taken_out_and_put_back_counts_as_inserted_anew() {
        let mut m = FifoMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        let a = m.remove("a").unwrap();
        m.insert("a", a);
        // "b" is now the oldest insertion: "a"'s first one is stale.
        m.insert("c", 3);
        assert_eq!(
            (m.get("a"), m.get("b"), m.get("c")),
            (Some(&1), None, Some(&3))
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

    /// The aggregator's use: the same few books taken out and put back, one
    /// event after another, with the map under its bound. The line must not
    /// grow with the events (it did: every put-back queued the key again and
    /// the sweep kept every key still present).
    #[test]
    fn books_taken_out_and_put_back_do_not_pile_up_in_line() {
        let max = 8;
        let mut m = FifoMap::new(max);
        for event in 0..10_000u32 {
            let key = event % 5;
            let value = m.remove(&key).unwrap_or(0) + 1;
            m.insert(key, value);
            assert!(m.queued() <= 2 * max + 1, "{} queued", m.queued());
        }
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(&0), Some(&2_000));
    }

    /// Past its bound the map keeps exactly the `max` most recently
    /// inserted keys, whatever the mix of take-outs and replacements.
    #[test]
    fn the_map_keeps_the_most_recently_inserted() {
        let max = 4;
        let mut m = FifoMap::new(max);
        let mut recent: VecDeque<u32> = VecDeque::new();
        let mut x = 12_345u32;
        for _ in 0..5_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let key = (x >> 16) % 11;
            if (x >> 8).is_multiple_of(3) {
                // Replace in place when present: keeps its place.
                if m.get(&key).is_some() {
                    m.insert(key, x);
                    continue;
                }
            }
            m.remove(&key);
            recent.retain(|k| *k != key);
            m.insert(key, x);
            recent.push_back(key);
            if recent.len() > max {
                recent.pop_front();
            }
            let mut held: Vec<u32> = (0..11).filter(|k| m.get(k).is_some()).collect();
            let mut want: Vec<u32> = recent.iter().copied().collect();
            held.sort_unstable();
            want.sort_unstable();
            assert_eq!(held, want);
            assert!(m.queued() <= 2 * max + 1);
        }
    }
}

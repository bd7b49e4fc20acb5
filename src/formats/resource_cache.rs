//! The decoder's cache of resources already decoded, keyed by the bytes of their
//! `Resource` message and of their envelope (the resource's schema URL and the
//! `ScopeSpans` fields before its first span).
//!
//! Every OTLP record repeats the resources and scopes of its spans; a Kafka topic split
//! by trace id repeats them once per piece, about one lookup per span. The key is looked
//! up where it lies in the record, without copying it into one buffer first, and hashed
//! with XXH3, whose vectorised loop takes a ~400-byte resource in a fraction of the time
//! of the general-purpose hasher (BENCHMARKS.md, 2026-12-05, twentieth session).

use hashbrown::HashTable;
use twox_hash::XxHash3_64;

/// Distinct keys remembered; a fleet has far fewer resource and scope pairs. When full,
/// the cache starts over rather than tracking recency on every lookup.
const LIMIT: usize = 4096;

/// The parts of a key, compared one by one: bytes moved from one part to the next make
/// another key.
pub(crate) type Key<'a> = [&'a [u8]; 3];

struct Entry<V> {
    hash: u64,
    /// The parts one after the other.
    key: Box<[u8]>,
    /// Where the first and the second part end in `key`.
    ends: [usize; 2],
    value: V,
}

impl<V> Entry<V> {
    fn is(&self, hash: u64, key: Key<'_>) -> bool {
        let [a, b] = self.ends;
        self.hash == hash
            && self.key.get(..a) == Some(key[0])
            && self.key.get(a..b) == Some(key[1])
            && self.key.get(b..) == Some(key[2])
    }
}

/// Values by the bytes of a [`Key`]'s parts.
pub(crate) struct ResourceCache<V> {
    table: HashTable<Entry<V>>,
}

impl<V> Default for ResourceCache<V> {
    fn default() -> Self {
        ResourceCache {
            table: HashTable::new(),
        }
    }
}

/// Each part's XXH3, mixed so that the same bytes in another part make another hash. An
/// empty part (usually the resource's schema URL) is not hashed.
fn hash(key: Key<'_>) -> u64 {
    let mut h = XxHash3_64::oneshot(key[0]);
    for (part, rotate) in key[1..].iter().zip([29, 43]) {
        if !part.is_empty() {
            h ^= XxHash3_64::oneshot(part)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(rotate);
        }
    }
    h
}

impl<V> ResourceCache<V> {
    /// The value remembered for the key, if any.
    pub(crate) fn get(&self, key: Key<'_>) -> Option<&V> {
        let h = hash(key);
        self.table.find(h, |e| e.is(h, key)).map(|e| &e.value)
    }

    /// Remembers `value` for the key, replacing what was remembered for it.
    pub(crate) fn insert(&mut self, key: Key<'_>, value: V) {
        if self.table.len() >= LIMIT {
            self.table.clear();
        }
        let h = hash(key);
        let mut bytes = Vec::with_capacity(key.iter().map(|p| p.len()).sum());
        for part in key {
            bytes.extend_from_slice(part);
        }
        let a = key[0].len();
        let entry = Entry {
            hash: h,
            key: bytes.into_boxed_slice(),
            ends: [a, a + key[1].len()],
            value,
        };
        match self.table.entry(h, |e| e.is(h, key), |e| e.hash) {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn parts_are_told_apart_where_they_split() {
        let mut c = ResourceCache::default();
        c.insert([b"ab", b"c", b""], 1);
        c.insert([b"a", b"bc", b""], 2);
        c.insert([b"a", b"b", b"c"], 3);
        c.insert([b"a", b"", b"bc"], 4);
        assert_eq!(c.get([b"ab", b"c", b""]), Some(&1));
        assert_eq!(c.get([b"a", b"bc", b""]), Some(&2));
        assert_eq!(c.get([b"a", b"b", b"c"]), Some(&3));
        assert_eq!(c.get([b"a", b"", b"bc"]), Some(&4));
        assert_eq!(c.get([b"abc", b"", b""]), None);
        assert_eq!(c.get([b"", b"", b"abc"]), None);
        assert_eq!(c.len(), 4);
        c.insert([b"ab", b"c", b""], 5);
        assert_eq!(c.get([b"ab", b"c", b""]), Some(&5));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn starts_over_when_full() {
        let mut c = ResourceCache::default();
        for i in 0..LIMIT as u32 {
            c.insert([&i.to_le_bytes(), b"", b""], i);
        }
        assert_eq!(c.len(), LIMIT);
        c.insert([b"one more", b"", b""], 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get([&7u32.to_le_bytes(), b"", b""]), None);
    }

    proptest! {
        /// Against a map keyed by the owned parts.
        #[test]
        fn agrees_with_a_map_of_parts(
            ops in proptest::collection::vec(
                (
                    proptest::collection::vec(0u8..4, 0..40),
                    proptest::collection::vec(0u8..4, 0..3),
                    proptest::collection::vec(0u8..4, 0..6),
                    any::<bool>(),
                ),
                0..200,
            ),
        ) {
            let mut c = ResourceCache::default();
            let mut reference: HashMap<[Vec<u8>; 3], usize> = HashMap::new();
            for (i, (r, u, e, insert)) in ops.into_iter().enumerate() {
                if insert {
                    c.insert([&r, &u, &e], i);
                    reference.insert([r, u, e], i);
                } else {
                    prop_assert_eq!(c.get([&r, &u, &e]), reference.get(&[r.clone(), u.clone(), e.clone()]));
                }
            }
        }
    }
}

//! The decoder's cache of resources already decoded, keyed by the bytes of their
//! `Resource` message and of their scope envelope.
//!
//! Every OTLP record repeats the resources and scopes of its spans; a Kafka topic split
//! by trace id repeats them once per piece, about one lookup every four spans. The key
//! is looked up where it lies in the record, without copying it into one buffer first,
//! and hashed with XXH3, whose vectorised loop takes a ~400-byte resource in a fraction
//! of the time of the general-purpose hasher (BENCHMARKS.md, 2026-12-05, twentieth
//! session).

use hashbrown::HashTable;
use twox_hash::XxHash3_64;

/// Distinct resource and scope pairs remembered; a fleet has far fewer. When full, the
/// cache starts over rather than tracking recency on every lookup.
const LIMIT: usize = 4096;

struct Entry<V> {
    hash: u64,
    /// The resource's bytes followed by the envelope's.
    key: Box<[u8]>,
    /// Where the resource's bytes end in `key`.
    split: usize,
    value: V,
}

impl<V> Entry<V> {
    fn is(&self, hash: u64, resource: &[u8], envelope: &[u8]) -> bool {
        self.hash == hash
            && self.key.get(..self.split) == Some(resource)
            && self.key.get(self.split..) == Some(envelope)
    }
}

/// Values by (resource bytes, envelope bytes).
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

/// The hash of a pair: each part's XXH3 mixed, so that moving bytes from one part to the
/// other makes another hash (the parts are also compared separately).
fn hash(resource: &[u8], envelope: &[u8]) -> u64 {
    let r = XxHash3_64::oneshot(resource);
    let e = XxHash3_64::oneshot(envelope);
    r ^ e.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

impl<V> ResourceCache<V> {
    /// The value remembered for the pair, if any.
    pub(crate) fn get(&self, resource: &[u8], envelope: &[u8]) -> Option<&V> {
        let h = hash(resource, envelope);
        self.table
            .find(h, |e| e.is(h, resource, envelope))
            .map(|e| &e.value)
    }

    /// Remembers `value` for the pair, replacing what was remembered for it.
    pub(crate) fn insert(&mut self, resource: &[u8], envelope: &[u8], value: V) {
        if self.table.len() >= LIMIT {
            self.table.clear();
        }
        let h = hash(resource, envelope);
        let mut key = Vec::with_capacity(resource.len() + envelope.len());
        key.extend_from_slice(resource);
        key.extend_from_slice(envelope);
        let entry = Entry {
            hash: h,
            key: key.into_boxed_slice(),
            split: resource.len(),
            value,
        };
        match self
            .table
            .entry(h, |e| e.is(h, resource, envelope), |e| e.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    /// Pairs remembered.
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
        c.insert(b"ab", b"c", 1);
        c.insert(b"a", b"bc", 2);
        assert_eq!(c.get(b"ab", b"c"), Some(&1));
        assert_eq!(c.get(b"a", b"bc"), Some(&2));
        assert_eq!(c.get(b"abc", b""), None);
        assert_eq!(c.len(), 2);
        c.insert(b"ab", b"c", 3);
        assert_eq!(c.get(b"ab", b"c"), Some(&3));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn starts_over_when_full() {
        let mut c = ResourceCache::default();
        for i in 0..LIMIT as u32 {
            c.insert(&i.to_le_bytes(), b"", i);
        }
        assert_eq!(c.len(), LIMIT);
        c.insert(b"one more", b"", 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&7u32.to_le_bytes(), b""), None);
    }

    proptest! {
        /// Against a map keyed by the owned pair.
        #[test]
        fn agrees_with_a_map_of_pairs(
            ops in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 0..40), proptest::collection::vec(0u8..4, 0..6), any::<bool>()),
                0..200,
            ),
        ) {
            let mut c = ResourceCache::default();
            let mut reference: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::new();
            for (i, (r, e, insert)) in ops.into_iter().enumerate() {
                if insert {
                    c.insert(&r, &e, i);
                    reference.insert((r, e), i);
                } else {
                    prop_assert_eq!(c.get(&r, &e), reference.get(&(r.clone(), e.clone())));
                }
            }
        }
    }
}

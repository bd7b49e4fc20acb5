//! The decoder's cache of resources already decoded, keyed by the bytes of their
//! `Resource` message and of their envelope (the resource's schema URL and the
//! `ScopeSpans` fields before its first span).
//!
//! Every OTLP record repeats the resources and scopes of its spans; a Kafka topic split
//! by trace id repeats them once per piece, about one lookup per span, nearly all of
//! them hits among a few dozen keys. The key is looked up where it lies in the record,
//! without copying it into one buffer first.
//!
//! A lookup first tries the entry last found under the key's fingerprint (a sum of its
//! 8-byte words, a few instructions per 32 bytes), checked byte for byte. Only when that
//! entry is another key does it hash the key with foldhash, seeded per cache, and probe
//! the table. Crafted keys can share a fingerprint, but that only sends them down the
//! seeded path; the table itself is never keyed by it (BENCHMARKS.md, 2026-12-06,
//! twenty-seventh session).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

/// Distinct keys remembered; a fleet has far fewer resource and scope pairs. When full,
/// the cache starts over rather than tracking recency on every lookup.
const LIMIT: usize = 4096;

/// Slots of the fingerprint's direct-mapped hints (a power of two).
const HINTS: usize = 256;

/// A hint slot holding no entry.
const NO_HINT: u32 = u32::MAX;

/// The parts of a key, compared one by one: bytes moved from one part to the next make
/// another key.
pub(crate) type Key<'a> = [&'a [u8]; 3];

struct Entry<V> {
    hash: u64,
    fingerprint: u64,
    /// The parts one after the other.
    key: Box<[u8]>,
    /// Where the first and the second part end in `key`.
    ends: [usize; 2],
    value: V,
}

impl<V> Entry<V> {
    fn holds(&self, key: Key<'_>) -> bool {
        let [a, b] = self.ends;
        self.key.get(..a) == Some(key[0])
            && self.key.get(a..b) == Some(key[1])
            && self.key.get(b..) == Some(key[2])
    }
}

/// Values by the bytes of a [`Key`]'s parts.
pub(crate) struct ResourceCache<V> {
    entries: Vec<Entry<V>>,
    /// Indices into `entries`, by the seeded hash of their key.
    table: HashTable<u32>,
    /// Per fingerprint slot, the index of the entry last looked up with a fingerprint
    /// of that slot ([`NO_HINT`]: none). A `Cell` so that a lookup, which only reads
    /// the cache, can move the hint.
    hints: Box<[Cell<u32>]>,
    seed: foldhash::fast::RandomState,
}

impl<V> Default for ResourceCache<V> {
    fn default() -> Self {
        ResourceCache {
            entries: Vec::new(),
            table: HashTable::new(),
            hints: (0..HINTS).map(|_| Cell::new(NO_HINT)).collect(),
            seed: foldhash::fast::RandomState::default(),
        }
    }
}

/// Each part's length and the wrapping sum of its 8-byte words (with the last 8 bytes
/// once more, turned, for the tail), mixed part by part. A changed byte changes it (the
/// tests change each byte of a key); it is a hint, so keys that share it (words swapped,
/// or made to) cost a lookup in the table, nothing more.
fn fingerprint(key: Key<'_>) -> u64 {
    let mut fp = 0u64;
    for part in key {
        fp = (fp ^ word_sum(part) ^ (part.len() as u64).rotate_left(32))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    fp
}

/// See [`fingerprint`]. Four sums over 32-byte blocks, which the compiler keeps in a
/// vector register.
#[inline(always)]
fn word_sum(part: &[u8]) -> u64 {
    let Some(last) = part.last_chunk::<8>() else {
        return part.iter().rev().fold(0, |w, b| (w << 8) | u64::from(*b));
    };
    let (blocks, rest) = part.as_chunks::<32>();
    let mut lanes = [0u64; 4];
    for block in blocks {
        for (lane, w) in lanes.iter_mut().zip(block.as_chunks::<8>().0) {
            *lane = lane.wrapping_add(u64::from_le_bytes(*w));
        }
    }
    let sum = lanes.iter().fold(0u64, |s, l| s.wrapping_add(*l));
    rest.as_chunks::<8>()
        .0
        .iter()
        .fold(sum, |s, w| s.wrapping_add(u64::from_le_bytes(*w)))
        .wrapping_add(u64::from_le_bytes(*last).rotate_left(17))
}

/// The hint slot of a fingerprint: its top bits, which the last multiply mixed best.
fn slot(fingerprint: u64) -> usize {
    (fingerprint >> (64 - HINTS.trailing_zeros())) as usize
}

impl<V> ResourceCache<V> {
    /// The parts hashed one after the other. foldhash turns its state by each part's
    /// length, so the same bytes split elsewhere between the parts hash differently.
    fn hash(&self, key: Key<'_>) -> u64 {
        let mut h = self.seed.build_hasher();
        for part in key {
            h.write(part);
        }
        h.finish()
    }

    /// The index of the key's entry in the table, if any.
    fn find(&self, hash: u64, key: Key<'_>) -> Option<u32> {
        let entries = &self.entries;
        self.table
            .find(hash, |&i| {
                entries
                    .get(i as usize)
                    .is_some_and(|e| e.hash == hash && e.holds(key))
            })
            .copied()
    }

    /// The value remembered for the key, if any.
    pub(crate) fn get(&self, key: Key<'_>) -> Option<&V> {
        let fp = fingerprint(key);
        let hint = self.hints.get(slot(fp))?;
        if let Some(e) = self.entries.get(hint.get() as usize)
            && e.fingerprint == fp
            && e.holds(key)
        {
            return Some(&e.value);
        }
        let i = self.find(self.hash(key), key)?;
        hint.set(i);
        self.entries.get(i as usize).map(|e| &e.value)
    }

    /// Remembers `value` for the key, replacing what was remembered for it.
    pub(crate) fn insert(&mut self, key: Key<'_>, value: V) {
        let h = self.hash(key);
        let fp = fingerprint(key);
        if let Some(i) = self.find(h, key)
            && let Some(e) = self.entries.get_mut(i as usize)
        {
            e.value = value;
            return;
        }
        if self.entries.len() >= LIMIT {
            self.entries.clear();
            self.table.clear();
            for hint in &self.hints {
                hint.set(NO_HINT);
            }
        }
        let mut bytes = Vec::with_capacity(key.iter().map(|p| p.len()).sum());
        for part in key {
            bytes.extend_from_slice(part);
        }
        let a = key[0].len();
        // LIMIT keeps indices far below NO_HINT.
        let i = self.entries.len() as u32;
        self.entries.push(Entry {
            hash: h,
            fingerprint: fp,
            key: bytes.into_boxed_slice(),
            ends: [a, a + key[1].len()],
            value,
        });
        let entries = &self.entries;
        self.table
            .insert_unique(h, i, |&j| entries.get(j as usize).map_or(0, |e| e.hash));
        if let Some(hint) = self.hints.get(slot(fp)) {
            hint.set(i);
        }
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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

    #[test]
    fn keys_that_share_a_fingerprint_are_told_apart() {
        // Words swapped, the last one kept: the same sums, the same lengths.
        let (a, swapped) = (b"resourceservice1/suffix/", b"service1resource/suffix/");
        let (x, y) = ([&a[..], b"", b"head"], [&swapped[..], b"", b"head"]);
        assert_eq!(fingerprint(x), fingerprint(y));
        let mut c = ResourceCache::default();
        c.insert(x, 1);
        assert_eq!(c.get(y), None);
        c.insert(y, 2);
        // In turn, so that each lookup finds the other key's hint.
        for _ in 0..3 {
            assert_eq!(c.get(x), Some(&1));
            assert_eq!(c.get(y), Some(&2));
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_changed_byte_changes_the_fingerprint() {
        let base = [b"a resource of some length".as_slice(), b"url", b"head"];
        for part in 0..3 {
            for at in 0..base[part].len() {
                for by in 1..=255u8 {
                    let mut changed = base[part].to_vec();
                    changed[at] = changed[at].wrapping_add(by);
                    let mut key = base;
                    key[part] = &changed;
                    assert_ne!(fingerprint(key), fingerprint(base), "part {part} byte {at}");
                }
            }
        }
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

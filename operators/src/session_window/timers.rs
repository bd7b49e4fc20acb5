//! The session window's event-time queues (timers, tombstone expiry, watermark holds).
//!
//! One `BinaryHeap` over every open trace spent most of a pop in cache misses: a pop
//! walks ~17 levels of a heap far larger than the core's cache, about 500 ns each, and
//! every trace is popped several times (its timer, stale timers, its hold, its
//! tombstone). Here entries are grouped by time into buckets of ~134 ms, each a small
//! heap, kept in a `BTreeMap` by bucket: the queue pops in exactly the order of one heap
//! (buckets partition the time line, so equal times share a bucket), and a pop only
//! touches the first bucket, which is already in cache when the watermark sweeps it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, btree_map};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::EventTime;
use crate::model::TraceId;

/// log2 of a bucket's width in nanoseconds (2^27 ns, ~134 ms): a few dozen traces per
/// bucket at a few hundred traces per second, a few thousand at a hundred thousand.
const BUCKET_SHIFT: u32 = 27;

/// Emptied buckets kept for reuse, so that a steady stream of timers allocates none.
const SPARE_BUCKETS: usize = 64;

type Bucket = BinaryHeap<Reverse<(EventTime, TraceId)>>;

/// A min-queue of `(time, trace)` entries, popped in ascending `(time, trace)` order
/// like a `BinaryHeap<Reverse<(EventTime, TraceId)>>`; equal entries are all kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerQueue {
    /// Never holds an empty bucket.
    buckets: BTreeMap<u64, Bucket>,
    spare: Vec<Bucket>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, at: EventTime, tid: TraceId) {
        let entry = Reverse((at, tid));
        match self.buckets.entry(at >> BUCKET_SHIFT) {
            btree_map::Entry::Occupied(b) => b.into_mut().push(entry),
            btree_map::Entry::Vacant(v) => {
                v.insert(self.spare.pop().unwrap_or_default()).push(entry)
            }
        }
    }

    /// The smallest entry.
    pub(crate) fn peek(&self) -> Option<(EventTime, TraceId)> {
        let (_, bucket) = self.buckets.first_key_value()?;
        bucket.peek().map(|e| e.0)
    }

    /// Removes and returns the smallest entry.
    pub(crate) fn pop(&mut self) -> Option<(EventTime, TraceId)> {
        let mut first = self.buckets.first_entry()?;
        let top = first.get_mut().pop();
        if first.get().is_empty() {
            let emptied = first.remove();
            if self.spare.len() < SPARE_BUCKETS {
                self.spare.push(emptied);
            }
        }
        top.map(|e| e.0)
    }

    /// Adds the entries of `other` whose trace is `owned` (rescaling a checkpoint).
    pub(crate) fn extend_owned(&mut self, other: &TimerQueue, owned: impl Fn(&TraceId) -> bool) {
        for &(at, tid) in other.entries() {
            if owned(&tid) {
                self.push(at, tid);
            }
        }
    }

    fn entries(&self) -> impl Iterator<Item = &(EventTime, TraceId)> {
        self.buckets.values().flat_map(|b| b.iter().map(|e| &e.0))
    }
}

/// The same representation as the `BinaryHeap` this replaced (a sequence of
/// `(time, trace)`), so checkpoints taken before restore into it.
impl Serialize for TimerQueue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // With its length up front: bincode (checkpoints) needs it.
        use serde::ser::SerializeSeq as _;
        let len = self.buckets.values().map(BinaryHeap::len).sum();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for e in self.entries() {
            seq.serialize_element(e)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for TimerQueue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<(EventTime, TraceId)>::deserialize(deserializer)?;
        let mut q = TimerQueue::default();
        for (at, tid) in entries {
            q.push(at, tid);
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(EventTime, u8),
        Pop,
        Peek,
    }

    /// Times from a few buckets with many ties, and the odd far-away one.
    fn arb_op() -> impl Strategy<Value = Op> {
        let time = prop_oneof![
            8 => 0u64..(4 << BUCKET_SHIFT),
            1 => Just(0u64),
            1 => any::<u64>(),
        ];
        prop_oneof![
            3 => (time, 0u8..4).prop_map(|(t, id)| Op::Push(t, id)),
            2 => Just(Op::Pop),
            1 => Just(Op::Peek),
        ]
    }

    fn tid(id: u8) -> TraceId {
        TraceId([id; 16])
    }

    proptest! {
        /// Pops, peeks and a checkpoint round trip give what one binary heap gives.
        #[test]
        fn pops_in_the_order_of_one_heap(ops in prop::collection::vec(arb_op(), 0..400)) {
            let mut q = TimerQueue::default();
            let mut reference: BinaryHeap<Reverse<(EventTime, TraceId)>> = BinaryHeap::new();
            for op in ops {
                match op {
                    Op::Push(t, id) => {
                        q.push(t, tid(id));
                        reference.push(Reverse((t, tid(id))));
                    }
                    Op::Pop => prop_assert_eq!(q.pop(), reference.pop().map(|e| e.0)),
                    Op::Peek => prop_assert_eq!(q.peek(), reference.peek().map(|e| e.0)),
                }
            }
            let json = serde_json::to_string(&q).unwrap();
            let mut saved: Vec<(EventTime, TraceId)> = serde_json::from_str(&json).unwrap();
            let mut expected: Vec<_> = reference.iter().map(|e| e.0).collect();
            saved.sort();
            expected.sort();
            prop_assert_eq!(saved, expected);
            let mut restored: TimerQueue = serde_json::from_str(&json).unwrap();
            while let Some(e) = reference.pop() {
                prop_assert_eq!(restored.pop(), Some(e.0));
            }
            prop_assert_eq!(restored.pop(), None);
            prop_assert!(restored.buckets.is_empty());
        }
    }

    #[test]
    fn reads_a_checkpointed_binary_heap() {
        let mut heap: BinaryHeap<Reverse<(EventTime, TraceId)>> = BinaryHeap::new();
        for (t, id) in [(5u64 << BUCKET_SHIFT, 1u8), (3, 2), (3, 1), (u64::MAX, 0)] {
            heap.push(Reverse((t, tid(id))));
        }
        let json = serde_json::to_string(&heap).unwrap();
        let mut q: TimerQueue = serde_json::from_str(&json).unwrap();
        assert_eq!(q.pop(), Some((3, tid(1))));
        assert_eq!(q.pop(), Some((3, tid(2))));
        assert_eq!(q.peek(), Some((5 << BUCKET_SHIFT, tid(1))));
        assert_eq!(q.pop(), Some((5 << BUCKET_SHIFT, tid(1))));
        assert_eq!(q.pop(), Some((u64::MAX, tid(0))));
        assert_eq!(q.pop(), None);
    }
}

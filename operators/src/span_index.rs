//! [`SpanIndex`]: the parent of every span of a closed trace, found once and shared by
//! the operators that walk parent links (`red_metrics`, `service_graph`), which used to
//! build a span-id map of every trace each.

use ahash::AHashMap;

use crate::model::{Span, SpanId};

/// No parent in the trace (a root, or a parent that never arrived).
const NONE: u32 = u32::MAX;

/// Parent links of one trace's spans, by position in the trace's span vector.
///
/// Span ids are not guaranteed unique in bad input. Where an id repeats, it stands for
/// its last span (the one a span-id map filled in order keeps), and sets keyed by span id
/// are kept by that span's position: [`SpanIndex::canonical`].
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    /// Span id (as a word: cheaper to hash than the byte array) -> last position.
    by_id: AHashMap<u64, u32>,
    /// Parent position of each span, or `NONE`.
    parent: Vec<u32>,
    /// Position standing for each span's id; empty when every id is unique (the common
    /// case), then a span stands for itself.
    canonical: Vec<u32>,
}

fn key(id: &SpanId) -> u64 {
    u64::from_ne_bytes(id.0)
}

impl SpanIndex {
    /// Indexes `spans` (replacing the previous trace's index).
    pub fn build(&mut self, spans: &[Span]) {
        self.by_id.clear();
        self.parent.clear();
        self.canonical.clear();
        // A trace never holds more than u32::MAX spans in memory; positions beyond that
        // would merely lose their parent link, never index out of bounds.
        for (i, s) in spans.iter().enumerate() {
            self.by_id
                .insert(key(&s.span_id), u32::try_from(i).unwrap_or(NONE));
        }
        self.parent.extend(spans.iter().map(|s| {
            if s.is_root() {
                NONE
            } else {
                self.by_id
                    .get(&key(&s.parent_span_id))
                    .copied()
                    .unwrap_or(NONE)
            }
        }));
        if self.by_id.len() < spans.len() {
            self.canonical.extend(
                spans
                    .iter()
                    .map(|s| self.by_id.get(&key(&s.span_id)).copied().unwrap_or(NONE)),
            );
        }
    }

    /// The index of `spans`, built with a per-thread scratch map and kept without it
    /// (two small vectors per trace).
    pub fn of(spans: &[Span]) -> SpanIndex {
        thread_local! {
            static SCRATCH: std::cell::RefCell<SpanIndex> = std::cell::RefCell::default();
        }
        SCRATCH.with(|s| {
            let Ok(mut s) = s.try_borrow_mut() else {
                let mut ix = SpanIndex::default();
                ix.build(spans);
                ix.by_id = AHashMap::new();
                return ix;
            };
            s.build(spans);
            SpanIndex {
                by_id: AHashMap::new(),
                parent: s.parent.clone(),
                canonical: s.canonical.clone(),
            }
        })
    }

    /// Position of span `i`'s parent, if it is in the trace.
    #[inline]
    pub fn parent(&self, i: usize) -> Option<usize> {
        match self.parent.get(i) {
            Some(&p) if p != NONE => Some(p as usize),
            _ => None,
        }
    }

    /// The position standing for span `i`'s id: `i` itself unless the id repeats in the
    /// trace, then its last span's. Parent positions are always canonical.
    #[inline]
    pub fn canonical(&self, i: usize) -> usize {
        match self.canonical.get(i) {
            Some(&c) if c != NONE => c as usize,
            _ => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TraceId;

    fn span(id: u8, parent: u8) -> Span {
        Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: SpanId([parent; 8]),
            ..Default::default()
        }
    }

    #[test]
    fn parents_by_position() {
        let spans = vec![span(1, 0), span(2, 1), span(3, 2), span(4, 9)];
        let mut ix = SpanIndex::default();
        ix.build(&spans);
        assert_eq!(ix.parent(0), None);
        assert_eq!(ix.parent(1), Some(0));
        assert_eq!(ix.parent(2), Some(1));
        assert_eq!(ix.parent(3), None);
        assert_eq!(ix.parent(99), None);
        assert_eq!(ix.canonical(2), 2);
    }

    #[test]
    fn repeated_ids_stand_for_their_last_span() {
        let spans = vec![span(1, 0), span(2, 1), span(2, 1), span(3, 2)];
        let mut ix = SpanIndex::default();
        ix.build(&spans);
        assert_eq!(ix.parent(3), Some(2));
        assert_eq!(ix.canonical(1), 2);
        assert_eq!(ix.canonical(2), 2);
        assert_eq!(ix.canonical(0), 0);
    }
}

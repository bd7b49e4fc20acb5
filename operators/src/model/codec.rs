//! The encoding of operator state in checkpoints.
//!
//! bincode (no field names, fixed-width integers) with each interned string ([`Sym`])
//! and each shared attribute buffer ([`Attrs`]: a resource's, one buffer shared by
//! every span of it) written once per state and referred to by index; a span's own
//! attributes are written in place. CBOR wrote the shared parts, the field names and the service and operation names out for every
//! buffered span (about 1 KB per span, three times its size in memory, and most of a
//! checkpoint's cost). Layout: `body | tables | u64 LE length of tables`, so the body
//! is written once, straight into the checkpoint's file ([`encode_into`]).
//!
//! The tables are in a thread-local while one state is encoded or decoded; `Sym` and
//! `Attrs` consult it in their serde impls, and serialize as themselves otherwise (JSON,
//! CBOR).

use std::cell::RefCell;

use ahash::AHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Attrs, Sym};

#[derive(Default)]
struct Encoding {
    /// By [`Sym::id`] (dense, small): 1 + the symbol's index in the table, 0 when not
    /// in it yet. A lookup per symbol of every buffered span: an array, not a hash.
    syms: Vec<u32>,
    sym_list: Vec<Sym>,
    /// By the buffer's address and length: shared buffers are the same allocation.
    attrs: AHashMap<(usize, usize), u32>,
    attrs_list: Vec<Attrs>,
}

struct Decoding {
    syms: Vec<Sym>,
    attrs: Vec<Attrs>,
}

thread_local! {
    static ENCODING: RefCell<Option<Encoding>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Decoding>> = const { RefCell::new(None) };
}

/// Clears the thread's tables however the encoding ends (an error or a panic).
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        ENCODING.with(|e| e.borrow_mut().take());
        DECODING.with(|d| d.borrow_mut().take());
    }
}

/// Why a state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

fn err(e: impl std::fmt::Display) -> CodecError {
    CodecError(e.to_string())
}

/// Encodes `state` (see the module docs).
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_to(state, &mut out)?;
    Ok(out)
}

/// Like [`encode`], written to `w` as it is encoded (a checkpoint streams a large
/// state into its file instead of holding a second copy of it in memory); returns the
/// bytes written.
pub fn encode_into<T: Serialize, W: std::io::Write>(state: &T, w: W) -> Result<u64, CodecError> {
    let mut w = Chunked {
        buf: Vec::with_capacity(CHUNK),
        inner: w,
        len: 0,
    };
    encode_to(state, &mut w)?;
    w.flush_chunk().map_err(err)?;
    Ok(w.len)
}

/// A writer that knows how much was written to it.
trait Out: std::io::Write {
    fn written(&self) -> u64;
}

impl Out for Vec<u8> {
    fn written(&self) -> u64 {
        self.len() as u64
    }
}

fn encode_to<T: Serialize, W: Out>(state: &T, w: &mut W) -> Result<(), CodecError> {
    let _reset = Reset;
    ENCODING.with(|e| *e.borrow_mut() = Some(Encoding::default()));
    bincode::serialize_into(&mut *w, state).map_err(err)?;
    let tables = ENCODING
        .with(|e| e.borrow_mut().take())
        .ok_or_else(|| err("the string table went missing"))?;
    // The tables themselves are written plainly: the thread-local is gone now.
    let at = w.written();
    bincode::serialize_into(&mut *w, &(tables.sym_list, tables.attrs_list)).map_err(err)?;
    let len = w.written() - at;
    w.write_all(&len.to_le_bytes()).map_err(err)
}

/// Bytes gathered before they are passed on by [`Chunked`].
const CHUNK: usize = 256 << 10;

/// Gathers the encoder's many small writes (a field at a time) into chunks for the
/// writer behind it, which is usually a file behind `dyn Write`: a call per field
/// through it cost more than the encoding. Counts the bytes.
struct Chunked<W: std::io::Write> {
    buf: Vec<u8>,
    inner: W,
    len: u64,
}

impl<W: std::io::Write> Chunked<W> {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl<W: std::io::Write> Out for Chunked<W> {
    fn written(&self) -> u64 {
        self.len
    }
}

impl<W: std::io::Write> std::io::Write for Chunked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + buf.len() > CHUNK {
            self.flush_chunk()?;
            if buf.len() > CHUNK {
                self.inner.write_all(buf)?;
                self.len += buf.len() as u64;
                return Ok(());
            }
        }
        self.buf.extend_from_slice(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()?;
        self.inner.flush()
    }
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let _reset = Reset;
    let n = bytes.len();
    let (rest, len) = bytes
        .split_at_checked(n.saturating_sub(8))
        .filter(|_| n >= 8)
        .ok_or_else(|| err("state too short"))?;
    let len = u64::from_le_bytes(len.try_into().map_err(err)?);
    let body_len = usize::try_from(len)
        .ok()
        .and_then(|l| rest.len().checked_sub(l))
        .ok_or_else(|| err("state tables past its start"))?;
    let (body, tables) = rest.split_at(body_len);
    let (syms, attrs): (Vec<Sym>, Vec<Attrs>) = bincode::deserialize(tables).map_err(err)?;
    DECODING.with(|d| *d.borrow_mut() = Some(Decoding { syms, attrs }));
    bincode::deserialize(body).map_err(err)
}

/// While a state is encoded: the index of `sym` in its table.
pub(super) fn sym_index(sym: Sym) -> Option<u32> {
    ENCODING.with(|e| {
        let mut e = e.borrow_mut();
        let e = e.as_mut()?;
        let id = sym.id() as usize;
        if id >= e.syms.len() {
            e.syms.resize((id + 1).next_power_of_two(), 0);
        }
        let slot = e.syms.get_mut(id)?;
        if *slot == 0 {
            e.sym_list.push(sym);
            *slot = e.sym_list.len() as u32;
        }
        Some(*slot - 1)
    })
}

/// While a state is encoded: the index of `attrs`' buffer in its table.
pub(super) fn attrs_index(attrs: &Attrs) -> Option<u32> {
    ENCODING.with(|e| {
        let mut e = e.borrow_mut();
        let e = e.as_mut()?;
        let next = e.attrs_list.len() as u32;
        let key = (attrs.0.as_ptr() as usize, attrs.0.len());
        let i = *e.attrs.entry(key).or_insert(next);
        if i == next {
            e.attrs_list.push(attrs.clone());
        }
        Some(i)
    })
}

/// Whether a state is being decoded (so `Sym` and `Attrs` come as indexes).
pub(super) fn decoding() -> bool {
    DECODING.with(|d| d.borrow().is_some())
}

/// While a state is decoded: entry `i` of its string table.
pub(super) fn sym_at(i: u32) -> Option<Sym> {
    DECODING.with(|d| d.borrow().as_ref()?.syms.get(i as usize).copied())
}

/// While a state is decoded: entry `i` of its attribute table.
pub(super) fn attrs_at(i: u32) -> Option<Attrs> {
    DECODING.with(|d| d.borrow().as_ref()?.attrs.get(i as usize).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, AttrsBuilder, Span, SpanId, TraceId};

    /// Spans of two traces sharing one resource buffer, each with its own attributes.
    fn spans() -> Vec<Span> {
        let mut b = AttrsBuilder::default();
        b.push("service.name", AttrValue::Str("checkout"), true);
        b.push("host.name", AttrValue::Str("node-7"), true);
        let resource = b.finish();
        (0..40u8)
            .map(|i| {
                let mut b = AttrsBuilder::default();
                b.push("http.route", AttrValue::Str("/cart/{id}"), false);
                b.push("retries", AttrValue::Int(i64::from(i)), false);
                Span {
                    trace_id: TraceId([i % 2; 16]),
                    span_id: SpanId([i; 8]),
                    start_ns: u64::from(i) * 1_000,
                    end_ns: u64::from(i) * 1_000 + 500,
                    service: Sym::new(if i % 3 == 0 { "checkout" } else { "cart" }),
                    name: Sym::new("GET /cart/{id}"),
                    http_status: 200,
                    attrs: b.finish(),
                    resource_attrs: resource.clone(),
                    ..Span::default()
                }
            })
            .collect()
    }

    /// The codec gives back what plain serde (JSON, the reference) gives back, writes
    /// the shared resource once, and the decoded spans share one buffer again.
    #[test]
    fn round_trips_like_plain_serde_and_writes_shared_parts_once() {
        let spans = spans();
        let bytes = encode(&spans).unwrap();
        let back: Vec<Span> = decode(&bytes).unwrap();
        let reference: Vec<Span> =
            serde_json::from_str(&serde_json::to_string(&spans).unwrap()).unwrap();
        assert_eq!(back, spans);
        assert_eq!(back, reference);
        // Streamed through a writer (in chunks, as into a checkpoint's file): the same.
        let mut streamed = Vec::new();
        let n = encode_into(&spans, &mut streamed).unwrap();
        assert_eq!(
            (streamed.as_slice(), n),
            (bytes.as_slice(), bytes.len() as u64)
        );
        // The same spans, each resource a buffer of its own: written once per span.
        let unshared: Vec<Span> = spans
            .iter()
            .map(|s| Span {
                resource_attrs: Attrs(bytes::Bytes::copy_from_slice(&s.resource_attrs.0)),
                ..s.clone()
            })
            .collect();
        let resource = spans[0].resource_attrs.0.len();
        let saved = encode(&unshared).unwrap().len() - bytes.len();
        assert!(
            saved >= (spans.len() - 1) * resource,
            "{saved} bytes saved, the resource has {resource}"
        );
        assert_eq!(
            back[0].resource_attrs.0.as_ptr(),
            back[39].resource_attrs.0.as_ptr()
        );
        // Outside a state, symbols and ids are text again.
        assert_eq!(
            serde_json::to_string(&spans[0].service).unwrap(),
            "\"checkout\""
        );
    }

    /// A state larger than the writer's chunks, with a field larger than one, streams
    /// to the same bytes as it encodes in memory.
    #[test]
    fn streaming_in_chunks_gives_the_same_bytes() {
        let big = (
            (0..100_000u32).map(|i| format!("s{i}")).collect::<Vec<_>>(),
            serde_bytes::ByteBuf::from(vec![7u8; 3 * CHUNK]),
            spans(),
        );
        let bytes = encode(&big).unwrap();
        let mut streamed = Vec::new();
        assert_eq!(
            encode_into(&big, &mut streamed).unwrap(),
            bytes.len() as u64
        );
        assert!(streamed == bytes);
        let back: (Vec<String>, serde_bytes::ByteBuf, Vec<Span>) = decode(&streamed).unwrap();
        assert!(back == big);
    }

    /// Damaged input is an error, never a panic or garbage.
    #[test]
    fn truncated_or_damaged_state_is_an_error() {
        let bytes = encode(&spans()).unwrap();
        for n in 0..bytes.len() {
            assert!(
                decode::<Vec<Span>>(&bytes[..n]).is_err(),
                "prefix of {n} bytes"
            );
        }
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut bad = bytes.clone();
            let i = x as usize % bad.len();
            bad[i] ^= (x >> 24) as u8 | 1;
            // Either refused or decoded into something well-formed: no panic.
            let _ = decode::<Vec<Span>>(&bad);
        }
        assert!(sym_index(Sym::new("x")).is_none(), "the table is cleared");
        assert!(!decoding());
    }
}

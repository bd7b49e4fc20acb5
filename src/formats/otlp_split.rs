//! Splitting an OTLP protobuf request by trace id without decoding it.
//!
//! The repartition stage and `spanflow gen --kafka` cut every request into one request
//! per partition, each span going where its trace id says. Decoding the request into
//! prost structs and encoding the pieces again spent most of the stage's CPU on string
//! allocation, UTF-8 checks and `encoded_len` (BENCHMARKS.md, 2026-12-04, eleventh
//! session). Here only the framing is read: the trace id of each span, and the byte
//! ranges of spans, scopes and resources, which are copied into the pieces as they are.
//! The prost version (`connectors::kafka::produce::try_split_prost`) stays as the
//! reference the tests compare with, and as the fallback for what this one refuses.

use prost::encoding::{encode_varint, encoded_len_varint};

use super::dead_letter::DecodeError;
use super::wire::{Reader, WireType};

/// `ExportTraceServiceRequest.resource_spans` (field 1, length-delimited).
const RESOURCE_SPANS_KEY: u8 = 1 << 3 | 2;
/// `ResourceSpans.scope_spans` (field 2, length-delimited).
const SCOPE_SPANS_KEY: u8 = 2 << 3 | 2;

/// One `ScopeSpans`: its other fields (scope, schema URL, unknown) as raw bytes, and
/// each span's raw field (key, length and body) with the partition of its trace.
struct Scope<'a> {
    header: Vec<&'a [u8]>,
    spans: Vec<(i32, &'a [u8])>,
}

/// Splits `payload`, an `ExportTraceServiceRequest`, into one request per partition
/// that `partition_of` (given a span's trace id, empty when the span has none) names,
/// in ascending partition order. Each piece keeps, for its spans, every field of their
/// resource and scope; resources and scopes keep their order and spans their order
/// within them. Resources and scopes without spans are left out, as the prost
/// reference does.
///
/// Only the message structure is checked: a length that runs past its message, a
/// truncated varint or a group wire type is an error; a string that is not UTF-8 is
/// not (the analytics' decoder reports it, for the piece that carries it).
pub fn split_by_trace(
    payload: &[u8],
    partition_of: impl Fn(&[u8]) -> i32,
) -> Result<Vec<(i32, Vec<u8>)>, DecodeError> {
    split_by_trace_timed(payload, partition_of, 0).map(|s| s.pieces)
}

/// What [`split_by_trace_timed`] returns.
#[derive(Debug, Default)]
pub struct TimedSplit {
    /// The pieces, as [`split_by_trace`] returns them.
    pub pieces: Vec<(i32, Vec<u8>)>,
    /// The latest span end (Unix ns) not after the bound, if any span had one: the
    /// event time the analytics' watermark will see for this request.
    pub max_end_ns: Option<u64>,
}

/// [`split_by_trace`], also finding the latest span end time no later than
/// `not_after_ns` (0: none counted), for a stage that paces its inputs by event time.
/// Spans ending later (a skewed clock) do not count, as they do not move a watermark.
pub fn split_by_trace_timed(
    payload: &[u8],
    partition_of: impl Fn(&[u8]) -> i32,
    not_after_ns: u64,
) -> Result<TimedSplit, DecodeError> {
    let mut ends = Ends {
        not_after: not_after_ns,
        max: None,
    };
    let mut out: Vec<(i32, Vec<u8>)> = Vec::new();
    let mut scopes: Vec<Scope<'_>> = Vec::new();
    let mut header: Vec<&[u8]> = Vec::new();
    let mut touched: Vec<i32> = Vec::new();
    let mut r = Reader::new(payload, 0);
    while let Some((field, wt)) = r.field()? {
        if field != 1 {
            // The request has no other field; prost drops unknown ones too.
            r.skip(wt)?;
            continue;
        }
        r.expect(wt, WireType::Len, "resource_spans")?;
        let rs = r.message()?;
        scopes.clear();
        header.clear();
        touched.clear();
        read_resource_spans(
            rs,
            &partition_of,
            &mut ends,
            &mut header,
            &mut scopes,
            &mut touched,
        )?;
        touched.sort_unstable();
        touched.dedup();
        for &p in &touched {
            let piece = piece_for(&mut out, p, payload.len() / touched.len().max(1));
            write_resource_spans(piece, p, &header, &scopes);
        }
    }
    out.sort_unstable_by_key(|(p, _)| *p);
    Ok(TimedSplit {
        pieces: out,
        max_end_ns: ends.max,
    })
}

/// The latest span end seen that is not after `not_after`.
struct Ends {
    not_after: u64,
    max: Option<u64>,
}

/// Reads one `ResourceSpans` body: its non-scope fields into `header`, its scopes into
/// `scopes` (spans grouped by partition, in order within a partition), and the
/// partitions its spans go to into `touched`.
fn read_resource_spans<'a>(
    mut rs: Reader<'a>,
    partition_of: &impl Fn(&[u8]) -> i32,
    ends: &mut Ends,
    header: &mut Vec<&'a [u8]>,
    scopes: &mut Vec<Scope<'a>>,
    touched: &mut Vec<i32>,
) -> Result<(), DecodeError> {
    loop {
        let before = rs.remaining();
        let Some((field, wt)) = rs.field()? else {
            return Ok(());
        };
        if field != 2 {
            rs.skip(wt)?;
            header.push(consumed(before, &rs));
            continue;
        }
        rs.expect(wt, WireType::Len, "scope_spans")?;
        let mut ss = rs.message()?;
        let mut scope = Scope {
            header: Vec::new(),
            spans: Vec::new(),
        };
        loop {
            let before = ss.remaining();
            let Some((field, wt)) = ss.field()? else {
                break;
            };
            if field != 2 {
                ss.skip(wt)?;
                scope.header.push(consumed(before, &ss));
                continue;
            }
            ss.expect(wt, WireType::Len, "spans")?;
            let span = ss.message()?;
            let p = partition_of(trace_id(span, ends)?);
            scope.spans.push((p, consumed(before, &ss)));
            touched.push(p);
        }
        if !scope.spans.is_empty() {
            // Stable: spans keep their order within a partition.
            scope.spans.sort_by_key(|(p, _)| *p);
            scopes.push(scope);
        }
    }
}

/// A span's trace id (the last one, as protobuf merging has it), empty if it has none;
/// its end time goes to `ends` when they are counted.
fn trace_id<'a>(mut span: Reader<'a>, ends: &mut Ends) -> Result<&'a [u8], DecodeError> {
    let mut id: &[u8] = &[];
    let mut end = None;
    while let Some((field, wt)) = span.field()? {
        match field {
            1 => {
                span.expect(wt, WireType::Len, "trace_id")?;
                id = span.bytes()?;
            }
            // end_time_unix_nano (fixed64)
            8 if ends.not_after > 0 && wt == WireType::Fixed64 => end = Some(span.fixed64()?),
            _ => span.skip(wt)?,
        }
    }
    if let Some(e) = end
        && e <= ends.not_after
    {
        ends.max = Some(ends.max.map_or(e, |m| m.max(e)));
    }
    Ok(id)
}

/// The bytes `r` consumed since it had `before` left.
fn consumed<'a>(before: &'a [u8], r: &Reader<'a>) -> &'a [u8] {
    &before[..before.len() - r.remaining().len()]
}

fn piece_for(out: &mut Vec<(i32, Vec<u8>)>, p: i32, hint: usize) -> &mut Vec<u8> {
    let i = match out.iter().position(|(q, _)| *q == p) {
        Some(i) => i,
        None => {
            out.push((p, Vec::with_capacity(hint)));
            out.len() - 1
        }
    };
    &mut out[i].1
}

/// The spans of `scope` that go to partition `p` (a contiguous run: they are sorted).
fn run_of<'s, 'a>(scope: &'s Scope<'a>, p: i32) -> &'s [(i32, &'a [u8])] {
    let start = scope.spans.partition_point(|(q, _)| *q < p);
    let end = scope.spans.partition_point(|(q, _)| *q <= p);
    &scope.spans[start..end]
}

fn sum_len(fields: &[&[u8]]) -> usize {
    fields.iter().map(|f| f.len()).sum()
}

/// Appends, as an `ExportTraceServiceRequest.resource_spans` field, the resource with
/// those of its scopes and spans that go to partition `p`.
fn write_resource_spans(piece: &mut Vec<u8>, p: i32, header: &[&[u8]], scopes: &[Scope<'_>]) {
    let scope_len = |s: &Scope<'_>| {
        sum_len(&s.header) + run_of(s, p).iter().map(|(_, b)| b.len()).sum::<usize>()
    };
    let body: usize = sum_len(header)
        + scopes
            .iter()
            .filter(|s| !run_of(s, p).is_empty())
            .map(|s| {
                let n = scope_len(s);
                1 + encoded_len_varint(n as u64) + n
            })
            .sum::<usize>();
    piece.push(RESOURCE_SPANS_KEY);
    encode_varint(body as u64, piece);
    for f in header {
        piece.extend_from_slice(f);
    }
    for s in scopes {
        let spans = run_of(s, p);
        if spans.is_empty() {
            continue;
        }
        piece.push(SCOPE_SPANS_KEY);
        encode_varint(scope_len(s) as u64, piece);
        for f in &s.header {
            piece.extend_from_slice(f);
        }
        for (_, b) in spans {
            piece.extend_from_slice(b);
        }
    }
}

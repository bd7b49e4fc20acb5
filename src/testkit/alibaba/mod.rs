//! Import of Alibaba's microservice call graphs (cluster-trace-microservices, 2021 and
//! 2022 releases) as OTLP spans, so real production call graphs can be replayed
//! through a job with a `file` source.
//!
//! Each CSV row is one call from `um` to `dm`. The conversion (rules in
//! `docs/alibaba.md`):
//! - `rows`: reads either layout (detected by header, plain or gzip), skipping
//!   unusable lines with a counted [`SkipReason`], and shortens hashed names;
//! - `calls`: merges the records of one call (the caller's and the callee's) into one
//!   call; shared with [`expected_edges`] so the numbers tests compare against are
//!   counted the same way;
//! - `build`: one or two spans per call, parents found through the rpcid path, and
//!   records of `ExportTraceServiceRequest` ordered by event time.

mod build;
mod calls;
mod rows;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::formats::InputFormat;
use crate::testkit::generator::{GeneratedRecord, write_records};

/// The relative timestamps of the CSV count from this instant:
/// 2026-01-01T00:00:00Z, in unix nanoseconds.
pub const EPOCH_UNIX_NS: u64 = 1_767_225_600_000_000_000;

/// Spans per record written by [`import`].
pub const DEFAULT_SPANS_PER_RECORD: usize = 512;

/// Errors of the import. Bad rows are not errors (they are skipped and counted); these
/// stop the conversion.
#[derive(Debug, thiserror::Error)]
pub enum AlibabaError {
    /// The input file could not be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading the input failed (I/O error or corrupt gzip data).
    #[error("reading the CSV failed{}", at_line(*line))]
    Read {
        /// Line being read, when known.
        line: Option<u64>,
        /// The underlying error.
        source: io::Error,
    },
    /// The CSV itself is broken beyond a single row.
    #[error("malformed CSV{}: {message}", at_line(*line))]
    Csv {
        /// Line, when known.
        line: Option<u64>,
        /// What the CSV reader reported.
        message: String,
    },
    /// The header names neither layout.
    #[error(
        "not an Alibaba call-graph CSV: the header is `{0}`; expected the 2021 columns \
         (traceid,timestamp,rpcid,um,rpctype,dm,interface,rt) or the 2022 columns \
         (timestamp,traceid,service,rpc_id,rpctype,um,uminstanceid,interface,dm,dminstanceid,rt)"
    )]
    UnknownHeader(String),
    /// `spans_per_record` was 0.
    #[error("spans_per_record must be at least 1, found 0")]
    InvalidSpansPerRecord,
    /// Writing the output failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The output file or its directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An error while converting a named file.
    #[error("{}", path.display())]
    File {
        /// The input file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<AlibabaError>,
    },
    /// A bug in the converter.
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

fn at_line(line: Option<u64>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

/// The two CSV layouts, told apart by header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CsvLayout {
    /// 2021 release: `traceid,timestamp,rpcid,um,rpctype,dm,interface,rt`.
    #[serde(rename = "2021")]
    Y2021,
    /// 2022 release: `timestamp,traceid,service,rpc_id,rpctype,um,uminstanceid,
    /// interface,dm,dminstanceid,rt`.
    #[serde(rename = "2022")]
    Y2022,
}

impl CsvLayout {
    /// `"2021"` or `"2022"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CsvLayout::Y2021 => "2021",
            CsvLayout::Y2022 => "2022",
        }
    }
}

/// Why a row was skipped (the keys of [`ConvertStats::skipped_by_reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// Fewer fields than the header names.
    MalformedRow,
    /// A field is not UTF-8.
    InvalidUtf8,
    /// `traceid` empty or a placeholder.
    MissingTraceid,
    /// `rpcid` / `rpc_id` empty or a placeholder.
    MissingRpcid,
    /// `rpcid` is not dot-separated digit groups.
    InvalidRpcid,
    /// `timestamp` not a number, negative or absurdly large.
    InvalidTimestamp,
    /// `rt` not a number or absurdly large.
    InvalidRt,
    /// `rpctype` is none of http, rpc, db, mc, mq, userDefined (e.g. `UNKNOWN`).
    UnknownRpctype,
    /// `dm` empty or a placeholder, and no other record of the call names it.
    UnknownDm,
    /// `um` empty or a placeholder on a db, mc or userDefined call (whose only span
    /// would be the caller's), and no other record of the call names it.
    UnknownUm,
}

impl SkipReason {
    /// snake_case name, as in the stats.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MalformedRow => "malformed_row",
            SkipReason::InvalidUtf8 => "invalid_utf8",
            SkipReason::MissingTraceid => "missing_traceid",
            SkipReason::MissingRpcid => "missing_rpcid",
            SkipReason::InvalidRpcid => "invalid_rpcid",
            SkipReason::InvalidTimestamp => "invalid_timestamp",
            SkipReason::InvalidRt => "invalid_rt",
            SkipReason::UnknownRpctype => "unknown_rpctype",
            SkipReason::UnknownDm => "unknown_dm",
            SkipReason::UnknownUm => "unknown_um",
        }
    }
}

/// Why a row was folded into a call recorded by another row that names more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MergeReason {
    /// The row does not name the caller; another record of the call does.
    CallerUnknown,
    /// The row does not name the callee; another record of the call does.
    CalleeUnknown,
}

impl MergeReason {
    /// snake_case name, as in the stats.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeReason::CallerUnknown => "caller_unknown",
            MergeReason::CalleeUnknown => "callee_unknown",
        }
    }
}

/// How the first span of a call found its parent (keys of [`ConvertStats::links`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkKind {
    /// Top-level rpcid (`0`): a root span.
    Root,
    /// Under the callee span of the parent rpcid, in the caller's service.
    ParentCall,
    /// The parent rpcid has no such span; under the nearest ancestor's callee span in
    /// the caller's service.
    AncestorCall,
    /// No ancestor ran in the caller's service; under the nearest ancestor's callee
    /// span (another service), so the trace stays one tree.
    OtherService,
    /// The caller is unknown (callee-only call); under the nearest ancestor's callee
    /// span.
    UnknownCaller,
    /// No ancestor call at all: the parent id names the missing parent call (a
    /// dangling parent, as when a span is lost).
    Missing,
}

impl LinkKind {
    /// snake_case name, as in the stats.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Root => "root",
            LinkKind::ParentCall => "parent_call",
            LinkKind::AncestorCall => "ancestor_call",
            LinkKind::OtherService => "other_service",
            LinkKind::UnknownCaller => "unknown_caller",
            LinkKind::Missing => "missing_parent",
        }
    }
}

/// What a conversion did. Every data row ends up in exactly one of `calls`,
/// `duplicate_rows`, `merged_rows` and `skipped_rows`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConvertStats {
    /// The layout detected.
    pub layout: Option<CsvLayout>,
    /// Data rows read (header excluded).
    pub rows: u64,
    /// Distinct calls kept (each from its first row).
    pub calls: u64,
    /// Rows repeating the (traceid, rpcid, um, dm, rpctype) of a kept call.
    pub duplicate_rows: u64,
    /// Rows naming one end less than another record of the same call, merged into it.
    pub merged_rows: u64,
    /// `merged_rows` per [`MergeReason`].
    pub merged_by_reason: BTreeMap<String, u64>,
    /// Rows not used.
    pub skipped_rows: u64,
    /// `skipped_rows` per [`SkipReason`].
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// First CSV line (1-based, header = 1) skipped for each reason.
    pub first_skipped_line: BTreeMap<String, u64>,
    /// Calls per spanflow call type (`http`, `rpc`, `db`, `cache`, `mq`, `local`).
    pub calls_by_type: BTreeMap<String, u64>,
    /// Calls the CSV gives no caller for (`user`: from outside; `unknown`): only the
    /// callee's span is emitted.
    pub calls_without_caller: BTreeMap<String, u64>,
    /// Traces (distinct traceids with at least one call kept).
    pub traces: u64,
    /// Spans emitted.
    pub spans: u64,
    /// Spans per call type, as the classifier derives it from their attributes.
    pub spans_by_call_type: BTreeMap<String, u64>,
    /// Spans per kind (`client`, `server`, `producer`, `consumer`, `internal`).
    pub spans_by_kind: BTreeMap<String, u64>,
    /// How each call's first span found its parent, per [`LinkKind`].
    pub links: BTreeMap<String, u64>,
    /// Calls moved (by at most 1 s) to start with their parent span.
    pub shifted_into_parent: u64,
    /// Calls starting more than 1 s before their parent span (left as they are).
    pub starts_before_parent: u64,
    /// Calls ending after their parent span (left as they are).
    pub ends_after_parent: u64,
    /// Distinct hashed names that shortened to a name already taken.
    pub name_collisions: u64,
    /// Records produced.
    pub records: u64,
}

impl ConvertStats {
    /// A few lines for the terminal.
    pub fn render(&self) -> String {
        fn map(m: &BTreeMap<String, u64>) -> String {
            if m.is_empty() {
                return "-".to_owned();
            }
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
        let mut s = String::new();
        let layout = self.layout.map_or("?", CsvLayout::as_str);
        let _ = writeln!(
            s,
            "rows      {} ({layout} layout): {} calls, {} duplicates, {} merged ({}), {} skipped ({})",
            self.rows,
            self.calls,
            self.duplicate_rows,
            self.merged_rows,
            map(&self.merged_by_reason),
            self.skipped_rows,
            map(&self.skipped_by_reason)
        );
        let _ = writeln!(s, "calls     {}", map(&self.calls_by_type));
        let _ = writeln!(s, "no caller {}", map(&self.calls_without_caller));
        let _ = writeln!(
            s,
            "output    {} traces, {} spans in {} records",
            self.traces, self.spans, self.records
        );
        let _ = writeln!(s, "spans     {}", map(&self.spans_by_call_type));
        let _ = writeln!(s, "kinds     {}", map(&self.spans_by_kind));
        let _ = writeln!(s, "parents   {}", map(&self.links));
        let _ = writeln!(
            s,
            "times     {} shifted into parent, {} start >1s before parent, {} end after parent",
            self.shifted_into_parent, self.starts_before_parent, self.ends_after_parent
        );
        if self.name_collisions > 0 {
            let _ = writeln!(
                s,
                "warning   {} hashed names share their short name with another",
                self.name_collisions
            );
        }
        s
    }
}

/// A (source, target, call type) triple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Edge {
    /// Calling service (`um`, shortened).
    pub source: String,
    /// Called service, database, cache or consumer (`dm`, shortened).
    pub target: String,
    /// spanflow call type name.
    pub call_type: String,
}

/// What the CSV says directly, after the same selection as the conversion: the
/// numbers tests (and later operators) are checked against.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExpectedCounts {
    /// Traces with at least one call kept.
    pub traces: u64,
    /// Calls per call type.
    pub calls_by_type: BTreeMap<String, u64>,
    /// Spans the conversion emits per call type: two for an http, rpc or mq call with
    /// both ends named, one otherwise.
    pub spans_by_type: BTreeMap<String, u64>,
    /// Calls per (um, dm, call type) for calls whose caller is named, all call types
    /// (a db/cache call's target is its peer; a userDefined call is `um -> um`).
    pub calls: BTreeMap<Edge, u64>,
}

impl ExpectedCounts {
    /// The edges `service_relation` must find: http, rpc and mq calls between two
    /// different named services (a server or consumer span whose parent is another
    /// service's client or producer span).
    pub fn relations(&self) -> BTreeMap<Edge, u64> {
        self.calls
            .iter()
            .filter(|(e, _)| {
                matches!(e.call_type.as_str(), "http" | "rpc" | "mq") && e.source != e.target
            })
            .map(|(e, n)| (e.clone(), *n))
            .collect()
    }
}

/// Opens a CSV file, plain or gzip (told by its first two bytes, not its name).
pub fn open_csv(path: &Path) -> Result<Box<dyn Read>, AlibabaError> {
    let open = || {
        File::open(path).map_err(|source| AlibabaError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut magic = [0u8; 2];
    let mut f = open()?;
    let n = read_up_to(&mut f, &mut magic).map_err(|source| AlibabaError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let f = BufReader::with_capacity(1 << 16, open()?);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            f,
        ))))
    } else {
        Ok(Box::new(f))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Converts a call-graph CSV (plain text; see [`open_csv`] for gzip) into OTLP records
/// of at most `spans_per_record` spans, ordered by span end time.
pub fn convert(
    input: impl Read,
    format: InputFormat,
    spans_per_record: usize,
) -> Result<(Vec<GeneratedRecord>, ConvertStats), AlibabaError> {
    if spans_per_record == 0 {
        return Err(AlibabaError::InvalidSpansPerRecord);
    }
    let sel = calls::select_calls(input)?;
    let mut stats = ConvertStats {
        layout: Some(sel.layout),
        rows: sel.lines,
        duplicate_rows: sel.duplicate_rows,
        name_collisions: sel.name_collisions,
        traces: sel.traces.len() as u64,
        ..Default::default()
    };
    for (reason, (n, first)) in &sel.skipped {
        stats.skipped_rows += n;
        stats
            .skipped_by_reason
            .insert(reason.as_str().to_owned(), *n);
        stats
            .first_skipped_line
            .insert(reason.as_str().to_owned(), *first);
    }
    for (reason, n) in &sel.merged {
        stats.merged_rows += n;
        stats
            .merged_by_reason
            .insert(reason.as_str().to_owned(), *n);
    }
    for call in sel.traces.iter().flat_map(|t| &t.calls) {
        stats.calls += 1;
        *stats
            .calls_by_type
            .entry(call.rpctype.call_type().to_owned())
            .or_default() += 1;
        let without = match call.caller {
            rows::Party::Service(_) => None,
            rows::Party::User => Some("user"),
            rows::Party::Unknown => Some("unknown"),
        };
        if let Some(w) = without {
            *stats.calls_without_caller.entry(w.to_owned()).or_default() += 1;
        }
    }
    let mut bstats = build::BuildStats::default();
    let spans = build::build_spans(&sel.traces, &mut bstats);
    stats.spans = spans.len() as u64;
    stats.spans_by_call_type = bstats.spans_by_call_type;
    stats.spans_by_kind = bstats.spans_by_kind;
    stats.links = bstats
        .links
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    stats.shifted_into_parent = bstats.shifted_into_parent;
    stats.starts_before_parent = bstats.starts_before_parent;
    stats.ends_after_parent = bstats.ends_after_parent;
    let records = build::encode_records(spans, format, spans_per_record)?;
    stats.records = records.len() as u64;
    Ok((records, stats))
}

/// [`convert`] on a file, plain or gzip.
pub fn convert_file(
    path: &Path,
    format: InputFormat,
    spans_per_record: usize,
) -> Result<(Vec<GeneratedRecord>, ConvertStats), AlibabaError> {
    in_file(path, || convert(open_csv(path)?, format, spans_per_record))
}

fn in_file<T>(path: &Path, f: impl FnOnce() -> Result<T, AlibabaError>) -> Result<T, AlibabaError> {
    f().map_err(|e| match e {
        e @ AlibabaError::Open { .. } => e,
        e => AlibabaError::File {
            path: path.to_path_buf(),
            source: Box::new(e),
        },
    })
}

/// Per (upstream service, downstream service, call type) the number of calls, per
/// call type the numbers of calls and spans, and the number of traces, counted from
/// the CSV with the same selection (skip, dedup and merge rules) as [`convert`] but
/// without building spans.
pub fn expected_edges(input: impl Read) -> Result<ExpectedCounts, AlibabaError> {
    let sel = calls::select_calls(input)?;
    let mut out = ExpectedCounts {
        traces: sel.traces.len() as u64,
        ..Default::default()
    };
    for call in sel.traces.iter().flat_map(|t| &t.calls) {
        let ct = call.rpctype.call_type();
        *out.calls_by_type.entry(ct.to_owned()).or_default() += 1;
        let caller = call.caller_service();
        let spans = u64::from(caller.is_some()) + u64::from(call.rpctype.has_callee_side());
        *out.spans_by_type.entry(ct.to_owned()).or_default() += spans;
        if let Some(source) = caller {
            *out.calls
                .entry(Edge {
                    source: source.to_owned(),
                    target: call.callee.clone(),
                    call_type: ct.to_owned(),
                })
                .or_default() += 1;
        }
    }
    Ok(out)
}

/// [`expected_edges`] on a file, plain or gzip.
pub fn expected_edges_file(path: &Path) -> Result<ExpectedCounts, AlibabaError> {
    in_file(path, || expected_edges(open_csv(path)?))
}

/// `spanflow import-alibaba`: converts `input` and writes the records to `out` with the
/// `file` source's framing, creating `out`'s directory.
pub fn import(input: &Path, out: &Path, format: InputFormat) -> Result<ConvertStats, AlibabaError> {
    let (records, stats) = convert_file(input, format, DEFAULT_SPANS_PER_RECORD)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AlibabaError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_records(out, format, records).map_err(|source| AlibabaError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(stats)
}

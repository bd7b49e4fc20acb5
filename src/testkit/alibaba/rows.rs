//! Reading the CSV: layout detection by header, one [`Row`] per usable line, a counted
//! reason for every other line, and the naming rules for hashed names.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use super::{AlibabaError, CsvLayout, SkipReason};

/// Largest relative timestamp accepted, in ms (about 31 years): keeps
/// `epoch + timestamp` far from overflowing u64 nanoseconds.
const MAX_TIMESTAMP_MS: f64 = 1e12;

/// Largest |rt| accepted, in ms (about 11.6 days).
const MAX_RT_MS: f64 = 1e9;

/// Names at least this long made only of hex digits are hashes and get shortened.
const HASHED_NAME_MIN_LEN: usize = 32;

/// Hex digits kept from a hashed name.
const SHORT_HEX: usize = 8;

/// The kinds of call in the `rpctype` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum RpcType {
    /// `http`
    Http,
    /// `rpc`
    Rpc,
    /// `db`
    Db,
    /// `mc`: memcached.
    Mc,
    /// `mq`
    Mq,
    /// `userDefined` (2021): an instrumented method inside `um`.
    UserDefined,
}

impl RpcType {
    fn parse(s: &str) -> Option<RpcType> {
        let s = s.trim();
        [
            ("http", RpcType::Http),
            ("rpc", RpcType::Rpc),
            ("db", RpcType::Db),
            ("mc", RpcType::Mc),
            ("mq", RpcType::Mq),
            ("userdefined", RpcType::UserDefined),
        ]
        .into_iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map(|(_, t)| t)
    }

    /// The value as the CSV spells it (for the `alibaba.rpc_type` attribute).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RpcType::Http => "http",
            RpcType::Rpc => "rpc",
            RpcType::Db => "db",
            RpcType::Mc => "mc",
            RpcType::Mq => "mq",
            RpcType::UserDefined => "userDefined",
        }
    }

    /// spanflow's call type name for spans of this kind of call.
    pub(super) fn call_type(self) -> &'static str {
        match self {
            RpcType::Http => "http",
            RpcType::Rpc => "rpc",
            RpcType::Db => "db",
            RpcType::Mc => "cache",
            RpcType::Mq => "mq",
            RpcType::UserDefined => "local",
        }
    }

    /// True when the callee is a service that records its own span (server or
    /// consumer side).
    pub(super) fn has_callee_side(self) -> bool {
        matches!(self, RpcType::Http | RpcType::Rpc | RpcType::Mq)
    }
}

/// Who is on one end of a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Party {
    /// A named service (already shortened).
    Service(String),
    /// `USER`: the call came from outside the fleet.
    User,
    /// Empty, `UNKNOWN`, `UNAVAILABLE`, `(?)`, `?`, `NaN`, `null`.
    Unknown,
}

impl Party {
    pub(super) fn service(&self) -> Option<&str> {
        match self {
            Party::Service(s) => Some(s),
            _ => None,
        }
    }
}

/// One usable CSV line.
#[derive(Debug, Clone)]
pub(super) struct Row {
    /// 1-based line number in the CSV (the header is line 1).
    pub line: u64,
    pub traceid: String,
    pub timestamp_ms: f64,
    /// Dotted call path, validated: non-empty digit groups.
    pub rpcid: String,
    pub rpctype: RpcType,
    pub um: Party,
    pub dm: Party,
    pub um_instance: Option<String>,
    pub dm_instance: Option<String>,
    /// Shortened like service names; empty when the CSV has none.
    pub interface: String,
    /// |rt| in ms.
    pub rt_abs_ms: f64,
}

/// Column indexes of the fields we read.
struct Columns {
    traceid: usize,
    timestamp: usize,
    rpcid: usize,
    um: usize,
    rpctype: usize,
    dm: usize,
    interface: usize,
    rt: usize,
    um_instance: Option<usize>,
    dm_instance: Option<usize>,
}

impl Columns {
    fn from_header(names: &[String]) -> Result<(CsvLayout, Columns), AlibabaError> {
        let find = |n: &str| names.iter().position(|h| h == n);
        let (layout, rpcid) = match (find("rpcid"), find("rpc_id")) {
            (Some(i), None) => (CsvLayout::Y2021, i),
            (None, Some(i)) => (CsvLayout::Y2022, i),
            _ => return Err(AlibabaError::UnknownHeader(names.join(","))),
        };
        let need = |n: &str| find(n).ok_or_else(|| AlibabaError::UnknownHeader(names.join(",")));
        let cols = Columns {
            traceid: need("traceid")?,
            timestamp: need("timestamp")?,
            rpcid,
            um: need("um")?,
            rpctype: need("rpctype")?,
            dm: need("dm")?,
            interface: need("interface")?,
            rt: need("rt")?,
            um_instance: find("uminstanceid"),
            dm_instance: find("dminstanceid"),
        };
        Ok((layout, cols))
    }
}

/// Maps raw names to short ones, remembering which raw name took each short name so
/// that two hashes sharing a prefix are noticed.
#[derive(Default)]
pub(super) struct Names {
    short: HashMap<String, String>,
    owner: HashMap<String, String>,
    /// Distinct raw names that got a short name another raw name already had.
    pub collisions: u64,
}

impl Names {
    /// The short form of `raw` with `prefix` for hashed names (see [`shorten`]).
    fn get(&mut self, raw: &str, prefix: &str) -> String {
        if let Some(s) = self.short.get(raw) {
            return s.clone();
        }
        let s = shorten(raw, prefix);
        match self.owner.get(&s) {
            Some(o) if o != raw => self.collisions += 1,
            Some(_) => {}
            None => {
                self.owner.insert(s.clone(), raw.to_owned());
            }
        }
        self.short.insert(raw.to_owned(), s.clone());
        s
    }
}

/// `<prefix>-<first 8 hex digits, lower case>` for names of 32 or more hex digits (the
/// 2021 release hashes service and interface names with SHA-256); other names as they
/// are.
pub(super) fn shorten(raw: &str, prefix: &str) -> String {
    if raw.len() >= HASHED_NAME_MIN_LEN && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{prefix}-{}", raw[..SHORT_HEX].to_ascii_lowercase())
    } else {
        raw.to_owned()
    }
}

fn is_unknown(s: &str) -> bool {
    s.is_empty()
        || ["UNKNOWN", "UNAVAILABLE", "(?)", "?", "NAN", "NULL", "NONE"]
            .iter()
            .any(|u| s.eq_ignore_ascii_case(u))
}

fn party(raw: &str, services: &mut Names) -> Party {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("USER") {
        Party::User
    } else if is_unknown(raw) {
        Party::Unknown
    } else {
        Party::Service(services.get(raw, "svc"))
    }
}

fn instance(raw: Option<&str>) -> Option<String> {
    let raw = raw?.trim();
    (!is_unknown(raw) && !raw.eq_ignore_ascii_case("USER")).then(|| raw.to_owned())
}

fn valid_rpcid(s: &str) -> bool {
    s.split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// What reading the CSV produced.
pub(super) struct ReadRows {
    pub layout: CsvLayout,
    pub rows: Vec<Row>,
    /// Data lines read (header excluded).
    pub lines: u64,
    pub skipped: BTreeMap<SkipReason, (u64, u64)>,
    /// Service names (`svc-` prefix for hashes).
    pub services: Names,
    /// Interface names (`op-` prefix for hashes).
    pub interfaces: Names,
}

impl ReadRows {
    fn skip(&mut self, reason: SkipReason, line: u64) {
        let e = self.skipped.entry(reason).or_insert((0, line));
        e.0 += 1;
    }
}

/// Reads every line of a CSV in either layout. Lines that cannot be used are counted
/// by reason; only a broken stream or an unknown header is an error.
pub(super) fn read_rows(input: impl Read) -> Result<ReadRows, AlibabaError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    let header = reader.byte_headers().map_err(csv_error)?.clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase()
        })
        .collect();
    if names.iter().all(String::is_empty) {
        return Err(AlibabaError::UnknownHeader(String::new()));
    }
    let (layout, cols) = Columns::from_header(&names)?;
    let mut out = ReadRows {
        layout,
        rows: Vec::new(),
        lines: 0,
        skipped: BTreeMap::new(),
        services: Names::default(),
        interfaces: Names::default(),
    };
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).map_err(csv_error)? {
        out.lines += 1;
        let line = record.position().map_or(out.lines + 1, |p| p.line());
        match parse_row(&record, &cols, line, &mut out.services, &mut out.interfaces) {
            Ok(row) => out.rows.push(row),
            Err(reason) => out.skip(reason, line),
        }
    }
    Ok(out)
}

fn csv_error(e: csv::Error) -> AlibabaError {
    let line = e.position().map(|p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(source) => AlibabaError::Read { line, source },
        other => AlibabaError::Csv {
            line,
            message: format!("{other:?}"),
        },
    }
}

fn parse_row(
    record: &csv::ByteRecord,
    cols: &Columns,
    line: u64,
    services: &mut Names,
    interfaces: &mut Names,
) -> Result<Row, SkipReason> {
    let field = |i: usize| -> Result<&str, SkipReason> {
        let bytes = record.get(i).ok_or(SkipReason::MalformedRow)?;
        std::str::from_utf8(bytes)
            .map(str::trim)
            .map_err(|_| SkipReason::InvalidUtf8)
    };
    let opt_field = |i: Option<usize>| -> Result<Option<&str>, SkipReason> {
        match i {
            Some(i) => field(i).map(Some),
            None => Ok(None),
        }
    };
    // Every column is read first, so a short or non-UTF-8 line is reported as such
    // rather than by whichever value check comes first.
    let traceid = field(cols.traceid)?;
    let timestamp = field(cols.timestamp)?;
    let rpcid = field(cols.rpcid)?;
    let um = field(cols.um)?;
    let rpctype = field(cols.rpctype)?;
    let dm = field(cols.dm)?;
    let interface = field(cols.interface)?;
    let rt = field(cols.rt)?;
    let um_instance = opt_field(cols.um_instance)?;
    let dm_instance = opt_field(cols.dm_instance)?;

    if traceid.is_empty() || is_unknown(traceid) {
        return Err(SkipReason::MissingTraceid);
    }
    if rpcid.is_empty() || is_unknown(rpcid) {
        return Err(SkipReason::MissingRpcid);
    }
    if !valid_rpcid(rpcid) {
        return Err(SkipReason::InvalidRpcid);
    }
    let timestamp_ms = timestamp
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && (0.0..=MAX_TIMESTAMP_MS).contains(t))
        .ok_or(SkipReason::InvalidTimestamp)?;
    let rt_abs_ms = rt
        .parse::<f64>()
        .ok()
        .map(f64::abs)
        .filter(|r| r.is_finite() && *r <= MAX_RT_MS)
        .ok_or(SkipReason::InvalidRt)?;
    let rpctype = RpcType::parse(rpctype).ok_or(SkipReason::UnknownRpctype)?;
    let um = party(um, services);
    let dm = party(dm, services);
    let interface = if is_unknown(interface) {
        String::new()
    } else {
        interfaces.get(interface, "op")
    };
    Ok(Row {
        line,
        traceid: traceid.to_owned(),
        timestamp_ms,
        rpcid: rpcid.to_owned(),
        rpctype,
        um,
        dm,
        um_instance: instance(um_instance),
        dm_instance: instance(dm_instance),
        interface,
        rt_abs_ms,
    })
}

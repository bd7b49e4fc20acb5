//! From rows to calls: one call per distinct (traceid, rpcid, um, dm, rpctype), with
//! the records of the same call made by its two ends merged. Shared by the conversion
//! and by [`super::expected_edges`], so both count exactly the same calls.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use super::rows::{Party, ReadRows, Row, RpcType, read_rows};
use super::{AlibabaError, CsvLayout, MergeReason, SkipReason};

/// One call after deduplication.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub rpcid: String,
    /// Number of dot-separated groups in `rpcid`.
    pub depth: usize,
    pub rpctype: RpcType,
    /// The calling service; `User` or `Unknown` for a call seen only by its callee.
    pub caller: Party,
    /// The called service (or database, cache, consumer).
    pub callee: String,
    pub caller_instance: Option<String>,
    pub callee_instance: Option<String>,
    pub interface: String,
    /// Earliest timestamp among the merged rows, ms.
    pub timestamp_ms: f64,
    /// Largest |rt| among the merged rows (the caller's view), ms.
    pub rt_max_ms: f64,
    /// Smallest |rt| among the merged rows (the callee's view), ms.
    pub rt_min_ms: f64,
    /// CSV line of the first row.
    pub line: u64,
}

impl Call {
    fn new(row: Row, callee: String) -> Call {
        Call {
            depth: row.rpcid.split('.').count(),
            rpcid: row.rpcid,
            rpctype: row.rpctype,
            caller: row.um,
            callee,
            caller_instance: row.um_instance,
            callee_instance: row.dm_instance,
            interface: row.interface,
            timestamp_ms: row.timestamp_ms,
            rt_max_ms: row.rt_abs_ms,
            rt_min_ms: row.rt_abs_ms,
            line: row.line,
        }
    }

    /// Folds another record of the same call in. Every choice is order-independent
    /// (min/max), so shuffling the CSV does not change the output.
    fn absorb(&mut self, row: &Row) {
        self.timestamp_ms = self.timestamp_ms.min(row.timestamp_ms);
        self.rt_max_ms = self.rt_max_ms.max(row.rt_abs_ms);
        self.rt_min_ms = self.rt_min_ms.min(row.rt_abs_ms);
        self.line = self.line.min(row.line);
        min_into(&mut self.interface, &row.interface);
        min_opt_into(&mut self.caller_instance, &row.um_instance);
        min_opt_into(&mut self.callee_instance, &row.dm_instance);
    }

    /// The caller's service when the CSV names it.
    pub(super) fn caller_service(&self) -> Option<&str> {
        self.caller.service()
    }
}

/// Keeps the smallest non-empty string.
fn min_into(dst: &mut String, src: &str) {
    if !src.is_empty() && (dst.is_empty() || src < dst.as_str()) {
        src.clone_into(dst);
    }
}

fn min_opt_into(dst: &mut Option<String>, src: &Option<String>) {
    if let Some(s) = src
        && dst.as_ref().is_none_or(|d| s < d)
    {
        *dst = Some(s.clone());
    }
}

/// The calls of one trace, sorted parents first (by depth, then rpcid, time).
#[derive(Debug)]
pub(super) struct TraceCalls {
    pub traceid: String,
    pub calls: Vec<Call>,
}

/// Everything selection decided, for the stats.
pub(super) struct Selected {
    pub layout: CsvLayout,
    pub traces: Vec<TraceCalls>,
    pub lines: u64,
    /// Per reason: (rows, first line).
    pub skipped: BTreeMap<SkipReason, (u64, u64)>,
    pub duplicate_rows: u64,
    pub merged: BTreeMap<MergeReason, u64>,
    pub name_collisions: u64,
}

impl Selected {
    fn skip(&mut self, reason: SkipReason, line: u64) {
        let e = self.skipped.entry(reason).or_insert((0, line));
        e.0 += 1;
        e.1 = e.1.min(line);
    }
}

/// Reads the CSV and selects the calls.
pub(super) fn select_calls(input: impl Read) -> Result<Selected, AlibabaError> {
    let ReadRows {
        layout,
        rows,
        lines,
        skipped,
        services,
        interfaces,
    } = read_rows(input)?;
    let mut by_trace: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in rows {
        by_trace.entry(row.traceid.clone()).or_default().push(row);
    }
    let mut sel = Selected {
        layout,
        traces: Vec::with_capacity(by_trace.len()),
        lines,
        skipped,
        duplicate_rows: 0,
        merged: BTreeMap::new(),
        name_collisions: services.collisions + interfaces.collisions,
    };
    for (traceid, rows) in by_trace {
        let calls = select_trace(rows, &mut sel);
        if !calls.is_empty() {
            sel.traces.push(TraceCalls { traceid, calls });
        }
    }
    Ok(sel)
}

/// Exact identity of a call within a trace; `None` caller = not named by the CSV.
type Key = (String, Option<String>, String, RpcType);

fn select_trace(rows: Vec<Row>, sel: &mut Selected) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut no_caller = Vec::new();
    let mut no_callee = Vec::new();
    // 1. Rows naming both ends: one call per key.
    for row in rows {
        let callee = match &row.dm {
            Party::Service(s) => s.clone(),
            _ => {
                no_callee.push(row);
                continue;
            }
        };
        let Party::Service(caller) = &row.um else {
            no_caller.push((row, callee));
            continue;
        };
        let key = (
            row.rpcid.clone(),
            Some(caller.clone()),
            callee.clone(),
            row.rpctype,
        );
        match index.get(&key) {
            Some(&i) => {
                calls[i].absorb(&row);
                sel.duplicate_rows += 1;
            }
            None => {
                index.insert(key, calls.len());
                calls.push(Call::new(row, callee));
            }
        }
    }
    // 2. Rows without a caller: the callee's record of a call whose caller's record
    //    names both ends (merged into it), else a call seen only by its callee (for
    //    http, rpc and mq, whose callee records a span) or unusable.
    //    `USER` is a statement (the call came from outside), never merged away.
    for (row, callee) in no_caller {
        if row.um == Party::Unknown
            && let Some(i) = best_match(&calls, |c| {
                c.caller_service().is_some()
                    && c.rpcid == row.rpcid
                    && c.callee == callee
                    && c.rpctype == row.rpctype
            })
        {
            calls[i].absorb(&row);
            *sel.merged.entry(MergeReason::CallerUnknown).or_default() += 1;
            continue;
        }
        if !row.rpctype.has_callee_side() {
            sel.skip(SkipReason::UnknownUm, row.line);
            continue;
        }
        let key = (row.rpcid.clone(), None, callee.clone(), row.rpctype);
        match index.get(&key) {
            Some(&i) => {
                calls[i].absorb(&row);
                sel.duplicate_rows += 1;
            }
            None => {
                index.insert(key, calls.len());
                calls.push(Call::new(row, callee));
            }
        }
    }
    // 3. Rows without a callee: merged into the record of the same call that names
    //    it, else unusable (no service to put the callee's span in, no peer).
    for row in no_callee {
        let matched = match &row.um {
            Party::Service(um) => best_match(&calls, |c| {
                c.caller_service() == Some(um.as_str())
                    && c.rpcid == row.rpcid
                    && c.rpctype == row.rpctype
            }),
            _ => None,
        };
        match matched {
            Some(i) => {
                calls[i].absorb(&row);
                *sel.merged.entry(MergeReason::CalleeUnknown).or_default() += 1;
            }
            None => sel.skip(SkipReason::UnknownDm, row.line),
        }
    }
    calls.sort_by(|a, b| {
        (a.depth, &a.rpcid)
            .cmp(&(b.depth, &b.rpcid))
            .then(a.timestamp_ms.total_cmp(&b.timestamp_ms))
            .then_with(|| (a.rpctype, &a.caller, &a.callee).cmp(&(b.rpctype, &b.caller, &b.callee)))
    });
    calls
}

/// Of the calls matching `pred`, the one with the smallest (caller, callee) names, so
/// the choice does not depend on row order.
fn best_match(calls: &[Call], pred: impl Fn(&Call) -> bool) -> Option<usize> {
    calls
        .iter()
        .enumerate()
        .filter(|(_, c)| pred(c))
        .min_by(|(_, a), (_, b)| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee)))
        .map(|(i, _)| i)
}

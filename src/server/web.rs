//! The server's web pages, rendered on the server (no scripts from elsewhere): the job
//! list with a submit form, a job's page (its DAG, live service map and RED table with
//! an exemplar link per service) and a trace's waterfall from the job's `spans` output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use spanflow_operators::metrics::{Metric, SeriesAgg, quantile_from_buckets};

use super::api::{AppState, JobView};
use super::jobs::{JobHandle, JobState};
use crate::job::{Job, SinkKind, SourceKind};

/// HTML-escapes text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.state-running{color:#0a7}.state-failed{color:#c22}.state-finished{color:#555}\
textarea{width:100%;height:160px;font:12px monospace}button{margin:4px 0}\
.bar{position:absolute;height:14px;top:3px;background:#4a8cd8;border-radius:2px}\
.bar.err{background:#d84a4a}.row{position:relative;height:20px}\
.wf td{padding:2px 8px}.lane{position:relative;width:600px;height:20px;background:#fafafa}\
pre.diag{color:#c22;white-space:pre-wrap}";

fn page(title: &str, refresh: bool, body: &str) -> Html<String> {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}<title>{} — spanflow</title>\
         <style>{STYLE}</style></head><body><p><a href=\"/\">spanflow</a></p>{body}</body></html>",
        esc(title)
    ))
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page("not found", false, &format!("<h1>{}</h1>", esc(what))),
    )
        .into_response()
}

/// `GET /`: every job, a submit form and stop buttons.
pub async fn index(State(state): State<Arc<AppState>>) -> Html<String> {
    let mut rows = String::new();
    for h in state.jobs.list() {
        let v = JobView::of(&h);
        let r = h.record();
        let stop = if r.state == JobState::Running {
            format!(
                "<button class=\"stop\" onclick=\"act('/api/v1/jobs/{0}/stop','POST')\">stop</button> \
                 <button onclick=\"act('/api/v1/jobs/{0}','DELETE')\">cancel</button>",
                esc(&r.id)
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr class=\"job\" data-id=\"{id}\"><td><a href=\"/jobs/{id}\">{id}</a></td><td>{name}</td>\
             <td class=\"state-{state}\">{state}</td><td class=\"n\">{spans}</td><td class=\"n\">{rate:.0}</td>\
             <td class=\"n\">{open}</td><td>{started}</td><td>{stop}</td></tr>",
            id = esc(&r.id),
            name = esc(&r.name),
            state = r.state.as_str(),
            spans = h.live.spans.load(Ordering::Relaxed),
            rate = v.spans_per_second(),
            open = h.live.open_traces.load(Ordering::Relaxed),
            started = esc(&v.started_at()),
        );
    }
    let body = format!(
        "<h1>Jobs</h1><table id=\"jobs\"><tr><th>id</th><th>name</th><th>state</th><th>spans</th>\
         <th>spans/s</th><th>open traces</th><th>started</th><th></th></tr>{rows}</table>\
         <h2>Submit a job</h2><p>A job definition (YAML). Paths in it are the server's: \
         <code>spanflow submit</code> inlines rollup SQL files for you.</p>\
         <textarea id=\"def\" spellcheck=\"false\"></textarea><br>\
         <button id=\"submit\" onclick=\"submitJob()\">submit</button><pre class=\"diag\" id=\"out\"></pre>\
         <script>\
         async function act(url,method){{await fetch(url,{{method}});location.reload();}}\
         async function submitJob(){{const r=await fetch('/api/v1/jobs',{{method:'POST',\
         headers:{{'content-type':'application/yaml'}},body:document.getElementById('def').value}});\
         const j=await r.json();if(r.status==201){{location.href='/jobs/'+j.id;return;}}\
         document.getElementById('out').textContent=j.error+'\\n'+(j.diagnostics||[])\
         .map(d=>d.line+':'+d.column+': '+d.key+': '+d.message).join('\\n');}}\
         </script>"
    );
    page("jobs", false, &body)
}

/// A service's RED row: every entry operation of it added up.
struct RedRow {
    service: String,
    agg: SeriesAgg,
}

/// `GET /jobs/{id}`: the job's figures, DAG, service map and RED table.
pub async fn job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(h) = state.jobs.get(&id) else {
        return not_found(&format!("no job `{id}`"));
    };
    let r = h.record();
    let v = JobView::of(&h);
    let mut body = format!(
        "<h1>{} <small class=\"state-{}\">{}</small></h1>",
        esc(&r.id),
        r.state.as_str(),
        r.state.as_str()
    );
    let _ = write!(
        body,
        "<table id=\"figures\"><tr><th>spans</th><th>spans/s</th><th>open traces</th><th>traces closed</th>\
         <th>dead letters</th><th>watermark</th><th>last checkpoint</th></tr><tr><td class=\"n\">{}</td>\
         <td class=\"n\">{:.0}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr></table>",
        h.live.spans.load(Ordering::Relaxed),
        v.spans_per_second(),
        h.live.open_traces.load(Ordering::Relaxed),
        h.live.traces_closed.load(Ordering::Relaxed),
        v.dead_letters(),
        esc(v.watermark().unwrap_or("-")),
        esc(&v.last_checkpoint_at().unwrap_or_else(|| "-".into())),
    );
    if let Some(e) = &r.error {
        let _ = write!(body, "<pre class=\"diag\">{}</pre>", esc(e));
    }
    if r.state == JobState::Running {
        let _ = write!(
            body,
            "<p><button onclick=\"fetch('/api/v1/jobs/{0}/stop',{{method:'POST'}}).then(()=>location.reload())\">stop</button></p>",
            esc(&r.id)
        );
    }
    body.push_str("<h2>Graph</h2>");
    body.push_str(&dag_svg(&h.job));
    let (red, edges, bounds) = live_series(&h);
    body.push_str("<h2>Service map</h2>");
    body.push_str(&service_map_svg(&edges));
    body.push_str(
        "<h2>RED per service</h2><table id=\"red\"><tr><th>service</th><th>requests</th><th>errors</th>\
         <th>error %</th><th>p50</th><th>p99</th><th>exemplar</th></tr>",
    );
    for row in &red {
        let a = &row.agg;
        let q = |q| {
            quantile_from_buckets(&bounds, &a.counts, q)
                .map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1e3))
        };
        // The slowest bucket that has one: the trace worth opening.
        let link = a
            .exemplars
            .iter()
            .rev()
            .flatten()
            .next()
            .map_or(String::new(), |e| {
                format!(
                    "<a class=\"exemplar\" href=\"/jobs/{}/traces/{}\">{:.1} ms</a>",
                    esc(&r.id),
                    e.trace_id,
                    e.value_ns as f64 / 1e6
                )
            });
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{link}</td></tr>",
            esc(&row.service),
            a.requests,
            a.errors,
            if a.requests > 0 {
                100.0 * a.errors as f64 / a.requests as f64
            } else {
                0.0
            },
            q(0.5),
            q(0.99),
        );
    }
    body.push_str("</table>");
    page(&r.id, r.state == JobState::Running, &body).into_response()
}

/// An edge of the service map: caller, callee, calls, failed calls.
type Edge = (String, String, u64, u64);

/// The RED rows per service (entry spans), the service graph's edges and the
/// histogram bounds, from the job's live series.
fn live_series(h: &JobHandle) -> (Vec<RedRow>, Vec<Edge>, Vec<f64>) {
    let mut per_service: BTreeMap<String, SeriesAgg> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut bounds = Vec::new();
    let Ok(m) = h.live.metrics.lock() else {
        return (Vec::new(), Vec::new(), bounds);
    };
    for c in m.iter().flat_map(|m| m.values()) {
        for (key, agg) in c.series() {
            match key.metric {
                Metric::ServiceServer => {
                    bounds = c.bounds().to_vec();
                    per_service
                        .entry(key.service.as_str().to_owned())
                        .or_insert_with(|| SeriesAgg::new(agg.counts.len()))
                        .merge(agg);
                }
                Metric::ServiceRelation => {
                    let e = edges
                        .entry((
                            key.service.as_str().to_owned(),
                            key.peer.as_str().to_owned(),
                        ))
                        .or_default();
                    e.0 += agg.requests;
                    e.1 += agg.errors;
                }
                _ => {}
            }
        }
    }
    let mut red: Vec<RedRow> = per_service
        .into_iter()
        .map(|(service, agg)| RedRow { service, agg })
        .collect();
    red.sort_by(|a, b| {
        b.agg
            .requests
            .cmp(&a.agg.requests)
            .then(a.service.cmp(&b.service))
    });
    let edges = edges
        .into_iter()
        .map(|((a, b), (n, e))| (a, b, n, e))
        .collect();
    (red, edges, bounds)
}

/// The job's graph: sources, operators, rollups and sinks in columns by depth.
fn dag_svg(job: &Job) -> String {
    let mut nodes: Vec<(String, String, Vec<String>)> = Vec::new();
    for s in &job.sources {
        let kind = match &s.kind {
            SourceKind::Generator(_) => "generator",
            SourceKind::File(_) => "file",
            SourceKind::Kafka(_) => "kafka",
            SourceKind::Otlp(_) => "otlp",
        };
        nodes.push((s.name.clone(), kind.into(), Vec::new()));
    }
    for o in &job.operators {
        let from = o.from.iter().map(|f| f.node.clone()).collect();
        nodes.push((o.name.clone(), o.kind.type_name().into(), from));
    }
    for r in &job.rollups {
        let from = r.from.iter().map(|f| f.node.clone()).collect();
        nodes.push((r.name.clone(), "rollup".into(), from));
    }
    for s in &job.sinks {
        let kind = match &s.kind {
            SinkKind::Parquet(_) => "parquet",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::ClickHouse(_) => "clickhouse",
            SinkKind::Alertmanager(_) => "alertmanager",
        };
        let mut from: Vec<String> = s.from.iter().map(|f| f.node.clone()).collect();
        from.dedup();
        nodes.push((s.name.clone(), format!("{kind} sink"), from));
    }
    // Depth: one more than the deepest input (the loader rejected cycles).
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..nodes.len() {
        for (name, _, from) in &nodes {
            let d = from
                .iter()
                .filter_map(|f| depth.get(f.as_str()))
                .max()
                .map_or(0, |d| d + 1);
            depth.insert(name, d);
        }
    }
    let (w, h, gap_x, gap_y) = (150.0, 40.0, 60.0, 16.0);
    let mut rows_at: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (name, _, _) in &nodes {
        let d = depth.get(name.as_str()).copied().unwrap_or(0);
        let row = rows_at.entry(d).or_default();
        pos.insert(
            name,
            (
                10.0 + d as f64 * (w + gap_x),
                10.0 + *row as f64 * (h + gap_y),
            ),
        );
        *row += 1;
    }
    let width = 20.0 + (rows_at.len() as f64) * (w + gap_x);
    let height = 20.0 + rows_at.values().max().copied().unwrap_or(1) as f64 * (h + gap_y);
    let mut svg = format!(
        "<svg id=\"dag\" width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" \
         markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#888\"/></marker></defs>"
    );
    for (name, _, from) in &nodes {
        let Some(&(x, y)) = pos.get(name.as_str()) else {
            continue;
        };
        for f in from {
            if let Some(&(fx, fy)) = pos.get(f.as_str()) {
                let _ = write!(
                    svg,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#888\" marker-end=\"url(#arrow)\"/>",
                    fx + w,
                    fy + h / 2.0,
                    y + h / 2.0
                );
            }
        }
    }
    for (name, kind, _) in &nodes {
        let Some(&(x, y)) = pos.get(name.as_str()) else {
            continue;
        };
        let _ = write!(
            svg,
            "<g class=\"node\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"4\" fill=\"#eef3fb\" stroke=\"#4a8cd8\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"13\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\">{}</text></g>",
            x + 8.0,
            y + 17.0,
            esc(name),
            x + 8.0,
            y + 32.0,
            esc(kind)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The service graph's edges, services on a circle.
fn service_map_svg(edges: &[Edge]) -> String {
    let mut services: Vec<&str> = edges
        .iter()
        .flat_map(|(a, b, _, _)| [a.as_str(), b.as_str()])
        .collect();
    services.sort_unstable();
    services.dedup();
    if services.is_empty() {
        return "<p id=\"map\">No service-graph edges yet.</p>".into();
    }
    // Room for the labels right of the rightmost services.
    let (size, radius, label_room) = (680.0, 300.0, 170.0);
    let center = size / 2.0;
    let at = |i: usize| {
        let a = i as f64 / services.len() as f64 * std::f64::consts::TAU;
        (center + radius * a.cos(), center + radius * a.sin())
    };
    let index = |s: &str| services.iter().position(|x| *x == s).unwrap_or(0);
    let mut svg = format!(
        "<svg id=\"map\" width=\"{}\" height=\"{size}\" xmlns=\"http://www.w3.org/2000/svg\">",
        size + label_room
    );
    for (a, b, calls, errors) in edges {
        let ((x1, y1), (x2, y2)) = (at(index(a)), at(index(b)));
        let color = if *errors > 0 { "#d84a4a" } else { "#9ab" };
        let _ = write!(
            svg,
            "<line class=\"edge\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{color}\" \
             stroke-width=\"{:.1}\"><title>{} → {}: {calls} calls, {errors} errors</title></line>",
            1.0 + (*calls as f64).log10().max(0.0) / 2.0,
            esc(a),
            esc(b)
        );
    }
    for (i, s) in services.iter().enumerate() {
        let (x, y) = at(i);
        let _ = write!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#4a8cd8\"/>\
             <text class=\"service\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            x + 7.0,
            y + 4.0,
            esc(s)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One span of a waterfall.
struct WfSpan {
    span_id: String,
    parent: Option<String>,
    service: String,
    name: String,
    start_ns: i64,
    duration_ns: u64,
    error: bool,
}

/// `GET /jobs/{id}/traces/{trace_id}`: the trace's spans from the job's `spans`
/// output, as a waterfall.
pub async fn trace(
    State(state): State<Arc<AppState>>,
    Path((id, trace_id)): Path<(String, String)>,
) -> Response {
    let Some(h) = state.jobs.get(&id) else {
        return not_found(&format!("no job `{id}`"));
    };
    let Some(wanted) = spanflow_operators::TraceId::from_hex(&trace_id) else {
        return not_found(&format!("`{trace_id}` is not a trace id"));
    };
    let dirs = spans_dirs(&h.job);
    let found = tokio::task::spawn_blocking(move || read_trace(&dirs, wanted.0)).await;
    let spans = match found {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return not_found(&e),
        Err(e) => return not_found(&e.to_string()),
    };
    if spans.is_empty() {
        return not_found(&format!(
            "trace {trace_id} is not in job {id}'s `spans` output (yet)"
        ));
    }
    page(&trace_id, false, &waterfall(&id, &trace_id, spans)).into_response()
}

/// The `spans` table directories of the job's Parquet sinks.
fn spans_dirs(job: &Job) -> Vec<PathBuf> {
    job.sinks
        .iter()
        .filter_map(|s| match &s.kind {
            SinkKind::Parquet(c) => Some(c.path.join("spans")),
            _ => None,
        })
        .filter(|d| d.is_dir())
        .collect()
}

fn read_trace(dirs: &[PathBuf], wanted: [u8; 16]) -> Result<Vec<WfSpan>, String> {
    use arrow::array::{
        Array, BooleanArray, FixedSizeBinaryArray, StringArray, TimestampNanosecondArray,
        UInt64Array,
    };
    let mut out = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "parquet")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        for f in files {
            let file = std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.build())
                    .map_err(|e| format!("{}: {e}", f.display()))?;
            for batch in reader {
                let b = batch.map_err(|e| format!("{}: {e}", f.display()))?;
                let col = |name: &str| b.column_by_name(name).cloned();
                let (Some(tid), Some(sid), Some(pid), Some(svc), Some(name), Some(start)) = (
                    col("trace_id"),
                    col("span_id"),
                    col("parent_span_id"),
                    col("service"),
                    col("name"),
                    col("start_time"),
                ) else {
                    return Err(format!("{}: not a spans table", f.display()));
                };
                let (Some(dur), Some(err)) = (col("duration_ns"), col("is_error")) else {
                    return Err(format!("{}: not a spans table", f.display()));
                };
                let tid = tid.as_any().downcast_ref::<FixedSizeBinaryArray>();
                let sid = sid.as_any().downcast_ref::<FixedSizeBinaryArray>();
                let pid = pid.as_any().downcast_ref::<FixedSizeBinaryArray>();
                let svc = svc.as_any().downcast_ref::<StringArray>();
                let name = name.as_any().downcast_ref::<StringArray>();
                let start = start.as_any().downcast_ref::<TimestampNanosecondArray>();
                let dur = dur.as_any().downcast_ref::<UInt64Array>();
                let err = err.as_any().downcast_ref::<BooleanArray>();
                let (
                    Some(tid),
                    Some(sid),
                    Some(pid),
                    Some(svc),
                    Some(name),
                    Some(start),
                    Some(dur),
                    Some(err),
                ) = (tid, sid, pid, svc, name, start, dur, err)
                else {
                    return Err(format!("{}: unexpected column types", f.display()));
                };
                for i in 0..b.num_rows() {
                    if tid.value(i) != wanted {
                        continue;
                    }
                    out.push(WfSpan {
                        span_id: hex::encode(sid.value(i)),
                        parent: (!pid.is_null(i)).then(|| hex::encode(pid.value(i))),
                        service: svc.value(i).to_owned(),
                        name: name.value(i).to_owned(),
                        start_ns: start.value(i),
                        duration_ns: dur.value(i),
                        error: err.value(i),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn waterfall(job: &str, trace_id: &str, mut spans: Vec<WfSpan>) -> String {
    spans.sort_by(|a, b| a.start_ns.cmp(&b.start_ns).then(a.span_id.cmp(&b.span_id)));
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.start_ns.saturating_add(s.duration_ns as i64))
        .max()
        .unwrap_or(t0);
    let total = (t1 - t0).max(1) as f64;
    // Depth by parent chain, children right after their parent.
    let ids: BTreeMap<&str, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id.as_str(), i))
        .collect();
    let mut children: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
    for (i, s) in spans.iter().enumerate() {
        let parent = s.parent.as_deref().and_then(|p| ids.get(p)).copied();
        children.entry(parent).or_default().push(i);
    }
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut stack: Vec<(usize, usize)> = children
        .get(&None)
        .map(|r| r.iter().rev().map(|&i| (i, 0)).collect())
        .unwrap_or_default();
    let mut seen = vec![false; spans.len()];
    while let Some((i, d)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, d));
        if let Some(c) = children.get(&Some(i)) {
            stack.extend(c.iter().rev().map(|&k| (k, d + 1)));
        }
    }
    let mut html = format!(
        "<h1>Trace <code>{}</code></h1><p>{} spans, {:.1} ms, from job <a href=\"/jobs/{}\">{}</a></p>\
         <table class=\"wf\" id=\"waterfall\"><tr><th>service</th><th>span</th><th>duration</th><th></th></tr>",
        esc(trace_id),
        spans.len(),
        total / 1e6,
        esc(job),
        esc(job)
    );
    for (i, d) in order {
        let s = &spans[i];
        let left = (s.start_ns - t0) as f64 / total * 100.0;
        let width = (s.duration_ns as f64 / total * 100.0).max(0.3);
        let _ = write!(
            html,
            "<tr class=\"span\"><td style=\"padding-left:{}px\">{}</td><td>{}</td><td class=\"n\">{:.2} ms</td>\
             <td><div class=\"lane\"><div class=\"bar{}\" style=\"left:{left:.2}%;width:{width:.2}%\"></div></div></td></tr>",
            8 + d * 12,
            esc(&s.service),
            esc(&s.name),
            s.duration_ns as f64 / 1e6,
            if s.error { " err" } else { "" },
        );
    }
    html.push_str("</table>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn a_waterfall_puts_children_under_their_parent() {
        let span = |id: &str, parent: Option<&str>, start: i64| WfSpan {
            span_id: id.into(),
            parent: parent.map(Into::into),
            service: format!("svc-{id}"),
            name: "op".into(),
            start_ns: start,
            duration_ns: 10,
            error: false,
        };
        let html = waterfall(
            "j",
            "t",
            vec![
                span("b", Some("a"), 5),
                span("c", None, 1),
                span("a", None, 0),
            ],
        );
        let a = html.find("svc-a").unwrap();
        let b = html.find("svc-b").unwrap();
        let c = html.find("svc-c").unwrap();
        assert!(a < b && b < c, "{html}");
        assert!(html.contains("padding-left:20px\">svc-b"));
    }
}

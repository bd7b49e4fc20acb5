//! Loading a job file: YAML text -> positioned tree -> nodes (each component's config
//! deserialized on its own) -> graph checks -> [`Job`].
//!
//! Every step records problems instead of stopping, so one run reports everything wrong
//! with the file; the job is returned only when nothing was.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde::de::DeserializeOwned;
use spanflow_operators::operator::DataKind;
use spanflow_operators::red_metrics::RedMetricsConfig;
use spanflow_operators::service_graph::ServiceGraphConfig;
use spanflow_operators::session_window::SessionWindowConfig;
use spanflow_operators::span_filter::SpanFilterConfig;
use spanflow_operators::tail_sampling::TailSamplingConfig;
use spanflow_operators::{ConfigIssue, HumanDuration};

use super::de::{self, DeError, DeErrorKind};
use super::diagnostics::{Diagnostic, Diagnostics};
use super::spec::{
    Job, OperatorKind, OperatorNode, RollupConfig, RollupNode, SinkKind, SinkNode, SourceKind,
    SourceNode, StreamRef, WatermarkConfig,
};
use super::yaml::{self, Document, Entry, Node, NodeId, Pos, Resolved, Value};
use crate::connectors::clickhouse::ClickHouseSinkConfig;
use crate::connectors::file::FileSourceConfig;
use crate::connectors::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use crate::connectors::parquet::ParquetSinkConfig;
use crate::testkit::generator::GeneratorConfig;

/// Loads and validates a job file. All problems are collected before failing.
pub fn load(path: &Path) -> Result<Job, Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(path, &text),
        Err(e) => Err(Diagnostics {
            items: vec![Diagnostic {
                file: path.to_owned(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read job file `{}`: {e}", path.display()),
                hint: None,
                width: 0,
                source_line: None,
            }],
        }),
    }
}

/// Same as [`load`], from text; `path` names the file in messages and is the base of
/// relative `file` source paths (for `spanflow validate -` and tests).
pub fn load_str(path: &Path, text: &str) -> Result<Job, Diagnostics> {
    let mut report = Report {
        file: path.to_owned(),
        lines: text.lines().collect(),
        items: Vec::new(),
    };
    let doc = match yaml::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            report.push(e.pos, "", format!("invalid YAML: {}", e.message), None);
            return Err(report.finish());
        }
    };
    for p in &doc.problems {
        report.push(p.pos, p.key.clone(), p.message.clone(), p.hint.clone());
    }
    let mut loader = Loader {
        doc: &doc,
        report,
        base_dir: path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf),
    };
    let job = loader.job(path);
    match job {
        Some(job) if loader.report.items.is_empty() => Ok(job),
        _ => Err(loader.report.finish()),
    }
}

/// Collects diagnostics for one file.
struct Report<'t> {
    file: PathBuf,
    lines: Vec<&'t str>,
    items: Vec<Diagnostic>,
}

impl Report<'_> {
    fn push(
        &mut self,
        pos: Pos,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.items.push(Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            key: key.into(),
            message: message.into(),
            hint,
            width: pos.width,
            source_line: pos
                .line
                .checked_sub(1)
                .and_then(|i| self.lines.get(i))
                .map(|l| (*l).to_owned()),
        });
    }

    fn finish(mut self) -> Diagnostics {
        // Stable: problems on the same spot keep the order they were found in.
        self.items.sort_by_key(|d| (d.line, d.column));
        Diagnostics { items: self.items }
    }
}

/// The top-level keys of a job file.
const TOP_KEYS: &[&str] = &[
    "name",
    "parallelism",
    "sources",
    "operators",
    "sinks",
    "rollups",
];

/// The three sections of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Sources,
    Operators,
    Sinks,
    Rollups,
}

impl Section {
    fn key(self) -> &'static str {
        match self {
            Section::Sources => "sources",
            Section::Operators => "operators",
            Section::Sinks => "sinks",
            Section::Rollups => "rollups",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Section::Sources => "source",
            Section::Operators => "operator",
            Section::Sinks => "sink",
            Section::Rollups => "rollup",
        }
    }

    /// The `type:` names of the section (one per variant of its kind enum).
    fn types(self) -> Vec<&'static str> {
        match self {
            Section::Sources => vec!["generator", "file", "kafka"],
            Section::Operators => OperatorKind::SHAPES.iter().map(|s| s.kind).collect(),
            Section::Sinks => vec!["parquet", "kafka", "clickhouse"],
            Section::Rollups => vec!["rollup"],
        }
    }

    /// Keys every node of the section takes besides its component's config.
    fn node_keys(self) -> &'static [&'static str] {
        match self {
            Section::Sources => &["type", "watermark"],
            Section::Operators | Section::Sinks => &["type", "from"],
            Section::Rollups => &["from"],
        }
    }
}

/// Output ports of a node type, the default first, with what each carries: a
/// source's are fixed, an operator's are its kind's [`Shape`] declaration.
fn outputs(section: Section, type_name: &str) -> Vec<(&'static str, DataKind)> {
    match section {
        Section::Sources => vec![
            ("spans", DataKind::Spans),
            ("dead_letters", DataKind::DeadLetters),
        ],
        Section::Operators => OperatorKind::shape_of(type_name)
            .map(|s| s.outputs.iter().map(|p| (p.name, p.data)).collect())
            .unwrap_or_default(),
        Section::Sinks | Section::Rollups => Vec::new(),
    }
}

/// What a node type reads.
fn accepts(section: Section, type_name: &str) -> Vec<DataKind> {
    match section {
        Section::Operators => OperatorKind::shape_of(type_name)
            .map(|s| vec![s.input])
            .unwrap_or_default(),
        Section::Rollups => vec![DataKind::Intervals],
        Section::Sinks => vec![
            DataKind::Spans,
            DataKind::Traces,
            DataKind::LateSpans,
            DataKind::DeadLetters,
            DataKind::Intervals,
            DataKind::Rows,
        ],
        Section::Sources => Vec::new(),
    }
}

/// A built component.
enum Built {
    Source(SourceKind, WatermarkConfig),
    Operator(OperatorKind),
    Sink(SinkKind),
    Rollup(RollupConfig),
}

/// One `from:` entry as written.
struct FromRef {
    node: String,
    port: Option<String>,
    text: String,
    pos: Pos,
    key: String,
}

/// A node as declared in the file.
struct Decl {
    section: Section,
    name: String,
    name_pos: Pos,
    /// `sources.gen`.
    path: String,
    type_name: Option<&'static str>,
    from: Vec<FromRef>,
    /// Resolved `from`, filled by the graph checks.
    resolved: Vec<StreamRef>,
    built: Option<Built>,
    /// A rollup's or a sink's node, to place errors found after it is built (in its
    /// query, or about what it reads).
    node: Option<Node>,
    /// A rollup's planned query: (text, file, window, result schema).
    rollup: Option<RollupNode>,
}

struct Loader<'d, 't> {
    doc: &'d Document,
    report: Report<'t>,
    base_dir: Option<PathBuf>,
}

/// The nearest candidate to `found`, if it is close enough to be a likely typo.
pub(crate) fn closest<'c>(
    found: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let found_l = found.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let c_l = c.to_lowercase();
        let d = strsim::damerau_levenshtein(&found_l, &c_l);
        let limit = (found_l.chars().count().max(c_l.chars().count()) / 3).max(1);
        // A prefix or suffix counts too: `late` -> `late_spans`, `json` -> `otlp_json`.
        let prefix =
            found_l.chars().count() >= 3 && (c_l.starts_with(&found_l) || c_l.ends_with(&found_l));
        let close = d <= limit || prefix || strsim::jaro_winkler(&found_l, &c_l) >= 0.9;
        if close && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn did_you_mean<'c>(found: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<String> {
    closest(found, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// `` `a`, `b` or `c` ``.
fn one_of(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// How a value appears in a message.
fn describe(node: &Node) -> String {
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Null => "nothing".into(),
            _ => format!("`{}`", s.text),
        },
        Value::Seq(_) => "a list".into(),
        Value::Map(_) => "a map".into(),
    }
}

/// The text of a non-null scalar.
fn scalar_text(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar(s) if s.resolve() != Resolved::Null => Some(&s.text),
        _ => None,
    }
}

fn is_null(node: &Node) -> bool {
    matches!(&node.value, Value::Scalar(s) if s.resolve() == Resolved::Null)
}

/// `a.0.b` -> `a[0].b`: how a key path reads in a message.
fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// A key path relative to its node (`operators.sessions.gap_rules.1.gap` -> `gap_rules[1].gap`).
fn display_key(path: &[String]) -> String {
    let rel = match path.first().map(String::as_str) {
        Some("sources" | "operators" | "sinks") if path.len() > 2 => &path[2..],
        _ => path,
    };
    display_path(rel)
}

/// Node names: what may appear before the `.` of a `from:` entry and in table paths.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn entry<'n>(fields: &'n [Entry], key: &str) -> Option<&'n Entry> {
    fields.iter().find(|e| e.key_text() == key)
}

impl Loader<'_, '_> {
    fn job(&mut self, path: &Path) -> Option<Job> {
        let doc = self.doc;
        let Some(root) = &doc.root else {
            self.report.push(
                Pos {
                    line: 1,
                    column: 1,
                    width: 0,
                },
                "",
                "the job file is empty: a job needs `sources` and `sinks`",
                Some("see jobs/demo.yaml for an example".into()),
            );
            return None;
        };
        let Value::Map(entries) = &root.value else {
            self.report.push(
                root.pos,
                "",
                format!(
                    "a job file must be a map with the keys {}, found {}",
                    one_of(TOP_KEYS),
                    describe(root)
                ),
                None,
            );
            return None;
        };

        let mut name = None;
        let mut parallelism = None;
        let mut decls = Vec::new();
        let mut section_keys: HashMap<&str, Pos> = HashMap::new();
        for e in entries {
            match e.key_text() {
                "name" => name = self.job_name(&e.value),
                "parallelism" => parallelism = self.parallelism(&e.value),
                key @ ("sources" | "operators" | "sinks" | "rollups") => {
                    section_keys.insert(key, e.key.pos);
                    let section = match key {
                        "sources" => Section::Sources,
                        "operators" => Section::Operators,
                        "rollups" => Section::Rollups,
                        _ => Section::Sinks,
                    };
                    self.section(section, e, &mut decls);
                }
                other => {
                    let hint = did_you_mean(other, TOP_KEYS.iter().copied())
                        .unwrap_or_else(|| format!("a job file has the keys {}", one_of(TOP_KEYS)));
                    self.report.push(
                        e.key.pos,
                        other,
                        format!("unknown top-level key `{other}`"),
                        Some(hint),
                    );
                }
            }
        }
        for (section, example) in [
            (Section::Sources, "sources:\n  gen:\n    type: generator"),
            (
                Section::Sinks,
                "sinks:\n  out:\n    type: parquet\n    from: [...]",
            ),
        ] {
            if decls.iter().any(|d: &Decl| d.section == section) {
                continue;
            }
            let key = section.key();
            let (pos, message) = match section_keys.get(key) {
                Some(pos) => (
                    *pos,
                    format!(
                        "`{key}` must define at least one {}, found none",
                        section.noun()
                    ),
                ),
                None => (
                    Pos {
                        line: 1,
                        column: 1,
                        width: 0,
                    },
                    format!(
                        "missing key `{key}`: a job needs at least one {}",
                        section.noun()
                    ),
                ),
            };
            self.report
                .push(pos, key, message, Some(format!("add e.g.\n{example}")));
        }

        self.check_graph(&mut decls);
        self.plan_rollups(&mut decls);
        self.check_clickhouse_sinks(&decls);

        let mut job = Job {
            name: name.unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty() && s != "-")
                    .unwrap_or_else(|| "job".to_owned())
            }),
            path: path.to_owned(),
            parallelism,
            sources: Vec::new(),
            operators: Vec::new(),
            sinks: Vec::new(),
            rollups: Vec::new(),
        };
        for d in decls {
            if d.section == Section::Rollups {
                job.rollups.push(d.rollup?);
                continue;
            }
            match d.built? {
                Built::Source(kind, watermark) => job.sources.push(SourceNode {
                    name: d.name,
                    kind,
                    watermark,
                }),
                Built::Operator(kind) => job.operators.push(OperatorNode {
                    name: d.name,
                    from: d.resolved,
                    kind,
                }),
                Built::Sink(kind) => job.sinks.push(SinkNode {
                    name: d.name,
                    from: d.resolved,
                    kind,
                }),
                Built::Rollup(_) => {}
            }
        }
        Some(job)
    }

    fn job_name(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            _ if is_null(node) => None,
            Value::Scalar(s) if s.text.trim().is_empty() => {
                self.report.push(
                    node.pos,
                    "name",
                    "`name` must not be empty, found `\"\"`",
                    None,
                );
                None
            }
            Value::Scalar(s) => Some(s.text.clone()),
            _ => {
                self.report.push(
                    node.pos,
                    "name",
                    format!("`name` must be a string, found {}", describe(node)),
                    None,
                );
                None
            }
        }
    }

    fn parallelism(&mut self, node: &Node) -> Option<usize> {
        if is_null(node) {
            return None;
        }
        if let Value::Scalar(s) = &node.value
            && let Resolved::Int(n) = s.resolve()
            && n >= 1
            && let Ok(n) = usize::try_from(n)
        {
            return Some(n);
        }
        self.report.push(
            node.pos,
            "parallelism",
            format!(
                "`parallelism` must be an integer of at least 1, found {}",
                describe(node)
            ),
            Some("leave it out to run one shard per core".into()),
        );
        None
    }

    fn section(&mut self, section: Section, e: &Entry, decls: &mut Vec<Decl>) {
        match &e.value.value {
            Value::Map(nodes) => {
                for n in nodes {
                    let decl = self.node(section, n);
                    decls.push(decl);
                }
            }
            _ if is_null(&e.value) => {}
            _ => self.report.push(
                e.value.pos,
                section.key(),
                format!(
                    "`{}` must be a map from {} name to {}, found {}",
                    section.key(),
                    section.noun(),
                    section.noun(),
                    describe(&e.value)
                ),
                None,
            ),
        }
    }

    fn node(&mut self, section: Section, e: &Entry) -> Decl {
        let name = e.key_text().to_owned();
        let path = format!("{}.{}", section.key(), name);
        let mut decl = Decl {
            section,
            name: name.clone(),
            name_pos: e.key.pos,
            path: path.clone(),
            type_name: None,
            from: Vec::new(),
            resolved: Vec::new(),
            built: None,
            node: None,
            rollup: None,
        };
        if section == Section::Rollups {
            return self.rollup_decl(e, decl);
        }
        let types = section.types();
        let Value::Map(fields) = &e.value.value else {
            self.report.push(
                e.value.pos,
                path.clone(),
                format!(
                    "{} `{name}` must be a map with a `type` key, found {}",
                    section.noun(),
                    describe(&e.value)
                ),
                Some(format!("write e.g. `{name}: {{ type: {} }}`", types[0])),
            );
            return decl;
        };

        // `type`
        match entry(fields, "type") {
            None => self.report.push(
                e.key.pos,
                format!("{path}.type"),
                format!(
                    "{} `{name}` has no `type`: every {} needs one",
                    section.noun(),
                    section.noun()
                ),
                Some(format!("add `type: ...` with one of {}", one_of(&types))),
            ),
            Some(t) => match scalar_text(&t.value) {
                Some(s) => match types.iter().find(|x| **x == s) {
                    Some(x) => decl.type_name = Some(x),
                    None => {
                        let hint = did_you_mean(s, types.iter().copied()).unwrap_or_else(|| {
                            format!("{} types are {}", section.noun(), one_of(&types))
                        });
                        self.report.push(
                            t.value.pos,
                            format!("{path}.type"),
                            format!("unknown {} type `{s}` in `type`", section.noun()),
                            Some(hint),
                        );
                    }
                },
                None => self.report.push(
                    t.value.pos,
                    format!("{path}.type"),
                    format!("`type` must be a name, found {}", describe(&t.value)),
                    Some(format!("{} types are {}", section.noun(), one_of(&types))),
                ),
            },
        }

        // `from`
        if section != Section::Sources {
            match entry(fields, "from") {
                Some(f) => decl.from = self.parse_from(&path, &f.value),
                None => {
                    // `form:` is reported as an unknown key with a hint; say it once.
                    let typo = fields.iter().any(|f| {
                        f.key_text() != "from"
                            && strsim::damerau_levenshtein(f.key_text(), "from") <= 1
                    });
                    if !typo {
                        self.report.push(
                            e.key.pos,
                            format!("{path}.from"),
                            format!(
                                "{} `{name}` has no `from`: it must name the streams it reads",
                                section.noun()
                            ),
                            Some("add e.g. `from: [gen]` or `from: [sessions.late_spans]`".into()),
                        );
                    }
                }
            }
        }

        // The component's own config.
        let Some(type_name) = decl.type_name else {
            return decl;
        };
        if section == Section::Sinks {
            decl.node = Some(e.value.clone());
        }
        let what = format!("{type_name} {} `{name}`", section.noun());
        decl.built = match type_name {
            "generator" => {
                let cfg =
                    self.component::<GeneratorConfig>(section, e, &what, GeneratorConfig::validate);
                let wm = self.watermark(fields, &name);
                cfg.zip(wm)
                    .map(|(c, w)| Built::Source(SourceKind::Generator(c), w))
            }
            "file" => {
                let cfg = self.component::<FileSourceConfig>(
                    section,
                    e,
                    &what,
                    FileSourceConfig::validate,
                );
                let wm = self.watermark(fields, &name);
                cfg.zip(wm).map(|(mut c, w)| {
                    if let Some(base) = &self.base_dir {
                        c.paths = c
                            .paths
                            .into_iter()
                            .map(|p| if p.is_relative() { base.join(p) } else { p })
                            .collect();
                    }
                    Built::Source(SourceKind::File(c), w)
                })
            }
            "session_window" => self
                .component::<SessionWindowConfig>(section, e, &what, SessionWindowConfig::validate)
                .map(|c| Built::Operator(OperatorKind::SessionWindow(c))),
            "span_filter" => self
                .component::<SpanFilterConfig>(section, e, &what, SpanFilterConfig::validate)
                .map(|c| Built::Operator(OperatorKind::SpanFilter(c))),
            "tail_sampling" => self
                .component::<TailSamplingConfig>(section, e, &what, TailSamplingConfig::validate)
                .map(|c| Built::Operator(OperatorKind::TailSampling(c))),
            "red_metrics" => self
                .component::<RedMetricsConfig>(section, e, &what, RedMetricsConfig::validate)
                .map(|c| Built::Operator(OperatorKind::RedMetrics(c))),
            "service_graph" => self
                .component::<ServiceGraphConfig>(section, e, &what, ServiceGraphConfig::validate)
                .map(|c| Built::Operator(OperatorKind::ServiceGraph(c))),
            "parquet" => self
                .component::<ParquetSinkConfig>(section, e, &what, ParquetSinkConfig::validate)
                .map(|c| Built::Sink(SinkKind::Parquet(c))),
            "clickhouse" if section == Section::Sinks => self
                .component::<ClickHouseSinkConfig>(
                    section,
                    e,
                    &what,
                    ClickHouseSinkConfig::validate,
                )
                .map(|c| Built::Sink(SinkKind::ClickHouse(Box::new(c)))),
            "kafka" if section == Section::Sinks => self
                .component::<KafkaSinkConfig>(section, e, &what, KafkaSinkConfig::validate)
                .map(|c| Built::Sink(SinkKind::Kafka(c))),
            "kafka" => {
                let cfg = self.component::<KafkaSourceConfig>(
                    section,
                    e,
                    &what,
                    KafkaSourceConfig::validate,
                );
                let wm = self.watermark(fields, &name);
                cfg.zip(wm)
                    .map(|(c, w)| Built::Source(SourceKind::Kafka(c), w))
            }
            _ => None,
        };
        decl
    }

    /// A `rollups:` entry: `from`, and `sql` or `query` with an optional `window`.
    fn rollup_decl(&mut self, e: &Entry, mut decl: Decl) -> Decl {
        let name = decl.name.clone();
        let path = decl.path.clone();
        decl.type_name = Some("rollup");
        decl.node = Some(e.value.clone());
        let Value::Map(fields) = &e.value.value else {
            self.report.push(
                e.value.pos,
                path,
                format!(
                    "rollup `{name}` must be a map with `from` and `sql` (or `query`), found {}",
                    describe(&e.value)
                ),
                Some(format!(
                    "write e.g. `{name}: {{ from: metrics, sql: ../sql/red_per_service_1m.sql, window: 1m }}`"
                )),
            );
            return decl;
        };
        match entry(fields, "from") {
            Some(f) => decl.from = self.parse_from(&path, &f.value),
            None => self.report.push(
                e.key.pos,
                format!("{path}.from"),
                format!("rollup `{name}` has no `from`: it must name the metric streams it reads"),
                Some("add e.g. `from: [metrics, metrics.exemplars]`".into()),
            ),
        }
        let what = format!("rollup `{name}`");
        decl.built = self
            .component::<RollupConfig>(Section::Rollups, e, &what, RollupConfig::validate)
            .map(Built::Rollup);
        decl
    }

    /// Reads each rollup's query and plans it against its inputs' tables, so a query
    /// that cannot run is a job error at its line and column.
    fn plan_rollups(&mut self, decls: &mut [Decl]) {
        let intervals: HashMap<String, HumanDuration> = decls
            .iter()
            .filter_map(|d| match &d.built {
                Some(Built::Operator(OperatorKind::RedMetrics(c))) => {
                    Some((d.name.clone(), c.interval))
                }
                Some(Built::Operator(OperatorKind::ServiceGraph(c))) => {
                    Some((d.name.clone(), c.interval))
                }
                _ => None,
            })
            .collect();
        for d in decls.iter_mut().filter(|d| d.section == Section::Rollups) {
            let (Some(Built::Rollup(cfg)), Some(node)) = (&d.built, &d.node) else {
                continue;
            };
            // Unresolved inputs were reported by the graph checks.
            if d.from.is_empty() || d.resolved.len() != d.from.len() {
                continue;
            }
            let mut inputs: Vec<(String, SchemaRef)> = Vec::new();
            let mut clean = true;
            for (r, stream) in d.from.iter().zip(&d.resolved) {
                if inputs.iter().any(|(t, _)| *t == stream.port) {
                    self.report.push(
                        r.pos,
                        r.key.clone(),
                        format!(
                            "rollup `{}` reads two streams named `{}`; its query sees each input \
                             as a table named after the port",
                            d.name, stream.port
                        ),
                        Some("split it into two rollups".into()),
                    );
                    clean = false;
                    continue;
                }
                match crate::tables::schema(&stream.port) {
                    Some(schema) => inputs.push((stream.port.clone(), schema)),
                    None => clean = false,
                }
            }
            let node_intervals: Vec<(&str, HumanDuration)> = d
                .resolved
                .iter()
                .filter_map(|s| intervals.get(&s.node).map(|i| (s.node.as_str(), *i)))
                .collect();
            let window_pos = match &node.value {
                Value::Map(f) => entry(f, "window").map(|w| w.value.pos),
                _ => None,
            }
            .unwrap_or(d.name_pos);
            let window = match cfg.window {
                Some(w) => {
                    for (n, iv) in &node_intervals {
                        if w.as_nanos() % iv.as_nanos().max(1) != 0 {
                            self.report.push(
                                window_pos,
                                format!("{}.window", d.path),
                                format!(
                                    "`window` ({w:?}) must be a multiple of the interval of `{n}` \
                                     ({iv:?}), so each interval falls in one window"
                                ),
                                None,
                            );
                            clean = false;
                        }
                    }
                    w
                }
                None => match node_intervals.as_slice() {
                    [] => continue,
                    [(_, first), rest @ ..] => {
                        if let Some((n, iv)) = rest.iter().find(|(_, iv)| iv != first) {
                            self.report.push(
                                d.name_pos,
                                format!("{}.window", d.path),
                                format!(
                                    "rollup `{}` reads intervals of {first:?} and {iv:?} (`{n}`); \
                                     set `window` to a common multiple",
                                    d.name
                                ),
                                None,
                            );
                            clean = false;
                        }
                        *first
                    }
                },
            };
            if !clean {
                continue;
            }
            let Some((text, file, text_pos)) = self.rollup_text(d, cfg, node) else {
                continue;
            };
            let planned =
                futures::executor::block_on(crate::sql::rollup::RollupQuery::plan(&text, &inputs));
            match planned {
                Ok(q) => {
                    d.rollup = Some(RollupNode {
                        name: d.name.clone(),
                        from: d.resolved.clone(),
                        query: text,
                        query_file: file,
                        window,
                        schema: q.schema(),
                        key: q.key(),
                    });
                }
                Err(e) => self.sql_error(d, &e, &text, file.as_deref(), text_pos, node),
            }
        }
    }

    /// What a ClickHouse sink can only check once its inputs are known: each output
    /// it reads has a table it can create (a rollup's result needs a timestamp column
    /// and types the sink writes), and `tables`/`table_ttl` name outputs it writes.
    fn check_clickhouse_sinks(&mut self, decls: &[Decl]) {
        for d in decls {
            let (Some(Built::Sink(SinkKind::ClickHouse(cfg))), Some(node)) = (&d.built, &d.node)
            else {
                continue;
            };
            for stream in &d.resolved {
                let Some(rollup) = decls
                    .iter()
                    .filter(|o| o.section == Section::Rollups && o.name == stream.node)
                    .find_map(|o| o.rollup.as_ref())
                else {
                    continue;
                };
                if let Err(e) = crate::connectors::clickhouse::ddl::TableLayout::of_rollup(
                    &rollup.name,
                    &rollup.schema,
                    &rollup.key,
                ) {
                    let (pos, key) = d
                        .from
                        .iter()
                        .find(|r| r.node == stream.node)
                        .map_or((d.name_pos, d.path.clone()), |r| (r.pos, r.key.clone()));
                    self.report.push(
                        pos,
                        key,
                        format!(
                            "clickhouse sink `{}` cannot write rollup `{}`: {e}",
                            d.name, rollup.name
                        ),
                        rollup
                            .query_file
                            .as_ref()
                            .map(|f| format!("the query is in {}", f.display())),
                    );
                }
            }
            let written: Vec<&str> = d.resolved.iter().map(|s| s.port.as_str()).collect();
            for (key, names) in [
                ("tables", cfg.tables.keys().collect::<Vec<_>>()),
                ("table_ttl", cfg.table_ttl.keys().collect()),
            ] {
                for name in names {
                    if written.contains(&name.as_str()) {
                        continue;
                    }
                    let pos = match &node.value {
                        Value::Map(fields) => {
                            entry(fields, key).and_then(|e| match &e.value.value {
                                Value::Map(inner) => entry(inner, name).map(|i| i.key.pos),
                                _ => None,
                            })
                        }
                        _ => None,
                    }
                    .unwrap_or(d.name_pos);
                    let hint = did_you_mean(name, written.iter().copied())
                        .unwrap_or_else(|| format!("it writes {}", one_of(&written)));
                    self.report.push(
                        pos,
                        format!("{}.{key}.{name}", d.path),
                        format!(
                            "`{key}.{name}`: clickhouse sink `{}` does not write `{name}`",
                            d.name
                        ),
                        Some(hint),
                    );
                }
            }
        }
    }

    /// The rollup's SQL text, the file it is in (for `sql:`), and the position of the
    /// `sql`/`query` value.
    fn rollup_text(
        &mut self,
        d: &Decl,
        cfg: &RollupConfig,
        node: &Node,
    ) -> Option<(String, Option<PathBuf>, Pos)> {
        let value_pos = |key: &str| match &node.value {
            Value::Map(f) => entry(f, key).map(|e| e.value.pos),
            _ => None,
        };
        if let Some(q) = &cfg.query {
            return Some((q.clone(), None, value_pos("query").unwrap_or(d.name_pos)));
        }
        let rel = cfg.sql.as_ref()?;
        let pos = value_pos("sql").unwrap_or(d.name_pos);
        let file = match &self.base_dir {
            Some(base) if rel.is_relative() => base.join(rel),
            _ => rel.clone(),
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => Some((text, Some(file), pos)),
            Err(e) => {
                self.report.push(
                    pos,
                    format!("{}.sql", d.path),
                    format!(
                        "cannot read the query of rollup `{}` from `{}`: {e}",
                        d.name,
                        file.display()
                    ),
                    Some("`sql` is relative to the job file".into()),
                );
                None
            }
        }
    }

    /// Reports a query that does not plan, at its place in the `.sql` file or in the
    /// job file for an inline query.
    fn sql_error(
        &mut self,
        d: &Decl,
        e: &crate::sql::SqlError,
        text: &str,
        file: Option<&Path>,
        value_pos: Pos,
        node: &Node,
    ) {
        let message = format!("rollup `{}`: {}", d.name, e.message);
        let located = e.line.zip(e.column);
        match (file, located) {
            (Some(file), Some((line, column))) => {
                let job_line = value_pos.line;
                self.report.items.push(Diagnostic {
                    file: file.to_owned(),
                    line,
                    column,
                    key: format!("{}.sql", d.path),
                    message,
                    hint: Some(format!(
                        "the query of rollup `{}` ({}:{job_line})",
                        d.name,
                        self.report.file.display()
                    )),
                    width: 0,
                    source_line: text.lines().nth(line - 1).map(str::to_owned),
                });
            }
            (Some(file), None) => self.report.push(
                value_pos,
                format!("{}.sql", d.path),
                format!("{message} (in `{}`)", file.display()),
                None,
            ),
            (None, loc) => {
                let query_node = match &node.value {
                    Value::Map(f) => entry(f, "query").map(|e| e.value.clone()),
                    _ => None,
                };
                let pos = match (loc, query_node) {
                    (Some((line, column)), Some(q)) => self.query_pos(&q, text, line, column),
                    _ => value_pos,
                };
                self.report
                    .push(pos, format!("{}.query", d.path), message, None);
            }
        }
    }

    /// Where line `line`, column `column` of an inline query (the scalar `node`) is in
    /// the job file: the query's lines appear verbatim in the file (a `|` block or a
    /// one-line scalar), at or just after the scalar's own line.
    fn query_pos(&self, node: &Node, query: &str, line: usize, column: usize) -> Pos {
        let Some(sql_line) = query.lines().nth(line.saturating_sub(1)) else {
            return node.pos;
        };
        if sql_line.trim().is_empty() {
            return node.pos;
        }
        let first = node.pos.line.saturating_sub(1) + line.saturating_sub(1);
        for idx in first..(first + 2).min(self.report.lines.len()) {
            let file_line = self.report.lines[idx];
            let from = if idx + 1 == node.pos.line {
                file_line
                    .char_indices()
                    .nth(node.pos.column.saturating_sub(1))
                    .map_or(0, |(b, _)| b)
            } else {
                0
            };
            if let Some(k) = file_line[from..].find(sql_line) {
                return Pos {
                    line: idx + 1,
                    column: file_line[..from + k].chars().count() + column,
                    width: 1,
                };
            }
        }
        node.pos
    }

    /// Deserializes a node's map, without the keys every node of its section takes, into
    /// the component's config, and checks it with its `validate`. Returns the config when
    /// there was no problem.
    fn component<T: DeserializeOwned>(
        &mut self,
        section: Section,
        e: &Entry,
        what: &str,
        validate: fn(&T) -> Vec<ConfigIssue>,
    ) -> Option<T> {
        let mut config = e.value.clone();
        if let Value::Map(fields) = &mut config.value {
            fields.retain(|f| !section.node_keys().contains(&f.key_text()));
        }
        let (value, errors) = de::deserialize_all::<T>(&config);
        let clean = errors.is_empty();
        for err in errors {
            self.de_error(err, config.id, Some(section), what);
        }
        // Validate even a config that had bad entries (they were replaced by defaults),
        // so that one run reports every problem of the node.
        let value = value?;
        let issues = validate(&value);
        let clean = clean && issues.is_empty();
        self.issues(e, issues);
        clean.then_some(value)
    }

    fn watermark(&mut self, fields: &[Entry], source: &str) -> Option<WatermarkConfig> {
        let Some(w) = entry(fields, "watermark").filter(|w| !is_null(&w.value)) else {
            return Some(WatermarkConfig::default());
        };
        let (value, errors) = de::deserialize_all::<WatermarkConfig>(&w.value);
        let clean = errors.is_empty();
        for err in errors {
            self.de_error(
                err,
                w.value.id,
                None,
                &format!("`watermark` of source `{source}`"),
            );
        }
        value.filter(|_| clean)
    }

    /// Turns a serde error inside a component into a diagnostic at its node.
    fn de_error(&mut self, err: DeError, root: NodeId, section: Option<Section>, what: &str) {
        let doc = self.doc;
        let Some(info) = err.at.and_then(|at| doc.info.get(at)) else {
            return;
        };
        let key = info.path.join(".");
        let shown = display_key(&info.path);
        match err.kind {
            DeErrorKind::UnknownField { field, expected } => {
                // At the node's top level, the keys of every node count as well.
                let node_keys = section
                    .filter(|_| info.parent == Some(root))
                    .map(Section::node_keys);
                let mut candidates: Vec<&str> = expected.to_vec();
                candidates.extend(node_keys.unwrap_or_default());
                let hint = if section == Some(Section::Sources)
                    && node_keys.is_some()
                    && field == "from"
                {
                    "sources read no streams; remove `from`".to_owned()
                } else {
                    did_you_mean(&field, candidates.iter().copied())
                        .unwrap_or_else(|| format!("valid keys here: {}", one_of(&candidates)))
                };
                self.report.push(
                    info.pos,
                    key,
                    format!("unknown key `{field}` in {what}"),
                    Some(hint),
                );
            }
            DeErrorKind::UnknownVariant { variant, expected } => {
                let hint = did_you_mean(&variant, expected.iter().copied());
                self.report.push(
                    info.pos,
                    key,
                    format!(
                        "`{shown}` must be one of {}, found `{variant}`",
                        one_of(expected)
                    ),
                    hint,
                );
            }
            DeErrorKind::MissingField(field) => {
                let mut path = info.path.clone();
                path.push(field.to_owned());
                self.report.push(
                    info.key_pos.unwrap_or(info.pos),
                    path.join("."),
                    format!("missing required key `{}` in {what}", display_key(&path)),
                    Some(format!("add `{field}: ...`")),
                );
            }
            DeErrorKind::Invalid { expected, found } => {
                self.report.push(
                    info.pos,
                    key,
                    format!("`{shown}` must be {expected}, found {found}"),
                    None,
                );
            }
            DeErrorKind::Custom(msg) => {
                self.report
                    .push(info.pos, key, format!("`{shown}`: {msg}"), None);
            }
        }
    }

    /// Reports a component's `validate()` issues at the keys they name.
    fn issues(&mut self, e: &Entry, issues: Vec<ConfigIssue>) {
        let doc = self.doc;
        let base = doc
            .info
            .get(e.value.id)
            .map(|i| i.path.clone())
            .unwrap_or_default();
        for issue in issues {
            let pos = locate(&e.value, &issue.path).unwrap_or(e.key.pos);
            let mut path = base.clone();
            path.extend(issue.path.iter().cloned());
            let shown = display_key(&path);
            let message = if issue.message.starts_with("must ") {
                format!("`{shown}` {}", issue.message)
            } else {
                format!("`{shown}`: {}", issue.message)
            };
            self.report.push(pos, path.join("."), message, None);
        }
    }

    /// Parses `from:`: one stream name or a list of them.
    fn parse_from(&mut self, path: &str, node: &Node) -> Vec<FromRef> {
        let mut refs = Vec::new();
        let key = format!("{path}.from");
        let items: Vec<(&Node, String)> = match &node.value {
            Value::Scalar(_) if !is_null(node) => vec![(node, key.clone())],
            Value::Seq(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("{key}.{i}")))
                .collect(),
            _ => {
                self.report.push(
                    node.pos,
                    key,
                    format!(
                        "`from` must name at least one stream, found {}",
                        if matches!(node.value, Value::Seq(_)) {
                            "`[]`".to_owned()
                        } else {
                            describe(node)
                        }
                    ),
                    Some(
                        "write `from: gen`, `from: gen.dead_letters` or `from: [a, b.port]`".into(),
                    ),
                );
                return refs;
            }
        };
        for (item, key) in items {
            let Some(text) = scalar_text(item) else {
                self.report.push(
                    item.pos,
                    key,
                    format!(
                        "`from` entries must be `node` or `node.port`, found {}",
                        describe(item)
                    ),
                    None,
                );
                continue;
            };
            let (node_name, port) = match text.split_once('.') {
                Some((n, p)) => (n, Some(p)),
                None => (text, None),
            };
            if node_name.is_empty() || port.is_some_and(str::is_empty) {
                self.report.push(
                    item.pos,
                    key,
                    format!("`from` entries must be `node` or `node.port`, found `{text}`"),
                    None,
                );
                continue;
            }
            refs.push(FromRef {
                node: node_name.to_owned(),
                port: port.map(str::to_owned),
                text: text.to_owned(),
                pos: item.pos,
                key,
            });
        }
        refs
    }

    /// Names, references, stream kinds, duplicate inputs, table names, cycles.
    fn check_graph(&mut self, decls: &mut [Decl]) {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, d) in decls.iter().enumerate() {
            if !valid_name(&d.name) {
                let fixed: String = d
                    .name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                self.report.push(
                    d.name_pos,
                    d.path.clone(),
                    format!(
                        "{} name `{}` must match `[A-Za-z0-9_-]+` (letters, digits, `_` and `-`)",
                        d.section.noun(),
                        d.name
                    ),
                    Some(format!("rename it, e.g. `{fixed}`")),
                );
            }
            match by_name.get(&d.name) {
                Some(&first) => {
                    let f = &decls[first];
                    self.report.push(
                        d.name_pos,
                        d.path.clone(),
                        format!(
                            "node name `{}` is used twice: by `{}` (line {}) and `{}`; names must be \
                             unique across sources, operators and sinks",
                            d.name, f.path, f.name_pos.line, d.path
                        ),
                        Some("rename one of them".into()),
                    );
                }
                None => {
                    by_name.insert(d.name.clone(), i);
                }
            }
        }

        // Nodes that have outputs, for suggestions.
        let readable: Vec<String> = decls
            .iter()
            .filter(|d| d.section != Section::Sinks)
            .map(|d| d.name.clone())
            .collect();
        // reads[i]: (operator j that i reads, position of the `from` entry)
        let mut reads: Vec<Vec<(usize, Pos, String)>> = vec![Vec::new(); decls.len()];
        for i in 0..decls.len() {
            let mut resolved = Vec::new();
            let mut seen: HashMap<StreamRef, String> = HashMap::new();
            let me = &decls[i];
            for r in &me.from {
                let Some(&t) = by_name.get(&r.node) else {
                    let others = readable
                        .iter()
                        .map(String::as_str)
                        .filter(|n| *n != me.name);
                    let hint = did_you_mean(&r.node, others).unwrap_or_else(|| {
                        let names: Vec<&str> = readable.iter().map(String::as_str).collect();
                        if names.is_empty() {
                            "define a source under `sources:`".to_owned()
                        } else {
                            format!("nodes with outputs: {}", one_of(&names))
                        }
                    });
                    self.report.push(
                        r.pos,
                        r.key.clone(),
                        format!("`from` refers to unknown node `{}`", r.node),
                        Some(hint),
                    );
                    continue;
                };
                let target = &decls[t];
                if target.section == Section::Sinks {
                    self.report.push(
                        r.pos,
                        r.key.clone(),
                        format!(
                            "`from` refers to `{}`, a sink; sinks have no outputs to read",
                            r.node
                        ),
                        None,
                    );
                    continue;
                }
                let Some(target_type) = target.type_name else {
                    // Its `type` is wrong, already reported; its ports are unknown.
                    continue;
                };
                // A rollup's one output is named after it.
                let outs: Vec<(&str, DataKind)> = if target.section == Section::Rollups {
                    vec![(target.name.as_str(), DataKind::Rows)]
                } else {
                    outputs(target.section, target_type)
                };
                let Some(&(default_port, _)) = outs.first() else {
                    continue;
                };
                let port = r.port.as_deref().unwrap_or(default_port);
                let Some(&(port, kind)) = outs.iter().find(|(p, _)| *p == port) else {
                    let list: Vec<String> = outs
                        .iter()
                        .enumerate()
                        .map(|(k, (p, _))| {
                            if k == 0 {
                                format!("`{p}` (default)")
                            } else {
                                format!("`{p}`")
                            }
                        })
                        .collect();
                    let mean = did_you_mean(port, outs.iter().map(|(p, _)| *p))
                        .map(|m| format!("{m} "))
                        .unwrap_or_default();
                    self.report.push(
                        r.pos,
                        r.key.clone(),
                        format!(
                            "{target_type} {} `{}` has no output `{port}` (in `from: {}`)",
                            target.section.noun(),
                            r.node,
                            r.text
                        ),
                        Some(format!(
                            "{mean}outputs of `{}`: {}",
                            r.node,
                            list.join(", ")
                        )),
                    );
                    continue;
                };
                let stream = StreamRef {
                    node: target.name.clone(),
                    port: port.to_owned(),
                };
                if let Some(my_type) = me.type_name {
                    let ok = accepts(me.section, my_type);
                    if !ok.contains(&kind) {
                        let (reads, hint) = match ok.first() {
                            Some(DataKind::Traces) => (
                                "traces",
                                "traces are a session_window's `traces` or a tail_sampling's \
                                 `traces` and `kept`",
                            ),
                            Some(DataKind::Intervals) => (
                                "metric streams",
                                "metric streams are a red_metrics' `red_metrics` and `exemplars` \
                                 and a service_graph's `service_relation`",
                            ),
                            _ => (
                                "span streams",
                                "span streams are a source's `spans` and a session_window's `late_spans`",
                            ),
                        };
                        self.report.push(
                            r.pos,
                            r.key.clone(),
                            format!(
                                "{my_type} reads {reads}, but `{stream}` carries {}",
                                kind.as_str()
                            ),
                            Some(hint.into()),
                        );
                        continue;
                    }
                }
                if let Some(first) = seen.get(&stream) {
                    self.report.push(
                        r.pos,
                        r.key.clone(),
                        format!(
                            "{} `{}` reads `{stream}` twice (`{first}` and `{}`)",
                            me.section.noun(),
                            me.name,
                            r.text
                        ),
                        Some(format!("remove `{}` from `from`", r.text)),
                    );
                    continue;
                }
                seen.insert(stream.clone(), r.text.clone());
                if target.section == Section::Operators {
                    reads[i].push((t, r.pos, r.key.clone()));
                }
                resolved.push(stream);
            }
            decls[i].resolved = resolved;
        }
        self.check_table_names(decls);
        self.check_cycles(decls, &reads);
    }

    /// Two streams a sink writes must not land in one table (after `table_names`
    /// renamed streams that share a port name).
    fn check_table_names(&mut self, decls: &[Decl]) {
        let names = super::spec::table_names(
            decls
                .iter()
                .filter(|d| d.section == Section::Sinks)
                .flat_map(|d| &d.resolved),
        );
        for d in decls.iter().filter(|d| d.section == Section::Sinks) {
            let mut seen: HashMap<&str, &StreamRef> = HashMap::new();
            for s in &d.resolved {
                let Some(table) = names.get(s) else { continue };
                if let Some(first) = seen.insert(table.as_str(), s) {
                    self.report.push(
                        d.name_pos,
                        d.path.clone(),
                        format!(
                            "sink `{}` would write `{first}` and `{s}` to the same table `{table}`",
                            d.name
                        ),
                        Some("rename one of the nodes, or send one stream to a second sink".into()),
                    );
                }
            }
        }
    }

    /// Reports each cycle among operators once, at the `from` entry of its first node
    /// (in file order) that closes it.
    fn check_cycles(&mut self, decls: &[Decl], reads: &[Vec<(usize, Pos, String)>]) {
        let mut reported: HashSet<usize> = HashSet::new();
        for v in 0..decls.len() {
            if reported.contains(&v) {
                continue;
            }
            for (u, pos, key) in &reads[v] {
                // `v` reads `u`; a cycle when `u` (transitively) reads `v`.
                let Some(path) = reads_path(reads, *u, v) else {
                    continue;
                };
                // Data flows against the reads: v -> ... -> u -> v.
                let flow: Vec<String> = path
                    .iter()
                    .rev()
                    .chain(std::iter::once(&v))
                    .map(|&k| format!("`{}`", decls[k].name))
                    .collect();
                let flow = flow.join(" -> ");
                self.report.push(
                    *pos,
                    key.clone(),
                    format!(
                        "`from` makes a cycle: {flow}; streams must flow from sources to sinks \
                         without loops"
                    ),
                    Some("remove one of the `from` entries along the cycle".into()),
                );
                reported.extend(path);
                break;
            }
        }
    }
}

/// A shortest path `[from, ..., to]` along "reads" edges, if any.
fn reads_path(reads: &[Vec<(usize, Pos, String)>], from: usize, to: usize) -> Option<Vec<usize>> {
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut visited: HashSet<usize> = HashSet::from([from]);
    let mut found = from == to;
    while !found && let Some(x) = queue.pop_front() {
        for (w, _, _) in &reads[x] {
            if visited.insert(*w) {
                prev.insert(*w, x);
                if *w == to {
                    found = true;
                    break;
                }
                queue.push_back(*w);
            }
        }
    }
    if !found {
        return None;
    }
    let mut path = vec![to];
    let mut cur = to;
    while cur != from {
        cur = *prev.get(&cur)?;
        path.push(cur);
    }
    path.reverse();
    Some(path)
}

/// The position of the value at `path` under `node`, or of the deepest part of it that is
/// in the file (a defaulted key is not); `None` when not even the first key is.
pub(super) fn locate(node: &Node, path: &[String]) -> Option<Pos> {
    let mut cur = node;
    let mut found = None;
    for seg in path {
        let next = match &cur.value {
            Value::Map(entries) => entries
                .iter()
                .find(|e| e.key_text() == seg)
                .map(|e| &e.value),
            Value::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Scalar(_) => None,
        };
        match next {
            Some(n) => {
                cur = n;
                found = Some(n.pos);
            }
            None => break,
        }
    }
    found
}

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
use spanflow_operators::{ConfigIssue, HumanDuration};

use super::de::{self, DeError, DeErrorKind};
use super::diagnostics::{Diagnostic, Diagnostics};
use super::spec::{
    CheckpointConfig, Job, OperatorKind, OperatorNode, RollupConfig, RollupNode, SinkKind,
    SinkNode, SourceKind, SourceNode, StreamRef, WatermarkConfig,
};
use super::yaml::{self, Document, Entry, Node, NodeId, Pos, Resolved, Value};
use crate::connectors::clickhouse::ClickHouseSinkConfig;
use crate::connectors::file::FileSourceConfig;
use crate::connectors::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use crate::connectors::otlp::OtlpSourceConfig;
use crate::connectors::parquet::ParquetSinkConfig;
use crate::testkit::generator::GeneratorConfig;

mod clickhouse;
mod graph;
mod rollups;

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
    load_str_with(path, text, &[])
}

/// One `--set KEY=VALUE` of a command line: the value (a YAML fragment) at a dotted key
/// path of the job file replaces what the file says, or is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Dotted key path, e.g. `sinks.ch.database`.
    pub key: String,
    /// The value as YAML, e.g. `backfill` or `[a, b]`.
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Override {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!(
                "`{s}` is not KEY=VALUE (e.g. `sinks.ch.database=backfill`)"
            )),
        }
    }
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// [`load`] with overrides applied to the file's tree before anything is checked, so
/// an overridden value is validated like any other; its problems are reported at
/// `--set:N` (the N-th override).
pub fn load_with(path: &Path, overrides: &[Override]) -> Result<Job, Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str_with(path, &text, overrides),
        Err(_) => load(path),
    }
}

/// [`load_with`] from text.
pub fn load_str_with(path: &Path, text: &str, overrides: &[Override]) -> Result<Job, Diagnostics> {
    let mut report = Report {
        file: path.to_owned(),
        lines: text.lines().collect(),
        items: Vec::new(),
        overrides: overrides.iter().map(ToString::to_string).collect(),
    };
    let mut doc = match yaml::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            report.push(e.pos, "", format!("invalid YAML: {}", e.message), None);
            return Err(report.finish());
        }
    };
    for (i, o) in overrides.iter().enumerate() {
        if let Err(message) = doc.set(i, &o.key, &o.value) {
            report.push(yaml::override_pos(i), o.key.clone(), message, None);
        }
    }
    if !report.items.is_empty() {
        return Err(report.finish());
    }
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
    /// The command line's `--set` overrides (`key=value`), which problems at
    /// [`yaml::override_pos`] point into.
    overrides: Vec<String>,
}

impl Report<'_> {
    fn push(
        &mut self,
        pos: Pos,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        if pos.line == 0
            && let Some(text) = pos
                .column
                .checked_sub(1)
                .and_then(|i| self.overrides.get(i))
        {
            // A value from the command line: point at it there.
            let value_at = text.find('=').map_or(0, |i| i + 1);
            self.items.push(Diagnostic {
                file: PathBuf::from("--set"),
                line: pos.column,
                column: value_at + 1,
                key: key.into(),
                message: message.into(),
                hint,
                width: text.chars().count().saturating_sub(value_at),
                source_line: Some(text.clone()),
            });
            return;
        }
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
    "checkpoint",
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
            Section::Sources => vec!["generator", "file", "kafka", "otlp"],
            Section::Operators => OperatorKind::SHAPES.iter().map(|s| s.kind).collect(),
            Section::Sinks => vec!["parquet", "kafka", "clickhouse", "alertmanager"],
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
            DataKind::Alerts,
        ],
        Section::Sources => Vec::new(),
    }
}

/// Reads one component's config for [`OperatorKind::parse`], with the loader's
/// diagnostics.
struct ComponentReader<'l, 'd, 't, 'e> {
    loader: &'l mut Loader<'d, 't>,
    section: Section,
    entry: &'e Entry,
    what: &'e str,
}

impl super::spec::ConfigReader for ComponentReader<'_, '_, '_, '_> {
    fn read<T: DeserializeOwned>(&mut self, validate: fn(&T) -> Vec<ConfigIssue>) -> Option<T> {
        self.loader
            .component::<T>(self.section, self.entry, self.what, validate)
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
    /// A rollup's, an alerts node's or a sink's node, to place errors found after it
    /// is built (in its queries, or about what it reads).
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
        let mut checkpoint = None;
        let mut decls = Vec::new();
        let mut section_keys: HashMap<&str, Pos> = HashMap::new();
        for e in entries {
            match e.key_text() {
                "name" => name = self.job_name(&e.value),
                "parallelism" => parallelism = self.parallelism(&e.value),
                "checkpoint" => checkpoint = self.checkpoint(e),
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
        self.plan_alert_queries(&decls);
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
            checkpoint,
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
        // Alerts' queries are planned once the graph is known (`plan_alert_queries`).
        if section == Section::Sinks || type_name == "alerts" {
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
            op if section == Section::Operators => {
                let mut reader = ComponentReader {
                    loader: self,
                    section,
                    entry: e,
                    what: &what,
                };
                OperatorKind::parse(op, &mut reader)
                    .flatten()
                    .map(Built::Operator)
            }
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
            "alertmanager" if section == Section::Sinks => self
                .component::<crate::connectors::alertmanager::AlertmanagerSinkConfig>(
                    section,
                    e,
                    &what,
                    crate::connectors::alertmanager::AlertmanagerSinkConfig::validate,
                )
                .map(|c| Built::Sink(SinkKind::Alertmanager(c))),
            "kafka" if section == Section::Sinks => self
                .component::<KafkaSinkConfig>(section, e, &what, KafkaSinkConfig::validate)
                .map(|c| Built::Sink(SinkKind::Kafka(c))),
            "otlp" => {
                let cfg = self.component::<OtlpSourceConfig>(
                    section,
                    e,
                    &what,
                    OtlpSourceConfig::validate,
                );
                let wm = self.watermark(fields, &name);
                cfg.zip(wm).map(|(mut c, w)| {
                    if let Some(base) = &self.base_dir {
                        for t in &mut c.tenants {
                            t.key_file = t.key_file.take().map(|p| base.join(p));
                        }
                    }
                    Built::Source(SourceKind::Otlp(c), w)
                })
            }
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

    fn checkpoint(&mut self, e: &Entry) -> Option<CheckpointConfig> {
        if is_null(&e.value) {
            return None;
        }
        let (value, errors) = de::deserialize_all::<CheckpointConfig>(&e.value);
        let clean = errors.is_empty();
        for err in errors {
            self.de_error(err, e.value.id, None, "`checkpoint`");
        }
        let value = value?;
        let issues = value.validate();
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
}

/// The node at `path` under `node`, if the file has it.
pub(super) fn node_at<'n>(node: &'n Node, path: &[&str]) -> Option<&'n Node> {
    let mut cur = node;
    for seg in path {
        cur = match &cur.value {
            Value::Map(entries) => entries
                .iter()
                .find(|e| e.key_text() == *seg)
                .map(|e| &e.value),
            Value::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Scalar(_) => None,
        }?;
    }
    Some(cur)
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

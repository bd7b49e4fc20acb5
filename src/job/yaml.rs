//! A YAML tree that keeps the position of every key and value.
//!
//! serde-saphyr loses positions inside internally tagged enums (the shape of every
//! `type:`-dispatched node), so the job loader parses the document with its event parser
//! (`granit_parser`) into this tree first. Every key and value gets a [`NodeId`] and a
//! [`NodeInfo`] (position, dotted key path, parent), which lets the loader map any error,
//! from serde or from a component's `validate()`, back to `line:column`.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, ScanError, Span};

/// A 1-based position in the job file, with the width of the token found there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    /// Line, 1-based.
    pub line: usize,
    /// Column in characters, 1-based.
    pub column: usize,
    /// Width of the token in characters (0 when unknown or multi-line).
    pub width: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        let width = if span.end.line() == span.start.line() {
            span.end.col().saturating_sub(span.start.col())
        } else {
            0
        };
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
            width,
        }
    }
}

/// Index of a node in [`Document::info`].
pub(crate) type NodeId = usize;

/// A key or value of the document.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Its index in [`Document::info`].
    pub id: NodeId,
    /// Where it starts.
    pub pos: Pos,
    /// What it holds.
    pub value: Value,
}

/// The content of a [`Node`].
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A scalar, as written.
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, without duplicate keys.
    Map(Vec<Entry>),
}

/// A scalar and whether its type is to be resolved (plain, untagged) or it is a string.
#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    /// The text after escape processing.
    pub text: String,
    /// Plain and untagged: `10`, `true`, `~` resolve to numbers, booleans, null.
    pub plain: bool,
}

/// One `key: value` of a mapping.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The key (always a scalar).
    pub key: Node,
    /// The value.
    pub value: Node,
}

impl Entry {
    /// The key's text.
    pub fn key_text(&self) -> &str {
        match &self.key.value {
            Value::Scalar(s) => &s.text,
            _ => "",
        }
    }
}

/// A scalar's value under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Resolved<'a> {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits (signed or not).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// Anything else.
    Str(&'a str),
}

impl Scalar {
    /// Resolves the scalar's type the way YAML 1.2's core schema does.
    pub fn resolve(&self) -> Resolved<'_> {
        let t = self.text.as_str();
        if !self.plain {
            return Resolved::Str(t);
        }
        match t {
            "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
            "true" | "True" | "TRUE" => return Resolved::Bool(true),
            "false" | "False" | "FALSE" => return Resolved::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
                return Resolved::Float(f64::INFINITY);
            }
            "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
            _ => {}
        }
        if let Some(i) = parse_int(t) {
            return Resolved::Int(i);
        }
        let numeric = t.bytes().any(|b| b.is_ascii_digit())
            && t.bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
        if numeric && let Ok(f) = t.parse::<f64>() {
            return Resolved::Float(f);
        }
        Resolved::Str(t)
    }
}

fn parse_int(t: &str) -> Option<i128> {
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(d) = digits.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = digits.strip_prefix("0o") {
        (8, d)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(digits, radix).ok()?;
    let v = if neg { -v } else { v };
    (i128::from(i64::MIN)..=i128::from(u64::MAX))
        .contains(&v)
        .then_some(v)
}

/// What the loader knows about each node, by [`NodeId`].
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    /// Keys and list indexes from the document root.
    pub path: Vec<String>,
    /// Where the node starts.
    pub pos: Pos,
    /// For a mapping value: the position of its key.
    pub key_pos: Option<Pos>,
    /// The containing mapping or sequence.
    pub parent: Option<NodeId>,
}

/// A problem found while building the tree (duplicate keys, non-scalar keys, ...).
#[derive(Debug, Clone)]
pub(crate) struct TreeProblem {
    /// Where.
    pub pos: Pos,
    /// Dotted key path.
    pub key: String,
    /// The rule and the value found.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// What it expected.
    pub message: String,
}

/// A parsed job file.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    /// The root node; `None` for an empty document.
    pub root: Option<Node>,
    /// Per-node facts, indexed by [`NodeId`].
    pub info: Vec<NodeInfo>,
    /// Structural problems that did not stop parsing.
    pub problems: Vec<TreeProblem>,
}

impl Document {
    /// The dotted key path of a node (`operators.sessions.gap_rules.1.gap`).
    #[cfg(test)]
    pub fn key(&self, id: NodeId) -> String {
        self.info
            .get(id)
            .map(|i| i.path.join("."))
            .unwrap_or_default()
    }
}

/// Parses one YAML document into a positioned tree.
pub(crate) fn parse(text: &str) -> Result<Document, SyntaxError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        info: Vec::new(),
        anchors: HashMap::new(),
        problems: Vec::new(),
    };
    let mut root = None;
    let mut documents = 0usize;
    while let Some((event, span)) = b.next()? {
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart(..) => documents += 1,
            Event::DocumentEnd => {}
            event if documents == 1 => {
                root = Some(b.node(event, span, Vec::new(), None, None)?);
            }
            _ => {
                // A second document: report it once and stop reading.
                b.problems.push(TreeProblem {
                    pos: Pos::from_span(&span),
                    key: String::new(),
                    message: "a job file holds one YAML document, found a second one".into(),
                    hint: Some("remove the `---` line and what follows it".into()),
                });
                break;
            }
        }
    }
    Ok(Document {
        root,
        info: b.info,
        problems: b.problems,
    })
}

struct Builder<'a> {
    parser: Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>,
    info: Vec<NodeInfo>,
    anchors: HashMap<usize, Node>,
    problems: Vec<TreeProblem>,
}

fn syntax(e: ScanError) -> SyntaxError {
    let m = e.marker();
    SyntaxError {
        pos: Pos {
            line: m.line().max(1),
            column: m.col() + 1,
            width: 1,
        },
        message: e.info(),
    }
}

impl<'a> Builder<'a> {
    /// The next event that is part of the data model (comments and anchor metadata are
    /// skipped).
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, SyntaxError> {
        loop {
            match self.parser.next() {
                None => return Ok(None),
                Some(Err(e)) => return Err(syntax(e)),
                Some(Ok((event, span))) => match event {
                    Event::StreamStart | Event::Anchor(..) => continue,
                    Event::StreamEnd
                    | Event::DocumentStart(..)
                    | Event::DocumentEnd
                    | Event::Alias(..)
                    | Event::UnresolvedAlias(..)
                    | Event::Scalar(..)
                    | Event::SequenceStart(..)
                    | Event::SequenceEnd
                    | Event::MappingStart(..)
                    | Event::MappingEnd => return Ok(Some((event, span))),
                    #[allow(unreachable_patterns)]
                    _ => continue,
                },
            }
        }
    }

    fn next_required(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.next()? {
            Some(e) => Ok(e),
            None => Err(SyntaxError {
                pos: Pos {
                    line: 1,
                    column: 1,
                    width: 1,
                },
                message: "unexpected end of input".into(),
            }),
        }
    }

    fn alloc(
        &mut self,
        path: Vec<String>,
        pos: Pos,
        key_pos: Option<Pos>,
        parent: Option<NodeId>,
    ) -> NodeId {
        self.info.push(NodeInfo {
            path,
            pos,
            key_pos,
            parent,
        });
        self.info.len() - 1
    }

    /// Adds the entries of a merged map (or list of maps) that `entries` lacks; the
    /// copies keep the positions of their definition.
    fn merge(&mut self, entries: &mut Vec<Entry>, merged: Node, path: &[String]) {
        match merged.value {
            Value::Map(more) => {
                for e in more {
                    if !entries.iter().any(|x| x.key_text() == e.key_text()) {
                        entries.push(e);
                    }
                }
            }
            Value::Seq(items) => {
                for item in items {
                    self.merge(entries, item, path);
                }
            }
            Value::Scalar(_) => self.problems.push(TreeProblem {
                pos: merged.pos,
                key: path.join("."),
                message: "`<<` merges a map or a list of maps, found a scalar".into(),
                hint: Some("write `<<: *name` where `&name` marks a map".into()),
            }),
        }
    }

    fn node(
        &mut self,
        event: Event<'a>,
        span: Span,
        path: Vec<String>,
        key_pos: Option<Pos>,
        parent: Option<NodeId>,
    ) -> Result<Node, SyntaxError> {
        let pos = Pos::from_span(&span);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let is_str_tag = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let id = self.alloc(path, pos, key_pos, parent);
                let node = Node {
                    id,
                    pos,
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain && !is_str_tag,
                    }),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                Ok(node)
            }
            Event::SequenceStart(_, anchor, _) => {
                let id = self.alloc(path.clone(), pos, key_pos, parent);
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next_required()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let mut item_path = path.clone();
                    item_path.push(items.len().to_string());
                    items.push(self.node(event, span, item_path, None, Some(id))?);
                }
                let node = Node {
                    id,
                    pos,
                    value: Value::Seq(items),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                Ok(node)
            }
            Event::MappingStart(_, anchor, _) => {
                let id = self.alloc(path.clone(), pos, key_pos, parent);
                let mut entries: Vec<Entry> = Vec::new();
                let mut merges: Vec<Node> = Vec::new();
                loop {
                    let (event, span) = self.next_required()?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key_span_pos = Pos::from_span(&span);
                    // The key's path is provisional until we know its text.
                    let key = self.node(event, span, path.clone(), None, Some(id))?;
                    let key_text = match &key.value {
                        Value::Scalar(s) => Some(s.text.clone()),
                        _ => None,
                    };
                    let mut value_path = path.clone();
                    value_path.push(key_text.clone().unwrap_or_else(|| "?".into()));
                    if let Some(info) = self.info.get_mut(key.id) {
                        info.path = value_path.clone();
                    }
                    let (event, span) = self.next_required()?;
                    let value =
                        self.node(event, span, value_path.clone(), Some(key.pos), Some(id))?;
                    let Some(key_text) = key_text else {
                        self.problems.push(TreeProblem {
                            pos: key_span_pos,
                            key: path.join("."),
                            message:
                                "keys must be plain strings, found a list or map used as a key"
                                    .into(),
                            hint: None,
                        });
                        continue;
                    };
                    if key_text == "<<" && matches!(&key.value, Value::Scalar(s) if s.plain) {
                        // A merge key (`<<: *defaults`): applied once the map is complete,
                        // since the map's own keys take precedence.
                        merges.push(value);
                        continue;
                    }
                    if let Some(first) = entries.iter().find(|e| e.key_text() == key_text) {
                        self.problems.push(TreeProblem {
                            pos: key.pos,
                            key: value_path.join("."),
                            message: format!(
                                "duplicate key `{key_text}`: keys must be unique within a map, \
                                 `{key_text}` is already defined at line {}",
                                first.key.pos.line
                            ),
                            hint: Some(format!("remove or rename one of the two `{key_text}`")),
                        });
                        continue;
                    }
                    entries.push(Entry { key, value });
                }
                for m in merges {
                    self.merge(&mut entries, m, &path);
                }
                let node = Node {
                    id,
                    pos,
                    value: Value::Map(entries),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                Ok(node)
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                // The copy keeps the anchor's ids: problems inside it point at the anchor.
                Some(node) => Ok(node.clone()),
                None => Err(SyntaxError {
                    pos,
                    message: "unknown anchor".into(),
                }),
            },
            Event::UnresolvedAlias(name) => Err(SyntaxError {
                pos,
                message: format!("unknown anchor `{name}`"),
            }),
            _ => Err(SyntaxError {
                pos,
                message: "unexpected YAML event".into(),
            }),
        }
    }
}

/// Where the nodes grafted by [`Document::set`] point: line 0 marks "not in the file",
/// the column is the 1-based index of the override.
pub(crate) fn override_pos(index: usize) -> Pos {
    Pos {
        line: 0,
        column: index + 1,
        width: 0,
    }
}

impl Document {
    /// Sets the value at a dotted key path (`sinks.ch.database`) to `value`, a YAML
    /// fragment (`backfill`, `[a, b]`, `{x: 1}`): the override number `index` of a
    /// command line. A key missing from a map is added, with the rest of the path as
    /// its name (so `properties.fetch.max.bytes` adds the key `fetch.max.bytes`); list
    /// items are named by index. The new nodes are placed at [`override_pos`].
    pub fn set(&mut self, index: usize, key: &str, value: &str) -> Result<(), String> {
        let fragment = parse(value).map_err(|e| format!("`{value}` is not YAML: {}", e.message))?;
        if let Some(p) = fragment.problems.first() {
            return Err(format!("`{value}`: {}", p.message));
        }
        let segments: Vec<&str> = key.split('.').collect();
        if key.is_empty() || segments.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "`{key}` is not a dotted key path such as `sinks.out.path`"
            ));
        }
        let Some(mut root) = self.root.take() else {
            return Err("the job file is empty".into());
        };
        let result = self.set_in(&mut root, &segments, index, &fragment);
        self.root = Some(root);
        result
    }

    fn set_in(
        &mut self,
        root: &mut Node,
        segments: &[&str],
        index: usize,
        fragment: &Document,
    ) -> Result<(), String> {
        let pos = override_pos(index);
        let mut node = root;
        let mut path: Vec<String> = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let parent = node.id;
            let here = if path.is_empty() {
                "the job".to_owned()
            } else {
                format!("`{}`", path.join("."))
            };
            match &mut node.value {
                Value::Map(entries) => match entries.iter().position(|e| e.key_text() == *seg) {
                    Some(at) => {
                        path.push((*seg).to_owned());
                        if last {
                            entries[at].value =
                                self.graft(fragment.root.as_ref(), &path, parent, pos);
                            return Ok(());
                        }
                        node = &mut entries[at].value;
                    }
                    None => {
                        let name = segments[i..].join(".");
                        path.push(name.clone());
                        let key_id = self.alloc(path.clone(), pos, Some(parent));
                        let value = self.graft(fragment.root.as_ref(), &path, parent, pos);
                        entries.push(Entry {
                            key: Node {
                                id: key_id,
                                pos,
                                value: Value::Scalar(Scalar {
                                    text: name,
                                    plain: true,
                                }),
                            },
                            value,
                        });
                        return Ok(());
                    }
                },
                Value::Seq(items) => {
                    let n = items.len();
                    let Some(at) = seg.parse::<usize>().ok().filter(|i| *i < n) else {
                        return Err(format!(
                            "{here} is a list of {n} items: `{seg}` is not one of its indexes"
                        ));
                    };
                    path.push((*seg).to_owned());
                    if last {
                        items[at] = self.graft(fragment.root.as_ref(), &path, parent, pos);
                        return Ok(());
                    }
                    node = &mut items[at];
                }
                Value::Scalar(s) => {
                    return Err(format!(
                        "{here} is the value `{}`, not a map: it has no key `{seg}`",
                        s.text
                    ));
                }
            }
        }
        Ok(())
    }

    fn alloc(&mut self, path: Vec<String>, pos: Pos, parent: Option<NodeId>) -> NodeId {
        self.info.push(NodeInfo {
            path,
            pos,
            key_pos: Some(pos),
            parent,
        });
        self.info.len() - 1
    }

    /// Copies a fragment's node into this document under `path` (fresh ids).
    fn graft(&mut self, node: Option<&Node>, path: &[String], parent: NodeId, pos: Pos) -> Node {
        let id = self.alloc(path.to_vec(), pos, Some(parent));
        let value = match node.map(|n| &n.value) {
            None => Value::Scalar(Scalar {
                text: String::new(),
                plain: true,
            }),
            Some(Value::Scalar(s)) => Value::Scalar(s.clone()),
            Some(Value::Seq(items)) => Value::Seq(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let mut p = path.to_vec();
                        p.push(i.to_string());
                        self.graft(Some(item), &p, id, pos)
                    })
                    .collect(),
            ),
            Some(Value::Map(entries)) => Value::Map(
                entries
                    .iter()
                    .map(|e| {
                        let mut p = path.to_vec();
                        p.push(e.key_text().to_owned());
                        let key = Node {
                            id: self.alloc(p.clone(), pos, Some(id)),
                            pos,
                            value: e.key.value.clone(),
                        };
                        let value = self.graft(Some(&e.value), &p, id, pos);
                        Entry { key, value }
                    })
                    .collect(),
            ),
        };
        Node { id, pos, value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_paths() {
        let doc = parse("a: 1\nb:\n  c: [x, 'y']\n").unwrap();
        let root = doc.root.clone().unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert_eq!(
            entries[1].key.pos,
            Pos {
                line: 2,
                column: 1,
                width: 1
            }
        );
        let Value::Map(inner) = &entries[1].value.value else {
            panic!("not a map")
        };
        let Value::Seq(items) = &inner[0].value.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].pos.line, 3);
        assert_eq!(items[1].pos.column, 10);
        assert_eq!(doc.key(items[1].id), "b.c.1");
        assert_eq!(doc.key(inner[0].key.id), "b.c");
    }

    #[test]
    fn scalars_resolve_like_yaml_1_2() {
        let s = |t: &str| Scalar {
            text: t.into(),
            plain: true,
        };
        assert_eq!(s("~").resolve(), Resolved::Null);
        assert_eq!(s("true").resolve(), Resolved::Bool(true));
        assert_eq!(s("-12").resolve(), Resolved::Int(-12));
        assert_eq!(s("0x10").resolve(), Resolved::Int(16));
        assert_eq!(s("0.5").resolve(), Resolved::Float(0.5));
        assert_eq!(s("10s").resolve(), Resolved::Str("10s"));
        assert_eq!(s("yes").resolve(), Resolved::Str("yes"));
        let quoted = Scalar {
            text: "12".into(),
            plain: false,
        };
        assert_eq!(quoted.resolve(), Resolved::Str("12"));
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let doc = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(doc.problems[0].pos.line, 2);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: 1\nb: x: y\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (2, 5));
    }
}

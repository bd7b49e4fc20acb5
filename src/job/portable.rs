//! A job file made self-contained, to run somewhere else (`spanflow submit`): rollup
//! queries read from `sql:` files are written inline as `query:`, relative file-source
//! paths become absolute (against the job file's directory) and relative Parquet
//! outputs absolute (against the working directory, as `spanflow run` would write
//! them). Everything else, comments and key order included, stays as written: the
//! edits replace single tokens in the text.

use std::path::{Path, PathBuf};

use super::diagnostics::{Diagnostic, Diagnostics};
use super::yaml::{self, Entry, Node, Pos, Value};

/// One token of the text to replace.
struct Edit {
    pos: Pos,
    with: String,
}

/// `path`'s job, validated, with its relative files resolved here (see the module
/// docs); the result validates too.
pub fn self_contained(path: &Path) -> Result<String, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        one(
            path,
            Pos::default(),
            format!("cannot read job file `{}`: {e}", path.display()),
        )
    })?;
    let job = super::load_str(path, &text)?;
    let doc = yaml::parse(&text).map_err(|e| one(path, e.pos, e.message))?;
    let base = path.parent().unwrap_or(Path::new("")).to_owned();
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut edits = Vec::new();
    let Some(Node {
        value: Value::Map(top),
        ..
    }) = &doc.root
    else {
        return Ok(text);
    };
    for section in top {
        let Value::Map(entries) = &section.value.value else {
            continue;
        };
        for e in entries {
            let Value::Map(fields) = &e.value.value else {
                continue;
            };
            match section.key_text() {
                "rollups" => {
                    if let Some(sql) = field(fields, "sql") {
                        let Some(r) = job.rollups.iter().find(|r| r.name == e.key_text()) else {
                            continue;
                        };
                        edits.push(Edit {
                            pos: sql.key.pos,
                            with: "query".into(),
                        });
                        edits.push(Edit {
                            pos: sql.value.pos,
                            with: quoted(&r.query),
                        });
                    }
                }
                "sources" if type_is(fields, "file") => {
                    if let Some(paths) = field(fields, "paths") {
                        let items = match &paths.value.value {
                            Value::Seq(items) => items.iter().collect(),
                            Value::Scalar(_) => vec![&paths.value],
                            Value::Map(_) => Vec::new(),
                        };
                        for item in items {
                            absolute(item, &base, &mut edits);
                        }
                    }
                }
                "sinks" if type_is(fields, "parquet") => {
                    if let Some(p) = field(fields, "path") {
                        absolute(&p.value, &cwd, &mut edits);
                    }
                }
                _ => {}
            }
        }
    }
    let out = apply(&text, edits).map_err(|(pos, m)| one(path, pos, m))?;
    super::load_str(path, &out)?;
    Ok(out)
}

fn field<'a>(fields: &'a [Entry], key: &str) -> Option<&'a Entry> {
    fields.iter().find(|f| f.key_text() == key)
}

fn type_is(fields: &[Entry], kind: &str) -> bool {
    field(fields, "type")
        .is_some_and(|t| matches!(&t.value.value, Value::Scalar(s) if s.text == kind))
}

/// Replaces a relative path scalar by `base` joined with it.
fn absolute(node: &Node, base: &Path, edits: &mut Vec<Edit>) {
    if let Value::Scalar(s) = &node.value {
        let p = PathBuf::from(&s.text);
        if p.is_relative() && !s.text.is_empty() {
            edits.push(Edit {
                pos: node.pos,
                with: quoted(&base.join(p).display().to_string()),
            });
        }
    }
}

/// A YAML double-quoted scalar (JSON's escapes are YAML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Applies the edits, last first, so earlier positions stay valid.
fn apply(text: &str, mut edits: Vec<Edit>) -> Result<String, (Pos, String)> {
    let mut line_starts = vec![0];
    line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    edits.sort_by_key(|e| std::cmp::Reverse((e.pos.line, e.pos.column)));
    let mut out = text.to_owned();
    for e in edits {
        if e.pos.width == 0 {
            return Err((
                e.pos,
                "this value spans several lines; write it on one line to submit the job".into(),
            ));
        }
        let start_of_line = line_starts
            .get(e.pos.line.saturating_sub(1))
            .copied()
            .ok_or((e.pos, "position past the end of the file".to_string()))?;
        let line = &text[start_of_line..];
        let byte = |chars: usize| {
            line.char_indices()
                .nth(chars)
                .map_or(line.len(), |(i, _)| i)
        };
        let from = start_of_line + byte(e.pos.column.saturating_sub(1));
        let to = start_of_line + byte(e.pos.column.saturating_sub(1) + e.pos.width);
        out.replace_range(from..to, &e.with);
    }
    Ok(out)
}

fn one(path: &Path, pos: Pos, message: String) -> Diagnostics {
    Diagnostics {
        items: vec![Diagnostic {
            file: path.to_owned(),
            line: pos.line,
            column: pos.column,
            key: String::new(),
            message,
            hint: None,
            width: pos.width,
            source_line: None,
        }],
    }
}

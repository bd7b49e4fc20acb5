//! Problems found in a job file, each located at `file:line:column`, and their rendering
//! for people (rustc-like) and for tools (JSON).

use std::fmt::{self, Write as _};
use std::path::PathBuf;

/// One problem in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The job file, as given to [`load`](super::load()).
    pub file: PathBuf,
    /// 1-based line of the offending key or value (0 when the problem is not inside the
    /// file, e.g. it cannot be read).
    pub line: usize,
    /// 1-based column, in characters (0 when `line` is 0).
    pub column: usize,
    /// Dotted path of the offending key, e.g. `operators.sessions.gap_rules.1.gap`
    /// (empty for problems of the whole file, such as a syntax error).
    pub key: String,
    /// The rule that was broken and the value found; names the key in backticks.
    pub message: String,
    /// How to fix it, e.g. "did you mean `max_duration`?".
    pub hint: Option<String>,
    /// Width in characters of the offending token, for underlining (0 = unknown).
    pub width: usize,
    /// The source line the diagnostic points into, for the snippet.
    pub source_line: Option<String>,
}

/// Every problem found in a job file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics {
    /// The problems.
    pub items: Vec<Diagnostic>,
}

const RED: &str = "\x1b[1;31m";
const BLUE: &str = "\x1b[1;34m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl Diagnostics {
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there is no problem.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Renders the problems like rustc does:
    ///
    /// ```text
    /// error: unknown key `gapp`
    ///   --> jobs/x.yaml:14:5
    ///    |
    /// 14 |     gapp: 10s
    ///    |     ^^^^
    ///    = help: did you mean `gap`?
    /// ```
    ///
    /// With `color`, ANSI escapes highlight the parts (for terminals).
    pub fn render_human(&self, color: bool) -> String {
        let paint = |style: &str, text: &str| {
            if color {
                format!("{style}{text}{RESET}")
            } else {
                text.to_owned()
            }
        };
        let gutter = self
            .items
            .iter()
            .map(|d| d.line.to_string().len())
            .max()
            .unwrap_or(1);
        let pad = " ".repeat(gutter);
        let mut out = String::new();
        for d in &self.items {
            let _ = writeln!(
                out,
                "{}{}",
                paint(RED, "error"),
                paint(BOLD, &format!(": {}", d.message))
            );
            if d.line == 0 {
                let _ = writeln!(out, "{pad}{} {}", paint(BLUE, "-->"), d.file.display());
            } else {
                let _ = writeln!(
                    out,
                    "{pad}{} {}:{}:{}",
                    paint(BLUE, "-->"),
                    d.file.display(),
                    d.line,
                    d.column
                );
            }
            if let Some(src) = d.source_line.as_deref().filter(|_| d.line > 0) {
                let bar = paint(BLUE, "|");
                let _ = writeln!(out, "{pad} {bar}");
                let number = format!("{:>gutter$}", d.line);
                let _ = writeln!(out, "{} {bar} {src}", paint(BLUE, &number));
                // Copy tabs from the line so the carets line up under the token.
                let lead: String = src
                    .chars()
                    .take(d.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let carets = "^".repeat(d.width.max(1));
                let _ = writeln!(out, "{pad} {bar} {lead}{}", paint(RED, &carets));
            }
            if let Some(hint) = &d.hint {
                let _ = writeln!(
                    out,
                    "{pad} {} {}: {hint}",
                    paint(BLUE, "="),
                    paint(BOLD, "help")
                );
            }
            out.push('\n');
        }
        if !self.items.is_empty() {
            let n = self.items.len();
            // Problems of command-line overrides point into the pseudo-file `--set`.
            let place = match self.items.iter().find(|d| d.file.as_os_str() != "--set") {
                Some(d) => format!("job file `{}`", d.file.display()),
                None => "the `--set` overrides".to_owned(),
            };
            let summary = format!("{n} problem{} in {place}", if n == 1 { "" } else { "s" });
            let _ = writeln!(
                out,
                "{}{}",
                paint(RED, "error"),
                paint(BOLD, &format!(": {summary}"))
            );
        }
        out
    }

    /// Renders the problems as a JSON array of
    /// `{"file", "line", "column", "key", "message", "hint"}` objects (`hint` may be
    /// null), for editors and CI.
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_else(|_| "[]".into())
    }

    /// The problems as the JSON array [`Diagnostics::render_json`] prints.
    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|d| {
                serde_json::json!({
                    "file": d.file.display().to_string(),
                    "line": d.line,
                    "column": d.column,
                    "key": d.key,
                    "message": d.message,
                    "hint": d.hint,
                })
            })
            .collect();
        serde_json::Value::Array(items)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render_human(false).trim_end())
    }
}

impl std::error::Error for Diagnostics {}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

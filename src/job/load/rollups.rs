//! Rollups: their declaration, their queries planned at load, errors placed in the
//! query text.

use super::*;

impl Loader<'_, '_> {
    /// A `rollups:` entry: `from`, and `sql` or `query` with an optional `window`.
    pub(super) fn rollup_decl(&mut self, e: &Entry, mut decl: Decl) -> Decl {
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
    pub(super) fn plan_rollups(&mut self, decls: &mut [Decl]) {
        let intervals: HashMap<String, HumanDuration> = decls
            .iter()
            .filter_map(|d| match &d.built {
                Some(Built::Operator(k)) => {
                    let ns = k.merged_interval()?;
                    Some((
                        d.name.clone(),
                        HumanDuration(std::time::Duration::from_nanos(ns)),
                    ))
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
                        planned: crate::sql::rollup::QueryPool::with(q),
                    });
                }
                Err(e) => self.sql_error(d, &e, &text, file.as_deref(), text_pos, node),
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

    /// Plans the `query` of every alert rule that has one against its metric's table,
    /// so a query that cannot run, or whose result is not labels and a `value`, is a
    /// job error at its line and column.
    pub(super) fn plan_alert_queries(&mut self, decls: &[Decl]) {
        for d in decls {
            let (Some(Built::Operator(OperatorKind::Alerts(cfg))), Some(node)) =
                (&d.built, &d.node)
            else {
                continue;
            };
            for (i, rule) in cfg.rules.iter().enumerate() {
                let Some(text) = &rule.query else {
                    continue;
                };
                let planned = futures::executor::block_on(crate::sql::alert::AlertQuery::plan(
                    text,
                    &rule.metric,
                ));
                let Err(e) = planned else {
                    continue;
                };
                let index = i.to_string();
                let query = node_at(node, &["rules", &index, "query"]);
                let pos = match (query, e.line.zip(e.column)) {
                    (Some(q), Some((line, column))) => self.query_pos(q, text, line, column),
                    (Some(q), None) => q.pos,
                    (None, _) => d.name_pos,
                };
                self.report.push(
                    pos,
                    format!("{}.rules.{i}.query", d.path),
                    format!(
                        "alert rule `{}` of `{}`: {} (its query reads the table `{}`)",
                        rule.name,
                        d.name,
                        e.message,
                        crate::sql::alert::table_of(&rule.metric)
                    ),
                    None,
                );
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
}

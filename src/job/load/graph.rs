//! Checks of the job's graph: names, references, what each `from:` carries, table
//! names, cycles.

use super::*;
use spanflow_operators::operator::Scope;
use spanflow_operators::session_window::SessionWindow;

impl Loader<'_, '_> {
    /// Names, references, stream kinds, duplicate inputs, table names, cycles.
    pub(super) fn check_graph(&mut self, decls: &mut [Decl]) {
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
        self.check_merge_inputs(decls, &reads);
        self.check_feedback_chains(decls, &reads);
    }

    /// A node whose merge side answers the shards (a rate-limited sampler) must not
    /// read, even through other operators, what another such node held back for its
    /// own answers: its windows would close before those traces arrive.
    fn check_feedback_chains(&mut self, decls: &[Decl], reads: &[Vec<(usize, Pos, String)>]) {
        let feedback =
            |d: &Decl| matches!(&d.built, Some(Built::Operator(k)) if k.answers_shards());
        // The nearest feedback node upstream of `n`, if any.
        fn upstream(
            decls: &[Decl],
            reads: &[Vec<(usize, Pos, String)>],
            n: usize,
            seen: &mut HashSet<usize>,
            feedback: &dyn Fn(&Decl) -> bool,
        ) -> Option<usize> {
            for (u, _, _) in &reads[n] {
                if !seen.insert(*u) {
                    continue;
                }
                if feedback(&decls[*u]) {
                    return Some(*u);
                }
                if let Some(f) = upstream(decls, reads, *u, seen, feedback) {
                    return Some(f);
                }
            }
            None
        }
        for (i, d) in decls.iter().enumerate() {
            if !feedback(d) {
                continue;
            }
            for (u, pos, key) in &reads[i] {
                let found = if feedback(&decls[*u]) {
                    Some(*u)
                } else {
                    upstream(decls, reads, *u, &mut HashSet::from([*u]), &feedback)
                };
                if let Some(f) = found {
                    self.report.push(
                        *pos,
                        key.clone(),
                        format!(
                            "`{}` rate-limits traces that `{}` already held for its own rate \
                             limit; its windows would close before those traces arrive",
                            d.name, decls[f].name
                        ),
                        Some(
                            "read the session window's `traces` instead, or move the rate \
                             limits into one tail_sampling"
                                .into(),
                        ),
                    );
                    break;
                }
            }
        }
    }

    /// An operator that merges across shards (`red_metrics`, `service_graph`) reads
    /// the traces of one session window: its intervals close by that window's held-back
    /// watermark.
    fn check_merge_inputs(&mut self, decls: &[Decl], reads: &[Vec<(usize, Pos, String)>]) {
        // The session windows upstream of node `n` (a window is its own).
        fn windows(
            decls: &[Decl],
            reads: &[Vec<(usize, Pos, String)>],
            n: usize,
            seen: &mut HashSet<usize>,
            out: &mut Vec<usize>,
        ) {
            if !seen.insert(n) {
                return;
            }
            if decls[n].type_name == Some(SessionWindow::SHAPE.kind) {
                out.push(n);
                return;
            }
            for (u, _, _) in &reads[n] {
                windows(decls, reads, *u, seen, out);
            }
        }
        for (i, d) in decls.iter().enumerate() {
            let merged = d
                .type_name
                .and_then(OperatorKind::shape_of)
                .is_some_and(|s| s.scope == Scope::Merged);
            if d.section != Section::Operators || !merged {
                continue;
            }
            let mut first: Option<usize> = None;
            for (u, pos, key) in &reads[i] {
                let mut found = Vec::new();
                windows(decls, reads, *u, &mut HashSet::new(), &mut found);
                for w in found {
                    match first {
                        None => first = Some(w),
                        Some(f) if f != w => {
                            self.report.push(
                                *pos,
                                key.clone(),
                                format!(
                                    "`{}` reads the traces of two session windows, `{}` and `{}`; \
                                     its intervals close by one window's watermark",
                                    d.name, decls[f].name, decls[w].name
                                ),
                                Some(format!(
                                    "give each window its own {}",
                                    d.type_name.unwrap_or("operator")
                                )),
                            );
                            return;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// Two streams a sink writes must not land in one table (after `table_names`
    /// renamed streams that share a port name).
    fn check_table_names(&mut self, decls: &[Decl]) {
        let names = crate::job::table_names(
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

//! What a ClickHouse sink can write, checked at load.

use super::*;

impl Loader<'_, '_> {
    /// What a ClickHouse sink can only check once its inputs are known: each output
    /// it reads has a table it can create (a rollup's result needs a timestamp column
    /// and types the sink writes), and `tables`/`table_ttl` name outputs it writes.
    pub(super) fn check_clickhouse_sinks(&mut self, decls: &[Decl]) {
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
}

//! Several stores read as one: the job server's Jaeger API answers over the kept traces
//! of all its jobs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Dependency, FoundTrace, StoredTrace, TraceLookup, TraceQuery, TraceStore};
use crate::runtime::io::ConnectorError;

/// Where a [`Union`] gets its stores, asked again for every query (jobs come and go).
#[async_trait]
pub trait StoreSet: Send + Sync + 'static {
    /// The stores now.
    async fn stores(&self) -> Vec<Arc<dyn TraceStore>>;
    /// What the set is, for people.
    fn describe(&self) -> String;
}

/// The stores of a [`StoreSet`] read as one. A store that fails is left out of the
/// answer (logged), so one job's unreachable database does not hide the others'
/// traces; when every store fails, the first failure is the answer.
pub struct Union<S>(pub S);

/// The answers of the stores that answered, or the first failure when none did.
fn answered<T>(results: Vec<Result<T, ConnectorError>>) -> Result<Vec<T>, ConnectorError> {
    let mut ok = Vec::new();
    let mut first = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                tracing::warn!(error = %e.message, "jaeger API: a job's store did not answer");
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) if ok.is_empty() => Err(e),
        _ => Ok(ok),
    }
}

#[async_trait]
impl<S: StoreSet> TraceStore for Union<S> {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn services(&self) -> Result<Vec<String>, ConnectorError> {
        let mut rs = Vec::new();
        for s in self.0.stores().await {
            rs.push(s.services().await);
        }
        let all: BTreeSet<String> = answered(rs)?.into_iter().flatten().collect();
        Ok(all.into_iter().collect())
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let mut rs = Vec::new();
        for s in self.0.stores().await {
            rs.push(s.operations(service, kind).await);
        }
        let all: BTreeSet<(String, String)> = answered(rs)?.into_iter().flatten().collect();
        Ok(all.into_iter().collect())
    }

    async fn find(&self, q: &TraceQuery) -> Result<Vec<FoundTrace>, ConnectorError> {
        let mut rs = Vec::new();
        for s in self.0.stores().await {
            rs.push(s.find(q).await);
        }
        let mut all: Vec<FoundTrace> = answered(rs)?.into_iter().flatten().collect();
        all.sort_by(|a, b| {
            b.start_ns
                .cmp(&a.start_ns)
                .then_with(|| a.trace_id.cmp(&b.trace_id))
        });
        let mut seen = HashSet::new();
        all.retain(|f| seen.insert(f.trace_id));
        all.truncate(q.limit);
        Ok(all)
    }

    async fn traces(&self, lookups: &[TraceLookup]) -> Result<Vec<StoredTrace>, ConnectorError> {
        // Each trace from the first store holding it (two jobs may keep one trace).
        let mut found: BTreeMap<[u8; 16], StoredTrace> = BTreeMap::new();
        let mut rs = Vec::new();
        for s in self.0.stores().await {
            let missing: Vec<TraceLookup> = lookups
                .iter()
                .filter(|l| !found.contains_key(&l.trace_id))
                .copied()
                .collect();
            if missing.is_empty() {
                break;
            }
            match s.traces(&missing).await {
                Ok(ts) => {
                    for t in ts {
                        found.entry(t.trace_id).or_insert(t);
                    }
                    rs.push(Ok(()));
                }
                Err(e) => rs.push(Err(e)),
            }
        }
        answered(rs)?;
        let mut out = Vec::with_capacity(found.len());
        for l in lookups {
            if let Some(t) = found.remove(&l.trace_id) {
                out.push(t);
            }
        }
        Ok(out)
    }

    async fn dependencies(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
    ) -> Result<Vec<Dependency>, ConnectorError> {
        let mut rs = Vec::new();
        for s in self.0.stores().await {
            rs.push(s.dependencies(from_ns, to_ns).await);
        }
        let mut sum: BTreeMap<(String, String), u64> = BTreeMap::new();
        for d in answered(rs)?.into_iter().flatten() {
            *sum.entry((d.parent, d.child)).or_default() += d.calls;
        }
        Ok(sum
            .into_iter()
            .map(|((parent, child), calls)| Dependency {
                parent,
                child,
                calls,
            })
            .collect())
    }
}

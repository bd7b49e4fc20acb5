//! The server's Jaeger API (`spanflow server --jaeger ADDR`): Jaeger's remote-storage
//! API v2 over the kept traces of every job the server knows, running or ended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::jobs::Jobs;
use crate::jaeger::{StoreSet, TraceStore};

/// The stores of the server's jobs, each opened once it can be (a job's Parquet
/// directory appears with its first output).
pub(super) struct JobStores {
    jobs: Arc<Jobs>,
    state_dir: PathBuf,
    open: Mutex<HashMap<String, Arc<dyn TraceStore>>>,
}

impl JobStores {
    pub(super) fn new(jobs: Arc<Jobs>, state_dir: PathBuf) -> JobStores {
        JobStores {
            jobs,
            state_dir,
            open: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl StoreSet for JobStores {
    async fn stores(&self) -> Vec<Arc<dyn TraceStore>> {
        let mut open = self.open.lock().await;
        let mut out = Vec::new();
        for h in self.jobs.list() {
            let id = h.record().id;
            if let Some(s) = open.get(&id) {
                out.push(s.clone());
                continue;
            }
            match crate::jaeger::open_first_store(&h.job).await {
                Ok(s) => {
                    open.insert(id, s.clone());
                    out.push(s);
                }
                // Not yet (no output written) or never (no kept spans): asked again on
                // the next query.
                Err(e) => tracing::debug!(job = %id, error = %e.message, "no Jaeger store"),
            }
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "the kept traces of the jobs in {}",
            self.state_dir.display()
        )
    }
}

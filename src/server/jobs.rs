//! The jobs a server runs: each in a thread of its own, its definition, status and
//! checkpoints under `<state-dir>/jobs/<id>/`, so a restarted server finds them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::job::{self, Diagnostics, Job, SinkKind};
use crate::runtime::{Progress, RunError, RunOptions, RunSummary};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Reading its sources (or about to).
    Running,
    /// Its bounded sources ended and every output is written.
    Finished,
    /// It stopped on an error (see `error`).
    Failed,
    /// Stopped on request with a last checkpoint (its open state is kept).
    Stopped,
    /// Cancelled on request: its sources stopped and its state was dropped.
    Cancelled,
}

impl JobState {
    /// The name used in the API and in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Every state, for series that report a count per state.
    pub const ALL: [JobState; 5] = [
        JobState::Running,
        JobState::Finished,
        JobState::Failed,
        JobState::Stopped,
        JobState::Cancelled,
    ];
}

/// What is kept of a job in `status.json` (and shown by the API).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Job id (`<name>-<n>`).
    pub id: String,
    /// Job name.
    pub name: String,
    /// Where it is in its life.
    pub state: JobState,
    /// When it was submitted (unix ms).
    pub submitted_at_ms: u64,
    /// When its current run started (unix ms); a restarted server starts it again.
    pub started_at_ms: u64,
    /// When it ended (unix ms).
    pub ended_at_ms: Option<u64>,
    /// Why it failed, and whose fault that was.
    pub error: Option<String>,
    /// Runs started: 1, plus one per server restart that resumed it.
    pub runs: u32,
    /// The last run's summary, when it ended.
    pub summary: Option<serde_json::Value>,
    /// The member of the job's consumer group this server runs it as (submitted with
    /// `instance`): the job's Kafka partitions are shared with the other instances, and
    /// its checkpoints go to the job's `checkpoint.dir`, which they all reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// A job the server knows, running or not.
pub struct JobHandle {
    /// Its record as last written.
    pub record: Mutex<Record>,
    /// The definition as submitted (YAML).
    pub definition: String,
    /// The validated job.
    pub job: Job,
    /// Live figures of the current run.
    pub live: Arc<Progress>,
    /// Spans per second, from the live counter sampled once a second.
    pub rate: Mutex<Rate>,
    stop: Arc<AtomicBool>,
    cancel: AtomicBool,
    /// The server is shutting down: a stopped run stays `running`, to be resumed.
    shutdown: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

/// Spans per second over the last sampling period.
#[derive(Debug, Default)]
pub struct Rate {
    last: Option<(Instant, u64)>,
    /// The rate measured.
    pub per_second: f64,
}

impl Rate {
    /// Takes a sample of the total `spans` now.
    pub fn sample(&mut self, spans: u64, now: Instant) {
        if let Some((at, before)) = self.last {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                self.per_second = spans.saturating_sub(before) as f64 / secs;
            }
        }
        self.last = Some((now, spans));
    }
}

/// Why a job cannot be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The definition is invalid.
    #[error("invalid job")]
    Invalid(Diagnostics),
    /// The state directory cannot be written, or the job's thread cannot start.
    #[error("{0}")]
    Io(String),
    /// A valid job the server cannot run as asked (a group member without a shared
    /// checkpoint directory or with another source than one Kafka topic).
    #[error("{0}")]
    Refused(String),
}

/// Every job of a server.
pub struct Jobs {
    dir: PathBuf,
    jobs: RwLock<BTreeMap<String, Arc<JobHandle>>>,
    /// Checkpoint interval of jobs that do not set one.
    default_interval: Duration,
    /// Serialises submissions (ids are allocated from the directory).
    submitting: Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SubmitError {
    SubmitError::Io(format!("{what} `{}`: {e}", path.display()))
}

impl Jobs {
    /// Opens the state directory and starts again every job that was running when
    /// the server last stopped (each resumes from its newest checkpoint).
    pub fn open(state_dir: &Path, default_interval: Duration) -> Result<Arc<Jobs>, SubmitError> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        let jobs = Arc::new(Jobs {
            dir: dir.clone(),
            jobs: RwLock::new(BTreeMap::new()),
            default_interval,
            submitting: Mutex::new(()),
        });
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("cannot read", &dir, e))?;
        let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        found.sort();
        for job_dir in found {
            match jobs.reopen(&job_dir) {
                Ok(h) => {
                    let resume = h.record().state == JobState::Running;
                    let id = h.record().id.clone();
                    if !resume {
                        h.load_metrics();
                    }
                    jobs.insert(h.clone());
                    if resume {
                        tracing::info!(job = %id, "resuming from its newest checkpoint");
                        h.save().map_err(SubmitError::Io)?;
                        jobs.start(&h)?;
                    }
                }
                // A half-written submission (the server died during it) or a file
                // someone put there: the other jobs still run.
                Err(e) => tracing::warn!("skipping `{}`: {e}", job_dir.display()),
            }
        }
        Ok(jobs)
    }

    fn reopen(&self, job_dir: &Path) -> Result<Arc<JobHandle>, String> {
        let status = job_dir.join("status.json");
        let text = std::fs::read_to_string(&status).map_err(|e| e.to_string())?;
        let mut record: Record = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let path = job_dir.join("job.yaml");
        let definition = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let job = load(job_dir, &definition).map_err(|d| d.to_string())?;
        if record.state == JobState::Running {
            record.runs += 1;
            record.started_at_ms = now_ms();
        }
        Ok(Arc::new(JobHandle::new(
            record,
            definition,
            job,
            job_dir.to_owned(),
        )))
    }

    fn insert(&self, h: Arc<JobHandle>) {
        let id = h.record().id.clone();
        if let Ok(mut jobs) = self.jobs.write() {
            jobs.insert(id, h);
        }
    }

    /// Validates `definition` and starts it, as group member `instance` when one is
    /// given (see [`Record::instance`]); returns its handle.
    pub fn submit(
        &self,
        definition: &str,
        instance: Option<&str>,
    ) -> Result<Arc<JobHandle>, SubmitError> {
        let _one_at_a_time = self.submitting.lock();
        // Validated against a scratch path first, so an invalid job leaves nothing.
        let scratch = self.dir.join(".submitting");
        let job = load(&scratch, definition).map_err(SubmitError::Invalid)?;
        if let Some(name) = instance {
            job::group_source(&job, name).map_err(|e| SubmitError::Refused(e.to_string()))?;
            if job.checkpoint.is_none() {
                return Err(SubmitError::Refused(format!(
                    "job `{}` run as group member `{name}` needs `checkpoint.dir`: a \
                     directory every instance of the job reaches",
                    job.name
                )));
            }
        }
        let id = self.next_id(&job.name);
        let job_dir = self.dir.join(&id);
        std::fs::create_dir_all(&job_dir).map_err(|e| io_error("cannot create", &job_dir, e))?;
        let path = job_dir.join("job.yaml");
        std::fs::write(&path, definition).map_err(|e| io_error("cannot write", &path, e))?;
        // Loaded again from its own directory: relative paths resolve there.
        let job = load(&job_dir, definition).map_err(SubmitError::Invalid)?;
        let now = now_ms();
        let record = Record {
            id: id.clone(),
            name: job.name.clone(),
            state: JobState::Running,
            submitted_at_ms: now,
            started_at_ms: now,
            ended_at_ms: None,
            error: None,
            runs: 1,
            summary: None,
            instance: instance.map(str::to_owned),
        };
        let h = Arc::new(JobHandle::new(record, definition.to_owned(), job, job_dir));
        h.save().map_err(SubmitError::Io)?;
        self.insert(h.clone());
        self.start(&h)?;
        tracing::info!(job = %id, "submitted");
        Ok(h)
    }

    /// `<name>-<n>`, one more than the highest `n` of the jobs of that name so far.
    fn next_id(&self, name: &str) -> String {
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let taken = self
            .jobs
            .read()
            .map(|jobs| {
                jobs.keys()
                    .filter_map(|k| {
                        k.strip_prefix(&slug)?
                            .strip_prefix('-')?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let mut n = taken + 1;
        // A directory left by a submission that never completed is not reused.
        while self.dir.join(format!("{slug}-{n}")).exists() {
            n += 1;
        }
        format!("{slug}-{n}")
    }

    fn start(&self, h: &Arc<JobHandle>) -> Result<(), SubmitError> {
        let interval = h
            .job
            .checkpoint
            .as_ref()
            .map_or(self.default_interval, |c| c.interval.0);
        let instance = h.record().instance;
        let opts = RunOptions {
            // A group member's checkpoints are the group's: in the job's shared
            // `checkpoint.dir`, not the server's state directory.
            checkpoint_dir: match &instance {
                Some(_) => None,
                None => Some(h.dir.join("checkpoints")),
            },
            checkpoint_interval: Some(interval),
            checkpoint_keep: h.job.checkpoint.as_ref().map_or(0, |c| c.keep),
            stop: Some(h.stop.clone()),
            live: Some(h.live.clone()),
            ..RunOptions::default()
        };
        h.live.watch_metrics();
        let runner = h.clone();
        let thread = std::thread::Builder::new()
            .name(format!("job {}", h.record().id))
            .spawn(move || {
                let result = match &instance {
                    Some(name) => job::run_group(&runner.job, &opts, name),
                    None => job::run_job(&runner.job, &opts),
                };
                runner.finish(result);
            })
            .map_err(|e| SubmitError::Io(format!("cannot start the job's thread: {e}")))?;
        if let Ok(mut t) = h.thread.lock() {
            *t = Some(thread);
        }
        Ok(())
    }

    /// The job with this id.
    pub fn get(&self, id: &str) -> Option<Arc<JobHandle>> {
        self.jobs.read().ok()?.get(id).cloned()
    }

    /// Every job, by id.
    pub fn list(&self) -> Vec<Arc<JobHandle>> {
        self.jobs
            .read()
            .map(|jobs| jobs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Samples every running job's span rate (called once a second).
    pub fn sample_rates(&self) {
        let now = Instant::now();
        for h in self.list() {
            let spans = h.live.spans.load(Ordering::Relaxed);
            if let Ok(mut r) = h.rate.lock() {
                r.sample(spans, now);
            }
        }
    }

    /// Stops every running job with a last checkpoint and waits for them; they stay
    /// `running`, so the next server resumes them.
    pub fn shutdown(&self) {
        let running: Vec<_> = self
            .list()
            .into_iter()
            .filter(|h| h.record().state == JobState::Running)
            .collect();
        for h in &running {
            h.shutdown.store(true, Ordering::Relaxed);
            h.stop.store(true, Ordering::Relaxed);
        }
        for h in &running {
            h.join();
        }
    }
}

/// Loads a definition as if it were `<dir>/job.yaml`, and puts relative Parquet
/// outputs under `dir`: the server's working directory means nothing to the submitter.
fn load(dir: &Path, definition: &str) -> Result<Job, Diagnostics> {
    let mut job = job::load_str(&dir.join("job.yaml"), definition)?;
    for s in &mut job.sinks {
        if let SinkKind::Parquet(c) = &mut s.kind
            && c.path.is_relative()
        {
            c.path = dir.join(&c.path);
        }
    }
    Ok(job)
}

impl JobHandle {
    fn new(record: Record, definition: String, job: Job, dir: PathBuf) -> Self {
        JobHandle {
            record: Mutex::new(record),
            definition,
            job,
            live: Arc::new(Progress::default()),
            rate: Mutex::new(Rate::default()),
            stop: Arc::new(AtomicBool::new(false)),
            cancel: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            thread: Mutex::new(None),
            dir,
        }
    }

    /// A copy of its record.
    pub fn record(&self) -> Record {
        match self.record.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Its directory under the server's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks a running job to stop with a last checkpoint; false if it is not running.
    pub fn stop(&self) -> bool {
        if self.record().state != JobState::Running {
            return false;
        }
        self.stop.store(true, Ordering::Relaxed);
        true
    }

    /// Asks a running job to stop and drop its state; false if it is not running.
    pub fn cancel(&self) -> bool {
        if self.record().state != JobState::Running {
            return false;
        }
        self.cancel.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        true
    }

    /// Waits for its thread to end.
    pub fn join(&self) {
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn finish(&self, result: Result<RunSummary, RunError>) {
        let cancelled = self.cancel.load(Ordering::Relaxed);
        let shutdown = self.shutdown.load(Ordering::Relaxed);
        let (state, error, summary) = match result {
            Ok(s) if s.savepoint.is_some() && cancelled => {
                // The last checkpoint committed the outputs; its state is not wanted.
                let _ = std::fs::remove_dir_all(self.dir.join("checkpoints"));
                (JobState::Cancelled, None, Some(s))
            }
            Ok(s) if s.savepoint.is_some() && shutdown => (JobState::Running, None, Some(s)),
            Ok(s) if s.savepoint.is_some() => (JobState::Stopped, None, Some(s)),
            Ok(s) => (JobState::Finished, None, Some(s)),
            Err(e) => {
                let fault = match e.fault() {
                    crate::runtime::io::Fault::User => "the job or its input",
                    crate::runtime::io::Fault::External => "an external system",
                    crate::runtime::io::Fault::Internal => "a bug in spanflow",
                };
                let message = format!("{e} (the fault of {fault})");
                tracing::warn!(job = %self.record().id, "failed: {message}");
                (JobState::Failed, Some(message), None)
            }
        };
        if let Ok(mut r) = self.record.lock() {
            r.state = state;
            r.error = error;
            r.summary = summary.and_then(|s| serde_json::to_value(&s).ok());
            if state != JobState::Running {
                r.ended_at_ms = Some(now_ms());
            }
        }
        if let Err(e) = self.save() {
            tracing::warn!("{e}");
        }
        if state != JobState::Running
            && let Err(e) = self.save_metrics()
        {
            tracing::warn!("{e}");
        }
    }

    /// Keeps an ended job's series (`metrics.cbor`), so a restarted server still shows
    /// its RED table and service map. A running job's are not kept: its next run
    /// starts them again (a counter reset).
    fn save_metrics(&self) -> Result<(), String> {
        let path = self.dir.join("metrics.cbor");
        let m = self
            .live
            .metrics
            .lock()
            .map_err(|_| "poisoned lock".to_owned())?;
        let Some(m) = m.as_ref() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(m, &mut bytes).map_err(|e| e.to_string())?;
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }

    /// Reads what [`JobHandle::save_metrics`] kept (nothing for a job without it).
    fn load_metrics(&self) {
        let Ok(bytes) = std::fs::read(self.dir.join("metrics.cbor")) else {
            return;
        };
        match ciborium::from_reader(bytes.as_slice()) {
            Ok(m) => {
                if let Ok(mut slot) = self.live.metrics.lock() {
                    *slot = Some(m);
                }
            }
            Err(e) => tracing::warn!("`{}`: unreadable metrics: {e}", self.dir.display()),
        }
    }

    /// Writes `status.json` (atomically: a crash leaves the old or the new one).
    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&self.record()).map_err(|e| e.to_string())?;
        let path = self.dir.join("status.json");
        let tmp = self.dir.join("status.json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }
}

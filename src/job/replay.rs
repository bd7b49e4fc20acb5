//! `spanflow replay`: a job's Kafka sources re-read over a time range, as a bounded run
//! of its own that leaves the live job alone.
//!
//! The job is the live one's, so event-time semantics are the same (the final watermark
//! flushes what is still open at the range's end); what changes is where it reads and
//! what it touches: every Kafka source starts at the first record at or after `from`
//! and stops before the first at or after `to` (offsets looked up per partition by
//! record timestamp), under a consumer group of its own, so the live group's committed
//! offsets never move; checkpoints go to a directory of the replay's own, so an
//! interrupted replay resumes where it stopped and never from the live job's state.
//! Outputs are redirected with `--output-dir` and `--set` (see [`super::Override`]).

use std::path::{Path, PathBuf};

use super::spec::{CheckpointConfig, Job, SourceKind};
use crate::connectors::kafka::parse_time;
use spanflow_operators::HumanDuration;

/// Checkpoint interval of a replay whose job has none configured.
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`prepare`] changed, for the messages of the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Start of the range, unix ms (inclusive).
    pub from_ms: i64,
    /// End of the range, unix ms (exclusive).
    pub to_ms: i64,
    /// Per Kafka source: its name, the live job's group and the replay's group.
    pub groups: Vec<(String, String, String)>,
    /// Where the replay's checkpoints are kept.
    pub checkpoint_dir: PathBuf,
}

/// `2026-11-21T10:00:00Z` as `20261121T100000Z`, for names.
fn compact(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// Rewrites `job` into its replay over `[from, to)` (RFC 3339 times): every source must
/// be a Kafka source. `group` names the replay's consumer group (default: the live
/// group's name with `.replay.<from>-<to>`); `checkpoint_dir` its checkpoints (default:
/// `replay-<from>-<to>` under the job's checkpoint directory, else under
/// `.spanflow/replay/<job>` in the working directory).
pub fn prepare(
    job: &mut Job,
    from: &str,
    to: &str,
    group: Option<&str>,
    checkpoint_dir: Option<&Path>,
) -> Result<Replay, String> {
    let from_ms = parse_time(from).map_err(|e| format!("--from: {}", e.message))?;
    let to_ms = parse_time(to).map_err(|e| format!("--to: {}", e.message))?;
    if from_ms >= to_ms {
        return Err(format!("--from ({from}) must be before --to ({to})"));
    }
    let others: Vec<String> = job
        .sources
        .iter()
        .filter(|s| !matches!(s.kind, SourceKind::Kafka(_)))
        .map(|s| format!("`{}`", s.name))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "replay re-reads Kafka topics by time, and source {} of job `{}` is not a \
             kafka source (run such jobs with `spanflow run`)",
            others.join(", "),
            job.name
        ));
    }
    let range = format!("{}-{}", compact(from_ms), compact(to_ms));
    let kafka_sources = job.sources.len();
    let mut groups = Vec::new();
    for s in &mut job.sources {
        let SourceKind::Kafka(c) = &mut s.kind else {
            continue;
        };
        let replay_group = match group {
            // One group per source: members of one group with other subscriptions
            // would take each other's partitions.
            Some(g) if kafka_sources > 1 => format!("{g}.{}", s.name),
            Some(g) => g.to_owned(),
            None => format!("{}.replay.{range}", c.group_id),
        };
        if replay_group == c.group_id {
            return Err(format!(
                "the replay's consumer group must not be the live job's (`{}` of source `{}`)",
                c.group_id, s.name
            ));
        }
        groups.push((s.name.clone(), c.group_id.clone(), replay_group.clone()));
        c.group_id = replay_group;
        c.start = from.to_owned();
        c.end = Some(to.to_owned());
        c.end_offsets.clear();
        let issues = c.validate();
        if let Some(i) = issues.first() {
            return Err(format!(
                "source `{}`: `{}` {}",
                s.name,
                i.path.join("."),
                i.message
            ));
        }
    }
    if groups.is_empty() {
        return Err(format!("job `{}` has no source to replay", job.name));
    }
    let dir = match (checkpoint_dir, &job.checkpoint) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(c)) => c.dir.join(format!("replay-{range}")),
        (None, None) => Path::new(".spanflow/replay").join(&job.name).join(&range),
    };
    let interval = job
        .checkpoint
        .as_ref()
        .map_or(HumanDuration(DEFAULT_CHECKPOINT_INTERVAL), |c| c.interval);
    let keep = job.checkpoint.as_ref().map_or(2, |c| c.keep);
    job.checkpoint = Some(CheckpointConfig {
        interval,
        dir: dir.clone(),
        keep,
    });
    Ok(Replay {
        from_ms,
        to_ms,
        groups,
        checkpoint_dir: dir,
    })
}

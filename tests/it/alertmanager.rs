//! The `alertmanager` sink against a real Alertmanager (Debian's 0.25, started here on
//! loopback): a job's alerts appear in its `/api/v2/alerts` with their labels and trace
//! ids, resolved ones resolve there, and an Alertmanager that is down when the job starts
//! gets them once it is up.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spanflow::job::run_job;
use spanflow::runtime::RunOptions;

use crate::support::{column, free_port, read_table, root};

/// An Alertmanager on `port`, stopped (by its PID) when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start(port: u16) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n",
        )
        .unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No cluster: nothing listens beyond the API's loopback port.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (scripts/alertmanager.sh install)");
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while !reqwest::blocking::get(format!("{url}/-/ready"))
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Alertmanager did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Alertmanager {
            child,
            url,
            _dir: dir,
        }
    }

    /// The alerts its API lists (active ones).
    fn alerts(&self) -> Vec<serde_json::Value> {
        reqwest::blocking::get(format!("{}/api/v2/alerts", self.url))
            .unwrap()
            .json()
            .unwrap()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_reach_a_real_alertmanager_even_when_it_starts_late() {
    let port = free_port();
    let out = tempfile::tempdir().unwrap();
    let input = root().join("tests/golden/alerts_burst/input.jsonl");
    // The golden case's two rules fire and resolve; `busy` fires and is still firing
    // when the input ends.
    let text = std::fs::read_to_string(root().join("tests/golden/alerts_burst/job.yaml"))
        .unwrap()
        .replace("paths: [input.jsonl]", &format!("paths: [{}]", input.display()))
        .replace(
            "        group_by: [service, peer]\n",
            "        group_by: [service, peer]\n      \
             - { name: busy, metric: service_node, value: requests, above: 0, group_by: [service] }\n",
        )
        .replace(
            "    from: [sampler.spans, alerts]\n",
            &format!(
                "    from: [sampler.spans, alerts]\n  am:\n    type: alertmanager\n    \
                 from: [alerts]\n    url: http://127.0.0.1:{port}\n    \
                 initial_backoff: 100ms\n    max_backoff: 500ms\n    flush_timeout: 60s\n    \
                 trace_url: http://127.0.0.1:16686/trace/\n"
            ),
        );
    assert!(text.contains("type: alertmanager") && text.contains("name: busy"));
    let job = spanflow::job::load_str(&root().join("jobs/am_test.yaml"), &text)
        .unwrap_or_else(|d| panic!("{d}"));
    // The job starts while nobody listens on the port; Alertmanager comes 2 s later.
    let opts = RunOptions {
        output_dir: Some(out.path().to_path_buf()),
        ..Default::default()
    };
    let run = std::thread::spawn(move || run_job(&job, &opts));
    std::thread::sleep(Duration::from_secs(2));
    let am = Alertmanager::start(port);
    let summary = run.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    let sent = summary
        .outputs
        .iter()
        .find(|o| o.sink == "am")
        .map(|o| o.rows)
        .expect("the alertmanager sink's rows");
    assert_eq!(sent, 5, "two alerts fired and resolved, one firing");

    let listed = am.alerts();
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    // Resolved alerts (ended in event time) are not active; the firing one is.
    assert_eq!(names, ["busy"], "{listed:#?}");
    let busy = &listed[0];
    assert_eq!(busy["labels"]["service"], "shop");
    assert_eq!(busy["labels"]["metric"], "service_node");
    assert_eq!(busy["status"]["state"], "active");
    assert_eq!(busy["startsAt"], "2026-01-01T00:00:00.000Z");
    let ids: Vec<&str> = busy["annotations"]["trace_ids"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    let kept: BTreeSet<String> = column(&read_table(out.path(), "spans"), "trace_id")
        .into_iter()
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|t| kept.contains(*t)),
        "{ids:?}"
    );
    assert_eq!(
        busy["annotations"]["trace_url"],
        format!("http://127.0.0.1:16686/trace/{}", ids[0])
    );
}

//! The `alertmanager` sink against a real Alertmanager (Debian's 0.25, started here on
//! loopback): a job's alerts appear in its `/api/v2/alerts` with their labels and trace
//! ids, resolved ones resolve there, and an Alertmanager that is down when the job starts,
//! or goes down while it runs, gets them once it is up.

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

    /// The names of the active alerts, sorted.
    fn active(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .alerts()
            .iter()
            .filter(|a| a["status"]["state"] == "active")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Waits (up to 30 s) until the active alerts' names are `want`.
    fn wait_active(&self, want: &[&str], while_doing: &str) {
        let started = Instant::now();
        loop {
            let now = self.active();
            if now == want {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{while_doing}: Alertmanager lists {now:?}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Alerts it received by state, from its own `alertmanager_alerts_received_total`.
    fn received(&self, status: &str) -> u64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.url))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("alertmanager_alerts_received_total")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The golden alerts job (`tests/golden/alerts_burst`) reading its input file, plus a
/// rule `busy` (fires at once and never resolves) when `busy`, and an `alertmanager`
/// sink `am` posting to `port` with `settings` (`key: value` lines).
fn job_with_alertmanager(port: u16, busy: bool, settings: &[&str]) -> String {
    let input = root().join("tests/golden/alerts_burst/input.jsonl");
    let mut text = std::fs::read_to_string(root().join("tests/golden/alerts_burst/job.yaml"))
        .unwrap()
        .replace(
            "paths: [input.jsonl]",
            &format!("paths: [{}]", input.display()),
        );
    if busy {
        text = text.replace(
            "        group_by: [service, peer]\n",
            "        group_by: [service, peer]\n      \
             - { name: busy, metric: service_node, value: requests, above: 0, group_by: [service] }\n",
        );
    }
    let mut sink = format!(
        "    from: [sampler.spans, alerts]\n  am:\n    type: alertmanager\n    \
         from: [alerts]\n    url: http://127.0.0.1:{port}\n"
    );
    for line in settings {
        sink.push_str(&format!("    {line}\n"));
    }
    let text = text.replace("    from: [sampler.spans, alerts]\n", &sink);
    assert!(text.contains("type: alertmanager") && text.contains("name: busy") == busy);
    text
}

#[test]
fn alerts_reach_a_real_alertmanager_even_when_it_starts_late() {
    let port = free_port();
    let out = tempfile::tempdir().unwrap();
    // The golden case's four rules fire and resolve; `busy` fires and is still firing
    // when the input ends.
    let text = job_with_alertmanager(
        port,
        true,
        &[
            "initial_backoff: 100ms",
            "max_backoff: 500ms",
            "flush_timeout: 60s",
            "trace_url: http://127.0.0.1:16686/trace/",
        ],
    );
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
    assert_eq!(sent, 9, "four alerts fired and resolved, one firing");

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

/// The golden case's input, shifted to end `ago` before now (on the 10 s interval
/// grid), as OTLP/JSON requests: one per input line, with the line's event second.
fn recent_input(ago: Duration) -> Vec<(u64, String)> {
    const T0: u64 = 1_767_225_600 * 1_000_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let grid = 10_000_000_000;
    let base = (now - ago.as_nanos() as u64 - 150_000_000_000) / grid * grid;
    let text =
        std::fs::read_to_string(root().join("tests/golden/alerts_burst/input.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut req: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut second = u64::MAX;
            for rs in req["resourceSpans"].as_array_mut().unwrap() {
                for ss in rs["scopeSpans"].as_array_mut().unwrap() {
                    for span in ss["spans"].as_array_mut().unwrap() {
                        for key in ["startTimeUnixNano", "endTimeUnixNano"] {
                            let t: u64 = span[key].as_str().unwrap().parse().unwrap();
                            second = second.min((t - T0) / 1_000_000_000);
                            span[key] = serde_json::Value::String((t - T0 + base).to_string());
                        }
                    }
                }
            }
            (second, req.to_string())
        })
        .collect()
}

/// A live run, paced by the test: alerts go active in Alertmanager, resolve there while
/// the job runs, and what the job raises and resolves while Alertmanager is down (killed)
/// reaches the Alertmanager that comes back (queued, retried, firing ones sent again).
#[test]
fn live_alerts_go_active_and_resolve_and_survive_alertmanager_going_down() {
    let (am_port, http) = (free_port(), free_port());
    let input = root().join("tests/golden/alerts_burst/input.jsonl");
    let text = job_with_alertmanager(
        am_port,
        true,
        &[
            "initial_backoff: 100ms",
            "max_backoff: 500ms",
            "resend_interval: 1s",
            "flush_timeout: 60s",
        ],
    )
    .replace(
        &format!(
            "    type: file\n    paths: [{}]\n    format: otlp_json\n",
            input.display()
        ),
        &format!("    type: otlp\n    http: 127.0.0.1:{http}\n"),
    )
    // The input is minutes old: the wall clock must not overtake it.
    .replace(
        "      max_out_of_order: 2s\n",
        "      max_out_of_order: 2s\n      idle_timeout: 1h\n      wall_clock_lag: 1h\n",
    );
    assert!(text.contains("type: otlp") && text.contains("wall_clock_lag"));
    let job = spanflow::job::load_str(&root().join("jobs/am_live.yaml"), &text)
        .unwrap_or_else(|d| panic!("{d}"));
    let out = tempfile::tempdir().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = std::sync::Arc::new(spanflow::runtime::Progress::default());
    let opts = RunOptions {
        output_dir: Some(out.path().to_path_buf()),
        stop: Some(stop.clone()),
        live: Some(live.clone()),
        ..Default::default()
    };
    let mut am = Alertmanager::start(am_port);
    let run = std::thread::spawn(move || run_job(&job, &opts));
    let input = recent_input(Duration::from_secs(60));
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{http}/v1/traces");
    let started = Instant::now();
    while client.get(&url).send().is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no receiver");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut next = 0;
    // Sends the input up to event second `until`, in order.
    let mut send_until = |until: u64| {
        while next < input.len() && input[next].0 < until {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(input[next].1.clone())
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "{:?}", r.text());
            next += 1;
        }
    };

    // The error burst (40-80 s) has held for 20 s at 60 s.
    send_until(75);
    am.wait_active(
        &["busy", "entry-errors", "entry-errors-sql"],
        "during the error burst",
    );
    let listed = am.alerts();
    let errors = listed
        .iter()
        .find(|a| a["labels"]["alertname"] == "entry-errors")
        .unwrap();
    assert_eq!(errors["labels"]["operation"], "POST /checkout");
    assert_eq!(errors["labels"]["severity"], "page");
    assert!(
        !errors["annotations"]["trace_ids"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{errors:#}"
    );
    // It ended at 80 s, and resolves at 90 s (keep_firing_for: 10 s): in Alertmanager
    // too, while the job runs.
    send_until(100);
    am.wait_active(&["busy"], "after the error burst");
    assert!(
        am.received("resolved") >= 2,
        "the two rules' resolved events"
    );

    // Alertmanager goes down (killed); meanwhile the rest of the input comes: the slow
    // database calls (100-130 s) fire two rules, and one of them resolves again (140 s).
    let _ = am.child.kill();
    let _ = am.child.wait();
    send_until(u64::MAX);
    // The sink holds them (the job server's `spanflow_sink_queued_rows`).
    let started = Instant::now();
    while live
        .sink_delivery()
        .iter()
        .all(|(_, queued, _)| *queued == 0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing queued while Alertmanager is down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    am = Alertmanager::start(am_port);
    // A new Alertmanager, which heard nothing before: the queued events and the firing
    // alerts sent again.
    am.wait_active(&["busy", "slow-db"], "after Alertmanager came back");
    assert!(
        live.sink_delivery().iter().all(|(_, _, lost)| *lost == 0),
        "{:?}",
        live.sink_delivery()
    );
    assert!(
        am.received("resolved") >= 1,
        "db-time-share's resolution, queued while Alertmanager was down"
    );
    // slow-db resolves at 150 s, which the watermark passes when the job stops.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    am.wait_active(&["busy"], "after the job stopped");
    let alerts = read_table(out.path(), "alerts");
    let events: Vec<String> = column(&alerts, "rule")
        .iter()
        .zip(column(&alerts, "state"))
        .map(|(r, s)| format!("{r} {s}"))
        .collect();
    assert_eq!(
        events.iter().filter(|e| e.ends_with("firing")).count(),
        5,
        "{events:?}"
    );
    let (_, m) = &summary.alerts[0];
    assert_eq!(m.fired(), 5);
    assert_eq!(m.fired_with_trace(), 5);
}

/// An Alertmanager that never comes does not hold the job: the run ends once the sink's
/// `flush_timeout` has passed, and the summary counts the alerts it could not deliver.
#[test]
fn alerts_an_alertmanager_never_took_are_counted_in_the_summary() {
    let port = free_port();
    let out = tempfile::tempdir().unwrap();
    let text = job_with_alertmanager(
        port,
        false,
        &[
            "initial_backoff: 50ms",
            "max_backoff: 200ms",
            "flush_timeout: 1s",
        ],
    );
    let job = spanflow::job::load_str(&root().join("jobs/am_down.yaml"), &text)
        .unwrap_or_else(|d| panic!("{d}"));
    let started = Instant::now();
    let live = std::sync::Arc::new(spanflow::runtime::Progress::default());
    let summary = run_job(
        &job,
        &RunOptions {
            output_dir: Some(out.path().to_path_buf()),
            live: Some(live.clone()),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(started.elapsed() < Duration::from_secs(20));
    let am = summary
        .outputs
        .iter()
        .find(|o| o.sink == "am")
        .expect("the alertmanager sink's output");
    // Eight events of four alerts: each alert's latest event (its resolution) waited.
    assert_eq!((am.rows, am.undelivered), (8, 4));
    assert!(
        summary.render().contains("(4 not delivered)"),
        "{}",
        summary.render()
    );
    // The job server's figures (`spanflow_sink_queued_rows`, `..._undelivered_rows_total`).
    assert!(
        live.sink_delivery().contains(&("am".to_owned(), 0, 4)),
        "{:?}",
        live.sink_delivery()
    );
    // The other sinks wrote everything.
    assert_eq!(
        read_table(out.path(), "alerts")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        8
    );
}

//! `handoff loadgen` as an operator runs it: against a steer in front of a node (both
//! processes), with the oracle run against the node; and its exit codes.

#[path = "chaos/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::{Background, Daemon, TOKEN};
use std::time::Duration;

const SESSIONS: u32 = 400;

/// A node hosting `mme-1` and a steer in front of it; returns them with the node's address and
/// the service address.
fn node_and_steer(dir: &std::path::Path) -> (Daemon, Daemon, String, String) {
    let node = Daemon::start(
        dir,
        "node-a",
        [
            "--log",
            "info",
            "node",
            "--name",
            "node-a",
            "--listen",
            "127.0.0.1:0",
            "--instance",
            "mme-1:vmme",
        ]
        .map(String::from)
        .into(),
    );
    let a = node.ready_addr("/listen");
    let steer = Daemon::start(
        dir,
        "steer",
        vec![
            "--log".into(),
            "info".into(),
            "steer".into(),
            "--service".into(),
            format!("mme-1:vmme@127.0.0.1:0={a}"),
        ],
    );
    let service = steer.ready_addr("/services/mme-1");
    (node, steer, a.to_string(), service.to_string())
}

fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("handoff-loadgen-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn loadgen(dir: &std::path::Path, args: &[&str]) -> Background {
    let mut all = vec!["loadgen".to_owned()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    Background::spawn(dir, "loadgen", &all)
}

#[test]
fn loadgen_json_reports_every_transaction_answered_and_the_oracle_clean() {
    let dir = temp_dir("clean");
    let (_node, _steer, a, service) = node_and_steer(&dir);
    let report = dir.join("report.json");
    let sessions = SESSIONS.to_string();
    let mut run = loadgen(
        &dir,
        &[
            "--target",
            &service,
            "--sessions",
            &sessions,
            "--rate",
            "400",
            "--duration-ms",
            "1000",
            "--seed",
            "7",
            "--json",
            "--check-node",
            &a,
            "--report",
            report.to_str().unwrap(),
            "--token",
            TOKEN,
        ],
    );
    let status = run.wait(Duration::from_secs(60));
    assert!(status.success(), "exit {status}: {}", run.stderr_tail());
    let r = run.json();
    let n = |p: &str| {
        r.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("no {p} in {r:#}"))
    };
    assert_eq!(n("/sessions"), u64::from(SESSIONS));
    assert_eq!(n("/attached"), u64::from(SESSIONS), "{r:#}");
    assert!(n("/signals_sent") >= u64::from(SESSIONS) * 4, "{r:#}");
    assert_eq!(n("/answered"), n("/signals_sent"), "{r:#}");
    for f in ["lost", "duplicated", "reordered", "wrong_answers", "stray"] {
        assert_eq!(n(&format!("/{f}")), 0, "{f}: {r:#}");
    }
    assert_eq!(r["clean"], true, "{r:#}");
    assert_eq!(r["checks"][0]["node"], a.as_str());
    assert_eq!(r["checks"][0]["node_name"], "node-a");
    assert_eq!(r["checks"][0]["hosted"], true);
    assert_eq!(n("/checks/0/oracle/checked"), u64::from(SESSIONS));
    assert_eq!(n("/checks/0/oracle/mismatches"), 0, "{r:#}");
    assert_eq!(n("/checks/0/oracle/answer_mismatches"), 0, "{r:#}");
    assert_eq!(n("/checks/0/oracle/unknown_records"), 0, "{r:#}");
    assert!(n("/checks/0/oracle/expected_present") > 0, "{r:#}");
    assert_eq!(n("/config/seed"), 7);
    // The --report file holds the same report.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("the report file")).unwrap();
    assert_eq!(file, r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loadgen_exit_codes_tell_usage_unreachable_and_too_many_lost_apart() {
    let dir = temp_dir("codes");
    // A usage error: 2, naming the flag.
    let mut usage = loadgen(&dir, &["--target", "127.0.0.1:9", "--timeout-ms", "0"]);
    assert_eq!(usage.wait(Duration::from_secs(10)).code(), Some(2));
    assert!(
        usage.stderr().contains("--timeout-ms"),
        "{}",
        usage.stderr()
    );
    // Nothing serves there: 1 within the probe's few seconds, not after a whole run.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nowhere = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let mut unreachable = loadgen(&dir, &["--target", &nowhere, "--sessions", "10"]);
    assert_eq!(unreachable.wait(Duration::from_secs(30)).code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        unreachable.stderr().contains("did not answer"),
        "{}",
        unreachable.stderr()
    );
    // Losses with --max-lost 0: the steer dies mid-run, the run still completes and reports
    // them, and the exit code is 3.
    let (_node, mut steer, _a, service) = node_and_steer(&dir);
    let mut lossy = loadgen(
        &dir,
        &[
            "--log",
            "info",
            "--log-json",
            "--target",
            &service,
            "--sessions",
            "200",
            "--rate",
            "400",
            "--duration-ms",
            "3000",
            "--timeout-ms",
            "50",
            "--retries",
            "2",
            "--max-lost",
            "0",
            "--json",
        ],
    );
    let measuring = harness::poll(Duration::from_secs(30), || {
        lossy
            .stderr()
            .contains(r#""phase":"measure""#)
            .then_some(())
    });
    assert!(measuring.is_some(), "{}", lossy.stderr_tail());
    steer.kill();
    let status = lossy.wait(Duration::from_secs(30));
    let r = lossy.json();
    assert!(r["lost"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["clean"], false);
    assert_eq!(status.code(), Some(3), "{}", lossy.stderr_tail());
    let _ = std::fs::remove_dir_all(&dir);
}

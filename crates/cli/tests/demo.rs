//! `handoff demo --json` as an operator runs it: a node child process, the steer and the load
//! generator; the report's field names are a contract later checks rely on.

use std::process::Command;

#[test]
fn demo_json_report_is_clean_and_has_the_contracted_fields() {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args([
            "demo",
            "--sessions",
            "300",
            "--rate",
            "400",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .expect("run handoff demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let n = |p: &str| {
        r.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("field {p} missing in {r}"))
    };
    assert_eq!(n("/sessions"), 300);
    assert!(n("/signals_sent") >= 300 * 4);
    assert_eq!(n("/answered"), n("/signals_sent"));
    assert_eq!((n("/lost"), n("/duplicated"), n("/reordered")), (0, 0, 0));
    assert!(n("/latency_us/p50") > 0);
    assert!(n("/latency_us/p99") >= n("/latency_us/p50"));
    assert!(n("/latency_us/max") >= n("/latency_us/p99"));
    assert_eq!(n("/oracle/checked"), 300);
    assert_eq!(n("/oracle/mismatches"), 0);
    assert!(
        n("/node_rss_bytes") > 1 << 20,
        "RSS of the node process, not zero"
    );
}

#[test]
fn bad_flags_and_bad_service_specs_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["steer", "--service", "mme-1:vmme@nonsense"])
        .output()
        .expect("run handoff steer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expected INSTANCE:FUNCTION@LISTEN=NODE"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args([
            "node",
            "--instance",
            "mme-1:nosuchfunction",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run handoff node");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("function nosuchfunction is not known"),
        "{err}"
    );
}

//! `handoff bench move --json` on a few sessions: every contender runs, the live moves lose
//! nothing, and the report has its ratios. Needs `redis-server` (scripts/setup installs it).

use std::process::Command;

#[test]
fn bench_move_runs_every_contender_and_reports_ratios() {
    let dir = std::env::temp_dir().join(format!("handoff-bench-move-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args([
            "bench",
            "move",
            "--sessions",
            "400",
            "--rate",
            "400",
            "--duration",
            "2",
            "--move-at",
            "0.3",
            "--json",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("run handoff bench move");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench move failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let contenders = r["contenders"].as_array().expect("contenders");
    let ids: Vec<&str> = contenders.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "handoff",
            "handoff_random",
            "handoff_abort_safe",
            "handoff_clairvoyant",
            "stop_and_copy",
            "pre_copy",
            "raw_tcp",
            "redis"
        ]
    );
    for c in contenders {
        assert!(c["error"].is_null(), "{c}");
        assert!(c["bytes_sent"].as_u64().unwrap_or(0) > 0, "{c}");
        assert!(c["total_ms"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
        if c["under_load"] == true {
            assert!(c["pause_ms"].is_number(), "{c}");
            assert_eq!(c["oracle_checked"], 400, "{c}");
            assert_eq!(c["oracle_mismatches"], 0, "{c}");
        } else {
            assert!(c["pause_ms"].is_null(), "no load, no pause: {c}");
            assert!(c["lost"].is_null(), "{c}");
            assert_eq!(c["records_missing"], 0, "{c}");
        }
    }
    for c in &contenders[..4] {
        assert_eq!(
            (c["lost"].as_u64(), c["duplicated"].as_u64()),
            (Some(0), Some(0)),
            "{c}"
        );
        assert_eq!(c["reordered"], 0, "{c}");
        assert!(c["buffered_peak"].is_u64(), "{c}");
    }
    for k in [
        "copy_throughput_handoff_over_raw_tcp",
        "pause_handoff_over_stop_and_copy",
        "pause_handoff_over_pre_copy",
        "bytes_handoff_over_pre_copy",
        "redis_ms_over_handoff_ms",
        "move_ms_abort_safe_over_handoff",
    ] {
        assert!(r["ratios"][k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
    let written = std::fs::read_dir(&dir)
        .expect("report directory")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("bench-move-"));
    assert!(written, "the JSON report is written to --out");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_move_without_redis_server_says_how_to_get_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["bench", "move", "--sessions", "10"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run handoff bench move");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis-server not found"), "{err}");
    assert!(err.contains("scripts/setup"), "{err}");
}

#[test]
fn bench_move_refuses_a_function_the_load_generator_cannot_drive() {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args([
            "bench",
            "move",
            "--function",
            "radius-acct",
            "--sessions",
            "10",
        ])
        .output()
        .expect("run handoff bench move");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a vmme instance, not radius-acct"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["bench", "move", "--rate", "0"])
        .output()
        .expect("run handoff bench move");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rate must be positive"), "{err}");
}

use super::*;
use crate::moves::{PhasesMs, Round};
use serde_json::Value;

fn config() -> BenchConfig {
    BenchConfig {
        sessions: 400,
        rate: 400.0,
        duration_s: 2.0,
        move_at_s: 0.3,
        zipf: 1.1,
        seed: 1,
        timeout_ms: 250,
        precopy: PreCopyRule::default(),
        redis_batch: 1000,
    }
}

fn machine() -> Machine {
    Machine {
        cpus: 2,
        cpu_model: "test".into(),
        memory_bytes: 1 << 30,
        kernel: "6.1".into(),
    }
}

fn loaded(id: &'static str, pause_ms: f64, bytes: u64, total_ms: f64) -> Contender {
    Contender {
        id,
        name: id,
        under_load: true,
        total_ms,
        pause_ms: Some(pause_ms),
        bytes_sent: bytes,
        lost: Some(0),
        duplicated: Some(0),
        reordered: Some(0),
        oracle_mismatches: Some(0),
        ..Contender::default()
    }
}

fn live(id: &'static str, peak: u64, mean: f64, for_records: u64) -> Contender {
    Contender {
        buffered_peak: Some(peak),
        buffered_mean: Some(mean),
        buffered_for_records_peak: Some(for_records),
        detail: Detail::Loaded(Box::new(LoadedDetail {
            move_: Some(MoveDetail::Live {
                report: MoveReport {
                    phases_ms: PhasesMs::default(),
                    ..MoveReport::default()
                },
                buffered_samples: BufferedSamples::default(),
            }),
            load: LoadReport::default(),
            oracle_examples: vec![],
        })),
        ..loaded(id, 2.0, 1_000_000, 500.0)
    }
}

fn no_load(id: &'static str, total_ms: f64, mb_s: f64, detail: Detail) -> Contender {
    Contender {
        id,
        name: id,
        total_ms,
        throughput_mb_s: mb_s,
        records_missing: Some(0),
        detail,
        ..Contender::default()
    }
}

/// One contender of each kind, with figures whose ratios are easy to check.
fn contenders() -> Vec<Contender> {
    let baseline = |id, pause, bytes| Contender {
        detail: Detail::Loaded(Box::new(LoadedDetail {
            move_: Some(MoveDetail::Baseline(BaselineReport {
                rounds: vec![Round::default()],
                ..BaselineReport::default()
            })),
            load: LoadReport::default(),
            oracle_examples: vec![],
        })),
        ..loaded(id, pause, bytes, 100.0)
    };
    vec![
        live(id::HANDOFF, 10, 1.0, 4),
        live(id::HANDOFF_RANDOM, 250, 3.0, 60),
        baseline(id::STOP_AND_COPY, 200.0, 1_000_000),
        baseline(id::PRE_COPY, 8.0, 1_250_000),
        no_load(
            id::RAW_TCP,
            10.0,
            400.0,
            Detail::RawTcp(RawTcpDetail {
                wire_bytes: 1,
                bytes_received: 1,
            }),
        ),
        no_load(
            id::REDIS,
            1500.0,
            1.0,
            Detail::Redis(RedisDetail {
                wire_bytes: 1,
                keys_on_b: 1,
                keys_left_on_a: 0,
                migrate_commands: 1,
                load_ms: 1.0,
                version: "7".into(),
            }),
        ),
        Contender {
            total_ms: 600.0,
            pause_ms: Some(3.0),
            ..live(id::HANDOFF_ABORT_SAFE, 12, 1.0, 5)
        },
    ]
}

#[test]
fn ratios_divide_and_refuse_zero_or_missing_denominators() {
    let inputs = RatioInputs {
        handoff_copy_mb_s: Some(100.0),
        raw_mb_s: Some(400.0),
        handoff_pause: Some(2.0),
        stop_pause: Some(200.0),
        pre_pause: Some(0.0),
        handoff_bytes: Some(1000.0),
        pre_bytes: None,
        handoff_ms: Some(500.0),
        redis_ms: Some(1500.0),
        hot_peak: Some(10.0),
        random_peak: Some(250.0),
        hot_mean: Some(0.0),
        random_mean: Some(3.0),
        hot_for_records_peak: Some(4.0),
        random_for_records_peak: Some(60.0),
        safe_ms: Some(750.0),
        safe_pause: Some(1.0),
    };
    assert_eq!(
        inputs.ratios(),
        Ratios {
            copy_throughput_handoff_over_raw_tcp: Some(0.25),
            pause_handoff_over_stop_and_copy: Some(0.01),
            pause_handoff_over_pre_copy: None,
            bytes_handoff_over_pre_copy: None,
            redis_ms_over_handoff_ms: Some(3.0),
            buffered_peak_random_over_hot_first: Some(25.0),
            buffered_mean_random_over_hot_first: None,
            buffered_for_records_peak_random_over_hot_first: Some(15.0),
            move_ms_abort_safe_over_handoff: Some(1.5),
            pause_abort_safe_over_handoff: Some(0.5),
        }
    );
    assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
    assert_eq!(ratio(Some(1.0), Some(f64::INFINITY)), None);
}

#[test]
fn the_report_takes_each_ratio_from_the_right_contenders() {
    // Handoff's copy phase: 1 MB in 20 ms is 50 MB/s, an eighth of raw TCP's 400.
    let r = MoveBenchReport::new(contenders(), Some(20), 123, config(), machine());
    assert_eq!(r.handoff_copy_throughput_mb_s, Some(50.0));
    assert_eq!(
        r.ratios,
        Ratios {
            copy_throughput_handoff_over_raw_tcp: Some(0.125),
            pause_handoff_over_stop_and_copy: Some(0.01),
            pause_handoff_over_pre_copy: Some(0.25),
            bytes_handoff_over_pre_copy: Some(0.8),
            redis_ms_over_handoff_ms: Some(3.0),
            buffered_peak_random_over_hot_first: Some(25.0),
            buffered_mean_random_over_hot_first: Some(3.0),
            buffered_for_records_peak_random_over_hot_first: Some(15.0),
            move_ms_abort_safe_over_handoff: Some(1.2),
            pause_abort_safe_over_handoff: Some(1.5),
        }
    );
    let h = &r.hot_first_vs_random;
    assert_eq!(
        (h.hot_first_buffered_peak, h.random_buffered_peak),
        (Some(10), Some(250))
    );
    assert_eq!(
        (
            h.hot_first_buffered_for_records_peak,
            h.random_buffered_for_records_peak
        ),
        (Some(4), Some(60))
    );
    assert_eq!(
        h.random_over_hot_first,
        r.ratios.buffered_peak_random_over_hot_first
    );
    assert_eq!(r.records_bytes, 123);
    assert!(r.succeeded());
}

#[test]
fn a_failed_contender_counts_in_no_ratio_and_fails_the_run() {
    let mut cs = contenders();
    cs[2] = Contender::failed(id::STOP_AND_COPY, "(b)", true, "node gone".into());
    cs[4].error = Some("reader panicked".into());
    let r = MoveBenchReport::new(cs, Some(20), 0, config(), machine());
    assert_eq!(r.ratios.pause_handoff_over_stop_and_copy, None);
    assert_eq!(r.ratios.copy_throughput_handoff_over_raw_tcp, None);
    assert_eq!(r.ratios.pause_handoff_over_pre_copy, Some(0.25));
    assert!(!r.succeeded());
    // Without the hot-first copy phase's time there is no copy throughput.
    let r = MoveBenchReport::new(contenders(), None, 0, config(), machine());
    assert_eq!(r.handoff_copy_throughput_mb_s, None);
}

#[test]
fn only_the_live_moves_must_be_clean_for_the_run_to_succeed() {
    let mut cs = contenders();
    cs[3].lost = Some(5);
    assert!(MoveBenchReport::new(cs, None, 0, config(), machine()).succeeded());
    let mut cs = contenders();
    cs[1].duplicated = Some(1);
    assert!(!MoveBenchReport::new(cs, None, 0, config(), machine()).succeeded());
}

#[test]
fn a_contender_that_loses_answers_is_not_clean() {
    let ok = Contender {
        lost: Some(0),
        oracle_mismatches: Some(0),
        ..Contender::default()
    };
    assert!(ok.clean());
    for bad in [
        Contender {
            lost: Some(3),
            ..Contender::default()
        },
        Contender {
            answer_mismatches: Some(1),
            ..Contender::default()
        },
        Contender {
            records_missing: Some(1),
            ..Contender::default()
        },
        Contender::failed("x", "x", false, "x".into()),
    ] {
        assert!(!bad.clean(), "{bad:?}");
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn sorted(mut k: Vec<&str>) -> Vec<&str> {
    k.sort_unstable();
    k
}

#[test]
fn the_json_report_keeps_its_field_names() {
    // The names `handoff bench move --json` printed before the bench became a library.
    let r = MoveBenchReport::new(contenders(), Some(20), 0, config(), machine());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        keys(&v),
        sorted(vec![
            "config",
            "contenders",
            "handoff_copy_throughput_mb_s",
            "hot_first_vs_random",
            "machine",
            "notes",
            "ratios",
            "records_bytes"
        ])
    );
    let contender = sorted(vec![
        "id",
        "name",
        "under_load",
        "total_ms",
        "pause_ms",
        "baseline_gap_ms",
        "bytes_sent",
        "records",
        "throughput_mb_s",
        "lost",
        "duplicated",
        "reordered",
        "wrong_answers",
        "stray",
        "retransmissions",
        "move_retransmissions",
        "latency_during_move_us",
        "latency_outside_move_us",
        "buffered_wait_us",
        "demanded",
        "oracle_checked",
        "oracle_mismatches",
        "answer_mismatches",
        "unverifiable",
        "records_missing",
        "buffered_peak",
        "buffered_for_records_peak",
        "buffered_mean",
        "move_outlasted_load",
        "error",
        "note",
        "detail",
    ]);
    let cs = v["contenders"].as_array().unwrap();
    for c in cs {
        assert_eq!(keys(c), contender);
    }
    assert_eq!(keys(&cs[0]["detail"]), ["load", "move", "oracle_examples"]);
    assert_eq!(
        keys(&cs[0]["detail"]["move"]),
        sorted(vec![
            "baseline_response_gap_ms",
            "buffered_for_records_peak",
            "buffered_peak",
            "buffered_samples",
            "buffered_wait_us",
            "bytes_copied",
            "cutover_seq",
            "demanded",
            "digest_match",
            "first_seq",
            "from",
            "instance",
            "max_response_gap_ms",
            "phases_ms",
            "records_copied",
            "records_resent",
            "resend_rounds",
            "sessions_at_start",
            "to",
            "tombstones",
            "total_ms"
        ])
    );
    assert_eq!(
        keys(&cs[0]["detail"]["move"]["phases_ms"]),
        ["copy", "cutover", "prepare", "retire", "steer", "verify"]
    );
    assert_eq!(
        keys(&cs[0]["detail"]["move"]["buffered_samples"]),
        ["interval_ms", "mean", "peak", "samples"]
    );
    assert_eq!(
        keys(&cs[2]["detail"]["move"]),
        sorted(vec![
            "baseline_response_gap_ms",
            "bytes_copied",
            "from",
            "held_after_seq",
            "held_ms",
            "instance",
            "max_response_gap_ms",
            "records_copied",
            "refused",
            "rounds",
            "to",
            "tombstones",
            "total_ms"
        ])
    );
    assert_eq!(
        keys(&cs[2]["detail"]["move"]["rounds"][0]),
        ["bytes", "held", "ms", "records", "since_seq", "tombstones"]
    );
    assert_eq!(keys(&cs[4]["detail"]), ["bytes_received", "wire_bytes"]);
    assert_eq!(
        keys(&cs[5]["detail"]),
        sorted(vec![
            "keys_left_on_a",
            "keys_on_b",
            "load_ms",
            "migrate_commands",
            "version",
            "wire_bytes"
        ])
    );
    assert_eq!(
        keys(&v["config"]),
        sorted(vec![
            "sessions",
            "rate",
            "duration_s",
            "move_at_s",
            "zipf",
            "seed",
            "timeout_ms",
            "precopy",
            "redis_batch"
        ])
    );
    assert_eq!(
        keys(&v["config"]["precopy"]),
        ["max_rounds", "stop_fraction"]
    );
    assert_eq!(
        keys(&v["machine"]),
        ["cpu_model", "cpus", "kernel", "memory_bytes"]
    );
    assert_eq!(keys(&v["ratios"]).len(), 10);
    assert_eq!(keys(&v["hot_first_vs_random"]).len(), 10);
}

#[test]
fn a_contender_that_did_not_run_has_null_detail_and_a_failed_move_a_null_move() {
    let failed = Contender::failed(id::PRE_COPY, "(c)", true, "x".into());
    let v = serde_json::to_value(&failed).unwrap();
    assert!(v["detail"].is_null(), "{v}");
    let no_move = Detail::Loaded(Box::new(LoadedDetail {
        move_: None,
        load: LoadReport::default(),
        oracle_examples: vec!["ue 1".into()],
    }));
    let v = serde_json::to_value(&no_move).unwrap();
    assert!(v["move"].is_null() && v["load"].is_object(), "{v}");
    assert_eq!(v["oracle_examples"][0], "ue 1");
}

#[test]
fn buffered_samples_summarize_to_peak_and_mean() {
    let mut b = BufferedSamples {
        samples: vec![[0, 4, 10], [20, 0, 5], [40, 2, 0]],
        ..BufferedSamples::default()
    };
    b.summarize();
    assert_eq!((b.peak, b.mean), (4, 2.0));
    let mut none = BufferedSamples::default();
    none.summarize();
    assert_eq!((none.peak, none.mean), (0, 0.0));
}

#[test]
fn throughput_is_bytes_per_second_in_megabytes() {
    assert_eq!(mb_s(2_000_000, 1000.0), 2.0);
    assert_eq!(mb_s(5, 0.0), 0.0);
}

#[test]
fn the_machine_is_read_from_proc_text() {
    let m = Machine::parse(
        4,
        "processor\t: 0\nmodel name\t: Example CPU @ 3GHz\n",
        "MemTotal:       16384 kB\nMemFree: 1 kB\n",
        "6.1.0-test\n",
    );
    assert_eq!(m.cpu_model, "Example CPU @ 3GHz");
    assert_eq!(m.memory_bytes, 16384 * 1024);
    assert_eq!((m.cpus, m.kernel.as_str()), (4, "6.1.0-test"));
    let unknown = Machine::parse(1, "", "", "");
    assert_eq!(
        (unknown.cpu_model.as_str(), unknown.memory_bytes),
        ("unknown", 0)
    );
}

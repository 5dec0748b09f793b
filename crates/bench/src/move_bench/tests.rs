use super::*;
use crate::moves::{BaselineReport, MoveReport};

fn options() -> MoveBenchOptions {
    MoveBenchOptions {
        sessions: 400,
        rate: 400.0,
        duration: None,
        move_at: 1.0,
        zipf: 1.1,
        seed: 9,
        timeout_ms: 250,
        precopy_stop_fraction: 0.01,
        precopy_max_rounds: 5,
        redis_batch: 1000,
    }
}

fn vmme() -> Subject {
    Subject::new("mme-1", "vmme")
}

#[test]
fn valid_options_become_the_reported_config_with_the_default_duration() {
    let c = options().validate(&vmme()).unwrap();
    assert_eq!(c.duration_s, 8.0);
    assert_eq!(
        c.precopy,
        PreCopyRule {
            stop_fraction: 0.01,
            max_rounds: 5
        }
    );
    assert_eq!((c.sessions, c.seed, c.redis_batch), (400, 9, 1000));
    let given = MoveBenchOptions {
        duration: Some(2.0),
        move_at: 0.3,
        ..options()
    };
    assert_eq!(given.validate(&vmme()).unwrap().duration_s, 2.0);
}

#[test]
fn options_out_of_range_name_the_option() {
    let bad = |f: fn(&mut MoveBenchOptions)| {
        let mut o = options();
        f(&mut o);
        match o.validate(&vmme()) {
            Err(ConfigError::OutOfRange { option, .. }) => option,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(bad(|o| o.rate = 0.0), "rate");
    assert_eq!(bad(|o| o.rate = f64::INFINITY), "rate");
    assert_eq!(bad(|o| o.duration = Some(0.0)), "duration");
    assert_eq!(bad(|o| o.duration = Some(3601.0)), "duration");
    // The move must start inside the measured phase.
    assert_eq!(bad(|o| o.move_at = 8.0), "move-at");
    assert_eq!(bad(|o| o.move_at = -0.1), "move-at");
    assert_eq!(
        bad(|o| o.precopy_stop_fraction = 1.5),
        "precopy-stop-fraction"
    );
    assert_eq!(bad(|o| o.precopy_max_rounds = 0), "precopy-max-rounds");
    assert_eq!(bad(|o| o.redis_batch = 0), "redis-batch");
    assert_eq!(bad(|o| o.sessions = 0), "sessions");
}

#[test]
fn a_loaded_run_needs_a_function_the_load_generator_speaks() {
    let err = options()
        .validate(&Subject::new("radius-1", "radius-acct"))
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::NoLoadFor {
            function: "radius-acct".into()
        }
    );
    // The instance name is free.
    assert!(options().validate(&Subject::new("mme-9", "vmme")).is_ok());
}

#[test]
fn the_default_measured_phase_grows_with_the_sessions() {
    assert_eq!(default_duration(5_000), 8.0);
    assert_eq!(default_duration(100_000), 8.0);
    assert_eq!(default_duration(1_000_000), 17.0);
}

#[test]
fn the_plan_runs_hot_first_first_and_numbers_its_steps() {
    let c = options().validate(&vmme()).unwrap();
    let p = plan(&c);
    let ids: Vec<&str> = p.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            id::HANDOFF,
            id::HANDOFF_RANDOM,
            id::HANDOFF_ABORT_SAFE,
            id::HANDOFF_CLAIRVOYANT,
            id::STOP_AND_COPY,
            id::PRE_COPY
        ]
    );
    assert_eq!(p.map(|s| s.step), [1, 2, 3, 4, 5, 6]);
    let live = |order, abort_safe| Mover::Live { order, abort_safe };
    assert_eq!(p[0].mover, live(CopyOrder::HotFirst, false));
    // The random order is seeded like the load, so a run is repeatable.
    assert_eq!(p[1].mover, live(CopyOrder::Random { seed: 9 }, false));
    assert_eq!(p[2].mover, live(CopyOrder::HotFirst, true));
    assert_eq!(p[3].mover, live(CopyOrder::Key, false));
    assert_eq!(p[4].mover, Mover::Baseline(None));
    assert_eq!(p[5].mover, Mover::Baseline(Some(c.precopy)));
    assert!(STEPS > p.len(), "raw TCP and Redis come after");
}

fn load() -> LoadReport {
    LoadReport {
        lost: 1,
        duplicated: 2,
        reordered: 3,
        wrong_answers: 4,
        stray: 5,
        retransmissions: 6,
        move_retransmissions: 2,
        latency_during_move_us: handoff_loadgen::LatencyReport {
            p99: 7_000,
            p999: 9_000,
            max: 11_000,
            ..Default::default()
        },
        move_response_gap_ms: 12.5,
        baseline_response_gap_ms: 1.5,
        ..LoadReport::default()
    }
}

#[test]
fn a_loaded_contender_row_comes_from_the_load_the_oracle_and_the_move() {
    let c = options().validate(&vmme()).unwrap();
    let step = plan(&c)[0];
    let oracle = OracleReport {
        checked: 400,
        mismatches: 7,
        answer_mismatches: 8,
        unverifiable: 9,
        examples: vec!["ue 3 differs".into()],
        ..OracleReport::default()
    };
    let fig = MoveFigures {
        bytes: 2_000_000,
        records: 400,
        buffered_peak: Some(11),
        buffered_for_records_peak: Some(3),
        buffered_mean: Some(0.5),
        copy_ms: Some(40),
        buffered_wait_us: Some(crate::moves::WaitLatency {
            p50: 100,
            p99: 900,
            max: 1200,
        }),
        demanded: Some(17),
    };
    let detail = MoveDetail::Live {
        report: MoveReport::default(),
        buffered_samples: BufferedSamples::default(),
    }
    .with_gaps(&load());
    let row = Measured {
        load: load(),
        oracle,
        move_ms: 1000.0,
        fig,
        outlasted: false,
    }
    .contender(step, None, Some(detail));
    assert_eq!((row.id, row.under_load), (id::HANDOFF, true));
    assert_eq!(row.pause_ms, Some(12.5));
    assert_eq!(row.baseline_gap_ms, Some(1.5));
    assert_eq!(row.throughput_mb_s, 2.0);
    assert_eq!(
        (row.lost, row.duplicated, row.reordered, row.wrong_answers),
        (Some(1), Some(2), Some(3), Some(4))
    );
    assert_eq!(
        (
            row.oracle_checked,
            row.oracle_mismatches,
            row.answer_mismatches
        ),
        (Some(400), Some(7), Some(8))
    );
    assert_eq!(
        row.records_missing, None,
        "a loaded contender has the oracle"
    );
    assert_eq!(
        (row.buffered_peak, row.buffered_mean),
        (Some(11), Some(0.5))
    );
    assert_eq!(
        (row.buffered_wait_us.map(|w| w.p99), row.demanded),
        (Some(900), Some(17))
    );
    assert_eq!(row.move_retransmissions, Some(2));
    assert_eq!(
        row.latency_during_move_us.map(|l| (l.p99, l.p999, l.max)),
        Some((7_000, 9_000, 11_000))
    );
    assert_eq!(
        row.note,
        mover_note(Mover::Live {
            order: CopyOrder::HotFirst,
            abort_safe: false,
        })
    );
    let Detail::Loaded(d) = &row.detail else {
        panic!("{:?}", row.detail)
    };
    assert_eq!(d.oracle_examples, ["ue 3 differs"]);
    let Some(MoveDetail::Live { report, .. }) = &d.move_ else {
        panic!("{:?}", d.move_)
    };
    // The gaps the clients saw are written into the mover's report.
    assert_eq!(
        (report.max_response_gap_ms, report.baseline_response_gap_ms),
        (12.5, 1.5)
    );
}

#[test]
fn baseline_reports_get_the_clients_gaps_too() {
    let d = MoveDetail::Baseline(BaselineReport::default()).with_gaps(&load());
    let MoveDetail::Baseline(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (r.max_response_gap_ms, r.baseline_response_gap_ms),
        (12.5, 1.5)
    );
}

#[test]
fn each_mover_says_how_it_treats_signals() {
    let notes = [
        mover_note(Mover::Live {
            order: CopyOrder::HotFirst,
            abort_safe: false,
        }),
        mover_note(Mover::Baseline(None)),
        mover_note(Mover::Baseline(Some(PreCopyRule::default()))),
    ];
    assert!(notes[0].starts_with("no pause"));
    assert!(notes[1].contains("held"));
    assert!(notes[2].contains("re-copy"));
}

/// The clairvoyant contender copies in key order because the load generator's most popular UE
/// is its first IMSI and the vMME's keys sort as their IMSIs: this pins both.
#[test]
fn the_vmme_keys_sort_as_their_imsis_so_key_order_is_the_loads_popularity() {
    let ranks: Vec<usize> = (1..=5)
        .map(|r| handoff_loadgen::popularity_slot(r, 5))
        .collect();
    assert_eq!(ranks, [0, 1, 2, 3, 4], "rank r picks UE r - 1");
    let imsis: Vec<u64> = [1, 9, 10, 255, 256, 65_536, 999_999]
        .iter()
        .map(|i| handoff_loadgen::LoadConfig::default().imsi_base + i)
        .collect();
    let mut keys: Vec<_> = imsis
        .iter()
        .rev()
        .map(|i| handoff_vmme::session_key(*i))
        .collect();
    keys.sort();
    let sorted: Vec<_> = imsis
        .iter()
        .map(|i| handoff_vmme::session_key(*i))
        .collect();
    assert_eq!(keys, sorted);
}

//! `handoff demo`: a steer, a node hosting `mme-1`, and the load generator, on loopback.

use crate::report::{human_bytes, progress_bar};
use clap::Args;
use handoff_bench::{live_move, start_steer, Machine, MoveReport, NodeProcess, Subject};
use handoff_loadgen::oracle::{self, OracleReport};
use handoff_loadgen::{LoadConfig, LoadReport, Progress};
use handoff_node::client::AdminClient;
use handoff_steer::SteerStatsSnapshot;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// UEs to simulate (each attaches first).
    #[arg(long, default_value_t = 20_000)]
    pub sessions: u32,
    /// New procedures per second in the measured phase (open loop).
    #[arg(long, default_value_t = 5_000.0)]
    pub rate: f64,
    /// Length of the measured phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Zipf exponent of UE popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Seed of the load generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First retransmission timeout in milliseconds (doubles per retry).
    #[arg(long, default_value_t = 250)]
    pub timeout_ms: u64,
    /// Serve from one node only, with no move.
    #[arg(long)]
    pub no_move: bool,
    /// When to start the move, as a fraction of the measured phase.
    #[arg(long, default_value_t = 0.3)]
    pub move_at: f64,
    /// Copy order of the move: hot-first, key or random.
    #[arg(long, default_value = "hot-first")]
    pub order: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The demo's report. Field names are relied on by later checks: keep them.
#[derive(Debug, serde::Serialize)]
struct DemoReport {
    #[serde(flatten)]
    load: LoadReport,
    oracle: OracleReport,
    node_rss_bytes: u64,
    records_bytes: u64,
    steer: SteerStatsSnapshot,
    #[serde(rename = "move", skip_serializing_if = "Option::is_none")]
    move_: Option<MoveReport>,
    config: DemoConfig,
    machine: Machine,
}

#[derive(Debug, serde::Serialize)]
struct DemoConfig {
    sessions: u32,
    rate: f64,
    duration_s: f64,
    zipf: f64,
    seed: u64,
}

fn parse_order(s: &str, seed: u64) -> anyhow::Result<handoff_state::CopyOrder> {
    Ok(match s {
        "hot-first" => handoff_state::CopyOrder::HotFirst,
        "key" => handoff_state::CopyOrder::Key,
        "random" => handoff_state::CopyOrder::Random { seed },
        other => anyhow::bail!("--order {other}: expected hot-first, key or random"),
    })
}

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if !(a.duration.is_finite() && (0.0..=86_400.0).contains(&a.duration)) {
        anyhow::bail!("--duration must be within 0..=86400 seconds");
    }
    if !(a.move_at.is_finite() && (0.0..1.0).contains(&a.move_at)) {
        anyhow::bail!("--move-at must be within [0, 1)");
    }
    let order = parse_order(&a.order, a.seed)?;
    let subject = Subject::new("mme-1", "vmme");
    let launcher = crate::node_launcher()?;
    let catalog = crate::catalog();
    let node_a = NodeProcess::spawn(&launcher, "node-a", &[&subject], None).await?;
    let node_b = if a.no_move {
        None
    } else {
        Some(NodeProcess::spawn(&launcher, "node-b", &[], None).await?)
    };
    let (steer, service) = start_steer(&catalog, &subject, node_a.addr).await?;
    let window = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cfg = LoadConfig {
        target: service,
        sessions: a.sessions,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        zipf: a.zipf,
        seed: a.seed,
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        move_window: Some(window.clone()),
        ..LoadConfig::default()
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let pb = progress_bar(u64::from(a.sessions), "{spinner} {msg} [{elapsed_precise}]");
    pb.enable_steady_tick(Duration::from_millis(200));
    let (phase_tx, mut phase_rx) = tokio::sync::watch::channel("attach");
    let pb2 = pb.clone();
    let load = tokio::spawn(handoff_loadgen::run(cfg, move |p: Progress| {
        pb2.set_message(format!(
            "{}: sent {} answered {} lost {} attached {}",
            p.phase, p.sent, p.answered, p.lost, p.attached
        ));
        let _ = phase_tx.send(p.phase);
    }));
    let mut moved = None;
    if let Some(b) = &node_b {
        // Wait for the measured phase, let it run, then move.
        while *phase_rx.borrow() == "attach" {
            if phase_rx.changed().await.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(a.duration * a.move_at)).await;
        pb.println("moving mme-1 from node-a to node-b");
        window.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = live_move(&steer, &subject, node_a.addr, b.addr, order, true).await;
        window.store(false, std::sync::atomic::Ordering::Relaxed);
        moved = Some(r?);
    }
    let (load, histories) = load.await??;
    pb.finish_and_clear();
    let owner = node_b.as_ref().unwrap_or(&node_a);
    let mut admin = AdminClient::connect(owner.addr, "demo").await?;
    let dump = admin.dump(&subject.instance).await?;
    let records_bytes = dump
        .iter()
        .map(|r| (r.key.len() + r.bytes.len()) as u64)
        .sum();
    let oracle = oracle::check(&handoff_vmme::Vmme::default(), &histories, &dump);
    let node_rss_bytes = owner.rss_bytes().await?;
    let steer_stats = steer
        .stats(&subject.instance)
        .map(|s| s.snapshot())
        .unwrap_or_default();
    steer.shutdown();
    node_a.stop().await;
    if let Some(b) = node_b {
        b.stop().await;
    }
    let move_ = moved.map(|mut m| {
        m.max_response_gap_ms = load.move_response_gap_ms;
        m.baseline_response_gap_ms = load.baseline_response_gap_ms;
        m
    });
    let report = DemoReport {
        load,
        oracle,
        node_rss_bytes,
        records_bytes,
        steer: steer_stats,
        move_,
        config: DemoConfig {
            sessions: a.sessions,
            rate: a.rate,
            duration_s: a.duration,
            zipf: a.zipf,
            seed: a.seed,
        },
        machine: Machine::read(),
    };
    let clean = report.load.lost == 0
        && report.load.duplicated == 0
        && report.load.reordered == 0
        && report.load.wrong_answers == 0
        && report.load.stray == 0
        && report.oracle.checked == u64::from(a.sessions)
        && report.oracle.mismatches == 0
        && report.oracle.answer_mismatches == 0
        && report.oracle.unknown_records == 0
        && report
            .move_
            .as_ref()
            .is_none_or(|m| m.digest_match && m.records_copied == m.sessions_at_start);
    if a.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_human(r: &DemoReport) {
    let l = &r.load;
    out!(
        "handoff demo: steer -> mme-1 (vmme) on node-a{}, {} UEs, zipf {}",
        if r.move_.is_some() {
            ", moved live to node-b mid-run"
        } else {
            ""
        },
        l.sessions,
        r.config.zipf
    );
    let [attach, measured, latency] = crate::report::load_lines(l);
    out!("{attach}");
    out!("{measured}");
    out!(
        "  signals sent {}  answered {}  lost {}  duplicated {}  reordered {}  retransmissions {}",
        l.signals_sent,
        l.answered,
        l.lost,
        l.duplicated,
        l.reordered,
        l.retransmissions
    );
    out!("{latency}");
    out!(
        "  oracle         checked {}  mismatches {}  answer mismatches {}  unverifiable {}  (expected present {})",
        r.oracle.checked,
        r.oracle.mismatches,
        r.oracle.answer_mismatches,
        r.oracle.unverifiable,
        r.oracle.expected_present
    );
    for e in &r.oracle.examples {
        out!("    {e}");
    }
    out!(
        "  steer          admitted {}  malformed {}  shed {}  relayed {}",
        r.steer.admitted,
        r.steer.malformed,
        r.steer.shed,
        r.steer.outputs_relayed
    );
    if let Some(m) = &r.move_ {
        out!(
            "  move           {} -> {}: {} sessions at start, {} records copied ({}), digest match {}, buffered peak {}",
            m.from, m.to, m.sessions_at_start, m.records_copied, human_bytes(m.bytes_copied), m.digest_match, m.buffered_peak
        );
        let p = &m.phases_ms;
        out!(
            "                 phases ms: prepare {} steer {} copy {} verify {} cutover {} retire {} (total {})",
            p.prepare, p.steer, p.copy, p.verify, p.cutover, p.retire, m.total_ms
        );
        out!(
            "                 max response gap {:.2} ms during the move, {:.2} ms outside it",
            m.max_response_gap_ms,
            m.baseline_response_gap_ms
        );
    }
    out!(
        "  node RSS       {} (records {})",
        human_bytes(r.node_rss_bytes),
        human_bytes(r.records_bytes)
    );
}

//! `handoff demo`: a steer, a node hosting `mme-1`, and the load generator, on loopback.

use crate::cluster::{start_steer, NodeProcess};
use crate::report::{human_bytes, progress_bar, Machine};
use clap::Args;
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

pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if !(a.duration.is_finite() && (0.0..=86_400.0).contains(&a.duration)) {
        anyhow::bail!("--duration must be within 0..=86400 seconds");
    }
    let node = NodeProcess::spawn("node-a", &["mme-1:vmme"], None).await?;
    let (steer, service) = start_steer("mme-1", node.addr).await?;
    let cfg = LoadConfig {
        target: service,
        sessions: a.sessions,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        zipf: a.zipf,
        seed: a.seed,
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        ..LoadConfig::default()
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let pb = progress_bar(u64::from(a.sessions), "{spinner} {msg} [{elapsed_precise}]");
    pb.enable_steady_tick(Duration::from_millis(200));
    let (load, histories) = handoff_loadgen::run(cfg, |p: Progress| {
        pb.set_message(format!(
            "{}: sent {} answered {} lost {} attached {}",
            p.phase, p.sent, p.answered, p.lost, p.attached
        ));
    })
    .await?;
    pb.finish_and_clear();
    let mut admin = AdminClient::connect(node.addr, "demo").await?;
    let dump = admin.dump("mme-1").await?;
    let records_bytes = dump
        .iter()
        .map(|r| (r.key.len() + r.bytes.len()) as u64)
        .sum();
    let oracle = oracle::check(&handoff_vmme::Vmme::default(), &histories, &dump);
    let node_rss_bytes = node.rss_bytes().await?;
    let steer_stats = steer
        .stats("mme-1")
        .map(|s| s.snapshot())
        .unwrap_or_default();
    steer.shutdown();
    node.stop().await;
    let report = DemoReport {
        load,
        oracle,
        node_rss_bytes,
        records_bytes,
        steer: steer_stats,
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
        && report.oracle.unknown_records == 0;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
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
    println!(
        "handoff demo: steer -> node-a/mme-1 (vmme), {} UEs, zipf {}",
        l.sessions, r.config.zipf
    );
    println!(
        "  attach phase   {} UEs registered in {} ms (p50 {} us, p99 {} us)",
        l.attached, l.attach_ms, l.attach_latency_us.p50, l.attach_latency_us.p99
    );
    println!(
        "  measured phase {:.0} procedures/s for {} ms",
        l.measured_rate, l.measured_ms
    );
    println!(
        "  signals sent {}  answered {}  lost {}  duplicated {}  reordered {}  retransmissions {}",
        l.signals_sent, l.answered, l.lost, l.duplicated, l.reordered, l.retransmissions
    );
    println!(
        "  latency us     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l.latency_us.p50, l.latency_us.p90, l.latency_us.p99, l.latency_us.p999, l.latency_us.max
    );
    println!(
        "  oracle         checked {}  mismatches {}  answer mismatches {}  unverifiable {}  (expected present {})",
        r.oracle.checked,
        r.oracle.mismatches,
        r.oracle.answer_mismatches,
        r.oracle.unverifiable,
        r.oracle.expected_present
    );
    for e in &r.oracle.examples {
        println!("    {e}");
    }
    println!(
        "  steer          admitted {}  malformed {}  shed {}  relayed {}",
        r.steer.admitted, r.steer.malformed, r.steer.shed, r.steer.outputs_relayed
    );
    println!(
        "  node RSS       {} (records {})",
        human_bytes(r.node_rss_bytes),
        human_bytes(r.records_bytes)
    );
}

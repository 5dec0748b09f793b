//! `handoff loadgen`: drives any service address with the load generator and reports its
//! accounting (and, with `--check-node`, the oracle against a node's dump) as JSON.
//!
//! It is meant for an operator checking a deployment as much as for a test suite: the run is
//! bounded (attach deadline, measured phase, then at most every retransmission timeout), the
//! target is probed first so a wrong address fails in seconds, and the exit code says whether
//! the run completed, not whether it was clean (the report says that):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the run completed (losses or mismatches are in the report) |
//! | 1 | the target never answered, a check node could not be reached, or the report could not be written |
//! | 2 | a usage error (a flag out of range) |
//! | 3 | `--max-lost N` was given and more than N transactions were lost |

use crate::report::progress_bar;
use clap::Args;
use handoff_loadgen::oracle::{self, OracleReport};
use handoff_loadgen::{LoadConfig, LoadReport, Progress};
use handoff_node::client::AdminClient;
use handoff_vmme::{Header, Response, ResponseBody, Signal, SignalBody};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of a usage error (as clap's own).
const EXIT_USAGE: u8 = 2;
/// Exit code when more transactions were lost than `--max-lost` allows.
const EXIT_TOO_MANY_LOST: u8 = 3;
/// Longest the probe of the target may take, whatever the retransmission settings.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// Longest a check node may take to dump its instance.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// The service address to drive (a steer's service, or a node's direct path).
    #[arg(long)]
    pub target: SocketAddr,
    /// UEs to simulate (each attaches first unless --skip-attach).
    #[arg(long, default_value_t = 1000)]
    pub sessions: u32,
    /// New procedures per second in the measured phase (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Length of the measured phase, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub duration_ms: u64,
    /// Zipf exponent of UE popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Seed of the UE choice and signal mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First IMSI (UE i has IMSI base + i). Use a range no other client uses: the oracle
    /// expects every context of these IMSIs to come from this run.
    #[arg(long, default_value_t = LoadConfig::default().imsi_base)]
    pub imsi_base: u64,
    /// First retransmission timeout in milliseconds (doubles per retry).
    #[arg(long, default_value_t = 250)]
    pub timeout_ms: u64,
    /// Retransmissions before a transaction counts as lost.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Longest the attach phase may take, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub attach_deadline_ms: u64,
    /// Skip the attach phase (UEs start detached and attach when picked).
    #[arg(long)]
    pub skip_attach: bool,
    /// Write the JSON report to this file too.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the readable summary.
    #[arg(long)]
    pub json: bool,
    /// After the run, dump the instance from this node's admin address and run the oracle
    /// against it (repeatable: each node gets its own check).
    #[arg(long = "check-node", value_name = "ADDR")]
    pub check_nodes: Vec<SocketAddr>,
    /// The instance the checks dump.
    #[arg(long, default_value = "mme-1")]
    pub instance: String,
    /// Exit with code 3 when more than this many transactions were lost.
    #[arg(long)]
    pub max_lost: Option<u64>,
    /// Shared token offered to the check nodes.
    #[arg(
        long,
        env = "HANDOFF_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
}

/// Longest attach deadline accepted (the run must stop by itself).
const MAX_ATTACH_DEADLINE_MS: u64 = 3_600_000;

impl LoadgenArgs {
    /// The load generator's settings, or what is wrong with the flags (naming the flag).
    pub fn load_config(&self) -> Result<LoadConfig, String> {
        if self.sessions == 0 {
            return Err("--sessions must be at least 1".into());
        }
        if self.skip_attach && self.rate <= 0.0 {
            return Err("--skip-attach with --rate 0 sends nothing: nothing to do".into());
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be at least 1".into());
        }
        if self.attach_deadline_ms == 0 || self.attach_deadline_ms > MAX_ATTACH_DEADLINE_MS {
            return Err(format!(
                "--attach-deadline-ms must be within 1..={MAX_ATTACH_DEADLINE_MS}"
            ));
        }
        if self.instance.is_empty() {
            return Err("--instance must not be empty".into());
        }
        let cfg = LoadConfig {
            target: self.target,
            sessions: self.sessions,
            rate: self.rate,
            duration: Duration::from_millis(self.duration_ms),
            zipf: self.zipf,
            seed: self.seed,
            imsi_base: self.imsi_base,
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
            attach_deadline: Duration::from_millis(self.attach_deadline_ms),
            skip_attach: self.skip_attach,
            ..LoadConfig::default()
        };
        cfg.validate().map_err(|e| {
            let flag = match e.split_whitespace().next() {
                Some("rate") => "--rate",
                Some("duration") => "--duration-ms",
                Some("timeout") => "--timeout-ms",
                Some("retries") => "--retries",
                Some("zipf") => "--zipf",
                Some("IMSIs") => "--imsi-base/--sessions",
                _ => "load settings",
            };
            format!("{flag}: {e}")
        })?;
        Ok(cfg)
    }
}

/// The longest the run can take: the attach deadline, the measured phase, then the drain
/// (every retransmission timeout of the last transaction, and half a second).
fn run_bound(cfg: &LoadConfig) -> Duration {
    let give_up: Duration = (0..=cfg.retries)
        .map(|i| cfg.timeout * 2u32.saturating_pow(i.min(16)))
        .sum();
    let attach = if cfg.skip_attach {
        Duration::ZERO
    } else {
        cfg.attach_deadline
    };
    attach + cfg.duration + give_up + Duration::from_millis(500)
}

/// The report (`--json`, `--report`). Field names are relied on by scripts and tests.
#[derive(Debug, serde::Serialize)]
struct LoadgenReport {
    target: SocketAddr,
    /// Whether nothing was lost, duplicated, reordered, wrong or stray, every UE attached, and
    /// some check found the instance with no mismatch (checks of nodes that do not host it do
    /// not count; nor do records of other subscribers, `oracle.unknown_records`, which a live
    /// deployment has).
    clean: bool,
    /// What was not clean, one sentence each.
    problems: Vec<String>,
    #[serde(flatten)]
    load: LoadReport,
    /// One entry per `--check-node`, in order.
    checks: Vec<NodeCheck>,
    elapsed_ms: u64,
    config: ReportConfig,
}

#[derive(Debug, serde::Serialize)]
struct ReportConfig {
    sessions: u32,
    rate: f64,
    duration_ms: u64,
    zipf: f64,
    seed: u64,
    imsi_base: u64,
    timeout_ms: u64,
    retries: u32,
    attach_deadline_ms: u64,
    skip_attach: bool,
    instance: String,
    max_lost: Option<u64>,
}

/// The oracle run against one node's dump.
#[derive(Debug, serde::Serialize)]
struct NodeCheck {
    node: SocketAddr,
    /// The node's name, from its hello (`null` if it could not be reached).
    node_name: Option<String>,
    instance: String,
    /// Whether the node hosts the instance (`false` when it answered "unknown instance").
    hosted: bool,
    /// Records dumped.
    records: u64,
    /// The oracle's result (`null` unless hosted).
    oracle: Option<OracleReport>,
    /// Why the check could not be made (`null` when it was, or the instance is not hosted).
    error: Option<String>,
}

pub async fn run(a: LoadgenArgs) -> anyhow::Result<ExitCode> {
    let cfg = match a.load_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let bound = run_bound(&cfg);
    tracing::info!(target_addr = %cfg.target, sessions = cfg.sessions, rate = cfg.rate,
        duration_ms = a.duration_ms, seed = cfg.seed, bound_ms = bound.as_millis() as u64,
        "loadgen starting");
    probe(&cfg).await?;
    let started = std::time::Instant::now();
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = progress_bar(
            u64::from(a.sessions),
            "{spinner} loadgen {msg} [{elapsed_precise}]",
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    };
    let pb2 = pb.clone();
    let mut last_phase = "";
    let progress = move |p: Progress| {
        if p.phase != last_phase {
            tracing::info!(phase = p.phase, "load phase");
            last_phase = p.phase;
        }
        tracing::debug!(
            phase = p.phase,
            sent = p.sent,
            answered = p.answered,
            lost = p.lost,
            attached = p.attached,
            "load progress"
        );
        pb2.set_message(format!(
            "{}: sent {} answered {} lost {} attached {}",
            p.phase, p.sent, p.answered, p.lost, p.attached
        ));
    };
    // The run bounds itself; the timeout is a backstop against a bug in that bound.
    let ran = tokio::time::timeout(
        bound + Duration::from_secs(10),
        handoff_loadgen::run(cfg.clone(), progress),
    )
    .await;
    pb.finish_and_clear();
    let (load, histories) = match ran {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("the load generator failed: {e}"))?,
        Err(_) => anyhow::bail!("the run did not end within {bound:?} (a load generator bug)"),
    };
    tracing::info!(
        sent = load.signals_sent,
        answered = load.answered,
        lost = load.lost,
        "load done"
    );
    let mut checks = Vec::new();
    for &node in &a.check_nodes {
        checks.push(check_node(node, &a.instance, &a.token, &histories).await);
    }
    let report = LoadgenReport {
        target: cfg.target,
        clean: false,
        problems: Vec::new(),
        load,
        checks,
        elapsed_ms: started.elapsed().as_millis() as u64,
        config: ReportConfig {
            sessions: a.sessions,
            rate: a.rate,
            duration_ms: a.duration_ms,
            zipf: a.zipf,
            seed: a.seed,
            imsi_base: a.imsi_base,
            timeout_ms: a.timeout_ms,
            retries: a.retries,
            attach_deadline_ms: a.attach_deadline_ms,
            skip_attach: a.skip_attach,
            instance: a.instance.clone(),
            max_lost: a.max_lost,
        },
    };
    let report = judge(report);
    if let Some(path) = &a.report {
        write_report(path, &report)?;
    }
    if a.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    if report.load.signals_sent > 0 && report.load.answered == 0 {
        anyhow::bail!(
            "{} answered none of {} transactions",
            report.target,
            report.load.signals_sent
        );
    }
    if let Some(c) = report.checks.iter().find(|c| c.error.is_some()) {
        anyhow::bail!(
            "the check of {} failed: {}",
            c.node,
            c.error.as_deref().unwrap_or_default()
        );
    }
    if let Some(max) = a.max_lost {
        if report.load.lost > max {
            eprintln!(
                "error: {} transactions lost, more than --max-lost {max}",
                report.load.lost
            );
            return Ok(ExitCode::from(EXIT_TOO_MANY_LOST));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends an Echo (stateless: it changes no session) from a socket of its own and waits for
/// its answer, retransmitting like a UE, for at most [`PROBE_MAX`]: a target nothing serves
/// fails here in seconds instead of after a whole attach phase of losses.
async fn probe(cfg: &LoadConfig) -> anyhow::Result<()> {
    let bind: SocketAddr = if cfg.target.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    let nonce = 0x6c6f_6164_6765_6e00 ^ cfg.seed;
    let header = Header {
        imsi: cfg.imsi_base,
        txn_id: u32::MAX,
    };
    let echo = Signal {
        header,
        body: SignalBody::Echo { nonce },
    }
    .to_bytes();
    let started = tokio::time::Instant::now();
    let deadline = started + PROBE_MAX;
    let mut wait = cfg.timeout;
    let mut buf = vec![0u8; 65_536];
    for _ in 0..=cfg.retries {
        // A refused send (ICMP port unreachable from an earlier one) is retried like a loss.
        let _ = socket.send_to(&echo, cfg.target).await;
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        loop {
            let got = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, from))) = got else {
                break;
            };
            let answered = from == cfg.target
                && Response::decode(&buf[..n]).is_ok_and(|r| {
                    r.header == header && r.body == ResponseBody::EchoResponse { nonce }
                });
            if answered {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        wait = wait.saturating_mul(2);
    }
    anyhow::bail!(
        "{} did not answer an Echo within {} ms: is a steer or a node's direct path serving there?",
        cfg.target,
        started.elapsed().as_millis()
    )
}

async fn check_node(
    node: SocketAddr,
    instance: &str,
    token: &str,
    histories: &[handoff_loadgen::UeHistory],
) -> NodeCheck {
    let mut check = NodeCheck {
        node,
        node_name: None,
        instance: instance.to_owned(),
        hosted: false,
        records: 0,
        oracle: None,
        error: None,
    };
    let dumped = tokio::time::timeout(CHECK_TIMEOUT, async {
        let mut c = AdminClient::connect_with(node, "loadgen", token).await?;
        check.node_name = Some(c.node_name().to_owned());
        c.set_reply_timeout(CHECK_TIMEOUT);
        c.dump(instance).await
    })
    .await;
    match dumped {
        Ok(Ok(dump)) => {
            check.hosted = true;
            check.records = dump.len() as u64;
            let report = oracle::check(&handoff_vmme::Vmme::default(), histories, &dump);
            tracing::info!(%node, checked = report.checked, mismatches = report.mismatches,
                answer_mismatches = report.answer_mismatches, "oracle");
            check.oracle = Some(report);
        }
        Ok(Err(e)) if e.code() == Some(handoff_wire::code::UNKNOWN_INSTANCE) => {
            tracing::info!(%node, %instance, "the node does not host the instance");
        }
        Ok(Err(e)) => check.error = Some(e.to_string()),
        Err(_) => check.error = Some(format!("no dump within {CHECK_TIMEOUT:?}")),
    }
    check
}

/// Fills `clean` and `problems`.
fn judge(mut r: LoadgenReport) -> LoadgenReport {
    let l = &r.load;
    let mut problems = Vec::new();
    for (n, what) in [
        (l.lost, "transactions lost"),
        (l.duplicated, "answers duplicated"),
        (l.reordered, "answers reordered"),
        (l.wrong_answers, "wrong answers"),
        (l.stray, "stray datagrams"),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    if !r.config.skip_attach && l.attached < u64::from(l.sessions) {
        problems.push(format!("{} of {} UEs attached", l.attached, l.sessions));
    }
    for c in &r.checks {
        if let Some(e) = &c.error {
            problems.push(format!("check of {}: {e}", c.node));
        }
        if let Some(o) = &c.oracle {
            for (n, what) in [
                (o.mismatches, "state mismatches"),
                (o.answer_mismatches, "answer mismatches"),
            ] {
                if n > 0 {
                    problems.push(format!("oracle on {}: {n} {what}", c.node));
                }
            }
        }
    }
    if !r.checks.is_empty() && !r.checks.iter().any(|c| c.hosted) {
        problems.push(format!("no check node hosts {}", r.config.instance));
    }
    r.clean = problems.is_empty();
    r.problems = problems;
    r
}

/// Writes the report next to its final name, then renames it: a reader never sees half.
fn write_report(path: &Path, report: &LoadgenReport) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_human(r: &LoadgenReport) {
    let l = &r.load;
    out!(
        "handoff loadgen: {} UEs against {} ({})",
        l.sessions,
        r.target,
        if r.clean { "clean" } else { "NOT clean" }
    );
    let [attach, measured, latency] = crate::report::load_lines(l);
    out!("{attach}");
    out!("{measured}");
    out!(
        "  signals sent {}  answered {}  lost {}  duplicated {}  reordered {}  wrong {}  stray {}  retransmissions {}",
        l.signals_sent,
        l.answered,
        l.lost,
        l.duplicated,
        l.reordered,
        l.wrong_answers,
        l.stray,
        l.retransmissions
    );
    out!(
        "{latency}  (max gap between answers {:.1} ms)",
        l.max_response_gap_ms
    );
    for c in &r.checks {
        let name = c.node_name.as_deref().unwrap_or("?");
        match (&c.oracle, &c.error) {
            (Some(o), _) => out!(
                "  oracle {} ({name}): {} records, checked {}  mismatches {}  answer mismatches {}  unverifiable {}  unknown records {}",
                c.node,
                c.records,
                o.checked,
                o.mismatches,
                o.answer_mismatches,
                o.unverifiable,
                o.unknown_records
            ),
            (None, Some(e)) => out!("  oracle {}: not checked: {e}", c.node),
            (None, None) => out!("  oracle {} ({name}): does not host {}", c.node, c.instance),
        }
        for e in c.oracle.iter().flat_map(|o| &o.examples) {
            out!("    {e}");
        }
    }
    for p in &r.problems {
        out!("  problem: {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: LoadgenArgs,
    }

    fn parse(extra: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        let mut argv = vec!["loadgen", "--target", "127.0.0.1:36412"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.a)
    }

    fn config_error(extra: &[&str]) -> String {
        parse(extra)
            .expect("flags parse")
            .load_config()
            .expect_err("the settings are refused")
    }

    #[test]
    fn the_defaults_validate_and_reach_the_load_config() {
        let a = parse(&["--sessions", "7", "--duration-ms", "1500", "--seed", "9"]).unwrap();
        let cfg = a.load_config().unwrap();
        assert_eq!(cfg.sessions, 7);
        assert_eq!(cfg.duration, Duration::from_millis(1500));
        assert_eq!(cfg.seed, 9);
        assert_eq!(cfg.imsi_base, LoadConfig::default().imsi_base);
        assert_eq!(cfg.attach_deadline, Duration::from_secs(60));
        assert!(a.check_nodes.is_empty());
        assert_eq!(a.instance, "mme-1");
    }

    #[test]
    fn check_node_is_repeatable() {
        let a = parse(&[
            "--check-node",
            "127.0.0.1:7600",
            "--check-node",
            "127.0.0.1:7601",
        ])
        .unwrap();
        assert_eq!(a.check_nodes.len(), 2);
        assert_eq!(a.check_nodes[1].port(), 7601);
    }

    #[test]
    fn a_missing_target_or_a_bad_address_is_a_usage_error() {
        assert!(Cli::try_parse_from(["loadgen"]).is_err());
        let e = Cli::try_parse_from(["loadgen", "--target", "nowhere"])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["--check-node", "node-b"]).is_err());
        assert!(parse(&["--sessions", "-1"]).is_err());
    }

    #[test]
    fn out_of_range_settings_name_their_flag() {
        assert!(config_error(&["--sessions", "0"]).contains("--sessions"));
        assert!(config_error(&["--rate", "NaN"]).starts_with("--rate"));
        assert!(config_error(&["--rate=-5"]).starts_with("--rate"));
        assert!(config_error(&["--timeout-ms", "0"]).starts_with("--timeout-ms"));
        assert!(config_error(&["--timeout-ms", "60001"]).starts_with("--timeout-ms"));
        assert!(config_error(&["--retries", "11"]).starts_with("--retries"));
        assert!(config_error(&["--zipf=-1"]).starts_with("--zipf"));
        assert!(config_error(&["--duration-ms", "86400001"]).starts_with("--duration-ms"));
        assert!(config_error(&["--attach-deadline-ms", "0"]).starts_with("--attach-deadline-ms"));
        assert!(config_error(&["--imsi-base", "999999999999999"]).contains("--imsi-base"));
        assert!(config_error(&["--skip-attach", "--rate", "0"]).contains("nothing to do"));
        assert!(config_error(&["--instance", ""]).contains("--instance"));
    }

    #[test]
    fn the_run_is_bounded_by_the_attach_deadline_the_duration_and_the_retries() {
        let a = parse(&[
            "--duration-ms",
            "2000",
            "--timeout-ms",
            "100",
            "--retries",
            "2",
            "--attach-deadline-ms",
            "3000",
        ])
        .unwrap();
        let cfg = a.load_config().unwrap();
        // 3 s attach + 2 s measured + (100 + 200 + 400) ms retransmissions + 0.5 s.
        assert_eq!(run_bound(&cfg), Duration::from_millis(6200));
        let skip = parse(&["--skip-attach", "--duration-ms", "2000"]).unwrap();
        let cfg = skip.load_config().unwrap();
        assert!(
            run_bound(&cfg) < Duration::from_secs(20),
            "{:?}",
            run_bound(&cfg)
        );
    }

    #[test]
    fn the_report_is_clean_only_without_losses_and_with_a_hosting_check() {
        let a = parse(&[]).unwrap();
        let report = |lost: u64, checks: Vec<NodeCheck>| LoadgenReport {
            target: a.target,
            clean: true,
            problems: Vec::new(),
            load: LoadReport {
                sessions: 2,
                attached: 2,
                lost,
                ..LoadReport::default()
            },
            checks,
            elapsed_ms: 0,
            config: ReportConfig {
                sessions: 2,
                rate: 1.0,
                duration_ms: 1,
                zipf: 1.1,
                seed: 1,
                imsi_base: 1,
                timeout_ms: 1,
                retries: 1,
                attach_deadline_ms: 1,
                skip_attach: false,
                instance: "mme-1".into(),
                max_lost: None,
            },
        };
        let check = |hosted: bool, mismatches: u64| NodeCheck {
            node: a.target,
            node_name: None,
            instance: "mme-1".into(),
            hosted,
            records: 0,
            oracle: hosted.then(|| OracleReport {
                mismatches,
                ..OracleReport::default()
            }),
            error: None,
        };
        assert!(judge(report(0, vec![])).clean);
        let lost = judge(report(3, vec![]));
        assert!(!lost.clean);
        assert_eq!(lost.problems, ["3 transactions lost"]);
        assert!(judge(report(0, vec![check(false, 0), check(true, 0)])).clean);
        let bad = judge(report(0, vec![check(true, 2)]));
        assert!(!bad.clean && bad.problems[0].contains("2 state mismatches"));
        let nowhere = judge(report(0, vec![check(false, 0)]));
        assert!(!nowhere.clean && nowhere.problems[0].contains("no check node hosts mme-1"));
    }
}

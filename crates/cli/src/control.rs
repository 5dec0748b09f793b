//! `handoff controller`, `handoff migrate` and `handoff status`.

use anyhow::{bail, Context};
use clap::Args;
use handoff_controller::daemon::{Controller, ControllerConfig};
use handoff_controller::machine::{MoveFigures, Phase};
use handoff_controller::ops;
use handoff_state::CopyPlan;
use handoff_wire::client::ControlClient;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct ControllerArgs {
    /// A TOML file with the controller's settings (see `docs/controller.example.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Print one JSON line with the bound address on stdout once serving.
    #[arg(long)]
    pub ready: bool,
}

pub async fn controller(a: ControllerArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("cannot read {}", a.config.display()))?;
    let mut cfg: ControllerConfig = toml::from_str(&text)
        .with_context(|| format!("invalid controller config {}", a.config.display()))?;
    if let Ok(t) = std::env::var("HANDOFF_TOKEN") {
        if cfg.token.is_empty() {
            cfg.token = t;
        }
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let listen = listener.local_addr()?;
    let c = Controller::start(cfg)?;
    tracing::info!(%listen, "controller serving");
    if a.ready {
        out!(
            "{}",
            serde_json::json!({ "event": "ready", "listen": listen })
        );
    }
    let serving = tokio::spawn(handoff_controller::daemon::serve(c.clone(), listener));
    crate::daemons::shutdown_signal().await;
    c.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
    Ok(ExitCode::SUCCESS)
}

/// How to reach the controller.
#[derive(Args, Clone, Debug)]
pub struct ControllerAddr {
    /// The controller's control address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub controller: SocketAddr,
    /// Shared token.
    #[arg(
        long,
        env = "HANDOFF_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
}

impl ControllerAddr {
    async fn connect(&self) -> anyhow::Result<ControlClient> {
        ControlClient::connect(self.controller, "cli", &self.token)
            .await
            .with_context(|| format!("cannot reach the controller at {}", self.controller))
    }
}

#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    /// The instance to move, e.g. `mme-1`.
    #[arg(required_unless_present = "follow")]
    pub instance: Option<String>,
    /// The destination node's name (its address with `--source`).
    #[arg(long, required_unless_present = "follow")]
    pub to: Option<String>,
    /// Re-attach to the progress of the controller's move with this id (see `handoff
    /// status`) instead of starting one; Ctrl-C aborts it as it would have.
    #[arg(long, value_name = "ID", conflicts_with_all = ["source", "instance", "to"])]
    pub follow: Option<u64>,
    /// Source-driven: ask the source node at this address to run the move itself (no
    /// controller); `--to` is then the destination's address and `--steer` is required.
    #[arg(long, requires = "steer")]
    pub source: Option<SocketAddr>,
    /// The steer's control address (source-driven moves).
    #[arg(long)]
    pub steer: Option<SocketAddr>,
    #[command(flatten)]
    pub at: ControllerAddr,
    /// Copy order: hot-first (default), key or random.
    #[arg(long, default_value = "hot-first")]
    pub order: String,
    /// Cap on the copy's bandwidth, bytes per second.
    #[arg(long)]
    pub max_bandwidth: Option<u64>,
    /// Cap on the copy's CPU, percent of one core.
    #[arg(long)]
    pub max_cpu: Option<u32>,
    /// The copy must finish within this many milliseconds (refused up front if it cannot).
    #[arg(long)]
    pub deadline: Option<u64>,
    /// Do not duplicate creates and updates to the source (the default, abort-safe, does: a
    /// destination lost before the cutover then costs nothing; see docs/moves.md).
    #[arg(long)]
    pub no_abort_safe: bool,
    /// Lead between steering and copy start, milliseconds (at most 5000).
    #[arg(long, default_value_t = 0)]
    pub lead_ms: u64,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_order(s: &str, seed: u64) -> anyhow::Result<handoff_state::CopyOrder> {
    Ok(match s {
        "hot-first" => handoff_state::CopyOrder::HotFirst,
        "key" => handoff_state::CopyOrder::Key,
        "random" => handoff_state::CopyOrder::Random { seed },
        other => bail!("--order {other}: expected hot-first, key or random"),
    })
}

/// The exit status when the connection to the controller was lost before the move ended
/// (its outcome is not known here).
const EXIT_CONTROLLER_LOST: u8 = 3;
/// How long `handoff migrate` tries to reach a controller it lost before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(5);

pub async fn migrate(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let plan = CopyPlan {
        max_bandwidth_bps: a.max_bandwidth,
        max_cpu_percent: a.max_cpu,
        deadline_ms: a.deadline,
    };
    if let (Some(source), Some(steer)) = (a.source, a.steer) {
        return source_driven(&a, source, steer, plan).await;
    }
    let mut c = a.at.connect().await?;
    let id = match a.follow {
        Some(id) => id,
        None => {
            let (Some(instance), Some(to)) = (a.instance.clone(), a.to.clone()) else {
                bail!("an instance and --to are required (or --follow ID)");
            };
            c.call(&ops::Migrate {
                instance,
                to,
                order: parse_order(&a.order, 1)?,
                plan,
                abort_safe: !a.no_abort_safe,
                lead_ms: a.lead_ms,
            })
            .await
            .context("the controller refused the move")?
            .id
        }
    };
    follow(&a, c, id).await
}

/// Follows the controller's move `id` to its end with a progress bar (Ctrl-C aborts it
/// before its cutover), then prints its report. A controller that goes away is looked for
/// again for a few seconds; if it stays away, what happens to the move is said and the exit
/// status is [`EXIT_CONTROLLER_LOST`].
async fn follow(a: &MigrateArgs, mut c: ControlClient, id: u64) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} move {prefix} [{bar:30}] {pos}/{len} sessions {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{id}"));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut aborted = false;
    let mut last_bytes = (0u64, std::time::Instant::now(), 0f64);
    let mut last: Option<ops::MoveStatus> = None;
    let status = loop {
        let s = match c.call(&ops::GetMoveStatus { id }).await {
            Ok(s) => s,
            Err(e) if e.is_refusal() => {
                bar.finish_and_clear();
                return Err(e).context(format!("the controller cannot report move {id}"));
            }
            Err(e) => {
                bar.suspend(|| {
                    eprintln!(
                        "lost the connection to the controller at {} ({e}); looking for it for {} s",
                        a.at.controller,
                        RECONNECT_FOR.as_secs()
                    )
                });
                match reconnect(&a.at).await {
                    Some(again) => {
                        c = again;
                        say(
                            &bar,
                            format!("reconnected to the controller; following move {id} again"),
                        );
                        continue;
                    }
                    None => {
                        bar.finish_and_clear();
                        eprintln!(
                            "{}",
                            controller_lost(a.at.controller, id, last.as_ref(), &e.to_string())
                        );
                        return Ok(ExitCode::from(EXIT_CONTROLLER_LOST));
                    }
                }
            }
        };
        if last.is_none() {
            bar.set_prefix(format!("{id} {} {} → {}", s.instance, s.from, s.to));
        }
        last = Some(s.clone());
        let p = s.progress.clone().unwrap_or_default();
        let (total, records, bytes) = (p.sessions_at_start, p.records, p.bytes);
        let dt = last_bytes.1.elapsed().as_secs_f64();
        if dt >= 0.5 {
            last_bytes.2 = bytes.saturating_sub(last_bytes.0) as f64 / dt;
            last_bytes = (bytes, std::time::Instant::now(), last_bytes.2);
        }
        bar.set_length(total.max(records));
        bar.set_position(records);
        bar.set_message(format!(
            "{} · {:.1} MB · {:.1} MB/s · buffered {}",
            phase_name(s.phase),
            bytes as f64 / 1e6,
            last_bytes.2 / 1e6,
            p.buffered
        ));
        bar.tick();
        if s.ended || s.phase.is_parked() {
            // A parked move (offline: its destination was lost after the cutover) waits
            // for an operator; its report says what to do.
            break s;
        }
        tokio::select! {
            _ = &mut ctrl_c, if !aborted => {
                aborted = true;
                say(&bar, "Ctrl-C: aborting the move (it completes if already cut over)");
                let _ = c.call(&ops::Abort { id }).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    bar.finish_and_clear();
    let view = MoveView {
        id: status.id,
        from: status.from.clone(),
        to: status.to.clone(),
        phase: phase_name(status.phase),
        reason: status.reason.clone(),
        figures: status.figures.clone(),
    };
    print_move(a, &status.instance, &serde_json::to_value(&status)?, &view)
}

/// Prints a line on stderr above the progress bar (shown even when the bar is hidden because
/// stderr is not a terminal).
fn say(bar: &indicatif::ProgressBar, line: impl AsRef<str>) {
    bar.suspend(|| eprintln!("{}", line.as_ref()));
}

/// Connects to the controller again, trying for [`RECONNECT_FOR`].
async fn reconnect(at: &ControllerAddr) -> Option<ControlClient> {
    let until = std::time::Instant::now() + RECONNECT_FOR;
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(c) = at.connect().await {
            return Some(c);
        }
    }
    None
}

/// What `handoff migrate` says when the controller is gone: where the move was, what a
/// restarted controller does with it (`MoveMachine::recover`), and how to follow it.
pub fn controller_lost(
    controller: SocketAddr,
    id: u64,
    last: Option<&ops::MoveStatus>,
    error: &str,
) -> String {
    let (what, fate) = match last {
        None => (
            format!("move {id}"),
            "The restarted controller aborts it if it had not cut over (the source keeps \
             serving) and finishes it if it had."
                .to_owned(),
        ),
        Some(s) => {
            let what = format!(
                "move {id} ({} {} → {}, phase {})",
                s.instance,
                s.from,
                s.to,
                phase_name(s.phase)
            );
            let fate = match s.phase {
                p if p.is_terminal() => format!("The move had already ended ({}).", phase_name(p)),
                p if p.past_cutover() => format!(
                    "The route had flipped: the restarted controller finishes the move ({} owns \
                     {} now).",
                    s.to, s.instance
                ),
                Phase::Cutover => format!(
                    "It was cutting over: the restarted controller asks the steer again and \
                     finishes the move if the route flipped, or aborts it (the source {} serves \
                     {}) if it did not.",
                    s.from, s.instance
                ),
                p if p.is_route_recovery() => "The steer had restarted: the restarted controller \
                     installs the route again, then finishes or aborts the move as it would have."
                    .to_owned(),
                Phase::Prepare | Phase::Steer | Phase::Copy | Phase::Verify => format!(
                    "It had not cut over: the restarted controller aborts it (the source {} \
                     keeps serving {}; sessions created on {} come back to it).",
                    s.from, s.instance, s.to
                ),
                _ => "It was aborting: the restarted controller finishes the abort (the source \
                     serves the instance)."
                    .to_owned(),
            };
            (what, fate)
        }
    };
    format!(
        "error: lost the connection to the controller at {controller} ({error}) before {what} \
         ended.\n\
         Nothing is lost with it: the steer keeps routing every signal, and the move is kept in \
         the controller's store; the controller takes it up again when it restarts. {fate}\n\
         Follow it with `handoff migrate --follow {id} --controller {controller}` or \
         `handoff status --controller {controller}`."
    )
}

/// A move phase's name (see `docs/wire.md`).
fn phase_name(p: Phase) -> String {
    match serde_json::to_value(p) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{p:?}"),
    }
}

/// What the text report shows of a move, from either variant's typed answer.
struct MoveView {
    id: u64,
    from: String,
    to: String,
    phase: String,
    reason: Option<String>,
    figures: MoveFigures,
}

/// The source-driven variant: the source node runs the move; the CLI only waits and watches
/// the destination fill up.
async fn source_driven(
    a: &MigrateArgs,
    source: SocketAddr,
    steer: SocketAddr,
    plan: CopyPlan,
) -> anyhow::Result<ExitCode> {
    let (Some(instance), Some(to)) = (a.instance.clone(), a.to.clone()) else {
        bail!("an instance and --to are required");
    };
    let destination: SocketAddr = to
        .parse()
        .with_context(|| format!("--to {to}: with --source it is the destination's address"))?;
    let mut c = ControlClient::connect(source, "cli", &a.at.token)
        .await
        .with_context(|| format!("cannot reach the source node at {source}"))?;
    c.set_reply_timeout(Duration::from_secs(3_600));
    let req = handoff_node::ops::Migrate {
        instance: instance.clone(),
        function: String::new(),
        destination,
        steer,
        order: parse_order(&a.order, 1)?,
        plan,
        abort_safe: !a.no_abort_safe,
        lead_ms: a.lead_ms,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_prefix(format!(
        "{instance} {source} → {destination} (source-driven)"
    ));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} move {prefix}: {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let work = c.call(&req);
    tokio::pin!(work);
    let watch = async {
        let Ok(mut d) = ControlClient::connect(destination, "cli", &a.at.token).await else {
            return std::future::pending::<()>().await;
        };
        loop {
            let s = d
                .call(&handoff_node::ops::ShadowStats {
                    instance: instance.clone(),
                })
                .await;
            if let Ok(Some(s)) = s {
                bar.set_message(format!(
                    "{} sessions, {:.1} MB received, {} awaited, buffered {}",
                    s.records,
                    s.bytes as f64 / 1e6,
                    s.awaiting,
                    s.buffered
                ));
            }
            bar.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::pin!(watch);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut aborting = false;
    let status = loop {
        tokio::select! {
            r = &mut work => break r.context("the source node refused the move")?,
            _ = &mut watch => unreachable!("the watcher never ends"),
            _ = &mut ctrl_c, if !aborting => {
                aborting = true;
                say(&bar, "Ctrl-C: aborting the move (it completes if already cut over)");
                // On a connection of its own: the first one waits for the move's report.
                let abort = handoff_node::ops::AbortMigrate { instance: instance.clone() };
                match ControlClient::connect(source, "cli", &a.at.token).await {
                    Ok(mut s) => {
                        if let Err(e) = s.call(&abort).await {
                            say(&bar, format!("the source node refused the abort: {e}"));
                        }
                    }
                    Err(e) => say(&bar, format!("cannot reach the source node to abort: {e}")),
                }
            }
        }
    };
    bar.finish_and_clear();
    // A source-driven move reports itself to the controller when one answers: asking for
    // its status makes it reconcile its view with the steer (best effort, bounded).
    let reported = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = a.at.connect().await?;
        c.call(&ops::Status {}).await?;
        anyhow::Ok(())
    })
    .await;
    if !matches!(reported, Ok(Ok(()))) {
        tracing::debug!("no controller to report the source-driven move to");
    }
    let view = MoveView {
        id: status.id,
        from: status.from.to_string(),
        to: status.to.to_string(),
        phase: status.phase.clone(),
        reason: status.reason.clone(),
        figures: serde_json::from_value(status.figures.clone())
            .context("the source node's report has bad figures")?,
    };
    print_move(a, &instance, &serde_json::to_value(&status)?, &view)
}

fn print_move(
    a: &MigrateArgs,
    instance: &str,
    json: &serde_json::Value,
    m: &MoveView,
) -> anyhow::Result<ExitCode> {
    if a.json {
        out!("{}", serde_json::to_string_pretty(json)?);
    } else {
        let f = &m.figures;
        out!(
            "move {}: {} {} → {}: {}{}",
            m.id,
            instance,
            m.from,
            m.to,
            m.phase,
            m.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        out!(
            "  copied {} of {} sessions ({} tombstones, {:.1} MB), digest match {}, buffered peak {}",
            f.copy.records_copied,
            f.copy.sessions_at_start,
            f.copy.tombstones,
            f.copy.bytes_copied as f64 / 1e6,
            f.copy.digest_match,
            f.shadow.buffered_peak
        );
        for (i, r) in f.copy.resends.iter().enumerate() {
            out!(
                "  re-send {}: {} differing buckets, {} records ({} owned by the destination, not re-sent)",
                i + 1,
                r.buckets.len(),
                r.records,
                r.excluded
            );
        }
        out!(
            "  seqs: first under move mode {}, cutover {}; phases (ms) {}",
            f.first_seq,
            f.cutover_seq,
            serde_json::to_string(&f.phases_ms)?
        );
        if f.created_during_move > 0 {
            out!(
                "  abort: {} sessions created during the move, {} lost",
                f.created_during_move,
                f.lost_on_abort
            );
        }
        if f.lost_sessions > 0 || f.manifest_lost {
            out!(
                "  rolled forward: {} sessions lost with the source{} (their keys: --json, figures.lost_keys)",
                f.lost_sessions,
                if f.manifest_lost {
                    ", and every session it held before the move (its manifest never arrived)"
                } else {
                    ""
                }
            );
        }
        if m.phase == "offline" {
            out!("  OFFLINE: `handoff recover {instance}` serves it from the source again");
        }
        if f.given_up_seqs > 0 {
            out!(
                "  recovered on the source: {} seqs stamped since the cutover were given up",
                f.given_up_seqs
            );
        }
    }
    Ok(if m.phase == "done" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub at: ControllerAddr,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut c = a.at.connect().await?;
    let s = c.call(&ops::Status {}).await?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!("nodes");
    for n in &s.nodes {
        let instances: Vec<String> = match &n.state {
            ops::NodeState::Up { instances, .. } => instances
                .iter()
                .map(|i| format!("{} ({} sessions)", i.instance, i.sessions))
                .collect(),
            ops::NodeState::Down { .. } => Vec::new(),
        };
        out!(
            "  {:<10} {:<21} {} {}",
            n.name,
            n.addr.to_string(),
            if n.up { "up  " } else { "DOWN" },
            instances.join(", ")
        );
    }
    out!("steers");
    for st in &s.steers {
        out!(
            "  {:<10} {:<21} {}",
            st.name,
            st.control.to_string(),
            if st.up { "up" } else { "DOWN" }
        );
        if let ops::SteerState::Up { services } = &st.state {
            for svc in services {
                let r = &svc.route;
                out!(
                    "    {} {} → {} [{}] last seq {}",
                    r.instance,
                    svc.listen,
                    r.node,
                    serde_json::to_value(r.phase)?.as_str().unwrap_or("?"),
                    r.last_seq
                );
            }
        }
    }
    out!("instances");
    for i in &s.instances {
        out!(
            "  {:<10} {:<6} on {} (route {} → {}, incarnation {})",
            i.name,
            i.function,
            i.owner.as_deref().unwrap_or("NO NODE"),
            i.route.as_deref().unwrap_or("?"),
            i.routed_to.as_deref().unwrap_or("?"),
            i.incarnation
                .map_or_else(|| "?".into(), |n| format!("{n:016x}"))
        );
        if let Some(a) = &i.alarm {
            out!("    ALARM: {a}");
        }
        for d in &i.disagreements {
            out!("    disagreement: {d}");
        }
    }
    out!("recent moves");
    for m in &s.moves {
        out!(
            "  #{} {} {} → {}: {}{}",
            m.id,
            m.instance,
            m.from,
            m.to,
            phase_name(m.phase),
            m.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_controller_config_parses_and_is_consistent() {
        let text = include_str!("../../../docs/controller.example.toml");
        let cfg: ControllerConfig = toml::from_str(text).expect("example config parses");
        cfg.validate()
            .expect("every name an instance uses is defined");
        assert_eq!(cfg.instances[0].name, "mme-1");
        let mut broken = cfg.clone();
        broken.instances[0].node = "node-z".into();
        assert!(broken.validate().is_err());
    }
}

#[derive(Args, Clone, Debug)]
pub struct RecoverArgs {
    /// The instance, e.g. `mme-1`.
    pub instance: String,
    /// Serve from the new (empty, or partial) incarnation on the node the steer routes to,
    /// accepting that every session it lacks is lost.
    #[arg(long)]
    pub accept_empty: bool,
    #[command(flatten)]
    pub at: ControllerAddr,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `handoff recover`: brings an instance back after a crash (see `docs/moves.md`).
pub async fn recover(a: RecoverArgs) -> anyhow::Result<ExitCode> {
    let mut c = a.at.connect().await?;
    let r = c
        .call(&ops::Recover {
            instance: a.instance.clone(),
            accept_empty: a.accept_empty,
        })
        .await
        .context("the controller refused the recovery")?;
    if !a.json {
        out!("{}", r.message);
    }
    let Some(id) = r.move_id else {
        if a.json {
            out!("{}", serde_json::to_string_pretty(&r)?);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.call(&ops::GetMoveStatus { id }).await?;
        if st.ended || std::time::Instant::now() > deadline {
            if a.json {
                out!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                out!(
                    "move {id}: {}{}",
                    phase_name(st.phase),
                    st.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                );
            }
            let ok = st.phase == handoff_controller::machine::Phase::Recovered;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

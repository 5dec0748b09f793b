//! `handoff`: one binary for every role. Thin glue over the library crates.

/// Prints a line on stdout like `println!`, but a closed stdout (`handoff demo | head`) is not
/// a panic: the report is simply cut short.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

mod bench;
mod bench_move;
mod control;
mod daemons;
mod demo;
mod loadgen;
mod report;

use clap::{Parser, Subcommand};
use handoff_function::runtime::Catalog;

/// handoff: live migration and hot standby for stateful network functions.
#[derive(Parser)]
#[command(name = "handoff", version, about)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `handoff_steer=debug`.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node agent that hosts instances.
    Node(daemons::NodeArgs),
    /// Run a steer in front of instances.
    Steer(daemons::SteerArgs),
    /// Run the controller: the cluster view and the driver of moves.
    Controller(control::ControllerArgs),
    /// Move an instance live to another node (through the controller), with progress.
    Migrate(control::MigrateArgs),
    /// Show nodes, steers, instances and recent moves (from the controller).
    Status(control::StatusArgs),
    /// Bring an instance back after a crash (an offline move, or a node that lost it).
    Recover(control::RecoverArgs),
    /// Start a steer, a node with `mme-1` and the load generator on loopback; report.
    Demo(demo::DemoArgs),
    /// Drive a service address with simulated UEs and report (JSON with --json), optionally
    /// checking a node's state with the oracle.
    Loadgen(loadgen::LoadgenArgs),
    /// Benchmarks that run contenders side by side and print ratios.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

/// Every function this binary can host or classify.
pub(crate) fn catalog() -> Catalog {
    Catalog::new().with(handoff_vmme::Vmme::default())
}

/// How the demo and the benchmarks start `handoff node` processes: this executable, with the
/// log filter in `HANDOFF_NODE_LOG` (warnings only by default).
pub(crate) fn node_launcher() -> anyhow::Result<handoff_bench::NodeLauncher> {
    use anyhow::Context as _;
    Ok(handoff_bench::NodeLauncher {
        exe: std::env::current_exe().context("cannot find the handoff executable")?,
        log: std::env::var("HANDOFF_NODE_LOG").unwrap_or_else(|_| "warn".into()),
    })
}

fn init_logging(filter: Option<&str>, default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.cmd {
        Cmd::Node(_) | Cmd::Steer(_) | Cmd::Controller(_) => "info",
        Cmd::Demo(_)
        | Cmd::Loadgen(_)
        | Cmd::Bench(_)
        | Cmd::Migrate(_)
        | Cmd::Status(_)
        | Cmd::Recover(_) => "warn",
    };
    init_logging(cli.log.as_deref(), default_level, cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Node(a) => daemons::node(a).await,
            Cmd::Steer(a) => daemons::steer(a).await,
            Cmd::Controller(a) => control::controller(a).await,
            Cmd::Migrate(a) => control::migrate(a).await,
            Cmd::Status(a) => control::status(a).await,
            Cmd::Recover(a) => control::recover(a).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Loadgen(a) => loadgen::run(a).await,
            Cmd::Bench(b) => bench::run(b).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

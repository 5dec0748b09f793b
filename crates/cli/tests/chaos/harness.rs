//! A cluster of real `handoff` processes on loopback for chaos tests: two nodes, a steer with
//! a control listener and a state directory, and a controller with a generated config, all
//! sharing one token. Any of them can be killed with SIGKILL and restarted with the same
//! arguments and addresses; `handoff loadgen` and `handoff migrate` run as background
//! processes whose reports the tests read.
//!
//! Rules the harness keeps so a failing test says why:
//! - every wait is a poll with a deadline, and a missed deadline panics naming what it waited
//!   for;
//! - every daemon's stderr goes to `<name>.log` in the cluster's temp dir (kept across
//!   restarts, a marker line per start); when a test panics, the cluster's drop prints the
//!   tail of every log and keeps the directory;
//! - every child process is killed when its handle drops, panics included;
//! - only 127.0.0.1 is used; ports are picked by the OS at first start (`127.0.0.1:0` and the
//!   daemons' `--ready` line) and reused on restart.

use handoff_controller::ops;
use handoff_wire::client::ControlClient;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The token every process of a cluster shares.
pub const TOKEN: &str = "chaos-token";
/// The instance the cluster hosts.
pub const INSTANCE: &str = "mme-1";
/// How often waits poll.
const POLL: Duration = Duration::from_millis(10);
/// How long a daemon may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of each log shown when a test fails.
const TAIL_LINES: usize = 40;

/// The `handoff` binary under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_handoff")
}

/// How many rounds each case runs: `HANDOFF_CHAOS_ROUNDS` (soak mode), 1 by default.
pub fn rounds() -> u64 {
    std::env::var("HANDOFF_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The seed of round `round` of a case: `HANDOFF_CHAOS_SEED` (to replay one) or a fixed base,
/// plus the round.
pub fn seed(round: u64) -> u64 {
    let base = std::env::var("HANDOFF_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    base + round
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `timeout`; `None` after that.
pub fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL, timeout, f)
}

/// [`poll`] at another interval.
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The last `n` lines of a file (or why it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A temp directory for one cluster; removed on drop unless the thread is panicking.
pub struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "handoff-chaos-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster's temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A long-running `handoff` process (node, steer, controller) that can be killed and
/// restarted with the same arguments. Killed on drop.
pub struct Daemon {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    dir: PathBuf,
    starts: u32,
    /// The last ready line the daemon printed.
    pub ready: serde_json::Value,
}

impl Daemon {
    /// Starts `handoff <args> --ready` and waits for its ready line.
    pub fn start(dir: &Path, name: &str, args: Vec<String>) -> Self {
        let mut d = Self {
            name: name.to_owned(),
            args,
            child: None,
            dir: dir.to_owned(),
            starts: 0,
            ready: serde_json::Value::Null,
        };
        d.spawn();
        d
    }

    /// Its stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the daemon's log");
        let _ = writeln!(
            log,
            "----- harness: start #{} of {}: handoff {} -----",
            self.starts,
            self.name,
            self.args.join(" ")
        );
        let stdout_path = self
            .dir
            .join(format!("{}.{}.stdout", self.name, self.starts));
        let stdout = File::create(&stdout_path).expect("create the daemon's stdout file");
        let child = Command::new(exe())
            .args(&self.args)
            .arg("--ready")
            .env("HANDOFF_TOKEN", TOKEN)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
        let line = poll(READY_TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited ({status}) before it was ready; its log:\n{}",
                    self.name,
                    tail(&self.log_path(), TAIL_LINES)
                );
            }
            let text = std::fs::read_to_string(&stdout_path).ok()?;
            text.split_once('\n').map(|(line, _)| line.to_owned())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} not ready within {READY_TIMEOUT:?}; its log:\n{}",
                self.name,
                tail(&self.log_path(), TAIL_LINES)
            )
        });
        self.ready = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} said {line:?} when ready: {e}", self.name));
    }

    /// An address from the ready line, at a JSON pointer (e.g. `/listen`).
    pub fn ready_addr(&self, pointer: &str) -> SocketAddr {
        self.ready
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: no address at {pointer} in {}", self.name, self.ready))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let _ = child.kill();
        let _ = child.wait();
        let _ = OpenOptions::new()
            .append(true)
            .open(self.log_path())
            .and_then(|mut f| writeln!(f, "----- harness: SIGKILL {} -----", self.name));
    }

    /// Freezes the process (SIGSTOP): it holds its sockets but does nothing.
    pub fn pause(&mut self) {
        self.signal("STOP");
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("CONT");
    }

    fn signal(&mut self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id();
        let ok = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid} ({}) failed", self.name);
        let _ = OpenOptions::new()
            .append(true)
            .open(self.log_path())
            .and_then(|mut f| writeln!(f, "----- harness: SIG{sig} {} -----", self.name));
    }

    /// Starts it again with the same arguments (and so the same addresses).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Replaces an argument (e.g. a port-0 address by the one bound) for later restarts.
    pub fn replace_arg(&mut self, from: &str, to: &str) {
        for a in &mut self.args {
            if a == from {
                *a = to.to_owned();
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `handoff` command running in the background (loadgen, migrate). Killed on drop.
pub struct Background {
    pub what: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Background {
    /// Starts `handoff <args>` with the cluster token; stdout and stderr go to files in `dir`.
    pub fn spawn(dir: &Path, label: &str, args: &[String]) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let stdout = dir.join(format!("{label}-{n}.stdout"));
        let stderr = dir.join(format!("{label}-{n}.log"));
        let child = Command::new(exe())
            .args(args)
            .env("HANDOFF_TOKEN", TOKEN)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start handoff {}: {e}", args.join(" ")));
        Self {
            what: format!("handoff {}", args.join(" ")),
            child: Some(child),
            stdout,
            stderr,
            status: None,
        }
    }

    /// Starts `handoff <args> --controller <addr>` against a cluster's controller.
    pub fn spawn_in(c: &Cluster, args: &[&str]) -> Self {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        all.extend(["--controller".to_owned(), c.controller_addr.to_string()]);
        Self::spawn(c.dir(), args.first().copied().unwrap_or("cli"), &all)
    }

    /// Waits for the process to exit (at most `timeout`, then it is killed and this panics).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let child = self.child.as_mut().expect("a child until it exited");
        let status = poll(timeout, || child.try_wait().ok().flatten());
        match status {
            Some(s) => {
                self.status = Some(s);
                self.child = None;
                s
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not end within {timeout:?}; its stderr:\n{}",
                    self.what,
                    self.stderr_tail()
                );
            }
        }
    }

    /// Whether it already exited.
    pub fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(Ok(Some(s))) = self.child.as_mut().map(Child::try_wait) {
            self.status = Some(s);
            self.child = None;
        }
        self.status.is_some()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr, TAIL_LINES)
    }

    /// Its stdout as JSON (after it exited).
    pub fn json(&self) -> serde_json::Value {
        let out = self.stdout();
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "{} printed no JSON ({e}): {out}\nstderr:\n{}",
                self.what,
                self.stderr_tail()
            )
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A load to run with `handoff loadgen`.
#[derive(Clone, Debug)]
pub struct Load {
    pub sessions: u32,
    pub rate: f64,
    pub duration_ms: u64,
    pub seed: u64,
    /// First IMSI (`None`: loadgen's default).
    pub imsi_base: Option<u64>,
    /// The nodes the run's oracle checks at its end (empty: both).
    pub check: Vec<SocketAddr>,
}

/// A `handoff loadgen` running in the background.
pub struct LoadRun {
    pub process: Background,
    report: PathBuf,
}

impl LoadRun {
    /// Waits until the load's measured phase began (its JSON log says so).
    pub fn wait_measuring(&mut self, timeout: Duration) {
        let ok = poll(timeout, || {
            let log = self.process.stderr();
            let measuring = log.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v.pointer("/fields/message").and_then(|m| m.as_str()) == Some("load phase")
                        && v.pointer("/fields/phase").and_then(|m| m.as_str()) == Some("measure")
                })
            });
            if measuring {
                return Some(());
            }
            if self.process.exited() {
                panic!(
                    "loadgen ended before its measured phase; its stderr:\n{}\nstdout:\n{}",
                    self.process.stderr_tail(),
                    self.process.stdout()
                );
            }
            None
        });
        ok.unwrap_or_else(|| {
            panic!(
                "loadgen not in its measured phase within {timeout:?}; its stderr:\n{}",
                self.process.stderr_tail()
            )
        });
    }

    /// Waits for the run to end and returns its report (the `--report` file).
    pub fn finish(&mut self, timeout: Duration) -> LoadReport {
        let status = self.process.wait(timeout);
        let text = std::fs::read_to_string(&self.report).unwrap_or_else(|e| {
            panic!(
                "loadgen wrote no report ({e}), exit {status}; stderr:\n{}",
                self.process.stderr_tail()
            )
        });
        let json: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
        LoadReport { status, json }
    }
}

/// A finished loadgen run: its exit status and JSON report.
pub struct LoadReport {
    pub status: ExitStatus,
    pub json: serde_json::Value,
}

impl LoadReport {
    /// A counter of the report (top-level fields: `lost`, `answered`, …, or a pointer).
    pub fn n(&self, field: &str) -> u64 {
        let pointer = if field.starts_with('/') {
            field.to_owned()
        } else {
            format!("/{field}")
        };
        self.json
            .pointer(&pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("no counter {field} in the loadgen report: {}", self.json))
    }

    /// The client-side counters and each check's oracle figures, on one line each.
    pub fn summary(&self) -> String {
        let j = &self.json;
        let mut s = format!(
            "loadgen ({}): sent {} answered {} lost {} duplicated {} reordered {} wrong {} stray {} retransmissions {}",
            self.status,
            j["signals_sent"], j["answered"], j["lost"], j["duplicated"], j["reordered"],
            j["wrong_answers"], j["stray"], j["retransmissions"]
        );
        for c in j["checks"].as_array().into_iter().flatten() {
            let _ = write!(
                s,
                "\n  check {} ({}): hosted {} records {} oracle {} error {}",
                c["node"], c["node_name"], c["hosted"], c["records"], c["oracle"], c["error"]
            );
        }
        s
    }

    /// The check of the node at `addr`.
    pub fn check(&self, addr: SocketAddr) -> &serde_json::Value {
        self.json["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["node"] == addr.to_string()))
            .unwrap_or_else(|| panic!("no check of {addr} in the loadgen report: {}", self.json))
    }

    /// Asserts that clients saw every transaction answered exactly once and correctly.
    pub fn assert_no_client_visible_fault(&self, context: &str) {
        for f in ["lost", "duplicated", "reordered", "wrong_answers", "stray"] {
            assert_eq!(
                self.n(f),
                0,
                "{context}: loadgen counted {f}; report: {:#}",
                self.json
            );
        }
        assert_eq!(
            self.n("answered"),
            self.n("signals_sent"),
            "{context}: {:#}",
            self.json
        );
        assert!(
            self.status.success(),
            "{context}: loadgen exit {}",
            self.status
        );
    }

    /// Asserts that the oracle checked the node at `addr`, found the instance there, every
    /// UE's state and every answer matches the reference, and the node holds nothing else.
    pub fn assert_oracle_clean(&self, addr: SocketAddr, sessions: u32, context: &str) {
        self.assert_oracle_matches(addr, sessions, context);
        let c = self.check(addr);
        assert_eq!(
            c["oracle"]["unknown_records"].as_u64(),
            Some(0),
            "{context}: {c:#}"
        );
    }

    /// As [`LoadReport::assert_oracle_clean`], the node may also hold other UEs' records.
    pub fn assert_oracle_matches(&self, addr: SocketAddr, sessions: u32, context: &str) {
        let c = self.check(addr);
        assert_eq!(
            c["hosted"], true,
            "{context}: {addr} does not host the instance: {c:#}"
        );
        let o = &c["oracle"];
        let n = |f: &str| o[f].as_u64().unwrap_or(u64::MAX);
        assert_eq!(n("checked"), u64::from(sessions), "{context}: {c:#}");
        assert_eq!(n("unverifiable"), 0, "{context}: {c:#}");
        assert_eq!(n("mismatches"), 0, "{context}: {c:#}");
        assert_eq!(n("answer_mismatches"), 0, "{context}: {c:#}");
    }

    /// Asserts that the node at `addr` does not host the instance (answered, and said so).
    pub fn assert_not_hosted(&self, addr: SocketAddr, context: &str) {
        let c = self.check(addr);
        assert!(
            c["hosted"] == false && c["error"].is_null(),
            "{context}: {addr} still hosts the instance, or could not be asked: {c:#}"
        );
    }
}

/// Which daemon of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    NodeA,
    NodeB,
    Steer,
    Controller,
}

/// Two nodes, a steer and a controller as processes on loopback.
pub struct Cluster {
    pub node_a: Daemon,
    pub node_b: Daemon,
    pub steer: Daemon,
    pub controller: Daemon,
    /// node-a's address (it hosts `mme-1` at start).
    pub a: SocketAddr,
    /// node-b's address (empty at start).
    pub b: SocketAddr,
    /// The steer's service address for `mme-1`.
    pub service: SocketAddr,
    /// The steer's control address.
    pub steer_control: SocketAddr,
    /// The controller's address.
    pub controller_addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    // Last: the daemons are killed before their directory goes.
    dir: TempDir,
}

impl Cluster {
    /// Starts node-a (hosting `mme-1`), node-b, the steer (routing `mme-1` to node-a, with a
    /// state dir) and the controller, and waits until the steer's link to node-a is up.
    pub fn start(label: &str) -> Self {
        let dir = TempDir::new(label);
        let p = dir.path();
        let node = |name: &str, instance: bool| {
            let mut args: Vec<String> = ["--log", "info", "node", "--name", name]
                .into_iter()
                .map(String::from)
                .collect();
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
            if instance {
                args.extend(["--instance".into(), format!("{INSTANCE}:vmme")]);
            }
            Daemon::start(p, name, args)
        };
        let mut node_a = node("node-a", true);
        let mut node_b = node("node-b", false);
        let a = node_a.ready_addr("/listen");
        let b = node_b.ready_addr("/listen");
        node_a.replace_arg("127.0.0.1:0", &a.to_string());
        node_b.replace_arg("127.0.0.1:0", &b.to_string());
        let state_dir = p.join("steer-state");
        let mut steer = Daemon::start(
            p,
            "steer",
            vec![
                "--log".into(),
                "info".into(),
                "steer".into(),
                "--service".into(),
                format!("{INSTANCE}:vmme@127.0.0.1:0={a}"),
                "--control".into(),
                "127.0.0.1:0".into(),
                "--state-dir".into(),
                state_dir.display().to_string(),
            ],
        );
        let service = steer.ready_addr(&format!("/services/{INSTANCE}"));
        let steer_control = steer.ready_addr("/control");
        steer.replace_arg(
            &format!("{INSTANCE}:vmme@127.0.0.1:0={a}"),
            &format!("{INSTANCE}:vmme@{service}={a}"),
        );
        steer.replace_arg("127.0.0.1:0", &steer_control.to_string());
        let config = p.join("controller.toml");
        let write_config = |listen: &str| {
            let text = format!(
                r#"listen = "{listen}"
store = "{store}"

[[nodes]]
name = "node-a"
addr = "{a}"

[[nodes]]
name = "node-b"
addr = "{b}"

[[steers]]
name = "steer-1"
control = "{steer_control}"

[[instances]]
name = "{INSTANCE}"
function = "vmme"
node = "node-a"
steer = "steer-1"
"#,
                store = p.join("controller.redb").display(),
            );
            std::fs::write(&config, text).expect("write the controller's config");
        };
        write_config("127.0.0.1:0");
        let controller = Daemon::start(
            p,
            "controller",
            vec![
                "--log".into(),
                "info".into(),
                "controller".into(),
                "--config".into(),
                config.display().to_string(),
            ],
        );
        let controller_addr = controller.ready_addr("/listen");
        // A restarted controller listens where clients know it.
        write_config(&controller_addr.to_string());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the harness's control calls");
        let c = Self {
            node_a,
            node_b,
            steer,
            controller,
            a,
            b,
            service,
            steer_control,
            controller_addr,
            rt,
            dir,
        };
        c.wait_steer_link(Duration::from_secs(10));
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn daemon(&mut self, role: Role) -> &mut Daemon {
        match role {
            Role::NodeA => &mut self.node_a,
            Role::NodeB => &mut self.node_b,
            Role::Steer => &mut self.steer,
            Role::Controller => &mut self.controller,
        }
    }

    /// SIGKILLs a daemon.
    pub fn kill(&mut self, role: Role) {
        self.daemon(role).kill();
    }

    /// Restarts a killed daemon with its arguments. A node comes back with the instances it
    /// was started with; use [`Cluster::restart_node`] to choose.
    pub fn restart(&mut self, role: Role) {
        self.daemon(role).restart();
    }

    /// Restarts a killed node with (`true`: a fresh, empty `mme-1`) or without its instance.
    pub fn restart_node(&mut self, role: Role, with_instance: bool) {
        let d = self.daemon(role);
        let spec = format!("{INSTANCE}:vmme");
        let has = d.args.iter().any(|a| a == &spec);
        if has && !with_instance {
            let i = d.args.iter().position(|a| a == &spec).expect("present");
            d.args.drain(i - 1..=i);
        } else if !has && with_instance {
            d.args.extend(["--instance".into(), spec]);
        }
        d.restart();
    }

    /// Runs a future on the harness's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A typed call to the controller (one connection per call: it may have restarted).
    pub fn controller_call<O: handoff_wire::rpc::Operation>(
        &self,
        req: &O,
    ) -> Result<O::Reply, String> {
        self.block_on(async {
            let mut c = ControlClient::connect(self.controller_addr, "chaos", TOKEN)
                .await
                .map_err(|e| e.to_string())?;
            c.set_reply_timeout(Duration::from_secs(5));
            c.call(req).await.map_err(|e| e.to_string())
        })
    }

    /// A typed call to the steer's control listener.
    pub fn steer_call<O: handoff_wire::rpc::Operation>(&self, req: &O) -> Result<O::Reply, String> {
        self.block_on(async {
            let mut c = ControlClient::connect(self.steer_control, "chaos", TOKEN)
                .await
                .map_err(|e| e.to_string())?;
            c.set_reply_timeout(Duration::from_secs(5));
            c.call(req).await.map_err(|e| e.to_string())
        })
    }

    /// The steer's route for `mme-1`.
    pub fn steer_route(&self) -> Result<handoff_steer::RouteStatus, String> {
        let s = self.steer_call(&handoff_steer::control::ops::Status {})?;
        s.services
            .into_iter()
            .map(|s| s.route)
            .find(|r| r.instance == INSTANCE)
            .ok_or_else(|| format!("the steer has no route for {INSTANCE}"))
    }

    /// Waits until the steer routes `mme-1` to a node whose link is up.
    pub fn wait_steer_link(&self, timeout: Duration) -> handoff_steer::RouteStatus {
        poll(timeout, || self.steer_route().ok().filter(|r| r.node_up)).unwrap_or_else(|| {
            self.fail(&format!(
                "the steer's link for {INSTANCE} not up within {timeout:?} (route: {:?})",
                self.steer_route()
            ))
        })
    }

    /// What the node at `node` says of `mme-1` (`None`: not hosted).
    pub fn instance_info(
        &self,
        node: SocketAddr,
    ) -> Result<Option<handoff_node::InstanceInfo>, String> {
        let stats = self.block_on(async {
            let mut c = ControlClient::connect(node, "chaos", TOKEN)
                .await
                .map_err(|e| e.to_string())?;
            c.set_reply_timeout(Duration::from_secs(5));
            c.call(&handoff_node::ops::Stats {})
                .await
                .map_err(|e| e.to_string())
        })?;
        Ok(stats.instances.into_iter().find(|i| i.instance == INSTANCE))
    }

    /// Whether the node at `node` hosts `mme-1` (asked of the node itself).
    pub fn hosts(&self, node: SocketAddr) -> Result<bool, String> {
        Ok(self.instance_info(node)?.is_some())
    }

    /// Starts `handoff loadgen` against the service, checking `load.check` (both nodes by
    /// default) afterwards.
    pub fn loadgen(&self, load: &Load) -> LoadRun {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let report = self.dir().join(format!(
            "loadgen-{}-{}.json",
            load.seed,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let args: Vec<String> = [
            "--log".to_owned(),
            "info".to_owned(),
            "--log-json".to_owned(),
            "loadgen".to_owned(),
            "--target".to_owned(),
            self.service.to_string(),
            "--sessions".to_owned(),
            load.sessions.to_string(),
            "--rate".to_owned(),
            load.rate.to_string(),
            "--duration-ms".to_owned(),
            load.duration_ms.to_string(),
            "--seed".to_owned(),
            load.seed.to_string(),
            "--attach-deadline-ms".to_owned(),
            "30000".to_owned(),
            "--json".to_owned(),
            "--report".to_owned(),
            report.display().to_string(),
        ]
        .into();
        let mut args = args;
        if let Some(base) = load.imsi_base {
            args.extend(["--imsi-base".to_owned(), base.to_string()]);
        }
        let check = if load.check.is_empty() {
            vec![self.a, self.b]
        } else {
            load.check.clone()
        };
        for node in check {
            args.extend(["--check-node".to_owned(), node.to_string()]);
        }
        LoadRun {
            process: Background::spawn(self.dir(), "loadgen", &args),
            report,
        }
    }

    /// Starts `handoff migrate mme-1 --to <to> --json` through the controller (extra flags
    /// appended) and returns it with the move's id, once the controller lists the move.
    pub fn migrate(&self, to: &str, extra: &[&str]) -> (Background, u64) {
        let before = self.latest_move_id();
        let mut args: Vec<String> = ["migrate", INSTANCE, "--to", to, "--json"]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(["--controller".to_owned(), self.controller_addr.to_string()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut process = Background::spawn(self.dir(), "migrate", &args);
        let id = poll(Duration::from_secs(10), || {
            if process.exited() {
                self.fail(&format!(
                    "{} ended before the controller listed its move: {}\n{}",
                    process.what,
                    process.stdout(),
                    process.stderr_tail()
                ));
            }
            self.latest_move_id().filter(|id| Some(*id) != before)
        })
        .unwrap_or_else(|| self.fail("the controller listed no new move within 10 s"));
        (process, id)
    }

    /// Starts the source-driven variant: `handoff migrate mme-1 --source <from> --steer <steer>
    /// --to <to> --json`.
    pub fn migrate_source_driven(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        extra: &[&str],
    ) -> Background {
        let mut args: Vec<String> = vec![
            "migrate".into(),
            INSTANCE.into(),
            "--source".into(),
            from.to_string(),
            "--steer".into(),
            self.steer_control.to_string(),
            "--to".into(),
            to.to_string(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Background::spawn(self.dir(), "migrate-source", &args)
    }

    /// The newest move the controller lists (`None`: none, or the controller is down).
    pub fn latest_move_id(&self) -> Option<u64> {
        let s = self.controller_call(&ops::Status {}).ok()?;
        s.moves.iter().map(|m| m.id).max()
    }

    /// A move's status from the controller.
    pub fn move_status(&self, id: u64) -> Result<ops::MoveStatus, String> {
        self.controller_call(&ops::GetMoveStatus { id })
    }

    /// Waits until move `id` is in one of `phases` (snake_case names, as `docs/wire.md`) and
    /// `until` holds of its status; panics if it ends elsewhere or the time runs out. Polls
    /// every 2 ms over one connection, so a phase of a few milliseconds (drain, finish) is seen.
    pub fn wait_phase(
        &self,
        id: u64,
        phases: &[&str],
        timeout: Duration,
        until: impl Fn(&ops::MoveStatus) -> bool,
    ) -> ops::MoveStatus {
        let mut last = None;
        let mut client: Option<ControlClient> = None;
        let got = poll_every(Duration::from_millis(2), timeout, || {
            let s = self.block_on(async {
                if client.is_none() {
                    let mut c = ControlClient::connect(self.controller_addr, "chaos", TOKEN)
                        .await
                        .ok()?;
                    c.set_reply_timeout(Duration::from_secs(5));
                    client = Some(c);
                }
                let c = client.as_mut()?;
                match c.call(&ops::GetMoveStatus { id }).await {
                    Ok(s) => Some(s),
                    Err(_) => {
                        client = None;
                        None
                    }
                }
            })?;
            let phase = phase_name(s.phase);
            if phases.contains(&phase.as_str()) && until(&s) {
                return Some(s);
            }
            if s.ended {
                self.fail(&format!(
                    "move {id} ended ({phase}, {:?}) before reaching {phases:?}",
                    s.reason
                ));
            }
            last = Some(s);
            None
        });
        got.unwrap_or_else(|| {
            self.fail(&format!(
                "move {id} not in {phases:?} within {timeout:?}; last status: {last:?}"
            ))
        })
    }

    /// Waits until move `id` ended (the controller may be restarting meanwhile).
    pub fn wait_move_end(&self, id: u64, timeout: Duration) -> ops::MoveStatus {
        self.try_wait_move_end(id, timeout)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// [`Cluster::wait_move_end`], saying why instead of panicking.
    pub fn try_wait_move_end(&self, id: u64, timeout: Duration) -> Result<ops::MoveStatus, String> {
        let mut last = None;
        poll(timeout, || match self.move_status(id) {
            Ok(s) if s.ended => Some(s),
            other => {
                last = Some(other);
                None
            }
        })
        .ok_or_else(|| format!("move {id} did not end within {timeout:?}; last status: {last:?}"))
    }

    /// Runs `handoff <args> --controller <addr>` to its end (at most `timeout`).
    pub fn cli(&self, args: &[&str], timeout: Duration) -> Background {
        let mut b = Background::spawn_in(self, args);
        b.wait(timeout);
        b
    }

    /// `handoff status --json`, run as the operator runs it.
    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(exe())
            .args([
                "status",
                "--json",
                "--controller",
                &self.controller_addr.to_string(),
            ])
            .env("HANDOFF_TOKEN", TOKEN)
            .env("NO_COLOR", "1")
            .output()
            .expect("run handoff status");
        if !out.status.success() {
            self.fail(&format!(
                "handoff status --json failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            self.fail(&format!(
                "handoff status printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// The node `handoff status --json` places `mme-1` on.
    pub fn placed_on(&self) -> String {
        let s = self.status_json();
        s["instances"]
            .as_array()
            .and_then(|is| is.iter().find(|i| i["name"] == INSTANCE))
            .and_then(|i| i["node"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| self.fail(&format!("no {INSTANCE} in handoff status: {s:#}")))
    }

    /// The tail of every daemon's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = format!("cluster dir (kept): {}\n", self.dir().display());
        for d in [&self.node_a, &self.node_b, &self.steer, &self.controller] {
            let _ = writeln!(
                s,
                "===== {} ({}) =====\n{}",
                d.name,
                d.log_path().display(),
                tail(&d.log_path(), TAIL_LINES)
            );
        }
        s
    }

    /// Panics with `msg`; the cluster's drop then prints every daemon's log tail.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n(the tail of every daemon's log follows)")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Captured by the test harness and shown with the failure.
            eprintln!("{}", self.logs());
        }
    }
}

/// A phase's snake_case name (as the controller serialises it).
pub fn phase_name(p: handoff_controller::machine::Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{p:?}"))
}

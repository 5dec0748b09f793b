//! Instructions a relay process runs, counted by valgrind's callgrind: a figure that does not
//! depend on machine noise (this machine's `perf` has no hardware counters, so cycles cannot
//! be read).
//!
//! The relay starts under `valgrind --tool=callgrind --instr-atstart=no` (it starts and binds
//! at near native speed, nothing counted); `callgrind_control -i on` turns counting on right
//! before the measured load, and `callgrind_control -d` dumps the counts right after it. The
//! count is of the process's own (user-space) instructions: what the kernel runs for its
//! sends and receives is not in it, but is in the CPU time per signal read from `/proc`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// How long `callgrind_control` may take to answer (it waits for the process to reach a
/// point where valgrind can act).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory for callgrind's output files, removed when dropped.
pub struct Callgrind {
    dir: PathBuf,
}

/// The `valgrind` executable, when installed.
pub fn valgrind() -> Option<PathBuf> {
    let tool = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    tool("callgrind_control")?;
    tool("valgrind")
}

impl Callgrind {
    /// A fresh output directory under the system's temporary directory.
    pub fn new() -> Result<Self, String> {
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "handoff-bench-callgrind-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self { dir })
    }

    /// A command that runs `exe` under callgrind, counting nothing until [`Callgrind::start`].
    pub fn command(&self, exe: &Path) -> Result<Command, String> {
        let valgrind = valgrind().ok_or("valgrind (with callgrind_control) is not installed")?;
        let mut c = Command::new(valgrind);
        c.arg("--tool=callgrind")
            .arg("-q")
            .arg("--instr-atstart=no")
            .arg(format!(
                "--callgrind-out-file={}/callgrind.out.%p",
                self.dir.display()
            ))
            .arg(exe);
        Ok(c)
    }

    /// Turns counting on in process `pid`.
    pub async fn start(&self, pid: u32) -> Result<(), String> {
        control(&["-i", "on"], pid).await
    }

    /// Dumps process `pid`'s counts and returns the instructions counted since
    /// [`Callgrind::start`].
    pub async fn dump(&self, pid: u32) -> Result<u64, String> {
        control(&["-d"], pid).await?;
        // Dumps are numbered files next to the final one; the newest is this dump.
        let prefix = format!("callgrind.out.{pid}.");
        let newest = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("{}: {e}", self.dir.display()))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let part: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((part, e.path()))
            })
            .max_by_key(|(part, _)| *part)
            .ok_or_else(|| format!("no dump of process {pid} in {}", self.dir.display()))?;
        let text = std::fs::read_to_string(&newest.1)
            .map_err(|e| format!("{}: {e}", newest.1.display()))?;
        totals(&text).ok_or_else(|| format!("no totals in {}", newest.1.display()))
    }
}

impl Drop for Callgrind {
    /// Removes the dumps, unless `HANDOFF_BENCH_KEEP_CALLGRIND` is set (to read them with
    /// `callgrind_annotate`; the directory is logged).
    fn drop(&mut self) {
        if std::env::var_os(KEEP).is_some() {
            tracing::info!(dir = %self.dir.display(), "callgrind dumps kept");
            eprintln!("callgrind dumps kept in {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Set to keep callgrind's dumps after a run.
const KEEP: &str = "HANDOFF_BENCH_KEEP_CALLGRIND";

async fn control(args: &[&str], pid: u32) -> Result<(), String> {
    let run = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CONTROL_TIMEOUT, run)
        .await
        .map_err(|_| {
            format!("callgrind_control {args:?} did not answer within {CONTROL_TIMEOUT:?}")
        })?
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "callgrind_control {args:?} {pid} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The instruction count of a callgrind output file: its `totals:` line (or the older
/// `summary:` line), first event (`Ir`).
fn totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_line_gives_the_instruction_count() {
        let dump = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 42\n\
                    events: Ir\n\nfl=(1) x.rs\nfn=(1) main\n3 17\n\ntotals: 123456\n";
        assert_eq!(totals(dump), Some(123_456));
        assert_eq!(totals("events: Ir\nsummary: 99 1\n"), Some(99));
        assert_eq!(totals("events: Ir\n3 17\n"), None, "a file cut short");
        assert_eq!(totals("totals: many\n"), None);
    }
}

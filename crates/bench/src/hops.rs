//! The relays `handoff bench steer` puts between the load generator and a node, each a child
//! process on loopback so that its CPU time is its own: a `handoff steer` process, and an
//! nginx UDP proxy (the stream module), the thing a user would otherwise put in front of the
//! function.
//!
//! nginx runs with a generated configuration in a fresh temporary directory (one worker, no
//! master process, so the process started is the one relaying); the bench never touches the
//! system's nginx configuration or service. `scripts/setup` installs the packages
//! (`nginx-light`, `libnginx-mod-stream`).

use crate::instructions::Callgrind;
use crate::{BenchError, NodeLauncher, Subject};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a relay may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often nginx's port is checked while it starts.
const READY_POLL: Duration = Duration::from_millis(20);
/// How long a stopped relay may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Where Debian's `libnginx-mod-stream` puts the module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Where nginx is looked for when it is not on `PATH`.
const NGINX_PATHS: [&str; 2] = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"];

/// The steer's ready line (`handoff steer --ready`).
#[derive(serde::Deserialize)]
struct SteerReady {
    services: std::collections::HashMap<String, Option<SocketAddr>>,
    #[serde(default)]
    linked: Option<bool>,
}

/// A `handoff steer` child process serving one instance of a node. Dropping it kills it.
pub struct SteerProcess {
    child: Child,
    /// The service address clients send to.
    pub addr: SocketAddr,
}

impl SteerProcess {
    /// Starts a steer for `subject` on `node` (under callgrind when asked) and waits until it
    /// serves and its link is up.
    pub async fn spawn(
        launcher: &NodeLauncher,
        subject: &Subject,
        node: SocketAddr,
        under: Option<&Callgrind>,
    ) -> Result<Self, BenchError> {
        let failed = |reason: String| BenchError::RelayStart {
            relay: "steer",
            reason,
        };
        let spec = format!(
            "{}:{}@127.0.0.1:0={node}",
            subject.instance, subject.function
        );
        let mut command = match under {
            Some(cg) => cg.command(&launcher.exe).map_err(failed)?,
            None => Command::new(&launcher.exe),
        };
        let mut child = command
            .args([
                "--log",
                &launcher.log,
                "steer",
                "--service",
                &spec,
                "--ready",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| failed(format!("not ready within {READY_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| failed("exited before becoming ready".into()))?;
        let ready: SteerReady =
            serde_json::from_str(&line).map_err(|e| failed(format!("said {line:?}: {e}")))?;
        if ready.linked == Some(false) {
            return Err(BenchError::SteerUnlinked { node });
        }
        let addr = ready
            .services
            .get(&subject.instance)
            .copied()
            .flatten()
            .ok_or_else(|| failed(format!("no address for {} in {line:?}", subject.instance)))?;
        Ok(Self { child, addr })
    }

    /// The process id (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the process (killed; waited for at most 5 s).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await;
    }
}

/// An nginx child process proxying UDP from a loopback port to `upstream`. Dropping it kills
/// the process and removes its directory.
pub struct NginxProcess {
    child: Child,
    dir: PathBuf,
    /// The proxy's listen address.
    pub addr: SocketAddr,
}

/// The nginx executable: on `PATH`, or where Debian puts it.
pub fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| NGINX_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The configuration of a one-worker UDP proxy from `listen` to `upstream`, with its pid
/// file and logs in `dir`. `module` is the stream module to load (`None` when nginx has it
/// built in).
pub fn nginx_config(
    dir: &Path,
    module: Option<&Path>,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> String {
    let load = module.map_or(String::new(), |m| format!("load_module {};\n", m.display()));
    let dir = dir.display();
    // One session per client address (the load generator's sockets), never closed during a
    // trial: `proxy_timeout` outlasts every trial's idle moments, and `proxy_responses` is
    // left unlimited so every answer of the session is relayed.
    format!(
        "{load}daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         stream {{\n\
         \x20   server {{\n\
         \x20       listen {listen} udp;\n\
         \x20       proxy_pass {upstream};\n\
         \x20       proxy_timeout 120s;\n\
         \x20   }}\n\
         }}\n"
    )
}

impl NginxProcess {
    /// Starts nginx proxying UDP from a free loopback port to `upstream` (under callgrind when
    /// asked) and waits until it has bound that port.
    pub async fn spawn(
        upstream: SocketAddr,
        under: Option<&Callgrind>,
    ) -> Result<Self, BenchError> {
        let exe = find_nginx().ok_or(BenchError::NginxNotFound)?;
        let failed = |reason: String| BenchError::RelayStart {
            relay: "nginx",
            reason,
        };
        let module = Path::new(STREAM_MODULE);
        let module = module.exists().then_some(module);
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "handoff-bench-nginx-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        // A free port: taken, noted and let go; nginx binds it a moment later.
        let listen = std::net::UdpSocket::bind(("127.0.0.1", 0))
            .and_then(|s| s.local_addr())
            .map_err(|e| failed(e.to_string()))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_config(&dir, module, listen, upstream))
            .map_err(|e| failed(format!("{}: {e}", conf.display())))?;
        let mut command = match under {
            Some(cg) => cg.command(&exe).map_err(failed)?,
            None => Command::new(&exe),
        };
        let mut child = command
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("{}: {e}", exe.display())))?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(failed(format!("exited ({status}): {}", log.trim())));
            }
            // nginx serves once the port is taken.
            if std::net::UdpSocket::bind(listen).is_err() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(failed(format!(
                    "did not bind {listen} within {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        tracing::debug!(%listen, %upstream, dir = %dir.display(), "nginx UDP proxy up");
        Ok(Self {
            child,
            dir,
            addr: listen,
        })
    }

    /// The process id (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the process (killed; waited for at most 5 s) and removes its directory.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await;
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nginx_config_proxies_udp_on_loopback_and_keeps_its_files_in_its_directory() {
        let listen: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let up: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let c = nginx_config(Path::new("/tmp/d"), Some(Path::new("/m/s.so")), listen, up);
        assert!(c.starts_with("load_module /m/s.so;\n"), "{c}");
        assert!(c.contains("listen 127.0.0.1:4000 udp;"), "{c}");
        assert!(c.contains("proxy_pass 127.0.0.1:5000;"), "{c}");
        assert!(c.contains("pid /tmp/d/nginx.pid;"), "{c}");
        assert!(c.contains("error_log /tmp/d/error.log"), "{c}");
        assert!(c.contains("master_process off;"), "{c}");
        let built_in = nginx_config(Path::new("/tmp/d"), None, listen, up);
        assert!(!built_in.contains("load_module"), "{built_in}");
    }
}

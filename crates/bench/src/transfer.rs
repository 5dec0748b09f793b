//! The contenders without load: the same records moved by (d) a raw TCP write loop and (e)
//! Redis `MIGRATE` between two `redis-server`s. Both receive the records the live move's
//! destination ended with, so they move exactly the bytes handoff moved; there is nobody to
//! answer, so they have no pause and no answer counts.

use crate::report::{id, mb_s, Contender, Detail, RawTcpDetail, RedisDetail};
use crate::resp::{encode_command, info_field, Conn, Reply, RespError};
use crate::BenchError;
use handoff_state::RecordView;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The note of both contenders without load.
pub const NO_LOAD_NOTE: &str = "no load: a bulk transfer of the same records with nobody to \
                                answer, so pause and answer counts do not apply (null)";

/// Longest record the raw TCP reader accepts.
const RAW_MAX_RECORD: usize = 64 << 20;
/// How long the raw TCP reader or writer may block.
const RAW_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffer size of each end of the raw TCP transfer.
const RAW_BUFFER: usize = 1 << 20;

/// The record bytes a contender moves (keys and values).
pub fn records_bytes(records: &[RecordView]) -> u64 {
    records
        .iter()
        .map(|r| (r.key.len() + r.bytes.len()) as u64)
        .sum()
}

/// (d) The same records over one loopback TCP connection: a plain write loop with a length
/// prefix per record (`u32` length, `u8` key length, key, value) and a read loop.
pub async fn raw_tcp_contender(records: &[RecordView]) -> Contender {
    let mut c = Contender {
        id: id::RAW_TCP,
        name: "(d) raw TCP, loopback",
        note: NO_LOAD_NOTE,
        ..Contender::default()
    };
    // Cheap: the record bytes are shared, not copied.
    let owned = records.to_vec();
    match tokio::task::spawn_blocking(move || raw_tcp(&owned)).await {
        Ok(Ok(r)) => {
            c.total_ms = r.ms;
            c.bytes_sent = r.bytes_sent;
            c.records = r.records_sent;
            c.throughput_mb_s = mb_s(r.bytes_sent, r.ms);
            c.records_missing = Some(r.records_sent - r.records_received);
            c.detail = Detail::RawTcp(RawTcpDetail {
                wire_bytes: r.wire_bytes,
                bytes_received: r.bytes_received,
            });
        }
        Ok(Err(e)) => c.error = Some(e.to_string()),
        Err(e) => c.error = Some(e.to_string()),
    }
    c
}

/// What the raw TCP transfer did.
#[derive(Debug)]
pub struct RawResult {
    pub ms: f64,
    pub records_sent: u64,
    pub records_received: u64,
    /// Record bytes (keys and values) written.
    pub bytes_sent: u64,
    /// Record bytes (keys and values) read.
    pub bytes_received: u64,
    /// Bytes written, framing included.
    pub wire_bytes: u64,
}

/// Writes `records` to a reader thread over loopback TCP and times it (blocking).
pub fn raw_tcp(records: &[RecordView]) -> Result<RawResult, BenchError> {
    use std::io::{BufReader, BufWriter, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let expected = records.len() as u64;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (s, _) = listener.accept()?;
        s.set_read_timeout(Some(RAW_IO_TIMEOUT))?;
        let mut r = BufReader::with_capacity(RAW_BUFFER, s);
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut body = Vec::new();
        let mut len = [0u8; 4];
        while count < expected {
            r.read_exact(&mut len)?;
            let n = u32::from_be_bytes(len) as usize;
            if n == 0 || n > RAW_MAX_RECORD {
                return Err(std::io::Error::other("bad record length"));
            }
            body.resize(n, 0);
            r.read_exact(&mut body)?;
            count += 1;
            bytes += (n - 1) as u64;
        }
        Ok((count, bytes))
    });
    let start = Instant::now();
    let s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(RAW_IO_TIMEOUT))?;
    let mut w = BufWriter::with_capacity(RAW_BUFFER, s);
    let (mut bytes_sent, mut wire_bytes) = (0u64, 0u64);
    for RecordView {
        key, bytes: value, ..
    } in records
    {
        let key_len = u8::try_from(key.len()).map_err(|_| BenchError::KeyTooLong(key.len()))?;
        let n = 1 + key.len() + value.len();
        w.write_all(&(n as u32).to_be_bytes())?;
        w.write_all(&[key_len])?;
        w.write_all(key)?;
        w.write_all(value)?;
        bytes_sent += (key.len() + value.len()) as u64;
        wire_bytes += 4 + n as u64;
    }
    w.flush()?;
    let (records_received, bytes_received) =
        reader.join().map_err(|_| BenchError::ReaderPanicked)??;
    Ok(RawResult {
        ms: start.elapsed().as_secs_f64() * 1e3,
        records_sent: expected,
        records_received,
        bytes_sent,
        bytes_received,
        wire_bytes,
    })
}

/// The `redis-server` executable on `path` (a `PATH`-style list), or
/// [`BenchError::RedisNotFound`].
pub fn find_redis(path: &std::ffi::OsStr) -> Result<PathBuf, BenchError> {
    std::env::split_paths(path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or(BenchError::RedisNotFound)
}

/// How long a `redis-server` may take to answer `PING` after starting.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped `redis-server` may take to exit.
const REDIS_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one reply may take during the move (a `MIGRATE` of a batch included).
const REDIS_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands written before their replies are read.
const PIPELINE: usize = 1_000;
/// `MIGRATE` commands in flight at once.
const MIGRATE_WINDOW: usize = 8;
/// `MIGRATE`'s own timeout, ms.
const MIGRATE_TIMEOUT_MS: &[u8] = b"30000";

/// A `redis-server` child process on a loopback port with its own temporary directory.
struct RedisServer {
    child: tokio::process::Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl RedisServer {
    async fn start(exe: &Path, name: &str) -> Result<Self, BenchError> {
        let failed = |reason: String| BenchError::RedisStart {
            name: name.to_owned(),
            reason,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "handoff-bench-redis-{}-{name}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = tokio::process::Command::new(exe)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", exe.display())))?;
        let mut server = Self {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Ok(mut c) = Conn::connect(server.addr, Duration::from_secs(2)).await {
                if matches!(c.call(&[b"PING"]).await, Ok(Reply::Simple(ref s)) if s == "PONG") {
                    return Ok(server);
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.stop().await;
                return Err(failed(format!("exited at start ({status})")));
            }
            if Instant::now() > deadline {
                server.stop().await;
                return Err(failed(format!(
                    "no answer to PING within {REDIS_START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(REDIS_STOP_TIMEOUT, self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (e) Two `redis-server`s (`exe`) on loopback: load the records into A with pipelined SET,
/// then time moving every key to B with pipelined `MIGRATE … KEYS`, `batch` keys a command.
pub async fn redis_contender(exe: &Path, records: &[RecordView], batch: usize) -> Contender {
    let mut c = Contender {
        id: id::REDIS,
        name: "(e) redis MIGRATE",
        note: NO_LOAD_NOTE,
        ..Contender::default()
    };
    let mut servers = Vec::new();
    let r = async {
        servers.push(RedisServer::start(exe, "a").await?);
        servers.push(RedisServer::start(exe, "b").await?);
        redis_move(servers[0].addr, servers[1].addr, records, batch).await
    }
    .await;
    for s in &mut servers {
        s.stop().await;
    }
    match r {
        Ok(r) => {
            c.total_ms = r.ms;
            c.bytes_sent = r.bytes;
            c.records = records.len() as u64;
            c.throughput_mb_s = mb_s(r.bytes, r.ms);
            c.records_missing = Some((records.len() as u64).saturating_sub(r.detail.keys_on_b));
            c.detail = Detail::Redis(r.detail);
        }
        Err(e) => c.error = Some(e.to_string()),
    }
    c
}

struct RedisResult {
    ms: f64,
    bytes: u64,
    detail: RedisDetail,
}

/// What the server has read from all its clients (`total_net_input_bytes`).
async fn net_input_bytes(c: &mut Conn) -> Result<u64, BenchError> {
    let info = c.info("stats").await?;
    info_field(&info, "total_net_input_bytes")
        .and_then(|v| v.parse().ok())
        .ok_or(BenchError::RedisInfo("total_net_input_bytes"))
}

/// Reads one pipelined reply that must be `+OK` (or `+NOKEY` where `nokey_ok`).
async fn expect_ok(c: &mut Conn, command: &'static str, nokey_ok: bool) -> Result<(), RespError> {
    match c.read().await? {
        Reply::Simple(s) if s == "OK" || (nokey_ok && s == "NOKEY") => Ok(()),
        reply => Err(RespError::Unexpected {
            addr: c.addr(),
            command,
            reply,
        }),
    }
}

async fn redis_move(
    a: SocketAddr,
    b: SocketAddr,
    records: &[RecordView],
    batch: usize,
) -> Result<RedisResult, BenchError> {
    let mut ca = Conn::connect(a, REDIS_REPLY_TIMEOUT).await?;
    let mut cb = Conn::connect(b, REDIS_REPLY_TIMEOUT).await?;
    let version = ca
        .info("server")
        .await
        .ok()
        .and_then(|info| info_field(&info, "redis_version").map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    // Load A (not timed).
    let t = Instant::now();
    for chunk in records.chunks(PIPELINE) {
        let mut out = Vec::new();
        for r in chunk {
            encode_command(&mut out, &[b"SET", &r.key, &r.bytes]);
        }
        ca.write(&out).await?;
        for _ in chunk {
            expect_ok(&mut ca, "SET", false).await?;
        }
    }
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let loaded = ca.call_int("DBSIZE", &[b"DBSIZE"]).await?;
    if loaded != records.len() as i64 {
        return Err(BenchError::RedisLoad {
            loaded,
            expected: records.len(),
        });
    }
    // What B reads during the move is what A's MIGRATE connection sent it (RESTORE commands
    // with serialized values), plus this bench's INFO commands.
    let in_before = net_input_bytes(&mut cb).await?;
    let port = b.port().to_string();
    // Timed: every key A -> B.
    let t = Instant::now();
    let mut in_flight = 0usize;
    let mut commands = 0u64;
    for chunk in records.chunks(batch) {
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            port.as_bytes(),
            b"",
            b"0",
            MIGRATE_TIMEOUT_MS,
            b"KEYS",
        ];
        args.extend(chunk.iter().map(|r| r.key.as_ref()));
        let mut out = Vec::new();
        encode_command(&mut out, &args);
        ca.write(&out).await?;
        commands += 1;
        in_flight += 1;
        if in_flight >= MIGRATE_WINDOW {
            expect_ok(&mut ca, "MIGRATE", true).await?;
            in_flight -= 1;
        }
    }
    while in_flight > 0 {
        expect_ok(&mut ca, "MIGRATE", true).await?;
        in_flight -= 1;
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let in_after = net_input_bytes(&mut cb).await?;
    let on_b = cb.call_int("DBSIZE", &[b"DBSIZE"]).await?.max(0) as u64;
    let on_a = ca.call_int("DBSIZE", &[b"DBSIZE"]).await?.max(0) as u64;
    Ok(RedisResult {
        ms,
        bytes: records_bytes(records),
        detail: RedisDetail {
            wire_bytes: in_after.saturating_sub(in_before),
            keys_on_b: on_b,
            keys_left_on_a: on_a,
            migrate_commands: commands,
            load_ms,
            version,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64, value_len: usize) -> Vec<RecordView> {
        (0..n)
            .map(|i| RecordView {
                key: i.to_be_bytes().to_vec().into(),
                seq: i,
                bytes: vec![i as u8; value_len].into(),
            })
            .collect()
    }

    #[test]
    fn raw_tcp_moves_every_record_and_counts_its_framing() {
        let records = records(1000, 100);
        let r = raw_tcp(&records).unwrap();
        assert_eq!((r.records_sent, r.records_received), (1000, 1000));
        assert_eq!((r.bytes_sent, r.bytes_received), (108_000, 108_000));
        assert_eq!(r.wire_bytes, 108_000 + 5 * 1000);
        assert_eq!(records_bytes(&records), 108_000);
    }

    #[test]
    fn raw_tcp_refuses_a_key_its_framing_cannot_carry() {
        let long = vec![RecordView {
            key: vec![7u8; 256].into(),
            seq: 1,
            bytes: vec![1u8; 4].into(),
        }];
        assert!(matches!(raw_tcp(&long), Err(BenchError::KeyTooLong(256))));
    }

    #[test]
    fn redis_is_found_on_the_path_or_named_as_missing() {
        let dir = std::env::temp_dir().join(format!("handoff-bench-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = std::ffi::OsString::from("/nonexistent");
        assert!(matches!(find_redis(&empty), Err(BenchError::RedisNotFound)));
        std::fs::write(dir.join("redis-server"), b"").unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), dir.as_path()]).unwrap();
        assert_eq!(find_redis(&path).unwrap(), dir.join("redis-server"));
        let _ = std::fs::remove_dir_all(&dir);
        let msg = BenchError::RedisNotFound.to_string();
        assert!(msg.contains("redis-server not found") && msg.contains("scripts/setup"));
    }
}

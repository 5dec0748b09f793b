//! A tiny RESP (Redis serialization protocol) client: just enough to load records into a
//! `redis-server` and move them with pipelined `MIGRATE` for `handoff bench move`.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest bulk string or array accepted in a reply.
const MAX_LEN: usize = 512 << 20;
/// Deepest nesting of arrays accepted in a reply.
const MAX_DEPTH: usize = 8;

/// A reply from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nfoo` (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*2…` (`None`: the null array).
    Array(Option<Vec<Reply>>),
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` if it is not complete yet, else the
/// reply and the bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(l: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(l)))
}

fn length(l: &[u8]) -> Result<Option<usize>, String> {
    match number(l)? {
        -1 => Ok(None),
        n if n >= 0 && (n as u64) <= MAX_LEN as u64 => Ok(Some(n as usize)),
        n => Err(format!("length {n} out of range")),
    }
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("reply nested too deeply".into());
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((l, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(l).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), next - at))),
        b'-' => Ok(Some((Reply::Error(text()), next - at))),
        b':' => Ok(Some((Reply::Int(number(l)?), next - at))),
        b'$' => match length(l)? {
            None => Ok(Some((Reply::Bulk(None), next - at))),
            Some(n) => {
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err("bulk string not terminated".into());
                }
                let body = buf[next..next + n].to_vec();
                Ok(Some((Reply::Bulk(Some(body)), next + n + 2 - at)))
            }
        },
        b'*' => match length(l)? {
            None => Ok(Some((Reply::Array(None), next - at))),
            Some(n) => {
                let mut items = Vec::with_capacity(n.min(1024));
                let mut pos = next;
                for _ in 0..n {
                    match parse_at(buf, pos, depth + 1)? {
                        Some((r, used)) => {
                            items.push(r);
                            pos += used;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Reply::Array(Some(items)), pos - at)))
            }
        },
        other => Err(format!("unknown reply type {:?}", other as char)),
    }
}

/// One connection to a server.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Connects (within 5 s); each reply must then come within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("redis {addr}: connect timed out"))??;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            addr,
            stream,
            buf: Vec::with_capacity(64 * 1024),
            timeout,
        })
    }

    /// Writes encoded commands (pipelined: replies are read separately).
    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next reply.
    pub async fn read(&mut self) -> anyhow::Result<Reply> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some((r, used)) = parse_reply(&self.buf).map_err(anyhow::Error::msg)? {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow::anyhow!("redis {}: no reply in time", self.addr))??;
            if n == 0 {
                anyhow::bail!("redis {}: connection closed", self.addr);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command and reads its reply; a server error is an error.
    pub async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.write(&out).await?;
        match self.read().await? {
            Reply::Error(e) => anyhow::bail!("redis {}: {e}", self.addr),
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k\r\n", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_parses_and_partial_input_waits() {
        let all = b"+OK\r\n-ERR no\r\n:-7\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n:1\r\n*-1\r\n";
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < all.len() {
            let (r, used) = parse_reply(&all[pos..]).unwrap().unwrap();
            got.push(r);
            pos += used;
        }
        assert_eq!(
            got,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Int(-7),
                Reply::Bulk(Some(b"a\r\n".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Int(1), Reply::Array(None)])),
            ]
        );
        for cut in 0..all.len() {
            // Every prefix either parses a whole first reply or asks for more; never errs.
            if let Some((_, used)) = parse_reply(&all[..cut]).unwrap() {
                assert_eq!(used, 5);
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(parse_reply(b"?x\r\n").is_err());
        assert!(parse_reply(b":12a\r\n").is_err());
        assert!(parse_reply(b"$2\r\nabc\r\n").is_err());
        assert!(parse_reply(b"$-5\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(parse_reply(deep.as_bytes()).is_err());
    }
}

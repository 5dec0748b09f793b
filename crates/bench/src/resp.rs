//! A tiny RESP (Redis serialization protocol, version 2) client: just enough to load records
//! into a `redis-server` and move them with pipelined `MIGRATE` for the Redis contender.
//!
//! # Layout
//!
//! - [`encode_command`] and [`parse_reply`] are pure: bytes in, bytes or a [`Reply`] out. The
//!   parser never panics on what a server (or anything pretending to be one) sends: malformed
//!   input is a [`ParseError`], incomplete input is `Ok(None)`.
//! - [`Conn`] is the I/O shell: one TCP connection with a read buffer and a reply timeout.
//!
//! # Limits
//!
//! A bulk string or array longer than [`MAX_LEN`] and arrays nested deeper than [`MAX_DEPTH`]
//! are refused before anything is allocated for them. The read buffer holds at most one reply
//! plus one read chunk beyond it, so a server that never terminates a reply is cut off by the
//! reply timeout, not by memory.
//!
//! The `redis` crate would do all this and much more (connection pools, clusters, typed
//! conversions); the contender needs four commands (`SET`, `MIGRATE`, `DBSIZE`, `INFO`) and
//! pipelining, which this module covers in a page.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest bulk string or array accepted in a reply.
pub const MAX_LEN: usize = 512 << 20;
/// Deepest nesting of arrays accepted in a reply.
pub const MAX_DEPTH: usize = 8;
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

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

/// Why bytes from the server are not a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first byte names no RESP2 type.
    #[error("unknown reply type {0:?}")]
    UnknownType(char),
    /// An integer or a length is not a decimal `i64`.
    #[error("bad number {0:?}")]
    BadNumber(String),
    /// A length is negative (other than the null `-1`) or above [`MAX_LEN`].
    #[error("length {0} out of range")]
    LengthOutOfRange(i64),
    /// A bulk string's body is not followed by `\r\n`.
    #[error("bulk string not terminated")]
    Unterminated,
    /// Arrays are nested deeper than [`MAX_DEPTH`].
    #[error("reply nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Why a command did not get its reply.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Connecting, reading or writing failed.
    #[error("redis {addr}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The connect or a reply did not come in time.
    #[error("redis {addr}: no answer within {timeout:?}")]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The server closed the connection before a whole reply.
    #[error("redis {addr}: connection closed")]
    Closed {
        /// The server.
        addr: SocketAddr,
    },
    /// The server sent something that is not RESP.
    #[error("redis {addr}: {source}")]
    Protocol {
        /// The server.
        addr: SocketAddr,
        /// What was wrong with it.
        source: ParseError,
    },
    /// The server answered with an error reply.
    #[error("redis {addr}: {message}")]
    Server {
        /// The server.
        addr: SocketAddr,
        /// The error reply, e.g. `ERR unknown command`.
        message: String,
    },
    /// The server answered with a reply of another kind than the command has.
    #[error("redis {addr}: {command} answered {reply:?}")]
    Unexpected {
        /// The server.
        addr: SocketAddr,
        /// The command.
        command: &'static str,
        /// What it answered.
        reply: Reply,
    },
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
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ParseError> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(l: &[u8]) -> Result<i64, ParseError> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ParseError::BadNumber(String::from_utf8_lossy(l).into_owned()))
}

fn length(l: &[u8]) -> Result<Option<usize>, ParseError> {
    match number(l)? {
        -1 => Ok(None),
        n if n >= 0 && (n as u64) <= MAX_LEN as u64 => Ok(Some(n as usize)),
        n => Err(ParseError::LengthOutOfRange(n)),
    }
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError::TooDeep);
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
                    return Err(ParseError::Unterminated);
                }
                let body = buf[next..next + n].to_vec();
                Ok(Some((Reply::Bulk(Some(body)), next + n + 2 - at)))
            }
        },
        b'*' => match length(l)? {
            None => Ok(Some((Reply::Array(None), next - at))),
            Some(n) => {
                // The count is the peer's word: allocate for what has arrived, not for `n`.
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
        other => Err(ParseError::UnknownType(other as char)),
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
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, RespError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| RespError::Timeout {
                addr,
                timeout: CONNECT_TIMEOUT,
            })?
            .map_err(|source| RespError::Io { addr, source })?;
        // Pipelined batches are written whole; Nagle would only delay the last segment.
        let _ = stream.set_nodelay(true);
        Ok(Self {
            addr,
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            timeout,
        })
    }

    /// The server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes encoded commands (pipelined: replies are read separately).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), RespError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| RespError::Io {
                addr: self.addr,
                source,
            })
    }

    /// Reads the next reply (an error reply is returned as [`Reply::Error`], not as `Err`).
    pub async fn read(&mut self) -> Result<Reply, RespError> {
        let addr = self.addr;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some((r, used)) =
                parse_reply(&self.buf).map_err(|source| RespError::Protocol { addr, source })?
            {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| RespError::Timeout {
                    addr,
                    timeout: self.timeout,
                })?
                .map_err(|source| RespError::Io { addr, source })?;
            if n == 0 {
                return Err(RespError::Closed { addr });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command and reads its reply; an error reply is [`RespError::Server`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.write(&out).await?;
        match self.read().await? {
            Reply::Error(message) => Err(RespError::Server {
                addr: self.addr,
                message,
            }),
            r => Ok(r),
        }
    }

    /// Sends a command whose reply is an integer (`DBSIZE`) and returns it.
    pub async fn call_int(
        &mut self,
        command: &'static str,
        args: &[&[u8]],
    ) -> Result<i64, RespError> {
        match self.call(args).await? {
            Reply::Int(n) => Ok(n),
            reply => Err(RespError::Unexpected {
                addr: self.addr,
                command,
                reply,
            }),
        }
    }

    /// `INFO section`, as text.
    pub async fn info(&mut self, section: &str) -> Result<String, RespError> {
        match self.call(&[b"INFO", section.as_bytes()]).await? {
            Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text).into_owned()),
            reply => Err(RespError::Unexpected {
                addr: self.addr,
                command: "INFO",
                reply,
            }),
        }
    }
}

/// The value of `field` in the text of an `INFO` reply (`field:value` lines).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings_with_binary_safe_bodies() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k\r\n", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
        // What is encoded parses back as the same arguments (the server reads commands as
        // arrays of bulk strings too).
        let (r, used) = parse_reply(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"SET".to_vec())),
                Reply::Bulk(Some(b"k\r\n".to_vec())),
                Reply::Bulk(Some(Vec::new())),
            ]))
        );
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
        for cut in 0..5 {
            // A prefix of the first reply asks for more; it is never an error.
            assert_eq!(parse_reply(&all[..cut]), Ok(None), "cut at {cut}");
        }
        // A bulk string whose body has not all arrived waits too, and so does an array
        // missing its last element.
        assert_eq!(parse_reply(b"$5\r\nab"), Ok(None));
        assert_eq!(parse_reply(b"*2\r\n:1\r\n"), Ok(None));
    }

    #[test]
    fn malformed_replies_are_typed_errors() {
        assert_eq!(parse_reply(b"?x\r\n"), Err(ParseError::UnknownType('?')));
        assert_eq!(
            parse_reply(b":12a\r\n"),
            Err(ParseError::BadNumber("12a".into()))
        );
        assert_eq!(parse_reply(b"$2\r\nabc\r\n"), Err(ParseError::Unterminated));
        assert_eq!(
            parse_reply(b"$-5\r\n"),
            Err(ParseError::LengthOutOfRange(-5))
        );
        let too_long = format!("${}\r\n", MAX_LEN + 1);
        assert_eq!(
            parse_reply(too_long.as_bytes()),
            Err(ParseError::LengthOutOfRange(MAX_LEN as i64 + 1)),
            "an oversized length is refused before any body arrives"
        );
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert_eq!(parse_reply(deep.as_bytes()), Err(ParseError::TooDeep));
        let deepest = "*1\r\n".repeat(MAX_DEPTH) + ":1\r\n";
        assert!(parse_reply(deepest.as_bytes()).unwrap().is_some());
        // An error inside an array is an error of the whole reply.
        assert_eq!(
            parse_reply(b"*2\r\n:1\r\n:x\r\n"),
            Err(ParseError::BadNumber("x".into()))
        );
    }

    #[test]
    fn info_fields_are_found_by_whole_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_version_sha:0\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_field(info, "redis_versio"), None);
        assert_eq!(info_field(info, "total_net_input_bytes"), None);
    }
}

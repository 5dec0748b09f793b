//! Frame bodies and their byte layouts.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Magic bytes opening every frame: ASCII "hf".
pub const MAGIC: u16 = 0x6866;
/// The protocol version this build speaks.
pub const VERSION: u8 = 3;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted; larger frames are a protocol error (bounded buffers).
pub const MAX_BODY: usize = 1 << 20;
/// Largest admin request or reply body ([`Frame::Admin`], [`Frame::AdminReply`]) once its
/// continuation parts are reassembled (256 MiB: a list of 50 million hex session keys would
/// not fit, the largest key list a move produces does, by far). A body above [`MAX_BODY`] is
/// sent as continuation frames (kind 16) followed by the frame itself; see [`FrameCodec`](crate::FrameCodec).
pub const MAX_CONTINUED_BODY: usize = 256 << 20;
/// Most keys in one manifest frame.
pub const MAX_MANIFEST_KEYS: usize = 16_384;
/// Most digest buckets in a copy-end frame.
pub const MAX_DIGEST_BUCKETS: usize = 4_096;
/// Largest key or payload carried in a signal or output frame.
pub const MAX_FIELD: usize = u16::MAX as usize;

/// Why a frame was rejected. The connection that sent it is closed: framing is lost.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not [`MAGIC`].
    #[error("bad magic {0:#06x}")]
    Magic(u16),
    /// The version is not [`VERSION`].
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// The kind byte is 0 or unknown.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The body is longer than [`MAX_BODY`].
    #[error("frame body of {0} bytes exceeds the limit")]
    TooLong(usize),
    /// The body ends before its fields do.
    #[error("frame body truncated in {0}")]
    Truncated(&'static str),
    /// A field holds an invalid value.
    #[error("invalid field {0}")]
    Invalid(&'static str),
    /// Bytes remain after the body's last field.
    #[error("{0} trailing bytes in frame body")]
    Trailing(usize),
    /// A continuation (kind 16) is malformed, continues a kind that cannot be continued, is
    /// interrupted by another frame, or makes the reassembled body exceed
    /// [`MAX_CONTINUED_BODY`].
    #[error("bad continuation: {0}")]
    Continuation(String),
    /// An I/O error on the connection.
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// Who opens a connection, said in [`Frame::Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A steer that will send signals and receive outputs.
    Steer = 1,
    /// An operator tool (CLI, load generator's oracle) sending admin requests.
    Admin = 2,
    /// Another node streaming a move's copy.
    Peer = 3,
}

/// A signal on its way from the steer to the node hosting its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalFrame {
    /// The route id the steer bound to the instance on this connection.
    pub route: u32,
    /// The steer's seq for the instance.
    pub seq: u64,
    /// The steer's timestamp (µs since the Unix epoch).
    pub now_us: u64,
    /// `SignalKind` as its wire value.
    pub kind: u8,
    /// [`SIGNAL_SHADOW`] and future bits; unknown bits are an error.
    pub flags: u8,
    /// The client that sent it; outputs go back there.
    pub client: SocketAddr,
    /// The session key the classifier found (empty for stateless signals and ticks).
    pub key: Bytes,
    /// The datagram (empty for ticks).
    pub payload: Bytes,
}

/// Signal flag: the receiving copy is a shadow (a move's destination while the source is
/// authoritative). It applies the signal but must not emit its outputs.
pub const SIGNAL_SHADOW: u8 = 0x01;
/// Signal flag: not a signal to apply but a marker to a move's source that the session named by
/// the key was handed over to the destination at this seq (a create for it went there).
pub const SIGNAL_HANDOVER: u8 = 0x02;
const SIGNAL_FLAGS_KNOWN: u8 = SIGNAL_SHADOW | SIGNAL_HANDOVER;

/// An output on its way from a node back to the steer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFrame {
    /// The route id of the instance.
    pub route: u32,
    /// Seq of the signal that produced it.
    pub seq: u64,
    /// `OutputClass` as its wire value.
    pub class: u8,
    /// Where the steer sends it.
    pub client: SocketAddr,
    /// The datagram.
    pub payload: Bytes,
}

/// One frame of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opens a connection: the sender's role and name, and the versions it accepts.
    Hello {
        /// The sender's role.
        role: Role,
        /// The sender's name (steer or tool id), for logs.
        name: String,
        /// Lowest protocol version accepted.
        min_version: u8,
        /// Highest protocol version accepted.
        max_version: u8,
        /// The shared secret the receiver may require (empty: none offered). At most 255 bytes.
        token: String,
    },
    /// Accepts a connection: the node's name.
    HelloAck {
        /// The node's name.
        node: String,
    },
    /// Binds a route id to an instance on this connection (steer → node).
    Bind {
        /// The route id signals will carry.
        route: u32,
        /// The instance name, e.g. `mme-1`.
        instance: String,
    },
    /// The node hosts the instance and accepts the route; `last_seq` is the last seq it applied.
    Bound {
        /// The route id.
        route: u32,
        /// Last seq the instance applied (the steer continues above it).
        last_seq: u64,
        /// The instance's incarnation: a number that changes whenever the instance is created
        /// again (its node restarted, or it was dropped and re-created), never 0. A steer never
        /// takes a new incarnation for the one it was bound to.
        incarnation: u64,
    },
    /// See [`SignalFrame`].
    Signal(SignalFrame),
    /// See [`OutputFrame`].
    Output(OutputFrame),
    /// An admin request, as JSON (the operator API; see `docs/wire.md`).
    Admin(Bytes),
    /// The answer to an admin request, as JSON.
    AdminReply(Bytes),
    /// One record of a state dump.
    DumpRecord {
        /// Session key.
        key: Bytes,
        /// Seq of the last signal applied.
        seq: u64,
        /// Serialised session.
        bytes: Bytes,
    },
    /// The end of a state dump and its record count.
    DumpEnd {
        /// Records sent.
        count: u64,
    },
    /// Part of a move's manifest (source → destination): keys in copy order.
    Manifest {
        /// The instance being moved.
        instance: String,
        /// Keys, in the order their records will follow.
        keys: Vec<Bytes>,
        /// Whether this is the manifest's last part.
        last: bool,
    },
    /// A copied session (source → destination) with the seq of the last signal applied to it.
    CopyRecord {
        /// Session key.
        key: Bytes,
        /// Seq of the last signal the source applied to it.
        seq: u64,
        /// Serialised session.
        bytes: Bytes,
    },
    /// A manifest session the source deleted during the move, and the seq that deleted it.
    Tombstone {
        /// Session key.
        key: Bytes,
        /// Seq of the deleting signal.
        seq: u64,
    },
    /// The end of a copy: how many records and tombstones were sent, and their digest buckets.
    CopyEnd {
        /// Records and tombstones sent.
        records: u64,
        /// The digest's buckets (see `handoff_state::Digest`).
        digest: Vec<u128>,
    },
    /// A move's destination reports how far it has applied the copy and asks its source to
    /// send these sessions' records next: a signal for each is buffered there until its record
    /// arrives (destination → source, on the copy connection, at any time while records
    /// stream; DESIGN.md "Copy order is the heat map plus the access pattern").
    Demand {
        /// Record bytes (keys and values; a tombstone counts its key) received on this
        /// connection and applied so far: the source keeps only a bounded window beyond it in
        /// flight, so a demanded record never queues behind much.
        applied: u64,
        /// Session keys (at most [`MAX_MANIFEST_KEYS`]; may be empty).
        keys: Vec<Bytes>,
    },
    /// A request failed; `code` is stable, `message` is for people.
    Error {
        /// Stable error code.
        code: u16,
        /// Human-readable message.
        message: String,
    },
}

/// Frame kind bytes. 0 is invalid.
pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const BIND: u8 = 3;
    pub const BOUND: u8 = 4;
    pub const SIGNAL: u8 = 5;
    pub const OUTPUT: u8 = 6;
    pub const ADMIN: u8 = 7;
    pub const ADMIN_REPLY: u8 = 8;
    pub const DUMP_RECORD: u8 = 9;
    pub const DUMP_END: u8 = 10;
    pub const ERROR: u8 = 11;
    pub const MANIFEST: u8 = 12;
    pub const COPY_RECORD: u8 = 13;
    pub const TOMBSTONE: u8 = 14;
    pub const COPY_END: u8 = 15;
    pub const CONTINUATION: u8 = 16;
    pub const DEMAND: u8 = 17;
}

/// Stable error codes carried by [`Frame::Error`].
pub mod code {
    /// The named instance is not hosted here.
    pub const UNKNOWN_INSTANCE: u16 = 1;
    /// The request was not understood.
    pub const BAD_REQUEST: u16 = 2;
    /// The frame is not allowed for the connection's role or state.
    pub const WRONG_FRAME: u16 = 3;
    /// The peer's version range excludes ours.
    pub const VERSION: u16 = 4;
    /// The named function is not known to this process.
    pub const UNKNOWN_FUNCTION: u16 = 5;
    /// The instance already exists.
    pub const EXISTS: u16 = 6;
    /// The hello's token does not match the one the receiver requires.
    pub const UNAUTHORIZED: u16 = 7;
    /// The steer restarted during a move and lost the instance's route (it had not cut
    /// over): it routes none of the instance's signals until the route is installed again.
    pub const ROUTE_LOST: u16 = 8;
    /// As [`ROUTE_LOST`], the route having flipped to the move's destination before.
    pub const ROUTE_LOST_CUT_OVER: u16 = 9;
    /// The request does not fit the phase its target is in (a cutover outside a move, a move
    /// while another is in progress, a serve before the rebind completed, ...).
    pub const WRONG_PHASE: u16 = 10;
    /// A node the request needs did not answer or bind in time.
    pub const NOT_REACHABLE: u16 = 11;
    /// A newer request of the same kind replaced this one, or the operation it waited for was
    /// aborted.
    pub const SUPERSEDED: u16 = 12;
    /// The request names a move (or an incarnation) that did not create the instance it
    /// would drop, freeze or overwrite: the instance is left alone. A move's cleanup that
    /// gets this answer has nothing of its own to clean up there.
    pub const FOREIGN: u16 = 13;
    /// The instance is offline: the node it was bound to lost it (a crash, a restart, a
    /// re-created instance), and the steer routes none of its signals until an operator
    /// recovers it (`handoff recover`).
    pub const OFFLINE: u16 = 14;
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::HelloAck { .. } => kind::HELLO_ACK,
            Frame::Bind { .. } => kind::BIND,
            Frame::Bound { .. } => kind::BOUND,
            Frame::Signal(_) => kind::SIGNAL,
            Frame::Output(_) => kind::OUTPUT,
            Frame::Admin(_) => kind::ADMIN,
            Frame::AdminReply(_) => kind::ADMIN_REPLY,
            Frame::DumpRecord { .. } => kind::DUMP_RECORD,
            Frame::DumpEnd { .. } => kind::DUMP_END,
            Frame::Error { .. } => kind::ERROR,
            Frame::Manifest { .. } => kind::MANIFEST,
            Frame::CopyRecord { .. } => kind::COPY_RECORD,
            Frame::Tombstone { .. } => kind::TOMBSTONE,
            Frame::CopyEnd { .. } => kind::COPY_END,
            Frame::Demand { .. } => kind::DEMAND,
        }
    }

    /// Appends the encoded frame (header and body) to `dst`.
    ///
    /// Fields longer than their length prefix allows are a caller bug; they are truncated so the
    /// frame stays well formed, and the receiver's checks then reject the content.
    ///
    /// An admin request or reply body longer than [`MAX_BODY`] (up to [`MAX_CONTINUED_BODY`])
    /// is written as continuation frames followed by the frame with the body's last part.
    pub fn encode(&self, dst: &mut BytesMut) {
        if let Frame::Admin(b) | Frame::AdminReply(b) = self {
            if b.len() > MAX_BODY {
                return encode_continued(dst, self.kind(), b);
            }
        }
        let start = begin(dst, self.kind());
        match self {
            Frame::Hello {
                role,
                name,
                min_version,
                max_version,
                token,
            } => {
                dst.put_u8(*role as u8);
                put_str8(dst, name);
                dst.put_u8(*min_version);
                dst.put_u8(*max_version);
                put_str8(dst, token);
            }
            Frame::HelloAck { node } => put_str8(dst, node),
            Frame::Bind { route, instance } => {
                dst.put_u32(*route);
                put_str8(dst, instance);
            }
            Frame::Bound {
                route,
                last_seq,
                incarnation,
            } => {
                dst.put_u32(*route);
                dst.put_u64(*last_seq);
                dst.put_u64(*incarnation);
            }
            Frame::Signal(s) => {
                dst.put_u32(s.route);
                dst.put_u64(s.seq);
                dst.put_u64(s.now_us);
                dst.put_u8(s.kind);
                dst.put_u8(s.flags);
                put_addr(dst, &s.client);
                put_bytes16(dst, &s.key);
                put_bytes16(dst, &s.payload);
            }
            Frame::Output(o) => {
                dst.put_u32(o.route);
                dst.put_u64(o.seq);
                dst.put_u8(o.class);
                put_addr(dst, &o.client);
                put_bytes16(dst, &o.payload);
            }
            Frame::Admin(b) | Frame::AdminReply(b) => {
                let n = b.len().min(MAX_BODY);
                dst.put_slice(&b[..n]);
            }
            Frame::DumpRecord { key, seq, bytes } => {
                put_bytes16(dst, key);
                dst.put_u64(*seq);
                let n = bytes.len().min(MAX_BODY - 32);
                dst.put_u32(n as u32);
                dst.put_slice(&bytes[..n]);
            }
            Frame::DumpEnd { count } => dst.put_u64(*count),
            Frame::Manifest {
                instance,
                keys,
                last,
            } => {
                put_str8(dst, instance);
                dst.put_u8(u8::from(*last));
                let n = keys.len().min(MAX_MANIFEST_KEYS);
                dst.put_u32(n as u32);
                keys[..n].iter().for_each(|k| put_bytes16(dst, k));
            }
            Frame::CopyRecord { key, seq, bytes } => put_copy_record(dst, key, *seq, bytes),
            Frame::Tombstone { key, seq } => {
                put_bytes16(dst, key);
                dst.put_u64(*seq);
            }
            Frame::CopyEnd { records, digest } => {
                dst.put_u64(*records);
                let n = digest.len().min(MAX_DIGEST_BUCKETS);
                dst.put_u32(n as u32);
                digest[..n].iter().for_each(|b| dst.put_u128(*b));
            }
            Frame::Demand { applied, keys } => {
                dst.put_u64(*applied);
                let n = keys.len().min(MAX_MANIFEST_KEYS);
                dst.put_u32(n as u32);
                keys[..n].iter().for_each(|k| put_bytes16(dst, k));
            }
            Frame::Error { code, message } => {
                dst.put_u16(*code);
                let m = truncate_str(message, u16::MAX as usize);
                dst.put_u16(m.len() as u16);
                dst.put_slice(m.as_bytes());
            }
        }
        finish(dst, start);
    }

    /// Encodes a [`Frame::CopyRecord`] from borrowed parts, byte for byte as [`Frame::encode`]
    /// would: a copy's source writes records straight from its table into the connection's
    /// buffer, with no record clone or frame value per record.
    pub fn encode_copy_record(dst: &mut BytesMut, key: &[u8], seq: u64, bytes: &[u8]) {
        let start = begin(dst, kind::COPY_RECORD);
        put_copy_record(dst, key, seq, bytes);
        finish(dst, start);
    }

    /// Decodes a body of `kind` (the header has been checked by the codec). Never panics.
    pub fn decode_body(kind: u8, mut b: Bytes) -> Result<Frame, FrameError> {
        let r = &mut b;
        let frame = match kind {
            kind::HELLO => {
                let role = match get_u8(r, "hello.role")? {
                    1 => Role::Steer,
                    2 => Role::Admin,
                    3 => Role::Peer,
                    _ => return Err(FrameError::Invalid("hello.role")),
                };
                Frame::Hello {
                    role,
                    name: get_str8(r, "hello.name")?,
                    min_version: get_u8(r, "hello.min_version")?,
                    max_version: get_u8(r, "hello.max_version")?,
                    token: get_str8(r, "hello.token")?,
                }
            }
            kind::HELLO_ACK => Frame::HelloAck {
                node: get_str8(r, "hello_ack.node")?,
            },
            kind::BIND => Frame::Bind {
                route: get_u32(r, "bind.route")?,
                instance: get_str8(r, "bind.instance")?,
            },
            kind::BOUND => Frame::Bound {
                route: get_u32(r, "bound.route")?,
                last_seq: get_u64(r, "bound.last_seq")?,
                incarnation: get_u64(r, "bound.incarnation")?,
            },
            kind::SIGNAL => Frame::Signal(SignalFrame {
                route: get_u32(r, "signal.route")?,
                seq: get_u64(r, "signal.seq")?,
                now_us: get_u64(r, "signal.now_us")?,
                kind: get_u8(r, "signal.kind")?,
                flags: match get_u8(r, "signal.flags")? {
                    f if f & !SIGNAL_FLAGS_KNOWN == 0 => f,
                    _ => return Err(FrameError::Invalid("signal.flags")),
                },
                client: get_addr(r, "signal.client")?,
                key: get_bytes16(r, "signal.key")?,
                payload: get_bytes16(r, "signal.payload")?,
            }),
            kind::OUTPUT => Frame::Output(OutputFrame {
                route: get_u32(r, "output.route")?,
                seq: get_u64(r, "output.seq")?,
                class: get_u8(r, "output.class")?,
                client: get_addr(r, "output.client")?,
                payload: get_bytes16(r, "output.payload")?,
            }),
            kind::ADMIN => Frame::Admin(r.split_off(0)),
            kind::ADMIN_REPLY => Frame::AdminReply(r.split_off(0)),
            kind::DUMP_RECORD => {
                let key = get_bytes16(r, "dump_record.key")?;
                let seq = get_u64(r, "dump_record.seq")?;
                let n = get_u32(r, "dump_record.len")? as usize;
                Frame::DumpRecord {
                    key,
                    seq,
                    bytes: take(r, n, "dump_record.bytes")?,
                }
            }
            kind::DUMP_END => Frame::DumpEnd {
                count: get_u64(r, "dump_end.count")?,
            },
            kind::ERROR => {
                let code = get_u16(r, "error.code")?;
                let n = get_u16(r, "error.len")? as usize;
                let m = take(r, n, "error.message")?;
                Frame::Error {
                    code,
                    message: String::from_utf8_lossy(&m).into_owned(),
                }
            }
            kind::MANIFEST => {
                let instance = get_str8(r, "manifest.instance")?;
                let last = match get_u8(r, "manifest.last")? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Invalid("manifest.last")),
                };
                let n = get_u32(r, "manifest.count")? as usize;
                if n > MAX_MANIFEST_KEYS || n * 2 > r.remaining() {
                    return Err(FrameError::Invalid("manifest.count"));
                }
                let keys = (0..n)
                    .map(|_| get_bytes16(r, "manifest.key"))
                    .collect::<Result<_, _>>()?;
                Frame::Manifest {
                    instance,
                    keys,
                    last,
                }
            }
            kind::COPY_RECORD => {
                let key = get_bytes16(r, "copy_record.key")?;
                let seq = get_u64(r, "copy_record.seq")?;
                let n = get_u32(r, "copy_record.len")? as usize;
                Frame::CopyRecord {
                    key,
                    seq,
                    bytes: take(r, n, "copy_record.bytes")?,
                }
            }
            kind::TOMBSTONE => Frame::Tombstone {
                key: get_bytes16(r, "tombstone.key")?,
                seq: get_u64(r, "tombstone.seq")?,
            },
            kind::COPY_END => {
                let records = get_u64(r, "copy_end.records")?;
                let n = get_u32(r, "copy_end.buckets")? as usize;
                if n > MAX_DIGEST_BUCKETS || n * 16 > r.remaining() {
                    return Err(FrameError::Invalid("copy_end.buckets"));
                }
                let digest = (0..n)
                    .map(|_| {
                        r.try_get_u128()
                            .map_err(|_| FrameError::Truncated("copy_end.digest"))
                    })
                    .collect::<Result<_, _>>()?;
                Frame::CopyEnd { records, digest }
            }
            kind::DEMAND => {
                let applied = get_u64(r, "demand.applied")?;
                let n = get_u32(r, "demand.count")? as usize;
                if n > MAX_MANIFEST_KEYS || n * 2 > r.remaining() {
                    return Err(FrameError::Invalid("demand.count"));
                }
                let keys = (0..n)
                    .map(|_| get_bytes16(r, "demand.key"))
                    .collect::<Result<_, _>>()?;
                Frame::Demand { applied, keys }
            }
            kind::CONTINUATION => {
                return Err(FrameError::Continuation(
                    "a continuation is only reassembled by the codec".into(),
                ))
            }
            other => return Err(FrameError::Kind(other)),
        };
        if b.has_remaining() {
            return Err(FrameError::Trailing(b.remaining()));
        }
        Ok(frame)
    }
}

/// Bytes of a continued body in one continuation frame (its body is the continued kind and
/// this part).
pub(crate) const CONTINUATION_PART: usize = MAX_BODY - 1;

/// Writes an admin body longer than [`MAX_BODY`]: continuation frames of
/// [`CONTINUATION_PART`] bytes each, then the frame of `kind` with the rest (1 to
/// [`MAX_BODY`] bytes). A body above [`MAX_CONTINUED_BODY`] is a caller bug; it is truncated
/// (the receiver then refuses the content).
fn encode_continued(dst: &mut BytesMut, kind: u8, body: &[u8]) {
    let mut rest = &body[..body.len().min(MAX_CONTINUED_BODY)];
    dst.reserve(rest.len() + (rest.len() / CONTINUATION_PART + 1) * (HEADER_LEN + 1));
    while rest.len() > MAX_BODY {
        let (part, tail) = rest.split_at(CONTINUATION_PART);
        let start = begin(dst, kind::CONTINUATION);
        dst.put_u8(kind);
        dst.put_slice(part);
        finish(dst, start);
        rest = tail;
    }
    let start = begin(dst, kind);
    dst.put_slice(rest);
    finish(dst, start);
}

fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str8(dst: &mut BytesMut, s: &str) {
    let s = truncate_str(s, u8::MAX as usize);
    dst.put_u8(s.len() as u8);
    dst.put_slice(s.as_bytes());
}

/// Writes a frame header with a zero body length; returns where the frame starts.
fn begin(dst: &mut BytesMut, kind: u8) -> usize {
    let start = dst.len();
    dst.put_u16(MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(kind);
    dst.put_u32(0);
    start
}

/// Fills in the body length of the frame written from `start`.
fn finish(dst: &mut BytesMut, start: usize) {
    let body_len = (dst.len() - start - HEADER_LEN) as u32;
    dst[start + 4..start + 8].copy_from_slice(&body_len.to_be_bytes());
}

fn put_copy_record(dst: &mut BytesMut, key: &[u8], seq: u64, bytes: &[u8]) {
    put_bytes16(dst, key);
    dst.put_u64(seq);
    let n = bytes.len().min(MAX_BODY / 2);
    dst.put_u32(n as u32);
    dst.put_slice(&bytes[..n]);
}

fn put_bytes16(dst: &mut BytesMut, b: &[u8]) {
    let n = b.len().min(MAX_FIELD);
    dst.put_u16(n as u16);
    dst.put_slice(&b[..n]);
}

fn put_addr(dst: &mut BytesMut, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(a.port());
}

fn take(r: &mut Bytes, n: usize, what: &'static str) -> Result<Bytes, FrameError> {
    if r.remaining() < n {
        return Err(FrameError::Truncated(what));
    }
    Ok(r.split_to(n))
}

fn get_u8(r: &mut Bytes, what: &'static str) -> Result<u8, FrameError> {
    r.try_get_u8().map_err(|_| FrameError::Truncated(what))
}

fn get_u16(r: &mut Bytes, what: &'static str) -> Result<u16, FrameError> {
    r.try_get_u16().map_err(|_| FrameError::Truncated(what))
}

fn get_u32(r: &mut Bytes, what: &'static str) -> Result<u32, FrameError> {
    r.try_get_u32().map_err(|_| FrameError::Truncated(what))
}

fn get_u64(r: &mut Bytes, what: &'static str) -> Result<u64, FrameError> {
    r.try_get_u64().map_err(|_| FrameError::Truncated(what))
}

fn get_bytes16(r: &mut Bytes, what: &'static str) -> Result<Bytes, FrameError> {
    let n = get_u16(r, what)? as usize;
    take(r, n, what)
}

fn get_str8(r: &mut Bytes, what: &'static str) -> Result<String, FrameError> {
    let n = get_u8(r, what)? as usize;
    let b = take(r, n, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| FrameError::Invalid(what))
}

fn get_addr(r: &mut Bytes, what: &'static str) -> Result<SocketAddr, FrameError> {
    let ip = match get_u8(r, what)? {
        4 => {
            let b = take(r, 4, what)?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        6 => {
            let b = take(r, 16, what)?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&b);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(FrameError::Invalid(what)),
    };
    Ok(SocketAddr::new(ip, get_u16(r, what)?))
}

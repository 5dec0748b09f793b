//! A `tokio_util` codec for [`Frame`]s with bounded buffering, and the reassembly of admin
//! bodies sent in several frames.

use crate::frame::kind;
use crate::{Frame, FrameError, HEADER_LEN, MAGIC, MAX_BODY, MAX_CONTINUED_BODY, VERSION};
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Encodes and decodes frames. The header is checked before the body is buffered, so a peer
/// announcing an oversized frame is refused without allocating for it.
///
/// Continuations: an admin request or reply body ([`Frame::Admin`], [`Frame::AdminReply`])
/// longer than [`MAX_BODY`] goes as continuation frames (kind 16, body: the continued kind u8
/// and a part) followed by the frame itself with the last part. The decoder appends each part
/// and yields the frame with the whole body once its own frame arrives; callers never see a
/// continuation. The reassembled body is bounded by [`MAX_CONTINUED_BODY`], checked from each
/// continuation's header before its body is buffered. A continuation of another kind, one of a
/// kind different from the parts before it, any other frame between the parts and their frame,
/// an empty part, or the connection ending inside a continued body is a
/// [`FrameError::Continuation`] (framing is lost: the connection is closed).
#[derive(Clone, Debug)]
pub struct FrameCodec {
    /// The continued kind and the parts received so far.
    pending: Option<(u8, BytesMut)>,
    /// The largest reassembled body accepted.
    max_continued: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with nothing pending, accepting continued bodies up to [`MAX_CONTINUED_BODY`].
    pub fn new() -> Self {
        Self::with_max_continued(MAX_CONTINUED_BODY)
    }

    /// A codec for a connection not authenticated yet: it refuses continuations, so a peer
    /// that has not said a valid hello cannot make the receiver buffer a continued body.
    /// Raise the limit with [`FrameCodec::set_max_continued`] once the hello is accepted.
    pub fn unauthenticated() -> Self {
        Self::with_max_continued(0)
    }

    /// Accepts reassembled bodies up to `limit` bytes from now on (at most
    /// [`MAX_CONTINUED_BODY`]).
    pub fn set_max_continued(&mut self, limit: usize) {
        self.max_continued = limit.min(MAX_CONTINUED_BODY);
    }

    /// Bytes of a continued body received so far (0 when no continuation is pending): part
    /// of what a connection holds of a frame not yet complete (see [`crate::deadline`]).
    pub fn continued_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// A codec accepting reassembled bodies up to `limit` bytes (at most
    /// [`MAX_CONTINUED_BODY`]; tests use small limits).
    pub fn with_max_continued(limit: usize) -> Self {
        Self {
            pending: None,
            max_continued: limit.min(MAX_CONTINUED_BODY),
        }
    }
}

fn continuation(msg: String) -> FrameError {
    FrameError::Continuation(msg)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let magic = u16::from_be_bytes([src[0], src[1]]);
            if magic != MAGIC {
                return Err(FrameError::Magic(magic));
            }
            if src[2] != VERSION {
                return Err(FrameError::Version(src[2]));
            }
            let kind = src[3];
            let len = u32::from_be_bytes([src[4], src[5], src[6], src[7]]) as usize;
            if len > MAX_BODY {
                return Err(FrameError::TooLong(len));
            }
            let pending_len = self.pending.as_ref().map_or(0, |(_, b)| b.len());
            if kind == kind::CONTINUATION
                && pending_len + len.saturating_sub(1) > self.max_continued
            {
                return Err(continuation(format!(
                    "the continued body exceeds {} bytes",
                    self.max_continued
                )));
            }
            if src.len() < HEADER_LEN + len {
                src.reserve(HEADER_LEN + len - src.len());
                return Ok(None);
            }
            src.advance(HEADER_LEN);
            let mut body = src.split_to(len);
            if kind == kind::CONTINUATION {
                if body.is_empty() {
                    return Err(continuation("a continuation without its kind".into()));
                }
                let of = body[0];
                body.advance(1);
                if of != kind::ADMIN && of != kind::ADMIN_REPLY {
                    return Err(continuation(format!("kind {of} cannot be continued")));
                }
                if body.is_empty() {
                    return Err(continuation("an empty continuation part".into()));
                }
                match &mut self.pending {
                    Some((k, _)) if *k != of => {
                        return Err(continuation(format!(
                            "a continuation of kind {of} inside one of kind {k}"
                        )))
                    }
                    Some((_, parts)) => parts.extend_from_slice(&body),
                    None => self.pending = Some((of, body)),
                }
                continue;
            }
            let body = match self.pending.take() {
                None => body.freeze(),
                Some((k, mut parts)) if k == kind => {
                    if parts.len() + body.len() > self.max_continued {
                        return Err(continuation(format!(
                            "the continued body exceeds {} bytes",
                            self.max_continued
                        )));
                    }
                    parts.extend_from_slice(&body);
                    parts.freeze()
                }
                Some((k, _)) => {
                    return Err(continuation(format!(
                        "a frame of kind {kind} interrupts a continued body of kind {k}"
                    )))
                }
            };
            return Frame::decode_body(kind, body).map(Some);
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if !src.is_empty() => Err(FrameError::Io("bytes remaining on stream".into())),
            None if self.pending.is_some() => Err(continuation(
                "the connection ended inside a continued body".into(),
            )),
            None => Ok(None),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        item.encode(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        item.encode(dst);
        Ok(())
    }
}

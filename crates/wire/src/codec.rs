//! A `tokio_util` codec for [`Frame`]s with bounded buffering.

use crate::{Frame, FrameError, HEADER_LEN, MAGIC, MAX_BODY, VERSION};
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Encodes and decodes frames. The header is checked before the body is buffered, so a peer
/// announcing an oversized frame is refused without allocating for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
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
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Frame::decode_body(kind, body).map(Some)
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

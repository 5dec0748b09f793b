use super::*;
use crate::FrameCodec;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::net::SocketAddr;
use tokio_util::codec::Decoder;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::from((o, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::from((o, p))),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            "[a-z0-9-]{0,40}",
            any::<u8>(),
            any::<u8>(),
            any::<bool>(),
            "[ -~]{0,64}"
        )
            .prop_map(|(name, a, b, s, token)| Frame::Hello {
                role: if s { Role::Steer } else { Role::Admin },
                name,
                min_version: a,
                max_version: b,
                token,
            }),
        "[a-z0-9-]{0,40}".prop_map(|node| Frame::HelloAck { node }),
        (any::<u32>(), "[a-z0-9-]{0,40}")
            .prop_map(|(route, instance)| Frame::Bind { route, instance }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(route, last_seq, incarnation)| {
            Frame::Bound {
                route,
                last_seq,
                incarnation,
            }
        }),
        (
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u8>(),
                any::<bool>()
            ),
            addr(),
            bytes(20),
            bytes(300)
        )
            .prop_map(
                |((route, seq, now_us, kind, shadow), client, key, payload)| {
                    Frame::Signal(SignalFrame {
                        route,
                        seq,
                        now_us,
                        kind,
                        flags: if shadow { SIGNAL_SHADOW } else { 0 },
                        client,
                        key,
                        payload,
                    })
                }
            ),
        (
            "[a-z0-9-]{0,40}",
            proptest::collection::vec(bytes(12), 0..20),
            any::<bool>()
        )
            .prop_map(|(instance, keys, last)| Frame::Manifest {
                instance,
                keys,
                last
            }),
        (bytes(20), any::<u64>(), bytes(2000)).prop_map(|(key, seq, bytes)| Frame::CopyRecord {
            key,
            seq,
            bytes
        }),
        (bytes(20), any::<u64>()).prop_map(|(key, seq)| Frame::Tombstone { key, seq }),
        (any::<u64>(), proptest::collection::vec(bytes(40), 0..50))
            .prop_map(|(applied, keys)| Frame::Demand { applied, keys }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u128>(), 0..300)
        )
            .prop_map(|(records, digest)| Frame::CopyEnd { records, digest }),
        (any::<u32>(), any::<u64>(), any::<u8>(), addr(), bytes(300)).prop_map(
            |(route, seq, class, client, payload)| {
                Frame::Output(OutputFrame {
                    route,
                    seq,
                    class,
                    client,
                    payload,
                })
            }
        ),
        bytes(100).prop_map(Frame::Admin),
        bytes(100).prop_map(Frame::AdminReply),
        (bytes(20), any::<u64>(), bytes(2000)).prop_map(|(key, seq, bytes)| Frame::DumpRecord {
            key,
            seq,
            bytes
        }),
        any::<u64>().prop_map(|count| Frame::DumpEnd { count }),
        (any::<u16>(), ".{0,50}").prop_map(|(code, message)| Frame::Error { code, message }),
    ]
}

proptest! {
    /// The borrowed encoder of a copy record writes exactly what the frame's encoder writes.
    #[test]
    fn a_borrowed_copy_record_encodes_like_the_frame(
        key in bytes(40),
        seq in any::<u64>(),
        body in bytes(2000),
    ) {
        let mut a = BytesMut::new();
        Frame::CopyRecord { key: key.clone(), seq, bytes: body.clone() }.encode(&mut a);
        let mut b = BytesMut::from(&b"prefix"[..]);
        Frame::encode_copy_record(&mut b, &key, seq, &body);
        prop_assert_eq!(&b[6..], &a[..]);
    }

    #[test]
    fn frames_round_trip_through_the_codec(frames in proptest::collection::vec(frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut codec = FrameCodec::new();
        let mut got = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            got.push(f);
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic the decoder: they decode, wait for more, or are refused.
    #[test]
    fn arbitrary_bytes_never_panic(
        raw in proptest::collection::vec(any::<u8>(), 0..600),
        header in any::<bool>(),
        kind in 0u8..20,
    ) {
        // Half the cases start with a valid magic, version and a plausible length, so the body
        // decoders see the arbitrary bytes too.
        let mut buf = BytesMut::new();
        if header {
            buf.extend_from_slice(&[0x68, 0x66, crate::VERSION, kind]);
            buf.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        }
        buf.extend_from_slice(&raw);
        let mut codec = FrameCodec::new();
        for _ in 0..raw.len() + 1 {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// A valid header over an arbitrary body never panics either (exercises every body decoder).
    #[test]
    fn arbitrary_bodies_never_panic(kind in 0u8..20, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Frame::decode_body(kind, Bytes::from(body));
    }
}

#[test]
fn frames_split_across_reads_are_reassembled() {
    let f = Frame::Bind {
        route: 7,
        instance: "mme-1".into(),
    };
    let mut whole = BytesMut::new();
    f.encode(&mut whole);
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    for (i, b) in whole.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = codec.decode(&mut buf).unwrap();
        assert_eq!(got.is_some(), i == whole.len() - 1);
        if let Some(g) = got {
            assert_eq!(g, f);
        }
    }
}

#[test]
fn oversized_and_foreign_frames_are_refused_before_buffering() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(&[0x68, 0x66, crate::VERSION, 5, 0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        codec.decode(&mut buf),
        Err(FrameError::TooLong(u32::MAX as usize))
    );
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert!(matches!(codec.decode(&mut buf), Err(FrameError::Magic(_))));
    let mut buf = BytesMut::from(&[0x68, 0x66, 9, 5, 0, 0, 0, 0][..]);
    assert_eq!(codec.decode(&mut buf), Err(FrameError::Version(9)));
    let mut zero = BytesMut::from(&[0x68, 0x66, crate::VERSION, 0, 0, 0, 0, 0][..]);
    assert_eq!(codec.decode(&mut zero), Err(FrameError::Kind(0)));
}

/// A body of `n` bytes that is not periodic in the part size (a misplaced part would show).
fn big_body(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// The frame kinds and body lengths in an encoded stream.
fn frame_headers(mut b: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        out.push((b[3], len));
        b = &b[HEADER_LEN + len..];
    }
    out
}

fn continuation_frame(of: u8, part: &[u8]) -> BytesMut {
    let mut b = BytesMut::from(&[0x68, 0x66, crate::VERSION, 16][..]);
    b.extend_from_slice(&((part.len() + 1) as u32).to_be_bytes());
    b.extend_from_slice(&[of]);
    b.extend_from_slice(part);
    b
}

#[test]
fn an_admin_body_above_one_frame_is_split_into_continuations_and_reassembled() {
    let body = big_body(2 * MAX_BODY + 12_345);
    let mut buf = BytesMut::new();
    Frame::AdminReply(body.clone()).encode(&mut buf);
    Frame::Admin(Bytes::from_static(b"{}")).encode(&mut buf);
    let heads = frame_headers(&buf);
    assert_eq!(
        heads,
        vec![
            (16, MAX_BODY),
            (16, MAX_BODY),
            (8, body.len() - 2 * (MAX_BODY - 1)),
            (7, 2)
        ]
    );
    // Fed in pieces that straddle the frame boundaries.
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::new();
    let mut got = Vec::new();
    for piece in buf.chunks(300_000) {
        src.extend_from_slice(piece);
        while let Some(f) = codec.decode(&mut src).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(
        got,
        vec![
            Frame::AdminReply(body),
            Frame::Admin(Bytes::from_static(b"{}"))
        ]
    );
    assert!(src.is_empty());
}

#[test]
fn a_body_of_exactly_one_frame_is_not_continued() {
    let mut buf = BytesMut::new();
    Frame::Admin(big_body(MAX_BODY)).encode(&mut buf);
    assert_eq!(frame_headers(&buf), vec![(7, MAX_BODY)]);
    let mut buf = BytesMut::new();
    Frame::Admin(big_body(MAX_BODY + 1)).encode(&mut buf);
    assert_eq!(frame_headers(&buf), vec![(16, MAX_BODY), (7, 2)]);
    let got = FrameCodec::new().decode(&mut buf).unwrap();
    assert_eq!(got, Some(Frame::Admin(big_body(MAX_BODY + 1))));
}

#[test]
fn the_reassembled_body_is_bounded_before_the_part_is_buffered() {
    let mut codec = FrameCodec::with_max_continued(10);
    let mut buf = continuation_frame(7, b"012345");
    assert_eq!(codec.decode(&mut buf), Ok(None));
    // The next part's header alone is enough to refuse it: 6 + 5 > 10.
    let mut buf = BytesMut::from(&[0x68, 0x66, crate::VERSION, 16, 0, 0, 0, 6][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        FrameError::Continuation("the continued body exceeds 10 bytes".into())
    );
    // The final frame counts too.
    let mut codec = FrameCodec::with_max_continued(10);
    let mut buf = continuation_frame(8, b"0123456789");
    Frame::AdminReply(Bytes::from_static(b"x")).encode(&mut buf);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::Continuation(m)) if m.contains("exceeds 10 bytes")
    ));
    // Exactly at the bound is accepted.
    let mut codec = FrameCodec::with_max_continued(10);
    let mut buf = continuation_frame(8, b"012345678");
    Frame::AdminReply(Bytes::from_static(b"9")).encode(&mut buf);
    assert_eq!(
        codec.decode(&mut buf),
        Ok(Some(Frame::AdminReply(Bytes::from_static(b"0123456789"))))
    );
}

#[test]
fn malformed_continuations_are_refused_with_a_clear_error() {
    let refused = |mut buf: BytesMut| -> String {
        let mut codec = FrameCodec::new();
        match codec.decode(&mut buf) {
            Ok(Some(f)) => panic!("decoded {f:?}"),
            Ok(None) => match codec.decode_eof(&mut buf) {
                Err(FrameError::Continuation(m)) => m,
                other => panic!("not refused: {other:?}"),
            },
            Err(FrameError::Continuation(m)) => m,
            Err(e) => panic!("refused for another reason: {e}"),
        }
    };
    // Only admin bodies are continued.
    assert_eq!(
        refused(continuation_frame(5, b"abc")),
        "kind 5 cannot be continued"
    );
    // A continuation names its kind and carries at least one byte.
    assert_eq!(
        refused(BytesMut::from(
            &[0x68, 0x66, crate::VERSION, 16, 0, 0, 0, 0][..]
        )),
        "a continuation without its kind"
    );
    assert_eq!(
        refused(continuation_frame(7, b"")),
        "an empty continuation part"
    );
    // Parts of one body are all of one kind.
    let mut b = continuation_frame(7, b"abc");
    b.extend_from_slice(&continuation_frame(8, b"def"));
    assert_eq!(refused(b), "a continuation of kind 8 inside one of kind 7");
    // Nothing comes between the parts and their frame.
    let mut b = continuation_frame(7, b"abc");
    Frame::DumpEnd { count: 1 }.encode(&mut b);
    assert_eq!(
        refused(b),
        "a frame of kind 10 interrupts a continued body of kind 7"
    );
    let mut b = continuation_frame(7, b"abc");
    Frame::AdminReply(Bytes::from_static(b"{}")).encode(&mut b);
    assert_eq!(
        refused(b),
        "a frame of kind 8 interrupts a continued body of kind 7"
    );
    // The connection ending inside a body.
    assert_eq!(
        refused(continuation_frame(7, b"abc")),
        "the connection ended inside a continued body"
    );
    // And a continuation is never a frame of its own.
    assert!(matches!(
        Frame::decode_body(16, Bytes::from_static(b"\x07abc")),
        Err(FrameError::Continuation(_))
    ));
}

/// A connection not authenticated yet refuses continuations from their header on (a peer
/// that has not said a valid hello cannot make the receiver buffer a continued body); once
/// the limit is raised the same part is taken.
#[test]
fn an_unauthenticated_codec_refuses_continuations_until_raised() {
    let mut codec = FrameCodec::unauthenticated();
    let mut header_only = BytesMut::from(&[0x68, 0x66, crate::VERSION, 16, 0, 0, 0, 6][..]);
    assert!(matches!(
        codec.decode(&mut header_only),
        Err(FrameError::Continuation(_))
    ));
    let mut codec = FrameCodec::unauthenticated();
    codec.set_max_continued(crate::MAX_CONTINUED_BODY);
    let mut buf = continuation_frame(7, b"01234");
    assert_eq!(codec.decode(&mut buf), Ok(None));
}

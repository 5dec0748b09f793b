//! How long a connection may stall while its next frame is awaited (`docs/wire.md`,
//! "Timeouts").
//!
//! Two limits, checked only while the reader is waiting for a frame (never while the server is
//! busy answering one):
//! - **a frame begun must be complete** within [`Deadlines::frame`] (default
//!   [`FRAME_TIMEOUT`]): once a byte of a frame has arrived, its last byte must follow in
//!   time. Each part of a continued body counts as a frame, so a long body that keeps coming is
//!   never cut, and a peer that sends half a header and stops is;
//! - **an idle connection is closed** after [`Deadlines::idle`] (default [`IDLE_TIMEOUT`] for
//!   control connections; `None` for the steer's signal link to a node, which is legitimately
//!   silent while no traffic flows).
//!
//! [`next_within`] reads the next item of a frame reader ([`Framed`], [`FramedRead`], or
//! [`ReadyChunks`] of one) within those limits; it looks at the reader's buffers at most every
//! quarter of the frame limit (at most every second), so a stall is noticed at most that late.

use crate::{FrameCodec, FrameError};
use futures::stream::{ReadyChunks, Stream, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedRead};

/// Default time a frame (or one part of a continued body) has from its first byte to its last.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a control connection may wait for its next request before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The limits of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// A frame begun must be complete within this long.
    pub frame: Duration,
    /// Waiting this long for the next frame with nothing of it received closes the connection
    /// (`None`: never).
    pub idle: Option<Duration>,
}

impl Deadlines {
    /// Control connections (admin, peer, steer control, controller): both limits.
    pub const CONTROL: Self = Self {
        frame: FRAME_TIMEOUT,
        idle: Some(IDLE_TIMEOUT),
    };
    /// The steer's signal link to a node (both ends): partial frames only, never idle.
    pub const LINK: Self = Self {
        frame: FRAME_TIMEOUT,
        idle: None,
    };

    /// Control limits of `frame_ms` and `idle_ms` (0: the defaults).
    pub fn control_ms(frame_ms: u64, idle_ms: u64) -> Self {
        Self {
            frame: ms_or(frame_ms, FRAME_TIMEOUT),
            idle: Some(ms_or(idle_ms, IDLE_TIMEOUT)),
        }
    }

    /// Link limits with a frame limit of `frame_ms` (0: the default).
    pub fn link_ms(frame_ms: u64) -> Self {
        Self {
            frame: ms_or(frame_ms, FRAME_TIMEOUT),
            idle: None,
        }
    }
}

fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// Why a connection was given up while its next frame was awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stall {
    /// Part of a frame arrived and the rest did not follow in time.
    #[error("a frame begun {waited_ms} ms ago is still incomplete (limit {limit_ms} ms)")]
    PartialFrame {
        /// How long it had been waited for.
        waited_ms: u64,
        /// The limit.
        limit_ms: u64,
    },
    /// Nothing arrived for the idle limit.
    #[error("idle for {idle_ms} ms (limit)")]
    Idle {
        /// The limit.
        idle_ms: u64,
    },
}

impl From<Stall> for FrameError {
    fn from(s: Stall) -> Self {
        FrameError::Io(s.to_string())
    }
}

/// Connections closed because they stalled, by reason (as stats replies report them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClosedConnections {
    /// A frame begun was not complete within the frame limit.
    pub closed_partial_frame: u64,
    /// Nothing arrived for the idle limit.
    pub closed_idle: u64,
}

/// The live counters behind [`ClosedConnections`].
#[derive(Debug, Default)]
pub struct StallCounters {
    partial_frame: AtomicU64,
    idle: AtomicU64,
}

impl StallCounters {
    /// Counts (and logs) the close a stall causes and turns the stall into the error that
    /// closes the connection.
    pub fn closes<T>(&self, r: Result<T, Stall>) -> Result<T, FrameError> {
        r.map_err(|stall| {
            let counter = match stall {
                Stall::PartialFrame { .. } => &self.partial_frame,
                Stall::Idle { .. } => &self.idle,
            };
            counter.fetch_add(1, Relaxed);
            tracing::info!(%stall, "connection closed");
            stall.into()
        })
    }

    /// The counters now.
    pub fn snapshot(&self) -> ClosedConnections {
        ClosedConnections {
            closed_partial_frame: self.partial_frame.load(Relaxed),
            closed_idle: self.idle.load(Relaxed),
        }
    }
}

/// What a reader holds of a frame it has not completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Bytes read from the socket and not yet decoded into a frame.
    pub buffered: usize,
    /// Bytes of a continued body already reassembled.
    pub continued: usize,
}

impl Held {
    /// Whether part of a frame has arrived.
    pub fn is_partial(&self) -> bool {
        self.buffered > 0 || self.continued > 0
    }
}

/// A frame reader whose buffers can be looked at.
pub trait HeldFrames {
    /// What it holds of an incomplete frame now.
    fn held(&self) -> Held;
}

impl<T> HeldFrames for FramedRead<T, FrameCodec> {
    fn held(&self) -> Held {
        Held {
            buffered: self.read_buffer().len(),
            continued: self.decoder().continued_len(),
        }
    }
}

impl<T> HeldFrames for Framed<T, FrameCodec> {
    fn held(&self) -> Held {
        Held {
            buffered: self.read_buffer().len(),
            continued: self.codec().continued_len(),
        }
    }
}

impl<S: Stream + HeldFrames> HeldFrames for ReadyChunks<S> {
    fn held(&self) -> Held {
        self.get_ref().held()
    }
}

/// The next item of `s` (`None`: the connection ended), or the stall that closes it.
pub async fn next_within<S>(s: &mut S, d: Deadlines) -> Result<Option<S::Item>, Stall>
where
    S: Stream + HeldFrames + Unpin,
{
    let check = (d.frame / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let called = Instant::now();
    // When an incomplete frame was first seen, and how much of a continued body was held
    // then (a part completing starts the clock again).
    let mut begun: Option<(Instant, usize)> = None;
    loop {
        let held = s.held();
        let now = Instant::now();
        let wait = if held.is_partial() {
            let since = match begun {
                Some((t, continued)) if continued == held.continued => t,
                _ => {
                    begun = Some((now, held.continued));
                    now
                }
            };
            let waited = now - since;
            if waited >= d.frame {
                return Err(Stall::PartialFrame {
                    waited_ms: waited.as_millis() as u64,
                    limit_ms: d.frame.as_millis() as u64,
                });
            }
            (d.frame - waited).min(check)
        } else {
            begun = None;
            match d.idle {
                Some(idle) => {
                    let waited = now - called;
                    if waited >= idle {
                        return Err(Stall::Idle {
                            idle_ms: idle.as_millis() as u64,
                        });
                    }
                    (idle - waited).min(check)
                }
                None => check,
            }
        };
        tokio::select! {
            biased;
            item = s.next() => return Ok(item),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;
    use tokio::io::AsyncWriteExt;

    fn limits(frame_ms: u64, idle_ms: Option<u64>) -> Deadlines {
        Deadlines {
            frame: Duration::from_millis(frame_ms),
            idle: idle_ms.map(Duration::from_millis),
        }
    }

    #[tokio::test]
    async fn half_a_frame_is_given_up_and_a_whole_one_is_read() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut r = FramedRead::new(a, FrameCodec::new());
        let mut buf = bytes::BytesMut::new();
        Frame::Admin(bytes::Bytes::from_static(b"{}")).encode(&mut buf);
        b.write_all(&buf).await.unwrap();
        let got = next_within(&mut r, limits(200, Some(60_000)))
            .await
            .unwrap();
        assert!(matches!(got, Some(Ok(Frame::Admin(_)))), "{got:?}");
        // Half a header, then nothing.
        b.write_all(&buf[..5]).await.unwrap();
        let t = Instant::now();
        let e = next_within(&mut r, limits(200, Some(60_000)))
            .await
            .unwrap_err();
        assert!(matches!(e, Stall::PartialFrame { .. }), "{e}");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_silent_connection_is_idle_only_where_idleness_counts() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut r = FramedRead::new(a, FrameCodec::new());
        let e = next_within(&mut r, limits(1_000, Some(150)))
            .await
            .unwrap_err();
        assert!(matches!(e, Stall::Idle { .. }), "{e}");
        // A link is never idle: still waiting after several frame limits.
        let waited = tokio::time::timeout(
            Duration::from_millis(400),
            next_within(&mut r, limits(50, None)),
        )
        .await;
        assert!(waited.is_err(), "a silent link was closed: {waited:?}");
    }

    #[tokio::test]
    async fn a_continued_body_that_keeps_coming_is_not_cut() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut r = FramedRead::new(a, FrameCodec::new());
        let sender = tokio::spawn(async move {
            // Six continuation parts, 60 ms apart: 360 ms in all, each part well within
            // the 150 ms limit; the second half of each part's header comes 20 ms later.
            for i in 0..6u8 {
                let body = [crate::frame::kind::ADMIN, b'a' + i];
                let mut f = vec![b'h', b'f', crate::VERSION, crate::frame::kind::CONTINUATION];
                f.extend_from_slice(&(body.len() as u32).to_be_bytes());
                f.extend_from_slice(&body);
                b.write_all(&f[..4]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.write_all(&f[4..]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            let mut last = bytes::BytesMut::new();
            Frame::Admin(bytes::Bytes::from_static(b"g")).encode(&mut last);
            b.write_all(&last).await.unwrap();
            b
        });
        let got = next_within(&mut r, limits(150, Some(60_000))).await;
        match got {
            Ok(Some(Ok(Frame::Admin(body)))) => assert_eq!(&body[..], b"abcdefg"),
            other => panic!("{other:?}"),
        }
        drop(sender.await);
    }
}

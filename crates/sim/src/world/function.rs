//! The simulation's function: a per-key counter with an expiry timer.

use super::*;

/// Op byte of a create (a re-attach when the session exists: it reads the old counter).
pub const OP_CREATE: u8 = 1;
/// Op byte of an update (adds one).
pub const OP_UPDATE: u8 = 2;
/// Op byte of a delete.
pub const OP_DELETE: u8 = 3;
/// Op byte of a stateless ping.
pub const OP_PING: u8 = 4;
/// A session goes idle this long after its last change, and expires as long after that.
pub const EXPIRY_US: u64 = 40_000;

/// The simulation's function: a per-key counter. A signal is `[op, key]`; a create starts the
/// counter at 0 (or re-attaches: old value + 1000), an update adds one, a delete removes it, a
/// ping is stateless. Every signal answers `[op, key, value (u32 BE, u32::MAX if none)]`. The
/// timer marks a session idle [`EXPIRY_US`] after its last change and deletes it as long
/// after that, so ticks change sessions (taking the tick's seq) and delete them.
pub struct SimCounter;

/// A [`SimCounter`] session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The counter.
    pub value: u32,
    /// Steer time of the last change (µs).
    pub last_us: u64,
    /// Whether the timer fired once already.
    pub idle: bool,
}

/// The session key of key number `id`.
pub fn key_of(id: u8) -> Bytes {
    Bytes::copy_from_slice(&[b'k', id])
}

impl Function for SimCounter {
    type Session = Counter;
    type Prepared = (u8, u8);

    fn name(&self) -> &'static str {
        "sim-counter"
    }

    fn classify(&self, d: &[u8]) -> Result<Classified, MalformedSignal> {
        let (op, key) = self.prepare(d)?;
        let kind = match op {
            OP_CREATE => SignalKind::Create,
            OP_UPDATE => SignalKind::Update,
            OP_DELETE => SignalKind::Delete,
            _ => SignalKind::Stateless,
        };
        let key = if kind == SignalKind::Stateless {
            Bytes::new()
        } else {
            key_of(key)
        };
        Ok(Classified { kind, key })
    }

    fn prepare(&self, d: &[u8]) -> Result<(u8, u8), MalformedSignal> {
        match d {
            [op @ 1..=4, key] => Ok((*op, *key)),
            [_, _] => Err(MalformedSignal::InvalidField { field: "op" }),
            _ => Err(MalformedSignal::Truncated {
                needed: 2,
                had: d.len(),
            }),
        }
    }

    fn process(&self, s: &mut Option<Counter>, p: &(u8, u8), stamp: Stamp, out: &mut Vec<Output>) {
        match p.0 {
            OP_CREATE => {
                let value = s.map_or(0, |c| c.value.wrapping_add(1000));
                *s = Some(Counter {
                    value,
                    last_us: stamp.now_us,
                    idle: false,
                });
            }
            OP_UPDATE => {
                if let Some(c) = s.as_mut() {
                    c.value = c.value.wrapping_add(1);
                    c.last_us = stamp.now_us;
                    c.idle = false;
                }
            }
            OP_DELETE => *s = None,
            _ => {}
        }
        let value = s.map_or(u32::MAX, |c| c.value);
        let mut b = vec![p.0, p.1];
        b.extend_from_slice(&value.to_be_bytes());
        out.push(Output {
            msg_type: u16::from(p.0),
            bytes: b.into(),
        });
    }

    fn deadline_us(&self, c: &Counter) -> Option<u64> {
        Some(c.last_us + EXPIRY_US)
    }

    fn on_timer(&self, s: &mut Option<Counter>, stamp: Stamp, out: &mut Vec<Output>) {
        match s {
            Some(c) if !c.idle => {
                c.idle = true;
                c.last_us = stamp.now_us;
            }
            _ => *s = None,
        }
        out.push(Output {
            msg_type: 99,
            bytes: Bytes::new(),
        });
    }

    fn encode_session(&self, c: &Counter, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&c.value.to_be_bytes());
        buf.extend_from_slice(&c.last_us.to_be_bytes());
        buf.push(u8::from(c.idle));
    }

    fn decode_session(&self, b: &[u8]) -> Result<Counter, BadRecord> {
        let bad = || BadRecord {
            reason: format!("{} bytes, expected 13", b.len()),
        };
        if b.len() != 13 {
            return Err(bad());
        }
        let value = u32::from_be_bytes(b[0..4].try_into().map_err(|_| bad())?);
        let last_us = u64::from_be_bytes(b[4..12].try_into().map_err(|_| bad())?);
        Ok(Counter {
            value,
            last_us,
            idle: b[12] != 0,
        })
    }

    fn default_ruleset(&self) -> Ruleset {
        Ruleset::default()
    }

    fn msg_type_name(&self, _: u16) -> &'static str {
        "sim-counter"
    }
}

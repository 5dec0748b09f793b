//! Copy planning for a move (DESIGN.md "Live move", step 3; seed 000 R24–R27): which sessions
//! are streamed in which order, and whether a plan's limits can be met at all.

use crate::{SessionKey, SessionTable};

/// The order sessions are copied in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyOrder {
    /// Highest change frequency first: the sessions most likely to receive updates while the
    /// copy runs arrive first, so the destination buffers least (the default).
    HotFirst,
    /// A seeded pseudo-random order (the comparison baseline).
    Random {
        /// Seed of the order.
        seed: u64,
    },
    /// Ascending key order.
    Key,
}

/// The manifest of a move: every session present at move start, in copy order, with its size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Keys in the order they will be streamed.
    pub keys: Vec<SessionKey>,
    /// Bytes of records (keys and values) at planning time.
    pub bytes: u64,
}

/// Plans the copy of `table` at steer time `now_us`. Visits one shard at a time, copying
/// only keys (a refcount each), never record bytes.
pub fn manifest(table: &SessionTable, order: CopyOrder, now_us: u64) -> Manifest {
    let half_life = table.half_life_us();
    let mut entries: Vec<(SessionKey, f32, u64)> = Vec::with_capacity(table.len());
    let mut bytes = 0u64;
    table.scan(|key, rec| {
        bytes += (key.len() + rec.bytes.len()) as u64;
        let tiebreak = match order {
            CopyOrder::Random { seed } => mix(seed ^ crate::key_hash(key)),
            _ => 0,
        };
        entries.push((key.clone(), rec.freq.at(now_us, half_life), tiebreak));
    });
    match order {
        CopyOrder::HotFirst => {
            entries.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)))
        }
        CopyOrder::Random { .. } => {
            entries.sort_unstable_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)))
        }
        CopyOrder::Key => entries.sort_unstable_by(|a, b| a.0.cmp(&b.0)),
    }
    Manifest {
        keys: entries.into_iter().map(|e| e.0).collect(),
        bytes,
    }
}

/// A 64-bit finaliser (splitmix64): spreads a seed and a key hash into an ordering value.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The longest lead between steering and the copy's records (seed 000 R3), ms.
pub const MAX_LEAD_MS: u64 = 5_000;

/// The limits a copy must respect (R24–R27). `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CopyPlan {
    /// Bytes per second on the node-to-node link.
    pub max_bandwidth_bps: Option<u64>,
    /// Share of one core the copy may use, in percent (1..=100).
    pub max_cpu_percent: Option<u32>,
    /// The copy must finish within this many milliseconds.
    pub deadline_ms: Option<u64>,
}

/// Why a plan is refused up front.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Infeasible {
    /// A limit is zero or out of range.
    #[error("invalid plan: {0}")]
    Invalid(&'static str),
    /// The limits cannot carry the bytes within the deadline.
    #[error(
        "{bytes} bytes cannot be copied within {deadline_ms} ms: the plan allows at most \
         {max_bytes} bytes in that time (limit: {binding})"
    )]
    Deadline {
        /// Bytes to copy.
        bytes: u64,
        /// The deadline.
        deadline_ms: u64,
        /// Bytes the plan's rate carries within the deadline.
        max_bytes: u64,
        /// Which limit binds.
        binding: &'static str,
    },
}

impl CopyPlan {
    /// The rate (bytes/s) the copy may use, given what one full core copies (`core_bps`,
    /// measured or estimated by the node), and which limit binds.
    pub fn rate_bps(&self, core_bps: u64) -> Result<(u64, &'static str), Infeasible> {
        if self.max_bandwidth_bps == Some(0) {
            return Err(Infeasible::Invalid("max bandwidth must be above zero"));
        }
        if let Some(p) = self.max_cpu_percent {
            if p == 0 || p > 100 {
                return Err(Infeasible::Invalid(
                    "max cpu must be within 1..=100 percent",
                ));
            }
        }
        if self.deadline_ms == Some(0) {
            return Err(Infeasible::Invalid("deadline must be above zero"));
        }
        let cpu = self
            .max_cpu_percent
            .map_or(core_bps, |p| core_bps.saturating_mul(u64::from(p)) / 100);
        Ok(match self.max_bandwidth_bps {
            Some(bw) if bw < cpu => (bw, "bandwidth"),
            _ if self.max_cpu_percent.is_some() => (cpu, "cpu"),
            _ => (cpu, "core speed"),
        })
    }

    /// Refuses a plan whose deadline cannot be met for `bytes` at the allowed rate; returns the
    /// rate to pace at.
    pub fn check(&self, bytes: u64, core_bps: u64) -> Result<u64, Infeasible> {
        let (rate, binding) = self.rate_bps(core_bps)?;
        if let Some(deadline_ms) = self.deadline_ms {
            let max_bytes = (u128::from(rate) * u128::from(deadline_ms) / 1000) as u64;
            if bytes > max_bytes {
                return Err(Infeasible::Deadline {
                    bytes,
                    deadline_ms,
                    max_bytes,
                    binding,
                });
            }
        }
        Ok(rate)
    }
}

/// A token bucket pacing the copy stream to a rate in bytes per second. The caller asks how
/// long to wait before sending `n` bytes; time is passed in, so it is testable and simulable.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate_bps: u64,
    burst: u64,
    tokens: f64,
    last_us: u64,
}

impl Pacer {
    /// A pacer at `rate_bps` allowing bursts of `burst` bytes, starting full at `now_us`.
    pub fn new(rate_bps: u64, burst: u64, now_us: u64) -> Self {
        Self {
            rate_bps: rate_bps.max(1),
            burst: burst.max(1),
            tokens: burst.max(1) as f64,
            last_us: now_us,
        }
    }

    /// Microseconds to wait before `n` bytes may be sent at `now_us`; takes the tokens when
    /// the answer is 0.
    pub fn delay_us(&mut self, n: u64, now_us: u64) -> u64 {
        let elapsed = now_us.saturating_sub(self.last_us) as f64;
        self.last_us = self.last_us.max(now_us);
        self.tokens = (self.tokens + elapsed * self.rate_bps as f64 / 1e6).min(self.burst as f64);
        let need = n.min(self.burst) as f64;
        if self.tokens >= need {
            self.tokens -= need;
            0
        } else {
            ((need - self.tokens) * 1e6 / self.rate_bps as f64).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn table() -> SessionTable {
        let t = SessionTable::new(1_000_000);
        for k in 0u8..50 {
            // Key k changes k times.
            for i in 0..u64::from(k) {
                t.put(
                    Bytes::copy_from_slice(&[k]),
                    i + 1,
                    Bytes::from_static(b"xxxx"),
                    u64::MAX,
                    0,
                    true,
                );
            }
            if k == 0 {
                t.put(
                    Bytes::copy_from_slice(&[k]),
                    1,
                    Bytes::from_static(b"xxxx"),
                    u64::MAX,
                    0,
                    true,
                );
            }
        }
        t
    }

    #[test]
    fn hot_first_orders_by_change_frequency() {
        let m = manifest(&table(), CopyOrder::HotFirst, 0);
        assert_eq!(m.keys.len(), 50);
        assert_eq!(m.keys[0].as_ref(), &[49]);
        assert_eq!(m.keys[1].as_ref(), &[48]);
        assert_eq!(m.bytes, 50 * 5);
    }

    #[test]
    fn every_order_is_a_permutation_and_random_depends_on_the_seed() {
        let t = table();
        let mut key = manifest(&t, CopyOrder::Key, 0).keys;
        let a = manifest(&t, CopyOrder::Random { seed: 1 }, 0).keys;
        let b = manifest(&t, CopyOrder::Random { seed: 2 }, 0).keys;
        assert_ne!(a, b);
        assert_eq!(a, manifest(&t, CopyOrder::Random { seed: 1 }, 0).keys);
        for mut o in [a, b, manifest(&t, CopyOrder::HotFirst, 0).keys] {
            o.sort();
            assert_eq!(o, key);
        }
        key.dedup();
        assert_eq!(key.len(), 50);
    }

    #[test]
    fn infeasible_deadlines_are_refused_with_the_binding_limit() {
        let plan = CopyPlan {
            max_bandwidth_bps: Some(1_000_000),
            max_cpu_percent: None,
            deadline_ms: Some(2_000),
        };
        assert_eq!(plan.check(2_000_000, 100_000_000), Ok(1_000_000));
        let err = plan.check(2_000_001, 100_000_000).unwrap_err();
        assert!(
            matches!(
                err,
                Infeasible::Deadline {
                    binding: "bandwidth",
                    max_bytes: 2_000_000,
                    ..
                }
            ),
            "{err}"
        );
        let cpu = CopyPlan {
            max_cpu_percent: Some(5),
            deadline_ms: Some(1_000),
            ..CopyPlan::default()
        };
        assert!(matches!(
            cpu.check(6_000_000, 100_000_000),
            Err(Infeasible::Deadline { binding: "cpu", .. })
        ));
        assert!(CopyPlan {
            max_cpu_percent: Some(0),
            ..CopyPlan::default()
        }
        .check(1, 1)
        .is_err());
        assert_eq!(CopyPlan::default().check(u64::MAX, 7), Ok(7));
    }

    #[test]
    fn the_pacer_holds_the_rate() {
        // 1 MB/s with 64 KiB bursts: sending 10 MB in 1 KiB pieces takes ~10 s of pacer time.
        let mut p = Pacer::new(1_000_000, 65_536, 0);
        let mut now = 0u64;
        let mut sent = 0u64;
        while sent < 10_000_000 {
            let d = p.delay_us(1024, now);
            if d == 0 {
                sent += 1024;
            } else {
                now += d;
            }
        }
        let secs = now as f64 / 1e6;
        assert!((9.8..=10.1).contains(&secs), "took {secs} s");
    }
}

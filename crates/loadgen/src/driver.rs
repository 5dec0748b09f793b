//! The event loop: attach phase, open-loop measured phase, drain; retransmissions and counting.

use crate::ue::{answers, Transaction, Ue, UeHistory};
use bytes::Bytes;
use handoff_vmme::{peek_header, Response, Signal};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// What to run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadConfig {
    /// The service address (steer or direct path).
    pub target: SocketAddr,
    /// Number of UEs.
    pub sessions: u32,
    /// New procedures started per second in the measured phase (open loop). Continuation steps
    /// of a procedure (an attach's challenge answer, say) follow their answer at once.
    pub rate: f64,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Zipf exponent of UE popularity.
    pub zipf: f64,
    /// Seed of the UE choice and signal mix.
    pub seed: u64,
    /// First IMSI; UE `i` has `imsi_base + i`.
    pub imsi_base: u64,
    /// First retransmission timeout; each retry doubles it.
    pub timeout: Duration,
    /// Retransmissions before a transaction counts as lost.
    pub retries: u32,
    /// UEs attaching at once in the attach phase.
    pub attach_window: usize,
    /// Longest the attach phase may take.
    pub attach_deadline: Duration,
    /// Skip the attach phase (the UEs start detached and attach when picked).
    pub skip_attach: bool,
    /// While this flag is set (by whoever runs a move), response gaps count towards
    /// `move_response_gap_ms`; otherwise towards `baseline_response_gap_ms`.
    #[serde(skip)]
    pub move_window: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Measure a transaction's latency from when its datagram left rather than from the slot
    /// it was scheduled for. The schedule stays open-loop either way; the load generator's own
    /// lateness (its timer wakes at millisecond granularity) then shows in `schedule_lag_us`
    /// instead of in every contender's latency. `bench steer` measures a hop of microseconds
    /// this way.
    pub latency_from_send: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            target: SocketAddr::from(([127, 0, 0, 1], 36_412)),
            sessions: 1000,
            rate: 1000.0,
            duration: Duration::from_secs(5),
            zipf: 1.1,
            seed: 1,
            imsi_base: 1_010_000_000_001,
            timeout: Duration::from_millis(250),
            retries: 5,
            attach_window: 128,
            attach_deadline: Duration::from_secs(600),
            skip_attach: false,
            move_window: None,
            latency_from_send: false,
        }
    }
}

impl LoadConfig {
    /// Checks that every setting is finite and within bounds; says which one is not.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && (0.0..=10_000_000.0).contains(&self.rate)) {
            return Err(format!(
                "rate {} must be within 0..=10000000 per second",
                self.rate
            ));
        }
        if self.duration > Duration::from_secs(86_400) {
            return Err("duration must be at most a day".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("timeout must be within 1 ms..=60 s".into());
        }
        if self.retries > 10 {
            return Err("retries must be at most 10".into());
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return Err(format!(
                "zipf exponent {} must be finite and >= 0",
                self.zipf
            ));
        }
        if self.imsi_base.saturating_add(u64::from(self.sessions)) > handoff_vmme::MAX_IMSI {
            return Err("IMSIs would exceed 15 digits".into());
        }
        Ok(())
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencyReport {
    /// Answers measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: u64,
}

impl LatencyReport {
    fn from(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean() as u64,
        }
    }
}

/// What happened, counted over the whole run (attach phase included).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    /// UEs simulated.
    pub sessions: u32,
    /// Transactions started (each unique signal once, however often retransmitted).
    pub signals_sent: u64,
    /// Transactions answered at least once.
    pub answered: u64,
    /// Transactions never answered after all retransmissions.
    pub lost: u64,
    /// Answers beyond one per datagram sent for a transaction (the system answered twice).
    pub duplicated: u64,
    /// Answers that reached a UE after it had given up on them and moved on.
    pub reordered: u64,
    /// Answers of a type that cannot answer the signal sent.
    pub wrong_answers: u64,
    /// Datagrams received that are not a decodable answer to a known UE's recent transaction,
    /// or that came from another address than the service's.
    pub stray: u64,
    /// Retransmitted datagrams.
    pub retransmissions: u64,
    /// Of those, retransmissions of transactions started or answered while the move window
    /// was open: the ones a move can have caused (0 without a window).
    pub move_retransmissions: u64,
    /// Extra answers explained by retransmissions (one per datagram: not duplicates).
    pub late_answers: u64,
    /// Schedule slots skipped because every UE drawn had a transaction outstanding.
    pub skipped_busy: u64,
    /// UEs registered when the attach phase ended.
    pub attached: u64,
    /// Attach phase length.
    pub attach_ms: u64,
    /// Measured phase length.
    pub measured_ms: u64,
    /// Transactions started in the measured phase, per second.
    pub measured_rate: f64,
    /// Latency of first answers to transactions started in the measured phase.
    pub latency_us: LatencyReport,
    /// Latency of the attach phase.
    pub attach_latency_us: LatencyReport,
    /// Latency of measured transactions started or answered while the move window was open
    /// (every such transaction, so one stalled session shows, however short the window).
    pub latency_during_move_us: LatencyReport,
    /// Latency of the other measured transactions.
    pub latency_outside_move_us: LatencyReport,
    /// Largest gap between consecutive answers seen by clients in the measured phase (ms).
    pub max_response_gap_ms: f64,
    /// The same statistic outside the move window.
    pub baseline_response_gap_ms: f64,
    /// The same statistic inside the move window (0 without one).
    pub move_response_gap_ms: f64,
    /// How late the measured phase's first sends left against their schedule: a load
    /// generator that keeps up has a small p99 here at every rate it offers.
    pub schedule_lag_us: LatencyReport,
    /// Load-generator tasks (each with its own socket and UEs) the figures were merged from.
    pub shards: u32,
}

/// Live counters, handed to the progress callback.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// `"attach"`, `"measure"` or `"drain"`.
    pub phase: &'static str,
    /// Transactions started.
    pub sent: u64,
    /// Transactions answered.
    pub answered: u64,
    /// Transactions lost so far.
    pub lost: u64,
    /// UEs registered.
    pub attached: u64,
    /// Time in the phase.
    pub elapsed: Duration,
}

struct Outstanding {
    txn_id: u32,
    signal: Signal,
    bytes: Bytes,
    started: Instant,
    measured: bool,
    /// Started while the move window was open (see [`crate::Config::move_window`]).
    during_move: bool,
    attempts: u32,
}

/// A recent transaction, to tell late answers to retransmissions from duplicates.
#[derive(Clone, Copy, Default)]
struct Recent {
    txn_id: u32,
    attempts: u32,
    answers: u32,
}

const RECENT: usize = 8;

struct Slot {
    ue: Ue,
    outstanding: Option<Outstanding>,
    recent: [Recent; RECENT],
    recent_next: usize,
}

impl Slot {
    fn remember(&mut self, r: Recent) {
        self.recent[self.recent_next] = r;
        self.recent_next = (self.recent_next + 1) % RECENT;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Attach,
    Measure,
    Drain,
}

struct Driver {
    cfg: LoadConfig,
    socket: UdpSocket,
    slots: Vec<Slot>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    rng: SmallRng,
    report: LoadReport,
    hist: Histogram<u64>,
    attach_hist: Histogram<u64>,
    move_hist: Histogram<u64>,
    outside_hist: Histogram<u64>,
    lag_hist: Histogram<u64>,
    phase: Phase,
    last_answer: Option<Instant>,
    max_gap: Duration,
    baseline_gap: Duration,
    move_gap: Duration,
    registered: u64,
    /// UEs with a transaction outstanding.
    in_flight: usize,
}

/// Runs the load and returns the report and every UE's history, for the oracle.
pub async fn run(
    cfg: LoadConfig,
    mut progress: impl FnMut(Progress),
) -> std::io::Result<(LoadReport, Vec<UeHistory>)> {
    let shard = run_shard(cfg, &mut progress).await?;
    Ok(Shard::merge(vec![shard]))
}

/// Most load-generator tasks [`run_sharded`] starts.
pub const MAX_SHARDS: u32 = 16;

/// The UE (slot index, of `slots`) that Zipf rank `rank` picks (1: the most popular): UE i is
/// the i-th most popular, so popularity falls as the IMSI rises. `bench move`'s clairvoyant
/// contender copies in key order on the strength of this.
pub fn popularity_slot(rank: u64, slots: usize) -> usize {
    (rank.saturating_sub(1) as usize).min(slots.saturating_sub(1))
}

/// Runs the load as `shards` independent tasks, each with its own socket, an equal share of
/// the UEs (consecutive IMSIs) and of the rate, so that no single task or socket limits the
/// rate offered; the reports and histograms are merged (counters summed, latencies from the
/// merged histograms, gaps the largest of any shard). Each shard draws its UEs from its own
/// Zipf distribution. Histories come back in IMSI order.
pub async fn run_sharded(
    cfg: LoadConfig,
    shards: u32,
) -> std::io::Result<(LoadReport, Vec<UeHistory>)> {
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let shards = shards.clamp(1, MAX_SHARDS).min(cfg.sessions.max(1));
    let mut tasks = Vec::with_capacity(shards as usize);
    let mut first = 0u32;
    for k in 0..shards {
        let n = cfg.sessions / shards + u32::from(k < cfg.sessions % shards);
        let share = if cfg.sessions == 0 {
            0.0
        } else {
            f64::from(n) / f64::from(cfg.sessions)
        };
        let c = LoadConfig {
            sessions: n,
            rate: cfg.rate * share,
            imsi_base: cfg.imsi_base + u64::from(first),
            seed: cfg
                .seed
                .wrapping_add(u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ..cfg.clone()
        };
        first += n;
        tasks.push(tokio::spawn(async move { run_shard(c, &mut |_| {}).await }));
    }
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        let shard = t.await.map_err(std::io::Error::other)??;
        done.push(shard);
    }
    Ok(Shard::merge(done))
}

/// One load-generator task's outcome, before merging.
struct Shard {
    report: LoadReport,
    hist: Histogram<u64>,
    attach_hist: Histogram<u64>,
    move_hist: Histogram<u64>,
    outside_hist: Histogram<u64>,
    lag_hist: Histogram<u64>,
    max_gap: Duration,
    baseline_gap: Duration,
    move_gap: Duration,
    histories: Vec<UeHistory>,
}

impl Shard {
    fn merge(shards: Vec<Shard>) -> (LoadReport, Vec<UeHistory>) {
        let mut it = shards.into_iter();
        let Some(mut acc) = it.next() else {
            return (LoadReport::default(), Vec::new());
        };
        let mut n = 1u32;
        for s in it {
            n += 1;
            let (a, b) = (&mut acc.report, &s.report);
            a.sessions += b.sessions;
            a.signals_sent += b.signals_sent;
            a.answered += b.answered;
            a.lost += b.lost;
            a.duplicated += b.duplicated;
            a.reordered += b.reordered;
            a.wrong_answers += b.wrong_answers;
            a.stray += b.stray;
            a.retransmissions += b.retransmissions;
            a.move_retransmissions += b.move_retransmissions;
            a.late_answers += b.late_answers;
            a.skipped_busy += b.skipped_busy;
            a.attached += b.attached;
            a.attach_ms = a.attach_ms.max(b.attach_ms);
            a.measured_ms = a.measured_ms.max(b.measured_ms);
            a.measured_rate += b.measured_rate;
            // Histograms with the same bounds always add.
            let _ = acc.hist.add(&s.hist);
            let _ = acc.attach_hist.add(&s.attach_hist);
            let _ = acc.move_hist.add(&s.move_hist);
            let _ = acc.outside_hist.add(&s.outside_hist);
            let _ = acc.lag_hist.add(&s.lag_hist);
            acc.max_gap = acc.max_gap.max(s.max_gap);
            acc.baseline_gap = acc.baseline_gap.max(s.baseline_gap);
            acc.move_gap = acc.move_gap.max(s.move_gap);
            acc.histories.extend(s.histories);
        }
        let mut report = acc.report;
        report.shards = n;
        report.latency_us = LatencyReport::from(&acc.hist);
        report.attach_latency_us = LatencyReport::from(&acc.attach_hist);
        report.latency_during_move_us = LatencyReport::from(&acc.move_hist);
        report.latency_outside_move_us = LatencyReport::from(&acc.outside_hist);
        report.schedule_lag_us = LatencyReport::from(&acc.lag_hist);
        report.max_response_gap_ms = acc.max_gap.as_secs_f64() * 1e3;
        report.baseline_response_gap_ms = acc.baseline_gap.as_secs_f64() * 1e3;
        report.move_response_gap_ms = acc.move_gap.as_secs_f64() * 1e3;
        (report, acc.histories)
    }
}

async fn run_shard(cfg: LoadConfig, progress: &mut impl FnMut(Progress)) -> std::io::Result<Shard> {
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let bind: SocketAddr = if cfg.target.is_ipv6() {
        "[::1]:0".parse().expect("literal address")
    } else {
        "127.0.0.1:0".parse().expect("literal address")
    };
    let socket = UdpSocket::bind(bind).await?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    let slots = (0..cfg.sessions)
        .map(|i| Slot {
            ue: Ue::new(cfg.imsi_base + u64::from(i), i),
            outstanding: None,
            recent: [Recent::default(); RECENT],
            recent_next: 0,
        })
        .collect();
    let hist = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut d = Driver {
        rng: SmallRng::seed_from_u64(cfg.seed),
        report: LoadReport {
            sessions: cfg.sessions,
            ..LoadReport::default()
        },
        cfg,
        socket,
        slots,
        timers: BinaryHeap::new(),
        hist: hist(),
        attach_hist: hist(),
        move_hist: hist(),
        outside_hist: hist(),
        lag_hist: hist(),
        phase: Phase::Attach,
        last_answer: None,
        max_gap: Duration::ZERO,
        baseline_gap: Duration::ZERO,
        move_gap: Duration::ZERO,
        registered: 0,
        in_flight: 0,
    };
    d.attach_phase(progress).await?;
    d.measure_phase(progress).await?;
    d.drain_phase(progress).await?;
    Ok(Shard {
        report: d.report,
        hist: d.hist,
        attach_hist: d.attach_hist,
        move_hist: d.move_hist,
        outside_hist: d.outside_hist,
        lag_hist: d.lag_hist,
        max_gap: d.max_gap,
        baseline_gap: d.baseline_gap,
        move_gap: d.move_gap,
        histories: d.slots.into_iter().map(|s| s.ue.history).collect(),
    })
}

impl Driver {
    fn progress(&self, phase: &'static str, since: Instant) -> Progress {
        Progress {
            phase,
            sent: self.report.signals_sent,
            answered: self.report.answered,
            lost: self.report.lost,
            attached: self.registered,
            elapsed: since.elapsed(),
        }
    }

    /// The longest a transaction can stay outstanding: every retransmission timeout.
    fn give_up_span(&self) -> Duration {
        (0..=self.cfg.retries).map(|i| self.retry_timeout(i)).sum()
    }

    fn retry_timeout(&self, attempt: u32) -> Duration {
        self.cfg.timeout * 2u32.saturating_pow(attempt.min(16))
    }

    async fn attach_phase(&mut self, progress: &mut impl FnMut(Progress)) -> std::io::Result<()> {
        let start = Instant::now();
        if self.cfg.skip_attach {
            self.phase = Phase::Measure;
            return Ok(());
        }
        let deadline = start + self.cfg.attach_deadline;
        let mut next_ue = 0usize;
        let mut buf = vec![0u8; 65_536];
        let mut last_progress = start;
        while Instant::now() < deadline {
            // Keep the window full of attaching UEs.
            while self.in_flight < self.cfg.attach_window.max(1) && next_ue < self.slots.len() {
                self.start(next_ue, Instant::now(), false).await?;
                next_ue += 1;
            }
            if next_ue >= self.slots.len() && self.in_flight == 0 {
                break;
            }
            self.wait_and_handle(&mut buf, Some(deadline)).await?;
            if last_progress.elapsed() >= Duration::from_millis(500) {
                last_progress = Instant::now();
                progress(self.progress("attach", start));
            }
        }
        self.report.attached = self.registered;
        self.report.attach_ms = start.elapsed().as_millis() as u64;
        progress(self.progress("attach", start));
        self.phase = Phase::Measure;
        Ok(())
    }

    async fn measure_phase(&mut self, progress: &mut impl FnMut(Progress)) -> std::io::Result<()> {
        let n = self.slots.len() as u64;
        if n == 0 || self.cfg.rate <= 0.0 {
            return Ok(());
        }
        let zipf = Zipf::new(n, self.cfg.zipf.max(0.0))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let start = Instant::now();
        let end = start + self.cfg.duration;
        let interval = Duration::from_secs_f64(1.0 / self.cfg.rate).max(Duration::from_nanos(1));
        let mut next_slot = start;
        let mut slots_started = 0u64;
        let mut buf = vec![0u8; 65_536];
        let mut last_progress = start;
        self.last_answer = None;
        while next_slot < end {
            // Send every slot that is due (catching up if late: no coordinated omission).
            let now = Instant::now();
            while next_slot <= now && next_slot < end {
                let mut picked = None;
                for _ in 0..8 {
                    let i = popularity_slot(zipf.sample(&mut self.rng) as u64, self.slots.len());
                    if self.slots[i].outstanding.is_none() {
                        picked = Some(i);
                        break;
                    }
                }
                match picked {
                    Some(i) => {
                        self.start(i, next_slot, true).await?;
                        slots_started += 1;
                    }
                    None => self.report.skipped_busy += 1,
                }
                next_slot += interval;
            }
            self.wait_and_handle(&mut buf, Some(next_slot)).await?;
            if last_progress.elapsed() >= Duration::from_millis(500) {
                last_progress = Instant::now();
                progress(self.progress("measure", start));
            }
        }
        let elapsed = start.elapsed();
        self.report.measured_ms = elapsed.as_millis() as u64;
        self.report.measured_rate = slots_started as f64 / elapsed.as_secs_f64().max(1e-9);
        self.phase = Phase::Drain;
        Ok(())
    }

    async fn drain_phase(&mut self, progress: &mut impl FnMut(Progress)) -> std::io::Result<()> {
        let start = Instant::now();
        let end = start + self.give_up_span() + Duration::from_millis(500);
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < end {
            if self.in_flight == 0 {
                // Give late duplicates a moment to show up before counting.
                let grace = Instant::now() + Duration::from_millis(100);
                while Instant::now() < grace {
                    self.wait_and_handle(&mut buf, Some(grace)).await?;
                }
                break;
            }
            self.wait_and_handle(&mut buf, Some(end)).await?;
        }
        for s in &mut self.slots {
            if s.outstanding.take().is_some() {
                self.in_flight -= 1;
                self.report.lost += 1;
                s.ue.on_lost();
            }
        }
        progress(self.progress("drain", start));
        Ok(())
    }

    /// Starts the next transaction of UE `i`; `intended` is when it should have left.
    async fn start(&mut self, i: usize, intended: Instant, measured: bool) -> std::io::Result<()> {
        let during_move = self.moving();
        let slot = &mut self.slots[i];
        let signal = slot.ue.next_signal(&mut self.rng);
        let bytes = Bytes::from(signal.to_bytes());
        let txn_id = signal.header.txn_id;
        let now = Instant::now();
        let measured = measured && self.phase == Phase::Measure;
        if measured {
            let lag = now.saturating_duration_since(intended).as_micros() as u64;
            let _ = self.lag_hist.record(lag.max(1));
        }
        slot.outstanding = Some(Outstanding {
            txn_id,
            signal,
            bytes: bytes.clone(),
            started: if self.cfg.latency_from_send {
                now
            } else {
                intended
            },
            measured,
            during_move,
            attempts: 1,
        });
        self.report.signals_sent += 1;
        self.in_flight += 1;
        self.send(&bytes).await;
        self.timers.push(Reverse((
            Instant::now() + self.retry_timeout(0),
            i as u32,
            txn_id,
        )));
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A failed send is a lost datagram: the retransmission timer covers it.
        let _ = self.socket.send_to(bytes, self.cfg.target).await;
    }

    /// Waits for an answer, a due timer or `until`; handles what arrived.
    async fn wait_and_handle(
        &mut self,
        buf: &mut [u8],
        until: Option<Instant>,
    ) -> std::io::Result<()> {
        let timer_at = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let wake = match (timer_at, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep_until = wake.unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
        tokio::select! {
            r = self.socket.recv_from(buf) => {
                let mut next = r.ok();
                // Take whatever else is already queued without waiting.
                while let Some((n, from)) = next {
                    if from == self.cfg.target {
                        let datagram = buf[..n].to_vec();
                        self.on_datagram(&datagram).await;
                    } else {
                        // Clients must only ever hear from the service address.
                        self.report.stray += 1;
                    }
                    next = self.socket.try_recv_from(buf).ok();
                }
            }
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        self.fire_timers().await;
        Ok(())
    }

    /// Whether the move window is open now.
    fn moving(&self) -> bool {
        self.cfg
            .move_window
            .as_ref()
            .is_some_and(|w| w.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, i, txn))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let i = i as usize;
            let retries = self.cfg.retries;
            let Some(out) = self.slots[i].outstanding.as_mut() else {
                continue;
            };
            if out.txn_id != txn {
                continue;
            }
            if out.attempts <= retries {
                out.attempts += 1;
                let attempt = out.attempts;
                let bytes = out.bytes.clone();
                self.report.retransmissions += 1;
                if out.during_move || self.moving() {
                    self.report.move_retransmissions += 1;
                }
                self.send(&bytes).await;
                self.timers.push(Reverse((
                    Instant::now() + self.retry_timeout(attempt - 1),
                    i as u32,
                    txn,
                )));
            } else {
                let slot = &mut self.slots[i];
                if let Some(out) = slot.outstanding.take() {
                    slot.remember(Recent {
                        txn_id: out.txn_id,
                        attempts: out.attempts,
                        answers: 0,
                    });
                }
                slot.ue.on_lost();
                self.report.lost += 1;
                self.in_flight -= 1;
            }
        }
    }

    async fn on_datagram(&mut self, datagram: &[u8]) {
        let now = Instant::now();
        let Ok((_, header)) = peek_header(datagram) else {
            self.report.stray += 1;
            return;
        };
        let Some(i) = header
            .imsi
            .checked_sub(self.cfg.imsi_base)
            .filter(|i| *i < self.slots.len() as u64)
            .map(|i| i as usize)
        else {
            self.report.stray += 1;
            return;
        };
        let Ok(answer) = Response::decode(datagram) else {
            self.report.stray += 1;
            return;
        };
        if self.phase == Phase::Measure {
            if let Some(last) = self.last_answer {
                let gap = now - last;
                self.max_gap = self.max_gap.max(gap);
                if self.moving() {
                    self.move_gap = self.move_gap.max(gap);
                } else {
                    self.baseline_gap = self.baseline_gap.max(gap);
                }
            }
            self.last_answer = Some(now);
        }
        let moving = self.moving();
        let slot = &mut self.slots[i];
        let current = slot
            .outstanding
            .as_ref()
            .is_some_and(|o| o.txn_id == header.txn_id);
        if !current {
            match slot
                .recent
                .iter_mut()
                .find(|r| r.txn_id == header.txn_id && r.txn_id != 0)
            {
                Some(r) => {
                    if r.answers == 0 {
                        // The UE gave up on it and moved on: it arrived out of order.
                        self.report.reordered += 1;
                    }
                    r.answers += 1;
                    if r.answers > r.attempts {
                        self.report.duplicated += 1;
                    } else if r.answers > 1 {
                        self.report.late_answers += 1;
                    }
                }
                // Older than the UE remembers: an answer nobody is waiting for.
                None => self.report.stray += 1,
            }
            return;
        }
        let Some(out) = slot.outstanding.take() else {
            return;
        };
        self.in_flight -= 1;
        let latency = now.saturating_duration_since(out.started).as_micros() as u64;
        if out.measured {
            let _ = self.hist.record(latency.max(1));
            if out.during_move || moving {
                let _ = self.move_hist.record(latency.max(1));
            } else {
                let _ = self.outside_hist.record(latency.max(1));
            }
        } else {
            let _ = self.attach_hist.record(latency.max(1));
        }
        self.report.answered += 1;
        if !answers(out.signal.msg_type(), answer.msg_type()) {
            self.report.wrong_answers += 1;
        }
        slot.remember(Recent {
            txn_id: out.txn_id,
            attempts: out.attempts,
            answers: 1,
        });
        slot.ue.history.txns.push(Transaction {
            txn_id: out.txn_id,
            signal: out.bytes.to_vec(),
            answer: datagram.to_vec(),
        });
        let was_registered = matches!(slot.ue.state, crate::ue::UeState::Registered { .. });
        slot.ue.on_answer(&out.signal, &answer);
        let is_registered = matches!(slot.ue.state, crate::ue::UeState::Registered { .. });
        match (was_registered, is_registered) {
            (false, true) => self.registered += 1,
            (true, false) => self.registered = self.registered.saturating_sub(1),
            _ => {}
        }
        if slot.ue.state.mid_procedure() && self.phase != Phase::Drain {
            let measured = self.phase == Phase::Measure;
            let _ = self.start(i, now, measured).await;
        }
    }
}

//! Change-frequency estimate: an exponentially decayed count of changes, O(1) per update.

/// Default half-life of the change-frequency estimate: 30 s of steer time.
pub const DEFAULT_HALF_LIFE_US: u64 = 30_000_000;

/// An exponentially decayed count of a session's changes. A change adds 1; the count halves
/// every half-life. Ten bytes of state and one `exp2` per update, whatever the history length.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChangeFrequency {
    value: f32,
    last_us: u64,
}

impl ChangeFrequency {
    /// Records one change at `now_us`.
    pub fn touch(&mut self, now_us: u64, half_life_us: u64) {
        self.value = self.at(now_us, half_life_us) + 1.0;
        self.last_us = self.last_us.max(now_us);
    }

    /// The decayed count as seen at `now_us` (no decay for times before the last change).
    pub fn at(&self, now_us: u64, half_life_us: u64) -> f32 {
        let elapsed = now_us.saturating_sub(self.last_us) as f64;
        let halvings = elapsed / half_life_us.max(1) as f64;
        (f64::from(self.value) * (-halvings).exp2()) as f32
    }
}

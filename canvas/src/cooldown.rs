//! Per-connection write cooldown (the r/place rule: one pixel per connection per period).
//!
//! Each connection carries its own "next write allowed at" instant, checked in O(1) when it writes; there is
//! no per-tick sweep over connections at all (the predecessor kept a 300-slot timing wheel of bitsets and
//! rotated it every second).

use std::time::{Duration, Instant};

/// Cooldown rule. A zero period disables it (the benchmarking default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cooldown {
    period: Duration,
}

/// The r/place rule used by the predecessor: one pixel per connection per 300 s.
pub const RPLACE_PERIOD: Duration = Duration::from_secs(300);

impl Cooldown {
    /// A cooldown of `period` (zero = off).
    pub const fn new(period: Duration) -> Self {
        Self { period }
    }

    /// The configured period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// True when writes are limited.
    pub fn enabled(&self) -> bool {
        !self.period.is_zero()
    }

    /// Try to take a write for the connection whose state is `slot` at `now`. On success the slot is armed
    /// for the next period; on refusal the remaining wait is returned and the slot is unchanged.
    pub fn try_take(&self, slot: &mut Option<Instant>, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        if let Some(next) = *slot {
            if now < next {
                return Err(next - now);
            }
        }
        *slot = Some(now + self.period);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let c = Cooldown::default();
        let mut slot = None;
        let t = Instant::now();
        for _ in 0..10 {
            assert!(c.try_take(&mut slot, t).is_ok());
        }
        assert!(slot.is_none());
    }

    #[test]
    fn one_write_per_period() {
        let c = Cooldown::new(RPLACE_PERIOD);
        let mut slot = None;
        let t0 = Instant::now();
        assert!(c.try_take(&mut slot, t0).is_ok());
        let wait = c.try_take(&mut slot, t0 + Duration::from_secs(100)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(200));
        assert!(c.try_take(&mut slot, t0 + Duration::from_secs(300)).is_ok());
        assert!(c.try_take(&mut slot, t0 + Duration::from_secs(301)).is_err());
    }
}

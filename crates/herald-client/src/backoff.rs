//! How long to wait before the next connection attempt: exponential backoff with full jitter
//! (a random delay between zero and the exponential bound), so clients cut off together do not
//! come back together.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.min.saturating_mul(2u32.saturating_pow(self.attempt)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        bound.mul_f64(fastrand::f64())
    }

    /// A connection held: the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_bound_and_start_over_after_a_reset() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(20));
        let mut backoff = Backoff::new(min, max);
        let bounds: Vec<Duration> = (0..10).map(|attempt| min.saturating_mul(2u32.pow(attempt)).min(max)).collect();
        for bound in &bounds {
            let delay = backoff.next_delay();
            assert!(delay <= *bound, "{delay:?} > {bound:?}");
        }
        assert_eq!(bounds.last(), Some(&max));
        // Full jitter: over many draws the delays spread over the whole range.
        let draws: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(draws.iter().any(|delay| *delay < max / 4) && draws.iter().any(|delay| *delay > max * 3 / 4));
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}

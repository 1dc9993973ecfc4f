//! Exponential backoff with full jitter, shared by every loop that waits before trying again.
//!
//! Full jitter (a uniform draw between zero and the exponential cap) spreads the retries of many
//! shards and pods that failed together, so a recovering Nakadi or DynamoDB is not hit by one
//! synchronized wave (see the AWS architecture blog, "Exponential Backoff And Jitter").

use std::time::Duration;

use rand::RngExt;

/// How long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Cap of the first retry's delay; it doubles with every attempt.
    pub initial: Duration,
    /// The cap never grows past this.
    pub max: Duration,
}

impl Backoff {
    /// Calls to Nakadi: quick first retries, since most failures are single slow nodes.
    pub const NAKADI: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };
    /// Calls to AWS that failed or were throttled (GetRecords, lease table, SQS).
    pub const AWS: Backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(20),
    };

    /// The largest delay `delay` may return for `attempt` (0 for the first retry), without
    /// `Retry-After`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A uniformly drawn delay in `[0, cap(attempt)]`, but never shorter than what the server
    /// asked for with `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.cap(attempt);
        let drawn = Duration::from_micros(rand::rng().random_range(0..=cap.as_micros() as u64));
        match retry_after {
            Some(asked) => drawn.max(asked),
            None => drawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_doubles_up_to_the_maximum() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.cap(0), Duration::from_millis(100));
        assert_eq!(b.cap(1), Duration::from_millis(200));
        assert_eq!(b.cap(3), Duration::from_millis(800));
        assert_eq!(b.cap(4), Duration::from_secs(1));
        assert_eq!(b.cap(200), Duration::from_secs(1));
    }

    #[test]
    fn delay_is_jittered_within_the_cap() {
        let b = Backoff::NAKADI;
        let draws: Vec<Duration> = (0..1000).map(|_| b.delay(3, None)).collect();
        assert!(draws.iter().all(|d| *d <= b.cap(3)));
        // Full jitter spreads the draws over the whole range, not around the cap.
        assert!(draws.iter().any(|d| *d < b.cap(3) / 4));
        assert!(draws.iter().any(|d| *d > b.cap(3) * 3 / 4));
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let b = Backoff::NAKADI;
        for _ in 0..100 {
            assert!(b.delay(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }
}

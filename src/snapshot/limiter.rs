//! The read-capacity budget of a snapshot, shared by all its segments.
//!
//! A Scan page's cost is known only after it was read (DynamoDB returns it as
//! `ConsumedCapacity` with `ReturnConsumedCapacity=TOTAL`, on on-demand tables too), and one
//! page can cost up to 128 units (1 MB, eventually consistent). So the budget is a token bucket
//! that may go into debt: a page is let through while the balance is not negative, an estimate of
//! its cost is taken at once (so segments starting together do not all pass on one balance), and
//! the difference to the real cost is settled when the page is back. A page dearer than the
//! estimate makes the next ones wait until the debt is paid; over any stretch of time the
//! capacity used stays within the rate plus one second's burst plus the pages in flight.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct CapacityLimiter {
    /// Capacity units per second.
    rate: f64,
    /// Most units saved up while idle: one second's worth, so a pause does not turn into a burst
    /// that could throttle the application's own reads.
    burst: f64,
    state: Mutex<State>,
}

struct State {
    balance: f64,
    updated: Instant,
}

impl State {
    fn refill(&mut self, rate: f64, burst: f64) {
        let now = Instant::now();
        let earned = now.duration_since(self.updated).as_secs_f64() * rate;
        self.balance = (self.balance + earned).min(burst);
        self.updated = now;
    }
}

impl CapacityLimiter {
    /// `rate` in capacity units per second; must be positive.
    pub fn new(rate: f64) -> CapacityLimiter {
        assert!(rate > 0.0, "a capacity budget must be positive");
        CapacityLimiter {
            rate,
            burst: rate,
            state: Mutex::new(State {
                balance: rate,
                updated: Instant::now(),
            }),
        }
    }

    /// Waits until the budget allows another page, and takes `estimate` units for it.
    pub async fn acquire(&self, estimate: f64) {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("limiter lock poisoned");
                state.refill(self.rate, self.burst);
                if state.balance >= 0.0 {
                    state.balance -= estimate;
                    return;
                }
                Duration::from_secs_f64(-state.balance / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The page that took `estimate` units really cost `consumed`.
    pub fn settle(&self, estimate: f64, consumed: f64) {
        let mut state = self.state.lock().expect("limiter lock poisoned");
        state.refill(self.rate, self.burst);
        state.balance += estimate - consumed;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn page(limiter: &CapacityLimiter, estimate: f64, consumed: f64) {
        limiter.acquire(estimate).await;
        limiter.settle(estimate, consumed);
    }

    fn assert_within(elapsed: Duration, min_ms: u64, max_ms: u64) {
        assert!(
            (Duration::from_millis(min_ms)..=Duration::from_millis(max_ms)).contains(&elapsed),
            "{elapsed:?} not within {min_ms}..={max_ms} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn spends_the_rate_after_the_first_seconds_burst() {
        let limiter = CapacityLimiter::new(10.0);
        let start = Instant::now();
        for _ in 0..110 {
            page(&limiter, 1.0, 1.0).await;
        }
        // 10 units of burst, then 100 units at 10 per second; the last page passes as soon as
        // the balance is back at zero.
        let elapsed = start.elapsed();
        assert_within(elapsed, 9_900, 10_300);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expensive_page_makes_the_next_wait_for_its_debt() {
        let limiter = CapacityLimiter::new(10.0);
        page(&limiter, 1.0, 50.0).await;
        let start = Instant::now();
        limiter.acquire(1.0).await;
        // Balance 10 - 50 = -40: four seconds at 10 units per second.
        let waited = start.elapsed();
        assert_within(waited, 3_990, 4_010);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cheaper_page_gives_back_what_was_taken() {
        let limiter = CapacityLimiter::new(10.0);
        // The estimate puts the balance into debt, the real cost pays it back at once.
        limiter.acquire(40.0).await;
        limiter.settle(40.0, 5.0);
        let start = Instant::now();
        limiter.acquire(1.0).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_saves_up_one_second_at_most() {
        let limiter = CapacityLimiter::new(10.0);
        tokio::time::sleep(Duration::from_secs(100)).await;
        let start = Instant::now();
        for _ in 0..30 {
            page(&limiter, 1.0, 1.0).await;
        }
        let elapsed = start.elapsed();
        // 10 at once, the other 20 at the rate: not 30 at once from the idle 100 s.
        assert_within(elapsed, 1_850, 2_200);
    }

    #[tokio::test(start_paused = true)]
    async fn segments_share_one_budget() {
        let limiter = Arc::new(CapacityLimiter::new(20.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        page(&limiter, 2.0, 2.0).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // 4 × 25 pages × 2 units = 200 units; 20 at once, 180 at 20 per second.
        let elapsed = start.elapsed();
        assert_within(elapsed, 8_850, 9_300);
    }
}

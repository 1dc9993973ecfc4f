//! The self-fence: how long this pod may still act on the leases it holds.
//!
//! Other pods take a lease over only after they have watched its owner's heartbeat counter stand
//! still for a full lease duration, on their own monotonic clocks. The heartbeat they watch was
//! sent no earlier than this pod sent it, so a pod that stops publishing at *the send time of its
//! last successful heartbeat + the lease duration − a margin* has stopped before any other pod may
//! start. No two clocks are compared; the margin covers the rate at which two monotonic clocks
//! may drift apart over one lease duration, and the scheduling delay between the check and the
//! request it guards.
//!
//! Once the fence has lapsed it stays closed, even when a later heartbeat succeeds: while it was
//! closed another pod may have taken any of the leases. The coordinator then stops every shard
//! (without checkpointing what was not delivered), and [`Fence::reopen`] starts a new term with
//! the next heartbeat, from which the pod takes leases afresh.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One pod's fence for one stream's leases.
#[derive(Debug)]
pub struct Fence {
    /// How long after a heartbeat's send time the leases stay this pod's: the lease duration
    /// minus the margin.
    validity: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// Publishing stops at this instant; `None` before the first heartbeat of a term.
    open_until: Option<Instant>,
    /// The fence lapsed in this term; only [`Fence::reopen`] opens it again.
    lapsed: bool,
}

impl Fence {
    /// A closed fence; the first successful heartbeat opens it.
    pub fn new(lease_duration: Duration) -> Fence {
        Fence {
            validity: lease_duration.saturating_sub(Fence::margin(lease_duration)),
            state: Mutex::new(State {
                open_until: None,
                lapsed: false,
            }),
        }
    }

    /// The safety margin: a fifth of the lease duration, at least 500 ms. Monotonic clocks drift
    /// by parts per million, so the margin is mostly for the time between the check and the
    /// request leaving the socket.
    pub fn margin(lease_duration: Duration) -> Duration {
        (lease_duration / 5).max(Duration::from_millis(500))
    }

    /// Whether a request guarded by this pod's leases may be sent now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    fn is_open_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("fence lock");
        match state.open_until {
            Some(until) if now < until && !state.lapsed => true,
            Some(_) => {
                state.lapsed = true;
                false
            }
            None => false,
        }
    }

    /// Whether the fence lapsed in this term (the coordinator must drop every lease).
    pub fn lapsed(&self) -> bool {
        let now = Instant::now();
        self.is_open_at(now);
        self.state.lock().expect("fence lock").lapsed
    }

    /// A heartbeat sent at `sent_at` succeeded. It extends the fence only while the fence has
    /// not lapsed: a heartbeat sent after the leases may already be another pod's proves
    /// nothing about them.
    pub fn heartbeat_succeeded(&self, sent_at: Instant) {
        let mut state = self.state.lock().expect("fence lock");
        if state.lapsed {
            return;
        }
        if state.open_until.is_some_and(|until| sent_at >= until) {
            state.lapsed = true;
            return;
        }
        let until = sent_at + self.validity;
        state.open_until = Some(state.open_until.map_or(until, |old| old.max(until)));
    }

    /// Starts a new term after every lease of the lapsed one was dropped: closed until the next
    /// heartbeat succeeds.
    pub fn reopen(&self) {
        *self.state.lock().expect("fence lock") = State {
            open_until: None,
            lapsed: false,
        };
    }

    /// When the fence closes, if it is open.
    pub fn open_until(&self) -> Option<Instant> {
        let state = self.state.lock().expect("fence lock");
        state.open_until.filter(|_| !state.lapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(6);

    #[test]
    fn closed_until_the_first_heartbeat() {
        let fence = Fence::new(LEASE);
        assert!(!fence.is_open());
        assert!(!fence.lapsed(), "never opened is not lapsed");
        fence.heartbeat_succeeded(Instant::now());
        assert!(fence.is_open());
    }

    #[test]
    fn closes_a_margin_before_others_may_take_over() {
        let fence = Fence::new(LEASE);
        let sent = Instant::now();
        fence.heartbeat_succeeded(sent);
        let until = fence.open_until().expect("open");
        assert_eq!(until, sent + LEASE - Fence::margin(LEASE));
        assert!(Fence::margin(LEASE) > Duration::ZERO);
        assert!(fence.is_open_at(until - Duration::from_millis(1)));
        assert!(!fence.is_open_at(until));
        assert!(fence.lapsed());
    }

    #[test]
    fn a_heartbeat_after_the_lapse_does_not_reopen_it() {
        let fence = Fence::new(LEASE);
        let sent = Instant::now() - LEASE * 2;
        fence.heartbeat_succeeded(sent);
        assert!(!fence.is_open());
        fence.heartbeat_succeeded(Instant::now());
        assert!(!fence.is_open(), "the leases may be another pod's by now");
        assert!(fence.lapsed());
        fence.reopen();
        assert!(!fence.lapsed());
        fence.heartbeat_succeeded(Instant::now());
        assert!(fence.is_open());
    }

    #[test]
    fn a_heartbeat_sent_after_the_fence_closed_counts_as_lapsed() {
        // SIGSTOP: the heartbeat task is resumed and sends before anyone checked the fence.
        let fence = Fence::new(LEASE);
        let first = Instant::now() - LEASE * 2;
        fence.heartbeat_succeeded(first);
        fence.heartbeat_succeeded(Instant::now());
        assert!(fence.lapsed());
    }

    #[test]
    fn an_older_heartbeat_answering_late_never_shortens_the_fence() {
        let fence = Fence::new(LEASE);
        let now = Instant::now();
        fence.heartbeat_succeeded(now);
        fence.heartbeat_succeeded(now - Duration::from_secs(1));
        assert_eq!(fence.open_until(), Some(now + LEASE - Fence::margin(LEASE)));
    }
}

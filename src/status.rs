//! What the pod tells about itself: liveness, readiness and the `/status` report. The
//! coordinator writes it every round; the HTTP handlers only read it.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A loop that has not finished a round for this long is stuck, and the pod should be restarted.
/// Generous, since one round can include slow AWS calls with their own retries.
const STUCK_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard_id: String,
    /// owned, unowned, waiting_for_parent or finished
    pub state: &'static str,
    pub owner: Option<String>,
    pub checkpoint: String,
    pub parent_shard_ids: Vec<String>,
    /// Only for the shards this pod owns.
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusReport {
    pub worker_id: String,
    pub stream_arn: String,
    pub ready: bool,
    pub workers: usize,
    pub leases_owned: usize,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug)]
pub struct StatusBoard {
    /// The first shard sync is done (stream and lease table were reachable).
    synced: AtomicBool,
    /// SIGTERM came: not ready any more, before the leases are released.
    stopping: AtomicBool,
    last_round: RwLock<Instant>,
    report: RwLock<StatusReport>,
}

impl StatusBoard {
    pub fn new(worker_id: &str, stream_arn: &str) -> StatusBoard {
        StatusBoard {
            synced: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_round: RwLock::new(Instant::now()),
            report: RwLock::new(StatusReport {
                worker_id: worker_id.to_owned(),
                stream_arn: stream_arn.to_owned(),
                ..StatusReport::default()
            }),
        }
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    /// The coordinator calls this after every round, whatever the round's AWS calls returned:
    /// liveness is about the process, not about AWS or Nakadi being reachable.
    pub fn round_done(&self) {
        *self.last_round.write().expect("status lock poisoned") = Instant::now();
    }

    pub fn live(&self) -> bool {
        self.last_round
            .read()
            .expect("status lock poisoned")
            .elapsed()
            < STUCK_AFTER
    }

    pub fn publish(&self, shards: Vec<ShardStatus>, workers: usize, leases_owned: usize) {
        let mut report = self.report.write().expect("status lock poisoned");
        report.shards = shards;
        report.workers = workers;
        report.leases_owned = leases_owned;
    }

    pub fn report(&self) -> StatusReport {
        let mut report = self.report.read().expect("status lock poisoned").clone();
        report.ready = self.ready();
        report
    }
}

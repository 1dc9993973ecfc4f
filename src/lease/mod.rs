//! The lease table: one lease per shard (owner, fencing counter, checkpoint, lineage), and worker
//! heartbeats, so several pods share a stream and take over from each other.
//!
//! `table` is the DynamoDB access with conditional writes; `coordinator` is the loop that syncs
//! shards, renews, takes and balances leases and runs a shard worker per owned lease.

pub mod table;
mod wire;

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Mutex;

use crate::ids::ShardId;
use crate::status::LiveShard;
use crate::stream::Position;

pub use table::{LeaseError, LeaseTable};

/// Wall-clock milliseconds since the epoch: the unit of record creation times, checkpoints'
/// `checkpoint_created_ms` and a rewind's `replay_from_ms`. Milliseconds, not seconds, so a time
/// given to the millisecond compares correctly with the present.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Where a shard's reading stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    TrimHorizon,
    /// Written by versions that opened a LATEST iterator for a lease that had not reached a
    /// record yet; read from TRIM_HORIZON now (see [`StreamStart`]), so a new owner never skips
    /// what was written while the lease changed hands.
    Latest,
    /// The last record whose event was delivered or dead-lettered.
    Sequence(String),
    /// Read to its end; its children may start.
    ShardEnd,
}

impl Checkpoint {
    pub fn parse(s: &str) -> Checkpoint {
        match s {
            "TRIM_HORIZON" => Checkpoint::TrimHorizon,
            "LATEST" => Checkpoint::Latest,
            "SHARD_END" => Checkpoint::ShardEnd,
            seq => Checkpoint::Sequence(seq.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Checkpoint::TrimHorizon => "TRIM_HORIZON",
            Checkpoint::Latest => "LATEST",
            Checkpoint::ShardEnd => "SHARD_END",
            Checkpoint::Sequence(seq) => seq,
        }
    }

    /// Where reading continues; None for a finished shard. A lease that has not reached a record
    /// reads from TRIM_HORIZON, whatever the stream's initial position: records before the
    /// stream's start are skipped by their creation time instead, so no record written after
    /// the start can fall between two owners' iterators.
    pub fn position(&self) -> Option<Position> {
        match self {
            Checkpoint::TrimHorizon | Checkpoint::Latest => Some(Position::TrimHorizon),
            Checkpoint::Sequence(seq) => Some(Position::After(seq.clone())),
            Checkpoint::ShardEnd => None,
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shard lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard_id: ShardId,
    pub owner: Option<String>,
    /// Incremented by every write; a write conditioned on the counter it last saw is how a
    /// worker proves it still owns the lease (the fencing token).
    pub counter: u64,
    pub checkpoint: Checkpoint,
    pub parent_shard_ids: Vec<ShardId>,
    pub owner_switches: u64,
    /// A worker with too few leases asked the owner to hand this one over; the owner finishes
    /// its page, checkpoints and releases it, so balancing never publishes anything twice.
    pub handoff_to: Option<String>,
    /// The sequence number of the shard's last record, written with SHARD_END, so the children's
    /// workers can check that their first record comes after it. None before the shard's end,
    /// for a shard without records or finished as trimmed, and on items of versions that did not
    /// write it: the children then skip the check.
    pub last_sequence_number: Option<String>,
    /// When the newest event delivered up to the checkpoint was written (ms since the epoch):
    /// how old the shard's delivered data is, and whether a finished shard holds records from
    /// a rewind's time on. None before the first checkpoint of a version that writes it.
    pub checkpoint_created_ms: Option<i64>,
    /// What operators asked of this lease with `rewind` and `skip`.
    pub operator: OperatorMarks,
}

#[cfg(test)]
impl Lease {
    /// A lease as a test describes it: counter 1, everything else unset.
    pub fn example(shard: &str, owner: Option<&str>, checkpoint: &str, parents: &[&str]) -> Lease {
        Lease {
            shard_id: ShardId::new(shard),
            owner: owner.map(str::to_owned),
            counter: 1,
            checkpoint: Checkpoint::parse(checkpoint),
            parent_shard_ids: parents.iter().map(|p| ShardId::new(*p)).collect(),
            owner_switches: 0,
            handoff_to: None,
            last_sequence_number: None,
            checkpoint_created_ms: None,
            operator: OperatorMarks::default(),
        }
    }
}

/// The operator's requests on a lease. They are written with the fencing counter moved and the
/// owner removed, so the pod reading the shard stops at once without a checkpoint, and whoever
/// takes the lease next reads them with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorMarks {
    /// Set by a rewind: records created before this instant (ms since the epoch, less
    /// [`START_MARGIN_MS`]) are skipped while the shard is read again; 0 skips nothing. It
    /// replaces the stream start's skip for this lease, which the operator chose to read again.
    pub replay_from_ms: Option<i64>,
    /// Records whose events go to the dead-letter queue instead of Nakadi.
    pub skip_sequence_numbers: Vec<String>,
    /// Who asked for what, oldest first.
    pub audit: Vec<AuditEntry>,
}

/// One operator action on a lease, kept on the lease item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// `rewind` or `skip`.
    pub action: String,
    /// The caller's identity (STS GetCallerIdentity's ARN).
    pub by: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
    /// What changed, in words: "checkpoint 4900… → TRIM_HORIZON, replay from 2026-12-07T05:00:00Z".
    pub change: String,
}

impl OperatorMarks {
    /// The stream start as this lease's reader applies it: a rewind's point replaces it.
    pub fn start(&self, stream: &StreamStart) -> StreamStart {
        match self.replay_from_ms {
            Some(ms) => StreamStart {
                position: "rewind".to_owned(),
                skip_before_ms: (ms > 0).then_some(ms),
            },
            None => stream.clone(),
        }
    }
}

/// A worker's heartbeat item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub worker_id: String,
    pub counter: u64,
    /// What the pod publishes this stream's records as (event type, filters, options), so pods
    /// of two different configurations never share one stream's shards. `None` from versions
    /// that did not write one.
    pub fingerprint: Option<String>,
}

/// How a stream was first read: decided once, by the first pod that ever started on it, and kept
/// in an item that is never deleted, so neither a pod starting later nor a stream whose leases
/// all aged out decides again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// `TRIM_HORIZON`, `LATEST`, or an RFC 3339 time, as configured when it was decided.
    pub position: String,
    /// Records created before this instant (ms since the epoch), less [`START_MARGIN_MS`], are
    /// skipped by every owner of a lease that has not reached a record yet; `None` reads
    /// everything the stream holds.
    pub skip_before_ms: Option<i64>,
}

/// `ApproximateCreationDateTime` is rounded down to the second, and so is the `Date` header the
/// start time comes from: a record written after the start may carry a time up to a second
/// before it, so it is kept.
pub const START_MARGIN_MS: i64 = 1000;

impl StreamStart {
    /// Whether a record created at `created_ms` predates the stream's start.
    pub fn skips(&self, created_ms: i64) -> bool {
        self.skip_before_ms
            .is_some_and(|start| created_ms < start - START_MARGIN_MS)
    }
}

/// What this pod knows about the other pods' heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its counter moved within the lease duration.
    Alive,
    /// Its counter stood still for the lease duration: it may be taken over, provided the counter
    /// is still this value when the take is written.
    Silent { counter: u64 },
    /// No heartbeat item: the pod exited (it removes its heartbeat last) or never started.
    Absent,
}

/// A lease this pod owns, shared by its shard worker (checkpoints) and the coordinator
/// (renewals). Both write the same item, so both go through the one mutex that holds the
/// counter: neither can use a counter the other has already moved.
#[derive(Debug)]
pub struct OwnedLease {
    pub shard_id: ShardId,
    pub lease_key: String,
    state: Mutex<OwnedState>,
    /// The checkpoint in `state` as of its last successful write, readable without waiting for
    /// a write in flight (which holds `state`): what `/status` shows.
    written: RwLock<Checkpoint>,
    /// Age of the newest record processed, in ms; 0 when caught up. Read for the lag metric.
    lag_ms: AtomicI64,
}

#[derive(Debug, Clone)]
struct OwnedState {
    counter: u64,
    checkpoint: Checkpoint,
}

impl OwnedLease {
    pub fn new(
        shard_id: ShardId,
        lease_key: String,
        counter: u64,
        checkpoint: Checkpoint,
    ) -> OwnedLease {
        OwnedLease {
            shard_id,
            lease_key,
            written: RwLock::new(checkpoint.clone()),
            state: Mutex::new(OwnedState {
                counter,
                checkpoint,
            }),
            lag_ms: AtomicI64::new(0),
        }
    }

    pub async fn checkpoint(&self) -> Checkpoint {
        self.state.lock().await.checkpoint.clone()
    }

    /// The checkpoint last written, at once, even while a write is in flight.
    pub fn written_checkpoint(&self) -> Checkpoint {
        self.written
            .read()
            .expect("checkpoint lock poisoned")
            .clone()
    }

    /// Called with `state` held, once the lease table has `checkpoint`.
    fn wrote(&self, state: &mut OwnedState, checkpoint: &Checkpoint) {
        state.checkpoint = checkpoint.clone();
        *self.written.write().expect("checkpoint lock poisoned") = checkpoint.clone();
    }

    pub fn set_lag_ms(&self, lag: i64) {
        self.lag_ms.store(lag.max(0), Ordering::Relaxed);
    }

    pub fn lag_ms(&self) -> i64 {
        self.lag_ms.load(Ordering::Relaxed)
    }
}

impl LiveShard for OwnedLease {
    fn checkpoint(&self) -> String {
        self.written_checkpoint().to_string()
    }

    fn lag_seconds(&self) -> f64 {
        self.lag_ms() as f64 / 1000.0
    }
}

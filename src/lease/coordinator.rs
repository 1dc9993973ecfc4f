//! The coordinator: one task per pod that owns the leases and the shard workers.
//!
//! Every round (RELAY_LEASE_RENEW_INTERVAL) it
//! 1. beats its heartbeat and renews every lease it owns (a lost one stops its worker at once),
//! 2. reads the lease table, and notes for every lease and heartbeat when its counter last moved,
//!    on this pod's own monotonic clock: a counter that has not moved for RELAY_LEASE_DURATION is
//!    expired. No two clocks are compared, so skew between pods does not matter (as in KCL);
//! 3. now and then describes the stream and creates leases for new shards,
//! 4. takes free and expired leases whose parents are finished, up to its fair share, and asks
//!    the busiest worker for one lease per round while that one has two more than this pod, so
//!    pods end within one lease of the mean. The owner hands a requested lease over gracefully
//!    (finishes its page, checkpoints, releases), so balancing publishes nothing twice,
//! 5. starts a shard worker per newly owned lease and publishes status and metrics.
//!
//! On shutdown it lets the workers finish their pages (renewing meanwhile), releases their leases
//! and removes its heartbeat, so the other pods continue at their next round.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use rand::seq::SliceRandom;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::table::Snapshot;
use super::{Checkpoint, Lease, LeaseError, OwnedLease};
use crate::config::{InitialPosition, LeaseTiming};
use crate::metrics::SHARD_STATES;
use crate::status::{ShardStatus, StatusBoard};
use crate::stream::lineage::Lineage;
use crate::stream::worker::{Pipeline, ShardExit, ShardWorker};
use crate::stream::{Shard, ShardId};

/// How many lease writes run at once when renewing: enough for a pod with a thousand shards to
/// renew within a round, few enough not to burst the table.
const RENEW_CONCURRENCY: usize = 32;

struct Running {
    lease: Arc<OwnedLease>,
    stop: CancellationToken,
    abort: CancellationToken,
    lost: CancellationToken,
}

impl Running {
    /// The lease is gone: stop the worker where it is, without a checkpoint.
    fn cancel_lost(&self) {
        self.lost.cancel();
        self.abort.cancel();
        self.stop.cancel();
    }
}

pub struct Coordinator {
    pipeline: Arc<Pipeline>,
    timing: LeaseTiming,
    initial_position: InitialPosition,
    status: Arc<StatusBoard>,
    /// This table's place on the status board.
    slot: usize,
    /// SIGTERM: stop reading; workers finish their pages.
    shutdown: CancellationToken,
    /// The drain deadline: workers stop even mid-page.
    deadline: CancellationToken,
    running: HashMap<ShardId, Running>,
    workers: JoinSet<ShardExit>,
    /// Which shard each worker task reads, to know the shard even when its task panicked.
    tasks: HashMap<tokio::task::Id, ShardId>,
    /// Per lease and heartbeat key: the counter last seen and when it was first seen.
    observed: HashMap<String, (u64, Instant)>,
    /// The stream's shards at the last sync.
    stream_shards: Vec<Shard>,
    last_sync: Option<Instant>,
}

impl Coordinator {
    pub fn new(
        pipeline: Arc<Pipeline>,
        timing: LeaseTiming,
        initial_position: InitialPosition,
        (status, slot): (Arc<StatusBoard>, usize),
        shutdown: CancellationToken,
        deadline: CancellationToken,
    ) -> Coordinator {
        Coordinator {
            pipeline,
            timing,
            initial_position,
            status,
            slot,
            shutdown,
            deadline,
            running: HashMap::new(),
            workers: JoinSet::new(),
            tasks: HashMap::new(),
            observed: HashMap::new(),
            stream_shards: Vec::new(),
            last_sync: None,
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.timing.renew_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first round only observes: pods started together see each other's heartbeats
        // before taking leases, instead of the first one taking everything and shedding it again.
        let mut observe_only = true;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Some(joined) = self.workers.join_next_with_id() => self.on_worker_exit(joined).await,
                _ = tick.tick() => {
                    self.round(observe_only).await;
                    observe_only = false;
                }
            }
        }
        self.drain().await;
    }

    async fn round(&mut self, observe_only: bool) {
        let p = self.pipeline.clone();
        if let Err(e) = p.leases.heartbeat(&p.worker_id).await {
            warn!(error = %e, "heartbeat failed");
        }
        self.renew_all().await;
        let snapshot = match p.leases.scan().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "reading the lease table failed; trying again next round");
                self.status.round_done(self.slot);
                return;
            }
        };
        let now = Instant::now();
        self.observe(&snapshot, now);
        self.hand_over_requested(&snapshot);
        if self.sync_due(now) {
            match self.sync_shards(&snapshot).await {
                Ok(()) => {
                    self.last_sync = Some(now);
                    self.status.set_synced(self.slot);
                }
                Err(e) => warn!(error = %e, "shard sync failed; trying again next round"),
            }
        }
        let live_workers = self.live_workers(&snapshot, now);
        if !observe_only && self.status.synced(self.slot) {
            self.acquire(&snapshot, live_workers, now).await;
        }
        self.publish_status(&snapshot, live_workers);
        self.status.round_done(self.slot);
    }

    fn sync_due(&self, now: Instant) -> bool {
        self.last_sync
            .is_none_or(|last| now.duration_since(last) >= self.timing.shard_sync_interval)
    }

    async fn renew_all(&mut self) {
        let p = self.pipeline.clone();
        let leases: Vec<Arc<OwnedLease>> = self.running.values().map(|r| r.lease.clone()).collect();
        let results: Vec<(ShardId, Result<(), LeaseError>)> = futures::stream::iter(leases)
            .map(|lease| {
                let p = p.clone();
                async move {
                    let r = p.leases.renew(&lease, &p.worker_id).await;
                    (lease.shard_id.clone(), r)
                }
            })
            .buffer_unordered(RENEW_CONCURRENCY)
            .collect()
            .await;
        for (shard, result) in results {
            match result {
                Ok(()) => {}
                Err(LeaseError::Lost(_)) => {
                    warn!(shard_id = %shard, "lease lost to another worker; stopping the shard without checkpoint");
                    self.pipeline.metrics.leases_lost.inc();
                    if let Some(r) = self.running.get(&shard) {
                        r.cancel_lost();
                    }
                }
                Err(e) => {
                    warn!(shard_id = %shard, error = %e, "renewing a lease failed; it may expire")
                }
            }
        }
    }

    fn observe(&mut self, snapshot: &Snapshot, now: Instant) {
        let keys = snapshot
            .leases
            .iter()
            .map(|l| (format!("shard:{}", l.shard_id), l.counter))
            .chain(
                snapshot
                    .workers
                    .iter()
                    .map(|w| (format!("worker:{}", w.worker_id), w.counter)),
            );
        let mut seen = HashSet::new();
        for (key, counter) in keys {
            let entry = self.observed.entry(key.clone()).or_insert((counter, now));
            if entry.0 != counter {
                *entry = (counter, now);
            }
            seen.insert(key);
        }
        self.observed.retain(|k, _| seen.contains(k));
    }

    /// A counter that has not moved for a lease duration, as this pod observed it.
    fn expired(&self, key: &str, now: Instant) -> bool {
        self.observed
            .get(key)
            .is_some_and(|(_, at)| now.duration_since(*at) >= self.timing.duration)
    }

    /// Workers whose heartbeat moves, this pod included. A worker with an expired lease has
    /// stopped renewing and counts as gone even if its heartbeat has not expired yet (it beats
    /// before it renews, so it expires up to a round later): otherwise the survivors would keep
    /// their old share for one more round before taking its leases.
    fn live_workers(&self, snapshot: &Snapshot, now: Instant) -> usize {
        let stalled: HashSet<&str> = snapshot
            .leases
            .iter()
            .filter(|l| self.expired(&format!("shard:{}", l.shard_id), now))
            .filter_map(|l| l.owner.as_deref())
            .collect();
        let others = snapshot
            .workers
            .iter()
            .filter(|w| w.worker_id != self.pipeline.worker_id)
            .filter(|w| !self.expired(&format!("worker:{}", w.worker_id), now))
            .filter(|w| !stalled.contains(w.worker_id.as_str()))
            .count();
        others + 1
    }

    /// Describes the stream and creates a lease for every shard that has none. On the very first
    /// start (no leases for this stream at all) shards start at RELAY_INITIAL_POSITION; shards
    /// found later always start at TRIM_HORIZON, so nothing written after the first start is
    /// skipped.
    async fn sync_shards(&mut self, snapshot: &Snapshot) -> Result<(), crate::stream::StreamError> {
        let p = self.pipeline.clone();
        let info = p.streams.describe(&p.stream_arn).await?;
        let first_start = snapshot.leases.is_empty();
        let known: HashSet<&ShardId> = snapshot.leases.iter().map(|l| &l.shard_id).collect();
        for shard in info.shards.iter().filter(|s| !known.contains(&s.id)) {
            let checkpoint = match (first_start, self.initial_position) {
                (true, InitialPosition::Latest) if shard.closed => Checkpoint::ShardEnd,
                (true, InitialPosition::Latest) => Checkpoint::Latest,
                _ => Checkpoint::TrimHorizon,
            };
            let parents: Vec<ShardId> = shard.parent.iter().cloned().collect();
            match p.leases.create(&shard.id, &parents, &checkpoint).await {
                Ok(true) => info!(shard_id = %shard.id, %checkpoint, "new shard"),
                Ok(false) => {}
                Err(e) => warn!(shard_id = %shard.id, error = %e, "creating a lease failed"),
            }
        }
        // Leases of finished shards that the stream no longer lists (trimmed after 24 h) are
        // deleted; their children then count them as done (see lineage).
        let listed: HashSet<&ShardId> = info.shards.iter().map(|s| &s.id).collect();
        for lease in &snapshot.leases {
            if lease.checkpoint == Checkpoint::ShardEnd && !listed.contains(&lease.shard_id) {
                if let Err(e) = p.leases.delete(lease).await {
                    warn!(shard_id = %lease.shard_id, error = %e, "deleting a finished lease failed");
                }
            }
        }
        self.stream_shards = info.shards;
        Ok(())
    }

    fn lineage<'a>(&'a self, snapshot: &'a Snapshot) -> Lineage<'a> {
        Lineage::new(
            snapshot
                .leases
                .iter()
                .map(|l| (&l.shard_id, l.checkpoint == Checkpoint::ShardEnd)),
            self.stream_shards.iter().map(|s| &s.id),
        )
    }

    async fn acquire(&mut self, snapshot: &Snapshot, live_workers: usize, now: Instant) {
        let me = self.pipeline.worker_id.clone();
        let lineage = self.lineage(snapshot);
        let active: Vec<&Lease> = snapshot
            .leases
            .iter()
            .filter(|l| {
                l.checkpoint != Checkpoint::ShardEnd && lineage.may_start(&l.parent_shard_ids)
            })
            .collect();
        let target = active.len().div_ceil(live_workers);
        let owner_live = |l: &Lease| {
            l.owner
                .as_deref()
                .is_some_and(|o| o != me && !self.expired(&format!("shard:{}", l.shard_id), now))
        };
        // Free, expired, or ours in the table but not running here (this pod restarted under
        // the same worker id): free ones first, they need no takeover.
        let mut candidates: Vec<&Lease> = active
            .iter()
            .copied()
            .filter(|l| !self.running.contains_key(&l.shard_id) && !owner_live(l))
            .collect();
        // In random order, so pods starting together do not all race for the same leases.
        candidates.shuffle(&mut rand::rng());
        candidates.sort_by_key(|l| l.owner.is_some());
        let to_take: Vec<&Lease> = candidates
            .into_iter()
            .take(target.saturating_sub(self.running.len()))
            .collect();
        if to_take.is_empty() {
            self.balance(&active, target, &owner_live).await;
        }
        for lease in to_take {
            match self.pipeline.leases.take(lease, &me).await {
                Ok(owned) => {
                    if lease.owner.as_deref().is_some_and(|o| o != me) {
                        self.pipeline.metrics.takeover("expired");
                        info!(shard_id = %lease.shard_id, from = lease.owner.as_deref(), "took over an expired lease");
                    } else {
                        info!(shard_id = %lease.shard_id, checkpoint = %lease.checkpoint, "took a lease");
                    }
                    self.start(Arc::new(owned));
                }
                Err(LeaseError::Lost(_)) => {
                    info!(shard_id = %lease.shard_id, "another worker took the lease first");
                }
                Err(e) => warn!(shard_id = %lease.shard_id, error = %e, "taking a lease failed"),
            }
        }
    }

    /// Asks busier workers for leases until this pod would have its share: each request goes to
    /// the worker that has the most while it has at least two more than this pod, counting the
    /// requests already made, so pods end within one lease of the mean and never ask for more
    /// than they lack.
    async fn balance(
        &self,
        active: &[&Lease],
        target: usize,
        owner_live: &impl Fn(&Lease) -> bool,
    ) {
        let me = self.pipeline.worker_id.as_str();
        let mut mine = self.running.len()
            + active
                .iter()
                .filter(|l| l.handoff_to.as_deref() == Some(me) && l.owner.is_some())
                .count();
        let mut per_owner: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for l in active
            .iter()
            .copied()
            .filter(|l| owner_live(l) && l.handoff_to.is_none())
        {
            per_owner
                .entry(l.owner.as_deref().unwrap_or_default())
                .or_default()
                .push(l);
        }
        while mine < target {
            let Some((owner, leases)) = per_owner
                .iter_mut()
                .max_by_key(|(owner, leases)| (leases.len(), **owner))
                .filter(|(_, leases)| leases.len() >= mine + 2)
            else {
                return;
            };
            let lease = leases.pop().expect("a busiest worker has leases");
            match self.pipeline.leases.request_handoff(lease, me).await {
                Ok(()) => {
                    self.pipeline.metrics.takeover("balanced");
                    info!(shard_id = %lease.shard_id, from = %owner, "asked for a lease to balance the load");
                }
                Err(e) => {
                    info!(shard_id = %lease.shard_id, error = %e, "asking for a lease failed")
                }
            }
            mine += 1;
        }
    }

    /// Leases another worker asked for: their workers stop as on shutdown (finish the page,
    /// checkpoint) and `on_worker_exit` releases them.
    fn hand_over_requested(&self, snapshot: &Snapshot) {
        let me = &self.pipeline.worker_id;
        for lease in &snapshot.leases {
            let requested = lease.owner.as_ref() == Some(me)
                && lease.handoff_to.as_ref().is_some_and(|to| to != me);
            if let Some(running) = self.running.get(&lease.shard_id).filter(|_| requested) {
                if !running.stop.is_cancelled() {
                    info!(shard_id = %lease.shard_id, to = lease.handoff_to.as_deref(), "handing a lease over");
                    running.stop.cancel();
                }
            }
        }
    }

    fn start(&mut self, lease: Arc<OwnedLease>) {
        let running = Running {
            lease: lease.clone(),
            stop: self.shutdown.child_token(),
            abort: self.deadline.child_token(),
            lost: CancellationToken::new(),
        };
        let worker = ShardWorker {
            pipeline: self.pipeline.clone(),
            lease: lease.clone(),
            stop: running.stop.clone(),
            abort: running.abort.clone(),
            lost: running.lost.clone(),
        };
        let task = self.workers.spawn(worker.run());
        self.tasks.insert(task.id(), lease.shard_id.clone());
        self.running.insert(lease.shard_id.clone(), running);
    }

    async fn on_worker_exit(
        &mut self,
        joined: Result<(tokio::task::Id, ShardExit), tokio::task::JoinError>,
    ) {
        let (id, exit) = match joined {
            Ok(done) => done,
            Err(e) => {
                // A panic is a bug: the shard is released so that it is retried (by this pod or
                // another) from its last checkpoint.
                error!(error = %e, "a shard worker panicked");
                (e.id(), ShardExit::Aborted)
            }
        };
        let Some(shard) = self.tasks.remove(&id) else {
            return;
        };
        let Some(running) = self.running.remove(&shard) else {
            return;
        };
        match exit {
            ShardExit::Finished | ShardExit::LeaseLost => {}
            ShardExit::Stopped | ShardExit::Aborted | ShardExit::Gone => {
                if let Err(e) = self
                    .pipeline
                    .leases
                    .release(&running.lease, &self.pipeline.worker_id)
                    .await
                {
                    warn!(shard_id = %shard, error = %e, "releasing a lease failed; it will expire");
                }
            }
        }
    }

    /// Shutdown: the workers' `stop` tokens are children of `shutdown`, so they are stopping;
    /// wait for them while renewing, so a long last page does not let the leases expire under
    /// them, then release what they held.
    async fn drain(&mut self) {
        info!(shards = self.running.len(), "draining shard workers");
        let mut tick = tokio::time::interval(self.timing.renew_interval);
        tick.tick().await;
        while !self.workers.is_empty() {
            tokio::select! {
                Some(joined) = self.workers.join_next_with_id() => self.on_worker_exit(joined).await,
                _ = tick.tick() => self.renew_all().await,
            }
        }
        let p = &self.pipeline;
        if let Err(e) = p.leases.remove_heartbeat(&p.worker_id).await {
            warn!(error = %e, "removing the heartbeat failed; it will expire");
        }
        self.pipeline.metrics.leases_owned.set(0);
        info!("all shards released");
    }

    fn publish_status(&self, snapshot: &Snapshot, live_workers: usize) {
        let lineage = self.lineage(snapshot);
        let now = Instant::now();
        let mut counts: HashMap<&'static str, i64> =
            SHARD_STATES.into_iter().map(|s| (s, 0)).collect();
        let shards: Vec<ShardStatus> = snapshot
            .leases
            .iter()
            .map(|l| {
                // The snapshot was read before this round took or released anything: what this
                // pod runs now is fresher.
                let mine = self.running.contains_key(&l.shard_id);
                let owner = if mine {
                    Some(self.pipeline.worker_id.clone())
                } else {
                    l.owner.clone()
                };
                let state = if l.checkpoint == Checkpoint::ShardEnd {
                    "finished"
                } else if !lineage.may_start(&l.parent_shard_ids) {
                    "waiting_for_parent"
                } else if mine
                    || (l.owner.is_some() && !self.expired(&format!("shard:{}", l.shard_id), now))
                {
                    "owned"
                } else {
                    "unowned"
                };
                *counts.entry(state).or_default() += 1;
                ShardStatus {
                    table: self.pipeline.table.clone(),
                    shard_id: l.shard_id.to_string(),
                    state,
                    owner,
                    checkpoint: l.checkpoint.to_string(),
                    parent_shard_ids: l.parent_shard_ids.iter().map(ToString::to_string).collect(),
                    lag_seconds: self
                        .running
                        .get(&l.shard_id)
                        .map(|r| r.lease.lag_ms() as f64 / 1000.0),
                }
            })
            .collect();
        for (state, n) in counts {
            self.pipeline.metrics.shards(state, n);
        }
        let lag = self
            .running
            .values()
            .map(|r| r.lease.lag_ms())
            .max()
            .unwrap_or(0);
        let m = &self.pipeline.metrics;
        m.stream_lag.set(lag as f64 / 1000.0);
        m.leases_owned.set(self.running.len() as i64);
        m.workers.set(live_workers as i64);
        self.status
            .publish(self.slot, shards, live_workers, self.running.len());
    }
}

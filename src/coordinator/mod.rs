//! The coordinator: one task per pod and stream that owns the leases and the shard workers.
//!
//! Two loops, so that nothing delays the heartbeat:
//! - the **heartbeat** task writes this pod's heartbeat every RELAY_LEASE_RENEW_INTERVAL and
//!   extends the fence (`crate::fence`) from each success's send time. Nothing else runs in it.
//! - the **round** (same interval) reads the lease table, notes on this pod's own monotonic clock
//!   when every other pod's heartbeat counter last moved, describes the stream now and then
//!   (creating leases for new shards, finishing those that aged out), asks `plan` what to do, and
//!   does it: takes leases, asks busier pods for one, hands requested leases over, stops workers
//!   whose lease was lost.
//!
//! Lease items are written only on take, release, hand-over request and checkpoint; an idle lease
//! costs nothing. A pod whose heartbeat fails for the lease duration fences itself: its
//! publisher sends nothing more, every worker stops, and the pod takes leases afresh once its
//! heartbeat works again.
//!
//! On shutdown the workers finish their pages (the heartbeat keeps the fence open meanwhile),
//! their leases are released, and the heartbeat is removed, so the other pods continue at once.

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{InitialPosition, LeaseTiming};
use crate::ids::ShardId;
use crate::lease::table::Snapshot;
use crate::lease::{
    Checkpoint, Lease, LeaseError, Liveness, OperatorMarks, OwnedLease, StreamStart,
};
use crate::metrics::SHARD_STATES;
use crate::shard::{Pipeline, ShardExit, ShardWorker};
use crate::status::{LiveShard, ShardStatus, StatusBoard};
use crate::stream::Shard;
use crate::stream::lineage::{Lineage, ParentEnd};
use plan::View;

struct Running {
    lease: Arc<OwnedLease>,
    stop: CancellationToken,
    lost: CancellationToken,
}

/// A lease held while the coordinator checks whether its shard aged out of the stream.
struct Gone {
    lease: Arc<OwnedLease>,
    /// Complete listings of the stream since the error that did not list the shard.
    listings_without_it: u32,
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
    /// The drain deadline: no new publish request.
    deadline: CancellationToken,
    running: HashMap<ShardId, Running>,
    workers: JoinSet<ShardExit>,
    /// Which shard each worker task reads, to know the shard even when its task panicked.
    tasks: HashMap<tokio::task::Id, ShardId>,
    /// Per other pod: its heartbeat counter last seen and when this pod first saw it.
    observed: HashMap<String, (u64, Instant)>,
    /// The stream's shards at the last sync.
    stream_shards: Vec<Shard>,
    last_sync: Option<Instant>,
    gone: HashMap<ShardId, Gone>,
    /// Where the stream was first read; read (or decided) before the first lease is taken.
    start: Option<StreamStart>,
    /// A live pod of another configuration was seen in the last round.
    conflict: Option<String>,
    /// Leases this round's sync wrote (finished as trimmed, or released): the snapshot read
    /// before it shows them as they were, so the plan must not act on them until the next read.
    settled: HashSet<ShardId>,
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
            gone: HashMap::new(),
            start: None,
            conflict: None,
            settled: HashSet::new(),
        }
    }

    pub async fn run(mut self) {
        let beating = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.pipeline.clone(),
            self.timing.renew_interval,
            beating.clone(),
        ));
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
        beating.cancel();
        let _ = heartbeat.await;
        let p = &self.pipeline;
        if let Err(e) = p.leases.remove_heartbeat(&p.worker_id).await {
            warn!(error = %e, "removing the heartbeat failed; other pods see it fall silent");
        }
        info!("all shards released");
    }

    async fn round(&mut self, observe_only: bool) {
        let p = self.pipeline.clone();
        if p.fence.lapsed() {
            self.on_fence_lapsed().await;
        }
        let snapshot = match p.leases.scan().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "reading the lease table failed; trying again next round");
                self.status.round_done(self.slot);
                return;
            }
        };
        let now = Instant::now();
        let liveness = self.observe(&snapshot, now);
        self.check_conflict(&snapshot, &liveness);
        if self.start.is_none() {
            match p
                .leases
                .stream_start(self.initial_position, !snapshot.leases.is_empty())
                .await
            {
                Ok(start) => self.start = Some(start),
                Err(e) => {
                    warn!(error = %e, "reading the stream's start failed; trying again next round")
                }
            }
        }
        self.settled.clear();
        if self.sync_due(now) {
            match self.sync_shards(&snapshot).await {
                Ok(()) => {
                    self.last_sync = Some(now);
                    self.status.set_synced(self.slot);
                }
                Err(e) => warn!(error = %e, "shard sync failed; trying again next round"),
            }
        }
        let held: HashSet<ShardId> = self
            .running
            .keys()
            .chain(self.gone.keys())
            .chain(&self.settled)
            .cloned()
            .collect();
        // Owned, so that the plan can be carried out while the lineage is still read.
        let listed: Vec<ShardId> = self.stream_shards.iter().map(|s| s.id.clone()).collect();
        let lineage = lineage(&snapshot, &listed);
        let view = View {
            me: &p.worker_id,
            leases: &snapshot.leases,
            workers: &snapshot.workers,
            liveness: &liveness,
            lineage: &lineage,
            running: &held,
        };
        let may_take = !observe_only
            && self.status.synced(self.slot)
            && self.start.is_some()
            && self.conflict.is_none()
            && p.fence.is_open();
        let plan = plan::plan(&view, may_take);
        for shard in &plan.lost {
            if let Some(r) = self.running.get(shard) {
                warn!(shard_id = %shard, "lease taken by another pod; stopping the shard without checkpoint");
                p.metrics.leases_lost.inc();
                r.lost.cancel();
                r.stop.cancel();
            }
        }
        for shard in &plan.hand_over {
            if let Some(r) = self.running.get(shard).filter(|r| !r.stop.is_cancelled()) {
                info!(shard_id = %shard, "handing a lease over");
                r.stop.cancel();
            }
        }
        for take in &plan.take {
            match p
                .leases
                .take(take.lease, &p.worker_id, take.owner.as_ref())
                .await
            {
                Ok(owned) => {
                    match &take.owner {
                        Some((from, _)) => {
                            p.metrics.takeover("expired");
                            info!(shard_id = %take.lease.shard_id, %from, "took over the lease of a silent pod");
                        }
                        None => {
                            info!(shard_id = %take.lease.shard_id, checkpoint = %take.lease.checkpoint, "took a lease")
                        }
                    }
                    let parents = parent_ends(&snapshot, take.lease);
                    self.start_worker(Arc::new(owned), parents, &take.lease.operator);
                }
                Err(LeaseError::Lost(_)) => {
                    info!(shard_id = %take.lease.shard_id, "the lease changed or its owner beat again; not taken");
                }
                Err(e) => {
                    warn!(shard_id = %take.lease.shard_id, error = %e, "taking a lease failed")
                }
            }
        }
        for lease in &plan.request {
            match p.leases.request_handoff(lease, &p.worker_id).await {
                Ok(()) => {
                    p.metrics.takeover("balanced");
                    info!(shard_id = %lease.shard_id, from = lease.owner.as_deref(), "asked for a lease to balance the load");
                }
                Err(e) => {
                    info!(shard_id = %lease.shard_id, error = %e, "asking for a lease failed")
                }
            }
        }
        self.publish_status(&snapshot, &lineage, &liveness, plan.live_workers);
        self.status.round_done(self.slot);
    }

    /// Heartbeat counters of the other pods, as observed on this pod's clock: silent once a
    /// counter has not moved for the lease duration. No two clocks are compared.
    fn observe(&mut self, snapshot: &Snapshot, now: Instant) -> HashMap<String, Liveness> {
        let me = &self.pipeline.worker_id;
        let mut liveness = HashMap::new();
        for w in snapshot
            .workers
            .iter()
            .filter(|w| w.worker_id != me.as_str())
        {
            let entry = self
                .observed
                .entry(w.worker_id.clone())
                .or_insert((w.counter, now));
            if entry.0 != w.counter {
                *entry = (w.counter, now);
            }
            let state = if now.duration_since(entry.1) >= self.timing.duration {
                Liveness::Silent { counter: w.counter }
            } else {
                Liveness::Alive
            };
            liveness.insert(w.worker_id.clone(), state);
        }
        self.observed.retain(|id, _| liveness.contains_key(id));
        liveness
    }

    /// Pods that publish this stream under another configuration must not share its shards: this
    /// pod takes nothing while one of them is alive (a rolling deploy that changes the
    /// configuration waits for the old pods to go; docs/operating.md).
    fn check_conflict(&mut self, snapshot: &Snapshot, liveness: &HashMap<String, Liveness>) {
        let p = &self.pipeline;
        let other = snapshot.workers.iter().find(|w| {
            w.worker_id != p.worker_id.as_str()
                && liveness.get(&w.worker_id) == Some(&Liveness::Alive)
                && w.fingerprint.as_deref().is_some_and(|f| f != p.fingerprint)
        });
        match (other, &self.conflict) {
            (Some(w), None) => {
                error!(other_worker = %w.worker_id, theirs = w.fingerprint.as_deref(), ours = %p.fingerprint, "a live pod publishes this stream with another configuration (event type, filters or options); taking no leases until it is gone");
                self.conflict = Some(w.worker_id.clone());
            }
            (None, Some(was)) => {
                info!(other_worker = %was, "no live pod of another configuration any more; taking leases again");
                self.conflict = None;
            }
            _ => {}
        }
        p.metrics
            .config_conflict
            .set(i64::from(self.conflict.is_some()));
    }

    /// The fence lapsed: the leases may be other pods' by now. Every worker stops (the publisher
    /// already sends nothing), their leases are released where they are still this pod's, and
    /// a new term starts with the next heartbeat.
    async fn on_fence_lapsed(&mut self) {
        let p = self.pipeline.clone();
        error!(
            shards = self.running.len(),
            "no successful heartbeat for the lease duration; this pod stopped publishing and drops every lease (self-fencing)"
        );
        p.metrics.fence_lapses.inc();
        for r in self.running.values() {
            r.stop.cancel();
        }
        while let Some(joined) = self.workers.join_next_with_id().await {
            self.on_worker_exit(joined).await;
        }
        for (_, gone) in self.gone.drain() {
            let _ = p.leases.release(&gone.lease, &p.worker_id).await;
        }
        p.fence.reopen();
    }

    fn sync_due(&self, now: Instant) -> bool {
        // A shard that answered ResourceNotFoundException is checked sooner than the full
        // interval: its children wait on the answer.
        let interval = if self.gone.is_empty() {
            self.timing.shard_sync_interval
        } else {
            self.timing
                .shard_sync_interval
                .min(GONE_RECHECK.max(self.timing.renew_interval))
        };
        self.last_sync
            .is_none_or(|last| now.duration_since(last) >= interval)
    }

    /// Describes the stream, creates a lease for every shard that has none (always from
    /// TRIM_HORIZON: the stream's start decides what is skipped), deletes finished leases the
    /// stream no longer lists, and finishes the leases of shards that aged out unread.
    async fn sync_shards(&mut self, snapshot: &Snapshot) -> Result<(), crate::stream::StreamError> {
        let p = self.pipeline.clone();
        let info = p.streams.describe(&p.stream_arn).await?;
        let known: HashSet<&ShardId> = snapshot.leases.iter().map(|l| &l.shard_id).collect();
        for shard in info.shards.iter().filter(|s| !known.contains(&s.id)) {
            let parents: Vec<ShardId> = shard.parent.iter().cloned().collect();
            match p.leases.create(&shard.id, &parents).await {
                Ok(true) => info!(shard_id = %shard.id, "new shard"),
                Ok(false) => {}
                Err(e) => warn!(shard_id = %shard.id, error = %e, "creating a lease failed"),
            }
        }
        let listed: HashSet<&ShardId> = info.shards.iter().map(|s| &s.id).collect();
        // Leases of finished shards that the stream no longer lists are deleted; their children
        // then count them as done (see lineage).
        for lease in &snapshot.leases {
            if lease.checkpoint == Checkpoint::ShardEnd && !listed.contains(&lease.shard_id) {
                if let Err(e) = p.leases.delete(lease).await {
                    warn!(shard_id = %lease.shard_id, error = %e, "deleting a finished lease failed");
                }
            }
        }
        let mut decided = Vec::new();
        for (shard, gone) in &mut self.gone {
            if listed.contains(shard) {
                decided.push((shard.clone(), false));
            } else {
                gone.listings_without_it += 1;
                if plan::aged_out(gone.listings_without_it) {
                    decided.push((shard.clone(), true));
                }
            }
        }
        for (shard, aged_out) in decided {
            let gone = self.gone.remove(&shard).expect("decided from the map");
            self.settled.insert(shard.clone());
            if aged_out {
                self.finish_trimmed(&shard, &gone.lease).await;
            } else {
                info!(shard_id = %shard, "shard not found but still listed; releasing it to be read again");
                if let Err(e) = p.leases.release(&gone.lease, &p.worker_id).await {
                    warn!(shard_id = %shard, error = %e, "releasing a lease failed");
                }
            }
        }
        self.stream_shards = info.shards;
        Ok(())
    }

    /// The failure table's "shard gone from the stream before it was read to its end": counted
    /// as trimmed, and the lease finished so its children start.
    async fn finish_trimmed(&mut self, shard: &ShardId, lease: &Arc<OwnedLease>) {
        let p = &self.pipeline;
        let checkpoint = lease.checkpoint().await;
        match p.leases.finish_trimmed(lease, &p.worker_id).await {
            Ok(()) => {
                p.metrics.shards_trimmed.inc();
                error!(shard_id = %shard, %checkpoint, "shard aged out of the stream before it was read to its end; its unread records are lost; its children start now");
            }
            Err(e) => {
                warn!(shard_id = %shard, error = %e, "finishing the lease of an aged-out shard failed; trying again")
            }
        }
    }

    fn start_worker(
        &mut self,
        lease: Arc<OwnedLease>,
        parents: Vec<ParentEnd>,
        operator: &OperatorMarks,
    ) {
        if let Some(last) = operator.audit.last() {
            info!(shard_id = %lease.shard_id, action = %last.action, by = %last.by, reason = %last.reason, at = %last.at, change = %last.change, replay_from_ms = ?operator.replay_from_ms, skips = ?operator.skip_sequence_numbers, "reading the shard as an operator asked");
        }
        let start = self
            .start
            .as_ref()
            .expect("leases are taken once the start is known");
        let running = Running {
            lease: lease.clone(),
            stop: self.shutdown.child_token(),
            lost: CancellationToken::new(),
        };
        let worker = ShardWorker {
            pipeline: self.pipeline.clone(),
            lease: lease.clone(),
            start: operator.start(start),
            skips: operator.skip_sequence_numbers.iter().cloned().collect(),
            parents,
            stop: running.stop.clone(),
            lost: running.lost.clone(),
            deadline: self.deadline.clone(),
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
            ShardExit::Gone => {
                warn!(shard_id = %shard, "shard not found; checking whether it aged out of the stream");
                self.gone.insert(
                    shard,
                    Gone {
                        lease: running.lease,
                        listings_without_it: 0,
                    },
                );
            }
            ShardExit::Stopped | ShardExit::Aborted | ShardExit::Fenced => {
                if let Err(e) = self
                    .pipeline
                    .leases
                    .release(&running.lease, &self.pipeline.worker_id)
                    .await
                {
                    warn!(shard_id = %shard, error = %e, "releasing a lease failed; another pod takes it once this one is silent");
                }
            }
        }
    }

    /// Shutdown: the workers' `stop` tokens are children of `shutdown`, so they are stopping;
    /// wait for them (the heartbeat keeps the fence open), then release what they held.
    async fn drain(&mut self) {
        info!(shards = self.running.len(), "draining shard workers");
        while let Some(joined) = self.workers.join_next_with_id().await {
            self.on_worker_exit(joined).await;
        }
        let p = self.pipeline.clone();
        for (shard, gone) in self.gone.drain() {
            if let Err(e) = p.leases.release(&gone.lease, &p.worker_id).await {
                warn!(shard_id = %shard, error = %e, "releasing a lease failed");
            }
        }
        p.metrics.leases_owned.set(0);
    }

    fn publish_status(
        &self,
        snapshot: &Snapshot,
        lineage: &Lineage<'_>,
        liveness: &HashMap<String, Liveness>,
        live_workers: usize,
    ) {
        let me = &self.pipeline.worker_id;
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
                    Some(me.to_string())
                } else {
                    l.owner.clone()
                };
                let owner_alive = l
                    .owner
                    .as_deref()
                    .is_some_and(|o| o == me.as_str() || liveness.get(o) == Some(&Liveness::Alive));
                let state = if l.checkpoint == Checkpoint::ShardEnd {
                    "finished"
                } else if !lineage.may_start(&l.parent_shard_ids) {
                    "waiting_for_parent"
                } else if mine || owner_alive {
                    "owned"
                } else {
                    "unowned"
                };
                *counts.entry(state).or_default() += 1;
                let running = self.running.get(&l.shard_id);
                ShardStatus {
                    table: self.pipeline.table.clone(),
                    shard_id: l.shard_id.to_string(),
                    state,
                    owner,
                    // The scan may predate the worker's last checkpoint: the worker knows.
                    checkpoint: running.map_or_else(
                        || l.checkpoint.to_string(),
                        |r| r.lease.written_checkpoint().to_string(),
                    ),
                    parent_shard_ids: l.parent_shard_ids.iter().map(ToString::to_string).collect(),
                    lag_seconds: running.map(|r| r.lease.lag_ms() as f64 / 1000.0),
                    live: running.map(|r| r.lease.clone() as Arc<dyn LiveShard>),
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

fn lineage<'a>(snapshot: &'a Snapshot, listed: &'a [ShardId]) -> Lineage<'a> {
    Lineage::new(
        snapshot
            .leases
            .iter()
            .map(|l| (&l.shard_id, l.checkpoint == Checkpoint::ShardEnd)),
        listed,
    )
}

/// The parents of `lease` that the snapshot shows read to their end with their last record.
/// The plan takes a child only once its parents are finished in that same snapshot, and the
/// SHARD_END write carries the last record, so no parent is missed for want of a newer read.
fn parent_ends(snapshot: &Snapshot, lease: &Lease) -> Vec<ParentEnd> {
    lease
        .parent_shard_ids
        .iter()
        .filter_map(|id| {
            let parent = snapshot.leases.iter().find(|l| &l.shard_id == id)?;
            Some(ParentEnd {
                shard_id: id.clone(),
                last_sequence_number: parent
                    .last_sequence_number
                    .clone()
                    .filter(|_| parent.checkpoint == Checkpoint::ShardEnd)?,
            })
        })
        .collect()
}

/// How soon a shard that answered ResourceNotFoundException is looked for in the stream again.
const GONE_RECHECK: Duration = Duration::from_secs(5);

/// The heartbeat loop: nothing else runs in it, so a slow scan or a slow DescribeStream never
/// delays it. Each beat is bounded by the lease table's call timeout; a success extends the fence
/// from the time the beat was sent.
async fn heartbeat(pipeline: Arc<Pipeline>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent_at = tokio::time::Instant::now();
        match pipeline
            .leases
            .heartbeat(&pipeline.worker_id, &pipeline.fingerprint)
            .await
        {
            Ok(()) => pipeline.fence.heartbeat_succeeded(sent_at),
            Err(e) => {
                warn!(error = %e, "heartbeat failed; the pod stops publishing if this lasts the lease duration")
            }
        }
    }
}

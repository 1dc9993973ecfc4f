//! The loop that carries one shard's records to Nakadi.
//!
//! wait for records (the only step that races shutdown) → transform → deliver (publish,
//! dead-letter what finally failed: [`crate::delivery`]) → checkpoint the done prefix → again.
//! While a page is delivered, the next page is read and the previous page's checkpoint is
//! written, so neither wait adds to each page's delay; checkpoints still land one at a time, in
//! order, and only for delivered records, at most one per RELAY_CHECKPOINT_INTERVAL. A page that
//! was read is finished and checkpointed before the loop looks at the stop signal again; the page
//! read ahead meanwhile is dropped unpublished on stop.
//!
//! What cuts a page short: the drain deadline and the self-fence stop new publish requests (the
//! prefix that was delivered is still checkpointed, so whoever continues starts right after it);
//! the lease being lost stops everything at once, without a checkpoint.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::delivery::{Delivery, Entry, Settled};
use crate::dlq::{DeadLetter, DeadLetterQueue, Origin};
use crate::fence::Fence;
use crate::filter::Filtered;
use crate::ids::{StreamArn, WorkerId};
use crate::lease::{Checkpoint, LeaseError, LeaseTable, OwnedLease, StreamStart, now_ms};
use crate::metrics::TableMetrics;
use crate::nakadi::{Failure, Gate, Halt, PublishContext};
use crate::retry::Backoff;
use crate::route::Routes;
use crate::stream::lineage::{ParentEnd, out_of_order};
use crate::stream::page::RecordsPage;
use crate::stream::{Position, StreamError, StreamsClient};
use crate::transform::Event;

/// What every shard worker of this pod shares.
pub struct Pipeline {
    /// The table's name, as in metrics and `/status`.
    pub table: String,
    pub stream_arn: StreamArn,
    pub worker_id: WorkerId,
    pub streams: StreamsClient,
    pub leases: LeaseTable,
    /// Where the table's records go: one route, or several by their images' values.
    pub routes: Routes,
    pub dlq: DeadLetterQueue,
    pub metrics: TableMetrics,
    /// This pod's fence over the stream's leases, opened by the heartbeat.
    pub fence: Arc<Fence>,
    /// [`crate::config::TableConfig::fingerprint`], carried in the heartbeat.
    pub fingerprint: String,
    /// RELAY_IDLE_POLL_INTERVAL.
    pub idle_poll_interval: Duration,
    /// RELAY_CHECKPOINT_INTERVAL.
    pub checkpoint_interval: Duration,
}

/// Why a shard worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardExit {
    /// Read to its end and checkpointed at SHARD_END; the children may start.
    Finished,
    /// Shutdown: everything read was delivered and checkpointed; the lease can be released.
    Stopped,
    /// Another worker owns the lease now; nothing was checkpointed after the loss.
    LeaseLost,
    /// The drain deadline passed mid-page: what was delivered is checkpointed, the rest is read
    /// again by whoever continues.
    Aborted,
    /// The self-fence closed mid-page: as `Aborted`, and the coordinator drops every lease.
    Fenced,
    /// The shard answered ResourceNotFoundException: it may have aged out of the stream, which
    /// the coordinator checks before it finishes the lease.
    Gone,
}

/// The first wait after an empty poll; it doubles up to RELAY_IDLE_POLL_INTERVAL while polls
/// stay empty, so a shard between two bursts is read again soon and a quiet one costs few calls.
/// A poll that returned records is followed at once by the next.
const IDLE_POLL_MIN: Duration = Duration::from_millis(25);

/// Idle polls of all shards fall on common ticks of about this length: the polls due within one
/// tick are sent in one wake-up of the runtime instead of one wake-up each, which for idle
/// shards costs more CPU than the request. The short first waits after records are not put on
/// ticks.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// The tick for an idle-poll interval: the one nearest to [`IDLE_TICK`] that divides it, so a
/// shard that stays idle polls once per interval, not once per interval rounded to a tick.
fn idle_tick(interval: Duration) -> Duration {
    let ticks = (interval.as_nanos() + IDLE_TICK.as_nanos() / 2) / IDLE_TICK.as_nanos();
    interval / ticks.clamp(1, u32::MAX as u128) as u32
}

/// When a shard that waits at most `wait` from `now` polls again: the last tick before
/// `now + wait`. Rounding down keeps the interval the longest wait; and since a shard's polls
/// start on ticks, a poll that returns within a tick waits whole ticks, the interval exactly.
fn idle_deadline(now: Instant, wait: Duration, tick: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let deadline = now + wait;
    if wait < 2 * tick {
        return deadline;
    }
    let epoch = *EPOCH.get_or_init(Instant::now);
    let tick = tick.as_nanos();
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    epoch + Duration::from_nanos((since / tick * tick) as u64)
}

/// Most GetRecords calls of a pod in flight at once. Each call in flight holds an HTTP/1.1
/// connection whose buffers grow to the megabyte pages it has read, so without a bound a pod
/// owning a thousand shards keeps nearly as many connections and their buffers (figures in
/// docs/performance.md). An idle shard's poll takes milliseconds a
/// few times a second, so 64 calls serve thousands of shards; a busy shard keeps its call short
/// because its page is delivered without a permit.
const READS_IN_FLIGHT: usize = 64;
static READS: Semaphore = Semaphore::const_new(READS_IN_FLIGHT);

pub struct ShardWorker {
    pub pipeline: Arc<Pipeline>,
    pub lease: Arc<OwnedLease>,
    /// Where the stream was first read, or where an operator's rewind asked to read this shard
    /// from: records before it are skipped.
    pub start: StreamStart,
    /// Records an operator asked to skip: their events are dead-lettered, not published.
    pub skips: HashSet<String>,
    /// The parents read to their end whose last record is known, as the lease table showed them
    /// when this lease was taken: a shard that has not reached a record yet checks that its
    /// first comes after each of them.
    pub parents: Vec<ParentEnd>,
    /// Shutdown, hand-over or fence lapse: stop waiting for records.
    pub stop: CancellationToken,
    /// The lease is another pod's: stop even in the middle of a page, without a checkpoint.
    pub lost: CancellationToken,
    /// The drain deadline: no new publish request.
    pub deadline: CancellationToken,
}

/// Checkpoint attempts once the drain deadline passed or the fence closed: the lease is released
/// next, and giving up on a struggling lease table only means a few records published again.
const CHECKPOINTS_AFTER_GIVING_UP: u32 = 3;

impl ShardWorker {
    pub async fn run(self) -> ShardExit {
        let span = info_span!("shard", shard_id = %self.lease.shard_id);
        async move {
            let exit = self.read_shard().await;
            info!(?exit, "shard worker ended");
            exit
        }
        .instrument(span)
        .await
    }

    async fn read_shard(&self) -> ShardExit {
        let p = &self.pipeline;
        let Some(mut position) = self.lease.checkpoint().await.position() else {
            return ShardExit::Finished;
        };
        // Only a shard's first record is compared with its parents' last: one read after a
        // checkpoint was checked by whoever read the first (or came after it, if trimmed).
        let mut check_parents = position == Position::TrimHorizon && !self.parents.is_empty();
        let mut iterator: Option<String> = None;
        // A page read ahead while the one before it was delivered.
        let mut fetched: Option<Result<RecordsPage, StreamError>> = None;
        // The checkpoints of delivered pages not yet in the lease table.
        let mut pending = Pending::new(self, p.checkpoint_interval);
        let mut idle = IDLE_POLL_MIN;
        let tick = idle_tick(p.idle_poll_interval);
        let mut failures = 0u32;
        loop {
            let page = match fetched.take() {
                Some(page) => page,
                None => {
                    let it = match iterator.take() {
                        Some(it) => it,
                        None => {
                            let opened = tokio::select! {
                                _ = self.stop.cancelled() => return pending.stopped().await,
                                r = p.streams.iterator(&p.stream_arn, &self.lease.shard_id, &position) => r,
                            };
                            match opened {
                                Ok(it) => it,
                                Err(e) => {
                                    match self
                                        .on_stream_error(e, &mut position, &mut failures)
                                        .await
                                    {
                                        Some(exit) => return exit,
                                        None => continue,
                                    }
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = self.stop.cancelled() => return pending.stopped().await,
                        r = self.read(&it) => r,
                    }
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    // The error's handling may wait or end the worker: what was delivered is
                    // checkpointed first.
                    if let Err(exit) = pending.flush().await {
                        return exit;
                    }
                    match self.on_stream_error(e, &mut position, &mut failures).await {
                        Some(exit) => return exit,
                        None => continue,
                    }
                }
            };
            failures = 0;
            p.metrics.records_read.inc_by(page.len() as u64);
            if page.is_empty() {
                let Some(next) = page.next_iterator.clone() else {
                    if let Err(exit) = pending.flush().await {
                        return exit;
                    }
                    return self.finish().await;
                };
                iterator = Some(next);
                self.lease.set_lag_ms(0);
                // A checkpoint still owed is written during the wait, when it is due.
                let wait = tokio::time::sleep_until(idle_deadline(Instant::now(), idle, tick));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = self.stop.cancelled() => return pending.stopped().await,
                        _ = &mut wait => break,
                        failed = pending.progress(), if pending.busy() => {
                            if let Some(exit) = failed {
                                return exit;
                            }
                        }
                    }
                }
                idle = (idle * 2).min(p.idle_poll_interval);
                continue;
            }
            idle = IDLE_POLL_MIN;
            // The next page is read, and an owed checkpoint written, while this one is
            // published: neither wait adds to every page's delay. The page read ahead is only
            // kept, never published, until this one is delivered.
            let deliver = self.deliver(&page, std::mem::take(&mut check_parents));
            let read = async {
                match page.next_iterator.as_deref() {
                    Some(next) => self.read(next).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(deliver, read);
            let mut ahead = None;
            let delivered = loop {
                tokio::select! {
                    delivered = &mut deliver => break delivered,
                    r = &mut read, if ahead.is_none() => ahead = Some(r),
                    failed = pending.progress(), if pending.busy() => {
                        if failed == Some(ShardExit::LeaseLost) {
                            return ShardExit::LeaseLost;
                        }
                    }
                }
            };
            let delivered = match delivered {
                Ok(delivered) => delivered,
                Err(exit) => return exit,
            };
            // A checkpoint that failed during delivery for another reason than a lost lease
            // (given up after the deadline or the fence) ends the worker once the page is done.
            if let Err(exit) = pending.check() {
                return exit;
            }
            if let Some(last) = &delivered.last {
                position = Position::After(last.clone());
                pending.delivered(last.clone(), delivered.last_created_ms);
            }
            if let Some(halt) = delivered.halted {
                // What was delivered is checkpointed now, so whoever continues starts right
                // after it.
                if let Err(exit) = pending.flush().await {
                    return exit;
                }
                return match halt {
                    Halt::Deadline => ShardExit::Aborted,
                    Halt::Fenced => ShardExit::Fenced,
                };
            }
            if delivered.last.is_some() {
                self.lease.set_lag_ms(delivered.lag_ms);
            }
            if page.next_iterator.is_none() {
                // The shard's last page: the end marker follows its checkpoint.
                if let Err(exit) = pending.flush().await {
                    return exit;
                }
                return self.finish().await;
            }
            // Stopping drops the page read ahead: neither published nor checkpointed, it is
            // read again by whoever continues. Only this wait for records races the stop.
            if self.stop.is_cancelled() {
                return pending.stopped().await;
            }
            fetched = Some(match ahead {
                Some(r) => r,
                None => loop {
                    tokio::select! {
                        _ = self.stop.cancelled() => return pending.stopped().await,
                        r = &mut read => break r,
                        failed = pending.progress(), if pending.busy() => {
                            if let Some(exit) = failed {
                                return exit;
                            }
                        }
                    }
                },
            });
        }
    }

    async fn read(&self, iterator: &str) -> Result<RecordsPage, StreamError> {
        let _permit = READS.acquire().await.expect("READS is never closed");
        self.pipeline.streams.get_records(iterator).await
    }

    /// The failure table's rows for stream reads. Returns an exit, or None to try again (after
    /// waiting where the table says so). Waiting races `stop`: nothing is in flight here.
    async fn on_stream_error(
        &self,
        err: StreamError,
        position: &mut Position,
        failures: &mut u32,
    ) -> Option<ShardExit> {
        match err {
            StreamError::ExpiredIterator => {
                // The caller reopens from `position`, the last checkpointed record.
                info!("shard iterator expired; reopening after the last checkpoint");
                return None;
            }
            StreamError::Trimmed => {
                self.pipeline.metrics.records_trimmed.inc();
                error!(
                    checkpoint = ?position,
                    "records after the checkpoint were trimmed from the stream (older than 24 h) before they were read; continuing from TRIM_HORIZON"
                );
                *position = Position::TrimHorizon;
                return None;
            }
            StreamError::NotFound(message) => {
                warn!(%message, "shard not found; stopping it");
                return Some(ShardExit::Gone);
            }
            StreamError::Throttled(ref message) | StreamError::Other(ref message) => {
                warn!(%message, attempt = *failures, "stream read failed; backing off");
            }
        }
        let delay = Backoff::AWS.delay(*failures, None);
        *failures = failures.saturating_add(1);
        tokio::select! {
            _ = self.stop.cancelled() => Some(ShardExit::Stopped),
            _ = tokio::time::sleep(delay) => None,
        }
    }

    /// Delivers a page: publishes it and dead-letters what finally failed. Returns the sequence
    /// number to checkpoint (the done prefix's last), or that the lease was lost. With
    /// `check_parents`, the page is the shard's first and its first record is compared with the
    /// parents' last before anything is published.
    async fn deliver(
        &self,
        page: &RecordsPage,
        check_parents: bool,
    ) -> Result<Delivered, ShardExit> {
        let p = &self.pipeline;
        let origin = Origin::Stream {
            stream_arn: &p.stream_arn,
            shard_id: self.lease.shard_id.as_str(),
        };
        let mut out = Sorted::with_capacity(page.len());
        for raw in page.records() {
            p.routes.apply(raw, |route, filtered| {
                self.sort(&mut out, route, filtered, origin)
            });
        }
        let Sorted {
            events,
            entries,
            routes,
            seqs,
            newest_ms,
            before_start,
        } = out;
        if before_start > 0 {
            info!(
                records = before_start,
                "skipped records written before the stream's first start or the operator's rewind point"
            );
        }
        if check_parents {
            let first = seqs.iter().find_map(|seq| match seq {
                Seq::Event(i) => Some(events[*i].sequence_number()),
                Seq::Record(seq) => Some(seq.as_str()),
                Seq::Unknown => None,
            });
            if let Some(first) = first {
                self.check_parents(first);
            }
        }
        let delivery = Delivery {
            publisher: &p.routes,
            dlq: &p.dlq,
        };
        let ctx = PublishContext {
            shard_id: self.lease.shard_id.as_str(),
        };
        let gate = Gate {
            deadline: &self.deadline,
            fence: Some(&p.fence),
        };
        let letter = |event: &crate::transform::Event, failure: &crate::nakadi::Failure| {
            DeadLetter::from_event(
                origin,
                p.routes.lanes[event.route].event_type(),
                event,
                failure,
            )
        };
        let report = tokio::select! {
            biased;
            _ = self.lost.cancelled() => return Err(ShardExit::LeaseLost),
            report = delivery.deliver(&events, &entries, letter, &ctx, &gate) => report,
        };
        for (settled, &route) in report.entries[..report.done].iter().zip(&routes) {
            let published = &p.metrics.published[route];
            match settled {
                Settled::Delivered => published.delivered.inc(),
                Settled::DeadLettered => published.dead_lettered.inc(),
                _ => {}
            }
        }
        let done = &seqs[..report.done];
        let last = done.iter().rev().find_map(|seq| match seq {
            Seq::Event(i) => Some(events[*i].sequence_number().to_owned()),
            Seq::Record(seq) => Some(seq.clone()),
            Seq::Unknown => None,
        });
        let last_created_ms = done.iter().rev().find_map(|seq| match seq {
            Seq::Event(i) => Some(events[*i].created_at_ms),
            _ => None,
        });
        Ok(Delivered {
            last,
            last_created_ms,
            halted: report.halted,
            lag_ms: newest_ms.map_or(0, |ms| now_ms() - ms),
        })
    }

    /// Files one record's outcome on `route` into the page's entries.
    fn sort(&self, out: &mut Sorted, route: usize, filtered: Filtered<'_>, origin: Origin<'_>) {
        let p = &self.pipeline;
        out.routes.push(route);
        let event_type = p.routes.lanes[route].event_type();
        match filtered {
            Filtered::Event(event) if self.skips.contains(event.sequence_number()) => {
                warn!(
                    sequence_number = event.sequence_number(),
                    eid = %event.eid,
                    event_type,
                    "dead-lettering the record an operator asked to skip"
                );
                out.seqs
                    .push(Seq::Record(event.sequence_number().to_owned()));
                out.entries
                    .push(Entry::Letter(Box::new(DeadLetter::from_event(
                        origin,
                        event_type,
                        &event,
                        &Failure::skipped(),
                    ))));
            }
            Filtered::Event(event) if self.start.skips(event.created_at_ms) => {
                out.before_start += 1;
                out.seqs
                    .push(Seq::Record(event.sequence_number().to_owned()));
                out.entries.push(Entry::Skipped);
            }
            Filtered::Event(mut event) => {
                event.route = route;
                out.seqs.push(Seq::Event(out.events.len()));
                out.newest_ms = Some(event.created_at_ms);
                out.events.push(event);
                out.entries.push(Entry::Event);
            }
            Filtered::Skipped {
                sequence_number,
                reason,
            } => {
                p.metrics.filtered(reason);
                out.seqs.push(Seq::Record(sequence_number));
                out.entries.push(Entry::Skipped);
            }
            Filtered::Failed { raw, failure } => {
                error!(
                    sequence_number = failure.sequence_number.as_deref(),
                    error = %failure.error,
                    event_type,
                    "stream record cannot become an event; dead-lettering it"
                );
                out.seqs.push(
                    failure
                        .sequence_number
                        .clone()
                        .map_or(Seq::Unknown, Seq::Record),
                );
                out.entries
                    .push(Entry::Letter(Box::new(DeadLetter::malformed(
                        origin, event_type, &raw, &failure,
                    ))));
            }
        }
    }

    /// AWS documents the order of sequence numbers within a shard only; consumers order a key's
    /// events by `data.sequence_number` across a split as well. A child whose first record is
    /// not after a parent's last breaks that: counted and logged, and its records are published
    /// all the same (the relay still reads parents before children).
    fn check_parents(&self, first: &str) {
        for parent in out_of_order(&self.parents, first) {
            self.pipeline.metrics.lineage_order_violations.inc();
            error!(
                parent_shard_id = %parent.shard_id,
                parent_last_sequence_number = %parent.last_sequence_number,
                child_shard_id = %self.lease.shard_id,
                child_first_sequence_number = first,
                "child shard's first sequence number is not above its parent's last: consumers that order a key's events by data.sequence_number would take this shard's as older than the parent's"
            );
        }
    }

    /// Retries until the lease table has the checkpoint, or the lease is found lost. Conditioned
    /// on the lease's counter, so a pod that lost the lease can never move its checkpoint.
    async fn checkpoint(
        &self,
        checkpoint: &Checkpoint,
        created_ms: Option<i64>,
    ) -> Result<(), ShardExit> {
        let p = &self.pipeline;
        let mut attempt = 0;
        loop {
            match p
                .leases
                .checkpoint(&self.lease, &p.worker_id, checkpoint, created_ms)
                .await
            {
                Ok(()) => {
                    p.metrics.checkpoints.inc();
                    return Ok(());
                }
                Err(LeaseError::Lost(_)) => {
                    warn!(%checkpoint, "lease lost; stopping without checkpoint");
                    return Err(ShardExit::LeaseLost);
                }
                Err(e) => warn!(error = %e, attempt, "checkpoint failed; retrying"),
            }
            attempt += 1;
            let stopping = self.deadline.is_cancelled() || !p.fence.is_open();
            if stopping && attempt >= CHECKPOINTS_AFTER_GIVING_UP {
                warn!(%checkpoint, "the checkpoint still fails after the drain deadline or the fence; whoever continues reads from the last one");
                return Err(ShardExit::Aborted);
            }
            tokio::select! {
                _ = self.lost.cancelled() => return Err(ShardExit::LeaseLost),
                _ = tokio::time::sleep(Backoff::AWS.delay(attempt - 1, None)) => {}
            }
        }
    }

    /// The shard was read to its end: mark it so its children may start, and create their leases
    /// now rather than at the next full sync, so they start within one coordinator round.
    async fn finish(&self) -> ShardExit {
        if let Err(exit) = self.checkpoint(&Checkpoint::ShardEnd, None).await {
            return exit;
        }
        self.lease.set_lag_ms(0);
        let p = &self.pipeline;
        match p
            .streams
            .children(&p.stream_arn, &self.lease.shard_id)
            .await
        {
            Ok(children) => {
                for child in children {
                    let parents = [self.lease.shard_id.clone()];
                    if let Err(e) = p.leases.create(&child.id, &parents).await {
                        warn!(child = %child.id, error = %e, "creating a child lease failed; the next shard sync does it");
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "listing child shards failed; the next shard sync finds them")
            }
        }
        ShardExit::Finished
    }
}

/// Each entry's sequence number: an event's is taken from it only for the entry that is
/// checkpointed.
enum Seq {
    Event(usize),
    Record(String),
    Unknown,
}

/// A page's records sorted into events and entries, in page order.
struct Sorted {
    events: Vec<Event>,
    entries: Vec<Entry<DeadLetter>>,
    /// Each entry's route.
    routes: Vec<usize>,
    seqs: Vec<Seq>,
    /// When the newest event was written.
    newest_ms: Option<i64>,
    /// Events skipped as older than the stream's start or the rewind point.
    before_start: u64,
}

impl Sorted {
    fn with_capacity(records: usize) -> Sorted {
        Sorted {
            events: Vec::with_capacity(records),
            entries: Vec::with_capacity(records),
            routes: Vec::with_capacity(records),
            seqs: Vec::with_capacity(records),
            newest_ms: None,
            before_start: 0,
        }
    }
}

/// What delivering a page left to do.
struct Delivered {
    /// The last record of the done prefix: the checkpoint to write, if the prefix is not empty.
    last: Option<String>,
    /// When the done prefix's newest event was written, if it has one.
    last_created_ms: Option<i64>,
    /// Why delivery stopped before the page's end, if it did.
    halted: Option<Halt>,
    /// How far behind the stream the page's newest event was.
    lag_ms: i64,
}

/// The checkpoints a shard worker owes the lease table: the write in flight, and the newest
/// delivered position not yet written. At most one write is in flight and the next starts only
/// after it answered, so checkpoints land in order; a position delivered meanwhile replaces the
/// one waiting, so a busy shard writes at most one checkpoint per `interval`. A crash publishes
/// again what was delivered since the last write that landed: the pages of one interval, the page
/// whose write was in flight and the page being published.
struct Pending<'a> {
    worker: &'a ShardWorker,
    interval: Duration,
    write: Option<BoxFuture<'a, Result<(), ShardExit>>>,
    /// The sequence number, and when its page's newest delivered event was written.
    owed: Option<(String, Option<i64>)>,
    last_write: Option<Instant>,
    failed: Option<ShardExit>,
}

impl<'a> Pending<'a> {
    fn new(worker: &'a ShardWorker, interval: Duration) -> Pending<'a> {
        Pending {
            worker,
            interval,
            write: None,
            owed: None,
            last_write: None,
            failed: None,
        }
    }

    /// Records a delivered position; its write starts at once if nothing is in flight and the
    /// interval since the last write has passed.
    fn delivered(&mut self, sequence_number: String, created_ms: Option<i64>) {
        // A page without events (all filtered) keeps the time of the one before it.
        let created_ms = created_ms.or(self.owed.as_ref().and_then(|(_, ms)| *ms));
        self.owed = Some((sequence_number, created_ms));
        if self.failed.is_none() && self.write.is_none() && self.due() <= Instant::now() {
            self.start();
        }
    }

    /// Whether there is anything for [`Self::progress`] to drive.
    fn busy(&self) -> bool {
        self.failed.is_none() && (self.write.is_some() || self.owed.is_some())
    }

    fn due(&self) -> Instant {
        self.last_write
            .map_or_else(Instant::now, |last| last + self.interval)
    }

    fn start(&mut self) {
        if let Some((sequence_number, created_ms)) = self.owed.take() {
            self.last_write = Some(Instant::now());
            let worker = self.worker;
            self.write = Some(Box::pin(async move {
                worker
                    .checkpoint(&Checkpoint::Sequence(sequence_number), created_ms)
                    .await
            }));
        }
    }

    /// Writes what is owed, each write when it is due, until nothing is left or a write failed;
    /// returns how it failed, if it did. Dropping this future part-way keeps the write in flight,
    /// so it can race other work in a `select!`.
    async fn progress(&mut self) -> Option<ShardExit> {
        while self.failed.is_none() {
            if let Some(write) = &mut self.write {
                let result = write.await;
                self.write = None;
                self.failed = result.err();
            } else if self.owed.is_some() {
                tokio::time::sleep_until(self.due()).await;
                self.start();
            } else {
                break;
            }
        }
        self.failed.clone()
    }

    /// Writes everything owed now, without waiting for the interval: Ok once it is in the lease
    /// table (or nothing was owed).
    async fn flush(&mut self) -> Result<(), ShardExit> {
        if self.failed.is_none() {
            if let Some(write) = &mut self.write {
                let result = write.await;
                self.write = None;
                self.failed = result.err();
            }
        }
        if self.failed.is_none() {
            self.start();
            self.progress().await;
        }
        self.check()
    }

    /// How an earlier write failed, if one did: the worker ends with it.
    fn check(&mut self) -> Result<(), ShardExit> {
        self.failed.take().map_or(Ok(()), Err)
    }

    /// The worker stops: what was delivered is checkpointed before the lease is released.
    async fn stopped(&mut self) -> ShardExit {
        match self.flush().await {
            Ok(()) => ShardExit::Stopped,
            Err(exit) => exit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_shard_polls_once_per_interval_on_ticks_every_shard_shares() {
        let origin = Instant::now();
        for ms in [250, 600, 650, 1000, 1050, 2500] {
            let interval = Duration::from_millis(ms);
            let tick = idle_tick(interval);
            assert!(
                tick.abs_diff(IDLE_TICK) <= IDLE_TICK / 3,
                "{tick:?} for {interval:?}"
            );
            let mut instants = std::collections::BTreeSet::new();
            // A thousand shards that went idle about a millisecond apart, with polls that return
            // at once, in a few milliseconds, or just within a tick.
            for shard in 0..1000u64 {
                for call in [Duration::ZERO, Duration::from_millis(3), tick * 9 / 10] {
                    let mut end = origin + Duration::from_micros(shard * 997) + call;
                    let mut next = idle_deadline(end, interval, tick);
                    for _ in 0..5 {
                        assert!(next > end && next <= end + interval, "{interval:?}");
                        let start = next;
                        end = start + call;
                        next = idle_deadline(end, interval, tick);
                        // Whole ticks: the interval to within the nanoseconds of the division.
                        let gap = next - start;
                        assert!(
                            gap <= interval && interval - gap < Duration::from_micros(1),
                            "{gap:?} between polls for {interval:?} with calls of {call:?}"
                        );
                    }
                    instants.insert(next);
                }
            }
            // They poll on the instants of about ten ticks a second, not on a thousand.
            let span = (interval + Duration::from_secs(1)).as_nanos() / tick.as_nanos() + 2;
            assert!(
                instants.len() as u128 <= span,
                "{} instants for {interval:?}",
                instants.len()
            );
        }
        // The short waits right after records are kept as they are.
        let short = Duration::from_millis(50);
        assert_eq!(idle_deadline(origin, short, IDLE_TICK), origin + short);
    }
}

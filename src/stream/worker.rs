//! The loop that carries one shard's records to Nakadi.
//!
//! wait for records (the only step that races shutdown) → transform → publish → dead-letter what
//! finally failed → checkpoint the page → again, with the next page read while this one is
//! published. A page that was read is always finished and checkpointed before the loop looks at
//! the stop signal again; the page read ahead meanwhile is dropped unpublished on stop. Only the
//! lease being lost or the drain deadline passing (`abort`) cuts a page short, and then nothing is
//! checkpointed, so the page is read again by whoever continues (at least once, never lost).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::capture::RecordsPage;
use super::{Position, StreamError, StreamsClient};
use crate::dlq::{DeadLetter, DeadLetterQueue};
use crate::filter::{Filter, Filtered};
use crate::lease::{Checkpoint, LeaseError, LeaseTable, OwnedLease};
use crate::metrics::{METRICS, TableMetrics};
use crate::nakadi::{Outcome, PublishContext, Publisher};
use crate::retry::Backoff;
use crate::transform::EventSettings;

/// What every shard worker of this pod shares.
pub struct Pipeline {
    /// The table's name, as in metrics and `/status`.
    pub table: String,
    pub stream_arn: String,
    pub worker_id: String,
    pub streams: StreamsClient,
    pub leases: LeaseTable,
    pub publisher: Publisher,
    pub dlq: DeadLetterQueue,
    pub settings: EventSettings,
    pub filter: Filter,
    pub metrics: TableMetrics,
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
    /// The drain deadline passed mid-page; the page was not checkpointed and will be re-read.
    Aborted,
    /// The shard disappeared from the stream.
    Gone,
}

/// Longest wait between polls of an idle shard. Lambda polls each shard about four times a
/// second; the same keeps an idle pod's GetRecords calls (and their cost) bounded, while a busy
/// shard is polled again at once.
const IDLE_POLL_MAX: Duration = Duration::from_millis(250);
const IDLE_POLL_MIN: Duration = Duration::from_millis(25);

/// Most GetRecords calls of a pod in flight at once. Each call in flight holds an HTTP/1.1
/// connection whose buffers grow to the megabyte pages it has read: a pod owning 1,000 shards had
/// ~840 connections open and 91 MiB resident (measured). An idle shard's poll takes milliseconds a
/// few times a second, so 64 calls serve thousands of shards; a busy shard keeps its call short
/// because its page is delivered without a permit.
const READS_IN_FLIGHT: usize = 64;
static READS: Semaphore = Semaphore::const_new(READS_IN_FLIGHT);

pub struct ShardWorker {
    pub pipeline: Arc<Pipeline>,
    pub lease: Arc<OwnedLease>,
    /// Shutdown or lease lost: stop waiting for records.
    pub stop: CancellationToken,
    /// Lease lost or drain deadline passed: stop even in the middle of a page.
    pub abort: CancellationToken,
    /// Set (with the two above) when the coordinator finds the lease lost, to tell the two
    /// reasons for `abort` apart.
    pub lost: CancellationToken,
}

/// Why an in-flight page could not be finished.
enum Interrupted {
    LeaseLost,
    Aborted,
}

impl From<Interrupted> for ShardExit {
    fn from(i: Interrupted) -> ShardExit {
        match i {
            Interrupted::LeaseLost => ShardExit::LeaseLost,
            Interrupted::Aborted => ShardExit::Aborted,
        }
    }
}

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
        let mut iterator: Option<String> = None;
        // A page read ahead while the one before it was delivered.
        let mut fetched: Option<Result<RecordsPage, StreamError>> = None;
        let mut idle = IDLE_POLL_MIN;
        let mut failures = 0u32;
        loop {
            let page = match fetched.take() {
                Some(page) => page,
                None => {
                    let it = match iterator.take() {
                        Some(it) => it,
                        None => {
                            let opened = tokio::select! {
                                _ = self.stop.cancelled() => return ShardExit::Stopped,
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
                        _ = self.stop.cancelled() => return ShardExit::Stopped,
                        r = self.read(&it) => r,
                    }
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => match self.on_stream_error(e, &mut position, &mut failures).await {
                    Some(exit) => return exit,
                    None => continue,
                },
            };
            failures = 0;
            p.metrics.records_read.inc_by(page.len() as u64);
            if page.is_empty() {
                let Some(next) = page.next_iterator.clone() else {
                    return self.finish().await;
                };
                iterator = Some(next);
                self.lease.set_lag_ms(0);
                tokio::select! {
                    _ = self.stop.cancelled() => return ShardExit::Stopped,
                    _ = tokio::time::sleep(idle) => {}
                }
                idle = (idle * 2).min(IDLE_POLL_MAX);
                continue;
            }
            idle = IDLE_POLL_MIN;
            let Some(next) = page.next_iterator.as_deref() else {
                // The shard's last page: nothing to read ahead.
                if let Err(i) = self.deliver(&page).await {
                    return i.into();
                }
                return self.finish().await;
            };
            // The next page is read while this one is published and checkpointed, so the wait
            // for GetRecords does not add to every page's delay. It is only kept, never
            // published, until this page is checkpointed.
            let deliver = self.deliver(&page);
            let read = self.read(next);
            tokio::pin!(deliver, read);
            let mut ahead = None;
            let delivered = loop {
                tokio::select! {
                    delivered = &mut deliver => break delivered,
                    r = &mut read, if ahead.is_none() => ahead = Some(r),
                }
            };
            match delivered {
                Ok(Some(last)) => position = Position::After(last),
                Ok(None) => {}
                Err(i) => return i.into(),
            }
            // Stopping drops the page read ahead: neither published nor checkpointed, it is
            // read again by whoever continues. Only this wait for records races the stop.
            if self.stop.is_cancelled() {
                return ShardExit::Stopped;
            }
            fetched = Some(match ahead {
                Some(r) => r,
                None => tokio::select! {
                    _ = self.stop.cancelled() => return ShardExit::Stopped,
                    r = &mut read => r,
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

    /// Publishes a page, dead-letters what failed, and checkpoints its last record. Returns the
    /// checkpointed sequence number.
    async fn deliver(&self, page: &RecordsPage) -> Result<Option<String>, Interrupted> {
        let p = &self.pipeline;
        let mut events = Vec::with_capacity(page.len());
        let mut letters = Vec::new();
        // The page's last record: an event (its index; its sequence number is taken once, at the
        // end) or another record's sequence number.
        enum Last {
            Event(usize),
            Record(String),
        }
        let mut last = None;
        let mut newest_ms = None;
        for raw in page.records() {
            match p.filter.apply(raw, &p.settings) {
                Filtered::Event(event) => {
                    last = Some(Last::Event(events.len()));
                    newest_ms = Some(event.created_at_ms);
                    events.push(event);
                }
                Filtered::Skipped {
                    sequence_number,
                    reason,
                } => {
                    p.metrics.filtered(reason);
                    last = Some(Last::Record(sequence_number));
                }
                Filtered::Failed { raw, failure } => {
                    error!(
                        sequence_number = failure.sequence_number.as_deref(),
                        error = %failure.error,
                        "stream record cannot become an event; dead-lettering it"
                    );
                    if let Some(seq) = &failure.sequence_number {
                        last = Some(Last::Record(seq.clone()));
                    }
                    letters.push(DeadLetter::malformed(
                        &p.stream_arn,
                        &self.lease.shard_id,
                        p.publisher.event_type(),
                        &raw,
                        &failure,
                    ));
                }
            }
        }
        let ctx = PublishContext {
            shard_id: self.lease.shard_id.as_str(),
        };
        let outcomes = p
            .publisher
            .publish(&events, &ctx, &self.abort)
            .await
            .map_err(|_| self.interruption())?;
        let failed_before = letters.len();
        for (event, outcome) in events.iter().zip(outcomes) {
            if let Outcome::Failed(failure) = outcome {
                letters.push(DeadLetter::from_event(
                    &p.stream_arn,
                    &self.lease.shard_id,
                    p.publisher.event_type(),
                    event,
                    &failure,
                ));
            }
        }
        p.metrics
            .delivered
            .inc_by((events.len() - (letters.len() - failed_before)) as u64);
        if !letters.is_empty() {
            self.dead_letter(&letters).await?;
        }
        let last = match last {
            None => return Ok(None),
            Some(Last::Event(i)) => events[i].sequence_number().to_owned(),
            Some(Last::Record(seq)) => seq,
        };
        self.checkpoint(&Checkpoint::Sequence(last.clone())).await?;
        let lag = newest_ms.map_or(0, |ms| now_ms() - ms);
        self.lease.set_lag_ms(lag);
        Ok(Some(last))
    }

    /// The DLQ write must succeed before the checkpoint moves past these records; until then the
    /// shard waits and retries (failure table: "DLQ write fails").
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), Interrupted> {
        let mut attempt = 0;
        loop {
            match self.pipeline.dlq.send(letters).await {
                Ok(()) => {
                    self.pipeline
                        .metrics
                        .dead_lettered
                        .inc_by(letters.len() as u64);
                    return Ok(());
                }
                Err(e) => {
                    METRICS.dlq_write_failures.inc();
                    error!(error = %e, letters = letters.len(), attempt, "writing to the dead-letter queue failed; the shard waits and retries without checkpointing");
                }
            }
            self.wait_before_retry(attempt).await?;
            attempt += 1;
        }
    }

    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Interrupted> {
        let p = &self.pipeline;
        let mut attempt = 0;
        loop {
            match p
                .leases
                .checkpoint(&self.lease, &p.worker_id, checkpoint)
                .await
            {
                Ok(()) => {
                    p.metrics.checkpoints.inc();
                    return Ok(());
                }
                Err(LeaseError::Lost(_)) => {
                    warn!(%checkpoint, "lease lost; stopping without checkpoint");
                    return Err(Interrupted::LeaseLost);
                }
                Err(e) => warn!(error = %e, attempt, "checkpoint failed; retrying"),
            }
            self.wait_before_retry(attempt).await?;
            attempt += 1;
        }
    }

    async fn wait_before_retry(&self, attempt: u32) -> Result<(), Interrupted> {
        tokio::select! {
            _ = self.abort.cancelled() => Err(self.interruption()),
            _ = tokio::time::sleep(Backoff::AWS.delay(attempt, None)) => Ok(()),
        }
    }

    fn interruption(&self) -> Interrupted {
        if self.lost.is_cancelled() {
            Interrupted::LeaseLost
        } else {
            Interrupted::Aborted
        }
    }

    /// The shard was read to its end: mark it so its children may start, and create their leases
    /// now rather than at the next full sync, so they start within one coordinator round.
    async fn finish(&self) -> ShardExit {
        if let Err(i) = self.checkpoint(&Checkpoint::ShardEnd).await {
            return i.into();
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
                    if let Err(e) = p
                        .leases
                        .create(&child.id, &parents, &Checkpoint::TrimHorizon)
                        .await
                    {
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

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

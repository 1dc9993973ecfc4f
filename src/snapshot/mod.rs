//! `dynamodb-nakadi-relay snapshot`: the table's current state as `data_op: "S"` events, for
//! consumers that need more than the stream's 24 hours.
//!
//! A parallel Scan: one task per segment, all drawing on one read-capacity budget
//! ([`CapacityLimiter`]). Each page goes the way a stream page goes in a shard worker: items →
//! events (`transform::snapshot_event`) → publish → dead-letter what Nakadi finally refused →
//! save the segment's progress (the page's LastEvaluatedKey) in the lease table. Progress moves
//! only after every item of the page was delivered or dead-lettered, so a crash publishes at most
//! the page in flight of each segment again, with the same eids. A second run continues each
//! segment after its saved key and skips finished segments; a finished snapshot is not repeated
//! unless `--restart` is given. docs/DESIGN.md ("Snapshot") tells what a consumer sees.

mod limiter;
mod progress;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::operation::scan::ScanOutput;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType, ReturnConsumedCapacity};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use limiter::CapacityLimiter;
pub use progress::{ProgressStore, SegmentProgress, SnapshotRun};

use crate::config::{Config, ReadCapacity};
use crate::delivery::{Delivery, Entry};
use crate::dlq::{DeadLetter, DeadLetterQueue, Origin};
use crate::ids::{StreamArn, WorkerId};
use crate::lease::LeaseTable;
use crate::lease::table::LeaseError;
use crate::metrics;
use crate::nakadi::{Failure, Gate, Publishing};
use crate::retry::Backoff;
use crate::route::{Lane, Routes};
use crate::startup::{AwsClients, StartupError, redrainer, startup};
use crate::transform::{Event, EventSettings, TransformFailure, snapshot_event};

/// Scan failures other than throttling, in a row, before a segment gives up. Its progress is
/// saved, so the next run continues it.
const MAX_SCAN_FAILURES: u32 = 10;

/// How often the running totals are logged.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("Scan of segment {segment} failed {attempts} times in a row: {message}")]
    Scan {
        segment: u32,
        attempts: u32,
        message: String,
    },
}

/// Everything one snapshot run needs, checked at start.
/// The longest one progress write of the snapshot may take, retries included.
const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Snapshot {
    dynamodb: Client,
    table: String,
    table_arn: String,
    /// Key attribute names, hash then range: the eid is made of their values.
    key_attributes: Vec<String>,
    /// The table's routes, each with the re-drain loop's publisher of its event type. An item
    /// takes the first route whose condition holds on it, as a live INSERT would; each route's
    /// dropped attributes are removed from the item before its event is built, as the live
    /// stream removes them from its images.
    routes: Routes,
    progress: ProgressStore,
    dlq: DeadLetterQueue,
    limiter: CapacityLimiter,
    /// Read capacity units per second.
    rate: f64,
    segments: u32,
    page_size: u32,
    worker_id: WorkerId,
    shutdown_timeout: Duration,
}

/// What a run did; printed as JSON when the command ends.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub table: String,
    /// Every segment is scanned to its end, now or in an earlier run.
    pub finished: bool,
    /// The snapshot had finished before this run, which therefore read nothing.
    pub already_finished: bool,
    pub segments: u32,
    /// Segments an earlier run had finished, not scanned again.
    pub segments_skipped: u32,
    /// This run's figures.
    pub items: u64,
    pub published: u64,
    pub dead_lettered: u64,
    pub read_capacity_units: f64,
    pub seconds: f64,
    /// Items read over all runs of this snapshot, this one included.
    pub total_items: u64,
}

/// Why a segment's task ended.
#[derive(Debug)]
enum SegmentExit {
    Done,
    /// Shutdown between pages: progress is saved up to the last page.
    Stopped,
    /// The drain deadline passed mid-page: that page is read again by the next run.
    Aborted,
    /// Another snapshot process claimed the segment; it continues from the saved progress.
    Lost,
    Failed(SnapshotError),
}

/// This run's totals, shared by the segment tasks.
#[derive(Default)]
struct Counters {
    items: AtomicU64,
    published: AtomicU64,
    dead_lettered: AtomicU64,
    capacity: Mutex<f64>,
}

impl Counters {
    fn capacity(&self) -> f64 {
        *self.capacity.lock().expect("counter lock poisoned")
    }
}

impl Snapshot {
    /// Checks the table, the lease table, the queue and Nakadi's settings, and works out the
    /// read budget, before anything is read.
    /// `name` picks one of several configured tables (`--table`); with one it may be left out.
    pub async fn build(
        config: &Config,
        name: Option<&str>,
        aws: &AwsClients,
    ) -> Result<Snapshot, StartupError> {
        let chosen = match name {
            Some(name) => config.tables.iter().find(|t| t.name() == name),
            None if config.tables.len() == 1 => config.tables.first(),
            None => None,
        };
        let Some(source) = chosen else {
            let names: Vec<&str> = config.tables.iter().map(|t| t.name()).collect();
            return Err(startup(
                "RELAY_TABLES_FILE",
                format!(
                    "choose the table to snapshot with --table, one of {}",
                    names.join(", ")
                ),
            ));
        };
        let table = source.name().to_owned();
        let variable = source.source_variable(config.tables_from_file);
        let described = aws
            .dynamodb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .map_err(|e| {
                startup(
                    variable,
                    format!("table {table}: {}", DisplayErrorContext(&e)),
                )
            })?;
        let description = described
            .table()
            .ok_or_else(|| startup(variable, format!("table {table}: no description")))?;
        let mut key_schema: Vec<_> = description.key_schema().iter().collect();
        key_schema.sort_by_key(|k| *k.key_type() != KeyType::Hash);
        let key_attributes: Vec<String> = key_schema
            .iter()
            .map(|k| k.attribute_name().to_owned())
            .collect();
        for route in &source.routes {
            if let Some(key) = key_attributes
                .iter()
                .find(|k| route.filter.drop_attributes.contains(k))
            {
                return Err(startup(
                    "RELAY_DROP_ATTRIBUTES",
                    format!(
                        "event type {} drops the key attribute {key:?}, which the snapshot's eids are made of",
                        route.event_type
                    ),
                ));
            }
        }
        let rate = match config.snapshot.read_capacity {
            ReadCapacity::UnitsPerSecond(units) => units,
            ReadCapacity::ShareOfProvisioned(share) => {
                let provisioned = description
                    .provisioned_throughput()
                    .and_then(|p| p.read_capacity_units())
                    .unwrap_or(0);
                if provisioned == 0 {
                    return Err(startup(
                        "RELAY_SNAPSHOT_READ_CAPACITY",
                        format!(
                            "table {table} has no provisioned read capacity (on-demand); give read capacity units per second, such as 100"
                        ),
                    ));
                }
                (provisioned as f64 * share).max(0.1)
            }
        };
        // The snapshot writes no shard leases, so the lease table needs no stream here, and its
        // progress writes have no lease duration to fit in: the SDK's own timeouts bound them.
        let leases = LeaseTable::new(
            aws.dynamodb.clone(),
            config.lease_table.clone(),
            StreamArn::new(""),
            SNAPSHOT_CALL_TIMEOUT,
        );
        leases
            .ensure_exists(config.create_lease_table)
            .await
            .map_err(|e| startup("RELAY_LEASE_TABLE", e))?;
        // The re-drain loop's publisher: dead-letter mode whatever RELAY_ON_PUBLISH_FAILURE says,
        // since S events carry no order that blocking could keep.
        let mut parts = redrainer(config, aws).await?;
        let lanes = source
            .routes
            .iter()
            .map(|route| Lane {
                publisher: parts
                    .publishers
                    .remove(&route.event_type)
                    .expect("the re-drain loop has a publisher for every route's event type"),
                settings: EventSettings {
                    data_type: route.data_type.clone(),
                    compaction_key: route.compaction_key.then(|| key_attributes.clone()),
                },
                filter: route.filter.clone(),
            })
            .collect();
        let routes = Routes::new(
            lanes,
            source.routes.iter().map(|r| r.when.clone()).collect(),
        );
        Ok(Snapshot {
            dynamodb: aws.dynamodb.clone(),
            table_arn: description.table_arn().unwrap_or_default().to_owned(),
            table,
            routes,
            key_attributes,
            progress: ProgressStore::new(aws.dynamodb.clone(), config.lease_table.clone()),
            dlq: parts.dlq,
            limiter: CapacityLimiter::new(rate),
            rate,
            segments: config.snapshot.segments,
            page_size: config.snapshot.page_size,
            worker_id: config.worker_id.clone(),
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// Runs the snapshot until every segment is done, or `stop` (SIGTERM) ends it between pages.
    /// `restart` starts over even when a run finished or is half done.
    pub async fn run(
        self,
        restart: bool,
        stop: CancellationToken,
    ) -> Result<Summary, SnapshotError> {
        let started = Instant::now();
        let this = Arc::new(self);
        let mut summary = Summary {
            table: this.table.clone(),
            ..Summary::default()
        };
        let previous = this.progress.snapshot_run(&this.table).await?;
        let run = match previous {
            Some(run) if run.done && !restart => {
                info!(table = %this.table, finished_at = run.finished_at.as_deref(), "the snapshot finished before; nothing to do (--restart repeats it)");
                summary.finished = true;
                summary.already_finished = true;
                summary.segments = run.segments;
                return Ok(summary);
            }
            Some(run) if !restart => {
                if run.segments != this.segments {
                    warn!(table = %this.table, segments = run.segments, configured = this.segments, "continuing the snapshot with the segment count it started with; RELAY_SNAPSHOT_SEGMENTS applies to the next --restart");
                }
                run
            }
            previous => {
                this.progress
                    .start_snapshot_run(&this.table, this.segments, previous.as_ref())
                    .await?
            }
        };
        summary.segments = run.segments;
        info!(table = %this.table, segments = run.segments, generation = run.generation, read_capacity_per_second = this.rate, page_size = this.page_size, restart, "snapshot started");

        let mut progress = Vec::with_capacity(run.segments as usize);
        for segment in 0..run.segments {
            progress.push(
                this.progress
                    .claim_segment(&this.table, &run, segment, &this.worker_id)
                    .await?,
            );
        }
        summary.total_items = progress.iter().map(|p| p.items).sum();
        let counters = Arc::new(Counters::default());
        let abort = CancellationToken::new();
        let deadline = tokio::spawn({
            let (stop, abort, timeout) = (stop.clone(), abort.clone(), this.shutdown_timeout);
            async move {
                stop.cancelled().await;
                tokio::time::sleep(timeout).await;
                warn!(
                    ?timeout,
                    "drain deadline passed; stopping pages in flight without saving them"
                );
                abort.cancel();
            }
        });
        let progress_log = tokio::spawn({
            let counters = counters.clone();
            async move {
                let mut every = tokio::time::interval(PROGRESS_LOG_INTERVAL);
                every.tick().await;
                loop {
                    every.tick().await;
                    info!(
                        items = counters.items.load(Ordering::Relaxed),
                        published = counters.published.load(Ordering::Relaxed),
                        dead_lettered = counters.dead_lettered.load(Ordering::Relaxed),
                        read_capacity_units = counters.capacity(),
                        "snapshot progress"
                    );
                }
            }
        });
        let mut tasks = Vec::new();
        for p in progress {
            if p.done {
                summary.segments_skipped += 1;
                continue;
            }
            let (this, stop, abort, counters) =
                (this.clone(), stop.clone(), abort.clone(), counters.clone());
            let total_segments = run.segments;
            tasks.push(tokio::spawn(async move {
                let segment = p.segment;
                let exit = this
                    .scan_segment(p, total_segments, &stop, &abort, &counters)
                    .await;
                info!(segment, ?exit, "snapshot segment ended");
                exit
            }));
        }
        let mut all_done = true;
        let mut failure = None;
        for task in tasks {
            match task.await.expect("a segment task panicked") {
                SegmentExit::Done => {}
                SegmentExit::Failed(e) => {
                    all_done = false;
                    failure.get_or_insert(e);
                }
                SegmentExit::Stopped | SegmentExit::Aborted | SegmentExit::Lost => all_done = false,
            }
        }
        deadline.abort();
        progress_log.abort();

        summary.items = counters.items.load(Ordering::Relaxed);
        summary.published = counters.published.load(Ordering::Relaxed);
        summary.dead_lettered = counters.dead_lettered.load(Ordering::Relaxed);
        summary.read_capacity_units = counters.capacity();
        summary.total_items += summary.items;
        summary.seconds = started.elapsed().as_secs_f64();
        if let Some(e) = failure {
            error!(error = %e, "snapshot stopped; its progress is saved, run it again to continue");
            return Err(e);
        }
        if all_done {
            this.progress.finish_snapshot_run(&this.table, &run).await?;
            summary.finished = true;
        }
        info!(summary = ?summary, "snapshot ended");
        Ok(summary)
    }

    /// Scans one segment of `total_segments` (the run's count) from its saved progress to its
    /// end, page by page.
    async fn scan_segment(
        &self,
        mut progress: SegmentProgress,
        total_segments: u32,
        stop: &CancellationToken,
        abort: &CancellationToken,
        counters: &Counters,
    ) -> SegmentExit {
        let segment = progress.segment;
        // The first page's cost is unknown; after that each page is expected to cost what the
        // one before did.
        let mut estimate = 1.0;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return SegmentExit::Stopped,
                _ = self.limiter.acquire(estimate) => {}
            }
            let page = match self.scan_page(&progress, total_segments, stop).await {
                Ok(Some(page)) => page,
                Ok(None) => return SegmentExit::Stopped,
                Err(e) => return SegmentExit::Failed(e),
            };
            let consumed = page
                .consumed_capacity()
                .and_then(|c| c.capacity_units())
                .unwrap_or(estimate);
            self.limiter.settle(estimate, consumed);
            estimate = consumed;
            *counters.capacity.lock().expect("counter lock poisoned") += consumed;

            let (published, dead_lettered) = match self.deliver(segment, page.items(), abort).await
            {
                Ok(counts) => counts,
                Err(exit) => return exit,
            };
            let items = page.items().len() as u64;
            progress.items += items;
            progress.published += published;
            progress.dead_lettered += dead_lettered;
            progress.last_key = page.last_evaluated_key.filter(|k| !k.is_empty());
            progress.done = progress.last_key.is_none();
            if let Err(exit) = self.save(&mut progress, abort).await {
                return exit;
            }
            counters.items.fetch_add(items, Ordering::Relaxed);
            counters.published.fetch_add(published, Ordering::Relaxed);
            counters
                .dead_lettered
                .fetch_add(dead_lettered, Ordering::Relaxed);
            if progress.done {
                return SegmentExit::Done;
            }
        }
    }

    /// One Scan page after the saved key, retried with backoff; None when `stop` came first
    /// (nothing was read that needs finishing).
    async fn scan_page(
        &self,
        progress: &SegmentProgress,
        total_segments: u32,
        stop: &CancellationToken,
    ) -> Result<Option<ScanOutput>, SnapshotError> {
        let mut failures = 0u32;
        let mut attempt = 0u32;
        loop {
            let request = self
                .dynamodb
                .scan()
                .table_name(&self.table)
                .segment(progress.segment as i32)
                .total_segments(total_segments as i32)
                .limit(self.page_size as i32)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(progress.last_key.clone())
                .send();
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(None),
                r = request => r,
            };
            let err = match result {
                Ok(page) => return Ok(Some(page)),
                Err(e) => e,
            };
            let throttled = matches!(
                err.code(),
                Some(
                    "ProvisionedThroughputExceededException"
                        | "ThrottlingException"
                        | "RequestLimitExceeded"
                )
            );
            let message = DisplayErrorContext(&err).to_string();
            if throttled {
                // The table is busier than the budget assumed: wait, but never give up, since
                // the application's own load passes.
                metrics::aws_error("Scan", "throttling");
                warn!(segment = progress.segment, %message, "Scan throttled; backing off");
            } else {
                metrics::aws_error("Scan", "other");
                failures += 1;
                if failures >= MAX_SCAN_FAILURES {
                    return Err(SnapshotError::Scan {
                        segment: progress.segment,
                        attempts: failures,
                        message,
                    });
                }
                warn!(segment = progress.segment, %message, failures, "Scan failed; retrying");
            }
            let delay = Backoff::AWS.delay(attempt, None);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes a page's items and dead-letters what finally failed; returns how many were
    /// published and how many dead-lettered.
    async fn deliver(
        &self,
        segment: u32,
        items: &[HashMap<String, AttributeValue>],
        abort: &CancellationToken,
    ) -> Result<(u64, u64), SegmentExit> {
        let source = format!("segment-{segment}");
        let origin = Origin::Snapshot {
            table_arn: &self.table_arn,
            segment,
        };
        let scanned_at_ms = crate::lease::now_ms();
        let mut events = Vec::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let mut image: Map<String, Value> = item
                .iter()
                .map(|(name, value)| (name.clone(), wire(value)))
                .collect();
            let raw = serde_json::to_string(&image).expect("a Value serializes");
            let Some(route) = self.routes.route_image(&raw) else {
                entries.push(Entry::Skipped);
                continue;
            };
            let lane = &self.routes.lanes[route];
            image.retain(|name, _| !lane.filter.drop_attributes.contains(name));
            match snapshot_event(
                &self.table,
                image,
                &self.key_attributes,
                scanned_at_ms,
                &lane.settings,
                &source,
            ) {
                Ok(mut event) => {
                    event.route = route;
                    events.push(event);
                    entries.push(Entry::Event);
                }
                Err(error) => {
                    error!(segment, %error, "scanned item cannot become an event; dead-lettering it");
                    let failure = TransformFailure {
                        sequence_number: Some(source.clone()),
                        event_id: None,
                        error,
                    };
                    entries.push(Entry::Letter(Box::new(DeadLetter::malformed(
                        origin,
                        lane.event_type(),
                        &raw,
                        &failure,
                    ))));
                }
            }
        }
        let gate = Gate {
            deadline: abort,
            fence: None,
        };
        let delivery = Delivery {
            publisher: &self.routes,
            dlq: &self.dlq,
        };
        let letter = |event: &Event, failure: &Failure| {
            DeadLetter::from_event(
                origin,
                self.routes.lanes[event.route].event_type(),
                event,
                failure,
            )
        };
        let report = delivery
            .deliver(
                &events,
                &entries,
                letter,
                Publishing::SnapshotSegment(segment),
                &gate,
            )
            .await;
        // A page's progress is one LastEvaluatedKey: a page not wholly done is scanned again by
        // whoever continues the segment.
        if report.done < entries.len() {
            return Err(SegmentExit::Aborted);
        }
        Ok((report.delivered, report.dead_lettered))
    }

    async fn save(
        &self,
        progress: &mut SegmentProgress,
        abort: &CancellationToken,
    ) -> Result<(), SegmentExit> {
        let mut attempt = 0;
        loop {
            match self
                .progress
                .save_segment(&self.table, progress, &self.worker_id)
                .await
            {
                Ok(()) => return Ok(()),
                Err(LeaseError::Lost(_)) => {
                    warn!(
                        segment = progress.segment,
                        "another snapshot process claimed the segment; leaving it to that one"
                    );
                    return Err(SegmentExit::Lost);
                }
                Err(e) => {
                    warn!(segment = progress.segment, error = %e, attempt, "saving snapshot progress failed; retrying")
                }
            }
            wait_before_retry(attempt, abort).await?;
            attempt += 1;
        }
    }
}

async fn wait_before_retry(attempt: u32, abort: &CancellationToken) -> Result<(), SegmentExit> {
    tokio::select! {
        _ = abort.cancelled() => Err(SegmentExit::Aborted),
        _ = tokio::time::sleep(Backoff::AWS.delay(attempt, None)) => Ok(()),
    }
}

/// An attribute value as DynamoDB JSON, the form stream images have, so the transform reads
/// a scanned item exactly as it reads a stream record's image. Numbers stay the text DynamoDB
/// sent; binaries are base64 again, as on the wire.
fn wire(value: &AttributeValue) -> Value {
    let tagged = |tag: &str, inner: Value| Value::Object(Map::from_iter([(tag.to_owned(), inner)]));
    let strings = |list: &[String]| Value::Array(list.iter().cloned().map(Value::String).collect());
    match value {
        AttributeValue::S(s) => tagged("S", Value::String(s.clone())),
        AttributeValue::N(n) => tagged("N", Value::String(n.clone())),
        AttributeValue::B(b) => tagged("B", Value::String(BASE64.encode(b.as_ref()))),
        AttributeValue::Bool(b) => tagged("BOOL", Value::Bool(*b)),
        AttributeValue::Null(b) => tagged("NULL", Value::Bool(*b)),
        AttributeValue::M(m) => tagged(
            "M",
            Value::Object(m.iter().map(|(k, v)| (k.clone(), wire(v))).collect()),
        ),
        AttributeValue::L(l) => tagged("L", Value::Array(l.iter().map(wire).collect())),
        AttributeValue::Ss(ss) => tagged("SS", strings(ss)),
        AttributeValue::Ns(ns) => tagged("NS", strings(ns)),
        AttributeValue::Bs(bs) => tagged(
            "BS",
            Value::Array(
                bs.iter()
                    .map(|b| Value::String(BASE64.encode(b.as_ref())))
                    .collect(),
            ),
        ),
        // A type newer than this SDK: the transform names it unknown, and the item is
        // dead-lettered with that reason rather than published without it.
        _ => tagged("UNKNOWN", Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::primitives::Blob;
    use serde_json::json;

    use super::*;

    #[test]
    fn attribute_values_become_the_wire_form() {
        let item = AttributeValue::M(HashMap::from([
            (
                "n".to_owned(),
                AttributeValue::N("12345678901234567890.123456789012345678".into()),
            ),
            ("b".to_owned(), AttributeValue::B(Blob::new(vec![0, 1, 2]))),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![Blob::new(vec![2, 3])]),
            ),
            (
                "ns".to_owned(),
                AttributeValue::Ns(vec!["10".into(), "-1.5".into()]),
            ),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["z".into(), "a".into()]),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![AttributeValue::Bool(true), AttributeValue::Null(true)]),
            ),
            ("s".to_owned(), AttributeValue::S("ünï".into())),
        ]));
        assert_eq!(
            wire(&item),
            json!({"M": {
                "n": {"N": "12345678901234567890.123456789012345678"},
                "b": {"B": "AAEC"},
                "bs": {"BS": ["AgM="]},
                "ns": {"NS": ["10", "-1.5"]},
                "ss": {"SS": ["z", "a"]},
                "l": {"L": [{"BOOL": true}, {"NULL": true}]},
                "s": {"S": "ünï"},
            }})
        );
    }
}

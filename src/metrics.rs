//! Every metric the relay exports, defined in one place with its help text.
//!
//! Call sites use the small functions at the bottom so that names and label values stay
//! consistent. No metric carries a shard label: DynamoDB rolls shards over every few hours, and
//! a label per shard would grow the series without bound. Per-shard detail lives in `/status`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry `/metrics` serves. A private registry (not the crate's global default) so that
/// only what is defined here is exported.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

/// All metrics, created and registered on first use.
pub struct Metrics {
    pub records_read: IntCounterVec,
    pub events_published: IntCounterVec,
    pub publish_duration: Histogram,
    pub publish_retries: IntCounterVec,
    pub dlq_sent: IntCounterVec,
    pub dlq_write_failures: IntCounter,
    pub dlq_redrained: IntCounterVec,
    pub dlq_depth: IntGaugeVec,
    pub parking_depth: IntGauge,
    pub event_delay: HistogramVec,
    pub shards_blocked: IntGauge,
    pub shards_trimmed: IntCounterVec,
    pub fence_lapses: IntCounterVec,
    pub config_conflict: IntGaugeVec,
    pub leases_owned: IntGaugeVec,
    pub lease_takeovers: IntCounterVec,
    pub leases_lost: IntCounterVec,
    pub workers: IntGaugeVec,
    pub shards: IntGaugeVec,
    pub stream_lag: GaugeVec,
    pub checkpoints: IntCounterVec,
    pub records_trimmed: IntCounterVec,
    pub records_filtered: IntCounterVec,
    pub lineage_order_violations: IntCounterVec,
    pub aws_errors: IntCounterVec,
    pub aws_requests: IntCounterVec,
    pub build_info: IntGaugeVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let publish_duration = Histogram::with_opts(
        HistogramOpts::new(
            "relay_publish_duration_seconds",
            "Duration of one HTTP request publishing a batch to Nakadi.",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]),
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(publish_duration.clone()))
        .expect("unique metric");
    let stream_lag = GaugeVec::new(
        Opts::new(
            "relay_stream_lag_seconds",
            "Age of the newest record processed, the largest over the shards of the table this pod owns; 0 when caught up.",
        ),
        &["table"],
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(stream_lag.clone()))
        .expect("unique metric");
    let build_info = gauge_vec(
        "relay_build_info",
        "Always 1; the version label tells which build runs.",
        &["version"],
    );
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    let event_delay = HistogramVec::new(
        HistogramOpts::new(
            "relay_event_delay_seconds",
            "Time from a stream record's creation (ApproximateCreationDateTime, whole seconds) until Nakadi accepted its event; live stream events only, not re-drained or snapshot events.",
        )
        .buckets(EVENT_DELAY_BUCKETS.to_vec()),
        &["table"],
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(event_delay.clone()))
        .expect("unique metric");
    let metrics = Metrics {
        records_read: counter_vec(
            "relay_records_read_total",
            "Stream records read from DynamoDB Streams.",
            &["table"],
        ),
        events_published: counter_vec(
            "relay_events_published_total",
            "Events of stream records whose publication ended, by event type (a table's routes) and outcome: delivered (Nakadi accepted it) or dead_lettered (sent to the DLQ).",
            &["table", "event_type", "outcome"],
        ),
        publish_duration,
        publish_retries: counter_vec(
            "relay_publish_retries_total",
            "Events re-sent to Nakadi, by reason (server_error, rate_limited, timeout, connection, partial, aborted, unauthorized, rejected).",
            &["reason"],
        ),
        dlq_sent: counter_vec(
            "relay_dlq_sent_total",
            "Messages written to the dead-letter queue, by reason (rejected, retries_exhausted, too_large, malformed_record).",
            &["reason"],
        ),
        dlq_write_failures: counter(
            "relay_dlq_write_failures_total",
            "Failed attempts to write to the dead-letter queue; the shard keeps its checkpoint and retries.",
        ),
        dlq_redrained: counter_vec(
            "relay_dlq_redrained_total",
            "Dead-letter messages handled by the re-drain loop, by outcome (published, failed, undecodable).",
            &["outcome"],
        ),
        dlq_depth: gauge_vec(
            "relay_dlq_depth",
            "Approximate number of messages in the dead-letter queue, sampled by the re-drain loop, by state: visible (waiting to be received) or in_flight (received and hidden: being re-published, or backing off after failing again).",
            &["state"],
        ),
        parking_depth: gauge(
            "relay_parking_depth",
            "Approximate number of messages (visible and in flight) in the parking queue, the target of the dead-letter queue's redrive policy, sampled by the re-drain loop; 0 when the DLQ has no redrive policy. A parked event never reached Nakadi.",
        ),
        event_delay,
        shards_blocked: gauge(
            "relay_shards_blocked",
            "Shards waiting because the dead-letter queue does not take their letters (unreachable, or a letter too large for it); their checkpoints do not move.",
        ),
        shards_trimmed: counter_vec(
            "relay_shards_trimmed_total",
            "Shards that left the stream (older than its retention) before they were read to their end; their unread records are lost and their children started.",
            &["table"],
        ),
        fence_lapses: counter_vec(
            "relay_fence_lapses_total",
            "Times this pod went without a successful heartbeat for the lease duration and stopped publishing every shard of the table (self-fencing).",
            &["table"],
        ),
        config_conflict: gauge_vec(
            "relay_config_conflict",
            "1 while a live pod of the same stream runs a different table configuration (event type, filters, options) and this pod takes no leases.",
            &["table"],
        ),
        leases_owned: gauge_vec(
            "relay_leases_owned",
            "Shard leases this pod owns.",
            &["table"],
        ),
        lease_takeovers: counter_vec(
            "relay_lease_takeovers_total",
            "Leases this pod took over from a worker that stopped renewing (expired), or asked a busier worker to hand over (balanced).",
            &["table", "kind"],
        ),
        leases_lost: counter_vec(
            "relay_leases_lost_total",
            "Leases this pod lost to another worker; the shard stopped without a checkpoint.",
            &["table"],
        ),
        workers: gauge_vec(
            "relay_workers",
            "Live workers this pod sees in the lease table for the table's stream, itself included.",
            &["table"],
        ),
        shards: gauge_vec(
            "relay_shards",
            "Shards of the table's stream by state (owned, unowned, waiting_for_parent, finished), as this pod sees them.",
            &["table", "state"],
        ),
        stream_lag,
        checkpoints: counter_vec(
            "relay_checkpoints_total",
            "Checkpoints written to the lease table.",
            &["table"],
        ),
        records_trimmed: counter_vec(
            "relay_records_trimmed_total",
            "Times a shard's checkpoint pointed at data the stream had already trimmed; reading continued from TRIM_HORIZON.",
            &["table"],
        ),
        records_filtered: counter_vec(
            "relay_records_filtered_total",
            "Stream records not published because the configured filter skips them, by reason (ttl_delete, event_name); their checkpoints move on.",
            &["table", "reason"],
        ),
        lineage_order_violations: counter_vec(
            "relay_lineage_order_violations_total",
            "Child shards whose first record's sequence number was not above the last of a parent shard: AWS documents order within a shard only, and per-key order by data.sequence_number across the split does not hold for them.",
            &["table"],
        ),
        aws_errors: counter_vec(
            "relay_aws_errors_total",
            "Errors from AWS calls, by operation and kind (throttling, expired_iterator, trimmed, not_found, lease_lost, other).",
            &["operation", "kind"],
        ),
        aws_requests: counter_vec(
            "relay_aws_requests_total",
            "Request attempts sent to AWS (DynamoDB Streams, DynamoDB and the lease table, SQS, S3), by operation; a retried call counts each attempt.",
            &["operation"],
        ),
        build_info,
    };
    // Every known label value starts at 0, so the first dead letter or retry shows in `rate()`
    // and `increase()` instead of appearing as a new series that alerts cannot see rise.
    for reason in [
        "server_error",
        "rate_limited",
        "timeout",
        "connection",
        "partial",
        "aborted",
        "unauthorized",
        "rejected",
    ] {
        metrics.publish_retries.with_label_values(&[reason]);
    }
    for reason in [
        "rejected",
        "retries_exhausted",
        "too_large",
        "skipped",
        "malformed_record",
    ] {
        metrics.dlq_sent.with_label_values(&[reason]);
    }
    for outcome in ["published", "failed", "undecodable"] {
        metrics.dlq_redrained.with_label_values(&[outcome]);
    }
    for state in DLQ_STATES {
        metrics.dlq_depth.with_label_values(&[state]);
    }
    for (operations, kinds) in AWS_ERRORS {
        for operation in *operations {
            for kind in *kinds {
                metrics.aws_errors.with_label_values(&[operation, kind]);
            }
        }
    }
    metrics
});

/// Buckets of `relay_event_delay_seconds`: the creation time has whole seconds only, so nothing
/// below a second can be told apart; up to an hour, beyond which the lag alerts speak.
pub const EVENT_DELAY_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Label values of `relay_dlq_depth{state}`.
pub const DLQ_STATES: [&str; 2] = ["visible", "in_flight"];

/// The operations whose errors `relay_aws_errors_total{operation, kind}` counts, with the kinds
/// each can report, so that every such series exists at 0 from start. A unit test holds the
/// operations named at the call sites to this list.
pub const AWS_ERRORS: &[(&[&str], &[&str])] = &[
    // DynamoDB Streams (`stream::client`).
    (
        &["DescribeStream", "GetShardIterator", "GetRecords"],
        &[
            "throttling",
            "expired_iterator",
            "trimmed",
            "not_found",
            "other",
        ],
    ),
    // The lease table (`lease::table`), every call within RELAY_LEASE_CALL_TIMEOUT.
    (
        &[
            "DescribeTable",
            "CreateTable",
            "Scan",
            "GetItem",
            "PutItem",
            "UpdateItem",
            "TransactWriteItems",
            "DeleteItem",
        ],
        &["throttling", "not_found", "lease_lost", "timeout", "other"],
    ),
    // The dead-letter queue, its parking queue and the bucket of letters too large for it.
    (
        &[
            "SendMessageBatch",
            "ReceiveMessage",
            "DeleteMessageBatch",
            "ChangeMessageVisibilityBatch",
            "GetQueueAttributes",
            "GetQueueUrl",
            "PutObject",
            "GetObject",
            "DeleteObject",
        ],
        &["other"],
    ),
];

/// Label values of `relay_shards{state}`.
pub const SHARD_STATES: [&str; 4] = ["owned", "unowned", "waiting_for_parent", "finished"];

/// The metrics of one table's stream, bound to its `table` label once. The label is bounded by
/// the configured tables (shards, which come and go, are never a label).
pub struct TableMetrics {
    pub records_read: IntCounter,
    /// Per route, in route order: `relay_events_published_total` by outcome.
    pub published: Vec<Published>,
    pub records_trimmed: IntCounter,
    pub checkpoints: IntCounter,
    pub stream_lag: Gauge,
    pub leases_owned: IntGauge,
    pub leases_lost: IntCounter,
    pub workers: IntGauge,
    pub shards_trimmed: IntCounter,
    pub fence_lapses: IntCounter,
    pub config_conflict: IntGauge,
    pub lineage_order_violations: IntCounter,
    /// `relay_event_delay_seconds` of the table: observed by the publisher of its shard workers.
    pub event_delay: Histogram,
    table: String,
}

/// One route's `relay_events_published_total`; its `event_type` label is bounded by the
/// configured routes.
pub struct Published {
    pub delivered: IntCounter,
    pub dead_lettered: IntCounter,
}

impl TableMetrics {
    /// Every series of the table starts at 0, so the first event of a kind shows in `rate()`.
    /// `event_types`: the table's routes, in order.
    pub fn new<'a>(table: &str, event_types: impl IntoIterator<Item = &'a str>) -> TableMetrics {
        let m = &*METRICS;
        for skip in crate::filter::Skip::ALL {
            m.records_filtered.with_label_values(&[table, skip.label()]);
        }
        for kind in ["expired", "balanced"] {
            m.lease_takeovers.with_label_values(&[table, kind]);
        }
        for state in SHARD_STATES {
            m.shards.with_label_values(&[table, state]);
        }
        TableMetrics {
            records_read: m.records_read.with_label_values(&[table]),
            published: event_types
                .into_iter()
                .map(|event_type| Published {
                    delivered: m.events_published.with_label_values(&[
                        table,
                        event_type,
                        "delivered",
                    ]),
                    dead_lettered: m.events_published.with_label_values(&[
                        table,
                        event_type,
                        "dead_lettered",
                    ]),
                })
                .collect(),
            records_trimmed: m.records_trimmed.with_label_values(&[table]),
            checkpoints: m.checkpoints.with_label_values(&[table]),
            stream_lag: m.stream_lag.with_label_values(&[table]),
            leases_owned: m.leases_owned.with_label_values(&[table]),
            leases_lost: m.leases_lost.with_label_values(&[table]),
            workers: m.workers.with_label_values(&[table]),
            shards_trimmed: m.shards_trimmed.with_label_values(&[table]),
            fence_lapses: m.fence_lapses.with_label_values(&[table]),
            config_conflict: m.config_conflict.with_label_values(&[table]),
            lineage_order_violations: m.lineage_order_violations.with_label_values(&[table]),
            event_delay: m.event_delay.with_label_values(&[table]),
            table: table.to_owned(),
        }
    }

    pub fn filtered(&self, skip: crate::filter::Skip) {
        METRICS
            .records_filtered
            .with_label_values(&[&self.table, skip.label()])
            .inc();
    }

    pub fn takeover(&self, kind: &str) {
        METRICS
            .lease_takeovers
            .with_label_values(&[&self.table, kind])
            .inc();
    }

    pub fn shards(&self, state: &str, n: i64) {
        METRICS
            .shards
            .with_label_values(&[&self.table, state])
            .set(n);
    }
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buf)
        .expect("text encoding of gathered metrics cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

pub fn aws_error(operation: &str, kind: &str) {
    METRICS
        .aws_errors
        .with_label_values(&[operation, kind])
        .inc();
}

pub fn aws_request(operation: &str) {
    METRICS.aws_requests.with_label_values(&[operation]).inc();
}

pub fn publish_retry(reason: &str, events: u64) {
    METRICS
        .publish_retries
        .with_label_values(&[reason])
        .inc_by(events);
}

pub fn dlq_sent(reason: &str) {
    METRICS.dlq_sent.with_label_values(&[reason]).inc();
}

pub fn dlq_redrained(outcome: &str, messages: u64) {
    METRICS
        .dlq_redrained
        .with_label_values(&[outcome])
        .inc_by(messages);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn known(operation: &str, kind: Option<&str>) -> bool {
        AWS_ERRORS.iter().any(|(operations, kinds)| {
            operations.contains(&operation) && kind.is_none_or(|k| kinds.contains(&k))
        })
    }

    /// The string literal arguments of every call of `function` in `text`.
    fn literal_args<'t>(text: &'t str, function: &str) -> Vec<Vec<&'t str>> {
        text.match_indices(&format!("{function}(\""))
            .map(|(at, m)| {
                let args = &text[at + m.len() - 1..];
                let args = &args[..args.find(')').unwrap_or(args.len())];
                args.split(',')
                    .map(str::trim)
                    .take_while(|a| a.starts_with('"') && a.ends_with('"') && a.len() >= 2)
                    .map(|a| &a[1..a.len() - 1])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_aws_error_named_at_a_call_site_starts_at_zero() {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut unknown = Vec::new();
        let mut seen = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for args in literal_args(code, "aws_error") {
                seen += 1;
                if !known(args[0], args.get(1).copied()) {
                    unknown.push(format!("{}: {args:?}", file.display()));
                }
            }
            // The lease table's and the stream client's calls name their operation first; their
            // kinds come from the error's classification, listed with the operations.
            for function in ["from_sdk", "bounded", "timed_out"] {
                for args in literal_args(code, function) {
                    seen += 1;
                    if !known(args[0], None) {
                        unknown.push(format!("{}: {function}({:?})", file.display(), args[0]));
                    }
                }
            }
        }
        assert!(seen > 20, "found only {seen} call sites");
        assert!(unknown.is_empty(), "not in AWS_ERRORS: {unknown:#?}");
    }

    #[test]
    fn labelled_series_are_exported_before_their_first_event() {
        let _ = TableMetrics::new("zero", ["zero.changed"]);
        let text = render();
        for series in [
            "relay_aws_errors_total{kind=\"throttling\",operation=\"GetRecords\"} 0",
            "relay_aws_errors_total{kind=\"other\",operation=\"GetQueueUrl\"} 0",
            "relay_dlq_depth{state=\"in_flight\"} ",
            "relay_dlq_depth{state=\"visible\"} ",
            "relay_parking_depth ",
            "relay_lineage_order_violations_total{table=\"zero\"} 0",
            "relay_event_delay_seconds_count{table=\"zero\"} 0",
            "relay_event_delay_seconds_bucket{table=\"zero\",le=\"1\"} 0",
            "relay_event_delay_seconds_bucket{table=\"zero\",le=\"3600\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(series)),
                "{series} missing"
            );
        }
    }
}

//! Typed settings from the `RELAY_*` environment variables.
//!
//! Every variable is parsed before anything starts, and every problem is collected, so an operator
//! fixing a deployment sees all of them in one run instead of one per restart. The binary turns a
//! [`ConfigErrors`] into exit code 2.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::filter::{EventNames, Filter, TtlDeletes};
use crate::ids::WorkerId;
use crate::nakadi::{FailureMode, PublisherConfig, TokenSource};
use crate::route::Condition;

/// Where the stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSource {
    /// The table's latest stream, looked up with DescribeTable at start.
    Table(String),
    Arn(String),
}

/// Where a stream is first read (RELAY_INITIAL_POSITION), decided once per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// Everything the stream still holds.
    TrimHorizon,
    /// Only what is written from the first start on.
    Latest,
    /// What was written from this time on (a cut-over from another relay, a replay).
    At(time::OffsetDateTime),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Timing of the lease protocol; the trade-offs are in docs/DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// A pod whose heartbeat counter has not moved for this long (on the observer's own clock)
    /// may have its leases taken over; it stops publishing a margin before that (the fence).
    pub duration: Duration,
    /// How often the heartbeat is written and the lease table is read for balancing.
    pub renew_interval: Duration,
    /// The longest one lease-table call may take, retries included.
    pub call_timeout: Duration,
    /// How often the whole stream is described to find new shards.
    pub shard_sync_interval: Duration,
}

/// One source table and where its records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    pub source: StreamSource,
    /// A record takes the first route whose condition holds on its images. Without
    /// `[[table.route]]` there is one route, the table's own event type, without a condition;
    /// with routes, the table's own event type, if it names one, comes last without a condition
    /// (the fallback), and a record no route takes is filtered.
    pub routes: Vec<Route>,
}

/// One event type a table's records go to, and what its events are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub event_type: String,
    pub data_type: String,
    pub compaction_key: bool,
    /// Which records become events, and without which attributes.
    pub filter: Filter,
    /// None: every record (the table's own event type, or a route without `when`).
    pub when: Option<Condition>,
}

impl TableConfig {
    /// The table's name: the `table` label of its metrics and its name in `/status`.
    pub fn name(&self) -> &str {
        match &self.source {
            StreamSource::Table(name) => name,
            // arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL, checked when parsed.
            StreamSource::Arn(arn) => arn
                .split_once(":table/")
                .and_then(|(_, rest)| rest.split_once("/stream/"))
                .map_or(arn.as_str(), |(name, _)| name),
        }
    }

    /// Which setting names the table's stream, for start-up errors.
    /// What the table's events are, as a short digest: pods that publish one stream must agree
    /// on it, or they would split the stream's records between two configurations.
    pub fn fingerprint(&self) -> String {
        use sha1::Digest;
        // A table of one route describes itself as versions before routes did, so a rolling
        // deploy that does not change the configuration sees one configuration.
        let described = self
            .routes
            .iter()
            .map(|r| {
                let route = format!(
                    "{}|{}|{}|{:?}",
                    r.event_type, r.data_type, r.compaction_key, r.filter
                );
                match &r.when {
                    Some(when) => format!("{route}|when {when:?}"),
                    None => route,
                }
            })
            .collect::<Vec<_>>()
            .join("||");
        let digest = sha1::Sha1::digest(described.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn source_variable(&self, from_file: bool) -> &'static str {
        match (&self.source, from_file) {
            (_, true) => "RELAY_TABLES_FILE",
            (StreamSource::Arn(_), false) => "RELAY_STREAM_ARN",
            (StreamSource::Table(_), false) => "RELAY_TABLE_NAME",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// One table from the RELAY_TABLE_NAME group of variables, or several from RELAY_TABLES_FILE.
    pub tables: Vec<TableConfig>,
    /// The tables came from RELAY_TABLES_FILE.
    pub tables_from_file: bool,
    pub lease_table: String,
    pub create_lease_table: bool,
    /// Nakadi settings shared by all tables; `event_type` is empty here, see [`Config::publisher`].
    pub nakadi: PublisherConfig,
    pub dlq_url: String,
    /// RELAY_DLQ_S3_BUCKET: where dead letters too large for the queue even gzip-compressed go
    /// (the queue then carries the SQS Extended Client pointer); none: such a letter waits.
    pub dlq_s3_bucket: Option<String>,
    pub initial_position: InitialPosition,
    pub http_addr: SocketAddr,
    pub worker_id: WorkerId,
    pub dlq_redrain_interval: Duration,
    /// Events per second the re-drain loop may publish, so a full queue does not flood Nakadi.
    pub dlq_redrain_rate: u32,
    pub log_format: LogFormat,
    pub lease: LeaseTiming,
    /// RELAY_IDLE_POLL_INTERVAL: the longest wait between polls of a shard whose last poll
    /// returned nothing. Every GetRecords call is billed, so this sets what an idle shard costs,
    /// and it bounds how long a write to a quiet shard waits before it is read.
    pub idle_poll_interval: Duration,
    /// RELAY_CHECKPOINT_INTERVAL: the shortest time between two checkpoint writes of a busy
    /// shard. Each write is billed and throttled like any table write, while all it buys is fewer
    /// events published again after a crash; 0 writes one per page.
    pub checkpoint_interval: Duration,
    /// How long SIGTERM may take: the batch in flight, its checkpoint and the lease release.
    pub shutdown_timeout: Duration,
    /// RELAY_WORKER_THREADS: the threads that run the relay's tasks. One by default: the relay
    /// scales by pods (one lease per shard), one thread transforms more than a pod's shards
    /// usually write, and each more thread costs every idle poll a wake-up of a sibling thread
    /// (docs/performance.md). The runtime's own default, one per core of the node, ignores the
    /// pod's CPU request.
    pub worker_threads: usize,
    /// The `snapshot` subcommand's settings.
    pub snapshot: SnapshotConfig,
}

/// How `dynamodb-nakadi-relay snapshot` scans the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotConfig {
    /// Parallel Scan segments (`TotalSegments`), all scanned at once.
    pub segments: u32,
    /// Most items per Scan page (`Limit`); DynamoDB also ends a page at 1 MB. Progress is saved
    /// after each page, so this bounds what a crash publishes twice.
    pub page_size: u32,
    pub read_capacity: ReadCapacity,
}

/// The snapshot's read budget (RELAY_SNAPSHOT_READ_CAPACITY).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadCapacity {
    /// Read capacity units per second, as the Scans report them consumed.
    UnitsPerSecond(f64),
    /// This fraction (0 to 1) of the table's provisioned read capacity; on-demand tables have
    /// none, so they need [`ReadCapacity::UnitsPerSecond`].
    ShareOfProvisioned(f64),
}

impl ReadCapacity {
    fn parse(raw: &str) -> Result<ReadCapacity, String> {
        let number = |text: &str| text.trim().parse::<f64>().ok().filter(|n| n.is_finite());
        match raw.strip_suffix('%') {
            Some(percent) => match number(percent) {
                Some(p) if p > 0.0 && p <= 100.0 => Ok(ReadCapacity::ShareOfProvisioned(p / 100.0)),
                _ => Err("a share must be a percentage above 0 and at most 100, such as 25%".into()),
            },
            None => match number(raw) {
                Some(units) if (0.1..=1_000_000.0).contains(&units) => {
                    Ok(ReadCapacity::UnitsPerSecond(units))
                }
                _ => Err(
                    "must be read capacity units per second (0.1 to 1000000) or a share of the table's provisioned read capacity such as 25%"
                        .into(),
                ),
            },
        }
    }
}

/// One variable's problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

/// All problems found in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problems):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.variable, e.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads variables and remembers every problem, so parsing never stops at the first one.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn fail(&mut self, variable: &'static str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            variable,
            problem: problem.into(),
        });
    }

    /// The value, with surrounding white space removed; an empty value counts as unset, since
    /// Helm renders unset values as empty strings.
    fn get(&self, variable: &str) -> Option<&str> {
        self.vars
            .get(variable)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, variable: &'static str) -> String {
        match self.get(variable) {
            Some(v) => v.to_owned(),
            None => {
                self.fail(variable, "is required but not set");
                String::new()
            }
        }
    }

    fn parse<T>(
        &mut self,
        variable: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.get(variable) {
            None => default,
            Some(raw) => match parse(raw) {
                Ok(v) => v,
                Err(problem) => {
                    self.fail(variable, format!("{problem} (got {raw:?})"));
                    default
                }
            },
        }
    }

    fn bool(&mut self, variable: &'static str, default: bool) -> bool {
        self.parse(variable, default, |raw| {
            match raw.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err("must be true or false".into()),
            }
        })
    }

    fn duration(
        &mut self,
        variable: &'static str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        self.parse(variable, default, |raw| {
            let d = humantime::parse_duration(raw)
                .map_err(|e| format!("must be a duration such as 30s or 500ms: {e}"))?;
            if d < min || d > max {
                return Err(format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ));
            }
            Ok(d)
        })
    }

    fn number<T>(&mut self, variable: &'static str, default: T, min: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        self.parse(variable, default, |raw| {
            let n: T = raw
                .parse()
                .map_err(|_| "must be a whole number".to_string())?;
            if n < min || n > max {
                return Err(format!("must be between {min} and {max}"));
            }
            Ok(n)
        })
    }
}

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
/// Chosen from the measured table of interval → GetRecords per shard-second → dollars per idle
/// shard-month → quiet-shard delay in docs/performance.md: the longest wait that keeps a quiet
/// shard's median delay within the target there.
const DEFAULT_IDLE_POLL_INTERVAL: Duration = Duration::from_millis(600);
/// A busy shard reads several pages a second; one checkpoint a second keeps its lease-table
/// writes (and the lease table's load) to one a second, and a crash re-publishes about a second
/// of its events, which consumers drop by eid anyway.
const DEFAULT_CHECKPOINT_INTERVAL: Duration = SECOND;

#[cfg(test)]
impl Config {
    /// One table `orders` to `payments.order-changed`, every other setting at its default,
    /// then `extra`: the configuration other modules' tests start from.
    pub(crate) fn example(extra: &[(&str, &str)]) -> Config {
        let mut vars: HashMap<String, String> = [
            ("RELAY_TABLE_NAME", "orders"),
            ("RELAY_EVENT_TYPE", "payments.order-changed"),
            ("RELAY_LEASE_TABLE", "leases"),
            ("RELAY_NAKADI_URL", "http://nakadi"),
            ("RELAY_DLQ_URL", "http://sqs/1/dlq"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        Config::from_vars(&vars).unwrap()
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Parses the given variables; tests pass their own map instead of touching the environment.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            vars,
            errors: Vec::new(),
        };

        let (tables, tables_from_file) = match r.get("RELAY_TABLES_FILE").map(PathBuf::from) {
            Some(path) => (tables_from_file(&mut r, &path), true),
            None => (vec![table_from_env(&mut r)], false),
        };
        let lease_table = r.required("RELAY_LEASE_TABLE");
        let create_lease_table = r.bool("RELAY_CREATE_LEASE_TABLE", false);

        let nakadi_url = r.required("RELAY_NAKADI_URL");
        if !nakadi_url.is_empty() {
            match reqwest::Url::parse(&nakadi_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => r.fail(
                    "RELAY_NAKADI_URL",
                    format!("must be an http(s) URL (got {nakadi_url:?})"),
                ),
            }
        }
        let token = token_source(&mut r);
        let on_failure =
            r.parse(
                "RELAY_ON_PUBLISH_FAILURE",
                FailureMode::DeadLetter,
                |raw| match raw {
                    "dlq" => Ok(FailureMode::DeadLetter),
                    "block" => Ok(FailureMode::Block),
                    _ => Err("must be dlq or block".into()),
                },
            );
        let nakadi = PublisherConfig {
            base_url: nakadi_url.trim_end_matches('/').to_owned(),
            event_type: String::new(),
            token,
            batch_size: r.number("RELAY_NAKADI_BATCH_SIZE", 500, 1, 10_000),
            batch_bytes: r.number("RELAY_NAKADI_BATCH_BYTES", 4 << 20, 1 << 10, 64 << 20),
            gzip_min_bytes: r.number("RELAY_NAKADI_GZIP_MIN_BYTES", 16 << 10, 0, usize::MAX),
            request_timeout: r.duration(
                "RELAY_NAKADI_TIMEOUT",
                10 * SECOND,
                Duration::from_millis(100),
                10 * 60 * SECOND,
            ),
            max_attempts: r.number("RELAY_NAKADI_MAX_ATTEMPTS", 8, 1, 1000),
            max_retry_time: r.duration(
                "RELAY_NAKADI_MAX_RETRY_TIME",
                60 * SECOND,
                Duration::ZERO,
                HOUR,
            ),
            on_failure,
        };

        let dlq_url = r.required("RELAY_DLQ_URL");
        if !dlq_url.is_empty() && reqwest::Url::parse(&dlq_url).is_err() {
            r.fail(
                "RELAY_DLQ_URL",
                format!("must be an SQS queue URL (got {dlq_url:?})"),
            );
        }
        let dlq_s3_bucket = r.parse("RELAY_DLQ_S3_BUCKET", None, |raw| {
            check_bucket_name(raw).map(|()| Some(raw.to_owned()))
        });
        let initial_position = r.parse(
            "RELAY_INITIAL_POSITION",
            InitialPosition::TrimHorizon,
            |raw| match raw {
                "TRIM_HORIZON" => Ok(InitialPosition::TrimHorizon),
                "LATEST" => Ok(InitialPosition::Latest),
                time => match time::OffsetDateTime::parse(
                    time,
                    &time::format_description::well_known::Rfc3339,
                ) {
                    Ok(at) if at <= time::OffsetDateTime::now_utc() => {
                        Ok(InitialPosition::At(at.to_offset(time::UtcOffset::UTC)))
                    }
                    Ok(_) => Err(format!("{time} is in the future")),
                    Err(_) => Err(
                        "must be TRIM_HORIZON, LATEST, or an RFC 3339 time such as 2026-12-01T08:00:00Z"
                            .into(),
                    ),
                },
            },
        );
        let http_addr = r.parse(
            "RELAY_HTTP_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            |raw| {
                raw.parse()
                    .map_err(|_| "must be an address such as 0.0.0.0:8080".into())
            },
        );
        let worker_id = r
            .get("RELAY_WORKER_ID")
            .map(str::to_owned)
            .unwrap_or_else(default_worker_id);
        let dlq_redrain_interval =
            r.duration("RELAY_DLQ_REDRAIN_INTERVAL", 30 * SECOND, SECOND, HOUR);
        let dlq_redrain_rate = r.number("RELAY_DLQ_REDRAIN_RATE", 500, 1, 1_000_000);
        let log_format = r.parse("RELAY_LOG_FORMAT", LogFormat::Json, |raw| match raw {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err("must be json or text".into()),
        });
        let idle_poll_interval = r.duration(
            "RELAY_IDLE_POLL_INTERVAL",
            DEFAULT_IDLE_POLL_INTERVAL,
            Duration::from_millis(50),
            60 * SECOND,
        );
        let checkpoint_interval = r.duration(
            "RELAY_CHECKPOINT_INTERVAL",
            DEFAULT_CHECKPOINT_INTERVAL,
            Duration::ZERO,
            60 * SECOND,
        );
        let worker_threads = r.number("RELAY_WORKER_THREADS", 1, 1, 256);
        let lease = LeaseTiming {
            duration: r.duration("RELAY_LEASE_DURATION", 6 * SECOND, SECOND, 10 * 60 * SECOND),
            renew_interval: r.duration(
                "RELAY_LEASE_RENEW_INTERVAL",
                1500 * MILLISECOND,
                Duration::from_millis(100),
                5 * 60 * SECOND,
            ),
            call_timeout: r.duration(
                "RELAY_LEASE_CALL_TIMEOUT",
                SECOND,
                Duration::from_millis(50),
                60 * SECOND,
            ),
            shard_sync_interval: r.duration("RELAY_SHARD_SYNC_INTERVAL", 60 * SECOND, SECOND, HOUR),
        };
        // A pod must get several tries at its heartbeat within one fence, and one slow call must
        // not use up the time for the next.
        if lease.renew_interval * 3 >= lease.duration {
            r.fail(
                "RELAY_LEASE_RENEW_INTERVAL",
                format!(
                    "must be less than a third of RELAY_LEASE_DURATION ({}), or one failed heartbeat fences the pod",
                    humantime::format_duration(lease.duration)
                ),
            );
        }
        if lease.call_timeout >= lease.renew_interval {
            r.fail(
                "RELAY_LEASE_CALL_TIMEOUT",
                format!(
                    "must be less than RELAY_LEASE_RENEW_INTERVAL ({}), or a slow heartbeat delays the next",
                    humantime::format_duration(lease.renew_interval)
                ),
            );
        }
        let shutdown_timeout = r.duration(
            "RELAY_SHUTDOWN_TIMEOUT",
            20 * SECOND,
            SECOND,
            10 * 60 * SECOND,
        );
        // After the drain deadline no new request is sent, but the one in flight is answered: a
        // deadline shorter than one request cannot let even one page finish.
        if shutdown_timeout < nakadi.request_timeout {
            r.fail(
                "RELAY_SHUTDOWN_TIMEOUT",
                format!(
                    "must be at least RELAY_NAKADI_TIMEOUT ({}), the longest single publish request",
                    humantime::format_duration(nakadi.request_timeout)
                ),
            );
        }

        let snapshot = SnapshotConfig {
            segments: r.number("RELAY_SNAPSHOT_SEGMENTS", 4, 1, 64),
            page_size: r.number("RELAY_SNAPSHOT_PAGE_SIZE", 500, 1, 10_000),
            read_capacity: r.parse(
                "RELAY_SNAPSHOT_READ_CAPACITY",
                ReadCapacity::UnitsPerSecond(100.0),
                ReadCapacity::parse,
            ),
        };

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        Ok(Config {
            tables,
            tables_from_file,
            lease_table,
            create_lease_table,
            nakadi,
            dlq_url,
            dlq_s3_bucket,
            initial_position,
            http_addr,
            worker_id: WorkerId::new(worker_id),
            dlq_redrain_interval,
            dlq_redrain_rate,
            log_format,
            lease,
            idle_poll_interval,
            checkpoint_interval,
            shutdown_timeout,
            worker_threads,
            snapshot,
        })
    }
}

impl Config {
    /// The publisher settings for one table's event type.
    pub fn publisher(&self, event_type: &str) -> PublisherConfig {
        PublisherConfig {
            event_type: event_type.to_owned(),
            ..self.nakadi.clone()
        }
    }
}

/// The variables that describe the one table of a deployment without RELAY_TABLES_FILE.
const TABLE_VARIABLES: [&str; 8] = [
    "RELAY_TABLE_NAME",
    "RELAY_STREAM_ARN",
    "RELAY_EVENT_TYPE",
    "RELAY_DATA_TYPE",
    "RELAY_COMPACTION_KEY",
    "RELAY_TTL_DELETES",
    "RELAY_EVENT_NAMES",
    "RELAY_DROP_ATTRIBUTES",
];

fn check_stream_arn(arn: &str) -> Result<(), String> {
    if arn.starts_with("arn:") && arn.contains(":table/") && arn.contains("/stream/") {
        Ok(())
    } else {
        Err(format!(
            "must be a DynamoDB stream ARN (arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL), got {arn:?}"
        ))
    }
}

/// An S3 general purpose bucket name, by S3's naming rules: 3 to 63 lower-case letters, digits,
/// dots and hyphens, a letter or digit at both ends, no two dots in a row, not an IP address,
/// none of the prefixes and suffixes S3 reserves (those end in other kinds of bucket: access
/// point aliases, directory buckets, table buckets).
fn check_bucket_name(name: &str) -> Result<(), String> {
    let problem = if name.contains("://") || name.starts_with("arn:") || name.contains('/') {
        Some("the bucket's name alone, not a URL, ARN or path")
    } else if !(3..=63).contains(&name.len()) {
        Some("3 to 63 characters long")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
    {
        Some("only lower-case letters, digits, dots and hyphens")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        Some("a letter or digit at both ends")
    } else if name.contains("..") {
        Some("without two dots in a row")
    } else if name.parse::<std::net::Ipv4Addr>().is_ok() {
        Some("not an IP address")
    } else if ["xn--", "sthree-", "amzn-s3-demo-"]
        .iter()
        .any(|p| name.starts_with(p))
        || ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
            .iter()
            .any(|s| name.ends_with(s))
    {
        Some("a general purpose bucket's name, without a prefix or suffix S3 reserves")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(format!(
            "must be an S3 bucket name such as orders-relay-dead-letters: {problem}"
        )),
        None => Ok(()),
    }
}

fn parse_ttl_deletes(raw: &str) -> Result<TtlDeletes, String> {
    match raw {
        "publish" => Ok(TtlDeletes::Publish),
        "skip" => Ok(TtlDeletes::Skip),
        "mark" => Ok(TtlDeletes::Mark),
        _ => Err("must be publish, skip or mark".into()),
    }
}

fn comma_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The one table of the RELAY_TABLE_NAME group of variables.
fn table_from_env(r: &mut Reader<'_>) -> TableConfig {
    let source = match (r.get("RELAY_TABLE_NAME"), r.get("RELAY_STREAM_ARN")) {
        (_, Some(arn)) => {
            let arn = arn.to_owned();
            if let Err(problem) = check_stream_arn(&arn) {
                r.fail("RELAY_STREAM_ARN", problem);
            }
            StreamSource::Arn(arn)
        }
        (Some(table), None) => StreamSource::Table(table.to_owned()),
        (None, None) => {
            r.fail(
                "RELAY_TABLE_NAME",
                "is required (or set RELAY_STREAM_ARN, or RELAY_TABLES_FILE)",
            );
            StreamSource::Table(String::new())
        }
    };
    let event_type = r.required("RELAY_EVENT_TYPE");
    let data_type = r
        .get("RELAY_DATA_TYPE")
        .map(str::to_owned)
        .unwrap_or_else(|| event_type.clone());
    TableConfig {
        source,
        routes: vec![Route {
            event_type,
            data_type,
            compaction_key: r.bool("RELAY_COMPACTION_KEY", false),
            filter: Filter {
                ttl_deletes: r.parse("RELAY_TTL_DELETES", TtlDeletes::Publish, parse_ttl_deletes),
                event_names: r.parse("RELAY_EVENT_NAMES", EventNames::ALL, EventNames::parse),
                drop_attributes: r
                    .get("RELAY_DROP_ATTRIBUTES")
                    .map(comma_list)
                    .unwrap_or_default(),
            },
            when: None,
        }],
    }
}

/// One `[[table]]` of RELAY_TABLES_FILE; the keys mirror the single-table variables. Read key by
/// key, so that each problem names its table and route.
struct TableEntry {
    name: Option<String>,
    stream_arn: Option<String>,
    event_type: Option<String>,
    options: RouteOptions,
    route: Vec<toml::Table>,
}

impl TableEntry {
    fn read(mut entry: toml::Table) -> Result<TableEntry, String> {
        let name = take_string(&mut entry, "name")?;
        let stream_arn = take_string(&mut entry, "stream_arn")?;
        let event_type = take_string(&mut entry, "event_type")?;
        let route = match entry.remove("route") {
            None => Vec::new(),
            Some(toml::Value::Array(routes)) => routes
                .into_iter()
                .map(|r| match r {
                    toml::Value::Table(r) => Ok(r),
                    _ => Err("route must be a list of tables ([[table.route]])".to_owned()),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("route must be a list of tables ([[table.route]])".into()),
        };
        Ok(TableEntry {
            name,
            stream_arn,
            event_type,
            options: RouteOptions::read(entry)?,
            route,
        })
    }
}

fn take_string(entry: &mut toml::Table, key: &str) -> Result<Option<String>, String> {
    match entry.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// What a table, and each of its routes, may set about its events.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteOptions {
    data_type: Option<String>,
    #[serde(default)]
    compaction_key: bool,
    ttl_deletes: Option<String>,
    event_names: Option<Vec<String>>,
    #[serde(default)]
    drop_attributes: Vec<String>,
}

impl RouteOptions {
    /// The options among what is left of an entry once its own keys are taken: any other key
    /// is unknown.
    fn read(rest: toml::Table) -> Result<RouteOptions, String> {
        use serde::Deserialize;
        RouteOptions::deserialize(toml::Value::Table(rest)).map_err(|e| e.message().to_owned())
    }

    /// The route of these options to `event_type`; what is wrong goes to `problems`.
    fn route(
        self,
        event_type: String,
        when: Option<Condition>,
        problems: &mut Vec<String>,
    ) -> Route {
        if event_type.trim().is_empty() {
            problems.push("event_type is empty".into());
        }
        let ttl_deletes = match self.ttl_deletes.as_deref().map(parse_ttl_deletes) {
            None => TtlDeletes::Publish,
            Some(Ok(t)) => t,
            Some(Err(p)) => {
                problems.push(format!("ttl_deletes {p}"));
                TtlDeletes::Publish
            }
        };
        let event_names = match self
            .event_names
            .map(|names| EventNames::parse(&names.join(",")))
        {
            None => EventNames::ALL,
            Some(Ok(n)) => n,
            Some(Err(p)) => {
                problems.push(format!("event_names: {p}"));
                EventNames::ALL
            }
        };
        Route {
            data_type: self.data_type.unwrap_or_else(|| event_type.clone()),
            event_type,
            compaction_key: self.compaction_key,
            filter: Filter {
                ttl_deletes,
                event_names,
                drop_attributes: self.drop_attributes,
            },
            when,
        }
    }
}

/// One `[[table.route]]`: its options, its event type and its condition; problems in words.
fn route_entry(
    mut entry: toml::Table,
) -> Result<(String, Option<Condition>, RouteOptions), String> {
    let event_type = match entry.remove("event_type") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err("event_type must be a string".into()),
        None => return Err("has no event_type".into()),
    };
    let when = entry
        .remove("when")
        .map(|w| Condition::parse(&w).map_err(|e| format!("when: {e}")))
        .transpose()?;
    Ok((event_type, when, RouteOptions::read(entry)?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TablesFile {
    table: Vec<toml::Table>,
}

/// The earlier route that takes every record `route` would: one without a condition, or one
/// with the same condition.
fn unreachable_after(earlier: &[Route], route: &Route) -> Option<usize> {
    earlier
        .iter()
        .position(|r| r.when.is_none() || r.when == route.when)
}

/// The tables of RELAY_TABLES_FILE (TOML, `[[table]]` entries; see the README). Every problem
/// names the entry it is in.
fn tables_from_file(r: &mut Reader<'_>, path: &std::path::Path) -> Vec<TableConfig> {
    const VAR: &str = "RELAY_TABLES_FILE";
    for variable in TABLE_VARIABLES {
        if r.get(variable).is_some() {
            r.fail(
                variable,
                "must not be set with RELAY_TABLES_FILE, which configures every table",
            );
        }
    }
    let file: TablesFile = match std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|text| {
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))
        }) {
        Ok(file) => file,
        Err(problem) => {
            r.fail(VAR, problem);
            return Vec::new();
        }
    };
    if file.table.is_empty() {
        r.fail(VAR, format!("{} has no [[table]]", path.display()));
    }
    let mut tables: Vec<TableConfig> = Vec::new();
    for (i, raw) in file.table.into_iter().enumerate() {
        let entry = match TableEntry::read(raw) {
            Ok(entry) => entry,
            Err(p) => {
                r.fail(VAR, format!("[[table]] {}: {p}", i + 1));
                continue;
            }
        };
        let mut problems = Vec::new();
        let source = match (entry.name, entry.stream_arn) {
            (_, Some(arn)) => {
                if let Err(p) = check_stream_arn(&arn) {
                    problems.push(format!("stream_arn {p}"));
                }
                StreamSource::Arn(arn)
            }
            (Some(name), None) if !name.trim().is_empty() => StreamSource::Table(name),
            _ => {
                problems.push("needs name or stream_arn".into());
                StreamSource::Table(String::new())
            }
        };
        let mut routes = Vec::new();
        for (k, raw) in entry.route.into_iter().enumerate() {
            let mut route_problems = Vec::new();
            match route_entry(raw) {
                Ok((event_type, when, options)) => {
                    let route = options.route(event_type, when, &mut route_problems);
                    if let Some(earlier) = unreachable_after(&routes, &route) {
                        route_problems.push(format!(
                            "no record can reach it: route {} before it takes {}",
                            earlier + 1,
                            if routes[earlier].when.is_none() {
                                "every record (it has no when)"
                            } else {
                                "the same records (the same when)"
                            }
                        ));
                    }
                    routes.push(route);
                }
                Err(p) => route_problems.push(p),
            }
            problems.extend(
                route_problems
                    .into_iter()
                    .map(|p| format!("route {}: {p}", k + 1)),
            );
        }
        match entry.event_type {
            Some(event_type) => {
                let fallback = entry.options.route(event_type, None, &mut problems);
                if let Some(earlier) = unreachable_after(&routes, &fallback) {
                    problems.push(format!(
                        "event_type {}: no record can reach it: route {} takes every record (it has no when)",
                        fallback.event_type,
                        earlier + 1
                    ));
                }
                routes.push(fallback);
            }
            None if routes.is_empty() => problems.push("needs event_type".into()),
            None => {}
        }
        let table = TableConfig { source, routes };
        // Two entries of one stream (by name and by ARN alike) would run two lease sets over the
        // same shards and take each other's leases.
        if tables.iter().any(|t| t.name() == table.name()) {
            problems.push(format!("{} is configured twice", table.name()));
        }
        for p in problems {
            r.fail(VAR, format!("[[table]] {} ({}): {p}", i + 1, table.name()));
        }
        tables.push(table);
    }
    tables
}

/// The Nakadi token: an explicit file, else Zalando's credentials directory when either of its
/// variables is set, else none (no Authorization header, for a Nakadi without authentication).
fn token_source(r: &mut Reader<'_>) -> TokenSource {
    if let Some(file) = r.get("RELAY_NAKADI_TOKEN_FILE") {
        let path = PathBuf::from(file);
        if !path.is_file() {
            r.fail(
                "RELAY_NAKADI_TOKEN_FILE",
                format!("{} is not a readable file", path.display()),
            );
        }
        return TokenSource::File(path);
    }
    let dir = r.get("CREDENTIALS_DIR").map(PathBuf::from);
    let name = r.get("RELAY_NAKADI_TOKEN_NAME").map(str::to_owned);
    if dir.is_none() && name.is_none() {
        return TokenSource::None;
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("/meta/credentials"));
    let name = name.unwrap_or_else(|| "nakadi".to_owned());
    let secret = dir.join(format!("{name}-token-secret"));
    if !secret.is_file() {
        r.fail(
            "RELAY_NAKADI_TOKEN_NAME",
            format!(
                "{} is not a readable file (CREDENTIALS_DIR convention)",
                secret.display()
            ),
        );
    }
    TokenSource::CredentialsDir { dir, name }
}

/// The hostname plus a random suffix: two processes on one host (or a restarted pod whose old
/// leases have not expired yet) must not share an identity, or one would renew the other's leases.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> HashMap<String, String> {
        vars(&[
            ("RELAY_TABLE_NAME", "orders"),
            ("RELAY_LEASE_TABLE", "orders-leases"),
            ("RELAY_NAKADI_URL", "https://nakadi.example.org"),
            ("RELAY_EVENT_TYPE", "payments.order-changed"),
            (
                "RELAY_DLQ_URL",
                "https://sqs.eu-central-1.amazonaws.com/123/dlq",
            ),
        ])
    }

    fn problems(v: &HashMap<String, String>) -> Vec<&'static str> {
        Config::from_vars(v)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.variable)
            .collect()
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = Config::from_vars(&minimal()).unwrap();
        assert!(!c.tables_from_file);
        assert_eq!(
            c.tables,
            vec![TableConfig {
                source: StreamSource::Table("orders".into()),
                routes: vec![Route {
                    event_type: "payments.order-changed".into(),
                    data_type: "payments.order-changed".into(),
                    compaction_key: false,
                    filter: Filter::default(),
                    when: None,
                }],
            }]
        );
        assert_eq!(
            c.publisher("payments.order-changed").event_type,
            "payments.order-changed"
        );
        assert_eq!(c.initial_position, InitialPosition::TrimHorizon);
        assert!(matches!(c.nakadi.on_failure, FailureMode::DeadLetter));
        assert!(matches!(c.nakadi.token, TokenSource::None));
        assert!(!c.create_lease_table);
        assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.dlq_redrain_interval, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.nakadi.batch_size, 500);
        assert_eq!(c.idle_poll_interval, Duration::from_millis(600));
        assert_eq!(c.checkpoint_interval, Duration::from_secs(1));
        assert_eq!(c.worker_threads, 1);
        assert!(!c.worker_id.is_empty());
    }

    #[test]
    fn a_checkpoint_interval_of_zero_writes_every_page() {
        let mut v = minimal();
        v.insert("RELAY_CHECKPOINT_INTERVAL".into(), "0s".into());
        assert_eq!(
            Config::from_vars(&v).unwrap().checkpoint_interval,
            Duration::ZERO
        );
        v.insert("RELAY_CHECKPOINT_INTERVAL".into(), "2m".into());
        assert_eq!(problems(&v), vec!["RELAY_CHECKPOINT_INTERVAL"]);
    }

    #[test]
    fn worker_threads_are_between_one_and_256() {
        let mut v = minimal();
        v.insert("RELAY_WORKER_THREADS".into(), "4".into());
        assert_eq!(Config::from_vars(&v).unwrap().worker_threads, 4);
        for bad in ["0", "257", "two"] {
            v.insert("RELAY_WORKER_THREADS".into(), bad.into());
            assert_eq!(problems(&v), vec!["RELAY_WORKER_THREADS"], "{bad}");
        }
    }

    #[test]
    fn every_required_variable_is_named_when_missing() {
        assert_eq!(
            problems(&HashMap::new()),
            vec![
                "RELAY_TABLE_NAME",
                "RELAY_EVENT_TYPE",
                "RELAY_LEASE_TABLE",
                "RELAY_NAKADI_URL",
                "RELAY_DLQ_URL"
            ]
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let mut v = minimal();
        v.insert("RELAY_LEASE_TABLE".into(), "  ".into());
        v.insert("RELAY_DATA_TYPE".into(), "".into());
        assert_eq!(problems(&v), vec!["RELAY_LEASE_TABLE"]);
    }

    #[test]
    fn malformed_values_are_all_reported_at_once() {
        let table: &[(&str, &str)] = &[
            ("RELAY_CREATE_LEASE_TABLE", "maybe"),
            ("RELAY_NAKADI_URL", "nakadi:8080"),
            ("RELAY_ON_PUBLISH_FAILURE", "drop"),
            ("RELAY_INITIAL_POSITION", "AT_TIMESTAMP"),
            ("RELAY_COMPACTION_KEY", "yes please"),
            ("RELAY_HTTP_ADDR", "8080"),
            ("RELAY_DLQ_REDRAIN_INTERVAL", "soon"),
            ("RELAY_LOG_FORMAT", "xml"),
            ("RELAY_NAKADI_BATCH_SIZE", "0"),
            ("RELAY_NAKADI_TIMEOUT", "-1s"),
            ("RELAY_STREAM_ARN", "orders"),
            ("RELAY_SHUTDOWN_TIMEOUT", "2h"),
            ("RELAY_TTL_DELETES", "drop"),
            ("RELAY_EVENT_NAMES", "INSERT,UPSERT"),
        ];
        let mut v = minimal();
        for (k, val) in table {
            v.insert(k.to_string(), val.to_string());
        }
        let errs = Config::from_vars(&v).unwrap_err();
        let named: Vec<_> = errs.0.iter().map(|e| e.variable).collect();
        for (k, _) in table {
            assert!(named.contains(k), "{k} not reported in {errs}");
        }
        assert_eq!(named.len(), table.len(), "{errs}");
        // The message quotes the bad value so the operator sees what the pod really got.
        assert!(errs.to_string().contains("\"xml\""));
    }

    #[test]
    fn filter_variables() {
        let mut v = minimal();
        v.insert("RELAY_TTL_DELETES".into(), "mark".into());
        v.insert("RELAY_EVENT_NAMES".into(), "INSERT, REMOVE".into());
        v.insert("RELAY_DROP_ATTRIBUTES".into(), " email, ,iban ".into());
        let f = Config::from_vars(&v).unwrap().tables[0].routes[0]
            .filter
            .clone();
        assert_eq!(f.ttl_deletes, TtlDeletes::Mark);
        assert_eq!(
            f.event_names,
            EventNames {
                insert: true,
                modify: false,
                remove: true
            }
        );
        assert_eq!(f.drop_attributes, vec!["email", "iban"]);
        v.insert("RELAY_EVENT_NAMES".into(), ",".into());
        assert_eq!(problems(&v), vec!["RELAY_EVENT_NAMES"]);
    }

    /// The minimal variables without the single-table ones, plus RELAY_TABLES_FILE with `toml`.
    fn with_tables_file(toml: &str) -> (tempfile::TempDir, HashMap<String, String>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tables.toml");
        std::fs::write(&file, toml).unwrap();
        let mut v = minimal();
        v.remove("RELAY_TABLE_NAME");
        v.remove("RELAY_EVENT_TYPE");
        v.insert("RELAY_TABLES_FILE".into(), file.display().to_string());
        (dir, v)
    }

    #[test]
    fn tables_file_configures_several_tables() {
        let (_dir, v) = with_tables_file(
            r#"
            [[table]]
            name = "orders"
            event_type = "payments.order-changed"
            data_type = "payments:order"
            compaction_key = true

            [[table]]
            stream_arn = "arn:aws:dynamodb:eu-central-1:123456789012:table/refunds/stream/2026-11-01T00:00:00.000"
            event_type = "payments.refund-changed"
            ttl_deletes = "skip"
            event_names = ["INSERT", "MODIFY"]
            drop_attributes = ["iban"]
            "#,
        );
        let c = Config::from_vars(&v).unwrap();
        assert!(c.tables_from_file);
        let names: Vec<&str> = c.tables.iter().map(TableConfig::name).collect();
        assert_eq!(names, ["orders", "refunds"]);
        assert_eq!(c.tables[0].routes[0].data_type, "payments:order");
        assert!(c.tables[0].routes[0].compaction_key);
        assert_eq!(c.tables[1].routes[0].data_type, "payments.refund-changed");
        assert_eq!(
            c.tables[1].routes[0].filter,
            Filter {
                ttl_deletes: TtlDeletes::Skip,
                event_names: EventNames {
                    insert: true,
                    modify: true,
                    remove: false
                },
                drop_attributes: vec!["iban".into()],
            }
        );
    }

    #[test]
    fn tables_file_problems_name_the_entry() {
        let (_dir, mut v) = with_tables_file(
            r#"
            [[table]]
            name = "orders"
            event_type = "a"
            ttl_deletes = "forget"

            [[table]]
            name = "orders"
            event_type = "b"

            [[table]]
            event_type = "c"
            "#,
        );
        v.insert("RELAY_EVENT_TYPE".into(), "x".into());
        let errs = Config::from_vars(&v).unwrap_err();
        let text = errs.to_string();
        assert_eq!(
            problems(&v),
            vec![
                "RELAY_EVENT_TYPE",
                "RELAY_TABLES_FILE",
                "RELAY_TABLES_FILE",
                "RELAY_TABLES_FILE"
            ],
            "{text}"
        );
        assert!(
            text.contains("[[table]] 1 (orders): ttl_deletes must be"),
            "{text}"
        );
        assert!(
            text.contains("[[table]] 2 (orders): orders is configured twice"),
            "{text}"
        );
        assert!(
            text.contains("[[table]] 3 (): needs name or stream_arn"),
            "{text}"
        );
    }

    const SHOP: &str = r#"
        [[table]]
        name = "shop"
        event_type = "shop.other-changed"
        drop_attributes = ["note"]

        [[table.route]]
        event_type = "shop.order-changed"
        data_type = "shop:order"
        compaction_key = true
        when = { attribute = "entity", equals = "order" }

        [[table.route]]
        event_type = "shop.customer-changed"
        drop_attributes = ["email"]
        when = { attribute = "pk", begins_with = "CUSTOMER#" }
        "#;

    #[test]
    fn routes_keep_their_order_and_the_table_s_own_event_type_comes_last() {
        let (_dir, v) = with_tables_file(SHOP);
        let c = Config::from_vars(&v).unwrap();
        let routes = &c.tables[0].routes;
        let types: Vec<&str> = routes.iter().map(|r| r.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "shop.order-changed",
                "shop.customer-changed",
                "shop.other-changed"
            ]
        );
        assert_eq!(routes[0].data_type, "shop:order");
        assert!(routes[0].compaction_key);
        assert!(routes[0].when.is_some());
        // A route's options are its own: the table's apply to the table's own event type.
        assert_eq!(routes[1].data_type, "shop.customer-changed");
        assert_eq!(routes[1].filter.drop_attributes, ["email"]);
        assert_eq!(routes[2].filter.drop_attributes, ["note"]);
        assert!(routes[2].when.is_none());

        // Without the table's own event type, what no route takes is filtered: no fallback.
        let (_dir, v) = with_tables_file(&SHOP.replace("event_type = \"shop.other-changed\"", ""));
        let c = Config::from_vars(&v).unwrap();
        assert_eq!(c.tables[0].routes.len(), 2);
        assert!(c.tables[0].routes.iter().all(|r| r.when.is_some()));
    }

    #[test]
    fn a_table_of_one_route_keeps_the_fingerprint_of_versions_before_routes() {
        use sha1::Digest;
        let c = Config::from_vars(&minimal()).unwrap();
        let route = &c.tables[0].routes[0];
        let before = format!(
            "{}|{}|{}|{:?}",
            route.event_type, route.data_type, route.compaction_key, route.filter
        );
        let digest = sha1::Sha1::digest(before.as_bytes());
        let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(c.tables[0].fingerprint(), expected);
        let (_dir, v) = with_tables_file(SHOP);
        let routed = Config::from_vars(&v).unwrap();
        assert_ne!(routed.tables[0].fingerprint(), expected);
    }

    #[test]
    fn route_problems_name_the_table_and_the_route() {
        let cases = [
            (
                "event_type = \"x\"\n[[table.route]]\ndata_type = \"y\"",
                "route 1: has no event_type",
            ),
            (
                "event_type = \"x\"\n[[table.route]]\nevent_type = \"y\"\ntopic = \"z\"",
                "route 1: unknown field `topic`",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\n[[table.route]]\nevent_type = \"b\"\nwhen = { attribute = \"e\", exists = true }",
                "route 2: no record can reach it: route 1 before it takes every record",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"e\", exists = true }\n[[table.route]]\nevent_type = \"b\"\nwhen = { attribute = \"e\", exists = true }",
                "route 2: no record can reach it: route 1 before it takes the same records",
            ),
            (
                "event_type = \"x\"\n[[table.route]]\nevent_type = \"a\"",
                "event_type x: no record can reach it: route 1 takes every record",
            ),
            ("data_type = \"x\"", "needs event_type"),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"e\", equals = \"x\", begins_with = \"y\" }",
                "route 1: when: condition has two operators (equals, begins_with): give one",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"e\" }",
                "route 1: when: condition has no operator",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"n\", equals_number = \"12,50\" }",
                "route 1: when: equals_number \"12,50\" is not a decimal",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"pk\", begins_with = \"\" }",
                "route 1: when: begins_with must not be empty",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"e\", any_of = [] }",
                "route 1: when: any_of must list at least one string",
            ),
            (
                "[[table.route]]\nevent_type = \"a\"\nwhen = { attribute = \"e\", equals = \"x\", regex = \"y\" }",
                "route 1: when: unknown key \"regex\" in a condition",
            ),
        ];
        for (entry, expected) in cases {
            let (_dir, v) = with_tables_file(&format!("[[table]]\nname = \"shop\"\n{entry}\n"));
            let text = Config::from_vars(&v).unwrap_err().to_string();
            assert!(
                text.contains(&format!("[[table]] 1 (shop): {expected}")),
                "{entry}:\n{text}"
            );
        }
    }

    #[test]
    fn tables_file_must_be_readable_toml_with_known_keys() {
        let (_dir, v) =
            with_tables_file("[[table]]\nname = \"orders\"\nevent_type = \"a\"\ntopic = \"b\"\n");
        let text = Config::from_vars(&v).unwrap_err().to_string();
        assert!(
            text.contains("RELAY_TABLES_FILE") && text.contains("topic"),
            "{text}"
        );

        let (_dir, v) = with_tables_file("table = 1");
        assert_eq!(problems(&v), vec!["RELAY_TABLES_FILE"]);

        let mut v = minimal();
        v.insert(
            "RELAY_TABLES_FILE".into(),
            "/nonexistent/tables.toml".into(),
        );
        v.remove("RELAY_TABLE_NAME");
        v.remove("RELAY_EVENT_TYPE");
        let text = Config::from_vars(&v).unwrap_err().to_string();
        assert!(
            text.contains("cannot read /nonexistent/tables.toml"),
            "{text}"
        );
    }

    #[test]
    fn snapshot_variables() {
        let c = Config::from_vars(&minimal()).unwrap().snapshot;
        assert_eq!(
            c,
            SnapshotConfig {
                segments: 4,
                page_size: 500,
                read_capacity: ReadCapacity::UnitsPerSecond(100.0),
            }
        );
        let mut v = minimal();
        v.insert("RELAY_SNAPSHOT_SEGMENTS".into(), "16".into());
        v.insert("RELAY_SNAPSHOT_PAGE_SIZE".into(), "50".into());
        v.insert("RELAY_SNAPSHOT_READ_CAPACITY".into(), "25%".into());
        let c = Config::from_vars(&v).unwrap().snapshot;
        assert_eq!((c.segments, c.page_size), (16, 50));
        assert_eq!(c.read_capacity, ReadCapacity::ShareOfProvisioned(0.25));
        v.insert("RELAY_SNAPSHOT_READ_CAPACITY".into(), "2.5".into());
        let c = Config::from_vars(&v).unwrap().snapshot;
        assert_eq!(c.read_capacity, ReadCapacity::UnitsPerSecond(2.5));
        for bad in ["0", "-5", "150%", "0%", "lots", "NaN"] {
            v.insert("RELAY_SNAPSHOT_READ_CAPACITY".into(), bad.into());
            assert_eq!(problems(&v), vec!["RELAY_SNAPSHOT_READ_CAPACITY"], "{bad}");
        }
        v.insert("RELAY_SNAPSHOT_READ_CAPACITY".into(), "10".into());
        v.insert("RELAY_SNAPSHOT_SEGMENTS".into(), "0".into());
        v.insert("RELAY_SNAPSHOT_PAGE_SIZE".into(), "many".into());
        assert_eq!(
            problems(&v),
            vec!["RELAY_SNAPSHOT_SEGMENTS", "RELAY_SNAPSHOT_PAGE_SIZE"]
        );
    }

    #[test]
    fn dlq_s3_bucket_must_be_a_bucket_name() {
        assert_eq!(Config::from_vars(&minimal()).unwrap().dlq_s3_bucket, None);
        let mut v = minimal();
        for good in [
            "orders-relay-dead-letters",
            "abc",
            "a.b-c.1",
            &"a".repeat(63),
        ] {
            v.insert("RELAY_DLQ_S3_BUCKET".into(), format!(" {good} "));
            assert_eq!(
                Config::from_vars(&v).unwrap().dlq_s3_bucket.as_deref(),
                Some(good)
            );
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Orders",
            "orders_dlq",
            "s3://orders",
            "arn:aws:s3:::orders",
            "orders/dead-letters",
            "-orders",
            "orders.",
            "a..b",
            "192.168.5.4",
            "xn--orders",
            "orders--x-s3",
            "orders-s3alias",
        ] {
            v.insert("RELAY_DLQ_S3_BUCKET".into(), bad.into());
            let errors = Config::from_vars(&v).unwrap_err();
            assert_eq!(
                errors.0.iter().map(|e| e.variable).collect::<Vec<_>>(),
                vec!["RELAY_DLQ_S3_BUCKET"],
                "{bad}"
            );
            assert!(errors.to_string().contains("S3 bucket name"), "{errors}");
        }
        // Reported together with the other problems.
        v.insert("RELAY_LOG_FORMAT".into(), "xml".into());
        assert_eq!(
            problems(&v),
            vec!["RELAY_DLQ_S3_BUCKET", "RELAY_LOG_FORMAT"]
        );
    }

    #[test]
    fn stream_arn_wins_over_table_name() {
        let mut v = minimal();
        let arn = "arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/2026-11-22T00:00:00.000";
        v.insert("RELAY_STREAM_ARN".into(), arn.into());
        let table = &Config::from_vars(&v).unwrap().tables[0];
        assert_eq!(table.source, StreamSource::Arn(arn.into()));
        assert_eq!(table.name(), "orders");
    }

    #[test]
    fn renew_interval_must_leave_room_before_expiry() {
        let mut v = minimal();
        v.insert("RELAY_LEASE_DURATION".into(), "4s".into());
        v.insert("RELAY_LEASE_RENEW_INTERVAL".into(), "2s".into());
        assert_eq!(problems(&v), vec!["RELAY_LEASE_RENEW_INTERVAL"]);
    }

    #[test]
    fn token_file_must_exist() {
        let mut v = minimal();
        v.insert(
            "RELAY_NAKADI_TOKEN_FILE".into(),
            "/nonexistent/token".into(),
        );
        assert_eq!(problems(&v), vec!["RELAY_NAKADI_TOKEN_FILE"]);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "secret\n").unwrap();
        v.insert("RELAY_NAKADI_TOKEN_FILE".into(), file.display().to_string());
        assert!(matches!(
            Config::from_vars(&v).unwrap().nakadi.token,
            TokenSource::File(p) if p == file
        ));
    }

    #[test]
    fn credentials_dir_convention() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = minimal();
        v.insert("CREDENTIALS_DIR".into(), dir.path().display().to_string());
        assert_eq!(problems(&v), vec!["RELAY_NAKADI_TOKEN_NAME"]);
        std::fs::write(dir.path().join("nakadi-token-secret"), "t").unwrap();
        assert!(matches!(
            Config::from_vars(&v).unwrap().nakadi.token,
            TokenSource::CredentialsDir { name, .. } if name == "nakadi"
        ));
    }

    /// Cause 11 of the stream-lifecycle issue: one stream named once by its table and once by
    /// its ARN ran two coordinators that took each other's leases.
    #[test]
    fn one_stream_configured_by_name_and_by_arn_is_refused() {
        let (_dir, v) = with_tables_file(
            r#"
            [[table]]
            name = "orders"
            event_type = "payments.order-changed"

            [[table]]
            stream_arn = "arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/2026-11-01T00:00:00.000"
            event_type = "payments.order-changed-again"
            "#,
        );
        let errors = Config::from_vars(&v).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.problem.contains("orders is configured twice")),
            "{errors:?}"
        );
    }

    /// Cause 5 and 10: timings that cannot work are refused, naming the variables.
    #[test]
    fn lease_and_shutdown_timings_that_cannot_work_are_refused() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[
                    ("RELAY_LEASE_DURATION", "6s"),
                    ("RELAY_LEASE_RENEW_INTERVAL", "2s"),
                ],
                "RELAY_LEASE_RENEW_INTERVAL",
            ),
            (
                &[
                    ("RELAY_LEASE_RENEW_INTERVAL", "1s"),
                    ("RELAY_LEASE_CALL_TIMEOUT", "1s"),
                ],
                "RELAY_LEASE_CALL_TIMEOUT",
            ),
            (
                &[
                    ("RELAY_SHUTDOWN_TIMEOUT", "5s"),
                    ("RELAY_NAKADI_TIMEOUT", "10s"),
                ],
                "RELAY_SHUTDOWN_TIMEOUT",
            ),
        ];
        for (set, variable) in cases {
            let mut v = minimal();
            for (k, val) in *set {
                v.insert((*k).into(), (*val).into());
            }
            assert_eq!(problems(&v), vec![*variable], "{set:?}");
        }
        let c = Config::from_vars(&minimal()).unwrap();
        assert!(
            c.lease.renew_interval * 3 < c.lease.duration,
            "defaults work"
        );
        assert!(c.lease.call_timeout < c.lease.renew_interval);
        assert!(c.shutdown_timeout >= c.nakadi.request_timeout);
    }

    #[test]
    fn the_initial_position_may_be_a_time_in_the_past() {
        let mut v = minimal();
        v.insert(
            "RELAY_INITIAL_POSITION".into(),
            "2026-12-01T08:00:00+01:00".into(),
        );
        let c = Config::from_vars(&v).unwrap();
        assert_eq!(
            c.initial_position,
            InitialPosition::At(time::macros::datetime!(2026-12-01 07:00:00 UTC))
        );
        for bad in ["3026-01-01T00:00:00Z", "yesterday", "2026-12-01"] {
            v.insert("RELAY_INITIAL_POSITION".into(), bad.into());
            assert_eq!(problems(&v), vec!["RELAY_INITIAL_POSITION"], "{bad}");
        }
    }

    #[test]
    fn the_fingerprint_tells_configurations_apart() {
        let a = Config::from_vars(&minimal()).unwrap().tables.remove(0);
        let mut v = minimal();
        v.insert("RELAY_EVENT_TYPE".into(), "payments.other".into());
        let b = Config::from_vars(&v).unwrap().tables.remove(0);
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}

//! The `check` subcommand: will this configuration work? Every outside system the relay needs is
//! asked, without starting the relay and without writing anything, and each answer is one line:
//! passed, failed with why, or not verifiable with why (what only a write would prove).
//!
//! Every call is bounded by [`CHECK_TIMEOUT`], so an endpoint that never answers fails its line
//! instead of hanging the command. The groups (each table's stream and event type, the lease
//! table, the DLQ) run side by side, so even then the whole check takes about one bound. A check
//! that needs what an earlier one found (the stream's key, the queue's attributes) is not
//! verifiable when that one failed.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, TableDescription};
use aws_sdk_sqs::types::QueueAttributeName;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Config, Route, StreamSource, TableConfig};
use crate::dlq::redrain::{dead_letter_target, queue_url};
use crate::dlq::writer::{SQS_MAX_MESSAGE_BYTES, body_limit, max_bytes_of, queue_attributes};
use crate::event_type::{self, Problem};
use crate::ids::StreamArn;
use crate::lease::LeaseError;
use crate::lease::table::{KEY, key_schema};
use crate::nakadi::{EventTypeDefinition, Registry, RegistryError, TokenSource};
use crate::startup::{AwsClients, StartupError, aws_error, latest_stream, nakadi_problem};
use crate::stream::StreamsClient;
use crate::transform::MAX_EVENT_BYTES;

/// The longest one check's call may take. Long enough for a slow region or a cold credentials
/// chain; short enough that an operator waiting at a terminal sees a verdict.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The write probe's key: none of the relay's items has it (their keys start with a stream ARN
/// or `snapshot|`), so even a table that ignored the probe's condition would touch no lease.
const PROBE_KEY: &str = "dynamodb-nakadi-relay check: never written";

/// SQS's default MessageRetentionPeriod, in seconds, where a queue does not say.
const DEFAULT_RETENTION_SECONDS: u64 = 345_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// Only a write (a message sent, an event published, a table created) would tell, and check
    /// writes nothing; or a check this one needs failed.
    NotVerifiable,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Which check, the same id in every run (`view_type`, `lease_write`).
    pub check: &'static str,
    /// What it checked: a table, the lease table, the queue's URL, an event type.
    pub subject: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// What a check found, and the words an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub status: Status,
    pub detail: String,
}

fn passed(detail: impl Into<String>) -> Finding {
    Finding {
        status: Status::Passed,
        detail: detail.into(),
    }
}

fn failed(detail: impl Into<String>) -> Finding {
    Finding {
        status: Status::Failed,
        detail: detail.into(),
    }
}

fn not_verifiable(detail: impl Into<String>) -> Finding {
    Finding {
        status: Status::NotVerifiable,
        detail: detail.into(),
    }
}

fn line(check: &'static str, subject: impl Into<String>, finding: Finding) -> Line {
    Line {
        check,
        subject: subject.into(),
        finding,
    }
}

/// Every check's line, in a fixed order: each table's stream, the lease table, the DLQ, the
/// token, each table's event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    /// No check failed; those not verifiable do not count against it.
    pub fn passed(&self) -> bool {
        self.lines
            .iter()
            .all(|l| l.finding.status != Status::Failed)
    }

    fn count(&self, status: Status) -> usize {
        self.lines
            .iter()
            .filter(|l| l.finding.status == status)
            .count()
    }

    /// The `--json` output.
    pub fn json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "counts": {
                "passed": self.count(Status::Passed),
                "failed": self.count(Status::Failed),
                "not_verifiable": self.count(Status::NotVerifiable),
            },
            "checks": self.lines,
        })
    }
}

/// The human table: a mark, the check, its subject and the detail, one line each, then the counts.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let check_width = self.lines.iter().map(|l| l.check.len()).max();
        let subject_width = self.lines.iter().map(|l| l.subject.chars().count()).max();
        for l in &self.lines {
            let (mark, prefix) = match l.finding.status {
                Status::Passed => ("✓", ""),
                Status::Failed => ("✗", ""),
                Status::NotVerifiable => ("?", "not verifiable: "),
            };
            writeln!(
                f,
                "{mark} {:<cw$}  {:<sw$}  {prefix}{}",
                l.check,
                l.subject,
                l.finding.detail,
                cw = check_width.unwrap_or(0),
                sw = subject_width.unwrap_or(0),
            )?;
        }
        writeln!(
            f,
            "{} passed, {} failed, {} not verifiable",
            self.count(Status::Passed),
            self.count(Status::Failed),
            self.count(Status::NotVerifiable)
        )
    }
}

/// The tables to check: the one `--table` names, or every configured table.
///
/// # Errors
/// `--table` names a table the configuration does not have.
pub fn tables<'a>(config: &'a Config, name: Option<&str>) -> Result<Vec<&'a TableConfig>, Problem> {
    match name {
        Some(_) => Ok(vec![event_type::pick(config, name)?]),
        None => Ok(config.tables.iter().collect()),
    }
}

/// Runs every check of `tables` and of what they share.
pub async fn run(config: &Config, tables: &[&TableConfig], aws: &AwsClients) -> Report {
    let (token, registry) = token(config);
    let per_table = futures::future::join_all(
        tables
            .iter()
            .map(|table| table_checks(config, table, aws, registry.as_ref())),
    );
    let (per_table, lease, dlq) =
        tokio::join!(per_table, lease_table(config, aws), dlq(config, aws));
    let mut lines = Vec::new();
    let mut event_types = Vec::new();
    for (source, nakadi) in per_table {
        lines.extend(source);
        event_types.extend(nakadi);
    }
    lines.extend(lease);
    lines.extend(dlq);
    lines.push(token);
    lines.extend(event_types);
    Report { lines }
}

#[derive(Debug, thiserror::Error)]
#[error("no answer within {}", humantime::format_duration(CHECK_TIMEOUT))]
struct TimedOut;

/// `call`, unless it has not answered within [`CHECK_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = T>) -> Result<T, TimedOut> {
    tokio::time::timeout(CHECK_TIMEOUT, call)
        .await
        .map_err(|_| TimedOut)
}

/// A bounded call's answer, or why there is none in words: its error, or that `operation` did
/// not answer in time.
fn answer<T, E: fmt::Display>(
    operation: &str,
    outcome: Result<Result<T, E>, TimedOut>,
) -> Result<T, String> {
    match outcome {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(e) => Err(format!("{operation}: {e}")),
    }
}

/// A table's stream lines and its event type lines. The event type is read while the stream is
/// described; the partitioning is judged once both are known.
async fn table_checks(
    config: &Config,
    table: &TableConfig,
    aws: &AwsClients,
    registry: Result<&Registry, &StartupError>,
) -> (Vec<Line>, Vec<Line>) {
    // Every route's event type, read at once.
    let definitions = futures::future::join_all(table.routes.iter().map(|route| async move {
        let registry = registry.map_err(|e| Fetch::NoClient(e.to_string()))?;
        match bounded(registry.event_type(&route.event_type)).await {
            Ok(Ok(definition)) => Ok(definition),
            Ok(Err(e)) => Err(Fetch::Failed(e)),
            Err(e) => Err(Fetch::TimedOut(e)),
        }
    }));
    let ((source, key), definitions) = tokio::join!(source(config, table, aws), definitions);
    let lines = definitions
        .into_iter()
        .enumerate()
        .flat_map(|(route, definition)| event_type_lines(table, route, definition, key.as_deref()))
        .collect();
    (source, lines)
}

/// The table's source: its latest stream (DescribeTable, when configured by name), the stream
/// (DescribeStream) and its view type. Returns the stream's key when it was described.
async fn source(
    config: &Config,
    table: &TableConfig,
    aws: &AwsClients,
) -> (Vec<Line>, Option<Vec<String>>) {
    let variable = table.source_variable(config.tables_from_file);
    let name = table.name();
    let mut lines = Vec::new();
    let arn = match &table.source {
        // The relay calls no DescribeTable then, and its role may not allow it.
        StreamSource::Arn(arn) => Some(arn.clone()),
        StreamSource::Table(_) => {
            let (found, arn) = match bounded(latest_stream(&aws.dynamodb, name, variable)).await {
                Ok(Ok(arn)) => (passed(format!("latest stream {arn}")), Some(arn)),
                Ok(Err(e)) => (failed(e.to_string()), None),
                Err(e) => (
                    failed(format!("{variable}: DescribeTable {name}: {e}")),
                    None,
                ),
            };
            lines.push(line("source_table", name, found));
            arn
        }
    };
    let Some(arn) = arn.map(StreamArn::new) else {
        let why = "the table's stream is not known: its DescribeTable failed";
        lines.push(line("stream", name, not_verifiable(why)));
        lines.push(line("view_type", name, not_verifiable(why)));
        return (lines, None);
    };
    let streams = StreamsClient::new(aws.streams.clone(), aws.records.clone());
    match answer("DescribeStream", bounded(streams.describe(&arn)).await) {
        Ok(info) => {
            let shards = info.shards.len();
            lines.push(line(
                "stream",
                name,
                passed(format!(
                    "{arn}: {shards} shard{}, key {}",
                    if shards == 1 { "" } else { "s" },
                    info.key_attributes.join(", ")
                )),
            ));
            let view = match info.check_view_type() {
                Ok(()) => passed("NEW_AND_OLD_IMAGES"),
                Err(e) => failed(format!("{variable}: stream {arn} {e}")),
            };
            lines.push(line("view_type", name, view));
            (lines, Some(info.key_attributes))
        }
        Err(why) => {
            lines.push(line(
                "stream",
                name,
                failed(format!("{variable}: stream {arn}: {why}")),
            ));
            lines.push(line(
                "view_type",
                name,
                not_verifiable("the stream could not be described"),
            ));
            (lines, None)
        }
    }
}

/// The lease table: it exists (or the relay may create it), its key is `lease_key`, and this
/// role may write it.
async fn lease_table(config: &Config, aws: &AwsClients) -> Vec<Line> {
    let table = config.lease_table.as_str();
    let lines = |exists: Finding, key: Finding, write: Finding| {
        vec![
            line("lease_table", table, exists),
            line("lease_key_schema", table, key),
            line("lease_write", table, write),
        ]
    };
    let undescribed = |why: String| {
        let unknown = "the table could not be described";
        lines(
            failed(format!("RELAY_LEASE_TABLE: DescribeTable: {why}")),
            not_verifiable(unknown),
            not_verifiable(unknown),
        )
    };
    let described = bounded(aws.dynamodb.describe_table().table_name(table).send()).await;
    let description = match described {
        Ok(Ok(out)) => out
            .table
            .unwrap_or_else(|| TableDescription::builder().build()),
        Ok(Err(e)) if e.code() == Some("ResourceNotFoundException") => {
            return if config.create_lease_table {
                lines(
                    passed(
                        "does not exist yet: the relay creates it at start (RELAY_CREATE_LEASE_TABLE=true)",
                    ),
                    passed(format!("the relay creates it with {}", lease_key())),
                    not_verifiable(
                        "the table does not exist yet, and check creates nothing: CreateTable and the writes are proved when the relay starts",
                    ),
                )
            } else {
                let missing = LeaseError::TableMissing(table.to_owned());
                lines(
                    failed(format!("RELAY_LEASE_TABLE: {missing}")),
                    not_verifiable("the table does not exist"),
                    not_verifiable("the table does not exist"),
                )
            };
        }
        Ok(Err(e)) => return undescribed(aws_error(&e)),
        Err(e) => return undescribed(e.to_string()),
    };
    let status = description
        .table_status()
        .map_or("without a status", |s| s.as_str());
    let key = lease_key_schema(&description);
    let write = if key.status == Status::Passed {
        lease_write(&aws.dynamodb, table).await
    } else {
        not_verifiable("the relay's keys do not fit the table")
    };
    lines(passed(format!("exists, {status}")), key, write)
}

/// The key the relay's leases are written under, in words.
fn lease_key() -> String {
    let (definition, _) = key_schema();
    format!(
        "the hash key {KEY} ({})",
        definition.attribute_type().as_str()
    )
}

/// Whether the table is keyed as the relay writes its leases.
fn lease_key_schema(table: &TableDescription) -> Finding {
    let (definition, key) = key_schema();
    let type_of = |name: &str| {
        table
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .map(|d| d.attribute_type().clone())
    };
    let wanted = lease_key();
    if table.key_schema() == [key] && type_of(KEY).as_ref() == Some(definition.attribute_type()) {
        return passed(wanted);
    }
    let found: Vec<String> = table
        .key_schema()
        .iter()
        .map(|k| {
            format!(
                "{} key {} ({})",
                k.key_type().as_str().to_lowercase(),
                k.attribute_name(),
                type_of(k.attribute_name()).map_or("?".into(), |t| t.as_str().to_owned())
            )
        })
        .collect();
    failed(format!(
        "RELAY_LEASE_TABLE: the table has the {}, but the relay writes its leases under {wanted} alone: name another table, or let the relay create one (RELAY_CREATE_LEASE_TABLE=true)",
        found.join(" and ")
    ))
}

/// Proves UpdateItem is allowed without writing: DynamoDB authorizes the call before it
/// evaluates the condition, and this condition never holds, so ConditionalCheckFailed can only
/// come from an allowed call that wrote nothing.
async fn lease_write(client: &aws_sdk_dynamodb::Client, table: &str) -> Finding {
    let call = client
        .update_item()
        .table_name(table)
        .key(KEY, AttributeValue::S(PROBE_KEY.to_owned()))
        .condition_expression(format!(
            "attribute_exists({KEY}) AND attribute_not_exists({KEY})"
        ))
        .update_expression("REMOVE check_probe")
        .send();
    match bounded(call).await {
        Ok(Ok(_)) => write_probe(None, "the call succeeded"),
        Ok(Err(e)) => write_probe(e.code(), &aws_error(&e)),
        Err(e) => failed(format!("UpdateItem: {e}")),
    }
}

/// What the answer to the write probe, by its error code, says.
fn write_probe(code: Option<&str>, message: &str) -> Finding {
    match code {
        Some("ConditionalCheckFailedException") => passed(
            "UpdateItem is allowed (proved by a condition that never holds: nothing was written)",
        ),
        Some("AccessDeniedException") => failed(format!(
            "UpdateItem is denied, and the relay writes every lease with it: {message}"
        )),
        // A condition that cannot hold held: whatever answered is not DynamoDB as the lease
        // protocol knows it.
        None => failed(format!(
            "UpdateItem with a condition that never holds was not refused ({message}): the table does not evaluate conditions, which the leases' fencing relies on"
        )),
        Some(_) => failed(format!("UpdateItem: {message}")),
    }
}

/// The DLQ: it exists, its size limit, its redrive policy to a parking queue, and what cannot
/// be known without sending.
async fn dlq(config: &Config, aws: &AwsClients) -> Vec<Line> {
    let url = config.dlq_url.as_str();
    let names = [
        QueueAttributeName::MaximumMessageSize,
        QueueAttributeName::MessageRetentionPeriod,
        QueueAttributeName::RedrivePolicy,
    ];
    let attributes = bounded(queue_attributes(&aws.sqs, url, &names)).await;
    let (exists, size, redrive) = match answer("GetQueueAttributes", attributes) {
        Ok(attributes) => (
            passed("GetQueueAttributes: the queue exists"),
            dlq_size(max_bytes_of(&attributes), config.dlq_s3_bucket.as_deref()),
            parking(&aws.sqs, &attributes).await,
        ),
        Err(why) => {
            let unknown = "the queue's attributes could not be read";
            (
                failed(format!("RELAY_DLQ_URL: {why}")),
                not_verifiable(unknown),
                not_verifiable(unknown),
            )
        }
    };
    vec![
        line("dlq", url, exists),
        line("dlq_size", url, size),
        line("dlq_redrive", url, redrive),
        line(
            "dlq_send",
            url,
            not_verifiable("only sending a message proves sqs:SendMessage, and check sends none"),
        ),
    ]
}

/// Whether the letters the relay writes fit the queue's MaximumMessageSize.
fn dlq_size(max_bytes: usize, bucket: Option<&str>) -> Finding {
    let limit = body_limit(max_bytes);
    match bucket {
        Some(bucket) => passed(format!(
            "MaximumMessageSize {max_bytes}: letters over {limit} bytes are gzip-compressed, and those that still do not fit go to s3://{bucket} (RELAY_DLQ_S3_BUCKET)"
        )),
        None if max_bytes >= SQS_MAX_MESSAGE_BYTES => passed(format!(
            "MaximumMessageSize {max_bytes}, the largest SQS allows: the letter of any event Nakadi takes (up to {MAX_EVENT_BYTES} bytes) fits"
        )),
        None => not_verifiable(format!(
            "MaximumMessageSize {max_bytes}: letters over {limit} bytes are gzip-compressed, and one that still does not fit makes its shard wait; whether every letter compresses enough depends on the data. Raise MaximumMessageSize to {SQS_MAX_MESSAGE_BYTES} or set RELAY_DLQ_S3_BUCKET"
        )),
    }
}

/// The DLQ's redrive policy: a parking queue that exists and keeps messages at least as long
/// as the DLQ.
async fn parking(
    sqs: &aws_sdk_sqs::Client,
    dlq_attributes: &HashMap<QueueAttributeName, String>,
) -> Finding {
    let Some(policy) = dlq_attributes.get(&QueueAttributeName::RedrivePolicy) else {
        return failed(
            "no RedrivePolicy: a letter Nakadi keeps refusing is received again and again until the queue's retention deletes it; set one to a parking queue (docs/operating.md)",
        );
    };
    let Some(arn) = dead_letter_target(policy) else {
        return failed(format!(
            "the RedrivePolicy names no deadLetterTargetArn: {policy}"
        ));
    };
    let url = match answer("GetQueueUrl", bounded(queue_url(sqs, &arn)).await) {
        Ok(url) => url,
        Err(why) => return failed(format!("parking queue {arn}: {why}")),
    };
    let names = [QueueAttributeName::MessageRetentionPeriod];
    let attributes = bounded(queue_attributes(sqs, &url, &names)).await;
    let attributes = match answer("GetQueueAttributes", attributes) {
        Ok(attributes) => attributes,
        Err(why) => return failed(format!("parking queue {arn}: {why}")),
    };
    redrive(
        &arn,
        max_receive_count(policy),
        retention(dlq_attributes),
        retention(&attributes),
    )
}

fn retention(attributes: &HashMap<QueueAttributeName, String>) -> u64 {
    attributes
        .get(&QueueAttributeName::MessageRetentionPeriod)
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RETENTION_SECONDS)
}

/// The policy's `maxReceiveCount`, which SQS writes as a string or a number.
fn max_receive_count(policy: &str) -> Option<String> {
    let policy: Value = serde_json::from_str(policy).ok()?;
    match policy.get("maxReceiveCount")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A parking queue that forgets a letter before the DLQ would have loses it: SQS keeps a moved
/// message's first enqueue time, so the parking queue's retention counts from the DLQ's.
fn redrive(
    arn: &str,
    max_receive_count: Option<String>,
    dlq_retention: u64,
    parking_retention: u64,
) -> Finding {
    let after = max_receive_count.map_or(String::new(), |n| format!(" after {n} receives"));
    if parking_retention < dlq_retention {
        return failed(format!(
            "letters move to parking queue {arn}{after}, which keeps messages {parking_retention} s, less than the DLQ's {dlq_retention} s: SQS counts a moved message's age from its first enqueue, so a parked letter can expire before anyone reads it"
        ));
    }
    passed(format!(
        "letters move to parking queue {arn}{after}; it keeps messages {parking_retention} s, the DLQ {dlq_retention} s"
    ))
}

/// The token line, and the registry that reads event types with that token.
fn token(config: &Config) -> (Line, Result<Registry, StartupError>) {
    let (subject, readable) = match &config.nakadi.token {
        TokenSource::None => (
            "RELAY_NAKADI_TOKEN_FILE".to_owned(),
            "none configured: requests carry no Authorization header",
        ),
        TokenSource::File(path) => (path.display().to_string(), "readable"),
        TokenSource::CredentialsDir { dir, name } => (
            dir.join(format!("{name}-token-secret"))
                .display()
                .to_string(),
            "readable",
        ),
    };
    let registry =
        Registry::new(&config.nakadi).map_err(|e| nakadi_problem(&config.nakadi.token, e));
    let finding = match &registry {
        Err(e) if e.variable != "RELAY_NAKADI_URL" => failed(e.to_string()),
        _ => passed(readable),
    };
    (line("nakadi_token", subject, finding), registry)
}

/// Why an event type's definition was not read.
#[derive(Debug, thiserror::Error)]
enum Fetch {
    /// The token or the URL kept the client from being built (the token line says which).
    #[error("{0}")]
    NoClient(String),
    #[error(transparent)]
    Failed(RegistryError),
    #[error("GET /event-types: {0}")]
    TimedOut(TimedOut),
}

/// The event type's lines: it exists, and what in its definition the relay's events depend on.
/// `key` is the table's key, hash key first, when its stream was described.
fn event_type_lines(
    table: &TableConfig,
    route: usize,
    definition: Result<EventTypeDefinition, Fetch>,
    key: Option<&[String]>,
) -> Vec<Line> {
    let name = table.routes[route].event_type.as_str();
    let publish = line(
        "nakadi_publish",
        name,
        not_verifiable(
            "only publishing proves this token may write to the event type (its authorization's writers), and check publishes nothing",
        ),
    );
    let definition = match definition {
        Ok(definition) => definition,
        Err(e) => {
            let (exists, why) = match &e {
                Fetch::NoClient(why) => (not_verifiable(why.clone()), "Nakadi could not be asked"),
                Fetch::Failed(RegistryError::NotFound { .. }) => (
                    failed(format!(
                        "{e}: create it with the definition `dynamodb-nakadi-relay event-type` prints (docs/operating.md)"
                    )),
                    "the event type was not found",
                ),
                Fetch::Failed(RegistryError::Status { status: 401, .. }) => (
                    failed(format!(
                        "{e}: Nakadi does not accept the token (RELAY_NAKADI_TOKEN_FILE)"
                    )),
                    "Nakadi did not accept the token",
                ),
                _ => (failed(e.to_string()), "the event type could not be read"),
            };
            return vec![
                line("event_type", name, exists),
                line("event_type_category", name, not_verifiable(why)),
                line("event_type_partitioning", name, not_verifiable(why)),
                line("event_type_cleanup_policy", name, not_verifiable(why)),
                publish,
            ];
        }
    };
    let category = if definition.category == "data" {
        passed("data")
    } else {
        failed(format!(
            "category {}, but the relay publishes data change events (data_op, data_type, data), which need category data",
            definition.category
        ))
    };
    let partitioning = match key {
        None => not_verifiable("the table's key is not known: its stream could not be described"),
        Some(key) => partitioning(table, route, &definition, key),
    };
    vec![
        line("event_type", name, passed("exists")),
        line("event_type_category", name, category),
        line("event_type_partitioning", name, partitioning),
        line(
            "event_type_cleanup_policy",
            name,
            cleanup_policy(&table.routes[route], &definition),
        ),
        publish,
    ]
}

/// The partitioning the relay's events need: hash on the table's key (what `event-type` builds),
/// or part of it, so that all events of one item land in one partition, in order.
fn partitioning(
    table: &TableConfig,
    route: usize,
    definition: &EventTypeDefinition,
    key: &[String],
) -> Finding {
    let options = event_type::Options {
        owning_application: "check".to_owned(),
        key: key.to_vec(),
        ..event_type::Options::default()
    };
    let wanted = match event_type::build(table, &options) {
        Ok(mut wanted) => wanted.swap_remove(route).partition_key_fields,
        Err(problem) => return failed(problem.to_string()),
    };
    let fields = &definition.partition_key_fields;
    let hash = format!("hash on {}", wanted.join(", "));
    match definition.partition_strategy.as_str() {
        "hash" if !fields.is_empty() && fields.iter().all(|f| wanted.contains(f)) => {
            if fields.len() == wanted.len() {
                passed(format!("{hash}, the table's key"))
            } else {
                passed(format!(
                    "hash on {}, part of the table's key: an item's events stay in one partition",
                    fields.join(", ")
                ))
            }
        }
        "hash" => failed(format!(
            "hash on {}, but an item's events stay in one partition, in order, only with {hash} (the table's key) or a part of it; an attribute outside the key can change or be missing",
            fields.join(", ")
        )),
        "random" => failed(format!(
            "random: one item's events are spread over the partitions, so consumers see them out of order; the relay's event type uses {hash}"
        )),
        "user_defined" => failed(format!(
            "user_defined needs metadata.partition in every event, which the relay does not set; use {hash}"
        )),
        other => failed(format!(
            "partition strategy {other} is not one the relay's events fit; use {hash}"
        )),
    }
}

/// Nakadi wants `metadata.partition_compaction_key` in every event of a compacted event type and
/// in none of the others; the relay sets it only with RELAY_COMPACTION_KEY.
fn cleanup_policy(route: &Route, definition: &EventTypeDefinition) -> Finding {
    let policy = definition.cleanup_policy.as_str();
    let compacted = matches!(policy, "compact" | "compact_and_delete");
    match (compacted, route.compaction_key) {
        (false, false) => passed(format!("{policy}, and the relay sets no compaction key")),
        (true, true) => passed(format!(
            "{policy}, and the relay sets metadata.partition_compaction_key (RELAY_COMPACTION_KEY)"
        )),
        (true, false) => failed(format!(
            "{policy} needs metadata.partition_compaction_key in every event, which the relay sets only with RELAY_COMPACTION_KEY=true: Nakadi refuses the events"
        )),
        (false, true) => failed(format!(
            "{policy} forbids metadata.partition_compaction_key, which the relay sets with RELAY_COMPACTION_KEY=true: Nakadi refuses the events"
        )),
    }
}

#[cfg(test)]
mod tests {

    use aws_sdk_dynamodb::types::{
        AttributeDefinition, KeySchemaElement, KeyType, ScalarAttributeType,
    };

    use super::*;

    fn config(extra: &[(&str, &str)]) -> Config {
        Config::example(extra)
    }

    fn definition(strategy: &str, fields: &[&str], cleanup: &str) -> EventTypeDefinition {
        EventTypeDefinition {
            name: "payments.order-changed".into(),
            category: "data".into(),
            partition_strategy: strategy.into(),
            partition_key_fields: fields.iter().map(|f| f.to_string()).collect(),
            cleanup_policy: cleanup.into(),
        }
    }

    fn key(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// One row of the partitioning table: Nakadi's strategy and fields, the table's key, and
    /// what check says.
    struct Case {
        strategy: &'static str,
        fields: &'static [&'static str],
        key: &'static [&'static str],
        status: Status,
        words: &'static str,
    }

    #[test]
    fn partitioning_fits_on_the_key_or_part_of_it() {
        let config = config(&[]);
        let table = &config.tables[0];
        let case = |strategy, fields, key, status, words| Case {
            strategy,
            fields,
            key,
            status,
            words,
        };
        let (passes, fails) = (Status::Passed, Status::Failed);
        let cases = [
            case("hash", &["item.pk"], &["pk"], passes, "the table's key"),
            case(
                "hash",
                &["item.sk", "item.pk"],
                &["pk", "sk"],
                passes,
                "the table's key",
            ),
            case(
                "hash",
                &["item.pk"],
                &["pk", "sk"],
                passes,
                "part of the table's key",
            ),
            case(
                "hash",
                &["item.customer"],
                &["pk"],
                fails,
                "outside the key",
            ),
            case("hash", &["pk"], &["pk"], fails, "outside the key"),
            case("hash", &[], &["pk"], fails, "hash on item.pk"),
            case("random", &[], &["pk"], fails, "out of order"),
            case("user_defined", &[], &["pk"], fails, "metadata.partition"),
            case("sticky", &[], &["pk"], fails, "partition strategy sticky"),
        ];
        for c in cases {
            let found = partitioning(
                table,
                0,
                &definition(c.strategy, c.fields, "delete"),
                &key(c.key),
            );
            let what = format!("{} {:?}: {found:?}", c.strategy, c.fields);
            assert_eq!(found.status, c.status, "{what}");
            assert!(found.detail.contains(c.words), "{what}");
        }
    }

    #[test]
    fn partitioning_cannot_fit_a_dropped_key() {
        let config = config(&[("RELAY_DROP_ATTRIBUTES", "pk")]);
        let found = partitioning(
            &config.tables[0],
            0,
            &definition("hash", &["item.pk"], "delete"),
            &key(&["pk"]),
        );
        assert_eq!(found.status, Status::Failed);
        assert!(
            found.detail.starts_with("RELAY_DROP_ATTRIBUTES"),
            "{found:?}"
        );
    }

    #[test]
    fn the_cleanup_policy_and_the_compaction_key_go_together() {
        for (policy, compaction, status) in [
            ("delete", "false", Status::Passed),
            ("compact", "true", Status::Passed),
            ("compact_and_delete", "true", Status::Passed),
            ("compact", "false", Status::Failed),
            ("compact_and_delete", "false", Status::Failed),
            ("delete", "true", Status::Failed),
        ] {
            let config = config(&[("RELAY_COMPACTION_KEY", compaction)]);
            let found = cleanup_policy(
                &config.tables[0].routes[0],
                &definition("hash", &[], policy),
            );
            assert_eq!(found.status, status, "{policy} {compaction}: {found:?}");
        }
    }

    #[test]
    fn event_type_lines_name_the_missing_piece() {
        let config = config(&[]);
        let table = &config.tables[0];
        let statuses = |lines: &[Line]| -> Vec<(&str, Status)> {
            lines.iter().map(|l| (l.check, l.finding.status)).collect()
        };

        let fits = definition("hash", &["item.pk"], "delete");
        let lines = event_type_lines(table, 0, Ok(fits.clone()), Some(&key(&["pk"])));
        assert_eq!(
            statuses(&lines),
            [
                ("event_type", Status::Passed),
                ("event_type_category", Status::Passed),
                ("event_type_partitioning", Status::Passed),
                ("event_type_cleanup_policy", Status::Passed),
                ("nakadi_publish", Status::NotVerifiable),
            ]
        );
        assert!(lines.iter().all(|l| l.subject == "payments.order-changed"));

        let business = EventTypeDefinition {
            category: "business".into(),
            ..fits.clone()
        };
        let lines = event_type_lines(table, 0, Ok(business), None);
        assert_eq!(lines[1].finding.status, Status::Failed);
        assert_eq!(lines[2].finding.status, Status::NotVerifiable, "no key");

        let missing = Fetch::Failed(RegistryError::NotFound {
            name: "payments.order-changed".into(),
        });
        let lines = event_type_lines(table, 0, Err(missing), Some(&key(&["pk"])));
        assert_eq!(lines[0].finding.status, Status::Failed);
        assert!(lines[0].finding.detail.contains("event-type"), "{lines:?}");
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.finding.status == Status::NotVerifiable)
        );

        let refused = Fetch::Failed(RegistryError::Status {
            status: 401,
            reason: "Unauthorized: Bearer token wrong".into(),
        });
        let lines = event_type_lines(table, 0, Err(refused), Some(&key(&["pk"])));
        assert!(lines[0].finding.detail.contains("401"), "{lines:?}");
        assert!(
            lines[0].finding.detail.contains("RELAY_NAKADI_TOKEN_FILE"),
            "{lines:?}"
        );

        let no_token = Fetch::NoClient("RELAY_NAKADI_TOKEN_FILE: cannot read".into());
        let lines = event_type_lines(table, 0, Err(no_token), None);
        assert_eq!(lines[0].finding.status, Status::NotVerifiable);
    }

    fn lease_description(keys: &[(&str, KeyType, ScalarAttributeType)]) -> TableDescription {
        let mut table = TableDescription::builder();
        for (name, kind, scalar) in keys {
            table = table
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*name)
                        .key_type(kind.clone())
                        .build()
                        .unwrap(),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*name)
                        .attribute_type(scalar.clone())
                        .build()
                        .unwrap(),
                );
        }
        table.build()
    }

    #[test]
    fn the_lease_table_must_be_keyed_by_lease_key_alone() {
        use KeyType::{Hash, Range};
        use ScalarAttributeType::{N, S};
        let ok = lease_description(&[("lease_key", Hash, S)]);
        assert_eq!(lease_key_schema(&ok).status, Status::Passed);
        for keys in [
            vec![("lease_key", Hash, N)],
            vec![("pk", Hash, S)],
            vec![("lease_key", Hash, S), ("sk", Range, S)],
        ] {
            let found = lease_key_schema(&lease_description(&keys));
            assert_eq!(found.status, Status::Failed, "{keys:?}");
            assert!(
                found.detail.contains("the hash key lease_key (S)"),
                "{found:?}"
            );
        }
        let found = lease_key_schema(&lease_description(&[("pk", Hash, S), ("sk", Range, N)]));
        assert!(
            found
                .detail
                .contains("the hash key pk (S) and range key sk (N)"),
            "{found:?}"
        );
    }

    #[test]
    fn the_write_probe_reads_the_answer_by_its_code() {
        let probe = |code| write_probe(code, "message").status;
        assert_eq!(
            probe(Some("ConditionalCheckFailedException")),
            Status::Passed
        );
        assert_eq!(probe(Some("AccessDeniedException")), Status::Failed);
        assert_eq!(probe(Some("ResourceNotFoundException")), Status::Failed);
        assert_eq!(probe(None), Status::Failed);
    }

    #[test]
    fn the_queue_size_fits_at_the_largest_or_with_a_bucket() {
        assert_eq!(dlq_size(1_048_576, None).status, Status::Passed);
        assert_eq!(
            dlq_size(262_144, Some("orders-relay-dead-letters")).status,
            Status::Passed
        );
        let small = dlq_size(262_144, None);
        assert_eq!(small.status, Status::NotVerifiable);
        assert!(small.detail.contains("over 261120 bytes"), "{small:?}");
    }

    #[test]
    fn the_parking_queue_keeps_letters_at_least_as_long_as_the_dlq() {
        let arn = "arn:aws:sqs:eu-central-1:123456789012:orders-relay-parking";
        let ok = redrive(arn, Some("10".into()), 1_209_600, 1_209_600);
        assert_eq!(ok.status, Status::Passed);
        assert!(ok.detail.contains("after 10 receives"), "{ok:?}");
        assert_eq!(
            redrive(arn, None, 1_209_600, 345_600).status,
            Status::Failed
        );
        assert_eq!(
            max_receive_count(r#"{"deadLetterTargetArn":"x","maxReceiveCount":"10"}"#),
            Some("10".into())
        );
        assert_eq!(
            max_receive_count(r#"{"deadLetterTargetArn":"x","maxReceiveCount":5}"#),
            Some("5".into())
        );
    }

    #[test]
    fn check_selects_the_named_table_or_all() {
        let config = config(&[]);
        assert_eq!(tables(&config, None).unwrap().len(), 1);
        assert_eq!(tables(&config, Some("orders")).unwrap()[0].name(), "orders");
        assert_eq!(
            tables(&config, Some("refunds")).unwrap_err().setting,
            "--table"
        );
    }

    fn report() -> Report {
        Report {
            lines: vec![
                line("view_type", "orders", passed("NEW_AND_OLD_IMAGES")),
                line(
                    "dlq",
                    "http://sqs/1/dlq",
                    failed("RELAY_DLQ_URL: dead-letter queue http://sqs/1/dlq does not exist"),
                ),
                line(
                    "dlq_send",
                    "http://sqs/1/dlq",
                    not_verifiable("check sends none"),
                ),
            ],
        }
    }

    #[test]
    fn the_table_has_a_line_per_check_and_the_counts() {
        let text = report().to_string();
        assert_eq!(
            text,
            "\
✓ view_type  orders            NEW_AND_OLD_IMAGES
✗ dlq        http://sqs/1/dlq  RELAY_DLQ_URL: dead-letter queue http://sqs/1/dlq does not exist
? dlq_send   http://sqs/1/dlq  not verifiable: check sends none
1 passed, 1 failed, 1 not verifiable
"
        );
    }

    #[test]
    fn the_json_lists_every_check_with_its_status() {
        let report = report();
        assert!(!report.passed());
        assert_eq!(
            report.json(),
            json!({
                "passed": false,
                "counts": {"passed": 1, "failed": 1, "not_verifiable": 1},
                "checks": [
                    {"check": "view_type", "subject": "orders", "status": "passed",
                     "detail": "NEW_AND_OLD_IMAGES"},
                    {"check": "dlq", "subject": "http://sqs/1/dlq", "status": "failed",
                     "detail": "RELAY_DLQ_URL: dead-letter queue http://sqs/1/dlq does not exist"},
                    {"check": "dlq_send", "subject": "http://sqs/1/dlq", "status": "not_verifiable",
                     "detail": "check sends none"},
                ],
            })
        );
        let not_verifiable_only = Report {
            lines: vec![report.lines[2].clone()],
        };
        assert!(not_verifiable_only.passed());
    }
}

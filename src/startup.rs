//! What the relay and the `snapshot` and `check` commands build or look up at start, and how a
//! start fails: the AWS clients, the re-drain loop's publishers and queue, a table's latest
//! stream, and [`StartupError`], which names the setting behind a problem so that `main` exits
//! with code 2 and a message an operator can act on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::aws_requests::CountRequests;
use crate::config::{Config, StreamSource, TableConfig};
use crate::dlq::{DeadLetterQueue, DlqError, Redrainer};
use crate::ids::StreamArn;
use crate::lease::LeaseTable;
use crate::nakadi::{
    FailureMode, NakadiError, Publisher, PublisherConfig, TokenSource, error_chain,
};
use crate::stream::signed::RecordsReader;

/// A start-up failure, naming the setting that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct StartupError {
    pub variable: &'static str,
    pub message: String,
    /// An AWS fault that may pass (throttling, 5xx, timeouts, connection errors): `App::start`
    /// tries again for a while before giving up.
    pub transient: bool,
}

pub(crate) fn startup(variable: &'static str, message: impl std::fmt::Display) -> StartupError {
    StartupError {
        variable,
        message: message.to_string(),
        transient: false,
    }
}

pub(crate) fn transient(variable: &'static str, message: impl std::fmt::Display) -> StartupError {
    StartupError {
        transient: true,
        ..startup(variable, message)
    }
}

/// The AWS clients of one process, sharing one configuration (credentials chain, region,
/// `AWS_ENDPOINT_URL*`). Every client counts its requests (`relay_aws_requests_total`).
pub struct AwsClients {
    pub streams: aws_sdk_dynamodbstreams::Client,
    /// GetRecords, signed and sent without the SDK's orchestration (`stream::signed`).
    pub records: Arc<RecordsReader>,
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The lease table's client: each attempt bounded by RELAY_LEASE_CALL_TIMEOUT, so a retry
    /// still fits in the call's own deadline, well inside the lease duration.
    pub leases: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// Dead letters too large for the queue (RELAY_DLQ_S3_BUCKET).
    pub s3: aws_sdk_s3::Client,
    /// Who runs an operator command, for the lease's audit trail.
    pub sts: aws_sdk_sts::Client,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl AwsClients {
    pub async fn from_env(lease_call_timeout: Duration) -> AwsClients {
        // Every call gets a deadline: without one a hung connection would stall a shard or the
        // coordinator's round forever.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(Duration::from_secs(30))
            .build();
        // Stalled-stream protection is for large bodies: it wakes every call in flight ten times a
        // second to measure its throughput, which for a heartbeat queued behind a slow page or a
        // long-polled ReceiveMessage costs more CPU than the call. DynamoDB, Streams and SQS
        // bodies are small, and the attempt timeouts above already cut a hung call; S3, which
        // carries large dead letters, keeps it (`s3_client`).
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .load()
            .await;
        let lease_timeouts = TimeoutConfig::builder()
            .connect_timeout(lease_call_timeout)
            .operation_attempt_timeout(lease_call_timeout / 2)
            .operation_timeout(lease_call_timeout)
            .build();
        let leases = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .timeout_config(lease_timeouts)
            .interceptor(CountRequests)
            .build();
        let streams = aws_sdk_dynamodbstreams::config::Builder::from(&sdk)
            .interceptor(CountRequests)
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(CountRequests)
            .build();
        let sqs = aws_sdk_sqs::config::Builder::from(&sdk)
            .interceptor(CountRequests)
            .build();
        AwsClients {
            records: Arc::new(RecordsReader::new(&sdk, CONNECT_TIMEOUT, ATTEMPT_TIMEOUT).await),
            streams: aws_sdk_dynamodbstreams::Client::from_conf(streams),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
            leases: aws_sdk_dynamodb::Client::from_conf(leases),
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            s3: s3_client(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
        }
    }
}

/// The S3 client for dead letters too large for the queue. Path-style addressing
/// (`<endpoint>/<bucket>/<key>`) only when an endpoint is configured (`AWS_ENDPOINT_URL`, or
/// `AWS_ENDPOINT_URL_S3`): local emulators (moto, LocalStack, MinIO) serve every bucket on one
/// host, where the virtual-hosted name `<bucket>.127.0.0.1` does not resolve. On AWS itself the
/// SDK's default stays: its endpoint rules choose virtual-hosted style, which AWS recommends
/// (path-style is deprecated there), and fall back to path-style by themselves where a bucket's
/// name needs it (dots over TLS).
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let s3_endpoint = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some() || s3_endpoint)
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().build())
        .interceptor(CountRequests)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The publisher and DLQ for the re-drain loop (also `redrive --once`).
pub async fn redrainer(config: &Config, aws: &AwsClients) -> Result<Redrainer, StartupError> {
    let dlq = DeadLetterQueue::connect(aws.sqs.clone(), config.dlq_url.clone())
        .await
        .map_err(|e| match e {
            DlqError::Unreachable { .. } => transient("RELAY_DLQ_URL", e),
            _ => startup("RELAY_DLQ_URL", e),
        })?
        .with_s3(aws.s3.clone(), config.dlq_s3_bucket.clone());
    let mut publishers = HashMap::new();
    // Every route's letters are re-driven to the event type they name.
    for route in config.tables.iter().flat_map(|t| &t.routes) {
        let mut nakadi = config.publisher(&route.event_type);
        nakadi.on_failure = FailureMode::DeadLetter;
        publishers.insert(route.event_type.clone(), publisher(nakadi)?);
    }
    Ok(Redrainer {
        dlq,
        publishers,
        interval: config.dlq_redrain_interval,
        rate: config.dlq_redrain_rate,
        visibility: crate::dlq::redrain::VISIBILITY_TIMEOUT,
    })
}

/// The publisher, with a start-up error naming the setting behind the problem.
pub(crate) fn publisher(config: PublisherConfig) -> Result<Publisher, StartupError> {
    let token = config.token.clone();
    Publisher::new(config).map_err(|e| nakadi_problem(&token, e))
}

/// Why a Nakadi client cannot be built, naming the setting: the URL, or where the token is read.
pub(crate) fn nakadi_problem(token: &TokenSource, e: NakadiError) -> StartupError {
    let token_variable = match token {
        TokenSource::CredentialsDir { .. } => "RELAY_NAKADI_TOKEN_NAME",
        _ => "RELAY_NAKADI_TOKEN_FILE",
    };
    match e {
        NakadiError::InvalidUrl { .. } | NakadiError::Client(_) => startup("RELAY_NAKADI_URL", e),
        _ => startup(token_variable, e),
    }
}

/// The latest stream of `table`, which the relay reads when a table is configured by name: a
/// missing table or stream is an error naming `variable`; other faults may pass.
pub(crate) async fn latest_stream(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    variable: &'static str,
) -> Result<String, StartupError> {
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            let message = format!("table {table}: {}", aws_error(&e));
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            {
                startup(variable, message)
            } else {
                transient(variable, message)
            }
        })?;
    out.table()
        .and_then(|t| t.latest_stream_arn())
        .map(str::to_owned)
        .ok_or_else(|| {
            startup(
                variable,
                format!(
                    "table {table} has no stream; enable one with view type NEW_AND_OLD_IMAGES"
                ),
            )
        })
}

/// An AWS error on one line: the service's code and message when it answered, else the whole
/// chain of what failed on the way (connection, credentials, timeout).
pub(crate) fn aws_error<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => error_chain(e),
    }
}

/// The lease table of one stream, as the relay's pods use it.
pub fn lease_table(config: &Config, aws: &AwsClients, stream_arn: StreamArn) -> LeaseTable {
    LeaseTable::new(
        aws.leases.clone(),
        config.lease_table.clone(),
        stream_arn,
        config.lease.call_timeout,
    )
}

/// The stream a table's events come from: the configured ARN, or the table's latest stream.
pub async fn stream_arn(
    config: &Config,
    table: &TableConfig,
    aws: &AwsClients,
) -> Result<StreamArn, StartupError> {
    let variable = table.source_variable(config.tables_from_file);
    Ok(StreamArn::new(match &table.source {
        StreamSource::Arn(arn) => arn.clone(),
        StreamSource::Table(name) => latest_stream(&aws.dynamodb, name, variable).await?,
    }))
}

//! Wires the parts together and owns the shutdown order.
//!
//! `App::build` checks everything an operator can get wrong before anything starts (the stream,
//! its view type, the lease table, the queue, the token, the listen address), so a bad deployment
//! fails at once with exit code 2 and a message naming the setting, instead of half-starting.
//! `App::run_until_stopped` runs until the signal, then: not ready → workers finish their pages
//! and checkpoint → leases released → re-drain loop and HTTP server stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Config, StreamSource};
use crate::dlq::{DeadLetterQueue, Redrainer};
use crate::lease::LeaseTable;
use crate::lease::coordinator::Coordinator;
use crate::nakadi::{FailureMode, NakadiError, Publisher, PublisherConfig, TokenSource};
use crate::status::StatusBoard;
use crate::stream::StreamsClient;
use crate::stream::worker::Pipeline;
use crate::transform::EventSettings;

/// A start-up failure, naming the setting that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct StartupError {
    pub variable: &'static str,
    pub message: String,
}

fn startup(variable: &'static str, message: impl std::fmt::Display) -> StartupError {
    StartupError {
        variable,
        message: message.to_string(),
    }
}

pub struct App {
    config: Config,
    pipeline: Arc<Pipeline>,
    status: Arc<StatusBoard>,
    listener: TcpListener,
    redrainer: Redrainer,
}

/// The AWS clients of one process, sharing one configuration (credentials chain, region,
/// `AWS_ENDPOINT_URL*`).
pub struct AwsClients {
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    pub async fn from_env() -> AwsClients {
        // Every call gets a deadline: without one a hung connection would stall a shard or the
        // coordinator's round forever.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .load()
            .await;
        AwsClients {
            streams: aws_sdk_dynamodbstreams::Client::new(&sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
        }
    }
}

/// The publisher and DLQ for the re-drain loop (also `redrive --once`).
pub async fn redrainer(config: &Config, aws: &AwsClients) -> Result<Redrainer, StartupError> {
    let dlq = DeadLetterQueue::connect(aws.sqs.clone(), config.dlq_url.clone())
        .await
        .map_err(|e| startup("RELAY_DLQ_URL", e))?;
    let mut nakadi = config.nakadi.clone();
    nakadi.on_failure = FailureMode::DeadLetter;
    let publisher = publisher(nakadi)?;
    Ok(Redrainer {
        dlq,
        publisher,
        interval: config.dlq_redrain_interval,
        rate: config.dlq_redrain_rate,
    })
}

/// The publisher, with a start-up error naming the setting behind the problem.
fn publisher(config: PublisherConfig) -> Result<Publisher, StartupError> {
    let token_variable = match config.token {
        TokenSource::CredentialsDir { .. } => "RELAY_NAKADI_TOKEN_NAME",
        _ => "RELAY_NAKADI_TOKEN_FILE",
    };
    Publisher::new(config).map_err(|e| match e {
        NakadiError::InvalidUrl { .. } | NakadiError::Client(_) => startup("RELAY_NAKADI_URL", e),
        _ => startup(token_variable, e),
    })
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartupError> {
        // Registers every metric now, so the first scrape shows them all.
        std::sync::LazyLock::force(&crate::metrics::METRICS);
        let aws = AwsClients::from_env().await;
        let (stream_arn, source_var) = match &config.source {
            StreamSource::Arn(arn) => (arn.clone(), "RELAY_STREAM_ARN"),
            StreamSource::Table(table) => (
                latest_stream(&aws.dynamodb, table).await?,
                "RELAY_TABLE_NAME",
            ),
        };
        let streams = StreamsClient::new(aws.streams.clone());
        let info = streams
            .describe(&stream_arn)
            .await
            .map_err(|e| startup(source_var, format!("stream {stream_arn}: {e}")))?;
        if info.view_type.as_deref() != Some("NEW_AND_OLD_IMAGES") {
            return Err(startup(
                source_var,
                format!(
                    "stream {stream_arn} has view type {}, but the relay needs NEW_AND_OLD_IMAGES to build the item and its patch",
                    info.view_type.as_deref().unwrap_or("(none)")
                ),
            ));
        }
        let leases = LeaseTable::new(
            aws.dynamodb.clone(),
            config.lease_table.clone(),
            stream_arn.clone(),
        );
        leases
            .ensure_exists(config.create_lease_table)
            .await
            .map_err(|e| startup("RELAY_LEASE_TABLE", e))?;
        let redrainer = redrainer(&config, &aws).await?;
        let publisher = publisher(config.nakadi.clone())?;
        let listener = TcpListener::bind(config.http_addr).await.map_err(|e| {
            startup(
                "RELAY_HTTP_ADDR",
                format!("cannot listen on {}: {e}", config.http_addr),
            )
        })?;
        let settings = EventSettings {
            data_type: config.data_type.clone(),
            compaction_key: config.compaction_key.then(|| info.key_attributes.clone()),
        };
        if let Some(key) = settings
            .compaction_key
            .iter()
            .flatten()
            .find(|k| config.filter.drop_attributes.contains(k))
        {
            return Err(startup(
                "RELAY_DROP_ATTRIBUTES",
                format!("drops the key attribute {key:?}, which RELAY_COMPACTION_KEY needs"),
            ));
        }
        let status = Arc::new(StatusBoard::new(&config.worker_id, &stream_arn));
        let pipeline = Arc::new(Pipeline {
            stream_arn,
            worker_id: config.worker_id.clone(),
            streams,
            leases,
            publisher,
            dlq: redrainer.dlq.clone(),
            settings,
            filter: config.filter.clone(),
        });
        Ok(App {
            config,
            pipeline,
            status,
            listener,
            redrainer,
        })
    }

    /// Where the HTTP server listens (tests bind port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self, stop_signal: impl std::future::Future<Output = ()>) {
        let shutdown = CancellationToken::new();
        let deadline = CancellationToken::new();
        let http_stop = CancellationToken::new();
        info!(
            worker_id = %self.config.worker_id,
            stream_arn = %self.pipeline.stream_arn,
            http = %self.http_addr(),
            "relay started"
        );
        let http = tokio::spawn(crate::http::serve(
            self.listener,
            self.status.clone(),
            http_stop.clone(),
        ));
        let redrain = tokio::spawn(self.redrainer.run(shutdown.clone()));
        let coordinator = Coordinator::new(
            self.pipeline.clone(),
            self.config.lease,
            self.config.initial_position,
            self.status.clone(),
            shutdown.clone(),
            deadline.clone(),
        );
        let mut coordinator = tokio::spawn(coordinator.run());
        tokio::select! {
            _ = stop_signal => {}
            r = &mut coordinator => {
                error!(result = ?r, "the coordinator ended unexpectedly");
            }
        }
        // Not ready first, so Kubernetes stops routing to this pod before leases move.
        self.status.set_stopping();
        shutdown.cancel();
        let timeout = self.config.shutdown_timeout;
        let deadline_timer = tokio::spawn({
            let deadline = deadline.clone();
            async move {
                tokio::time::sleep(timeout).await;
                tracing::warn!(
                    ?timeout,
                    "drain deadline passed; stopping pages in flight without checkpoint"
                );
                deadline.cancel();
            }
        });
        if !coordinator.is_finished() {
            let _ = coordinator.await;
        }
        let _ = redrain.await;
        deadline_timer.abort();
        http_stop.cancel();
        let _ = http.await;
        info!("relay stopped");
    }
}

async fn latest_stream(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<String, StartupError> {
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            startup(
                "RELAY_TABLE_NAME",
                format!(
                    "table {table}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                ),
            )
        })?;
    out.table()
        .and_then(|t| t.latest_stream_arn())
        .map(str::to_owned)
        .ok_or_else(|| {
            startup(
                "RELAY_TABLE_NAME",
                format!(
                    "table {table} has no stream; enable one with view type NEW_AND_OLD_IMAGES"
                ),
            )
        })
}

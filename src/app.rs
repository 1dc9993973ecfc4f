//! Wires the parts together and owns the shutdown order.
//!
//! `App::build` checks everything an operator can get wrong before anything starts (the stream,
//! its view type, the lease table, the queue, the token, the listen address), so a bad deployment
//! fails at once with exit code 2 and a message naming the setting, instead of half-starting.
//! `App::run_until_stopped` runs until the signal, then: not ready → workers finish their pages
//! and checkpoint → leases released → re-drain loop and HTTP server stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, TableConfig};
use crate::coordinator::Coordinator;
use crate::dlq::{DeadLetterQueue, Redrainer};
use crate::fence::Fence;
use crate::ids::StreamArn;
use crate::lease::LeaseError;
use crate::metrics::TableMetrics;
use crate::retry::Backoff;
use crate::route::{Lane, Routes};
use crate::shard::Pipeline;
use crate::startup::{AwsClients, StartupError, publisher, redrainer, startup, transient};
use crate::status::{RouteStatus, StatusBoard};
use crate::stream::{StreamError, StreamsClient};
use crate::transform::EventSettings;

/// How long start-up retries AWS faults that may pass before it gives up with exit code 2. A
/// throttled or briefly unreachable AWS at a pod's start is not a configuration error, and a
/// restart loop would only add calls; a missing or wrong resource fails at once.
const STARTUP_RETRY_FOR: Duration = Duration::from_secs(60);

pub struct App {
    config: Config,
    /// One per table, in the order of `config.tables` (and of the status board's slots).
    pipelines: Vec<Arc<Pipeline>>,
    status: Arc<StatusBoard>,
    listener: TcpListener,
    redrainer: Redrainer,
}

impl App {
    /// [`App::build`], trying again with backoff while it fails for a reason that may pass, for
    /// up to [`STARTUP_RETRY_FOR`]. `None`: `stop` came first (SIGTERM during start-up ends the
    /// process cleanly; nothing was read yet).
    pub async fn start(
        config: Config,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<App>, StartupError> {
        tokio::pin!(stop);
        let began = Instant::now();
        let mut attempt = 0;
        loop {
            let error = tokio::select! {
                _ = &mut stop => return Ok(None),
                built = App::build(config.clone()) => match built {
                    Ok(app) => return Ok(Some(app)),
                    Err(e) => e,
                },
            };
            if !error.transient || began.elapsed() >= STARTUP_RETRY_FOR {
                return Err(error);
            }
            warn!(variable = error.variable, error = %error.message, attempt, "a start-up check failed for a reason that may pass; trying again");
            let delay = Backoff::AWS.delay(attempt, None);
            attempt += 1;
            tokio::select! {
                _ = &mut stop => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    pub async fn build(config: Config) -> Result<App, StartupError> {
        // Registers every metric now, so the first scrape shows them all.
        std::sync::LazyLock::force(&crate::metrics::METRICS);
        let aws = AwsClients::from_env(config.lease.call_timeout).await;
        let redrainer = redrainer(&config, &aws).await?;
        let mut pipelines = Vec::with_capacity(config.tables.len());
        for table in &config.tables {
            pipelines.push(Arc::new(
                pipeline(&config, table, &aws, redrainer.dlq.clone()).await?,
            ));
        }
        // All tables share the lease table (keys start with the stream ARN); any pipeline's
        // handle checks it.
        if let Some(first) = pipelines.first() {
            first
                .leases
                .ensure_exists(config.create_lease_table)
                .await
                .map_err(|e| match e {
                    LeaseError::Unavailable { .. } => transient("RELAY_LEASE_TABLE", e),
                    _ => startup("RELAY_LEASE_TABLE", e),
                })?;
        }
        let listener = TcpListener::bind(config.http_addr).await.map_err(|e| {
            startup(
                "RELAY_HTTP_ADDR",
                format!("cannot listen on {}: {e}", config.http_addr),
            )
        })?;
        let slots: Vec<(String, StreamArn)> = pipelines
            .iter()
            .map(|p| (p.table.clone(), p.stream_arn.clone()))
            .collect();
        let status = Arc::new(StatusBoard::new(&config.worker_id, &slots));
        for (slot, table) in config.tables.iter().enumerate() {
            let routes = table
                .routes
                .iter()
                .map(|r| RouteStatus {
                    event_type: r.event_type.clone(),
                    when: r.when.as_ref().map(|w| format!("{w:?}")),
                })
                .collect();
            status.set_routes(slot, routes);
        }
        Ok(App {
            config,
            pipelines,
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
        let streams: Vec<&str> = self
            .pipelines
            .iter()
            .map(|p| p.stream_arn.as_str())
            .collect();
        info!(
            worker_id = %self.config.worker_id,
            ?streams,
            http = %self.http_addr(),
            "relay started"
        );
        let http = tokio::spawn(crate::http::serve(
            self.listener,
            self.status.clone(),
            http_stop.clone(),
        ));
        let redrain = tokio::spawn(self.redrainer.run(shutdown.clone()));
        let mut coordinators = JoinSet::new();
        for (slot, pipeline) in self.pipelines.iter().enumerate() {
            let coordinator = Coordinator::new(
                pipeline.clone(),
                self.config.lease,
                self.config.initial_position,
                (self.status.clone(), slot),
                shutdown.clone(),
                deadline.clone(),
            );
            coordinators.spawn(coordinator.run());
        }
        tokio::select! {
            _ = stop_signal => {}
            Some(r) = coordinators.join_next() => {
                error!(result = ?r, "a coordinator ended unexpectedly");
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
        coordinators.join_all().await;
        let _ = redrain.await;
        deadline_timer.abort();
        http_stop.cancel();
        let _ = http.await;
        info!("relay stopped");
    }
}

/// One table's pipeline: its stream checked (it exists and has NEW_AND_OLD_IMAGES), its
/// publisher, filter and metrics.
async fn pipeline(
    config: &Config,
    table: &TableConfig,
    aws: &AwsClients,
    dlq: DeadLetterQueue,
) -> Result<Pipeline, StartupError> {
    let source_var = table.source_variable(config.tables_from_file);
    let stream_arn = crate::startup::stream_arn(config, table, aws).await?;
    let streams = StreamsClient::new(aws.streams.clone(), aws.records.clone());
    let info = streams.describe(&stream_arn).await.map_err(|e| {
        let message = format!("stream {stream_arn}: {e}");
        match e {
            StreamError::Throttled(_) | StreamError::Other(_) => transient(source_var, message),
            _ => startup(source_var, message),
        }
    })?;
    info.check_view_type()
        .map_err(|e| startup(source_var, format!("stream {stream_arn} {e}")))?;
    let metrics = TableMetrics::new(
        table.name(),
        table.routes.iter().map(|r| r.event_type.as_str()),
    );
    let mut lanes = Vec::with_capacity(table.routes.len());
    for (i, route) in table.routes.iter().enumerate() {
        let settings = EventSettings {
            data_type: route.data_type.clone(),
            compaction_key: route.compaction_key.then(|| info.key_attributes.clone()),
        };
        if let Some(key) = settings
            .compaction_key
            .iter()
            .flatten()
            .find(|k| route.filter.drop_attributes.contains(k))
        {
            let (variable, which) = if config.tables_from_file {
                ("RELAY_TABLES_FILE", route_name(table, i))
            } else {
                ("RELAY_DROP_ATTRIBUTES", String::new())
            };
            return Err(startup(
                variable,
                format!(
                    "table {}{which} drops the key attribute {key:?}, which the compaction key needs",
                    table.name()
                ),
            ));
        }
        // The shard workers publish live stream events only: their delay is the table's.
        let publisher = publisher(config.publisher(&route.event_type))?
            .observing_delay(metrics.event_delay.clone());
        lanes.push(Lane {
            publisher,
            settings,
            filter: route.filter.clone(),
        });
    }
    let routes = Routes::new(lanes, table.routes.iter().map(|r| r.when.clone()).collect());
    Ok(Pipeline {
        table: table.name().to_owned(),
        leases: crate::startup::lease_table(config, aws, stream_arn.clone()),
        stream_arn,
        worker_id: config.worker_id.clone(),
        streams,
        routes,
        dlq,
        metrics,
        fence: Arc::new(Fence::new(config.lease.duration)),
        fingerprint: table.fingerprint(),
        idle_poll_interval: config.idle_poll_interval,
        checkpoint_interval: config.checkpoint_interval,
    })
}

/// ", route N (event type)" of a table of several routes; nothing for a table of one.
fn route_name(table: &TableConfig, index: usize) -> String {
    if table.routes.len() == 1 {
        return String::new();
    }
    format!(", route {} ({})", index + 1, table.routes[index].event_type)
}

//! The publisher: splits events into requests, sends each with retries, and turns Nakadi's
//! answers into one [`Outcome`] per event.
//!
//! A batch's requests run one after another, never side by side, so that events leave in stream
//! order and `block` mode can keep per-key order. Inside a batch only the events still undecided
//! are re-sent: an accepted event is never sent again by this loop (a duplicate can only come
//! from an answer that never arrived, and then it has the same eid).
//!
//! The HTTP exchange sits behind [`Transport`] so the retry timing can be tested with paused
//! tokio time and a scripted Nakadi; over real sockets paused time would fire every timeout at
//! once.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use prometheus::Histogram;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderName, RETRY_AFTER};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{debug, error, warn};
use uuid::Uuid;

use super::batch;
use super::response::{
    BatchItem, Body, MAX_BODY_BYTES, PublishingStatus, RetryReason, Verdict, classify,
    parse_retry_after,
};
use super::token::{Authorization, TokenProvider};
use super::{
    Failure, FailureKind, FailureMode, Gate, Halt, NakadiError, Outcome, PublisherConfig,
    Publishing,
};
use crate::metrics::{self, METRICS};
use crate::retry::Backoff;
use crate::transform::{Event, MAX_EVENT_BYTES};

/// The longest wait after a 429 before trying again: Nakadi's `Retry-After` on a rate limit is
/// obeyed up to this, and a shorter wait only costs one more 429.
pub(crate) const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(30);

pub(super) const FLOW_ID: HeaderName = HeaderName::from_static("x-flow-id");

/// One publishing request, as the publisher hands it to the transport.
pub(crate) struct Request {
    pub flow_id: Uuid,
    /// The JSON array, gzipped when `gzip`.
    pub body: Bytes,
    pub gzip: bool,
    pub authorization: Option<Authorization>,
}

/// What came back. The body of a success is not read: nothing in it changes the outcome, and a
/// body that stalls after a 200 must not turn delivered events into a retry.
pub(crate) struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Body,
}

/// No response arrived.
#[derive(Debug, Clone)]
pub(crate) enum TransportError {
    Timeout(String),
    Connection(String),
}

pub(crate) type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response, TransportError>> + Send + 'a>>;

/// Sends one request to Nakadi's publishing endpoint. The per-attempt timeout is the
/// publisher's, around the whole future.
pub(crate) trait Transport: Send + Sync + 'static {
    fn send(&self, request: Request) -> SendFuture<'_>;
}

/// The real transport: one pooled client, so connections (and TLS sessions) are kept alive
/// between requests of all shards, and HTTP/2 is used where Nakadi offers it.
struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Transport for HttpTransport {
    fn send(&self, request: Request) -> SendFuture<'_> {
        Box::pin(async move {
            let mut builder = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(FLOW_ID, request.flow_id.to_string());
            if request.gzip {
                builder = builder.header(CONTENT_ENCODING, "gzip");
            }
            if let Some(auth) = &request.authorization {
                builder = builder.header(AUTHORIZATION, auth.header().clone());
            }
            let mut response = builder
                .body(request.body)
                .send()
                .await
                .map_err(transport_error)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = if (200..300).contains(&status) && status != 207 {
                Body::Read(Bytes::new())
            } else {
                read_capped(&mut response).await
            };
            Ok(Response {
                status,
                retry_after,
                body,
            })
        })
    }
}

/// Reads at most [`MAX_BODY_BYTES`]: a misbehaving proxy must not make the relay buffer
/// without bound.
pub(super) async fn read_capped(response: &mut reqwest::Response) -> Body {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Body::TooLarge;
    }
    let mut buf = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_BODY_BYTES {
                    return Body::TooLarge;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Body::Read(buf.freeze()),
            Err(e) => return Body::Broken(error_chain(&e)),
        }
    }
}

fn transport_error(e: reqwest::Error) -> TransportError {
    let text = error_chain(&e);
    if e.is_timeout() {
        TransportError::Timeout(text)
    } else {
        TransportError::Connection(text)
    }
}

/// The error and its causes on one line: reqwest's own message alone ("error sending request")
/// hides whether the connection was refused, reset or failed TLS.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Publishes events to one event type. Cheap to clone: clones share the HTTP connection pool and
/// the token cache.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
    /// Where the delay of each accepted event is observed, for the publishers of live stream
    /// events only ([`Publisher::observing_delay`]).
    delay: Option<Histogram>,
}

struct Inner {
    config: PublisherConfig,
    token: TokenProvider,
    transport: Box<dyn Transport>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("config", &self.inner.config)
            .field("token", &self.inner.token)
            .finish_non_exhaustive()
    }
}

/// `<base>/event-types/<name>`, the name percent-encoded as one path segment.
pub(super) fn event_type_url(base: &str, event_type: &str) -> Result<reqwest::Url, NakadiError> {
    let invalid = |problem: &str| NakadiError::InvalidUrl {
        url: base.to_owned(),
        problem: problem.to_owned(),
    };
    let mut url = reqwest::Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    url.path_segments_mut()
        .map_err(|()| invalid("it cannot have a path"))?
        .pop_if_empty()
        .extend(["event-types", event_type]);
    Ok(url)
}

/// `<base>/event-types/<name>/events`, where events are published.
fn events_url(base: &str, event_type: &str) -> Result<reqwest::Url, NakadiError> {
    let mut url = event_type_url(base, event_type)?;
    url.path_segments_mut()
        .expect("event_type_url gives a URL that has a path")
        .push("events");
    Ok(url)
}

/// The HTTP client of every request to Nakadi, so that what one request proves (the TLS roots,
/// the redirect policy, the timeouts) holds for the others.
pub(super) fn http_client(config: &PublisherConfig) -> Result<reqwest::Client, NakadiError> {
    reqwest::Client::builder()
        // A redirect would turn the POST into a GET or replay the body elsewhere; Nakadi does
        // not redirect, so one means a wrong URL, reported as such.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.request_timeout)
        // Load balancers drop idle connections silently; probes find them before a publish
        // does.
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("dynamodb-nakadi-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(NakadiError::Client)
}

impl Publisher {
    /// Builds the HTTP client and reads the token.
    ///
    /// # Errors
    /// A token file that is missing, unreadable, empty or not a valid header value (the error
    /// names the file, never the token); a base URL that is not http(s).
    pub fn new(config: PublisherConfig) -> Result<Publisher, NakadiError> {
        let url = events_url(&config.base_url, &config.event_type)?;
        let client = http_client(&config)?;
        Publisher::with_transport(config, Box::new(HttpTransport { client, url }))
    }

    pub(crate) fn with_transport(
        config: PublisherConfig,
        transport: Box<dyn Transport>,
    ) -> Result<Publisher, NakadiError> {
        let token = TokenProvider::new(&config.token)?;
        Ok(Publisher {
            inner: Arc::new(Inner {
                config,
                token,
                transport,
            }),
            delay: None,
        })
    }

    /// This publisher (sharing its connections and token), observing into `histogram`, for
    /// every event Nakadi accepts, the seconds from its record's creation to the acceptance.
    /// Only the shard workers' publishers do: a re-drained event's delay says how long it sat
    /// in the DLQ, and a snapshot event's creation time is its scan time, so neither belongs in
    /// the stream's delay; their publishers are built without it.
    #[must_use]
    pub fn observing_delay(mut self, histogram: Histogram) -> Publisher {
        self.delay = Some(histogram);
        self
    }

    pub fn event_type(&self) -> &str {
        &self.inner.config.event_type
    }

    /// Publishes `events` in order (split into requests by `batch_size` / `batch_bytes`; an event
    /// alone larger than `batch_bytes` still goes alone), and returns one outcome per event, in
    /// the same order.
    ///
    /// Events larger than `MAX_EVENT_BYTES` fail at once ([`FailureKind::TooLarge`]) without a
    /// request. Retryable failures retry with [`Backoff::NAKADI`] (full jitter, `Retry-After`
    /// honoured) until `max_attempts` or `max_retry_time`, then fail with
    /// [`FailureKind::RetriesExhausted`]. In [`FailureMode::Block`] nothing fails: everything,
    /// rejections and oversized events included, is retried with capped backoff and ERROR logs.
    ///
    /// A 429 is never a reason to give up: it is retried after `min(Retry-After, MAX_RATE_LIMIT_WAIT)`
    /// and neither its attempts nor its waits count against the budgets.
    ///
    /// `gate` is checked before every request: once it is closed (drain deadline, self-fence)
    /// no new request goes out, and every event not yet decided ends [`Outcome::NotSent`]. A
    /// request already sent is waited for, so its answer is known.
    pub async fn publish<'w>(
        &self,
        events: &[Event],
        who: impl Into<Publishing<'w>>,
        gate: &Gate<'_>,
    ) -> Vec<Outcome> {
        let who = who.into();
        let config = &self.inner.config;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut sendable = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            if event.body().len() <= MAX_EVENT_BYTES {
                sendable.push((index, event.body().len()));
                continue;
            }
            if config.on_failure == FailureMode::Block {
                // Block mode never gives up on an event; whether this Nakadi takes it is its own
                // call, and a refusal is retried and logged like any other.
                warn!(publishing = %who, sequence_number = event.sequence_number(), eid = %event.eid, bytes = event.body().len(), limit = MAX_EVENT_BYTES, "event is larger than Nakadi's default limit; sending it anyway (block mode)");
                sendable.push((index, event.body().len()));
                continue;
            }
            error!(publishing = %who, sequence_number = event.sequence_number(), eid = %event.eid, bytes = event.body().len(), limit = MAX_EVENT_BYTES, "event is larger than Nakadi accepts; dead-lettering it without sending");
            let now = OffsetDateTime::now_utc();
            outcomes[index] = Some(Outcome::Failed(Failure {
                kind: FailureKind::TooLarge,
                reason: format!(
                    "the event is {} bytes, Nakadi accepts at most {MAX_EVENT_BYTES}",
                    event.body().len()
                ),
                status: None,
                attempts: 0,
                first_failed_at: now,
                last_failed_at: now,
            }));
        }
        for group in batch::split(sendable, config.batch_size, config.batch_bytes) {
            if let Some(halt) = self
                .publish_group(events, &group, &mut outcomes, who, gate)
                .await
            {
                for &i in &group {
                    outcomes[i].get_or_insert(Outcome::NotSent(halt));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every event got an outcome"))
            .collect()
    }

    /// One request's worth of events, retried until each is decided; `Some` when the gate closed
    /// first (the undecided events are left without an outcome).
    async fn publish_group(
        &self,
        events: &[Event],
        group: &[usize],
        outcomes: &mut [Option<Outcome>],
        who: Publishing<'_>,
        gate: &Gate<'_>,
    ) -> Option<Halt> {
        let config = &self.inner.config;
        let block = config.on_failure == FailureMode::Block;
        let started = Instant::now();
        // Only ever shrinks: an event leaves when it is decided, so every event still here was in
        // every request so far and failed in each, and `attempt` and `first_failed_at` are the
        // same for all of them.
        let mut pending = group.to_vec();
        let mut first_failed_at = None;
        // Rate-limited attempts and the time spent waiting on them: not held against the budgets.
        let mut limited_attempts: u32 = 0;
        let mut limited_for = Duration::ZERO;
        // The encoded body, kept while `pending` does not change: a retry re-sends the same bytes
        // without re-compressing them.
        let mut body: Option<(Bytes, bool)> = None;
        let mut attempt: u32 = 0;
        loop {
            if let Some(halt) = gate.halted() {
                return Some(halted(halt, who, events, &pending));
            }
            attempt = attempt.saturating_add(1);
            let (bytes, gzip) = body
                .get_or_insert_with(|| {
                    batch::body(
                        pending.iter().map(|&i| events[i].body()),
                        config.gzip_min_bytes,
                    )
                })
                .clone();
            let flow_id = Uuid::new_v4();
            let first_seq = events[pending[0]].sequence_number();
            let last_seq = events[pending[pending.len() - 1]].sequence_number();
            let request_bytes = bytes.len();
            let request = Request {
                flow_id,
                body: bytes,
                gzip,
                authorization: self.inner.token.current(),
            };
            let (status, verdict) = self.send(request).await;

            let sent = pending.len();
            let decided = decide(verdict, events, &pending, block);
            let (delivered, rejected) = (decided.delivered.len(), decided.rejected.len());
            let now = OffsetDateTime::now_utc();
            for &i in &decided.delivered {
                outcomes[i] = Some(Outcome::Delivered);
            }
            if let Some(delay) = &self.delay {
                let accepted_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
                for &i in &decided.delivered {
                    // A clock behind the one that stamped the record counts as no delay.
                    let ms = (accepted_ms - events[i].created_at_ms).max(0);
                    delay.observe(ms as f64 / 1000.0);
                }
            }
            if !decided.rejected.is_empty() {
                let first_failed_at = *first_failed_at.get_or_insert(now);
                let (_, example) = &decided.rejected[0];
                error!(%flow_id, publishing = %who, first_sequence_number = first_seq, last_sequence_number = last_seq, events = sent, rejected = decided.rejected.len(), status, attempt, reason = %example, "Nakadi rejected events; they go to the dead-letter queue");
                for (i, reason) in decided.rejected {
                    outcomes[i] = Some(Outcome::Failed(Failure {
                        kind: FailureKind::Rejected,
                        reason,
                        status,
                        attempts: attempt,
                        first_failed_at,
                        last_failed_at: now,
                    }));
                }
            }
            if decided.again.is_empty() {
                debug!(%flow_id, publishing = %who, first_sequence_number = first_seq, last_sequence_number = last_seq, events = sent, delivered, rejected, status, attempt, bytes = request_bytes, gzip, "publishing request done");
                return None;
            }
            let first_failed_at = *first_failed_at.get_or_insert(now);
            if decided.again.len() != pending.len() {
                body = None;
            }
            pending = decided.again.iter().map(|&(i, _)| i).collect();
            if decided.unauthorized {
                self.inner.token.reload();
            }

            let rate_limited = decided
                .again
                .iter()
                .all(|&(_, reason)| reason == RetryReason::RateLimited);
            let delay = if rate_limited {
                limited_attempts += 1;
                let wait = decided
                    .retry_after
                    .unwrap_or_else(|| Backoff::NAKADI.delay(attempt - 1, None))
                    .min(MAX_RATE_LIMIT_WAIT);
                limited_for += wait;
                wait
            } else {
                Backoff::NAKADI.delay(attempt - limited_attempts - 1, decided.retry_after)
            };
            let elapsed = started.elapsed();
            let budgeted_attempts = attempt - limited_attempts;
            let budgeted_time = elapsed.saturating_sub(limited_for);
            if !block
                && !rate_limited
                && (budgeted_attempts >= config.max_attempts
                    || budgeted_time + delay > config.max_retry_time)
            {
                let reason = format!(
                    "gave up after {attempt} attempts in {}: {}",
                    human(elapsed),
                    decided.detail
                );
                error!(%flow_id, publishing = %who, first_sequence_number = events[pending[0]].sequence_number(), last_sequence_number = events[pending[pending.len() - 1]].sequence_number(), events = pending.len(), status, attempt, %reason, "publishing failed for good; the events go to the dead-letter queue");
                for i in pending {
                    outcomes[i] = Some(Outcome::Failed(Failure {
                        kind: FailureKind::RetriesExhausted,
                        reason: reason.clone(),
                        status,
                        attempts: attempt,
                        first_failed_at,
                        last_failed_at: now,
                    }));
                }
                return None;
            }

            let mut by_reason: HashMap<RetryReason, u64> = HashMap::new();
            for &(_, reason) in &decided.again {
                *by_reason.entry(reason).or_default() += 1;
            }
            for (reason, n) in &by_reason {
                metrics::publish_retry(reason.label(), *n);
            }
            let reasons: Vec<&str> = by_reason.keys().map(|r| r.label()).collect();
            let reasons = reasons.join(",");
            let retry_in_ms = delay.as_millis() as u64;
            if block {
                error!(%flow_id, publishing = %who, first_sequence_number = first_seq, last_sequence_number = last_seq, events = sent, resend = pending.len(), status, attempt, reason = %reasons, retry_in_ms, detail = %decided.detail, "publishing failed; block mode retries until Nakadi accepts, the shard waits");
            } else {
                warn!(%flow_id, publishing = %who, first_sequence_number = first_seq, last_sequence_number = last_seq, events = sent, resend = pending.len(), status, attempt, reason = %reasons, retry_in_ms, detail = %decided.detail, "publishing failed; retrying");
            }
            tokio::select! {
                biased;
                () = gate.deadline.cancelled() => return Some(halted(Halt::Deadline, who, events, &pending)),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl Publisher {
    /// One HTTP request within the per-attempt timeout, and what its answer means: the status
    /// (none when no response came) and the verdict.
    async fn send(&self, request: Request) -> (Option<u16>, Verdict) {
        let timeout = self.inner.config.request_timeout;
        let sent_at = Instant::now();
        let result = tokio::time::timeout(timeout, self.inner.transport.send(request)).await;
        METRICS
            .publish_duration
            .observe(sent_at.elapsed().as_secs_f64());
        let retry = |reason, detail| Verdict::Retry {
            reason,
            detail,
            retry_after: None,
        };
        match result {
            Err(_) => (
                None,
                retry(
                    RetryReason::Timeout,
                    format!("no response within {}", human(timeout)),
                ),
            ),
            Ok(Err(TransportError::Timeout(detail))) => (None, retry(RetryReason::Timeout, detail)),
            Ok(Err(TransportError::Connection(detail))) => {
                (None, retry(RetryReason::Connection, detail))
            }
            Ok(Ok(response)) => (
                Some(response.status),
                classify(response.status, response.retry_after, &response.body),
            ),
        }
    }
}

fn halted(halt: Halt, who: Publishing<'_>, events: &[Event], pending: &[usize]) -> Halt {
    let first_sequence_number = events[pending[0]].sequence_number();
    match halt {
        Halt::Deadline => warn!(
            publishing = %who,
            first_sequence_number,
            events = pending.len(),
            "drain deadline reached while publishing; no new request is sent, whoever continues publishes these events"
        ),
        Halt::Fenced => warn!(
            publishing = %who,
            first_sequence_number,
            events = pending.len(),
            "self-fence closed (no successful heartbeat for the lease duration); no new request is sent"
        ),
    }
    halt
}

/// What one response means for each event that was in the request.
#[derive(Debug, Default)]
struct Decided {
    delivered: Vec<usize>,
    /// With Nakadi's reason.
    rejected: Vec<(usize, String)>,
    /// To be sent again, with why.
    again: Vec<(usize, RetryReason)>,
    retry_after: Option<Duration>,
    /// Why the request failed, for logs and the final failure reason.
    detail: String,
    unauthorized: bool,
}

fn decide(verdict: Verdict, events: &[Event], pending: &[usize], block: bool) -> Decided {
    let mut d = Decided::default();
    let reject = |d: &mut Decided, i: usize, reason: String| {
        if block {
            d.again.push((i, RetryReason::Rejected));
        } else {
            d.rejected.push((i, reason));
        }
    };
    match verdict {
        Verdict::Delivered => d.delivered = pending.to_vec(),
        Verdict::Partial(items) => {
            let fates = Fates::new(&items, pending.len());
            for (position, &i) in pending.iter().enumerate() {
                match fates.of(events[i].eid, position) {
                    Some(item) if item.publishing_status == PublishingStatus::Submitted => {
                        d.delivered.push(i);
                    }
                    _ => d.again.push((i, RetryReason::Partial)),
                }
            }
            d.detail = format!(
                "207: {} of {} events not submitted{}",
                d.again.len(),
                pending.len(),
                fates
                    .first_detail()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            );
        }
        Verdict::Invalid(items) => {
            let fates = Fates::new(&items, pending.len());
            for (position, &i) in pending.iter().enumerate() {
                match fates.of(events[i].eid, position) {
                    // Nakadi says a 422 submits nothing; an item saying otherwise is believed,
                    // since re-sending it would make a duplicate.
                    Some(item) if item.publishing_status == PublishingStatus::Submitted => {
                        d.delivered.push(i);
                    }
                    Some(item) if item.publishing_status == PublishingStatus::Failed => {
                        reject(&mut d, i, item.reason());
                    }
                    _ => d.again.push((i, RetryReason::Aborted)),
                }
            }
            d.detail = format!(
                "422: events rejected{}",
                fates
                    .first_detail()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            );
        }
        Verdict::Rejected { reason } => {
            for &i in pending {
                reject(&mut d, i, reason.clone());
            }
            d.detail = reason;
        }
        Verdict::Retry {
            reason,
            detail,
            retry_after,
        } => {
            d.again = pending.iter().map(|&i| (i, reason)).collect();
            d.unauthorized = reason == RetryReason::Unauthorized;
            d.retry_after = retry_after;
            d.detail = detail;
        }
    }
    d
}

/// The items of a 207 or 422, found by eid. Items without an eid can only be matched by
/// position, and only when the array has one item per event sent.
struct Fates<'a> {
    items: &'a [BatchItem],
    by_eid: HashMap<Uuid, &'a BatchItem>,
    positional: bool,
}

impl<'a> Fates<'a> {
    fn new(items: &'a [BatchItem], sent: usize) -> Fates<'a> {
        Fates {
            items,
            by_eid: items
                .iter()
                .filter_map(|it| Some((it.eid()?, it)))
                .collect(),
            positional: items.len() == sent,
        }
    }

    /// `None` when Nakadi did not mention the event: it was not submitted as far as we know.
    fn of(&self, eid: Uuid, position: usize) -> Option<&'a BatchItem> {
        if let Some(item) = self.by_eid.get(&eid) {
            return Some(item);
        }
        let item = self.items.get(position).filter(|_| self.positional)?;
        item.eid.is_none().then_some(item)
    }

    fn first_detail(&self) -> Option<&'a str> {
        self.items
            .iter()
            .filter(|it| it.publishing_status != PublishingStatus::Submitted)
            .find_map(|it| it.detail.as_deref().filter(|d| !d.trim().is_empty()))
    }
}

/// Durations in logs and reasons, rounded to milliseconds.
fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}

#[cfg(test)]
mod tests;

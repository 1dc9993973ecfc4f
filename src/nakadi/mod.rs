//! The Nakadi publisher: `POST /event-types/{name}/events` with Nakadi's full publishing
//! semantics, so the shard worker only has to act on one [`Outcome`] per event.
//!
//! - [`token`]: the bearer token from a file or the credentials directory, re-read on change and
//!   after a 401, never shown.
//! - [`batch`]: splitting events into requests and building the (optionally gzipped) body.
//! - [`response`]: what each of Nakadi's answers means, the failure table of DESIGN.md.
//! - [`publisher`]: the retry loop around one request: backoff, budgets, metrics and logs.
//! - [`registry`]: an event type's definition (`GET /event-types/{name}`), for `check`.
//!
//! Why each answer gets the reaction it gets: resending an item Nakadi accepted makes a
//! duplicate, retrying a 422 for ever blocks the shard, and ignoring a 207 loses events.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::fence::Fence;

mod batch;
mod publisher;
mod registry;
mod response;
mod token;

pub use publisher::Publisher;
pub(crate) use publisher::error_chain;
pub use registry::{EventTypeDefinition, Registry, RegistryError};

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// No `Authorization` header, for a Nakadi without authentication (local runs, tests).
    None,
    /// `RELAY_NAKADI_TOKEN_FILE`: the file holds the token alone; the type is `Bearer`.
    File(PathBuf),
    /// Zalando's convention: `<dir>/<name>-token-secret` holds the token and
    /// `<dir>/<name>-token-type` its type (`Bearer` when missing).
    CredentialsDir { dir: PathBuf, name: String },
}

/// What happens to an event Nakadi finally did not take (`RELAY_ON_PUBLISH_FAILURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Give up after the retry budget and hand the event back as [`Outcome::Failed`]; the caller
    /// dead-letters it and moves on, so it is re-published later, out of order.
    DeadLetter,
    /// Never give up: retry everything, rejections included, until Nakadi accepts or the
    /// shutdown deadline aborts. Keeps per-key order at the price of a stuck shard.
    Block,
}

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Nakadi's base URL, without the `/event-types/...` path.
    pub base_url: String,
    pub event_type: String,
    pub token: TokenSource,
    /// Most events in one request.
    pub batch_size: usize,
    /// Most bytes of one request's JSON array before compression; an event alone larger than
    /// this still goes, alone.
    pub batch_bytes: usize,
    /// Bodies at least this large are sent gzipped.
    pub gzip_min_bytes: usize,
    /// Limit of one HTTP request, from sending to the end of the response body.
    pub request_timeout: Duration,
    /// Most requests for one batch, the first included (ignored in [`FailureMode::Block`]).
    pub max_attempts: u32,
    /// Most time from a batch's first request until the last retry is started (ignored in
    /// [`FailureMode::Block`]).
    pub max_retry_time: Duration,
    pub on_failure: FailureMode,
}

/// Whose events are published, named in the publisher's log lines.
#[derive(Debug, Clone, Copy)]
pub enum Publishing<'a> {
    /// A shard's worker: the shard's id.
    Shard(&'a str),
    /// One Scan segment of the `snapshot` command.
    SnapshotSegment(u32),
    /// The DLQ's re-drain loop.
    Redrain,
}

impl fmt::Display for Publishing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Publishing::Shard(id) => f.write_str(id),
            Publishing::SnapshotSegment(segment) => write!(f, "snapshot segment {segment}"),
            Publishing::Redrain => f.write_str("dlq re-drain"),
        }
    }
}

/// A shard's publication, as the publisher's first callers named it: the same as
/// [`Publishing::Shard`].
#[derive(Debug, Clone, Copy)]
pub struct PublishContext<'a> {
    pub shard_id: &'a str,
}

impl<'a> From<&PublishContext<'a>> for Publishing<'a> {
    fn from(ctx: &PublishContext<'a>) -> Publishing<'a> {
        Publishing::Shard(ctx.shard_id)
    }
}

/// How the publication of one event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nakadi accepted it (200, or `submitted` in a 207).
    Delivered,
    /// Nakadi finally did not take it; the caller dead-letters it.
    Failed(Failure),
    /// Not decided: the gate closed before Nakadi accepted it. It may have landed with a request
    /// whose answer never came; the caller neither dead-letters it nor checkpoints past it, so
    /// whoever continues publishes it again with the same eid.
    NotSent(Halt),
}

/// Why the publisher stopped sending new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// The drain deadline of a shutdown passed.
    Deadline,
    /// This pod's self-fence closed: the leases behind these events may be another pod's now.
    Fenced,
}

/// When the publisher must stop sending: checked before every request, never in the middle of
/// one. A request already sent is answered (within the request timeout) and its answer counts,
/// so what Nakadi accepted is known and checkpointed.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// The drain deadline of a shutdown.
    pub deadline: &'a CancellationToken,
    /// The self-fence of the leases these events come from; `None` where no lease guards them
    /// (the re-drain loop, the snapshot's own progress fencing).
    pub fence: Option<&'a Fence>,
}

impl Gate<'_> {
    /// `Some` once no new request may be sent.
    pub fn halted(&self) -> Option<Halt> {
        if self.deadline.is_cancelled() {
            Some(Halt::Deadline)
        } else if self.fence.is_some_and(|f| !f.is_open()) {
            Some(Halt::Fenced)
        } else {
            None
        }
    }
}

/// Why an event was not published, for the dead-letter message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// Nakadi's own words where it gave any (the item's `detail`, the Problem's title and
    /// detail), else what went wrong on the way.
    pub reason: String,
    /// HTTP status of the last response, `None` when there was none (timeout, connection).
    pub status: Option<u16>,
    /// Requests that carried this event.
    pub attempts: u32,
    pub first_failed_at: OffsetDateTime,
    pub last_failed_at: OffsetDateTime,
}

impl Failure {
    /// The operator's skip, as the dead letter records it; the lease item's audit trail says
    /// who asked and why.
    pub fn skipped() -> Failure {
        let now = OffsetDateTime::now_utc();
        Failure {
            kind: FailureKind::Skipped,
            reason: "skipped by an operator (see the lease's audit trail)".to_owned(),
            status: None,
            attempts: 0,
            first_failed_at: now,
            last_failed_at: now,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Nakadi refused it (422 item `failed`, 422 Problem, 400, 403, 404): retrying cannot help.
    Rejected,
    /// Every retry failed within the attempt and time budget.
    RetriesExhausted,
    /// Larger than `transform::MAX_EVENT_BYTES`: never sent, Nakadi would refuse it.
    TooLarge,
    /// An operator asked for the record to be skipped (`dynamodb-nakadi-relay skip`): never
    /// sent, kept in the dead-letter queue until it is re-driven.
    Skipped,
}

impl FailureKind {
    /// The metric label (`relay_dlq_sent_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Rejected => "rejected",
            FailureKind::RetriesExhausted => "retries_exhausted",
            FailureKind::TooLarge => "too_large",
            FailureKind::Skipped => "skipped",
        }
    }
}

/// Why the publisher cannot start. Token problems name the file, never the token.
#[derive(Debug, thiserror::Error)]
pub enum NakadiError {
    #[error("cannot read the Nakadi token file {}: {source}", path.display())]
    TokenUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Nakadi token file {} is empty", path.display())]
    TokenEmpty { path: PathBuf },
    #[error(
        "the Nakadi token file {} holds characters that are not allowed in an HTTP header",
        path.display()
    )]
    TokenInvalid { path: PathBuf },
    #[error("the Nakadi URL {url:?} cannot be used: {problem}")]
    InvalidUrl { url: String, problem: String },
    #[error("cannot build the HTTP client for Nakadi: {0}")]
    Client(#[source] reqwest::Error),
}

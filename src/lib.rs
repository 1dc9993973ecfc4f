//! dynamodb-nakadi-relay: the message relay of a transactional outbox on DynamoDB. It reads a
//! table's stream directly, turns every record into a Nakadi data change event, publishes it,
//! and dead-letters what finally fails to SQS, checkpointing only what is safe.
//!
//! The map (docs/DESIGN.md tells the design in full):
//! - [`config`]: the `RELAY_*` variables, all checked at start, every problem reported at once.
//! - [`app`]: builds the parts, checks the outside systems, owns the shutdown order.
//! - [`startup`]: the AWS clients, the re-drain loop's parts and the stream lookup that `app`,
//!   [`snapshot`] and [`check`] share, and the start-up error that names the wrong setting.
//! - [`coordinator`]: per stream, the heartbeat task and the rounds that sync shards, plan
//!   (`coordinator::plan`, pure) which leases to take, ask for and hand over, and run the shard
//!   workers.
//! - [`shard`]: one shard's loop; a page's steps after GetRecords, in order:
//!   GetRecords ([`stream::signed`]) → [`stream::page`] (the raw records) → [`route`] (which
//!   event type each record goes to; decided inside the transform when no route filters) →
//!   [`filter`] → [`transform`] → [`delivery`] ([`nakadi`] publishes, [`dlq`] takes what finally failed) →
//!   the checkpoint ([`lease::table`]).
//! - [`stream`]: DynamoDB Streams calls with typed errors (GetRecords signed by the relay), raw
//!   record pages, shard lineage.
//! - [`lease`]: the lease table: conditional writes, fencing counter, checkpoints, heartbeats.
//! - [`transform`]: pure; a stream record → the Nakadi event (item + JSON Patch).
//! - `scan`: where a JSON value ends, found by SIMD scans; under [`stream::page`], [`transform`]
//!   and [`route`].
//! - [`route`]: a table's routes (single-table designs): the first route whose condition holds
//!   on a record's images, the `D`/`C` of a record that changes route, a publisher per route.
//! - [`filter`]: the configured filters in front of it (TTL deletions, event names, dropped
//!   attributes).
//! - [`ids`]: the identifiers passed between modules (shard, stream ARN, sequence number, worker).
//! - [`fence`]: how long this pod may act on its leases after its last successful heartbeat.
//! - [`delivery`]: one page's publish → dead-letter → "how much is done", for every caller.
//! - [`nakadi`]: the publisher: batching, gzip, token file, Nakadi's responses, retries.
//! - [`dlq`]: the SQS dead-letter queue writer and the periodic re-drain loop.
//! - [`event_type`]: the `event-type` subcommand: the Nakadi event type a table's events need,
//!   from the configuration alone.
//! - [`admin`]: the operator's `leases`, `rewind` and `skip` commands, which change leases only
//!   through the lease protocol and leave an audit trail on them.
//! - [`snapshot`]: the `snapshot` subcommand: a parallel, rate-limited, resumable Scan that
//!   publishes the table's current state as `data_op: "S"` events.
//! - [`check`]: the `check` subcommand: the configuration tried against every outside system,
//!   each check bounded in time, nothing written.
//! - [`http`], [`status`], [`metrics`]: probes, `/status`, Prometheus metrics.
//! - [`retry`]: backoff with full jitter; [`shutdown`]: signals; [`telemetry`]: logs.
//! - [`aws_requests`]: the interceptor counting every AWS request attempt by operation.

pub mod admin;
pub mod app;
pub mod aws_requests;
pub mod check;
pub mod config;
pub mod coordinator;
pub mod delivery;
pub mod dlq;
pub mod event_type;
pub mod fence;
pub mod filter;
pub mod http;
pub mod ids;
pub mod lease;
pub mod metrics;
pub mod nakadi;
pub mod retry;
pub mod route;
mod scan;
pub mod shard;
pub mod shutdown;
pub mod snapshot;
pub mod startup;
pub mod status;
pub mod stream;
pub mod telemetry;
pub mod transform;

#[cfg(test)]
mod layers;

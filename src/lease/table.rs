//! The lease table in DynamoDB. Every change of a lease is a conditional write on its owner and
//! counter, as KCL does: a pod that lost a lease (because it paused longer than the lease
//! duration and another pod took it) finds out at its next write and writes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TransactWriteItem,
    Update,
};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::wire::RawScan;
use super::{AuditEntry, Checkpoint, Heartbeat, Lease, Liveness, OwnedLease, StreamStart};
use crate::config::InitialPosition;
use crate::ids::{ShardId, StreamArn};
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The conditional write failed: another worker owns the lease now.
    #[error("lease {0} is owned by another worker now")]
    Lost(String),
    #[error("lease table {0} does not exist (set RELAY_CREATE_LEASE_TABLE=true to create it)")]
    TableMissing(String),
    /// Throttling, 5xx, timeouts: try again later.
    #[error("lease table call {operation} failed: {message}")]
    Unavailable {
        operation: &'static str,
        message: String,
    },
}

impl LeaseError {
    fn timed_out(operation: &'static str, after: Duration) -> LeaseError {
        metrics::aws_error(operation, "timeout");
        LeaseError::Unavailable {
            operation,
            message: format!("no answer within {}", humantime::format_duration(after)),
        }
    }

    pub(crate) fn from_sdk<E, R>(
        operation: &'static str,
        key: &str,
        err: SdkError<E, R>,
    ) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let (kind, classified) = match err.code() {
            // A transaction is canceled when one of its conditions fails: the lease take's.
            Some("ConditionalCheckFailedException" | "TransactionCanceledException") => {
                ("lease_lost", LeaseError::Lost(key.to_owned()))
            }
            code => {
                let kind = match code {
                    Some(
                        "ProvisionedThroughputExceededException"
                        | "ThrottlingException"
                        | "RequestLimitExceeded",
                    ) => "throttling",
                    Some("ResourceNotFoundException") => "not_found",
                    _ => "other",
                };
                let message = aws_sdk_dynamodb::error::DisplayErrorContext(&err).to_string();
                (kind, LeaseError::Unavailable { operation, message })
            }
        };
        metrics::aws_error(operation, kind);
        classified
    }
}

/// Lease items and heartbeats of one stream in one table.
#[derive(Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    stream_arn: StreamArn,
    /// Every call of the lease protocol, retries included, ends within this: a heartbeat or a
    /// checkpoint that hangs must not outlive the lease it protects.
    call_timeout: Duration,
}

pub(crate) const KEY: &str = "lease_key";
pub(super) const KIND_SHARD: &str = "shard";
pub(super) const KIND_WORKER: &str = "worker";
const KIND_START: &str = "stream_start";

/// The lease table's key: [`KEY`], a string, the hash key and the only key.
pub(crate) fn key_schema() -> (AttributeDefinition, KeySchemaElement) {
    (
        AttributeDefinition::builder()
            .attribute_name(KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("complete attribute definition"),
        KeySchemaElement::builder()
            .attribute_name(KEY)
            .key_type(KeyType::Hash)
            .build()
            .expect("complete key schema"),
    )
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn now() -> AttributeValue {
    s(OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("UTC time formats as RFC 3339"))
}

/// The clauses an operator write adds to its fencing: each starts with its separator.
struct Change<'a> {
    set: &'a str,
    remove: &'a str,
    add: &'a str,
}

/// Everything read from the table in one scan.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub leases: Vec<Lease>,
    pub workers: Vec<Heartbeat>,
}

impl LeaseTable {
    pub fn new(
        client: Client,
        table: String,
        stream_arn: StreamArn,
        call_timeout: Duration,
    ) -> LeaseTable {
        LeaseTable {
            client,
            table,
            stream_arn,
            call_timeout,
        }
    }

    /// Runs one call of the lease protocol within `call_timeout`.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, LeaseError>>,
    ) -> Result<T, LeaseError> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .unwrap_or_else(|_| Err(LeaseError::timed_out(operation, self.call_timeout)))
    }

    /// A call whose every error is classified the same way, within the bound.
    fn send<'a, T: 'a, E, R>(
        &'a self,
        operation: &'static str,
        key: &'a str,
        call: impl Future<Output = Result<T, SdkError<E, R>>> + 'a,
    ) -> impl Future<Output = Result<T, LeaseError>> + 'a
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        // Boxed before anything wraps it: the SDK's futures are large, and each async layer
        // around one holds it again, which overflows a test thread's stack in debug builds.
        let call = Box::pin(call);
        self.bounded(operation, async move {
            call.await
                .map_err(|e| LeaseError::from_sdk(operation, key, e))
        })
    }

    /// A conditional write that counts as done when its condition failed on an item that
    /// already shows this very write (`ours`): an earlier attempt committed and its answer was
    /// lost, and the SDK's retry found the condition moved. `old` finds that item in the error.
    fn write_once<'a, T: 'a, E, R>(
        &'a self,
        operation: &'static str,
        key: &'a str,
        call: impl Future<Output = Result<T, SdkError<E, R>>> + 'a,
        old: fn(&E) -> Option<&Item>,
        ours: impl FnOnce(&Item) -> bool + 'a,
    ) -> impl Future<Output = Result<(), LeaseError>> + 'a
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let call = Box::pin(call);
        self.send(operation, key, async move {
            match call.await {
                Ok(_) => Ok(()),
                Err(e) if e.as_service_error().and_then(old).is_some_and(ours) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn start_key(&self) -> String {
        format!("{}|start", self.stream_arn)
    }

    pub fn lease_key(&self, shard: &ShardId) -> String {
        format!("{}|{}", self.stream_arn, shard)
    }

    fn worker_key(&self, worker: &str) -> String {
        format!("{}|worker:{}", self.stream_arn, worker)
    }

    /// Checks the table exists, creating it (on-demand billing) when asked to.
    pub async fn ensure_exists(&self, create: bool) -> Result<(), LeaseError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                if !create {
                    return Err(LeaseError::TableMissing(self.table.clone()));
                }
            }
            Err(e) => return Err(LeaseError::from_sdk("DescribeTable", &self.table, e)),
        }
        let (definition, key) = key_schema();
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(definition)
            .key_schema(key)
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Another pod created it at the same moment.
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(LeaseError::from_sdk("CreateTable", &self.table, e)),
        }
        tracing::info!(table = %self.table, "created the lease table");
        for _ in 0..120 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| LeaseError::from_sdk("DescribeTable", &self.table, e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(LeaseError::Unavailable {
            operation: "CreateTable",
            message: format!("table {} did not become ACTIVE within 60 s", self.table),
        })
    }

    /// Every lease and heartbeat of this stream. Strongly consistent, so a worker never acts on
    /// a counter older than the last write it could have seen.
    pub async fn scan(&self) -> Result<Snapshot, LeaseError> {
        let mut snapshot = Snapshot::default();
        let mut start: Option<Item> = None;
        loop {
            // Its items are read by `wire`, not by the SDK (why: `wire`'s header). A per-call
            // interceptor costs the SDK a configuration override, once a round, not per poll.
            let raw = RawScan::default();
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("stream_arn = :arn")
                .expression_attribute_values(":arn", s(self.stream_arn.as_str()))
                .set_exclusive_start_key(start.take())
                .customize()
                .interceptor(raw.clone())
                .send();
            let out = self.send("Scan", &self.table, page).await?;
            let page = raw
                .page()
                .unwrap_or_else(|| Err("a Scan answer without a body".to_owned()))
                .map_err(|message| LeaseError::Unavailable {
                    operation: "Scan",
                    message,
                })?;
            snapshot.leases.extend(page.leases);
            snapshot.workers.extend(page.workers);
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(snapshot),
            }
        }
    }

    /// The stream's start, deciding it when no pod has yet: a conditional put that only the
    /// first pod ever wins. A start "now" (`LATEST`) is DynamoDB's time from the `Date` header of
    /// the read just before the put, not this pod's clock, so it never lies after a write that
    /// DynamoDB accepted after the decision. `has_leases`: an earlier version already reads this
    /// stream from where its leases stand, so nothing is skipped.
    pub async fn stream_start(
        &self,
        configured: InitialPosition,
        has_leases: bool,
    ) -> Result<StreamStart, LeaseError> {
        let key = self.start_key();
        let date = ServiceDate::default();
        if let Some(start) = self.read_start(&key, &date).await? {
            return Ok(start);
        }
        let (position, skip_before_ms) = match configured {
            _ if has_leases => ("TRIM_HORIZON".to_owned(), None),
            InitialPosition::TrimHorizon => ("TRIM_HORIZON".to_owned(), None),
            InitialPosition::Latest => ("LATEST".to_owned(), Some(date.millis())),
            InitialPosition::At(at) => (
                at.format(&Rfc3339).expect("UTC time formats as RFC 3339"),
                Some((at.unix_timestamp_nanos() / 1_000_000) as i64),
            ),
        };
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(&key))
            .item("kind", s(KIND_START))
            .item("stream_arn", s(self.stream_arn.as_str()))
            .item("initial_position", s(&position))
            .item("decided_at", now())
            .condition_expression("attribute_not_exists(lease_key)");
        if let Some(ms) = skip_before_ms {
            put = put.item("skip_before_ms", AttributeValue::N(ms.to_string()));
        }
        let put = put.send();
        let decided = self.send("PutItem", &key, condition_held(put)).await?;
        if decided {
            tracing::info!(stream_arn = %self.stream_arn, %position, ?skip_before_ms, "decided where this stream is first read");
            return Ok(StreamStart {
                position,
                skip_before_ms,
            });
        }
        // Another pod decided first: its decision counts.
        self.read_start(&key, &date)
            .await?
            .ok_or_else(|| LeaseError::Unavailable {
                operation: "GetItem",
                message: format!("the stream start item {key} is unreadable"),
            })
    }

    /// The stream start item, if there is one; `date` keeps the response's `Date` header.
    async fn read_start(
        &self,
        key: &str,
        date: &ServiceDate,
    ) -> Result<Option<StreamStart>, LeaseError> {
        let read = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .consistent_read(true)
            .customize()
            .interceptor(date.clone())
            .send();
        let out = self.send("GetItem", key, read).await?;
        Ok(out.item.as_ref().and_then(parse_start))
    }

    /// Creates a free lease for a newly found shard; false when it exists already (another pod,
    /// or an earlier sync, created it).
    pub async fn create(&self, shard: &ShardId, parents: &[ShardId]) -> Result<bool, LeaseError> {
        let key = self.lease_key(shard);
        let parents = AttributeValue::L(parents.iter().map(|p| s(p.as_str())).collect());
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(&key))
            .item("kind", s(KIND_SHARD))
            .item("stream_arn", s(self.stream_arn.as_str()))
            .item("shard_id", s(shard.as_str()))
            .item("counter", n(0))
            .item("checkpoint", s(Checkpoint::TrimHorizon.as_str()))
            .item("parent_shard_ids", parents)
            .item("owner_switches", n(0))
            .item("updated_at", now())
            .condition_expression("attribute_not_exists(lease_key)")
            .send();
        self.send("PutItem", &key, condition_held(put)).await
    }

    /// Takes a lease that is free, or whose owner fell silent or exited: conditioned on the
    /// lease's counter as observed, so of two pods racing for it only one wins, and, when it has
    /// an owner, in one transaction with a check that the owner's heartbeat is still what was
    /// observed, so an owner that beat again since keeps its lease.
    pub async fn take(
        &self,
        lease: &Lease,
        me: &str,
        owner: Option<&(String, Liveness)>,
    ) -> Result<OwnedLease, LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        let next = lease.counter + 1;
        let switches = lease.owner_switches + u64::from(lease.owner.as_deref() != Some(me));
        // Names this take alone: owner and counter could also be this pod's own later write
        // (a lease it finished), which must not pass for this take having committed.
        let token = uuid::Uuid::new_v4().to_string();
        let update = Update::builder()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression(
                "SET #owner = :me, #counter = :next, owner_switches = :switches, take_token = :token, updated_at = :now REMOVE handoff_to",
            )
            .expression_attribute_values(":token", s(&token))
            .condition_expression("#counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":seen", n(lease.counter))
            .expression_attribute_values(":switches", n(switches))
            .expression_attribute_values(":now", now())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .expect("complete update");
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if let Some((owner, liveness)) = owner {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .key(KEY, s(self.worker_key(owner)));
            let check = match liveness {
                Liveness::Silent { counter } => check
                    .condition_expression("#counter = :beat")
                    .expression_attribute_names("#counter", "counter")
                    .expression_attribute_values(":beat", n(*counter)),
                _ => check.condition_expression("attribute_not_exists(lease_key)"),
            };
            items.push(
                TransactWriteItem::builder()
                    .condition_check(check.build().expect("complete condition check"))
                    .build(),
            );
        }
        let call = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send();
        self.write_once("TransactWriteItems", &key, call, canceled_item, |old| {
            get_s(old, "take_token") == Some(token.as_str())
        })
        .await?;
        Ok(OwnedLease::new(
            lease.shard_id.clone(),
            key,
            next,
            lease.checkpoint.clone(),
        ))
    }

    /// Asks the owner of a lease to hand it over at its next page boundary. Conditioned on the
    /// counter, so a request never lands on a lease that changed hands since it was read; the
    /// counter itself is left alone, so the owner's checkpoints keep working.
    pub async fn request_handoff(&self, lease: &Lease, me: &str) -> Result<(), LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        let call = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression("SET handoff_to = :me")
            .condition_expression("#owner = :owner AND #counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":owner", s(lease.owner.as_deref().unwrap_or_default()))
            .expression_attribute_values(":seen", n(lease.counter))
            .send();
        self.send("UpdateItem", &key, call).await.map(|_| ())
    }

    /// One conditional write on an owned lease: `update` is the whole update expression. A
    /// condition that fails on an item that already shows this very write (an earlier attempt
    /// committed, its answer was lost) counts as success.
    async fn write_owned(
        &self,
        lease: &OwnedLease,
        me: &str,
        update: &str,
        checkpoint: Option<&Checkpoint>,
        extra: &[(&str, AttributeValue)],
    ) -> Result<(), LeaseError> {
        let mut state = lease.state.lock().await;
        let next = state.counter + 1;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&lease.lease_key))
            .update_expression(update)
            .condition_expression("#owner = :me AND #counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":seen", n(state.counter))
            .expression_attribute_values(":now", now())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(cp) = checkpoint {
            req = req.expression_attribute_values(":cp", s(cp.as_str()));
        }
        for (name, value) in extra {
            req = req.expression_attribute_values(*name, value.clone());
        }
        let call = req.send();
        let releasing = update.starts_with("REMOVE #owner");
        self.write_once(
            "UpdateItem",
            &lease.lease_key,
            call,
            condition_item,
            |old| {
                get_n(old, "counter") == Some(next)
                    && (releasing || get_s(old, "owner") == Some(me))
            },
        )
        .await?;
        state.counter = next;
        if let Some(cp) = checkpoint {
            lease.wrote(&mut state, cp);
        }
        Ok(())
    }

    /// Moves the checkpoint. A record's checkpoint keeps when its newest delivered event was
    /// written (`created_ms`), if known. SHARD_END also keeps the checkpoint it replaces, the
    /// shard's last record, as `last_sequence_number`, which the children's workers compare
    /// their first record with; when the shard never reached a record there is none to keep.
    /// Versions that do not know these attributes leave them alone.
    pub async fn checkpoint(
        &self,
        lease: &OwnedLease,
        me: &str,
        checkpoint: &Checkpoint,
        created_ms: Option<i64>,
    ) -> Result<(), LeaseError> {
        let last = match checkpoint {
            Checkpoint::ShardEnd => match lease.checkpoint().await {
                Checkpoint::Sequence(seq) => Some(seq),
                _ => None,
            },
            _ => None,
        };
        let mut update = "SET #counter = :next, checkpoint = :cp, updated_at = :now".to_owned();
        let mut extra = Vec::new();
        if let Some(last) = last {
            update.push_str(", last_sequence_number = :last");
            extra.push((":last", s(last)));
        }
        if let Some(ms) = created_ms {
            update.push_str(", checkpoint_created_ms = :created");
            extra.push((":created", AttributeValue::N(ms.to_string())));
        }
        self.write_owned(lease, me, &update, Some(checkpoint), &extra)
            .await
    }

    /// An operator's rewind: the lease reads its shard again from TRIM_HORIZON, skipping records
    /// created before `replay_from_ms` (0: none). Like a take by the operator: the counter moves
    /// and the owner is removed, so the pod reading the shard stops without a checkpoint (its
    /// writes are conditioned on the counter) and any pod takes the lease afresh, once its
    /// parents are finished again. False when the lease changed since `lease` was read.
    pub async fn rewind(
        &self,
        lease: &Lease,
        replay_from_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, LeaseError> {
        self.operator_write(
            lease,
            Change {
                set: ", checkpoint = :cp, replay_from_ms = :from",
                remove: ", last_sequence_number, checkpoint_created_ms",
                add: "",
            },
            &[
                (":cp", s(Checkpoint::TrimHorizon.as_str())),
                (":from", AttributeValue::N(replay_from_ms.to_string())),
            ],
            audit,
        )
        .await
    }

    /// An operator's skip: the record's event goes to the dead-letter queue instead of Nakadi.
    /// Written like [`Self::rewind`], so a worker blocked on that record stops and the next
    /// owner reads the mark with the lease. False when the lease changed since it was read.
    pub async fn skip(
        &self,
        lease: &Lease,
        sequence_number: &str,
        audit: &AuditEntry,
    ) -> Result<bool, LeaseError> {
        self.operator_write(
            lease,
            Change {
                set: "",
                remove: "",
                add: " ADD skip_sequence_numbers :skip",
            },
            &[(
                ":skip",
                AttributeValue::Ss(vec![sequence_number.to_owned()]),
            )],
            audit,
        )
        .await
    }

    /// One operator write: `change` plus the fencing and the audit entry, conditioned on the
    /// counter as read.
    async fn operator_write(
        &self,
        lease: &Lease,
        change: Change<'_>,
        values: &[(&str, AttributeValue)],
        audit: &AuditEntry,
    ) -> Result<bool, LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        let Change { set, remove, add } = change;
        let update = format!(
            "SET #counter = :next, updated_at = :now, audit = list_append(if_not_exists(audit, :none), :entry){set} REMOVE #owner, handoff_to{remove}{add}"
        );
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression(update)
            .condition_expression("#counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":next", n(lease.counter + 1))
            .expression_attribute_values(":seen", n(lease.counter))
            .expression_attribute_values(":now", now())
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":entry", audit_value(audit));
        for (name, value) in values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        self.send("UpdateItem", &key, condition_held(req.send()))
            .await
    }

    /// Finishes the lease of a shard that aged out of the stream before it was read to its end,
    /// so its children start; what it stood at is kept on the item for the operator.
    pub async fn finish_trimmed(&self, lease: &OwnedLease, me: &str) -> Result<(), LeaseError> {
        let stood_at = lease.checkpoint().await;
        self.write_owned(
            lease,
            me,
            "SET #counter = :next, checkpoint = :cp, trimmed_at = :now, trimmed_from = :from, updated_at = :now",
            Some(&Checkpoint::ShardEnd),
            &[(":from", s(stood_at.as_str()))],
        )
        .await
    }

    /// Gives the lease up so another pod takes it at its next round, without waiting for expiry.
    /// A hand-over request stays on the item: the lease is kept for the pod that asked (see
    /// `plan`), or this pod, still short of its share, would take it straight back.
    pub async fn release(&self, lease: &OwnedLease, me: &str) -> Result<(), LeaseError> {
        self.write_owned(
            lease,
            me,
            "REMOVE #owner SET #counter = :next, updated_at = :now",
            None,
            &[],
        )
        .await
    }

    /// This pod's heartbeat: its counter moves every beat while the pod is alive, and other pods
    /// tell its liveness from that alone. It carries the configuration fingerprint.
    pub async fn heartbeat(&self, me: &str, fingerprint: &str) -> Result<(), LeaseError> {
        let key = self.worker_key(me);
        let call = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression(
                "SET #kind = :kind, stream_arn = :arn, worker_id = :me, fingerprint = :fp, updated_at = :now ADD #counter :one",
            )
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":kind", s(KIND_WORKER))
            .expression_attribute_values(":arn", s(self.stream_arn.as_str()))
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":fp", s(fingerprint))
            .expression_attribute_values(":now", now())
            .expression_attribute_values(":one", n(1))
            .send();
        self.send("UpdateItem", &key, call).await.map(|_| ())
    }

    /// Removes this pod's heartbeat on a clean exit, so the others rebalance at once.
    pub async fn remove_heartbeat(&self, me: &str) -> Result<(), LeaseError> {
        let key = self.worker_key(me);
        let call = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .send();
        self.send("DeleteItem", &key, call).await.map(|_| ())
    }

    /// Deletes the lease of a finished shard that the stream no longer lists; conditioned on the
    /// counter and on the checkpoint, so a lease somebody just wrote, or an operator's rewind
    /// sent back to reading, is kept.
    pub async fn delete(&self, lease: &Lease) -> Result<(), LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        let call = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .expression_attribute_values(":end", s(Checkpoint::ShardEnd.as_str()))
            .expression_attribute_values(":seen", n(lease.counter))
            .expression_attribute_names("#counter", "counter")
            .condition_expression("checkpoint = :end AND #counter = :seen")
            .send();
        self.send("DeleteItem", &key, condition_held(call))
            .await
            .map(|_| ())
    }
}

type Item = HashMap<String, AttributeValue>;

/// The lease item as the failed condition of a take's transaction saw it.
fn canceled_item(e: &TransactWriteItemsError) -> Option<&Item> {
    match e {
        TransactWriteItemsError::TransactionCanceledException(c) => {
            c.cancellation_reasons().first()?.item()
        }
        _ => None,
    }
}

/// The lease item as the failed condition of an update saw it.
fn condition_item(e: &UpdateItemError) -> Option<&Item> {
    match e {
        UpdateItemError::ConditionalCheckFailedException(c) => c.item(),
        _ => None,
    }
}

/// A conditional call's failed condition as an answer rather than an error: whether the
/// condition held and the write was made.
fn condition_held<T, E: ProvideErrorMetadata, R>(
    call: impl Future<Output = Result<T, SdkError<E, R>>>,
) -> impl Future<Output = Result<bool, SdkError<E, R>>> {
    let call = Box::pin(call);
    async move {
        match call.await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The `Date` header of a DynamoDB response: the service's clock, for a start time that no
/// pod's clock can move.
#[derive(Debug, Clone, Default)]
struct ServiceDate(Arc<std::sync::Mutex<Option<String>>>);

impl ServiceDate {
    /// Milliseconds since the epoch; this pod's clock when no parseable header came.
    fn millis(&self) -> i64 {
        let header = self.0.lock().expect("date lock").clone();
        let at = header
            .as_deref()
            .and_then(|h| httpdate::parse_http_date(h).ok())
            .unwrap_or_else(|| {
                tracing::warn!(
                    ?header,
                    "DynamoDB sent no usable Date header; the stream start is this pod's clock"
                );
                std::time::SystemTime::now()
            });
        at.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

impl Intercept for ServiceDate {
    fn name(&self) -> &'static str {
        "ServiceDate"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            *self.0.lock().expect("date lock") = Some(date.to_owned());
        }
        Ok(())
    }
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(crate) fn get_n(item: &Item, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn audit_value(entry: &AuditEntry) -> AttributeValue {
    AttributeValue::L(vec![AttributeValue::M(
        [
            ("action", &entry.action),
            ("by", &entry.by),
            ("reason", &entry.reason),
            ("at", &entry.at),
            ("change", &entry.change),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), s(v)))
        .collect(),
    )])
}

fn parse_start(item: &Item) -> Option<StreamStart> {
    Some(StreamStart {
        position: get_s(item, "initial_position")?.to_owned(),
        skip_before_ms: item
            .get("skip_before_ms")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok()),
    })
}

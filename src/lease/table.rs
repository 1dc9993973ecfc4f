//! The lease table in DynamoDB. Every change of a lease is a conditional write on its owner and
//! counter, as KCL does: a pod that lost a lease (because it paused longer than the lease
//! duration and another pod took it) finds out at its next write and writes nothing.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Checkpoint, Heartbeat, Lease, OwnedLease};
use crate::metrics;
use crate::stream::ShardId;

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
    fn from_sdk<E, R>(operation: &'static str, key: &str, err: SdkError<E, R>) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let (kind, classified) = match err.code() {
            Some("ConditionalCheckFailedException") => {
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
    stream_arn: String,
}

const KEY: &str = "lease_key";
const KIND_SHARD: &str = "shard";
const KIND_WORKER: &str = "worker";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn now() -> AttributeValue {
    s(OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("UTC time formats as RFC 3339"))
}

/// Everything read from the table in one scan.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub leases: Vec<Lease>,
    pub workers: Vec<Heartbeat>,
}

impl LeaseTable {
    pub fn new(client: Client, table: String, stream_arn: String) -> LeaseTable {
        LeaseTable {
            client,
            table,
            stream_arn,
        }
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
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("complete attribute definition"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("complete key schema"),
            )
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
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("stream_arn = :arn")
                .expression_attribute_values(":arn", s(&self.stream_arn))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| LeaseError::from_sdk("Scan", &self.table, e))?;
            for item in out.items() {
                match item
                    .get("kind")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                {
                    Some(KIND_WORKER) => {
                        if let Some(hb) = parse_heartbeat(item) {
                            snapshot.workers.push(hb);
                        }
                    }
                    Some(KIND_SHARD) => {
                        if let Some(lease) = parse_lease(item) {
                            snapshot.leases.push(lease);
                        }
                    }
                    _ => {}
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(snapshot),
            }
        }
    }

    /// Creates a free lease for a newly found shard; false when it exists already (another pod,
    /// or an earlier sync, created it).
    pub async fn create(
        &self,
        shard: &ShardId,
        parents: &[ShardId],
        checkpoint: &Checkpoint,
    ) -> Result<bool, LeaseError> {
        let key = self.lease_key(shard);
        let parents = AttributeValue::L(parents.iter().map(|p| s(p.as_str())).collect());
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(&key))
            .item("kind", s(KIND_SHARD))
            .item("stream_arn", s(&self.stream_arn))
            .item("shard_id", s(shard.as_str()))
            .item("counter", n(0))
            .item("checkpoint", s(checkpoint.as_str()))
            .item("parent_shard_ids", parents)
            .item("owner_switches", n(0))
            .item("updated_at", now())
            .condition_expression("attribute_not_exists(lease_key)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(LeaseError::from_sdk("PutItem", &key, e)),
        }
    }

    /// Takes a lease that is free, expired, or (balancing) owned by a worker with too many:
    /// conditioned on the counter this pod observed, so of two pods racing for it only one wins.
    pub async fn take(&self, lease: &Lease, me: &str) -> Result<OwnedLease, LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        let next = lease.counter + 1;
        let switches = lease.owner_switches + u64::from(lease.owner.as_deref() != Some(me));
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression(
                "SET #owner = :me, #counter = :next, owner_switches = :switches, updated_at = :now REMOVE handoff_to",
            )
            .condition_expression("#counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":seen", n(lease.counter))
            .expression_attribute_values(":switches", n(switches))
            .expression_attribute_values(":now", now())
            .send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        Ok(OwnedLease::new(
            lease.shard_id.clone(),
            key,
            next,
            lease.checkpoint.clone(),
        ))
    }

    /// Asks the owner of a lease to hand it over. The counter is left alone, so the owner's
    /// renewals keep working; it sees the request in its next read of the table.
    pub async fn request_handoff(&self, lease: &Lease, me: &str) -> Result<(), LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        self.client
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
            .send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        Ok(())
    }

    /// One conditional write on an owned lease: `set` is the rest of the update expression.
    async fn write_owned(
        &self,
        lease: &OwnedLease,
        me: &str,
        update: &str,
        checkpoint: Option<&Checkpoint>,
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
            .expression_attribute_values(":now", now());
        if let Some(cp) = checkpoint {
            req = req.expression_attribute_values(":cp", s(cp.as_str()));
        }
        req.send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &lease.lease_key, e))?;
        state.counter = next;
        if let Some(cp) = checkpoint {
            state.checkpoint = cp.clone();
        }
        Ok(())
    }

    pub async fn renew(&self, lease: &OwnedLease, me: &str) -> Result<(), LeaseError> {
        self.write_owned(lease, me, "SET #counter = :next, updated_at = :now", None)
            .await
    }

    pub async fn checkpoint(
        &self,
        lease: &OwnedLease,
        me: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), LeaseError> {
        self.write_owned(
            lease,
            me,
            "SET #counter = :next, checkpoint = :cp, updated_at = :now",
            Some(checkpoint),
        )
        .await
    }

    /// Gives the lease up so another pod takes it at its next round, without waiting for expiry.
    pub async fn release(&self, lease: &OwnedLease, me: &str) -> Result<(), LeaseError> {
        self.write_owned(
            lease,
            me,
            "REMOVE #owner, handoff_to SET #counter = :next, updated_at = :now",
            None,
        )
        .await
    }

    /// This pod's heartbeat: its counter moves every round while the pod is alive.
    pub async fn heartbeat(&self, me: &str) -> Result<(), LeaseError> {
        let key = self.worker_key(me);
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression(
                "SET #kind = :kind, stream_arn = :arn, worker_id = :me, updated_at = :now ADD #counter :one",
            )
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":kind", s(KIND_WORKER))
            .expression_attribute_values(":arn", s(&self.stream_arn))
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":now", now())
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        Ok(())
    }

    /// Removes this pod's heartbeat on a clean exit, so the others rebalance at once.
    pub async fn remove_heartbeat(&self, me: &str) -> Result<(), LeaseError> {
        let key = self.worker_key(me);
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .send()
            .await
            .map_err(|e| LeaseError::from_sdk("DeleteItem", &key, e))?;
        Ok(())
    }

    /// Deletes the lease of a finished shard that the stream no longer lists; conditioned on the
    /// counter so a lease somebody just wrote is kept.
    pub async fn delete(&self, lease: &Lease) -> Result<(), LeaseError> {
        let key = self.lease_key(&lease.shard_id);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .condition_expression("#counter = :seen")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":seen", n(lease.counter))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(LeaseError::from_sdk("DeleteItem", &key, e)),
        }
    }
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn parse_lease(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let parents = match item.get("parent_shard_ids") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .filter_map(|v| v.as_s().ok())
            .map(ShardId::new)
            .collect(),
        _ => Vec::new(),
    };
    Some(Lease {
        shard_id: ShardId::new(get_s(item, "shard_id")?),
        owner: get_s(item, "owner").map(str::to_owned),
        counter: get_n(item, "counter")?,
        checkpoint: Checkpoint::parse(get_s(item, "checkpoint")?),
        parent_shard_ids: parents,
        owner_switches: get_n(item, "owner_switches").unwrap_or(0),
        handoff_to: get_s(item, "handoff_to").map(str::to_owned),
    })
}

fn parse_heartbeat(item: &HashMap<String, AttributeValue>) -> Option<Heartbeat> {
    Some(Heartbeat {
        worker_id: get_s(item, "worker_id")?.to_owned(),
        counter: get_n(item, "counter")?,
    })
}

/// A table's snapshot as the lease table records it: one run item, and one item per segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRun {
    /// Fixed when the run starts: a segment's saved LastEvaluatedKey only means something for
    /// the segment count it was scanned with.
    pub segments: u32,
    /// Bumped by `--restart`, so segment progress of an earlier run is recognised as stale.
    pub generation: u64,
    pub done: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// Where one segment of a snapshot stands, as this process claimed and last wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentProgress {
    pub segment: u32,
    /// The Scan's LastEvaluatedKey after the last page that was delivered or dead-lettered; None
    /// before the first page.
    pub last_key: Option<HashMap<String, AttributeValue>>,
    pub done: bool,
    /// Items read, published and dead-lettered in this segment, over all runs of the generation.
    pub items: u64,
    pub published: u64,
    pub dead_lettered: u64,
    /// The fencing token: every write is conditioned on it, so of two processes scanning one
    /// segment only the one that claimed it last can move its progress.
    counter: u64,
}

const KIND_SNAPSHOT: &str = "snapshot";
const KIND_SNAPSHOT_SEGMENT: &str = "snapshot_segment";

fn snapshot_key(table: &str) -> String {
    format!("snapshot|{table}")
}

fn segment_key(table: &str, segment: u32) -> String {
    format!("snapshot|{table}|segment|{segment}")
}

fn get_bool(item: &HashMap<String, AttributeValue>, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

/// Snapshot progress. Its items are keyed `snapshot|<table>` and `snapshot|<table>|segment|<n>`,
/// apart from the shard leases (`<stream ARN>|<shard id>`) and without `stream_arn`, so the relay's
/// lease scan passes them by and one lease table serves both.
impl LeaseTable {
    /// One item, read consistently: progress written by a process that just died must be seen.
    async fn read(&self, key: &str) -> Result<Option<HashMap<String, AttributeValue>>, LeaseError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LeaseError::from_sdk("GetItem", key, e))?;
        Ok(out.item)
    }

    pub async fn snapshot_run(&self, table: &str) -> Result<Option<SnapshotRun>, LeaseError> {
        let item = self.read(&snapshot_key(table)).await?;
        Ok(item.as_ref().and_then(|item| {
            Some(SnapshotRun {
                segments: u32::try_from(get_n(item, "total_segments")?).ok()?,
                generation: get_n(item, "generation")?,
                done: get_bool(item, "done"),
                started_at: get_s(item, "started_at")?.to_owned(),
                finished_at: get_s(item, "finished_at").map(str::to_owned),
            })
        }))
    }

    /// Starts a run (the first, or a new generation after `previous` for `--restart`);
    /// conditioned on what was read, so of two processes starting at once only one starts it.
    pub async fn start_snapshot_run(
        &self,
        table: &str,
        segments: u32,
        previous: Option<&SnapshotRun>,
    ) -> Result<SnapshotRun, LeaseError> {
        let key = snapshot_key(table);
        let generation = previous.map_or(1, |p| p.generation + 1);
        let started_at = now();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression(
                "SET #kind = :kind, #table = :table, total_segments = :segments, generation = :gen, done = :false, started_at = :now REMOVE finished_at",
            )
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#table", "table")
            .expression_attribute_values(":kind", s(KIND_SNAPSHOT))
            .expression_attribute_values(":table", s(table))
            .expression_attribute_values(":segments", n(u64::from(segments)))
            .expression_attribute_values(":gen", n(generation))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":now", started_at.clone());
        req = match previous {
            None => req.condition_expression("attribute_not_exists(lease_key)"),
            Some(p) => req
                .condition_expression("generation = :seen")
                .expression_attribute_values(":seen", n(p.generation)),
        };
        req.send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        Ok(SnapshotRun {
            segments,
            generation,
            done: false,
            started_at: started_at.as_s().cloned().unwrap_or_default(),
            finished_at: None,
        })
    }

    /// Marks the run finished, unless a `--restart` started another generation meanwhile.
    pub async fn finish_snapshot_run(
        &self,
        table: &str,
        run: &SnapshotRun,
    ) -> Result<(), LeaseError> {
        let key = snapshot_key(table);
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .update_expression("SET done = :true, finished_at = :now")
            .condition_expression("generation = :gen")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":now", now())
            .expression_attribute_values(":gen", n(run.generation))
            .send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        Ok(())
    }

    /// Takes a segment over for this process: its progress when it belongs to `run`'s
    /// generation, else a fresh start. Whoever scanned it before finds out at its next write
    /// ([`LeaseError::Lost`]) and stops, so a segment never has two writers of its progress.
    pub async fn claim_segment(
        &self,
        table: &str,
        run: &SnapshotRun,
        segment: u32,
        me: &str,
    ) -> Result<SegmentProgress, LeaseError> {
        let key = segment_key(table, segment);
        let item = self.read(&key).await?;
        let stored = item.as_ref();
        let seen = stored.and_then(|item| get_n(item, "counter"));
        let current = stored.filter(|item| get_n(item, "generation") == Some(run.generation));
        let mut progress = SegmentProgress {
            segment,
            last_key: current
                .and_then(|item| item.get("last_key"))
                .and_then(|v| v.as_m().ok())
                .cloned(),
            done: current.is_some_and(|item| get_bool(item, "done")),
            items: current.and_then(|i| get_n(i, "items")).unwrap_or(0),
            published: current.and_then(|i| get_n(i, "published")).unwrap_or(0),
            dead_lettered: current.and_then(|i| get_n(i, "dead_lettered")).unwrap_or(0),
            counter: seen.map_or(0, |c| c + 1),
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#table", "table")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":kind", s(KIND_SNAPSHOT_SEGMENT))
            .expression_attribute_values(":table", s(table))
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":next", n(progress.counter))
            .expression_attribute_values(":gen", n(run.generation))
            .expression_attribute_values(":now", now());
        let claim = "SET #kind = :kind, #table = :table, #owner = :me, #counter = :next, generation = :gen, updated_at = :now";
        req = if current.is_some() {
            req.update_expression(claim)
        } else {
            progress = SegmentProgress {
                last_key: None,
                done: false,
                items: 0,
                published: 0,
                dead_lettered: 0,
                ..progress
            };
            req.update_expression(format!(
                "{claim}, done = :false, #items = :zero, published = :zero, dead_lettered = :zero REMOVE last_key"
            ))
            .expression_attribute_names("#items", "items")
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":zero", n(0))
        };
        req = match seen {
            Some(counter) => req
                .condition_expression("#counter = :seen")
                .expression_attribute_values(":seen", n(counter)),
            None => req.condition_expression("attribute_not_exists(lease_key)"),
        };
        req.send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        Ok(progress)
    }

    /// Writes a segment's progress after a page, conditioned on this process still holding it.
    pub async fn save_segment(
        &self,
        table: &str,
        progress: &mut SegmentProgress,
        me: &str,
    ) -> Result<(), LeaseError> {
        let key = segment_key(table, progress.segment);
        let next = progress.counter + 1;
        let set = "SET #counter = :next, done = :done, #items = :items, published = :published, dead_lettered = :dead, updated_at = :now";
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&key))
            .condition_expression("#owner = :me AND #counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_names("#items", "items")
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":seen", n(progress.counter))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":done", AttributeValue::Bool(progress.done))
            .expression_attribute_values(":items", n(progress.items))
            .expression_attribute_values(":published", n(progress.published))
            .expression_attribute_values(":dead", n(progress.dead_lettered))
            .expression_attribute_values(":now", now());
        req = match &progress.last_key {
            Some(last) => req
                .update_expression(format!("{set}, last_key = :last"))
                .expression_attribute_values(":last", AttributeValue::M(last.clone())),
            None => req.update_expression(format!("{set} REMOVE last_key")),
        };
        req.send()
            .await
            .map_err(|e| LeaseError::from_sdk("UpdateItem", &key, e))?;
        progress.counter = next;
        Ok(())
    }
}

//! Where a snapshot stands: one run item per table and one item per Scan segment, so a crashed
//! or stopped snapshot resumes after the last page it delivered, and two processes never scan
//! one segment at once (each write is conditioned on the segment's counter).

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::lease::table::{KEY, LeaseError, get_n, get_s, n, now, s};

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

/// Snapshot progress, kept in the lease table. Its items are keyed `snapshot|<table>` and
/// `snapshot|<table>|segment|<n>`, apart from the shard leases (`<stream ARN>|<shard id>`) and
/// without `stream_arn`, so the relay's lease scan passes them by and one lease table serves both.
#[derive(Clone)]
pub struct ProgressStore {
    client: Client,
    table: String,
}

impl ProgressStore {
    /// The store in the lease table `table`.
    pub fn new(client: Client, table: String) -> ProgressStore {
        ProgressStore { client, table }
    }

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

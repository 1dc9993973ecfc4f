//! `dynamodb-nakadi-relay leases`: every shard of the stream with its lease, read from the
//! lease table and DynamoDB Streams directly, so it answers while the pods or `/status` are out
//! of reach.

use serde::Serialize;

use super::{AdminError, Target, print, table};
use crate::ids::ShardId;
use crate::lease::{AuditEntry, Checkpoint, Lease, now_ms};
use crate::stream::Shard;
use crate::stream::lineage::Lineage;

#[derive(Debug, Serialize)]
pub struct Row {
    pub shard_id: String,
    /// finished, waiting_for_parent, owned, free, or no_lease (listed, not yet synced by a pod)
    pub state: &'static str,
    pub owner: Option<String>,
    pub checkpoint: Option<String>,
    pub parent_shard_ids: Vec<String>,
    /// Whether DescribeStream lists the shard; a lease of a shard it no longer lists has aged
    /// out of the stream.
    pub listed: bool,
    /// Seconds since the newest delivered event up to the checkpoint was written, where known.
    pub last_delivered_age_seconds: Option<i64>,
    pub replay_from_ms: Option<i64>,
    pub skip_sequence_numbers: Vec<String>,
    pub audit: Vec<AuditEntry>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub table: String,
    pub stream_arn: String,
    pub shards: Vec<Row>,
}

pub async fn run(target: &Target, json: bool) -> Result<(), AdminError> {
    let (shards, leases) = target.read().await?;
    let report = Report {
        table: target.table.clone(),
        stream_arn: target.stream_arn.to_string(),
        shards: rows(&shards, &leases, now_ms()),
    };
    print(&report, json, human);
    Ok(())
}

/// One row per lease, then one per listed shard without a lease, in lineage order where the
/// lease table has it (parents first).
pub fn rows(shards: &[Shard], leases: &[Lease], now_ms: i64) -> Vec<Row> {
    let listed: Vec<ShardId> = shards.iter().map(|s| s.id.clone()).collect();
    let lineage = Lineage::new(
        leases
            .iter()
            .map(|l| (&l.shard_id, l.checkpoint == Checkpoint::ShardEnd)),
        &listed,
    );
    let mut rows: Vec<Row> = leases
        .iter()
        .map(|l| Row {
            shard_id: l.shard_id.to_string(),
            state: if l.checkpoint == Checkpoint::ShardEnd {
                "finished"
            } else if !lineage.may_start(&l.parent_shard_ids) {
                "waiting_for_parent"
            } else if l.owner.is_some() {
                "owned"
            } else {
                "free"
            },
            owner: l.owner.clone(),
            checkpoint: Some(l.checkpoint.to_string()),
            parent_shard_ids: l.parent_shard_ids.iter().map(ToString::to_string).collect(),
            listed: listed.contains(&l.shard_id),
            last_delivered_age_seconds: l
                .checkpoint_created_ms
                .map(|ms| (now_ms - ms).max(0) / 1000),
            replay_from_ms: l.operator.replay_from_ms,
            skip_sequence_numbers: l.operator.skip_sequence_numbers.clone(),
            audit: l.operator.audit.clone(),
        })
        .collect();
    rows.extend(
        shards
            .iter()
            .filter(|s| !leases.iter().any(|l| l.shard_id == s.id))
            .map(|s| Row {
                shard_id: s.id.to_string(),
                state: "no_lease",
                owner: None,
                checkpoint: None,
                parent_shard_ids: s.parent.iter().map(ToString::to_string).collect(),
                listed: true,
                last_delivered_age_seconds: None,
                replay_from_ms: None,
                skip_sequence_numbers: Vec::new(),
                audit: Vec::new(),
            }),
    );
    rows
}

fn human(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .shards
        .iter()
        .map(|r| {
            let last = r.audit.last().map_or_else(String::new, |a| {
                format!("{} by {} at {}: {}", a.action, a.by, a.at, a.reason)
            });
            vec![
                r.shard_id.clone(),
                r.state.to_owned() + if r.listed { "" } else { " (aged out)" },
                r.owner.clone().unwrap_or_else(|| "-".into()),
                r.checkpoint.clone().unwrap_or_else(|| "-".into()),
                if r.parent_shard_ids.is_empty() {
                    "-".into()
                } else {
                    r.parent_shard_ids.join(",")
                },
                r.last_delivered_age_seconds
                    .map_or_else(|| "-".into(), |s| format!("{s}s")),
                r.skip_sequence_numbers.len().to_string(),
                last,
            ]
        })
        .collect();
    format!("{} ({})\n", report.table, report.stream_arn)
        + &table(
            &[
                "shard",
                "state",
                "owner",
                "checkpoint",
                "parents",
                "last delivered",
                "skips",
                "last operator action",
            ],
            &rows,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, owner: Option<&str>, checkpoint: &str, parents: &[&str]) -> Lease {
        Lease {
            checkpoint_created_ms: Some(40_000),
            ..Lease::example(id, owner, checkpoint, parents)
        }
    }

    fn shard(id: &str, parent: Option<&str>) -> Shard {
        Shard {
            id: ShardId::new(id),
            parent: parent.map(ShardId::new),
            closed: false,
        }
    }

    #[test]
    fn states_follow_the_checkpoint_the_lineage_and_the_owner() {
        let leases = [
            lease("old", None, "SHARD_END", &[]),
            lease("parent", Some("pod-a"), "100", &["old"]),
            lease("child", None, "TRIM_HORIZON", &["parent"]),
            lease("other", None, "TRIM_HORIZON", &[]),
        ];
        let shards = [
            shard("parent", None),
            shard("child", Some("parent")),
            shard("other", None),
            shard("new", Some("other")),
        ];
        let rows = rows(&shards, &leases, 100_000);
        let states: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.shard_id.as_str(), r.state, r.listed))
            .collect();
        assert_eq!(
            states,
            [
                ("old", "finished", false),
                ("parent", "owned", true),
                ("child", "waiting_for_parent", true),
                ("other", "free", true),
                ("new", "no_lease", true),
            ]
        );
        assert_eq!(rows[1].last_delivered_age_seconds, Some(60));
        assert_eq!(rows[4].parent_shard_ids, ["other"]);
    }
}

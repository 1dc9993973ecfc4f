//! `dynamodb-nakadi-relay rewind --to TRIM_HORIZON|<RFC 3339 time> [--shard ID]`: publish again
//! what the stream still holds from a point, with the same eids.
//!
//! DynamoDB Streams has no AT_TIMESTAMP iterator, so a rewound lease reads from TRIM_HORIZON and
//! skips the records created before the point, as a stream's first start does. Which leases move:
//! - to a time: every lease of a listed shard that holds records from then on (not finished, or
//!   finished with its newest delivered event at or after the point, or not known), and all
//!   their descendants;
//! - to TRIM_HORIZON: every lease of a listed shard;
//! - with `--shard`: that shard and its descendants.
//!
//! Leases are written parents first. A finished parent goes back to reading, so its children
//! (rewound after it) wait for it again and a key's replayed events keep their order.

use std::collections::HashSet;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ATTEMPTS, AdminError, RETRY_PAUSE, Target, lease_of, print, rfc3339, table};
use crate::ids::ShardId;
use crate::lease::{Checkpoint, Lease, START_MARGIN_MS};

/// DynamoDB Streams keeps records for 24 hours.
const RETENTION_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    TrimHorizon,
    /// Milliseconds since the epoch.
    Time(i64),
}

impl To {
    /// `TRIM_HORIZON` or an RFC 3339 time within the stream's retention.
    pub fn parse(s: &str, now_ms: i64) -> Result<To, AdminError> {
        if s == "TRIM_HORIZON" {
            return Ok(To::TrimHorizon);
        }
        let at = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
            AdminError::Usage(format!(
                "--to {s}: give TRIM_HORIZON or an RFC 3339 time such as 2026-12-07T05:00:00Z ({e})"
            ))
        })?;
        let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
        if ms > now_ms {
            return Err(AdminError::Usage(format!("--to {s} is in the future")));
        }
        if ms < now_ms - RETENTION_MS {
            return Err(AdminError::Usage(format!(
                "--to {s} is older than the stream's retention of 24 hours; --to TRIM_HORIZON reads all it still holds"
            )));
        }
        Ok(To::Time(ms))
    }

    /// The lease's `replay_from_ms`: 0 skips nothing.
    fn replay_from_ms(&self) -> i64 {
        match self {
            To::TrimHorizon => 0,
            To::Time(ms) => *ms,
        }
    }

    fn describe(&self) -> String {
        match self {
            To::TrimHorizon => "TRIM_HORIZON".to_owned(),
            To::Time(ms) => rfc3339(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ms) * 1_000_000)
                    .expect("a time within the retention"),
            ),
        }
    }
}

/// The leases a rewind moves, parents before children.
pub fn plan<'a>(
    leases: &'a [Lease],
    listed: &[ShardId],
    to: &To,
    shard: Option<&ShardId>,
) -> Result<Vec<&'a Lease>, AdminError> {
    let mut moved: HashSet<&ShardId> = match shard {
        Some(shard) => {
            let lease = lease_of(leases, shard)?;
            if !listed.contains(shard) {
                return Err(AdminError::Usage(format!(
                    "shard {shard} aged out of the stream: it holds nothing to read again"
                )));
            }
            HashSet::from([&lease.shard_id])
        }
        None => leases
            .iter()
            .filter(|l| listed.contains(&l.shard_id) && holds_records_from(l, to))
            .map(|l| &l.shard_id)
            .collect(),
    };
    // Descendants read after their ancestors: once an ancestor reads again, so must they.
    loop {
        let before = moved.len();
        for lease in leases {
            if lease.parent_shard_ids.iter().any(|p| moved.contains(p)) {
                moved.insert(&lease.shard_id);
            }
        }
        if moved.len() == before {
            break;
        }
    }
    let mut ordered: Vec<&Lease> = Vec::new();
    let mut left: Vec<&Lease> = leases
        .iter()
        .filter(|l| moved.contains(&l.shard_id))
        .collect();
    while !left.is_empty() {
        let (ready, waiting): (Vec<&Lease>, Vec<&Lease>) = left.into_iter().partition(|l| {
            !l.parent_shard_ids
                .iter()
                .any(|p| moved.contains(p) && !ordered.iter().any(|o| &o.shard_id == p))
        });
        if ready.is_empty() {
            // A cycle cannot come from DynamoDB Streams; keep the rest in table order.
            ordered.extend(waiting);
            break;
        }
        ordered.extend(ready);
        left = waiting;
    }
    Ok(ordered)
}

/// Whether a lease's shard may hold records created at or after `to`. A finished shard whose
/// newest delivered event is older holds none; one without that time (finished before versions
/// that keep it) is read again to be sure.
fn holds_records_from(lease: &Lease, to: &To) -> bool {
    match to {
        To::TrimHorizon => true,
        To::Time(ms) => {
            lease.checkpoint != Checkpoint::ShardEnd
                || lease
                    .checkpoint_created_ms
                    .is_none_or(|created| created >= ms - START_MARGIN_MS)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Moved {
    pub shard_id: String,
    pub from: String,
    pub owner: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub table: String,
    pub to: String,
    pub dry_run: bool,
    pub shards: Vec<Moved>,
}

pub async fn run(
    target: &Target,
    to: &To,
    shard: Option<&ShardId>,
    reason: &str,
    dry_run: bool,
    json: bool,
) -> Result<(), AdminError> {
    let (shards, leases) = target.read().await?;
    let listed: Vec<ShardId> = shards.into_iter().map(|s| s.id).collect();
    let planned: Vec<ShardId> = plan(&leases, &listed, to, shard)?
        .into_iter()
        .map(|l| l.shard_id.clone())
        .collect();
    let mut report = Report {
        table: target.table.clone(),
        to: to.describe(),
        dry_run,
        shards: Vec::new(),
    };
    if !dry_run && !planned.is_empty() {
        eprintln!(
            "warning: consumers receive the replayed events after newer ones they already have; the eids are the same, so consumers that drop known eids drop them"
        );
    }
    let mut leases = leases;
    for shard in &planned {
        let mut attempt = 0;
        loop {
            let lease = lease_of(&leases, shard)?;
            let moved = Moved {
                shard_id: shard.to_string(),
                from: lease.checkpoint.to_string(),
                owner: lease.owner.clone(),
            };
            if dry_run {
                report.shards.push(moved);
                break;
            }
            let change = format!(
                "checkpoint {} -> TRIM_HORIZON, replay from {}",
                lease.checkpoint,
                to.describe()
            );
            let audit = target.audit("rewind", reason, change).await?;
            if target
                .leases
                .rewind(lease, to.replay_from_ms(), &audit)
                .await?
            {
                report.shards.push(moved);
                break;
            }
            attempt += 1;
            if attempt >= ATTEMPTS {
                return Err(AdminError::Refused(format!(
                    "shard {shard}: its lease changed {ATTEMPTS} times while the rewind was written; {} shards were rewound before it: run the command again",
                    report.shards.len()
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            leases = target.leases.scan().await?.leases;
        }
    }
    print(&report, json, human);
    Ok(())
}

fn human(report: &Report) -> String {
    let verb = if report.dry_run {
        "would rewind"
    } else {
        "rewound"
    };
    let rows: Vec<Vec<String>> = report
        .shards
        .iter()
        .map(|m| {
            vec![
                m.shard_id.clone(),
                m.from.clone(),
                m.owner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "{}: {verb} {} shards to {}\n",
        report.table,
        report.shards.len(),
        report.to
    ) + &table(&["shard", "checkpoint before", "owner before"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, checkpoint: &str, created_ms: Option<i64>, parents: &[&str]) -> Lease {
        Lease {
            checkpoint_created_ms: created_ms,
            ..Lease::example(id, None, checkpoint, parents)
        }
    }

    fn ids(leases: &[&Lease]) -> Vec<String> {
        leases.iter().map(|l| l.shard_id.to_string()).collect()
    }

    /// old (finished, aged out) → a (finished at 10 s) → b (finished at 50 s) → c, d (split,
    /// reading); e: an unrelated finished shard without a time.
    fn stream() -> (Vec<Lease>, Vec<ShardId>) {
        let leases = vec![
            lease("d", "300", Some(70_000), &["b"]),
            lease("c", "200", Some(60_000), &["b"]),
            lease("b", "SHARD_END", Some(50_000), &["a"]),
            lease("a", "SHARD_END", Some(10_000), &["old"]),
            lease("old", "SHARD_END", Some(1_000), &[]),
            lease("e", "SHARD_END", None, &[]),
        ];
        let listed = ["a", "b", "c", "d", "e"].map(ShardId::new).to_vec();
        (leases, listed)
    }

    #[test]
    fn a_time_moves_the_shards_holding_records_from_then_on_parents_first() {
        let (leases, listed) = stream();
        let moved = plan(&leases, &listed, &To::Time(40_000), None).unwrap();
        assert_eq!(ids(&moved), ["b", "e", "d", "c"]);
    }

    #[test]
    fn trim_horizon_moves_every_listed_shard_and_never_an_aged_out_one() {
        let (leases, listed) = stream();
        let moved = plan(&leases, &listed, &To::TrimHorizon, None).unwrap();
        assert_eq!(ids(&moved), ["a", "e", "b", "d", "c"]);
    }

    #[test]
    fn one_shard_moves_with_its_descendants() {
        let (leases, listed) = stream();
        let a = ShardId::new("a");
        let moved = plan(&leases, &listed, &To::TrimHorizon, Some(&a)).unwrap();
        assert_eq!(ids(&moved), ["a", "b", "d", "c"]);
        let unknown = plan(&leases, &listed, &To::TrimHorizon, Some(&ShardId::new("x")));
        assert_eq!(unknown.map(|_| ()).unwrap_err().exit_code(), 2);
        let aged_out = plan(
            &leases,
            &listed,
            &To::TrimHorizon,
            Some(&ShardId::new("old")),
        );
        assert_eq!(aged_out.map(|_| ()).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn a_time_in_the_future_or_past_the_retention_is_refused() {
        let now = 1_800_000_000_000;
        assert_eq!(To::parse("TRIM_HORIZON", now).unwrap(), To::TrimHorizon);
        let hour_ago = To::parse("2027-01-15T07:00:00Z", now).unwrap();
        assert_eq!(hour_ago, To::Time(1_799_996_400_000));
        for bad in ["2027-01-15T09:00:00Z", "2027-01-14T07:00:00Z", "yesterday"] {
            let err = To::parse(bad, now).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }
}

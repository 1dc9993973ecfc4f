//! `dynamodb-nakadi-relay skip --shard ID --sequence-number N`: the record's event goes to the
//! dead-letter queue instead of Nakadi, and the shard goes on. This is how a record that Nakadi
//! will never accept stops blocking a shard in `block` mode, wherever it sits in its page; the
//! letter is re-driven once the cause is fixed, so nothing is lost.

use std::cmp::Ordering;

use serde::Serialize;

use super::{ATTEMPTS, AdminError, RETRY_PAUSE, Target, lease_of, print};
use crate::ids::ShardId;
use crate::lease::{Checkpoint, Lease};
use crate::stream::Position;
use crate::stream::lineage::compare_sequence_numbers;

#[derive(Debug, Serialize)]
pub struct Report {
    pub table: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub checkpoint: String,
    pub owner: Option<String>,
    pub dry_run: bool,
}

/// Refuses a record the lease has already passed: its event was delivered (or dead-lettered).
fn not_passed(lease: &Lease, sequence_number: &str) -> Result<(), AdminError> {
    let passed = match &lease.checkpoint {
        Checkpoint::ShardEnd => true,
        Checkpoint::Sequence(at) => {
            compare_sequence_numbers(sequence_number, at) != Some(Ordering::Greater)
        }
        Checkpoint::TrimHorizon | Checkpoint::Latest => false,
    };
    if passed {
        return Err(AdminError::Refused(format!(
            "shard {} has already passed record {sequence_number}: its checkpoint is {}",
            lease.shard_id, lease.checkpoint
        )));
    }
    Ok(())
}

pub async fn run(
    target: &Target,
    shard: &ShardId,
    sequence_number: &str,
    reason: &str,
    dry_run: bool,
    json: bool,
) -> Result<(), AdminError> {
    let mut leases = target.leases.scan().await?.leases;
    let lease = lease_of(&leases, shard)?;
    not_passed(lease, sequence_number)?;
    held(target, lease, sequence_number).await?;
    let mut attempt = 0;
    let report = loop {
        let lease = lease_of(&leases, shard)?;
        not_passed(lease, sequence_number)?;
        let report = Report {
            table: target.table.clone(),
            shard_id: shard.to_string(),
            sequence_number: sequence_number.to_owned(),
            checkpoint: lease.checkpoint.to_string(),
            owner: lease.owner.clone(),
            dry_run,
        };
        if dry_run {
            break report;
        }
        let change = format!(
            "skip record {sequence_number} (checkpoint {}): its event goes to the dead-letter queue",
            lease.checkpoint
        );
        let audit = target.audit("skip", reason, change).await?;
        if target.leases.skip(lease, sequence_number, &audit).await? {
            break report;
        }
        attempt += 1;
        if attempt >= ATTEMPTS {
            return Err(AdminError::Refused(format!(
                "shard {shard}: its lease changed {ATTEMPTS} times while the skip was written; run the command again"
            )));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        leases = target.leases.scan().await?.leases;
    };
    print(&report, json, |r| {
        format!(
            "{}: {} record {} of shard {} (checkpoint {}, owner {}); its event goes to the dead-letter queue\n",
            r.table,
            if r.dry_run { "would skip" } else { "skipped" },
            r.sequence_number,
            r.shard_id,
            r.checkpoint,
            r.owner.as_deref().unwrap_or("-")
        )
    });
    Ok(())
}

/// Refuses a sequence number the shard does not hold: the first record at it must be it.
async fn held(target: &Target, lease: &Lease, sequence_number: &str) -> Result<(), AdminError> {
    let not_held = |why: String| {
        AdminError::Refused(format!(
            "shard {} holds no record {sequence_number} ({why}); its checkpoint is {}",
            lease.shard_id, lease.checkpoint
        ))
    };
    let position = Position::At(sequence_number.to_owned());
    let mut iterator = target
        .streams
        .iterator(&target.stream_arn, &lease.shard_id, &position)
        .await
        .map_err(|e| not_held(e.to_string()))?;
    // An iterator may return empty pages before the records behind it; a few are read.
    for _ in 0..PAGES {
        let page = target
            .streams
            .get_records(&iterator)
            .await
            .map_err(|e| not_held(e.to_string()))?;
        if let Some(first) = page.records().next() {
            let found = serde_json::from_str::<serde_json::Value>(first)
                .ok()
                .and_then(|r| r["dynamodb"]["SequenceNumber"].as_str().map(str::to_owned));
            return match found {
                Some(found) if found == sequence_number => Ok(()),
                found => Err(not_held(format!(
                    "the next record is {}",
                    found.as_deref().unwrap_or("unreadable")
                ))),
            };
        }
        match &page.next_iterator {
            Some(next) => iterator = next.clone(),
            None => break,
        }
    }
    Err(not_held("no record at or after it".to_owned()))
}

const PAGES: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(checkpoint: &str) -> Lease {
        Lease::example("s", Some("pod-a"), checkpoint, &[])
    }

    #[test]
    fn a_record_at_or_before_the_checkpoint_is_refused_naming_it() {
        assert!(not_passed(&lease("TRIM_HORIZON"), "100").is_ok());
        assert!(not_passed(&lease("99"), "100").is_ok());
        // Compared as numbers: 9 digits are fewer than 10.
        assert!(not_passed(&lease("999999999"), "1000000000").is_ok());
        for checkpoint in ["100", "1000", "SHARD_END"] {
            let err = not_passed(&lease(checkpoint), "100").unwrap_err();
            assert_eq!(err.exit_code(), 1);
            assert!(err.to_string().contains(checkpoint), "{err}");
        }
    }
}

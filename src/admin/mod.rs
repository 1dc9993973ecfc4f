//! The operator's commands on a stream's leases: `leases` lists them, `rewind` reads shards
//! again from a point, `skip` sends one record to the dead-letter queue instead of Nakadi.
//!
//! They never edit the lease table around the protocol. A change is written like a take by the
//! operator: conditioned on the fencing counter as read, moving it, and removing the owner, so
//! the pod that read the shard stops at its next lease-table round without a checkpoint (every
//! write it could still make is conditioned on the old counter), and a pod takes the lease afresh
//! with the change on it. Each change appends who asked, why and what changed to the lease's
//! audit trail, which `leases` shows and the relay logs when it takes the lease.

pub mod leases;
pub mod rewind;
pub mod skip;

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;
use crate::event_type;
use crate::ids::{ShardId, StreamArn};
use crate::lease::{AuditEntry, Lease, LeaseError, LeaseTable};
use crate::startup::{self, AwsClients, StartupError};
use crate::stream::{Shard, StreamError, StreamsClient};

/// Why a command did not do what it was asked; its exit code follows the relay's: 2 for what
/// the caller must change in the command or configuration, 1 for the rest.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad usage: an unknown shard, a time the stream cannot serve.
    #[error("{0}")]
    Usage(String),
    /// The action cannot be done as asked (the record was already passed).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("lease table: {0}")]
    Lease(#[from] LeaseError),
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("STS GetCallerIdentity: {0}")]
    Identity(String),
}

impl AdminError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Usage(_) | AdminError::Startup(_) => 2,
            AdminError::Refused(_)
            | AdminError::Lease(_)
            | AdminError::Stream(_)
            | AdminError::Identity(_) => 1,
        }
    }
}

/// One table's stream and lease table, as the relay's pods see them.
pub struct Target {
    pub table: String,
    pub stream_arn: StreamArn,
    pub streams: StreamsClient,
    pub leases: LeaseTable,
    sts: aws_sdk_sts::Client,
}

impl Target {
    pub async fn open(
        config: &Config,
        table: Option<&str>,
        aws: &AwsClients,
    ) -> Result<Target, AdminError> {
        let table =
            event_type::pick(config, table).map_err(|p| AdminError::Usage(p.to_string()))?;
        let stream_arn = startup::stream_arn(config, table, aws).await?;
        Ok(Target {
            table: table.name().to_owned(),
            leases: startup::lease_table(config, aws, stream_arn.clone()),
            streams: StreamsClient::new(aws.streams.clone(), aws.records.clone()),
            stream_arn,
            sts: aws.sts.clone(),
        })
    }

    /// The shards the stream lists now, and every lease of the stream.
    pub async fn read(&self) -> Result<(Vec<Shard>, Vec<Lease>), AdminError> {
        let shards = self.streams.describe(&self.stream_arn).await?.shards;
        let leases = self.leases.scan().await?.leases;
        Ok((shards, leases))
    }

    /// The audit entry of an action by whoever runs the command.
    pub async fn audit(
        &self,
        action: &str,
        reason: &str,
        change: String,
    ) -> Result<AuditEntry, AdminError> {
        let identity = self.sts.get_caller_identity().send().await.map_err(|e| {
            AdminError::Identity(aws_sdk_sts::error::DisplayErrorContext(e).to_string())
        })?;
        Ok(AuditEntry {
            action: action.to_owned(),
            by: identity.arn().unwrap_or("unknown").to_owned(),
            reason: reason.to_owned(),
            at: rfc3339(OffsetDateTime::now_utc()),
            change,
        })
    }
}

/// The lease of `shard`; an unknown shard is bad usage.
fn lease_of<'a>(leases: &'a [Lease], shard: &ShardId) -> Result<&'a Lease, AdminError> {
    leases.iter().find(|l| &l.shard_id == shard).ok_or_else(|| {
        AdminError::Usage(format!(
            "shard {shard} has no lease in this stream (see `dynamodb-nakadi-relay leases`)"
        ))
    })
}

/// Operator writes are conditioned on the lease's counter; a pod checkpointing meanwhile moves
/// it, so the write is read and tried again a few times.
const ATTEMPTS: u32 = 10;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Prints `report` as JSON, or as the human lines `human` renders.
pub fn print<T: Serialize>(report: &T, json: bool, human: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("the report serializes")
        );
    } else {
        print!("{}", human(report));
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).expect("UTC time formats as RFC 3339")
}

/// Left-aligned columns, as wide as their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let out = table(
            &["shard", "state"],
            &[
                vec!["s1".into(), "finished".into()],
                vec!["shard-long".into(), "owned".into()],
            ],
        );
        assert_eq!(
            out,
            "shard       state\ns1          finished\nshard-long  owned\n"
        );
    }
}

//! The DynamoDB Streams calls the relay makes, with errors classified once into what the
//! caller does about them.

use std::sync::Arc;

use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::types::{ShardFilter, ShardFilterType, ShardIteratorType};

use super::page::RecordsPage;
use super::signed::RecordsReader;
use super::{Shard, ShardId, StreamInfo};
use crate::ids::StreamArn;
use crate::metrics;

/// What went wrong with a Streams call, by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The iterator is older than 15 minutes: open a new one after the last checkpoint.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// The position is older than the stream's 24 h retention: continue from TRIM_HORIZON.
    #[error("the requested position was trimmed from the stream")]
    Trimmed,
    /// LimitExceeded or throttling: back off and try again.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The stream or shard does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else (5xx, timeouts, connection errors): back off and try again.
    #[error("{0}")]
    Other(String),
}

impl StreamError {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            StreamError::ExpiredIterator => "expired_iterator",
            StreamError::Trimmed => "trimmed",
            StreamError::Throttled(_) => "throttling",
            StreamError::NotFound(_) => "not_found",
            StreamError::Other(_) => "other",
        }
    }

    fn from_sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> StreamError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let message = format!(
            "{}",
            aws_sdk_dynamodbstreams::error::DisplayErrorContext(&err)
        );
        let classified = StreamError::classify(err.code(), message);
        metrics::aws_error(operation, classified.kind());
        classified
    }

    /// The failure table's classes of a Streams error code, for the SDK's errors and for the
    /// relay's own GetRecords calls alike.
    pub(super) fn classify(code: Option<&str>, message: String) -> StreamError {
        match code {
            Some("ExpiredIteratorException") => StreamError::ExpiredIterator,
            Some("TrimmedDataAccessException") => StreamError::Trimmed,
            Some(
                "LimitExceededException"
                | "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded",
            ) => StreamError::Throttled(message),
            Some("ResourceNotFoundException") => StreamError::NotFound(message),
            _ => StreamError::Other(message),
        }
    }
}

/// Where to open a shard iterator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    TrimHorizon,
    After(String),
    /// The record itself: only the `skip` command reads from one, to check the shard holds it.
    At(String),
}

#[derive(Clone)]
pub struct StreamsClient {
    client: Client,
    records: Arc<RecordsReader>,
}

/// DescribeStream returns at most 100 shards a page; asking for the maximum keeps the number of
/// calls (limited to 10/s per account and stream) as small as possible.
const DESCRIBE_PAGE: i32 = 100;

impl StreamsClient {
    /// GetRecords goes through `records`, every other call through the SDK's `client`.
    pub fn new(client: Client, records: Arc<RecordsReader>) -> StreamsClient {
        StreamsClient { client, records }
    }

    /// The stream's view type, key schema and every shard, following DescribeStream's pages.
    pub async fn describe(&self, stream_arn: &StreamArn) -> Result<StreamInfo, StreamError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(stream_arn.as_str())
                .limit(DESCRIBE_PAGE)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| StreamError::from_sdk("DescribeStream", e))?;
            let desc = out
                .stream_description
                .ok_or_else(|| StreamError::Other("DescribeStream without a description".into()))?;
            shards.extend(desc.shards().iter().filter_map(Shard::from_sdk));
            match desc.last_evaluated_shard_id {
                Some(last) if !desc.shards().is_empty() => start = Some(last),
                _ => {
                    return Ok(StreamInfo {
                        view_type: desc.stream_view_type().map(|v| v.as_str().to_owned()),
                        key_attributes: key_attributes(desc.key_schema()),
                        shards,
                    });
                }
            }
        }
    }

    /// The children of a shard that just ended, with one call instead of the whole stream.
    /// Streams that ignore the filter return every shard; the parent check keeps this right.
    pub async fn children(
        &self,
        stream_arn: &StreamArn,
        parent: &ShardId,
    ) -> Result<Vec<Shard>, StreamError> {
        let filter = ShardFilter::builder()
            .r#type(ShardFilterType::ChildShards)
            .shard_id(parent.as_str())
            .build();
        let out = self
            .client
            .describe_stream()
            .stream_arn(stream_arn.as_str())
            .shard_filter(filter)
            .send()
            .await
            .map_err(|e| StreamError::from_sdk("DescribeStream", e))?;
        Ok(out
            .stream_description
            .map(|d| {
                d.shards()
                    .iter()
                    .filter_map(Shard::from_sdk)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.parent.as_ref() == Some(parent))
            .collect())
    }

    pub async fn iterator(
        &self,
        stream_arn: &StreamArn,
        shard: &ShardId,
        position: &Position,
    ) -> Result<String, StreamError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_arn(stream_arn.as_str())
            .shard_id(shard.as_str());
        let req = match position {
            Position::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Position::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            Position::At(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq),
        };
        let out = req
            .send()
            .await
            .map_err(|e| StreamError::from_sdk("GetShardIterator", e))?;
        out.shard_iterator
            .ok_or_else(|| StreamError::NotFound(format!("no iterator for shard {shard}")))
    }

    /// Up to 1,000 records after `iterator`, as raw JSON ([`RecordsPage`]).
    pub async fn get_records(&self, iterator: &str) -> Result<RecordsPage, StreamError> {
        self.records.get_records(iterator).await
    }
}

fn key_attributes(schema: &[aws_sdk_dynamodbstreams::types::KeySchemaElement]) -> Vec<String> {
    use aws_sdk_dynamodbstreams::types::KeyType;
    let mut keys: Vec<_> = schema.iter().collect();
    // Hash key first, then the range key, whatever order the service listed them in.
    keys.sort_by_key(|k| *k.key_type() != KeyType::Hash);
    keys.iter().map(|k| k.attribute_name().to_owned()).collect()
}

//! DynamoDB Streams: the API calls with typed errors (`client`), GetRecords signed and sent by
//! the relay (`signed`), raw record pages (`page`), and which shard may be read when (`lineage`).

pub mod client;
pub mod lineage;
pub mod page;
pub mod signed;

pub use crate::ids::ShardId;
pub use client::{Position, StreamError, StreamsClient};

/// A shard as DescribeStream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: ShardId,
    pub parent: Option<ShardId>,
    /// Closed shards have an ending sequence number; the open ones are still being written.
    pub closed: bool,
}

impl Shard {
    fn from_sdk(s: &aws_sdk_dynamodbstreams::types::Shard) -> Option<Shard> {
        Some(Shard {
            id: ShardId::new(s.shard_id()?),
            parent: s.parent_shard_id().map(ShardId::new),
            closed: s
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some(),
        })
    }
}

/// What DescribeStream tells about the whole stream.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub view_type: Option<String>,
    /// Key attribute names, hash key first.
    pub key_attributes: Vec<String>,
    pub shards: Vec<Shard>,
}

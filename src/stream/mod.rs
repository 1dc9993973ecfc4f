//! DynamoDB Streams: the API calls with typed errors (`client`), GetRecords signed and sent by
//! the relay (`signed`), raw record pages (`page`), and which shard may be read when (`lineage`).

pub mod client;
mod connection;
pub mod lineage;
pub mod page;
pub mod signed;
mod sigv4;

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

/// The stream's records lack an image the relay needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "has view type {}, but the relay needs NEW_AND_OLD_IMAGES to build the item and its patch",
    found.as_deref().unwrap_or("(none)")
)]
pub struct WrongViewType {
    pub found: Option<String>,
}

impl StreamInfo {
    /// Both images in every record: the item comes from the new one (the old one for a
    /// delete), the patch from the two.
    pub fn check_view_type(&self) -> Result<(), WrongViewType> {
        match self.view_type.as_deref() {
            Some("NEW_AND_OLD_IMAGES") => Ok(()),
            found => Err(WrongViewType {
                found: found.map(str::to_owned),
            }),
        }
    }
}

//! The identifiers that pass between modules, each its own type: a shard id is never taken for a
//! stream ARN or a worker id. All three are text as AWS (or the pod) gives it,
//! kept as it came; they read as `str` ([`std::ops::Deref`]) wherever text is wanted (logs,
//! request parameters, item attributes).

use std::fmt;
use std::ops::Deref;

use serde::Serialize;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name::new(id)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id! {
    /// A shard's id, e.g. `shardId-00000001700000000000-0a1b2c3d`.
    ShardId
}

id! {
    /// A DynamoDB stream's ARN, e.g.
    /// `arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/2026-11-01T00:00:00.000`.
    StreamArn
}

id! {
    /// This pod's name among the workers of a stream: its heartbeat item, the owner of its
    /// leases.
    WorkerId
}

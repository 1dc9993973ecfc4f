//! When a shard may be read: only after its parent has been read to its end.
//!
//! DynamoDB splits and rolls shards over every few hours; a key written before the split is in
//! the parent, after it in a child. Reading a child before its parent is finished would publish
//! a key's newer changes before its older ones. Pure, so every case is a unit test.

use std::collections::{HashMap, HashSet};

use super::ShardId;

/// What the coordinator knows about every shard.
#[derive(Debug, Default)]
pub struct Lineage<'a> {
    /// Shards with a lease, and whether it is checkpointed at SHARD_END.
    finished: HashMap<&'a ShardId, bool>,
    /// Shards DescribeStream still lists.
    in_stream: HashSet<&'a ShardId>,
}

impl<'a> Lineage<'a> {
    pub fn new(
        leases: impl IntoIterator<Item = (&'a ShardId, bool)>,
        in_stream: impl IntoIterator<Item = &'a ShardId>,
    ) -> Lineage<'a> {
        Lineage {
            finished: leases.into_iter().collect(),
            in_stream: in_stream.into_iter().collect(),
        }
    }

    /// A parent is done when its lease says SHARD_END, or when it is gone from both the stream
    /// and the lease table: trimmed after 24 hours and its lease cleaned up, so nothing of it
    /// can be read any more. A parent the stream still lists but without a lease (not synced
    /// yet) is not done: its records are still to be read.
    pub fn may_start(&self, parents: &[ShardId]) -> bool {
        parents.iter().all(|p| match self.finished.get(p) {
            Some(finished) => *finished,
            None => !self.in_stream.contains(p),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ShardId {
        ShardId::new(s)
    }

    #[test]
    fn parents_gate_their_children() {
        let (a, b, c, gone) = (id("a"), id("b"), id("c"), id("gone"));
        let leases = [(&a, true), (&b, false)];
        let stream = [&a, &b, &c];
        let lineage = Lineage::new(leases, stream);
        let table: &[(&[ShardId], bool, &str)] = &[
            (&[], true, "a root shard starts at once"),
            (std::slice::from_ref(&a), true, "parent read to its end"),
            (std::slice::from_ref(&b), false, "parent still being read"),
            (
                std::slice::from_ref(&c),
                false,
                "parent listed but not leased yet",
            ),
            (
                std::slice::from_ref(&gone),
                true,
                "parent trimmed away and its lease deleted",
            ),
            (&[a.clone(), b.clone()], false, "every parent must be done"),
        ];
        for (parents, expected, why) in table {
            assert_eq!(lineage.may_start(parents), *expected, "{why}");
        }
    }
}

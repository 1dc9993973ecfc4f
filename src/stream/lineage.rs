//! When a shard may be read: only after its parent has been read to its end; and whether a
//! child's records come after its parent's.
//!
//! DynamoDB splits and rolls shards over every few hours; a key written before the split is in
//! the parent, after it in a child. Reading a child before its parent is finished would publish
//! a key's newer changes before its older ones. AWS documents the order of sequence numbers
//! within a shard only, while consumers order a key's events by `data.sequence_number` across
//! the split too; [`out_of_order`] tells the shard worker when a child's first record does not
//! come after its parent's last. Pure, so every case is a unit test.

use std::cmp::Ordering;
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

/// A parent shard read to its end, with the sequence number of its last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentEnd {
    pub shard_id: ShardId,
    pub last_sequence_number: String,
}

/// Orders two sequence numbers as the numbers they are: decimal strings of up to 40 digits, more
/// than a u128 holds, and of varying length, so text order is wrong. None when either is not a
/// decimal number.
pub fn compare_sequence_numbers(a: &str, b: &str) -> Option<Ordering> {
    fn digits(s: &str) -> Option<&str> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.trim_start_matches('0'))
    }
    let (a, b) = (digits(a)?, digits(b)?);
    Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// The parents whose last record is not before the child's first: per-key order by sequence
/// number does not hold across the split for them. A number that is no number is not compared.
pub fn out_of_order<'p>(parents: &'p [ParentEnd], child_first: &str) -> Vec<&'p ParentEnd> {
    parents
        .iter()
        .filter(|p| {
            compare_sequence_numbers(&p.last_sequence_number, child_first)
                .is_some_and(|o| o != Ordering::Less)
        })
        .collect()
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

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        use Ordering::*;
        let table: &[(&str, &str, Option<Ordering>)] = &[
            (
                "999999999999999999990",
                "1000000000000000000000",
                Some(Less),
            ),
            (
                "1000000000000000000000",
                "999999999999999999990",
                Some(Greater),
            ),
            ("400000000000001", "400000000000001", Some(Equal)),
            ("0000400", "400", Some(Equal)),
            (
                "9999999999999999999999999999999999999999",
                "9999999999999999999999999999999999999998",
                Some(Greater),
            ),
            ("0", "00", Some(Equal)),
            ("12a", "13", None),
            ("", "13", None),
            ("-1", "13", None),
        ];
        for (a, b, expected) in table {
            assert_eq!(compare_sequence_numbers(a, b), *expected, "{a} vs {b}");
        }
    }

    #[test]
    fn a_child_must_start_after_each_parent_ends() {
        let parent = |id: &str, last: &str| ParentEnd {
            shard_id: ShardId::new(id),
            last_sequence_number: last.to_owned(),
        };
        let parents = [
            parent("a", "999999999999999999990"),
            parent("b", "1000000000000000000100"),
            parent("garbled", "x"),
        ];
        let names = |first: &str| -> Vec<String> {
            out_of_order(&parents, first)
                .iter()
                .map(|p| p.shard_id.to_string())
                .collect()
        };
        assert_eq!(names("1000000000000000000200"), Vec::<String>::new());
        assert_eq!(names("1000000000000000000100"), ["b"], "equal is not after");
        assert_eq!(names("1000000000000000000000"), ["b"], "longer is larger");
        assert_eq!(names("999999999999999999980"), ["a", "b"]);
        assert_eq!(names("not a number"), Vec::<String>::new());
    }
}

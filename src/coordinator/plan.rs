//! The coordinator's decisions, as pure functions of one lease-table snapshot and what this pod
//! observed: which leases to take, which to ask for, which to give up and which were lost. No
//! call is made here, so every rule is a table test (see the tests below), and the coordinator
//! only carries the plan out.
//!
//! Liveness comes from heartbeats alone: a pod is alive while its heartbeat counter moves, as
//! this pod observes it on its own monotonic clock. Lease items are written only when their owner
//! or checkpoint changes, so a lease's counter says nothing about its owner's health, and a
//! finished lease whose owner moved on never makes that owner look dead.

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;

use crate::ids::ShardId;
use crate::lease::{Checkpoint, Heartbeat, Lease, Liveness};
use crate::stream::lineage::Lineage;

/// One snapshot as the planner sees it.
pub struct View<'a> {
    pub me: &'a str,
    pub leases: &'a [Lease],
    pub workers: &'a [Heartbeat],
    /// Every worker with a heartbeat item, by how this pod observed it.
    pub liveness: &'a HashMap<String, Liveness>,
    pub lineage: &'a Lineage<'a>,
    /// Shards this pod runs a worker for (or holds while it checks whether they aged out).
    pub running: &'a HashSet<ShardId>,
}

/// A lease to take, with the owner's heartbeat as it was observed: the take is written only if
/// that heartbeat is still the same, so a pod that beats again between the scan and the take
/// keeps its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take<'a> {
    pub lease: &'a Lease,
    pub owner: Option<(String, Liveness)>,
}

/// What the coordinator does this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Free leases first, then those of silent or absent owners.
    pub take: Vec<Take<'a>>,
    /// Leases a busier live pod is asked to hand over (balancing).
    pub request: Vec<&'a Lease>,
    /// Running shards another pod asked for: finish the page, checkpoint, release.
    pub hand_over: Vec<ShardId>,
    /// Running shards whose lease is not this pod's any more: stop without a checkpoint.
    pub lost: Vec<ShardId>,
    /// Live pods, this one included.
    pub live_workers: usize,
}

impl<'a> View<'a> {
    fn liveness(&self, owner: &str) -> Liveness {
        if owner == self.me {
            return Liveness::Alive;
        }
        self.liveness
            .get(owner)
            .copied()
            .unwrap_or(Liveness::Absent)
    }

    /// Live pods, this one included.
    pub fn live_workers(&self) -> usize {
        let others = self
            .workers
            .iter()
            .filter(|w| w.worker_id != self.me)
            .filter(|w| self.liveness(&w.worker_id) == Liveness::Alive)
            .count();
        others + 1
    }

    /// Leases that are to be read now: not finished, and their parents are.
    pub fn active(&self) -> Vec<&'a Lease> {
        let leases: &'a [Lease] = self.leases;
        leases
            .iter()
            .filter(|l| l.checkpoint != Checkpoint::ShardEnd)
            .filter(|l| self.lineage.may_start(&l.parent_shard_ids))
            .collect()
    }

    /// Whether a lease's owner is another live pod.
    fn owned_by_other_live(&self, lease: &Lease) -> bool {
        lease
            .owner
            .as_deref()
            .is_some_and(|o| o != self.me && self.liveness(o) == Liveness::Alive)
    }
}

/// The round's plan. `may_take` is false while this pod must not take leases (first round,
/// shards not synced, a configuration conflict, a lapsed fence).
pub fn plan<'a>(view: &View<'a>, may_take: bool) -> Plan<'a> {
    let me = view.me;
    let mut plan = Plan {
        live_workers: view.live_workers(),
        ..Plan::default()
    };
    let leases: &'a [Lease] = view.leases;
    for lease in leases {
        if !view.running.contains(&lease.shard_id) {
            continue;
        }
        if lease.owner.as_deref() != Some(me) {
            plan.lost.push(lease.shard_id.clone());
        } else if lease.handoff_to.as_deref().is_some_and(|to| to != me) {
            plan.hand_over.push(lease.shard_id.clone());
        }
    }
    if !may_take {
        return plan;
    }
    let active = view.active();
    let target = active.len().div_ceil(plan.live_workers);
    let mut candidates: Vec<Take<'a>> = active
        .iter()
        .filter(|l| !view.running.contains(&l.shard_id))
        .filter_map(|&lease| match lease.owner.as_deref() {
            // Handed over at another live pod's request: that pod takes it.
            None if lease
                .handoff_to
                .as_deref()
                .is_some_and(|to| to != me && view.liveness(to) == Liveness::Alive) =>
            {
                None
            }
            None => Some(Take { lease, owner: None }),
            // Ours in the table but not running here: this process restarted under its old id.
            Some(o) if o == me => Some(Take { lease, owner: None }),
            Some(o) => match view.liveness(o) {
                Liveness::Alive => None,
                silent => Some(Take {
                    lease,
                    owner: Some((o.to_owned(), silent)),
                }),
            },
        })
        .collect();
    // In random order, so pods starting together do not all race for the same leases.
    candidates.shuffle(&mut rand::rng());
    candidates.sort_by_key(|t| t.owner.is_some());
    let mine = view.running.len();
    plan.take = candidates
        .into_iter()
        .take(target.saturating_sub(mine))
        .collect();
    if plan.take.is_empty() {
        plan.request = balance(view, &active, target);
    }
    plan
}

/// Asks busier pods for leases until this pod would have its share: each request goes to the
/// pod that has the most while it has at least two more than this pod, counting the requests
/// already made, so pods end within one lease of the mean and never ask for more than they lack.
fn balance<'a>(view: &View<'a>, active: &[&'a Lease], target: usize) -> Vec<&'a Lease> {
    let me = view.me;
    let mut mine = view.running.len()
        + active
            .iter()
            .filter(|l| l.handoff_to.as_deref() == Some(me) && l.owner.is_some())
            .count();
    let mut per_owner: HashMap<&str, Vec<&'a Lease>> = HashMap::new();
    for &l in active
        .iter()
        .filter(|l| view.owned_by_other_live(l) && l.handoff_to.is_none())
    {
        per_owner
            .entry(l.owner.as_deref().unwrap_or_default())
            .or_default()
            .push(l);
    }
    let mut requests = Vec::new();
    while mine < target {
        let Some((_, leases)) = per_owner
            .iter_mut()
            .max_by_key(|(owner, leases)| (leases.len(), **owner))
            .filter(|(_, leases)| leases.len() >= mine + 2)
        else {
            break;
        };
        requests.push(leases.pop().expect("a busiest pod has leases"));
        mine += 1;
    }
    requests
}

/// Whether a shard whose reads answer ResourceNotFoundException has aged out of the stream:
/// only when complete listings of the stream, at least two of them after the error, no longer
/// list it. One listing could predate the shard (a new child not listed yet), so one is not
/// proof.
pub fn aged_out(listings_without_it: u32) -> bool {
    listings_without_it >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, checkpoint: &str, parents: &[&str]) -> Lease {
        Lease::example(shard, owner, checkpoint, parents)
    }

    fn hb(id: &str) -> Heartbeat {
        Heartbeat {
            worker_id: id.to_owned(),
            counter: 1,
            fingerprint: None,
        }
    }

    struct World {
        leases: Vec<Lease>,
        workers: Vec<Heartbeat>,
        liveness: HashMap<String, Liveness>,
        running: HashSet<ShardId>,
        listed: Vec<ShardId>,
    }

    impl World {
        fn new(leases: Vec<Lease>, alive: &[&str], silent: &[&str]) -> World {
            let mut liveness = HashMap::new();
            let mut workers = vec![hb("me")];
            for w in alive {
                liveness.insert(w.to_string(), Liveness::Alive);
                workers.push(hb(w));
            }
            for w in silent {
                liveness.insert(w.to_string(), Liveness::Silent { counter: 1 });
                workers.push(hb(w));
            }
            let listed = leases.iter().map(|l| l.shard_id.clone()).collect();
            World {
                leases,
                workers,
                liveness,
                running: HashSet::new(),
                listed,
            }
        }

        fn running(mut self, shards: &[&str]) -> World {
            self.running = shards.iter().map(|s| ShardId::new(*s)).collect();
            self
        }

        fn plan(&self) -> Plan<'_> {
            self.plan_taking(true)
        }

        /// The lineage lives as long as the plan that borrows it: leaked, in a test.
        fn plan_taking(&self, may_take: bool) -> Plan<'_> {
            let lineage = Box::leak(Box::new(Lineage::new(
                self.leases
                    .iter()
                    .map(|l| (&l.shard_id, l.checkpoint == Checkpoint::ShardEnd)),
                self.listed.iter(),
            )));
            let view = View {
                me: "me",
                leases: &self.leases,
                workers: &self.workers,
                liveness: &self.liveness,
                lineage,
                running: &self.running,
            };
            plan(&view, may_take)
        }
    }

    fn shards(takes: &[Take<'_>]) -> Vec<String> {
        let mut v: Vec<String> = takes.iter().map(|t| t.lease.shard_id.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn finished_leases_of_pods_that_moved_on_never_make_them_look_dead() {
        // Cause 2: after a rollover every parent lease is finished and its owner's counter on it
        // stands still; the pods are alive and must be counted.
        let mut leases = vec![
            lease("p1", Some("a"), "SHARD_END", &[]),
            lease("p2", Some("b"), "SHARD_END", &[]),
            lease("p3", Some("me"), "SHARD_END", &[]),
        ];
        leases.push(lease("c1", Some("a"), "1", &["p1"]));
        leases.push(lease("c2", Some("b"), "1", &["p2"]));
        leases.push(lease("c3", None, "TRIM_HORIZON", &["p3"]));
        let world = World::new(leases, &["a", "b"], &[]);
        let plan = world.plan();
        assert_eq!(plan.live_workers, 3);
        assert_eq!(shards(&plan.take), vec!["c3"]);
    }

    #[test]
    fn takes_its_share_free_leases_first_and_only_of_silent_owners() {
        let leases = vec![
            lease("s1", None, "TRIM_HORIZON", &[]),
            lease("s2", Some("dead"), "5", &[]),
            lease("s3", Some("alive"), "5", &[]),
            lease("s4", Some("alive"), "5", &[]),
        ];
        let world = World::new(leases, &["alive"], &["dead"]);
        let plan = world.plan();
        assert_eq!(plan.live_workers, 2);
        assert_eq!(shards(&plan.take), vec!["s1", "s2"]);
        assert_eq!(plan.take[0].lease.shard_id.as_str(), "s1", "free first");
        assert_eq!(
            plan.take[1].owner,
            Some(("dead".into(), Liveness::Silent { counter: 1 }))
        );
    }

    #[test]
    fn an_owner_without_heartbeat_item_is_taken_over_at_once() {
        let leases = vec![lease("s1", Some("gone"), "5", &[])];
        let world = World::new(leases, &[], &[]);
        let plan = world.plan();
        assert_eq!(plan.take[0].owner, Some(("gone".into(), Liveness::Absent)));
    }

    #[test]
    fn children_wait_for_parents_and_unlisted_unfinished_parents_block_until_finished() {
        let mut world = World::new(
            vec![
                lease("parent", Some("alive"), "5", &[]),
                lease("child", None, "TRIM_HORIZON", &["parent"]),
                lease("orphan", None, "TRIM_HORIZON", &["long-gone"]),
            ],
            &["alive"],
            &[],
        );
        // The parent aged out of the stream but its lease is not finished: the child still
        // waits (the coordinator finishes such a lease once it is proven trimmed).
        world.listed.retain(|s| s.as_str() != "parent");
        let plan = world.plan();
        assert_eq!(shards(&plan.take), vec!["orphan"]);
    }

    #[test]
    fn balances_to_within_one_of_the_mean() {
        let leases: Vec<Lease> = (0..6)
            .map(|i| lease(&format!("s{i}"), Some("busy"), "5", &[]))
            .collect();
        let world = World::new(leases, &["busy"], &[]);
        let plan = world.plan();
        assert!(plan.take.is_empty());
        assert_eq!(plan.request.len(), 3);

        let leases: Vec<Lease> = (0..5)
            .map(|i| {
                lease(
                    &format!("s{i}"),
                    Some(if i < 3 { "busy" } else { "me" }),
                    "5",
                    &[],
                )
            })
            .collect();
        let world = World::new(leases, &["busy"], &[]).running(&["s3", "s4"]);
        let plan = world.plan();
        assert!(plan.request.is_empty(), "3 against 2 is within one");
    }

    #[test]
    fn a_running_lease_owned_by_another_is_lost_and_a_requested_one_handed_over() {
        let mut requested = lease("s2", Some("me"), "5", &[]);
        requested.handoff_to = Some("other".into());
        let world = World::new(
            vec![lease("s1", Some("other"), "5", &[]), requested],
            &["other"],
            &[],
        )
        .running(&["s1", "s2"]);
        let plan = world.plan();
        assert_eq!(plan.lost, vec![ShardId::new("s1")]);
        assert_eq!(plan.hand_over, vec![ShardId::new("s2")]);
    }

    #[test]
    fn nothing_is_taken_while_taking_is_not_allowed() {
        let world = World::new(vec![lease("s1", None, "TRIM_HORIZON", &[])], &[], &[]);
        let plan = world.plan_taking(false);
        assert!(plan.take.is_empty() && plan.request.is_empty());
        assert_eq!(world.plan().take.len(), 1);
    }

    #[test]
    fn a_lease_handed_over_is_left_to_the_pod_that_asked_while_it_lives() {
        // The owner released it at the request and, short of its share, must not take it back.
        let mut handed = lease("s1", None, "5", &[]);
        handed.handoff_to = Some("asker".into());
        let world = World::new(vec![handed.clone()], &["asker"], &[]);
        assert!(world.plan().take.is_empty());
        let world = World::new(vec![handed], &[], &["asker"]);
        assert_eq!(
            shards(&world.plan().take),
            vec!["s1"],
            "unless the asker fell silent"
        );
    }

    #[test]
    fn aged_out_needs_two_listings() {
        assert!(!aged_out(0));
        assert!(!aged_out(1));
        assert!(aged_out(2));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// However the table looks, a plan never takes a lease of a live pod, never takes
            /// more than this pod's share, and never takes a lease whose parents are unfinished.
            #[test]
            fn a_plan_respects_liveness_share_and_lineage(
                owners in proptest::collection::vec(0usize..5, 1..30),
                finished in proptest::collection::vec(any::<bool>(), 30),
                parent_of in proptest::collection::vec(proptest::option::of(0usize..30), 30),
                silent in proptest::collection::vec(any::<bool>(), 4),
            ) {
                let names = ["me", "a", "b", "c", "free"];
                let leases: Vec<Lease> = owners.iter().enumerate().map(|(i, &o)| {
                    let parents: Vec<String> = parent_of[i].filter(|p| *p < i).map(|p| format!("s{p}")).into_iter().collect();
                    let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                    lease(&format!("s{i}"), (o != 4).then_some(names[o]), if finished[i] { "SHARD_END" } else { "5" }, &parents)
                }).collect();
                let alive: Vec<&str> = ["a", "b", "c"].iter().enumerate().filter(|(i, _)| !silent[*i]).map(|(_, n)| *n).collect();
                let dead: Vec<&str> = ["a", "b", "c"].iter().enumerate().filter(|(i, _)| silent[*i]).map(|(_, n)| *n).collect();
                let world = World::new(leases.clone(), &alive, &dead);
                let running: Vec<String> = leases.iter().filter(|l| l.owner.as_deref() == Some("me") && l.checkpoint != Checkpoint::ShardEnd).map(|l| l.shard_id.to_string()).collect();
                let running: Vec<&str> = running.iter().map(String::as_str).collect();
                let world = world.running(&running);
                let plan = world.plan();
                let finished_ids: HashSet<&str> = leases.iter().filter(|l| l.checkpoint == Checkpoint::ShardEnd).map(|l| l.shard_id.as_str()).collect();
                let active = leases.iter().filter(|l| l.checkpoint != Checkpoint::ShardEnd && l.parent_shard_ids.iter().all(|p| finished_ids.contains(p.as_str()))).count();
                let target = active.div_ceil(plan.live_workers);
                prop_assert!(running.len() + plan.take.len() <= target.max(running.len()));
                for t in &plan.take {
                    prop_assert!(t.lease.owner.as_deref().is_none_or(|o| o == "me" || !alive.contains(&o)));
                    prop_assert!(t.lease.parent_shard_ids.iter().all(|p| finished_ids.contains(p.as_str())));
                    prop_assert!(t.lease.checkpoint != Checkpoint::ShardEnd);
                }
                prop_assert_eq!(plan.live_workers, 1 + alive.len());
            }
        }
    }
}

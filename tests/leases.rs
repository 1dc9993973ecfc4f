//! The lease table's fencing against moto (DynamoDB conditional writes): of two workers racing
//! for one lease only one wins, and a worker that lost its lease can no longer checkpoint.

mod support;

use dynamodb_nakadi_relay::lease::{Checkpoint, LeaseError, LeaseTable};
use dynamodb_nakadi_relay::stream::ShardId;
use support::*;

const STREAM: &str =
    "arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/2026-11-22T00:00:00.000";

async fn table(moto: &Moto) -> LeaseTable {
    let t = LeaseTable::new(moto.dynamodb().await, "leases".into(), STREAM.into());
    t.ensure_exists(true).await.unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_for_one_lease_never_both_own_it() {
    let moto = Moto::start("leases_race").await;
    let (a, b) = (table(&moto).await, table(&moto).await);
    for round in 0..20 {
        let shard = ShardId::new(format!("shard-{round}"));
        assert!(
            a.create(&shard, &[], &Checkpoint::TrimHorizon)
                .await
                .unwrap()
        );
        let snapshot = a.scan().await.unwrap();
        let lease = snapshot
            .leases
            .iter()
            .find(|l| l.shard_id == shard)
            .unwrap();
        let (ra, rb) = tokio::join!(a.take(lease, "worker-a"), b.take(lease, "worker-b"));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(winners, 1, "round {round}: both or neither took the lease");
        assert!(matches!(ra.err().or(rb.err()), Some(LeaseError::Lost(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_checkpoint_or_renew() {
    let moto = Moto::start("leases_fencing").await;
    let (a, b) = (table(&moto).await, table(&moto).await);
    let shard = ShardId::new("shard-1");
    a.create(&shard, &[], &Checkpoint::TrimHorizon)
        .await
        .unwrap();
    let seen = a.scan().await.unwrap().leases.remove(0);
    let owned_a = a.take(&seen, "worker-a").await.unwrap();
    a.checkpoint(&owned_a, "worker-a", &Checkpoint::Sequence("100".into()))
        .await
        .unwrap();

    // B takes the lease over (as after A's lease expired).
    let seen = b.scan().await.unwrap().leases.remove(0);
    let owned_b = b.take(&seen, "worker-b").await.unwrap();
    b.checkpoint(&owned_b, "worker-b", &Checkpoint::Sequence("200".into()))
        .await
        .unwrap();

    let late = a
        .checkpoint(&owned_a, "worker-a", &Checkpoint::Sequence("150".into()))
        .await;
    assert!(matches!(late, Err(LeaseError::Lost(_))), "{late:?}");
    assert!(matches!(
        a.renew(&owned_a, "worker-a").await,
        Err(LeaseError::Lost(_))
    ));
    assert!(matches!(
        a.release(&owned_a, "worker-a").await,
        Err(LeaseError::Lost(_))
    ));
    let lease = b.scan().await.unwrap().leases.remove(0);
    assert_eq!(lease.owner.as_deref(), Some("worker-b"));
    assert_eq!(lease.checkpoint, Checkpoint::Sequence("200".into()));
    assert_eq!(lease.owner_switches, 2);
}

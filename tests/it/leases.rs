//! The lease table's fencing against moto (DynamoDB conditional writes and transactions): of two
//! workers racing for one lease only one wins, a worker that lost its lease can no longer
//! checkpoint, a take of a silent pod's lease loses to a heartbeat that lands first, and a
//! stream's start is decided once.

use std::time::Duration;

use dynamodb_nakadi_relay::config::InitialPosition;
use dynamodb_nakadi_relay::lease::Liveness;
use dynamodb_nakadi_relay::lease::{AuditEntry, Checkpoint, LeaseError, LeaseTable};
use dynamodb_nakadi_relay::stream::ShardId;

use crate::support::*;

const STREAM: &str =
    "arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/2026-11-22T00:00:00.000";

async fn table(moto: &Moto) -> LeaseTable {
    let t = LeaseTable::new(
        moto.dynamodb().await,
        "leases".into(),
        STREAM.into(),
        Duration::from_secs(5),
    );
    t.ensure_exists(true).await.unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_for_one_lease_never_both_own_it() {
    let moto = Moto::start("leases_race").await;
    let (a, b) = (table(&moto).await, table(&moto).await);
    for round in 0..20 {
        let shard = ShardId::new(format!("shard-{round}"));
        assert!(a.create(&shard, &[]).await.unwrap());
        let snapshot = a.scan().await.unwrap();
        let lease = snapshot
            .leases
            .iter()
            .find(|l| l.shard_id == shard)
            .unwrap();
        let (ra, rb) = tokio::join!(
            a.take(lease, "worker-a", None),
            b.take(lease, "worker-b", None)
        );
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(winners, 1, "round {round}: both or neither took the lease");
        assert!(matches!(ra.err().or(rb.err()), Some(LeaseError::Lost(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_checkpoint_or_release() {
    let moto = Moto::start("leases_fencing").await;
    let (a, b) = (table(&moto).await, table(&moto).await);
    let shard = ShardId::new("shard-1");
    a.create(&shard, &[]).await.unwrap();
    let seen = a.scan().await.unwrap().leases.remove(0);
    let owned_a = a.take(&seen, "worker-a", None).await.unwrap();
    a.checkpoint(
        &owned_a,
        "worker-a",
        &Checkpoint::Sequence("100".into()),
        None,
    )
    .await
    .unwrap();

    // B takes the lease over (as after A's heartbeat fell silent; A never wrote one here).
    let seen = b.scan().await.unwrap().leases.remove(0);
    let silent = ("worker-a".to_owned(), Liveness::Absent);
    let owned_b = b.take(&seen, "worker-b", Some(&silent)).await.unwrap();
    b.checkpoint(
        &owned_b,
        "worker-b",
        &Checkpoint::Sequence("200".into()),
        None,
    )
    .await
    .unwrap();

    let late = a
        .checkpoint(
            &owned_a,
            "worker-a",
            &Checkpoint::Sequence("150".into()),
            None,
        )
        .await;
    assert!(matches!(late, Err(LeaseError::Lost(_))), "{late:?}");
    assert!(matches!(
        a.release(&owned_a, "worker-a").await,
        Err(LeaseError::Lost(_))
    ));
    let lease = b.scan().await.unwrap().leases.remove(0);
    assert_eq!(lease.owner.as_deref(), Some("worker-b"));
    assert_eq!(lease.checkpoint, Checkpoint::Sequence("200".into()));
    assert_eq!(lease.owner_switches, 2);
}

/// Cause 5/6 of the stream-lifecycle issue: a take of a silent pod's lease is one transaction
/// with a check of that pod's heartbeat counter, so a heartbeat that lands between the scan and
/// the take keeps the lease where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_landing_before_the_take_keeps_the_lease() {
    let moto = Moto::start("leases_heartbeat_wins").await;
    let (a, b) = (table(&moto).await, table(&moto).await);
    let shard = ShardId::new("shard-1");
    a.create(&shard, &[]).await.unwrap();
    a.heartbeat("worker-a", "fp").await.unwrap();
    let seen = a.scan().await.unwrap().leases.remove(0);
    a.take(&seen, "worker-a", None).await.unwrap();

    let snapshot = b.scan().await.unwrap();
    let beat = snapshot
        .workers
        .iter()
        .find(|w| w.worker_id == "worker-a")
        .unwrap()
        .counter;
    let lease = snapshot.leases[0].clone();
    // A beats again after B's scan: B's view of A is stale.
    a.heartbeat("worker-a", "fp").await.unwrap();
    let silent = ("worker-a".to_owned(), Liveness::Silent { counter: beat });
    let taken = b.take(&lease, "worker-b", Some(&silent)).await;
    assert!(matches!(taken, Err(LeaseError::Lost(_))), "{taken:?}");
    let lease = b.scan().await.unwrap().leases.remove(0);
    assert_eq!(lease.owner.as_deref(), Some("worker-a"));

    // Once A really is silent at the counter B saw, the take goes through.
    let snapshot = b.scan().await.unwrap();
    let beat = snapshot.workers[0].counter;
    let silent = ("worker-a".to_owned(), Liveness::Silent { counter: beat });
    b.take(&snapshot.leases[0], "worker-b", Some(&silent))
        .await
        .unwrap();
    let lease = b.scan().await.unwrap().leases.remove(0);
    assert_eq!(lease.owner.as_deref(), Some("worker-b"));
}

/// Cause 4: the first start is decided once per stream, by whichever pod comes first, and never
/// again: not by a pod configured otherwise, not after every lease aged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_start_is_decided_once_and_kept() {
    let moto = Moto::start("leases_stream_start").await;
    let (a, b) = (table(&moto).await, table(&moto).await);
    let (sa, sb) = tokio::join!(
        a.stream_start(InitialPosition::Latest, false),
        b.stream_start(InitialPosition::TrimHorizon, false)
    );
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa, sb, "both pods follow the one decision");
    // Decided again later, with no lease at all (every lease aged out): still the first answer.
    let again = a
        .stream_start(InitialPosition::TrimHorizon, false)
        .await
        .unwrap();
    assert_eq!(again, sa);
    if sa.position == "LATEST" {
        let start = sa
            .skip_before_ms
            .expect("LATEST records when reading began");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (now - start).abs() < 60_000,
            "the service's time: {start} vs {now}"
        );
        assert!(!sa.skips(start - 1000), "a margin of a second is kept");
        assert!(sa.skips(start - 1001));
    } else {
        assert_eq!(sa.skip_before_ms, None);
    }
}

/// An upgraded stream (leases of an earlier version, no start item) skips nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_leases_from_before_the_start_item_skips_nothing() {
    let moto = Moto::start("leases_stream_start_upgrade").await;
    let a = table(&moto).await;
    let start = a.stream_start(InitialPosition::Latest, true).await.unwrap();
    assert_eq!(start.position, "TRIM_HORIZON");
    assert_eq!(start.skip_before_ms, None);
}

/// Issue #24: an operator's rewind and skip fence the owner like a take. The owner's checkpoint,
/// end marker and release all fail once either is written, so it cannot overwrite them, and a
/// write conditioned on a counter the owner has since moved is refused, to be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rewind_or_skip_fences_the_owner_out() {
    let moto = Moto::start("leases_operator_fence").await;
    let (pod, operator) = (table(&moto).await, table(&moto).await);
    let shard = ShardId::new("shard-1");
    pod.create(&shard, &[]).await.unwrap();
    let seen = pod.scan().await.unwrap().leases.remove(0);
    let owned = pod.take(&seen, "worker-a", None).await.unwrap();
    let stale = operator.scan().await.unwrap().leases.remove(0);
    pod.checkpoint(
        &owned,
        "worker-a",
        &Checkpoint::Sequence("100".into()),
        Some(1_000),
    )
    .await
    .unwrap();
    let audit = AuditEntry {
        action: "rewind".into(),
        by: "arn:aws:iam::123456789012:user/oncall".into(),
        reason: "test".into(),
        at: "2026-12-07T06:00:00Z".into(),
        change: "checkpoint 100 -> TRIM_HORIZON".into(),
    };
    assert!(
        !operator.rewind(&stale, 0, &audit).await.unwrap(),
        "a rewind of a lease read before the owner's checkpoint must be refused"
    );
    let fresh = operator.scan().await.unwrap().leases.remove(0);
    assert_eq!(fresh.checkpoint_created_ms, Some(1_000));
    assert!(operator.rewind(&fresh, 0, &audit).await.unwrap());
    let late = pod
        .checkpoint(
            &owned,
            "worker-a",
            &Checkpoint::Sequence("150".into()),
            None,
        )
        .await;
    assert!(matches!(late, Err(LeaseError::Lost(_))), "{late:?}");
    let end = pod
        .checkpoint(&owned, "worker-a", &Checkpoint::ShardEnd, None)
        .await;
    assert!(matches!(end, Err(LeaseError::Lost(_))), "{end:?}");
    // A release may take the moved counter for its own earlier attempt; either way it writes
    // nothing, which the reads below show.
    pod.release(&owned, "worker-a").await.ok();
    let rewound = operator.scan().await.unwrap().leases.remove(0);
    assert_eq!(rewound.checkpoint, Checkpoint::TrimHorizon);
    assert_eq!(rewound.owner, None);
    assert_eq!(rewound.operator.replay_from_ms, Some(0));
    assert_eq!(rewound.checkpoint_created_ms, None);

    // A skip works the same way on the lease the next owner takes.
    let owned = pod.take(&rewound, "worker-b", None).await.unwrap();
    let skip = AuditEntry {
        action: "skip".into(),
        ..audit.clone()
    };
    assert!(
        operator
            .skip(&rewound, "120", &skip)
            .await
            .is_ok_and(|w| !w)
    );
    let current = operator.scan().await.unwrap().leases.remove(0);
    assert!(operator.skip(&current, "120", &skip).await.unwrap());
    let late = pod
        .checkpoint(
            &owned,
            "worker-b",
            &Checkpoint::Sequence("130".into()),
            None,
        )
        .await;
    assert!(matches!(late, Err(LeaseError::Lost(_))), "{late:?}");
    let marked = operator.scan().await.unwrap().leases.remove(0);
    assert_eq!(marked.operator.skip_sequence_numbers, ["120"]);
    let actions: Vec<&str> = marked
        .operator
        .audit
        .iter()
        .map(|a| a.action.as_str())
        .collect();
    assert_eq!(actions, ["rewind", "skip"]);
}

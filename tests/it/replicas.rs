//! Many replicas and shard lineage: real relay binaries reading the DynamoDB Streams fault
//! server (shards that split, small DescribeStream pages, expiring iterators, trimming,
//! throttling), with moto for the lease table and SQS.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// Whether, on each of `shards`, some record written after `since` has arrived.
fn progressed(
    written: &[Written],
    arrived: &HashSet<String>,
    shards: &HashSet<String>,
    since: Instant,
) -> bool {
    shards.iter().all(|shard| {
        written
            .iter()
            .any(|w| &w.shard == shard && w.started > since && arrived.contains(&w.eid))
    })
}

fn shards_of(status: &Value, owner: &str) -> HashSet<String> {
    status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|sh| sh["owner"] == owner && sh["state"] == "owned")
        .map(|sh| sh["shard_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every readable shard is owned by one of `owners`.
fn all_owned_by(status: &Value, owners: &[&str]) -> bool {
    status["shards"].as_array().unwrap().iter().all(|sh| {
        !(sh["state"] == "owned" || sh["state"] == "unowned")
            || owners
                .iter()
                .any(|o| sh["owner"] == *o && sh["state"] == "owned")
    })
}

async fn status(relay: &Relay) -> Option<Value> {
    let (code, body) = relay.get("/status").await?;
    (code == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Everything written arrived, and per key in write order (first arrival of each eid).
async fn check_complete_and_ordered(nakadi: &Nakadi, written: &[Written]) -> usize {
    let expected: HashSet<String> = written.iter().map(|w| w.eid.clone()).collect();
    let events = wait_for_every(
        "every written record at Nakadi",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let events = nakadi.events().await;
            let got: HashSet<String> = events
                .iter()
                .map(|e| e["metadata"]["eid"].as_str().unwrap().to_owned())
                .collect();
            expected.is_subset(&got).then_some(events)
        },
    )
    .await;
    assert_written_and_ordered(&events, &expected);
    events.len() - expected.len()
}

/// `events` (in arrival order) are exactly the `expected` eids, each key's in write order (first
/// arrival of each eid).
fn assert_written_and_ordered(events: &[Value], expected: &HashSet<String>) {
    let (per_key, eids) = per_key_sequences(events);
    assert_eq!(&eids, expected, "events that were never written");
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} out of write order: {seqs:?}"
        );
    }
}

/// DescribeStream pages of 5 shards: paging is exercised on every sync.
async fn setup(test: &str, shards: usize) -> FaultSetup {
    FaultSetup::start(test, shards, 5).await
}

/// Keys per write round in the fail-over tests. The fault server routes keys by md5 over equal
/// hash slices; with 32 keys every shard of an 8- or 12-shard stream gets writes (16 or 24 keys
/// leave one shard empty, and a test waiting for progress on it would wait forever).
const FAILOVER_KEYS: usize = 32;

/// Starts continuous writes and waits until the relays are publishing them.
async fn start_writing(s: &FaultSetup, every: Duration) -> Writer {
    let writer = Writer::start(s.streams.ctl.clone(), s.arn.clone(), FAILOVER_KEYS, every);
    wait_for_every(
        "first events",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async { (s.nakadi.events().await.len() >= 200).then_some(()) },
    )
    .await;
    writer
}

fn owned(status: &Value) -> usize {
    status["leases_owned"].as_u64().unwrap() as usize
}

/// Waits until both relays own `n` leases.
async fn wait_leases_each(a: &Relay, b: &Relay, n: usize) {
    wait_for_every(
        &format!("{n} leases each"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let (a, b) = (owned(&status(a).await?), owned(&status(b).await?));
            (a == n && b == n).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_balance_and_take_over_a_killed_one() {
    let test = "replicas_sigkill";
    let mut s = setup(test, 12).await;
    // The default lease timing, so the takeover time measured is the one users get.
    s.env.remove("RELAY_LEASE_DURATION");
    s.env.remove("RELAY_LEASE_RENEW_INTERVAL");
    let mut relays: Vec<Relay> = (1..=3)
        .map(|i| Relay::start(test, &format!("relay-{i}"), &s.env))
        .collect();
    for r in &relays {
        r.wait_ready().await;
    }
    let started = Instant::now();
    wait_for_every(
        "each relay to own 4 ± 1 of 12 leases",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let mut counts = Vec::new();
            for r in &relays {
                counts.push(owned(&status(r).await?));
            }
            (counts.iter().sum::<usize>() == 12 && counts.iter().all(|c| (3..=5).contains(c)))
                .then_some(())
        },
    )
    .await;
    println!(
        "balanced 12 leases over 3 relays in {:?}",
        started.elapsed()
    );

    let writer = start_writing(&s, Duration::from_millis(100)).await;
    let mut victim = relays.pop().unwrap();
    let victim_shards = shards_of(&status(&victim).await.unwrap(), "relay-3");
    assert!(!victim_shards.is_empty());
    victim.process.signal("KILL");
    let killed = Instant::now();
    victim.process.wait_exit(Duration::from_secs(5)).await;

    let took = wait_for_every(
        "the killed relay's shards owned and progressing again",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let st = status(&relays[0]).await?;
            if !all_owned_by(&st, &["relay-1", "relay-2"]) {
                return None;
            }
            let arrived = s.nakadi.eids().await;
            progressed(&writer.written(), &arrived, &victim_shards, killed)
                .then(|| killed.elapsed())
        },
    )
    .await;
    println!(
        "SIGKILL takeover: {} shards owned and progressing again after {took:?}",
        victim_shards.len()
    );
    assert!(took <= Duration::from_secs(15), "takeover took {took:?}");

    let written = writer.finish().await;
    let duplicates = check_complete_and_ordered(&s.nakadi, &written).await;
    println!(
        "{} records, {duplicates} published twice (pages in flight at the kill)",
        written.len()
    );
    drop(s.moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_within_a_round_and_publishes_nothing_twice() {
    let test = "replicas_sigterm";
    let s = setup(test, 8).await;
    let mut relays: Vec<Relay> = (1..=2)
        .map(|i| Relay::start(test, &format!("relay-{i}"), &s.env))
        .collect();
    for r in &relays {
        r.wait_ready().await;
    }
    wait_leases_each(&relays[0], &relays[1], 4).await;
    let writer = start_writing(&s, Duration::from_millis(50)).await;
    let mut leaving = relays.pop().unwrap();
    let its_shards = shards_of(&status(&leaving).await.unwrap(), "relay-2");
    leaving.process.signal("TERM");
    let status_code = leaving.process.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status_code.code(), Some(0), "{}", leaving.logs());
    let exited = Instant::now();
    let took = wait_for_every(
        "relay-1 to continue relay-2's shards",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let st = status(&relays[0]).await?;
            if !all_owned_by(&st, &["relay-1"]) {
                return None;
            }
            let arrived = s.nakadi.eids().await;
            progressed(&writer.written(), &arrived, &its_shards, exited).then(|| exited.elapsed())
        },
    )
    .await;
    println!(
        "SIGTERM hand-over: relay-1 continued {} shards {took:?} after relay-2 exited",
        its_shards.len()
    );
    assert!(took <= Duration::from_secs(2), "hand-over took {took:?}");
    let written = writer.finish().await;
    let duplicates = check_complete_and_ordered(&s.nakadi, &written).await;
    assert_eq!(
        duplicates, 0,
        "events published twice across a graceful hand-over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_keep_per_key_order_across_parent_and_child() {
    let test = "replicas_splits";
    let s = setup(test, 4).await;
    let relays: Vec<Relay> = (1..=2)
        .map(|i| Relay::start(test, &format!("relay-{i}"), &s.env))
        .collect();
    for r in &relays {
        r.wait_ready().await;
    }
    let writer = Writer::start(
        s.streams.ctl.clone(),
        s.arn.clone(),
        16,
        Duration::from_millis(50),
    );
    for round in 1..=2 {
        let before = writer.written().len();
        wait_for_every(
            "writes before the split",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async { (writer.written().len() >= before + 300).then_some(()) },
        )
        .await;
        let split = s
            .streams
            .ctl
            .call("split-all", json!({"stream_arn": s.arn, "children": 2}))
            .await;
        println!("split round {round}: {}", split["children"]);
    }
    let before = writer.written().len();
    wait_for_every(
        "writes after the last split",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { (writer.written().len() >= before + 300).then_some(()) },
    )
    .await;
    let written = writer.finish().await;
    check_complete_and_ordered(&s.nakadi, &written).await;
    let st = wait_for_every(
        "parents finished and children owned",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let st = status(&relays[0]).await?;
            let states: Vec<&str> = st["shards"]
                .as_array()?
                .iter()
                .map(|sh| sh["state"].as_str().unwrap())
                .collect();
            let finished = states.iter().filter(|s| **s == "finished").count();
            let owned = states.iter().filter(|s| **s == "owned").count();
            (finished == 4 + 8 && owned == 16).then_some(st)
        },
    )
    .await;
    assert_eq!(st["shards"].as_array().unwrap().len(), 4 + 8 + 16);
    for r in &relays {
        wait_for("lag back to zero", Duration::from_secs(30), || async {
            let (_, m) = r.get("/metrics").await?;
            m.lines()
                .any(|l| l == "relay_stream_lag_seconds{table=\"orders\"} 0")
                .then_some(())
        })
        .await;
    }
}

/// One relay on a 2-shard stream, with some records already delivered.
async fn single_relay(test: &str) -> (FaultSetup, Relay, Vec<Written>) {
    let s = setup(test, 2).await;
    let relay = Relay::start(test, "relay-1", &s.env);
    relay.wait_ready().await;
    let written = write_some(&s, 0, 20).await;
    wait_for_every(
        "the first records",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { (s.nakadi.eids().await.len() == written.len()).then_some(()) },
    )
    .await;
    (s, relay, written)
}

async fn write_some(s: &FaultSetup, first_seq: u64, keys: usize) -> Vec<Written> {
    let batch: Vec<(String, u64)> = (0..keys)
        .map(|k| (format!("key-{k:03}"), first_seq))
        .collect();
    s.streams.ctl.write(&s.arn, &batch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterators_are_reopened_after_the_checkpoint() {
    let (s, relay, mut written) = single_relay("replicas_expired").await;
    s.streams
        .ctl
        .call("expire-iterators", json!({"stream_arn": s.arn}))
        .await;
    written.extend(write_some(&s, 1, 20).await);
    let duplicates = check_complete_and_ordered(&s.nakadi, &written).await;
    assert_eq!(
        duplicates, 0,
        "reopening must continue after the checkpoint"
    );
    let (_, m) = relay.get("/metrics").await.unwrap();
    assert!(
        metric(
            &m,
            r#"relay_aws_errors_total{kind="expired_iterator",operation="GetRecords"}"#
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_backs_off_and_loses_nothing() {
    let (s, relay, mut written) = single_relay("replicas_throttled").await;
    s.streams
        .ctl
        .call(
            "throttle",
            json!({"operation": "GetRecords", "times": 12, "error": "LimitExceededException"}),
        )
        .await;
    written.extend(write_some(&s, 1, 20).await);
    check_complete_and_ordered(&s.nakadi, &written).await;
    let (_, m) = relay.get("/metrics").await.unwrap();
    assert!(
        metric(
            &m,
            r#"relay_aws_errors_total{kind="throttling",operation="GetRecords"}"#
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_checkpoint_continues_from_trim_horizon_and_counts_it() {
    let test = "replicas_trimmed";
    let (s, mut relay, first) = single_relay(test).await;
    relay.process.signal("TERM");
    relay.process.wait_exit(Duration::from_secs(30)).await;
    // While the relay is down, more records come and the stream trims past its checkpoints.
    let lost = write_some(&s, 1, 20).await;
    let kept = write_some(&s, 2, 20).await;
    let shards: HashSet<&String> = first.iter().map(|w| &w.shard).collect();
    for shard in shards {
        let trim = first
            .iter()
            .chain(&lost)
            .filter(|w| &w.shard == shard)
            .count();
        s.streams
            .ctl
            .call(
                "trim",
                json!({"stream_arn": s.arn, "shard_id": shard, "count": trim}),
            )
            .await;
    }
    let relay = Relay::start(test, "relay-2", &s.env);
    relay.wait_ready().await;
    let expected: Vec<Written> = first.iter().chain(&kept).cloned().collect();
    check_complete_and_ordered(&s.nakadi, &expected).await;
    let arrived = s.nakadi.eids().await;
    assert!(
        lost.iter().all(|w| !arrived.contains(&w.eid)),
        "trimmed records cannot arrive"
    );
    let (_, m) = relay.get("/metrics").await.unwrap();
    assert!(
        metric(&m, "relay_records_trimmed_total{table=\"orders\"}") >= 1.0,
        "{m}"
    );
    assert!(
        relay.logs().contains("trimmed"),
        "an ERROR log names the trimmed data"
    );
}

/// Cause 1 of the stream-lifecycle issue: a shard that aged out of the stream with its lease
/// checkpointed mid-shard was taken, ended `Gone`, released and taken again every round, for
/// ever, and its children were never read. Now it is counted as trimmed once two listings no
/// longer show it, its lease is finished, and its children are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_aged_out_unread_is_counted_as_trimmed_and_its_children_start() {
    let test = "replicas_aged_out";
    let s = setup(test, 1).await;
    let mut env = s.env.clone();
    env.insert("RELAY_SHARD_SYNC_INTERVAL".into(), "1s".into());
    let mut relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    let first = write_some(&s, 0, 10).await;
    check_complete_and_ordered(&s.nakadi, &first).await;
    relay.process.signal("KILL");
    relay.process.wait_exit(Duration::from_secs(10)).await;

    // While no relay runs, the shard gets records nobody reads, closes, and ages out.
    let unread = write_some(&s, 1, 10).await;
    let parent = first[0].shard.clone();
    let split = s
        .streams
        .ctl
        .call(
            "split",
            json!({"stream_arn": s.arn, "shard_id": parent, "children": 2}),
        )
        .await;
    assert_eq!(
        split["children"].as_array().map(Vec::len),
        Some(2),
        "{split}"
    );
    s.streams
        .ctl
        .call(
            "remove-shard",
            json!({"stream_arn": s.arn, "shard_id": parent}),
        )
        .await;
    let children = write_some(&s, 2, 10).await;
    assert!(children.iter().all(|w| w.shard != parent));

    let relay = Relay::start(test, "relay-2", &env);
    relay.wait_ready().await;
    let expected: Vec<Written> = first.iter().chain(&children).cloned().collect();
    check_complete_and_ordered(&s.nakadi, &expected).await;
    let arrived = s.nakadi.eids().await;
    assert!(unread.iter().all(|w| !arrived.contains(&w.eid)));
    let trimmed = wait_for(
        "the trimmed shard to be counted",
        Duration::from_secs(30),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            let n = metric(&m, "relay_shards_trimmed_total{table=\"orders\"}");
            (n >= 1.0).then_some(n)
        },
    )
    .await;
    assert_eq!(trimmed, 1.0, "counted once, never in a loop");
    assert!(relay.logs().contains("aged out of the stream"));
}

/// Cause 11 of the stream-lifecycle issue: two releases with different event types sharing one
/// lease table and stream split its records between them. Now a pod that sees a live pod of
/// another configuration takes no leases until that pod is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_another_configuration_takes_no_leases_while_the_first_is_alive() {
    let test = "replicas_conflict";
    let s = setup(test, 4).await;
    let mut first = Relay::start(test, "relay-1", &s.env);
    first.wait_ready().await;
    wait_for(
        "relay-1 to own every lease",
        Duration::from_secs(30),
        || async { status(&first).await.filter(|st| owned(st) == 4) },
    )
    .await;
    let mut env = s.env.clone();
    env.insert("RELAY_EVENT_TYPE".into(), "payments.other-type".into());
    let second = Relay::start(test, "relay-2", &env);
    second.wait_ready().await;
    let conflict = |relay: &Relay| {
        let relay = relay.http().map(str::to_owned);
        async move {
            let m = reqwest::get(format!("{}/metrics", relay?))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            Some(metric(&m, "relay_config_conflict{table=\"orders\"}"))
        }
    };
    wait_for(
        "relay-2 to see the conflict",
        Duration::from_secs(30),
        || async { (conflict(&second).await? == 1.0).then_some(()) },
    )
    .await;
    let written = write_some(&s, 0, 20).await;
    check_complete_and_ordered(&s.nakadi, &written).await;
    let st = status(&second).await.expect("relay-2 answers /status");
    assert_eq!(
        owned(&st),
        0,
        "a pod of another configuration took a lease: {st}"
    );
    assert!(second.logs().contains("another configuration"));

    first.process.signal("TERM");
    first.process.wait_exit(Duration::from_secs(30)).await;
    wait_for(
        "relay-2 to take over once relay-1 is gone",
        Duration::from_secs(30),
        || async { status(&second).await.filter(|st| owned(st) == 4) },
    )
    .await;
    assert_eq!(conflict(&second).await, Some(0.0));
}

/// Cause 5 of the stream-lifecycle issue: heartbeats and renewals shared one loop with
/// DescribeStream, so one slow call (an SDK attempt may take up to 10 s) outlasted the lease and
/// the other pods took every lease of a healthy pod. The heartbeat now has a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_describe_stream_takes_no_lease_from_a_healthy_pod() {
    let test = "replicas_slow_describe";
    let s = setup(test, 4).await;
    let mut env = s.env.clone();
    // A sync every round, so every round of both pods meets the slow calls.
    env.insert("RELAY_SHARD_SYNC_INTERVAL".into(), "1s".into());
    let relays = [
        Relay::start(test, "relay-1", &env),
        Relay::start(test, "relay-2", &env),
    ];
    for r in &relays {
        r.wait_ready().await;
    }
    wait_for("two leases each", Duration::from_secs(60), || async {
        for r in &relays {
            status(r).await.filter(|st| owned(st) == 2)?;
        }
        Some(())
    })
    .await;
    // One call twice the lease duration (4 s): one pod's round is stuck in it while the other
    // pod goes on and would take that pod's leases if its heartbeat waited for the round.
    s.streams
        .ctl
        .call(
            "latency",
            json!({"operation": "DescribeStream", "seconds": 8, "times": 1}),
        )
        .await;
    let injected = Instant::now();
    let written = write_some(&s, 0, 32).await;
    wait_for(
        "the slow call to be answered",
        Duration::from_secs(30),
        || async { (injected.elapsed() >= Duration::from_secs(10)).then_some(()) },
    )
    .await;
    let duplicates = check_complete_and_ordered(&s.nakadi, &written).await;
    assert_eq!(duplicates, 0, "a lease moved while its owner was healthy");
    for r in &relays {
        let (_, m) = r.get("/metrics").await.unwrap();
        for series in [
            r#"relay_lease_takeovers_total{kind="expired",table="orders"}"#,
            r#"relay_fence_lapses_total{table="orders"}"#,
        ] {
            assert_eq!(metric(&m, series), 0.0, "{series} on {}", r.process.name);
        }
        let st = status(r).await.unwrap();
        assert_eq!(owned(&st), 2, "{st}");
    }
}

/// Issue #21, overlapped checkpoints: while a page's checkpoint is written, the next page is
/// already published; the checkpoints still land one after another, in order, and nothing is
/// published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_published_while_the_checkpoint_is_written() {
    let test = "replicas_overlapped_checkpoints";
    let mut s = setup(test, 1).await;
    // No interval: each write starts as soon as the one before answered, so writes overlap the
    // publishing of the pages delivered meanwhile (their positions coalesce into the next write).
    s.env
        .insert("RELAY_CHECKPOINT_INTERVAL".into(), "0s".into());
    // Slow checkpoints, so what the shard does meanwhile shows; within one call attempt's limit.
    s.moto.delay("UpdateItem", "checkpoint = :cp", 100).await;
    // A backlog of ten pages of 1,000 records on the one shard, read once the relay starts.
    let mut written = Vec::new();
    for round in 0..10 {
        written.extend(write_some(&s, round, 1000).await);
    }
    let _relay = Relay::start(test, "relay-1", &s.env);
    let duplicates = check_complete_and_ordered(&s.nakadi, &written).await;
    assert_eq!(
        duplicates, 0,
        "a checkpoint overlapped with delivery must not repeat anything"
    );

    let last = written.iter().map(|w| w.sequence).max().unwrap();
    let checkpoints = wait_for_every(
        "the last record's checkpoint",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let calls = s.moto.delayed_calls().await;
            let cp = |c: &Value| -> u128 {
                let body: Value = serde_json::from_str(c["body"].as_str().unwrap()).unwrap();
                body["ExpressionAttributeValues"][":cp"]["S"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let written: Vec<(u128, f64, f64)> = calls
                .iter()
                .map(|c| {
                    (
                        cp(c),
                        c["start"].as_f64().unwrap(),
                        c["end"].as_f64().unwrap(),
                    )
                })
                .collect();
            written.iter().any(|c| c.0 == last).then_some(written)
        },
    )
    .await;
    // In order, one at a time: each starts after the one before it answered.
    for pair in checkpoints.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "checkpoints out of order: {checkpoints:?}"
        );
        assert!(
            pair[0].2 <= pair[1].1,
            "two checkpoints in flight at once: {checkpoints:?}"
        );
    }
    let arrivals: Vec<f64> = arrivals(&s.nakadi).await.iter().map(|(t, _)| *t).collect();
    let overlapped = checkpoints
        .iter()
        .filter(|(_, start, end)| arrivals.iter().any(|t| start < t && t < end))
        .count();
    assert!(
        overlapped >= 2,
        "events must arrive while a checkpoint is written: {overlapped} of {} checkpoints overlapped",
        checkpoints.len()
    );
}

/// A busy shard writes at most one checkpoint per RELAY_CHECKPOINT_INTERVAL (default 1 s), and
/// SIGTERM writes the one still owed: its last checkpoint is the last event it published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_shard_checkpoints_once_per_interval_and_sigterm_writes_the_last() {
    let test = "replicas_checkpoint_interval";
    let s = setup(test, 1).await;
    // Records the checkpoint writes (with their times) without slowing them.
    s.moto.delay("UpdateItem", "checkpoint = :cp", 1).await;
    let mut relay = Relay::start(test, "relay-1", &s.env);
    relay.wait_ready().await;
    let writer = start_writing(&s, Duration::from_millis(20)).await;
    let checkpoint_calls = || async {
        let mut calls: Vec<(f64, u128)> = s
            .moto
            .delayed_calls()
            .await
            .iter()
            .map(|c| {
                let body: Value = serde_json::from_str(c["body"].as_str().unwrap()).unwrap();
                let cp = body["ExpressionAttributeValues"][":cp"]["S"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                (c["start"].as_f64().unwrap(), cp)
            })
            .collect();
        calls.sort_by(|a, b| a.0.total_cmp(&b.0));
        calls
    };
    wait_for_every(
        "four checkpoints of the busy shard",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { (checkpoint_calls().await.len() >= 4).then_some(()) },
    )
    .await;
    relay.process.signal("TERM");
    let code = relay.process.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code.code(), Some(0), "{}", relay.logs());
    writer.finish().await;

    let calls = checkpoint_calls().await;
    for pair in calls.windows(2) {
        assert!(pair[0].1 < pair[1].1, "checkpoints out of order: {calls:?}");
    }
    // The writes while it ran are an interval apart; the one at SIGTERM comes when it comes.
    for pair in calls[..calls.len() - 1].windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= 0.95,
            "two checkpoints within one interval: {calls:?}"
        );
    }
    let last_cp = calls.last().unwrap().1;
    let published = s
        .nakadi
        .events()
        .await
        .iter()
        .map(|e| {
            e["data"]["sequence_number"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap()
        })
        .max()
        .unwrap();
    assert_eq!(
        last_cp, published,
        "the last checkpoint must be the last published record"
    );
}

/// Every event a Nakadi test server stored: (arrival in Unix seconds, the event).
async fn arrivals(nakadi: &Nakadi) -> Vec<(f64, Value)> {
    nakadi
        .events_with_arrival()
        .await
        .iter()
        .map(|e| (e["received_epoch"].as_f64().unwrap(), e["event"].clone()))
        .collect()
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// How the cut-off pod's heartbeats fail.
#[derive(PartialEq)]
enum Cut {
    /// The whole lease table is unreachable: its checkpoints fail too.
    Unreachable,
    /// Only its heartbeat writes are refused (throttled): it checkpoints as before, so only its
    /// fence stops it.
    HeartbeatsRefused,
}

/// Issue #21: a pod whose heartbeats fail while Nakadi works stops publishing at its fence,
/// before the lease duration has passed; the other pod continues its shards after the lease
/// duration. Nothing is lost, and the only duplicates are events the cut-off pod published
/// without being able to checkpoint them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cut_off_from_the_lease_table_stops_at_its_fence_and_another_continues() {
    heartbeats_fail("replicas_lease_table_cut", Cut::Unreachable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_heartbeats_are_refused_stops_at_its_fence_and_another_continues() {
    heartbeats_fail("replicas_heartbeats_refused", Cut::HeartbeatsRefused).await;
}

async fn heartbeats_fail(test: &str, how: Cut) {
    let s = setup(test, 4).await;
    // Each pod publishes to its own Nakadi server, so what the cut-off pod sent, and when, is
    // known exactly.
    let nakadi_cut = Nakadi::start(&format!("{test}_cut"), &[]);
    let proxy = FaultProxy::start(&s.moto.endpoint).await;
    let mut env_cut = s.env.clone();
    env_cut.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url.clone());
    env_cut.insert("RELAY_NAKADI_URL".into(), nakadi_cut.url.clone());
    let cut = Relay::start(test, "relay-cut", &env_cut);
    cut.wait_ready().await;
    let other = Relay::start(test, "relay-other", &s.env);
    other.wait_ready().await;
    wait_leases_each(&cut, &other, 2).await;
    let writer = Writer::start(
        s.streams.ctl.clone(),
        s.arn.clone(),
        FAILOVER_KEYS,
        Duration::from_millis(100),
    );
    wait_for_every(
        "events at both pods' Nakadi",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            (!nakadi_cut.events().await.is_empty() && !s.nakadi.events().await.is_empty())
                .then_some(())
        },
    )
    .await;

    match how {
        Cut::Unreachable => proxy.set_down(true),
        Cut::HeartbeatsRefused => {
            // The heartbeat item's key names the pod; no other write of it does.
            s.moto
                .delay_failing(
                    "UpdateItem",
                    "|worker:relay-cut\"",
                    "ProvisionedThroughputExceededException",
                )
                .await
        }
    }
    let cut_at = epoch_now();
    let lease_duration: f64 = s.env["RELAY_LEASE_DURATION"]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    wait_for_every(
        "relay-other to own every lease",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { (owned(&status(&other).await?) == 4).then_some(()) },
    )
    .await;
    wait_for_every(
        "relay-cut to count its fence lapse",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let (_, m) = cut.get("/metrics").await?;
            (metric(&m, r#"relay_fence_lapses_total{table="orders"}"#) >= 1.0).then_some(())
        },
    )
    .await;
    let written = writer.finish().await;

    let expected: HashSet<String> = written.iter().map(|w| w.eid.clone()).collect();
    let eid = |e: &Value| e["metadata"]["eid"].as_str().unwrap().to_owned();
    let merged = wait_for_every(
        "every written record at one of the two servers",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let mut all = arrivals(&nakadi_cut).await;
            all.extend(arrivals(&s.nakadi).await);
            let got: HashSet<String> = all.iter().map(|(_, e)| eid(e)).collect();
            expected.is_subset(&got).then_some(all)
        },
    )
    .await;
    let from_cut = arrivals(&nakadi_cut).await;
    let last_from_cut = from_cut.iter().map(|(t, _)| *t).fold(0.0, f64::max);
    // Its last successful heartbeat was sent before the cut, so its fence closed at the latest a
    // margin before the lease duration ran out; a request already sent then may still land.
    assert!(
        last_from_cut < cut_at + lease_duration,
        "relay-cut published {:.2} s after the cut, past its fence",
        last_from_cut - cut_at
    );
    if how == Cut::HeartbeatsRefused {
        // Its checkpoints still work, so nothing but the fence stops it, and not at once.
        assert!(
            last_from_cut > cut_at + lease_duration / 2.0,
            "relay-cut stopped {:.2} s after the cut, long before its fence",
            last_from_cut - cut_at
        );
    }
    let mut by_arrival = merged.clone();
    by_arrival.sort_by(|a, b| a.0.total_cmp(&b.0));
    let events: Vec<Value> = by_arrival.into_iter().map(|(_, e)| e).collect();
    assert_written_and_ordered(&events, &expected);
    // A duplicate is an event relay-cut published that relay-other published again: relay-other
    // itself repeats nothing.
    let from_other: Vec<String> = arrivals(&s.nakadi)
        .await
        .iter()
        .map(|(_, e)| eid(e))
        .collect();
    let unique_other: HashSet<&String> = from_other.iter().collect();
    assert_eq!(
        unique_other.len(),
        from_other.len(),
        "relay-other published an event twice"
    );
    let cut_eids: HashMap<String, f64> = from_cut.iter().map(|(t, e)| (eid(e), *t)).collect();
    let repeated: Vec<f64> = from_other
        .iter()
        .filter_map(|e| cut_eids.get(e).copied())
        .collect();
    // What relay-cut had published a second before the cut was checkpointed before it (the
    // checkpoint in flight then answered within a call's limit); only what came later is read
    // again by its successor.
    let early: Vec<&f64> = repeated.iter().filter(|t| **t < cut_at - 1.0).collect();
    assert!(
        early.is_empty(),
        "relay-other repeated events relay-cut had published well before the cut: {early:?} (cut at {cut_at})"
    );
    let repeated = repeated.len();
    println!(
        "heartbeats failing: relay-cut's last event {:.2} s after the cut (lease duration {lease_duration} s); \
         {} records, {repeated} published again by relay-other",
        last_from_cut - cut_at,
        written.len()
    );
}

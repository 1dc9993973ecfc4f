//! A compressed day: a DynamoDB stream's whole life, with three relay pods reading it.
//!
//! The DynamoDB Streams fault server runs its lifecycle (`POST /_test/lifecycle`): every open
//! shard rolls over every [`ROLLOVER_EVERY`] (one child; at rollover [`SPLIT_AT`] the first open
//! shard splits in two), records older than [`RETENTION`] are trimmed and closed shards older than
//! that leave the stream. Against it, once per initial position (TRIM_HORIZON and LATEST):
//!
//! 1. records are written before the first pod starts (LATEST must skip them, TRIM_HORIZON must
//!    deliver them), then three pods start and a writer changes [`KEYS`] keys continuously, each
//!    key's `seq` counting up;
//! 2. one pod is SIGKILLed and restarted, one SIGTERMed and restarted, one SIGSTOPped until the
//!    others own its leases and then SIGCONTed;
//! 3. before the outage: everything written has arrived, every pod sees three live workers and the
//!    active leases are spread within one per pod;
//! 4. every pod is SIGKILLed for longer than the retention while writes go on: the shards that
//!    were open at the kill close and age out with records nobody read;
//! 5. three new pods start, catch up, writing goes on over more rollovers, then stops.
//!
//! Asserted at the end, from the fault server's `/_test/lifecycle-report` (what was trimmed or
//! removed before any GetRecords returned it) and the Nakadi test server (what it accepted):
//! - the records lost are exactly those written while no pod ran into the shards that aged out,
//!   and every other record arrived (duplicates allowed), per key in write order;
//! - the pods' `relay_shards_trimmed_total` add up to the removed shards with unread records;
//! - the paused pod counted a fence lapse and sent nothing for the shards it had owned after
//!   SIGCONT, unless it had taken the shard again first;
//! - the stream's start (the `stream_start` item) was decided once and survived the outage;
//! - every pod reports `relay_workers` = 3 and the active leases are within one per pod.
//!
//! Issue causes covered:
//! - 1 "aged-out unfinished lease blocks children": the shards open at the outage age out unread;
//!   their leases must be finished as trimmed so that their children (and all records written
//!   into them later) are read;
//! - 2 "balancing collapses after rollover": balance is checked after many rollovers and a split,
//!   before the outage and at the end;
//! - 3 "LATEST loses writes across owners": the LATEST run loses nothing written after the start
//!   through kills, a SIGTERM, a pause and the outage;
//! - 4 "first start decided again after outage": after the outage every lease of the old shards is
//!   gone, yet records written during it (LATEST) must arrive and the start item is unchanged;
//! - 6 "paused pod keeps publishing": the SIGSTOP/SIGCONT check.
//!
//! Scale: each run takes about 75 s on two cores. `LIFECYCLE_ROLLOVERS` (default 6)
//! is the number of rollovers before the outage; a longer form is e.g. `LIFECYCLE_ROLLOVERS=30`.
//!
//! Timing of the scenario (not asserted; what makes the assertions exact):
//! - writes pause before the outage until everything has arrived, so no record was read but not
//!   published when the pods die (such a record would be trimmed as "served", yet never arrive);
//! - the pods die right after a rollover, once every closed shard is finished, so the shards that
//!   age out unread are exactly the ones open at the kill, and writes go into each of them before
//!   the next rollover closes them; then writes pause until 2 s after that rollover, so the
//!   retention pass that removes those shards trims nothing else;
//! - the stream's clock (the lifecycle) is stopped from the moment those shards are gone until the
//!   new pods caught up. A real stream rolls over every ~4 h and a relay finishes an aged-out shard
//!   within seconds; compressed to 3 s rollovers, seconds matter, and without the pause each
//!   generation written during the outage would age out before the pods reach it, one after the
//!   other (children wait for their parents), racing the report.
//!
//! Also here, the order a consumer relies on across a shard's life (issue #23): per key,
//! `data.sequence_number` grows across a rollover and a split, and the events validate against
//! the schema `event-type` printed; and the parent/child order check fires in the fault server's
//! broken case (a rewound split) and stays at 0 otherwise.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dynamodb_nakadi_relay::transform::eid_for;
use serde_json::{Value, json};

use crate::support::*;

const SHARDS: usize = 3;
const ROLLOVER_EVERY: f64 = 3.0;
const RETENTION: f64 = 20.0;
const SPLIT_AT: u64 = 2;
/// Keys per write round: with 24 keys every shard of the stream (thirds, and sixths after the
/// split) gets writes in every round.
const KEYS: usize = 24;
const WRITE_EVERY: Duration = Duration::from_millis(120);
const PRE_START_KEYS: usize = 8;
const LEASES: &str = "relay-leases";
const WORKERS: &str = "relay_workers{table=\"orders\"}";
const TRIMMED: &str = "relay_shards_trimmed_total{table=\"orders\"}";
/// The shortest SIGSTOP: the lease duration of `support::base_env` and a second more.
const PAUSE: Duration = Duration::from_secs(5);
const FENCE_LAPSES: &str = "relay_fence_lapses_total{table=\"orders\"}";

/// Waits until `pod` owns no unfinished lease: the others took them over.
async fn leases_taken_from(moto: &Moto, pod: &str) {
    wait_for_every(
        &format!("{pod}'s leases taken over"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let rows = lease_rows(moto).await;
            (!rows
                .iter()
                .any(|r| r.owner.as_deref() == Some(pod) && !r.finished()))
            .then_some(())
        },
    )
    .await;
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `check` until it returns Ok, or returns its last Err at the deadline (for a message
/// that says what was still missing).
async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = check().await;
        if last.is_ok() || Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(every).await;
    }
}

/// Who wrote a record, which tells what must become of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before any pod started.
    BeforeStart,
    /// While the first pods ran.
    Running,
    /// Right after every pod was killed, into the shards that age out before any pod is back.
    IntoAgingShards,
    /// From 2 s after those shards closed to the end.
    Later,
}

#[derive(Clone, Debug)]
struct Rec {
    key: String,
    seq: u64,
    shard: String,
    eid: String,
    phase: Phase,
}

/// The records of a writer whose first round wrote `first_seq`: a round writes every key once,
/// in key order, in one call.
fn recs(written: &[Written], first_seq: u64, phase: Phase) -> Vec<Rec> {
    written
        .iter()
        .enumerate()
        .map(|(i, w)| Rec {
            key: format!("key-{:03}", i % KEYS),
            seq: first_seq + (i / KEYS) as u64,
            shard: w.shard.clone(),
            eid: w.eid.clone(),
            phase,
        })
        .collect()
}

/// One shard lease of the lease table.
#[derive(Debug)]
struct LeaseRow {
    shard: String,
    owner: Option<String>,
    checkpoint: String,
    parents: Vec<String>,
}

impl LeaseRow {
    fn finished(&self) -> bool {
        self.checkpoint == "SHARD_END"
    }
}

async fn lease_rows(moto: &Moto) -> Vec<LeaseRow> {
    let s = |i: &LeaseItem, k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
    lease_items(moto, LEASES, "shard")
        .await
        .expect("scanning the lease table")
        .iter()
        .map(|i| LeaseRow {
            shard: s(i, "shard_id").unwrap(),
            owner: s(i, "owner"),
            checkpoint: s(i, "checkpoint").unwrap(),
            parents: i
                .get("parent_shard_ids")
                .and_then(|v| v.as_l().ok())
                .map(|l| l.iter().filter_map(|p| p.as_s().ok().cloned()).collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// Leases to be read now: not finished, every parent finished or gone from both the stream and
/// the lease table (as the relay's lineage decides).
fn active<'a>(rows: &'a [LeaseRow], listed: &HashSet<String>) -> Vec<&'a LeaseRow> {
    let finished: HashMap<&str, bool> = rows
        .iter()
        .map(|r| (r.shard.as_str(), r.finished()))
        .collect();
    rows.iter()
        .filter(|r| !r.finished())
        .filter(|r| {
            r.parents.iter().all(|p| {
                finished
                    .get(p.as_str())
                    .copied()
                    .unwrap_or(!listed.contains(p))
            })
        })
        .collect()
}

/// The stream's start as the lease table keeps it.
async fn stream_start(moto: &Moto) -> Option<Vec<(String, String)>> {
    let items = lease_items(moto, LEASES, "stream_start").await.ok()?;
    let item = items.first()?;
    let mut attrs: Vec<(String, String)> = item
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    attrs.sort();
    Some(attrs)
}

fn attr<'a>(start: &'a [(String, String)], name: &str) -> &'a str {
    start
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

struct Stream<'a> {
    ctl: &'a StreamsControl,
    arn: &'a str,
}

impl Stream<'_> {
    /// The shards DescribeStream lists now.
    async fn listed(&self) -> Vec<Value> {
        self.ctl
            .get(&format!("shards?stream_arn={}", self.arn))
            .await["shards"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn report(&self) -> Value {
        self.ctl
            .get(&format!("lifecycle-report?stream_arn={}", self.arn))
            .await
    }

    async fn rollovers(&self) -> u64 {
        let report = self.report().await;
        assert!(
            report["error"].is_null(),
            "the lifecycle thread crashed: {}",
            report["error"]
        );
        report["rollovers"].as_u64().unwrap()
    }

    /// Starts (or resumes) the compressed day.
    async fn run_day(&self) {
        self.ctl
            .call(
                "lifecycle",
                json!({"stream_arn": self.arn, "rollover_every": ROLLOVER_EVERY,
                       "retention": RETENTION, "split_at": [SPLIT_AT]}),
            )
            .await;
    }

    /// Stops the stream's clock: no rollover, no trimming, no aging out.
    async fn stop_day(&self) {
        self.ctl
            .call("lifecycle", json!({"stream_arn": self.arn, "stop": true}))
            .await;
    }

    /// Waits for the next rollover; returns its number and its time (epoch seconds).
    async fn next_rollover(&self) -> (u64, f64) {
        let now = self.rollovers().await;
        let n = wait_for_every(
            "the next rollover",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let n = self.rollovers().await;
                (n > now).then_some(n)
            },
        )
        .await;
        (n, self.rollover_time(n).await)
    }

    async fn rollover_time(&self, n: u64) -> f64 {
        self.report().await["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["rollover"].as_u64() == Some(n))
            .and_then(|h| h["time"].as_f64())
            .unwrap_or_else(|| panic!("rollover {n} is not in the history"))
    }
}

async fn scrape(relay: &Relay) -> Option<String> {
    match relay.get("/metrics").await {
        Some((200, m)) => Some(m),
        _ => None,
    }
}

/// The three pods, each slot restarted under a new name (as a Deployment names its pods).
struct Pods {
    test: &'static str,
    env: HashMap<String, String>,
    slots: Vec<Option<Relay>>,
    started: usize,
    /// The last /metrics of every pod that is gone, scraped right before it was stopped:
    /// counters live in the process.
    gone_metrics: Vec<(String, String)>,
    unexpected_exits: Vec<String>,
}

impl Pods {
    fn start(&mut self, slot: usize) -> String {
        self.started += 1;
        let name = format!("relay-{}-{}", (b'a' + slot as u8) as char, self.started);
        self.slots[slot] = Some(Relay::start(self.test, &name, &self.env));
        name
    }

    fn pod(&self, slot: usize) -> &Relay {
        self.slots[slot].as_ref().expect("a pod in the slot")
    }

    fn name(&self, slot: usize) -> String {
        self.pod(slot).process.name.clone()
    }

    fn names(&self) -> Vec<String> {
        (0..self.slots.len()).map(|i| self.name(i)).collect()
    }

    async fn wait_ready(&self) {
        for relay in self.slots.iter().flatten() {
            relay.wait_ready().await;
        }
    }

    /// Takes a pod out of its slot, its counters scraped first.
    async fn take_out(&mut self, slot: usize) -> Relay {
        let relay = self.slots[slot].take().expect("a pod in the slot");
        let metrics = scrape(&relay)
            .await
            .unwrap_or_else(|| panic!("{} does not serve /metrics", relay.process.name));
        self.gone_metrics
            .push((relay.process.name.clone(), metrics));
        relay
    }

    /// A counter summed over every pod that ever ran: the gone ones as last scraped, the
    /// running ones now.
    async fn counter_sum(&self, series: &str) -> Result<f64, String> {
        let mut sum: f64 = self
            .gone_metrics
            .iter()
            .map(|(_, m)| metric(m, series))
            .sum();
        for relay in self.slots.iter().flatten() {
            let m = scrape(relay)
                .await
                .ok_or_else(|| format!("{} does not serve /metrics", relay.process.name))?;
            sum += metric(&m, series);
        }
        Ok(sum)
    }

    /// Pods that exited by themselves are noted (the test fails on them at the end).
    fn check_alive(&mut self) {
        for relay in self.slots.iter_mut().flatten() {
            if let Some(status) = relay.process.child.try_wait().unwrap() {
                let tail: Vec<String> = relay
                    .logs()
                    .lines()
                    .rev()
                    .take(5)
                    .map(String::from)
                    .collect();
                let note = format!(
                    "{} exited by itself ({status}): {tail:?}",
                    relay.process.name
                );
                if !self.unexpected_exits.contains(&note) {
                    println!("lifecycle: {note}");
                    self.unexpected_exits.push(note);
                }
            }
        }
    }
}

/// Every pod sees three live workers, and the active leases are all owned by the three pods,
/// within one per pod. Ok(a description) or Err(why not).
async fn balanced(moto: &Moto, stream: &Stream<'_>, pods: &Pods) -> Result<String, String> {
    let names = pods.names();
    for (slot, name) in names.iter().enumerate() {
        let m = scrape(pods.pod(slot))
            .await
            .ok_or_else(|| format!("{name} serves no /metrics"))?;
        let workers = metric(&m, WORKERS);
        if workers != 3.0 {
            return Err(format!("{name} sees {workers} live workers"));
        }
    }
    let listed: HashSet<String> = stream
        .listed()
        .await
        .iter()
        .map(|s| s["shard_id"].as_str().unwrap().to_owned())
        .collect();
    let rows = lease_rows(moto).await;
    let active = active(&rows, &listed);
    let mut per_pod: HashMap<&str, usize> = names.iter().map(|n| (n.as_str(), 0)).collect();
    for lease in &active {
        match lease.owner.as_deref().and_then(|o| per_pod.get_mut(o)) {
            Some(n) => *n += 1,
            None => {
                return Err(format!(
                    "active lease {} owned by {:?}",
                    lease.shard, lease.owner
                ));
            }
        }
    }
    let (min, max) = (
        per_pod.values().min().copied().unwrap(),
        per_pod.values().max().copied().unwrap(),
    );
    let described = format!("{} active leases: {per_pod:?}", active.len());
    if max - min > 1 {
        return Err(described);
    }
    Ok(described)
}

/// Waits until every record in `expected` has arrived at Nakadi; Err names what is missing.
async fn all_arrived(nakadi: &Nakadi, expected: &[Rec], timeout: Duration) -> Result<(), String> {
    poll(timeout, Duration::from_millis(500), || async {
        let events = nakadi.events().await;
        let got: HashSet<&str> = events
            .iter()
            .map(|e| e["metadata"]["eid"].as_str().unwrap())
            .collect();
        let missing: Vec<&Rec> = expected
            .iter()
            .filter(|r| !got.contains(r.eid.as_str()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut shards: HashMap<&str, usize> = HashMap::new();
        for r in &missing {
            *shards.entry(r.shard.as_str()).or_default() += 1;
        }
        Err(format!(
            "{} of {} records missing, per shard {shards:?}, e.g. {:?}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(3)]
        ))
    })
    .await
}

/// What the paused pod published after SIGCONT, as Nakadi stored it.
struct AfterSigcont {
    /// Requests for shards it had owned before SIGSTOP, sent before it had taken the shard
    /// again: (shard, flow id, eids stored).
    stale: Vec<(String, String, Vec<String>)>,
    /// Events it published after SIGCONT.
    events: usize,
    /// Of those, events of shards it had owned, published after it had taken them again.
    retaken: usize,
}

/// The paused pod's publish requests after SIGCONT, judged against the shards it owned before
/// SIGSTOP.
/// The pod's log after SIGCONT gives its flow ids (the publisher logs each request with it at
/// debug level) and the order of its takes and requests; the Nakadi test server gives what it
/// stored under each flow id and when; the writer's log gives each eid's shard.
async fn stale_publishes(
    nakadi: &Nakadi,
    log_after_sigcont: &str,
    sigcont_epoch: f64,
    old_shards: &HashSet<String>,
    shard_of: &HashMap<String, String>,
) -> AfterSigcont {
    // Line number in the log of each flow id's request, and of each take.
    let mut flows: HashMap<String, usize> = HashMap::new();
    let mut taken_at: HashMap<String, usize> = HashMap::new();
    for (i, line) in log_after_sigcont.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(flow) = v["flow_id"].as_str() {
            flows.entry(flow.to_owned()).or_insert(i);
        }
        let message = v["message"].as_str().unwrap_or("");
        if message.starts_with("took a lease") || message.starts_with("took over the lease") {
            if let Some(shard) = v["shard_id"].as_str() {
                taken_at.entry(shard.to_owned()).or_insert(i);
            }
        }
    }
    let stored = nakadi.events_with_arrival().await;
    let mut stale: HashMap<(String, String), Vec<String>> = HashMap::new();
    let (mut events, mut retaken) = (0, 0);
    for e in &stored {
        let Some(flow) = e["flow_id"].as_str() else {
            continue;
        };
        let Some(&line) = flows.get(flow) else {
            continue;
        };
        if e["received_epoch"].as_f64().unwrap() < sigcont_epoch {
            continue; // sent before SIGSTOP, answered after SIGCONT
        }
        events += 1;
        let eid = e["eid"].as_str().unwrap();
        let Some(shard) = shard_of.get(eid) else {
            continue;
        };
        if !old_shards.contains(shard) {
            continue;
        }
        if taken_at.get(shard).is_some_and(|&t| t < line) {
            retaken += 1; // it took the shard again first
            continue;
        }
        stale
            .entry((shard.clone(), flow.to_owned()))
            .or_default()
            .push(eid.to_owned());
    }
    AfterSigcont {
        stale: stale
            .into_iter()
            .map(|((shard, flow), eids)| (shard, flow, eids))
            .collect(),
        events,
        retaken,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_day_from_trim_horizon() {
    compressed_day("lifecycle_trim_horizon", "TRIM_HORIZON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_day_from_latest() {
    compressed_day("lifecycle_latest", "LATEST").await;
}

async fn compressed_day(test: &'static str, initial: &str) {
    let min_rollovers = env_usize("LIFECYCLE_ROLLOVERS", 6) as u64;
    let began = Instant::now();
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let streams = StreamsFault::start(test);
    let ctl = streams.ctl.clone();
    let arn = ctl.create_stream(SHARDS, 100).await;
    let stream = Stream {
        ctl: &ctl,
        arn: &arn,
    };
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let mut env = fault_env(&moto, &nakadi, &streams, &arn, &dlq);
    env.insert("RELAY_INITIAL_POSITION".into(), initial.into());
    env.insert("RELAY_SHARD_SYNC_INTERVAL".into(), "2s".into());
    // The publisher logs every request's flow id at debug level: which pod sent what.
    env.insert(
        "RUST_LOG".into(),
        "info,dynamodb_nakadi_relay::nakadi::publisher=debug".into(),
    );
    stream.run_day().await;

    // Records before the first start. ApproximateCreationDateTime is whole seconds and the
    // relay keeps a 1 s margin, so they are written 2.5 s before the pods start.
    let pre_batch: Vec<(String, u64)> = (0..PRE_START_KEYS)
        .map(|k| (format!("pre-{k:03}"), 0))
        .collect();
    let pre: Vec<Rec> = ctl
        .write(&arn, &pre_batch)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, w)| Rec {
            key: format!("pre-{i:03}"),
            seq: 0,
            shard: w.shard,
            eid: w.eid,
            phase: Phase::BeforeStart,
        })
        .collect();
    // The pause is part of the scenario, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut pods = Pods {
        test,
        env,
        slots: vec![None, None, None],
        started: 0,
        gone_metrics: Vec::new(),
        unexpected_exits: Vec::new(),
    };
    for slot in 0..3 {
        pods.start(slot);
    }
    pods.wait_ready().await;
    let start = wait_for_every(
        "the stream's start to be decided",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || stream_start(&moto),
    )
    .await;
    assert!(
        attr(&start, "initial_position").contains(&format!("\"{initial}\"")),
        "the start item: {start:?}"
    );

    let writer = Writer::start(ctl.clone(), arn.clone(), KEYS, WRITE_EVERY);
    wait_for_every(
        "the first events",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async { (nakadi.events().await.len() >= 2 * KEYS).then_some(()) },
    )
    .await;

    // SIGKILL: the others take its leases once its heartbeat stood still; then it comes back.
    stream.next_rollover().await;
    let mut killed = pods.take_out(0).await;
    let killed_name = killed.process.name.clone();
    killed.process.signal("KILL");
    killed.process.wait_exit(Duration::from_secs(10)).await;
    leases_taken_from(&moto, &killed_name).await;
    println!("lifecycle: SIGKILLed {killed_name}; its leases were taken over");
    pods.start(0);
    pods.wait_ready().await;

    // SIGTERM: hands its leases over and exits 0; then it comes back.
    stream.next_rollover().await;
    let mut leaving = pods.take_out(1).await;
    leaving.process.signal("TERM");
    let status = leaving.process.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "SIGTERM: {}", leaving.logs());
    println!("lifecycle: SIGTERMed {}", leaving.process.name);
    pods.start(1);
    pods.wait_ready().await;

    // SIGSTOP for longer than the lease duration: the others take its leases; after SIGCONT it
    // must notice that its fence lapsed and publish nothing for the shards it had.
    stream.next_rollover().await;
    let paused_name = pods.name(2);
    wait_for_every(
        "the pod to be paused to own an active lease",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let rows = lease_rows(&moto).await;
            rows.iter()
                .any(|r| r.owner.as_deref() == Some(paused_name.as_str()) && !r.finished())
                .then_some(())
        },
    )
    .await;
    pods.pod(2).process.signal("STOP");
    let paused_at = Instant::now();
    // Read after SIGSTOP: a stopped process writes nothing more.
    let old_shards: HashSet<String> = lease_rows(&moto)
        .await
        .into_iter()
        .filter(|r| r.owner.as_deref() == Some(paused_name.as_str()))
        .map(|r| r.shard)
        .collect();
    leases_taken_from(&moto, &paused_name).await;
    // Longer than the lease duration in any case: a pod whose leases all finished just before
    // the pause loses nothing to a takeover, but its fence must still lapse.
    wait_for(
        "the pause to outlast the lease duration",
        PAUSE + Duration::from_secs(5),
        || async { (paused_at.elapsed() >= PAUSE).then_some(()) },
    )
    .await;
    let log_offset = std::fs::metadata(&pods.pod(2).log).unwrap().len() as usize;
    let sigcont_epoch = epoch_now();
    pods.pod(2).process.signal("CONT");
    println!(
        "lifecycle: SIGSTOPped {paused_name} for {:.1?} (it held the leases of {} shards); SIGCONT",
        paused_at.elapsed(),
        old_shards.len()
    );
    let lapses = wait_for_every(
        "the paused pod to count its fence lapse",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let m = scrape(pods.pod(2)).await?;
            let n = metric(&m, FENCE_LAPSES);
            (n >= 1.0).then_some(n)
        },
    )
    .await;

    while stream.rollovers().await < min_rollovers {
        stream.next_rollover().await;
    }
    pods.check_alive();

    // Before the outage: writes pause until everything has arrived.
    let a_written = writer.finish().await;
    let next_seq = (a_written.len() / KEYS) as u64;
    let running = recs(&a_written, 0, Phase::Running);
    let mut expected: Vec<Rec> = running.clone();
    if initial == "TRIM_HORIZON" {
        expected.extend(pre.iter().cloned());
    }
    all_arrived(&nakadi, &expected, Duration::from_secs(120))
        .await
        .unwrap_or_else(|why| panic!("before the outage: {why}; see target/test-output/{test}/"));

    let shard_of: HashMap<String, String> = running
        .iter()
        .chain(&pre)
        .map(|r| (r.eid.clone(), r.shard.clone()))
        .collect();
    let paused_log = pods.pod(2).logs();
    let after_sigcont = stale_publishes(
        &nakadi,
        paused_log.get(log_offset..).unwrap_or(""),
        sigcont_epoch,
        &old_shards,
        &shard_of,
    )
    .await;
    println!(
        "lifecycle: after SIGCONT {paused_name} counted {lapses} fence lapse(s) and published {} events \
         ({} of its former shards after taking them again, {} stale)",
        after_sigcont.events,
        after_sigcont.retaken,
        after_sigcont
            .stale
            .iter()
            .map(|(_, _, e)| e.len())
            .sum::<usize>()
    );

    let before_outage = poll(Duration::from_secs(45), Duration::from_millis(500), || {
        balanced(&moto, &stream, &pods)
    })
    .await
    .unwrap_or_else(|why| panic!("not balanced before the outage: {why}"));
    println!("lifecycle: balanced before the outage: {before_outage}");

    // The kill: right after a rollover, once every closed shard is finished and every listed
    // shard has a lease, so the next rollover is at least 1.5 s away.
    let (rollover_at_kill, k_listed, k_open) = loop {
        let (n, at) = stream.next_rollover().await;
        let ready = poll(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let listed = stream.listed().await;
                let rows = lease_rows(&moto).await;
                let finished: HashSet<&str> = rows
                    .iter()
                    .filter(|r| r.finished())
                    .map(|r| r.shard.as_str())
                    .collect();
                let leased: HashSet<&str> = rows.iter().map(|r| r.shard.as_str()).collect();
                let pending: Vec<&str> = listed
                    .iter()
                    .filter(|s| {
                        let id = s["shard_id"].as_str().unwrap();
                        !leased.contains(id) || (s["open"] == false && !finished.contains(id))
                    })
                    .map(|s| s["shard_id"].as_str().unwrap())
                    .collect();
                if pending.is_empty() {
                    Ok(listed)
                } else {
                    Err(format!(
                        "closed or unleased shards not finished: {pending:?}"
                    ))
                }
            },
        )
        .await;
        let listed = match ready {
            Ok(listed) => listed,
            Err(why) => panic!("the relay did not finish closed shards: {why}"),
        };
        if stream.rollovers().await == n && epoch_now() < at + ROLLOVER_EVERY - 1.5 {
            let ids = |open: bool| -> HashSet<String> {
                listed
                    .iter()
                    .filter(|s| !open || s["open"] == true)
                    .map(|s| s["shard_id"].as_str().unwrap().to_owned())
                    .collect()
            };
            break (n, ids(false), ids(true));
        }
    };
    for slot in 0..3 {
        let mut relay = pods.take_out(slot).await;
        relay.process.signal("KILL");
        relay.process.wait_exit(Duration::from_secs(10)).await;
    }
    let killed_at = Instant::now();
    println!(
        "lifecycle: outage: every pod SIGKILLed after rollover {rollover_at_kill}; {} shards listed, {} open",
        k_listed.len(),
        k_open.len()
    );

    // Writes into the open shards, which close at the next rollover and age out unread: a round
    // writes into every shard, so half a second is enough and ends well before that rollover.
    let writer = Writer::start_from(ctl.clone(), arn.clone(), KEYS, WRITE_EVERY, next_seq);
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        killed_at + Duration::from_millis(500),
    ))
    .await;
    let b_written = writer.finish().await;
    let aging = recs(&b_written, next_seq, Phase::IntoAgingShards);
    let next_seq = next_seq + (b_written.len() / KEYS) as u64;
    let outside: Vec<&Rec> = aging
        .iter()
        .filter(|r| !k_open.contains(&r.shard))
        .collect();
    assert!(
        outside.is_empty(),
        "scenario: writes meant for the shards open at the kill landed in their children \
         (the machine was too slow to write before the next rollover): {outside:?}"
    );
    let aging_shards: HashSet<&String> = aging.iter().map(|r| &r.shard).collect();
    assert_eq!(
        aging_shards.len(),
        k_open.len(),
        "scenario: every shard open at the kill gets writes"
    );
    // Writes go on from 2 s after the rollover that closed those shards.
    let (_, r1) = stream.next_rollover().await;
    let resume_writes = r1 + 2.0 - epoch_now();
    if resume_writes > 0.0 {
        // Part of the scenario: the gap keeps the pass that removes those shards from trimming
        // anything written later.
        tokio::time::sleep(Duration::from_secs_f64(resume_writes)).await;
    }
    let writer = Writer::start_from(ctl.clone(), arn.clone(), KEYS, WRITE_EVERY, next_seq);
    let later_first_seq = next_seq;

    // The outage lasts until every shard listed at the kill has aged out of the stream.
    poll(
        Duration::from_secs_f64(RETENTION + 3.0 * ROLLOVER_EVERY + 15.0),
        Duration::from_millis(100),
        || async {
            let listed: Vec<String> = stream
                .listed()
                .await
                .iter()
                .map(|s| s["shard_id"].as_str().unwrap().to_owned())
                .filter(|id| k_listed.contains(id))
                .collect();
            if listed.is_empty() {
                Ok(())
            } else {
                Err(format!("still listed: {listed:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|why| panic!("the shards of before the outage never aged out: {why}"));
    stream.stop_day().await;
    let outage = killed_at.elapsed();
    println!(
        "lifecycle: every shard of before the outage aged out after {outage:.1?}; pods start again"
    );

    for slot in 0..3 {
        pods.start(slot);
    }
    pods.wait_ready().await;
    let catch_up_began = Instant::now();
    poll(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let trimmed = pods.counter_sum(TRIMMED).await?;
            if trimmed != k_open.len() as f64 {
                return Err(format!(
                    "relay_shards_trimmed_total adds up to {trimmed}, {} shards aged out unread",
                    k_open.len()
                ));
            }
            let listed = stream.listed().await;
            let rows = lease_rows(&moto).await;
            let unfinished: Vec<&str> = listed
                .iter()
                .filter(|s| s["open"] == false)
                .map(|s| s["shard_id"].as_str().unwrap())
                .filter(|id| !rows.iter().any(|r| r.shard == *id && r.finished()))
                .collect();
            if !unfinished.is_empty() {
                return Err(format!("closed shards not finished: {unfinished:?}"));
            }
            let so_far: Vec<Rec> = expected
                .iter()
                .cloned()
                .chain(recs(&writer.written(), later_first_seq, Phase::Later))
                .collect();
            all_arrived(&nakadi, &so_far, Duration::ZERO).await
        },
    )
    .await
    .unwrap_or_else(|why| {
        panic!("the pods did not catch up after the outage: {why}; see target/test-output/{test}/")
    });
    println!(
        "lifecycle: caught up {:.1?} after the pods started again",
        catch_up_began.elapsed()
    );
    assert_eq!(
        stream_start(&moto).await.as_ref(),
        Some(&start),
        "the stream's start was decided again"
    );

    // The day goes on: more rollovers with writes, then writing stops.
    stream.run_day().await;
    let resumed_at = stream.rollovers().await;
    while stream.rollovers().await < resumed_at + 2 {
        stream.next_rollover().await;
    }
    let c_written = writer.finish().await;
    let later = recs(&c_written, later_first_seq, Phase::Later);
    expected.extend(later.iter().cloned());
    all_arrived(&nakadi, &expected, Duration::from_secs(120))
        .await
        .unwrap_or_else(|why| panic!("at the end: {why}; see target/test-output/{test}/"));
    stream.stop_day().await;
    let report = stream.report().await;
    pods.check_alive();

    // What the stream lost: records trimmed or removed before any GetRecords returned them.
    let lost: HashSet<String> = report["trimmed_unserved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| eid_for(r["event_id"].as_str().unwrap()).to_string())
        .collect();
    let removed_unread: HashSet<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["unread"].as_u64().unwrap() > 0)
        .map(|r| r["shard_id"].as_str().unwrap().to_owned())
        .collect();
    let trimmed = pods
        .counter_sum(TRIMMED)
        .await
        .unwrap_or_else(|why| panic!("{why}"));
    let events = nakadi.events().await;
    let (per_key, arrived) = per_key_sequences(&events);
    let all: Vec<&Rec> = pre
        .iter()
        .chain(&running)
        .chain(&aging)
        .chain(&later)
        .collect();
    let written_eids: HashSet<&str> = all.iter().map(|r| r.eid.as_str()).collect();
    let unknown: Vec<&String> = arrived
        .iter()
        .filter(|e| !written_eids.contains(e.as_str()))
        .collect();
    let missing: Vec<&&Rec> = all
        .iter()
        .filter(|r| !lost.contains(&r.eid) && !arrived.contains(&r.eid))
        .filter(|r| !(r.phase == Phase::BeforeStart && initial == "LATEST"))
        .collect();
    let aging_eids: HashSet<String> = aging.iter().map(|r| r.eid.clone()).collect();
    println!(
        "lifecycle report ({initial}): records={} (before start {}, running {}, into aging shards {}, later {}) \
         lost={} arrived={} duplicates={} rollovers={} splits={} removed={} removed_unread={} \
         relay_shards_trimmed_total={trimmed} outage={outage:.1?} total={:.1?}",
        all.len(),
        pre.len(),
        running.len(),
        aging.len(),
        later.len(),
        lost.len(),
        arrived.len(),
        events.len() - arrived.len(),
        report["rollovers"],
        report["splits"],
        report["removed"].as_array().unwrap().len(),
        removed_unread.len(),
        began.elapsed(),
    );

    assert!(report["error"].is_null(), "lifecycle: {}", report["error"]);
    assert!(
        report["rollovers"].as_u64().unwrap() >= min_rollovers.max(6)
            && report["splits"].as_u64() == Some(1),
        "the day had too few rollovers or no split: {} rollovers, {} splits",
        report["rollovers"],
        report["splits"]
    );
    assert!(unknown.is_empty(), "events nobody wrote: {unknown:?}");
    assert!(
        missing.is_empty(),
        "{} records lost that the stream still served, e.g. {:?}; see target/test-output/{test}/",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        lost, aging_eids,
        "the stream lost exactly the records written while no pod ran into the shards that aged out"
    );
    if initial == "LATEST" {
        let early: Vec<&Rec> = pre.iter().filter(|r| arrived.contains(&r.eid)).collect();
        assert!(
            early.is_empty(),
            "records written before the first start arrived: {early:?}"
        );
    }
    // Per key, the first arrival of each eid in write order, and nothing else.
    let mut want: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in &all {
        if arrived.contains(&r.eid) {
            want.entry(r.key.as_str()).or_default().push(r.seq);
        }
    }
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} out of write order: {seqs:?}"
        );
        assert_eq!(
            Some(seqs),
            want.get(key.as_str()),
            "{key}: events against what was written and not lost"
        );
    }
    assert_eq!(
        removed_unread, k_open,
        "the shards that aged out with unread records are those open at the kill"
    );
    assert_eq!(
        trimmed,
        removed_unread.len() as f64,
        "relay_shards_trimmed_total over every pod against the removed shards with unread records"
    );
    assert!(lapses >= 1.0);
    assert!(
        after_sigcont.stale.is_empty(),
        "{paused_name} published after SIGCONT for shards it no longer owned: {:?}",
        after_sigcont.stale
    );
    let at_end = poll(Duration::from_secs(45), Duration::from_millis(500), || {
        balanced(&moto, &stream, &pods)
    })
    .await
    .unwrap_or_else(|why| panic!("not balanced at the end: {why}"));
    println!("lifecycle: balanced at the end: {at_end}");
    assert!(
        pods.unexpected_exits.is_empty(),
        "pods exited by themselves: {:?}",
        pods.unexpected_exits
    );
}

/// The lease items of the shards: (shard id, checkpoint, last_sequence_number).
async fn shard_ends(moto: &Moto) -> Vec<(String, String, Option<String>)> {
    let s = |i: &LeaseItem, k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
    lease_items(moto, LEASES, "shard")
        .await
        .expect("scanning the lease table")
        .iter()
        .map(|i| {
            (
                s(i, "shard_id").unwrap(),
                s(i, "checkpoint").unwrap(),
                s(i, "last_sequence_number"),
            )
        })
        .collect()
}

/// A field of an event by a Nakadi field path (`data.item.pk`).
fn at<'v>(event: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(event, |v, name| &v[name])
}

/// Validates every `data` against the Draft 4 schema with Python's jsonschema (as Nakadi uses
/// that draft); prints what failed.
const VALIDATE_DATA: &str = r##"
import json, sys, jsonschema
case = json.load(sys.stdin)
schema = json.loads(case["schema"])
jsonschema.Draft4Validator.check_schema(schema)
check = jsonschema.Draft4Validator(schema)
problems = ["%s: %s" % (json.dumps(d), e.message) for d in case["data"] for e in check.iter_errors(d)]
# The validator must bite: an item without its key is refused.
if check.is_valid({"item": {}, "patch": []}):
    problems.append("the schema took an item without its key")
print("\n".join(problems[:20]))
sys.exit(1 if problems else 0)
"##;

fn validate_data(schema: &str, data: Vec<Value>) {
    let mut child = std::process::Command::new(python())
        .args(["-c", VALIDATE_DATA])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the venv's python");
    let case = json!({"schema": schema, "data": data});
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), case.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "events against the event type's schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const ORDER_VIOLATIONS: &str = "relay_lineage_order_violations_total{table=\"orders\"}";
const ORDER_VIOLATION_LOG: &str =
    "child shard's first sequence number is not above its parent's last";

/// Writes rounds of `keys` keys until `n` more records were written.
async fn writes(writer: &Writer, n: usize) {
    let before = writer.count();
    wait_for_every(
        "more writes",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { (writer.count() >= before + n).then_some(()) },
    )
    .await;
}

/// Issue #23: the order consumers are told to use holds across a shard's whole life. The event
/// type that `event-type` prints for the relay's configuration orders each instance
/// (`ordering_instance_ids`) by `ordering_key_fields`; across a rollover and a split on the
/// Streams fault server, those values grow per key in arrival order, are the records' sequence
/// numbers, and every event's `data` is valid against the printed schema. Each finished parent
/// keeps its last record on its lease, and the parent/child order check stays at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_grow_per_key_across_a_rollover_and_a_split() {
    let test = "lifecycle_sequence_numbers";
    let s = FaultSetup::start(test, 2, 100).await;
    let ctl = s.streams.ctl.clone();

    let (code, stdout, stderr) = run_binary(
        &[
            "event-type",
            "--owning-application",
            "stups_orders",
            "--key",
            "pk",
        ],
        &s.env,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let event_type: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let order_by: Vec<&str> = event_type["ordering_key_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let instance_by: Vec<&str> = event_type["ordering_instance_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(order_by, ["data.sequence_number"]);
    assert_eq!(instance_by, ["data.item.pk"]);

    let relay = Relay::start(test, "relay-1", &s.env);
    relay.wait_ready().await;
    let writer = Writer::start(ctl.clone(), s.arn.clone(), KEYS, Duration::from_millis(50));
    writes(&writer, 3 * KEYS).await;
    let rollover = ctl
        .call("split-all", json!({"stream_arn": s.arn, "children": 1}))
        .await;
    writes(&writer, 3 * KEYS).await;
    let rolled: Vec<String> = rollover["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let split = ctl
        .call(
            "split",
            json!({"stream_arn": s.arn, "shard_id": rolled[0], "children": 2}),
        )
        .await;
    writes(&writer, 3 * KEYS).await;
    let written = writer.finish().await;
    println!(
        "sequence numbers: {} records; rollover {}, split {}",
        written.len(),
        rollover["children"],
        split["children"]
    );

    let expected: HashSet<&str> = written.iter().map(|w| w.eid.as_str()).collect();
    let events = wait_for_every(
        "every written record at Nakadi",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let events = s.nakadi.events().await;
            let got: HashSet<&str> = events
                .iter()
                .map(|e| e["metadata"]["eid"].as_str().unwrap())
                .collect();
            expected.is_subset(&got).then_some(events.clone())
        },
    )
    .await;

    // Per ordering instance, the ordering key of each eid's first arrival grows, and is the
    // record's sequence number as the stream sent it, zero-padded.
    let by_eid: HashMap<&str, &Written> = written.iter().map(|w| (w.eid.as_str(), w)).collect();
    let mut seen = HashSet::new();
    let mut per_key: HashMap<String, Vec<&str>> = HashMap::new();
    let mut shards_per_key: HashMap<String, HashSet<&str>> = HashMap::new();
    for e in &events {
        let eid = e["metadata"]["eid"].as_str().unwrap();
        if !seen.insert(eid) {
            continue;
        }
        let key = at(e, instance_by[0]).as_str().unwrap().to_owned();
        let order = at(e, order_by[0]).as_str().unwrap();
        let w = by_eid[eid];
        assert_eq!(order, format!("{:040}", w.sequence), "{e}");
        shards_per_key
            .entry(key.clone())
            .or_default()
            .insert(w.shard.as_str());
        per_key.entry(key).or_default().push(order);
    }
    assert_eq!(per_key.len(), KEYS);
    for (key, orders) in &per_key {
        assert!(
            orders.windows(2).all(|w| w[0] < w[1]),
            "{key}: {order_by:?} does not grow in arrival order: {orders:?}"
        );
    }
    // Every key crossed the rollover, and some also the split.
    assert!(
        shards_per_key.values().all(|s| s.len() >= 2),
        "{shards_per_key:?}"
    );
    assert!(
        shards_per_key.values().any(|s| s.len() == 3),
        "{shards_per_key:?}"
    );

    validate_data(
        event_type["schema"]["schema"].as_str().unwrap(),
        events.iter().map(|e| e["data"].clone()).collect(),
    );

    // The finished parents keep their last record: what the children compared with.
    let mut last_of: HashMap<&str, u128> = HashMap::new();
    for w in &written {
        let last = last_of.entry(w.shard.as_str()).or_default();
        *last = (*last).max(w.sequence);
    }
    let ends = wait_for_every(
        "the split shards finished",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let ends = shard_ends(&s.moto).await;
            (ends.iter().filter(|(_, cp, _)| cp == "SHARD_END").count() == 3).then_some(ends)
        },
    )
    .await;
    for (shard, checkpoint, last) in &ends {
        if checkpoint == "SHARD_END" {
            assert_eq!(
                last.as_deref(),
                Some(last_of[shard.as_str()].to_string().as_str()),
                "{shard}"
            );
        } else {
            assert_eq!(last, &None, "{shard} is not finished");
        }
    }

    let (_, m) = relay.get("/metrics").await.unwrap();
    assert_eq!(metric(&m, ORDER_VIOLATIONS), 0.0);
    assert!(!relay.logs().contains(ORDER_VIOLATION_LOG));
}

/// Issue #23: AWS documents order within a shard only, so the relay checks each child shard's
/// first sequence number against its parents' last. The fault server's rewound split numbers
/// the children's records below their parent's last: each such child is counted and logged
/// with both shards and both numbers, and its records are still published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_numbered_below_its_parent_is_counted_and_logged() {
    let test = "lifecycle_lineage_order_broken";
    let s = FaultSetup::start(test, 1, 100).await;
    let ctl = s.streams.ctl.clone();
    let relay = Relay::start(test, "relay-1", &s.env);
    relay.wait_ready().await;
    let (_, m) = relay.get("/metrics").await.unwrap();
    assert_eq!(
        metric(&m, ORDER_VIOLATIONS),
        0.0,
        "exported at 0 from start"
    );

    let round = |seq: u64| -> Vec<(String, u64)> {
        (0..KEYS).map(|k| (format!("key-{k:03}"), seq)).collect()
    };
    let parent_writes = ctl.write(&s.arn, &round(0)).await;
    let parent = parent_writes[0].shard.clone();
    let parent_last = parent_writes.iter().map(|w| w.sequence).max().unwrap();
    let arrived = |n: usize| {
        let nakadi = &s.nakadi;
        async move { (nakadi.events().await.len() >= n).then_some(()) }
    };
    wait_for("the parent's records", Duration::from_secs(30), || {
        arrived(KEYS)
    })
    .await;
    ctl.call(
        "split",
        json!({"stream_arn": s.arn, "shard_id": parent, "children": 2, "rewind": true}),
    )
    .await;
    let child_writes = ctl.write(&s.arn, &round(1)).await;
    let mut child_first: HashMap<&str, u128> = HashMap::new();
    for w in &child_writes {
        assert_ne!(w.shard, parent);
        let first = child_first.entry(w.shard.as_str()).or_insert(u128::MAX);
        *first = (*first).min(w.sequence);
    }
    assert!(child_first.values().all(|first| *first <= parent_last));
    wait_for(
        "the children's records, published all the same",
        Duration::from_secs(30),
        || arrived(2 * KEYS),
    )
    .await;

    let counted = wait_for(
        "the violations counted",
        Duration::from_secs(30),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            let n = metric(&m, ORDER_VIOLATIONS);
            (n >= child_first.len() as f64).then_some(n)
        },
    )
    .await;
    assert_eq!(counted, child_first.len() as f64, "once per child");
    let parent_last = parent_last.to_string();
    let ends = shard_ends(&s.moto).await;
    assert!(
        ends.iter().any(|(s, cp, last)| s == &parent
            && cp == "SHARD_END"
            && last.as_deref() == Some(parent_last.as_str())),
        "{ends:?}"
    );
    let logs = relay.logs();
    for (child, first) in &child_first {
        let first = first.to_string();
        let line = logs
            .lines()
            .find(|l| l.contains(ORDER_VIOLATION_LOG) && l.contains(child))
            .unwrap_or_else(|| panic!("no log line for {child}:\n{logs}"));
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(line["parent_shard_id"], parent.as_str(), "{line}");
        assert_eq!(
            line["parent_last_sequence_number"],
            parent_last.as_str(),
            "{line}"
        );
        assert_eq!(line["child_shard_id"], *child, "{line}");
        assert_eq!(
            line["child_first_sequence_number"],
            first.as_str(),
            "{line}"
        );
    }
}

/// How many times each eid arrived at Nakadi.
fn arrivals(events: &[Value]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for e in events {
        *count
            .entry(e["metadata"]["eid"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    count
}

/// Waits until every eid of `records` arrived `times` times, and returns all events.
async fn arrived(nakadi: &Nakadi, records: &[Written], times: usize, what: &str) -> Vec<Value> {
    wait_for_every(
        what,
        Duration::from_secs(90),
        Duration::from_millis(250),
        || async {
            let events = nakadi.events().await;
            let count = arrivals(&events);
            records
                .iter()
                .all(|w| count.get(&w.eid).copied().unwrap_or(0) >= times)
                .then_some(events)
        },
    )
    .await
}

/// Within the events that arrived after `from`, each key's first arrivals keep write order.
fn replay_in_key_order(events: &[Value], from: usize) {
    let (per_key, _) = per_key_sequences(&events[from..]);
    for (key, seqs) in per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key}: the replay is out of order: {seqs:?}"
        );
    }
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Issue #24: `rewind` of a running 2-pod deployment, across a rollover on the Streams fault
/// server, to a time and then to TRIM_HORIZON. Every record since the point arrives again with
/// its eid, in per-key order within the replay; the finished parents read again before their
/// children; no pod restarts; records written afterwards arrive too. `leases` shows the two pods
/// and the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_to_a_time_and_to_trim_horizon_across_a_rollover_with_two_pods() {
    let test = "lifecycle_rewind";
    let s = FaultSetup::start(test, 2, 100).await;
    let ctl = s.streams.ctl.clone();
    let pods = [
        Relay::start(test, "relay-1", &s.env),
        Relay::start(test, "relay-2", &s.env),
    ];
    for pod in &pods {
        pod.wait_ready().await;
    }

    // Before the point; then, with a margin over the one-second rounding of creation times,
    // the point; after it, a rollover in the middle.
    let writer = Writer::start(ctl.clone(), s.arn.clone(), KEYS, Duration::from_millis(50));
    writes(&writer, 2 * KEYS).await;
    let before = writer.finish().await;
    let point_ms = wait_for(
        "2.5 s after the last write",
        Duration::from_secs(10),
        || async {
            let now = epoch_ms();
            (now - epoch_ms_of(&before) >= 2500).then_some(now)
        },
    )
    .await;
    let first_seq = before.len() as u64 / KEYS as u64;
    let writer = Writer::start_from(
        ctl.clone(),
        s.arn.clone(),
        KEYS,
        Duration::from_millis(50),
        first_seq,
    );
    writes(&writer, 2 * KEYS).await;
    ctl.call("split-all", json!({"stream_arn": s.arn, "children": 1}))
        .await;
    writes(&writer, 2 * KEYS).await;
    let after = writer.finish().await;
    let all: Vec<Written> = before.iter().chain(&after).cloned().collect();
    arrived(&s.nakadi, &all, 1, "every record once").await;

    let listing = wait_for("the parents finished", Duration::from_secs(30), || async {
        let (code, out, _) = run_binary(&["leases", "--json"], &s.env);
        assert_eq!(code, Some(0));
        let report: Value = serde_json::from_str(&out).unwrap();
        let shards = report["shards"].as_array().unwrap().clone();
        (shards.len() == 4
            && shards.iter().filter(|s| s["state"] == "finished").count() == 2
            && shards.iter().filter(|s| s["state"] == "owned").count() == 2)
            .then_some(shards)
    })
    .await;
    let owners: HashSet<&str> = listing.iter().filter_map(|s| s["owner"].as_str()).collect();
    assert!(
        owners.iter().all(|o| ["relay-1", "relay-2"].contains(o)),
        "{listing:?}"
    );
    assert!(
        listing
            .iter()
            .all(|s| s["last_delivered_age_seconds"].as_i64().is_some()),
        "{listing:?}"
    );

    // Bad input: a time in the future, or past the stream's retention.
    for bad in ["2999-01-01T00:00:00Z", "2000-01-01T00:00:00Z"] {
        let (code, _, err) = run_binary(&["rewind", "--to", bad, "--reason", "test"], &s.env);
        assert_eq!(code, Some(2), "{bad}: {err}");
    }
    // A time a moment ago, to the millisecond, is in the past however the second is rounded.
    let moment_ago = rfc3339_ms(epoch_ms() - 1);
    let (code, _, err) = run_binary(
        &[
            "rewind",
            "--to",
            &moment_ago,
            "--reason",
            "test",
            "--dry-run",
        ],
        &s.env,
    );
    assert_eq!(code, Some(0), "{moment_ago}: {err}");

    let point = rfc3339_ms(point_ms);
    let (code, out, err) = run_binary(
        &[
            "rewind",
            "--to",
            &point,
            "--reason",
            "INC-7: consumer lost data",
            "--json",
        ],
        &s.env,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("after newer ones"), "the warning: {err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["shards"].as_array().unwrap().len(), 4, "{report}");
    let from = s.nakadi.events().await.len();
    let events = arrived(&s.nakadi, &after, 2, "the records since the point again").await;
    let count = arrivals(&events);
    for w in &before {
        assert_eq!(count[&w.eid], 1, "a record before the point was replayed");
    }
    replay_in_key_order(&events, from);

    // Newer records are not lost, and TRIM_HORIZON replays everything the stream holds.
    let writer = Writer::start_from(
        ctl.clone(),
        s.arn.clone(),
        KEYS,
        Duration::from_millis(50),
        first_seq + after.len() as u64 / KEYS as u64,
    );
    writes(&writer, KEYS).await;
    let newer = writer.finish().await;
    arrived(&s.nakadi, &newer, 1, "the records written after the rewind").await;
    let (code, out, err) = run_binary(
        &[
            "rewind",
            "--to",
            "TRIM_HORIZON",
            "--reason",
            "INC-8: replay all",
        ],
        &s.env,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let from = s.nakadi.events().await.len();
    let everything: Vec<Written> = all.iter().chain(&newer).cloned().collect();
    let events = wait_for_every(
        "every record once more",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || async {
            let events = s.nakadi.events().await;
            let replayed = arrivals(&events[from..]);
            everything
                .iter()
                .all(|w| replayed.contains_key(&w.eid))
                .then_some(events)
        },
    )
    .await;
    replay_in_key_order(&events, from);

    let (_, out, _) = run_binary(&["leases", "--json"], &s.env);
    let report: Value = serde_json::from_str(&out).unwrap();
    for shard in report["shards"].as_array().unwrap() {
        let audit: Vec<&str> = shard["audit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            audit,
            ["INC-7: consumer lost data", "INC-8: replay all"],
            "{shard}"
        );
    }
    for pod in &pods {
        let logs = pod.logs();
        assert_eq!(
            logs.matches("\"relay started\"").count(),
            1,
            "a pod restarted"
        );
    }
    assert!(
        pods.iter()
            .any(|p| p.logs().contains("reading the shard as an operator asked")),
        "no pod logged the rewind it acted on"
    );
}

/// The wall-clock time of the last record of `written`, from when its write call started.
fn epoch_ms_of(written: &[Written]) -> i64 {
    let last = written.last().unwrap().started;
    epoch_ms() - last.elapsed().as_millis() as i64
}

//! End-to-end tests: the real relay binary against moto and the Nakadi test server.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::support::*;

/// One write the test made, and the item state after it (None: deleted).
struct Write {
    key: String,
    op: &'static str,
    after: Option<Value>,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

/// A varied order-like item: exact numbers, nested maps and lists, a string set, awkward names.
fn item(key: &str, version: u32, rng: &mut impl rand::Rng) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("pk".to_string(), s(key)),
        ("version".to_string(), n(&version.to_string())),
        (
            "amount".to_string(),
            n(&format!(
                "{}.{:02}",
                rng.random_range(0..100_000),
                rng.random_range(0..100)
            )),
        ),
        (
            "precise".to_string(),
            n("12345678901234567890.123456789012345678"),
        ),
        (
            "status".to_string(),
            s(["open", "paid", "shipped"][rng.random_range(0..3)]),
        ),
        ("a/b~c".to_string(), s("escaped in pointers")),
        (
            "lines".to_string(),
            AttributeValue::L(
                (0..rng.random_range(0..4))
                    .map(|i| {
                        AttributeValue::M(HashMap::from([
                            ("sku".to_string(), s(&format!("sku-{i}"))),
                            ("qty".to_string(), n(&rng.random_range(1..5).to_string())),
                        ]))
                    })
                    .collect(),
            ),
        ),
        (
            "tags".to_string(),
            AttributeValue::Ss(vec!["z".into(), "a".into(), format!("v{}", version % 3)]),
        ),
    ]);
    if rng.random_bool(0.5) {
        item.insert("note".to_string(), s("ünïcødé 💳"));
    }
    item
}

async fn write_changes(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    count: usize,
    keys: usize,
    seed: u64,
) -> Vec<Write> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut state: HashMap<String, u32> = HashMap::new();
    let mut writes = Vec::with_capacity(count);
    for _ in 0..count {
        let key = format!("order-{seed}-{}", rng.random_range(0..keys));
        let exists = state.contains_key(&key);
        if exists && rng.random_bool(0.15) {
            ddb.delete_item()
                .table_name(table)
                .key("pk", s(&key))
                .send()
                .await
                .unwrap();
            state.remove(&key);
            writes.push(Write {
                key,
                op: "D",
                after: None,
            });
        } else {
            let version = state.get(&key).map_or(0, |v| v + 1);
            let it = item(&key, version, &mut rng);
            ddb.put_item()
                .table_name(table)
                .set_item(Some(it.clone()))
                .send()
                .await
                .unwrap();
            state.insert(key.clone(), version);
            writes.push(Write {
                key,
                op: if exists { "U" } else { "C" },
                after: Some(item_json(&it)),
            });
        }
    }
    writes
}

/// Checks that the events are exactly the writes: one event per write, per key in write order,
/// with the right op, item and a patch that turns the previous state into the new one.
fn check_exactly_once(events: &[Value], writes: &[Write]) {
    let eids: HashSet<&str> = events
        .iter()
        .map(|e| e["metadata"]["eid"].as_str().unwrap())
        .collect();
    assert_eq!(eids.len(), events.len(), "an event was published twice");
    assert_eq!(
        events.len(),
        writes.len(),
        "events published vs changes written"
    );
    let mut per_key: HashMap<&str, Vec<&Value>> = HashMap::new();
    for e in events {
        let key = e["data"]["item"]["pk"].as_str().expect("item has pk");
        per_key.entry(key).or_default().push(e);
    }
    let mut expected: HashMap<&str, Vec<&Write>> = HashMap::new();
    for w in writes {
        expected.entry(&w.key).or_default().push(w);
    }
    for (key, ws) in expected {
        let got = per_key
            .get(key)
            .unwrap_or_else(|| panic!("no events for {key}"));
        assert_eq!(got.len(), ws.len(), "events for {key}");
        let mut state = json!({});
        for (e, w) in got.iter().zip(ws) {
            assert_eq!(e["data_op"], w.op, "data_op of {key}");
            let new_state = w.after.clone().unwrap_or(json!({}));
            let item = w.after.as_ref().unwrap_or(&state);
            assert_eq!(&e["data"]["item"], item, "item of {key}");
            let patch: json_patch::Patch =
                serde_json::from_value(e["data"]["patch"].clone()).unwrap();
            let mut patched = state.clone();
            json_patch::patch(&mut patched, &patch).unwrap();
            assert_eq!(
                patched, new_state,
                "patch of {key} does not turn the previous state into the new one"
            );
            state = new_state;
        }
    }
}

struct Env {
    moto: Moto,
    nakadi: Nakadi,
    table: String,
    env: HashMap<String, String>,
}

async fn setup(test: &str) -> Env {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let table = "orders".to_string();
    let stream_arn = moto.create_table(&table).await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let env = base_env(&moto, &nakadi, &stream_arn, "relay-leases", &dlq);
    Env {
        moto,
        nakadi,
        table,
        env,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_exactly_once_with_item_and_patch() {
    let t = setup("every_change_arrives").await;
    let writes = write_changes(&t.moto.dynamodb().await, &t.table, 1000, 300, 1).await;
    let relay = Relay::start("every_change_arrives", "relay-1", &t.env);
    relay.wait_ready().await;
    let events = wait_for("all events at Nakadi", Duration::from_secs(120), || async {
        let events = t.nakadi.events().await;
        (events.len() >= writes.len()).then_some(events)
    })
    .await;
    check_exactly_once(&events, &writes);
    let (_, metrics) = relay.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("relay_records_read_total{table=\"orders\"} 1000"),
        "{metrics}"
    );
    let (status, body) = relay.get("/status").await.unwrap();
    assert_eq!(status, 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["leases_owned"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_halfway_and_restart_loses_and_repeats_nothing() {
    let test = "sigterm_restart";
    let t = setup(test).await;
    let ddb = t.moto.dynamodb().await;
    let mut writes = write_changes(&ddb, &t.table, 300, 100, 2).await;
    // Slow Nakadi so that the first relay is mid-stream when it gets SIGTERM.
    t.nakadi.fault(json!({"latency_ms": 50})).await;
    let mut env = t.env.clone();
    env.insert("RELAY_NAKADI_BATCH_SIZE".into(), "20".into());
    // The first relay runs on two threads (Tokio's work-stealing scheduler), the second on the
    // default one (the current-thread scheduler): the drain and the restart hold on both.
    let mut two_threads = env.clone();
    two_threads.insert("RELAY_WORKER_THREADS".into(), "2".into());
    let mut first = Relay::start(test, "relay-1", &two_threads);
    first.wait_ready().await;
    wait_for("some events to arrive", Duration::from_secs(60), || async {
        (t.nakadi.events().await.len() >= 100).then_some(())
    })
    .await;
    // More changes while the first relay is mid-page, some before and some after its SIGTERM.
    // Started only once it publishes: written before its first read, they would all be in its
    // first page, which it finishes before it stops.
    let writer = {
        let (ddb, table) = (ddb.clone(), t.table.clone());
        tokio::spawn(async move { write_changes(&ddb, &table, 300, 100, 3).await })
    };
    first.process.signal("TERM");
    let status = first.process.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{}",
        first.logs()
    );
    let at_stop = t.nakadi.events().await;
    let eids: HashSet<_> = at_stop
        .iter()
        .map(|e| e["metadata"]["eid"].clone())
        .collect();
    assert_eq!(eids.len(), at_stop.len(), "duplicates before the restart");
    assert!(
        at_stop.len() < 600,
        "the first relay should have stopped before the end"
    );

    writes.extend(writer.await.unwrap());
    t.nakadi.clear_faults().await;
    let second = Relay::start(test, "relay-2", &env);
    second.wait_ready().await;
    let events = wait_for(
        "all events after the restart",
        Duration::from_secs(120),
        || async {
            let events = t.nakadi.events().await;
            (events.len() >= writes.len()).then_some(events)
        },
    )
    .await;
    check_exactly_once(&events, &writes);
}

/// Cause 3 of the stream-lifecycle issue: with RELAY_INITIAL_POSITION=LATEST a lease stayed at the
/// literal LATEST until its first record, and every new owner opened a fresh LATEST iterator, so
/// the writes between two owners were lost (0 of 10 arrived). Now the stream's start is recorded
/// once, every owner reads from TRIM_HORIZON and skips only what predates the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_loses_nothing_when_the_first_owner_dies_before_any_record() {
    let test = "latest_takeover";
    let t = setup(test).await;
    let ddb = t.moto.dynamodb().await;
    let before = write_changes(&ddb, &t.table, 5, 5, 1).await;
    // ApproximateCreationDateTime is whole seconds and the start keeps a second's margin: the
    // records above must be older than that to be skipped.
    let written_at = std::time::Instant::now();
    wait_for("two seconds to pass", Duration::from_secs(5), || async {
        (written_at.elapsed() >= Duration::from_millis(2100)).then_some(())
    })
    .await;
    let mut env = t.env.clone();
    env.insert("RELAY_INITIAL_POSITION".into(), "LATEST".into());
    let mut first = Relay::start(test, "relay-1", &env);
    first.wait_ready().await;
    wait_for(
        "relay-1 to own the lease",
        Duration::from_secs(30),
        || async {
            let owners: Vec<String> = lease_items(&t.moto, "relay-leases", "shard")
                .await
                .ok()?
                .iter()
                .filter_map(|i| i.get("owner").and_then(|v| v.as_s().ok()).cloned())
                .collect();
            (owners == ["relay-1"]).then_some(())
        },
    )
    .await;
    first.process.signal("KILL");
    first.process.wait_exit(Duration::from_secs(10)).await;

    let after = write_changes(&ddb, &t.table, 10, 10, 2).await;
    let second = Relay::start(test, "relay-2", &env);
    second.wait_ready().await;
    let events = wait_for(
        "the writes after the start at Nakadi",
        Duration::from_secs(60),
        || async {
            let events = t.nakadi.events().await;
            (events.len() >= after.len()).then_some(events)
        },
    )
    .await;
    check_exactly_once(&events, &after);
    let early: HashSet<&str> = before.iter().map(|w| w.key.as_str()).collect();
    assert!(
        events
            .iter()
            .all(|e| !early.contains(e["data"]["item"]["pk"].as_str().unwrap_or_default())),
        "a record written before the start was published"
    );
}

#[test]
fn each_required_variable_missing_exits_2_naming_it() {
    let full: HashMap<&str, &str> = HashMap::from([
        ("RELAY_TABLE_NAME", "orders"),
        ("RELAY_LEASE_TABLE", "leases"),
        ("RELAY_NAKADI_URL", "http://127.0.0.1:1"),
        ("RELAY_EVENT_TYPE", "et"),
        ("RELAY_DLQ_URL", "http://127.0.0.1:1/123/dlq"),
    ]);
    for missing in full.keys() {
        let out = Command::new(env!("CARGO_BIN_EXE_dynamodb-nakadi-relay"))
            .env_clear()
            .envs(full.iter().filter(|(k, _)| *k != missing))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{missing}: {stderr}");
        assert!(stderr.contains(missing), "{missing} not named in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_lease_table_or_queue_exits_2_naming_the_setting() {
    let t = setup("missing_resources").await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "RELAY_STREAM_ARN",
            "arn:aws:dynamodb:eu-central-1:123456789012:table/nope/stream/2026-01-01T00:00:00.000",
            "RELAY_STREAM_ARN",
        ),
        ("RELAY_CREATE_LEASE_TABLE", "false", "RELAY_LEASE_TABLE"),
        (
            "RELAY_DLQ_URL",
            &format!("{}/123456789012/nope", t.moto.endpoint),
            "RELAY_DLQ_URL",
        ),
    ];
    for (var, value, named) in cases {
        let mut env = t.env.clone();
        env.insert(var.to_string(), value.to_string());
        let mut relay = Relay::start("missing_resources", &format!("relay-{named}"), &env);
        let status = relay.process.wait_exit(Duration::from_secs(60)).await;
        let logs = relay.logs();
        assert_eq!(status.code(), Some(2), "{var}={value}: {logs}");
        assert!(logs.contains(named), "{named} not named in: {logs}");
    }
}

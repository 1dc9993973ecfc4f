//! `dynamodb-nakadi-relay snapshot` end to end: the real binary against moto and the Nakadi test
//! server. Every item arrives once as an S event with its deterministic eid; a SIGKILL halfway
//! and a second run lose nothing and repeat at most the page in flight per segment; an event
//! Nakadi refuses ends in the dead-letter queue.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::support::*;

const TABLE: &str = "orders";

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

/// Item `i`: every attribute type, numbers with all 38 digits DynamoDB keeps, awkward names.
fn item(i: usize) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("pk".to_string(), s(&format!("order-{i:04}"))),
        ("amount".to_string(), n(&format!("{i}.{:02}", i % 100))),
        (
            "precise".to_string(),
            n(&format!("1234567890123456789012345678.{i:010}")),
        ),
        (
            "tiny".to_string(),
            n("-0.00000000000000000000000000000000000001"),
        ),
        ("paid".to_string(), AttributeValue::Bool(i % 2 == 0)),
        ("nothing".to_string(), AttributeValue::Null(true)),
        ("a/b~c".to_string(), s("ünïcødé 💳")),
        (
            "lines".to_string(),
            AttributeValue::L(vec![AttributeValue::M(HashMap::from([
                ("sku".to_string(), s(&format!("sku-{}", i % 7))),
                ("qty".to_string(), n(&(i % 5 + 1).to_string())),
            ]))]),
        ),
        (
            "tags".to_string(),
            AttributeValue::Ss(vec!["z".into(), "a".into(), format!("t{}", i % 3)]),
        ),
        (
            "scores".to_string(),
            AttributeValue::Ns(vec!["10".into(), "-1.5".into(), format!("{}", 100 + i)]),
        ),
        (
            "blob".to_string(),
            AttributeValue::B(Blob::new(vec![0, 1, 2, (i % 256) as u8])),
        ),
        (
            "blobs".to_string(),
            AttributeValue::Bs(vec![Blob::new(vec![9, 9]), Blob::new(vec![1])]),
        ),
    ]);
    if i % 3 == 0 {
        item.insert("note".to_string(), s("only every third item"));
    }
    item
}

/// The JSON the event must show for a value (DESIGN.md's table), written here independently
/// of the relay's transform.
fn expected(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::B(b) => Value::String(BASE64.encode(b.as_ref())),
        AttributeValue::Bs(bs) => {
            let mut bs: Vec<&[u8]> = bs.iter().map(|b| b.as_ref()).collect();
            bs.sort();
            bs.into_iter()
                .map(|b| Value::String(BASE64.encode(b)))
                .collect()
        }
        AttributeValue::Ns(ns) => {
            // The test's sets hold small distinct numbers, which f64 orders correctly.
            let mut ns = ns.clone();
            ns.sort_by(|a, b| {
                a.parse::<f64>()
                    .unwrap()
                    .total_cmp(&b.parse::<f64>().unwrap())
            });
            ns.iter()
                .map(|n| serde_json::from_str::<Value>(n).unwrap())
                .collect()
        }
        AttributeValue::M(m) => m.iter().map(|(k, v)| (k.clone(), expected(v))).collect(),
        AttributeValue::L(l) => l.iter().map(expected).collect(),
        other => expected_json(other),
    }
}

fn expected_item(item: &HashMap<String, AttributeValue>) -> Value {
    item.iter().map(|(k, v)| (k.clone(), expected(v))).collect()
}

/// UUID v5 of `snapshot:<table>:<key JSON>` under the relay's namespace, as documented.
fn expected_eid(pk: &str) -> String {
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:dynamodb-nakadi-relay:eid");
    let name = format!("snapshot:{TABLE}:{}", json!([pk]));
    Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

async fn write_items(moto: &Moto, count: usize) -> HashMap<String, Value> {
    let ddb = moto.dynamodb().await;
    let mut expected = HashMap::new();
    let items: Vec<_> = (0..count).map(item).collect();
    for chunk in items.chunks(25) {
        let requests = chunk
            .iter()
            .map(|it| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(it.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        let out = ddb
            .batch_write_item()
            .request_items(TABLE, requests)
            .send()
            .await
            .unwrap();
        assert!(
            out.unprocessed_items().is_none_or(|u| u.is_empty()),
            "moto left items unprocessed"
        );
    }
    for it in &items {
        let pk = it["pk"].as_s().unwrap().clone();
        expected.insert(pk, expected_item(it));
    }
    expected
}

struct Env {
    moto: Moto,
    nakadi: Nakadi,
    dlq: String,
    env: HashMap<String, String>,
}

async fn setup(test: &str, vars: &[(&str, &str)]) -> Env {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let stream_arn = moto.create_table(TABLE).await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let mut env = base_env(&moto, &nakadi, &stream_arn, "relay-leases", &dlq);
    env.insert("RELAY_COMPACTION_KEY".into(), "true".into());
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    Env {
        moto,
        nakadi,
        dlq,
        env,
    }
}

/// The snapshot command, its JSON summary written to `<name>.out`, its log to `<name>.log`.
struct Run {
    process: Process,
    out: PathBuf,
    log: PathBuf,
}

impl Run {
    fn start(test: &str, name: &str, env: &HashMap<String, String>, args: &[&str]) -> Run {
        let dir = output_dir(test);
        let (out, log) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.log")),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_dynamodb-nakadi-relay"))
            .arg("snapshot")
            .args(args)
            .env_clear()
            .envs(env)
            .env("RELAY_WORKER_ID", name)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the relay binary");
        Run {
            process: Process {
                child,
                name: name.into(),
            },
            out,
            log,
        }
    }

    /// Waits for the exit; returns the exit code and the summary.
    async fn finish(mut self) -> (Option<i32>, Value) {
        let status = self.process.wait_exit(Duration::from_secs(120)).await;
        let out = std::fs::read_to_string(&self.out).unwrap();
        let logs = std::fs::read_to_string(&self.log).unwrap_or_default();
        let summary = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("summary {out:?}: {e}; log:\n{logs}"));
        (status.code(), summary)
    }
}

/// RFC 3339 with milliseconds, as `occurred_at` is written, so the two compare as text.
fn now_text() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap();
    let text = now.format(&Rfc3339).unwrap();
    // Rfc3339 leaves out a zero fraction; occurred_at always has three digits.
    if text.contains('.') {
        text
    } else {
        text.replace('Z', ".000Z")
    }
}

/// Every event is the S event of its item: the eid, the item, a patch that builds the item from
/// `{}` with `add` operations only, the compaction key, a scan time within the run.
fn check_event(e: &Value, items: &HashMap<String, Value>, from: &str, to: &str) {
    let pk = e["data"]["item"]["pk"].as_str().expect("item has pk");
    assert_eq!(e["data_op"], "S", "{e}");
    assert_eq!(e["data_type"], "payments.order-changed");
    assert_eq!(e["metadata"]["eid"], expected_eid(pk), "eid of {pk}");
    assert_eq!(&e["data"]["item"], &items[pk], "item of {pk}");
    assert_eq!(e["metadata"]["partition_compaction_key"], pk);
    let occurred = e["metadata"]["occurred_at"].as_str().unwrap();
    assert!(
        from <= occurred && occurred <= to,
        "occurred_at {occurred} of {pk} not within the run ({from} to {to})"
    );
    // From `{}`: one `add` per top-level attribute, numbers as exact as in the item.
    let mut built = serde_json::Map::new();
    for op in e["data"]["patch"].as_array().unwrap() {
        assert_eq!(op["op"], "add", "patch of {pk}: {op}");
        let path = op["path"].as_str().unwrap();
        let token = path.strip_prefix('/').expect("a pointer");
        assert!(!token.contains('/'), "patch of {pk}: nested path {path}");
        let name = token.replace("~1", "/").replace("~0", "~");
        built.insert(name, op["value"].clone());
    }
    assert_eq!(
        Value::Object(built),
        items[pk],
        "patch of {pk} does not build the item"
    );
}

/// The snapshot segments' progress items in the lease table: segment → (done, items).
async fn segments(moto: &Moto) -> HashMap<String, (bool, u64)> {
    // Empty until the snapshot has created the lease table.
    let Ok(items) = lease_items(moto, "relay-leases", "snapshot_segment").await else {
        return HashMap::new();
    };
    items
        .iter()
        .map(|i| {
            (
                i["lease_key"].as_s().unwrap().clone(),
                (
                    i["done"].as_bool().copied().unwrap_or(false),
                    i["items"].as_n().unwrap().parse().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_arrives_once_as_an_s_event_and_a_finished_snapshot_is_not_repeated() {
    let test = "snapshot_every_item";
    let t = setup(
        test,
        &[
            ("RELAY_SNAPSHOT_SEGMENTS", "4"),
            ("RELAY_SNAPSHOT_PAGE_SIZE", "25"),
            ("RELAY_SNAPSHOT_READ_CAPACITY", "1000"),
        ],
    )
    .await;
    let items = write_items(&t.moto, 300).await;
    let from = now_text();
    let (code, summary) = Run::start(test, "snapshot-1", &t.env, &[]).finish().await;
    let to = now_text();
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["finished"], true);
    assert_eq!(summary["items"], 300);
    assert_eq!(summary["published"], 300);
    assert_eq!(summary["dead_lettered"], 0);
    let events = t.nakadi.events().await;
    assert_eq!(events.len(), 300, "events at Nakadi");
    let eids: HashSet<&str> = events
        .iter()
        .map(|e| e["metadata"]["eid"].as_str().unwrap())
        .collect();
    assert_eq!(eids.len(), 300, "an item was published twice");
    for e in &events {
        check_event(e, &items, &from, &to);
    }
    let seconds = summary["seconds"].as_f64().unwrap();
    eprintln!(
        "snapshot of 300 items, 4 segments, pages of 25: {seconds:.2} s, {:.0} items/s scanned and published",
        300.0 / seconds
    );

    // Finished: a second run reads and publishes nothing.
    let (code, again) = Run::start(test, "snapshot-2", &t.env, &[]).finish().await;
    assert_eq!(code, Some(0), "{again}");
    assert_eq!(again["already_finished"], true);
    assert_eq!(again["items"], 0);
    assert_eq!(t.nakadi.events().await.len(), 300);

    // --restart repeats it, with the same eids: consumers drop the repetition.
    let (code, restarted) = Run::start(test, "snapshot-3", &t.env, &["--restart"])
        .finish()
        .await;
    assert_eq!(code, Some(0), "{restarted}");
    assert_eq!(restarted["items"], 300);
    let events = t.nakadi.events().await;
    assert_eq!(events.len(), 600);
    let second: HashSet<&str> = events[300..]
        .iter()
        .map(|e| e["metadata"]["eid"].as_str().unwrap())
        .collect();
    assert_eq!(second, eids, "a repeated snapshot has the same eids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_halfway_then_the_next_run_continues_where_it_stopped() {
    let test = "snapshot_sigkill";
    let (segment_count, page_size) = (4u64, 10u64);
    // moto reports 1 capacity unit per Scan page: 6 pages a second, slow enough to catch the
    // snapshot with some segments finished and others not.
    let t = setup(
        test,
        &[
            ("RELAY_SNAPSHOT_SEGMENTS", "4"),
            ("RELAY_SNAPSHOT_PAGE_SIZE", "10"),
            ("RELAY_SNAPSHOT_READ_CAPACITY", "6"),
        ],
    )
    .await;
    let items = write_items(&t.moto, 300).await;
    let from = now_text();
    let mut first = Run::start(test, "snapshot-1", &t.env, &[]);
    wait_for_every(
        "a segment finished while others are not",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let progress = segments(&t.moto).await;
            let done = progress.values().filter(|(done, _)| *done).count();
            (done > 0 && done < progress.len()).then_some(())
        },
    )
    .await;
    first.process.signal("KILL");
    first.process.wait_exit(Duration::from_secs(10)).await;
    let at_kill = segments(&t.moto).await;
    assert_eq!(at_kill.len(), 4, "{at_kill:?}");
    let saved: u64 = at_kill.values().map(|(_, items)| items).sum();
    let done_at_kill = at_kill.values().filter(|(done, _)| *done).count();
    assert!(saved < 300, "the kill came too late: {at_kill:?}");
    assert!(done_at_kill > 0, "{at_kill:?}");
    let published_before = t.nakadi.events().await.len() as u64;
    assert!(
        published_before >= saved,
        "progress saved before publishing"
    );

    let (code, summary) = Run::start(test, "snapshot-2", &t.env, &[]).finish().await;
    let to = now_text();
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["finished"], true);
    // Each segment continued after its saved key: exactly the unsaved items were read again.
    assert_eq!(
        summary["items"],
        300 - saved,
        "{summary}; at the kill: {at_kill:?}"
    );
    assert_eq!(summary["total_items"], 300);
    assert_eq!(summary["segments_skipped"], done_at_kill);
    let after = segments(&t.moto).await;
    for (key, (done, count)) in &at_kill {
        if *done {
            assert_eq!(
                after[key],
                (true, *count),
                "finished segment {key} was scanned again"
            );
        }
    }

    let events = t.nakadi.events().await;
    let mut by_eid: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        check_event(e, &items, &from, &to);
        *by_eid
            .entry(e["metadata"]["eid"].as_str().unwrap())
            .or_default() += 1;
    }
    assert_eq!(by_eid.len(), 300, "every item arrived");
    let duplicates = events.len() as u64 - 300;
    eprintln!(
        "killed at {published_before} published, {saved} saved; {duplicates} duplicates after the second run"
    );
    assert!(
        duplicates <= segment_count * page_size,
        "{duplicates} duplicates: more than the page in flight per segment"
    );
    // Nakadi may still have stored a request that was on the wire at the kill.
    assert!(duplicates >= published_before - saved);
    assert!(by_eid.values().all(|&n| n <= 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_nakadi_rejects_ends_in_the_dead_letter_queue() {
    let test = "snapshot_rejected";
    let t = setup(
        test,
        &[
            ("RELAY_SNAPSHOT_SEGMENTS", "2"),
            ("RELAY_SNAPSHOT_PAGE_SIZE", "10"),
        ],
    )
    .await;
    write_items(&t.moto, 30).await;
    let rejected = expected_eid("order-0007");
    t.nakadi.fault(json!({"reject_eids": [rejected]})).await;
    let (code, summary) = Run::start(test, "snapshot-1", &t.env, &[]).finish().await;
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["published"], 29);
    assert_eq!(summary["dead_lettered"], 1);
    let events = t.nakadi.events().await;
    assert_eq!(events.len(), 29);
    assert!(
        events
            .iter()
            .all(|e| e["metadata"]["eid"] != rejected.as_str())
    );

    let sqs = t.moto.sqs().await;
    let message = wait_for("the dead letter", Duration::from_secs(30), || async {
        let out = sqs
            .receive_message()
            .queue_url(&t.dlq)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        out.messages().first().cloned()
    })
    .await;
    let letter: Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(letter["event"]["metadata"]["eid"], rejected.as_str());
    assert_eq!(letter["event"]["data_op"], "S");
    assert_eq!(letter["event"]["data"]["item"]["pk"], "order-0007");
    assert_eq!(letter["failure"]["status"], 422);
    assert_eq!(letter["source"]["kind"], "snapshot_item");
    assert!(letter["source"]["segment"].is_u64(), "{letter}");
    assert!(
        letter["source"]["table_arn"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":table/{TABLE}")),
        "{letter}"
    );
    assert_eq!(
        letter["source"]["event_id"],
        format!("snapshot:{TABLE}:[\"order-0007\"]")
    );
    assert_eq!(queue_depth(&t.moto, &t.dlq).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_capacity_on_an_on_demand_table_exits_2_naming_the_setting() {
    let test = "snapshot_on_demand_share";
    let t = setup(test, &[("RELAY_SNAPSHOT_READ_CAPACITY", "25%")]).await;
    let mut run = Run::start(test, "snapshot-1", &t.env, &[]);
    let status = run.process.wait_exit(Duration::from_secs(60)).await;
    let logs = std::fs::read_to_string(&run.log).unwrap();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("RELAY_SNAPSHOT_READ_CAPACITY"), "{logs}");
    assert!(t.nakadi.events().await.is_empty());
}

//! The filters (RELAY_TTL_DELETES, RELAY_EVENT_NAMES, RELAY_DROP_ATTRIBUTES) and
//! partition_compaction_key, end to end with the real relay binary.
//!
//! TTL deletions come from the DynamoDB Streams fault server: moto never expires items, so its
//! streams hold no record with the DynamoDB service as `userIdentity`. The compaction key is
//! checked on moto, with a table keyed by hash and range.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType};
use serde_json::{Value, json};

use crate::support::*;

/// The records every filter test writes, on one shard in this order: a user who is created and
/// changes their e-mail, a user deletion, and a TTL expiry.
fn records() -> Vec<Value> {
    let user = |email: &str, n: u32| json!({"pk": {"S": "u1"}, "email": {"S": email}, "logins": {"N": n.to_string()}});
    vec![
        json!({"key": "u1", "new_image": user("a@example.org", 1)}),
        json!({"key": "u1", "new_image": user("b@example.org", 2), "old_image": user("a@example.org", 1)}),
        json!({"key": "u2", "old_image": {"pk": {"S": "u2"}, "email": {"S": "c@example.org"}}}),
        json!({"key": "s1", "old_image": {"pk": {"S": "s1"}, "email": {"S": "d@example.org"}}, "ttl_delete": true}),
    ]
}

struct Run {
    events: Vec<Value>,
    checkpoint: String,
    last_sequence_number: String,
    metrics: String,
}

/// Writes `records()` to a one-shard stream, runs a relay with `filter_env` until the shard's
/// checkpoint is at the last record, and returns what arrived.
async fn run_filtered(test: &str, filter_env: &[(&str, &str)], expected_events: usize) -> Run {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let streams = StreamsFault::start(test);
    let arn = streams.ctl.create_stream(1, 10).await;
    let written = streams
        .ctl
        .call("records", json!({"stream_arn": arn, "records": records()}))
        .await;
    let last_sequence_number = written["records"][3]["sequence_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let mut env = fault_env(&moto, &nakadi, &streams, &arn, &dlq);
    for (k, v) in filter_env {
        env.insert(k.to_string(), v.to_string());
    }
    let relay = Relay::start(test, "relay", &env);
    // Ready means the lease table exists, so polling it can start.
    relay.wait_ready().await;
    let checkpoint = wait_for(
        "the checkpoint at the last record",
        Duration::from_secs(60),
        || async {
            checkpoints(&moto, "relay-leases")
                .await
                .into_iter()
                .find(|c| *c == last_sequence_number)
        },
    )
    .await;
    // The checkpoint moves only after the events are accepted, so they are all there now.
    let events = nakadi.events().await;
    assert_eq!(events.len(), expected_events, "{events:#?}");
    let metrics = relay.get("/metrics").await.expect("metrics").1;
    assert_eq!(queue_depth(&moto, &dlq).await, 0, "{}", relay.logs());
    Run {
        events,
        checkpoint,
        last_sequence_number,
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_deletions_are_marked_and_dropped_attributes_never_leave() {
    let run = run_filtered(
        "filters_mark",
        &[
            ("RELAY_TTL_DELETES", "mark"),
            ("RELAY_DROP_ATTRIBUTES", "email"),
        ],
        4,
    )
    .await;
    let ops: Vec<&str> = run
        .events
        .iter()
        .map(|e| e["data_op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["C", "U", "D", "D"]);
    for e in &run.events {
        assert!(
            !e.to_string().contains("example.org"),
            "a dropped attribute was published: {e}"
        );
    }
    // The e-mail change alone would be no change at all; the login count is.
    assert_eq!(
        run.events[1]["data"]["patch"],
        json!([{"op": "replace", "path": "/logins", "value": 2}])
    );
    assert_eq!(
        run.events[1]["data"]["item"],
        json!({"pk": "u1", "logins": 2})
    );
    assert!(run.events[2]["data"].get("ttl_expired").is_none());
    assert_eq!(run.events[3]["data"]["ttl_expired"], true);
    assert_eq!(run.events[3]["data"]["item"], json!({"pk": "s1"}));
    assert_eq!(run.checkpoint, run.last_sequence_number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_records_are_counted_and_checkpointed_past() {
    let run = run_filtered(
        "filters_skip",
        &[
            ("RELAY_TTL_DELETES", "skip"),
            ("RELAY_EVENT_NAMES", "INSERT,REMOVE"),
        ],
        2,
    )
    .await;
    let ops: Vec<(&str, &str)> = run
        .events
        .iter()
        .map(|e| {
            (
                e["data_op"].as_str().unwrap(),
                e["data"]["item"]["pk"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops, [("C", "u1"), ("D", "u2")]);
    assert_eq!(
        run.events[0]["data"]["item"]["email"], "a@example.org",
        "nothing is dropped unless configured"
    );
    assert_eq!(
        metric(
            &run.metrics,
            "relay_records_filtered_total{reason=\"ttl_delete\",table=\"orders\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &run.metrics,
            "relay_records_filtered_total{reason=\"event_name\",table=\"orders\"}"
        ),
        1.0
    );
    // The last record was skipped, and still the checkpoint is on it: a restart does not read
    // the skipped records again.
    assert_eq!(run.checkpoint, run.last_sequence_number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_key_is_the_json_array_of_hash_and_range_key() {
    let test = "filters_compaction";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let arn = moto
        .create_table_keyed(
            "order-lines",
            &[
                ("order", ScalarAttributeType::S),
                ("line", ScalarAttributeType::N),
            ],
        )
        .await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let mut env = base_env(&moto, &nakadi, &arn, "relay-leases", &dlq);
    env.insert("RELAY_COMPACTION_KEY".into(), "true".into());

    // Dropping a key attribute would leave nothing to compact by: refused at start.
    let mut bad = env.clone();
    bad.insert("RELAY_DROP_ATTRIBUTES".into(), "note,line".into());
    let mut refused = Relay::start(test, "relay-refused", &bad);
    let status = refused.process.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(2), "{}", refused.logs());
    assert!(
        refused.logs().contains("RELAY_DROP_ATTRIBUTES") && refused.logs().contains("\"line\""),
        "{}",
        refused.logs()
    );

    let ddb = moto.dynamodb().await;
    let lines: [(&str, &str); 3] = [("o-1", "1"), ("o-1", "2"), ("o|2,\"x\"", "1.50")];
    for (order, line) in lines {
        ddb.put_item()
            .table_name("order-lines")
            .item("order", AttributeValue::S(order.into()))
            .item("line", AttributeValue::N(line.into()))
            .item("qty", AttributeValue::N("3".into()))
            .send()
            .await
            .unwrap();
    }
    ddb.delete_item()
        .table_name("order-lines")
        .key("order", AttributeValue::S("o-1".into()))
        .key("line", AttributeValue::N("2".into()))
        .send()
        .await
        .unwrap();
    let _relay = Relay::start(test, "relay", &env);
    let events = wait_for("4 events", Duration::from_secs(60), || async {
        let events = nakadi.events().await;
        (events.len() >= 4).then_some(events)
    })
    .await;
    let keys: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["data_op"].as_str().unwrap(),
                e["metadata"]["partition_compaction_key"].as_str().unwrap(),
            )
        })
        .collect();
    // Numbers keep the digits DynamoDB sent; quotes, `|` and `,` in a key cannot make two keys
    // alike because the key is JSON text.
    assert_eq!(
        keys,
        [
            ("C", r#"["o-1",1]"#),
            ("C", r#"["o-1",2]"#),
            ("C", r#"["o|2,\"x\"",1.50]"#),
            ("D", r#"["o-1",2]"#),
        ]
    );
    let parsed: HashMap<&str, Value> = keys
        .iter()
        .map(|(_, k)| (*k, serde_json::from_str(k).unwrap()))
        .collect();
    assert_eq!(parsed[r#"["o|2,\"x\"",1.50]"#][0], "o|2,\"x\"");
}

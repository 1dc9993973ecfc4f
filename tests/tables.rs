//! Several tables in one deployment (RELAY_TABLES_FILE), end to end with the real relay binary,
//! moto and the Nakadi test server: each table's changes reach its own event type with its own
//! options, dead letters go back to the event type they came from, and `/status` and the
//! metrics tell the tables apart.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use support::*;

const ORDERS: &str = "payments.order-changed";
const REFUNDS: &str = "payments.refund-changed";

async fn events_of(nakadi: &Nakadi, event_type: &str) -> Vec<Value> {
    let body: Value = reqwest::get(format!(
        "{}/_test/events?event_type={event_type}",
        nakadi.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    body["events"].as_array().cloned().unwrap_or_default()
}

async fn put(ddb: &aws_sdk_dynamodb::Client, table: &str, item: &[(&str, &str)]) {
    let item: HashMap<String, AttributeValue> = item
        .iter()
        .map(|(k, v)| (k.to_string(), AttributeValue::S(v.to_string())))
        .collect();
    ddb.put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

/// The relay's variables with RELAY_TABLES_FILE (holding `toml`) instead of one table's.
fn tables_env(
    test: &str,
    moto: &Moto,
    nakadi: &Nakadi,
    dlq: &str,
    toml: &str,
) -> HashMap<String, String> {
    let tables_file = output_dir(test).join("tables.toml");
    std::fs::write(&tables_file, toml).unwrap();
    let mut env = base_env(moto, nakadi, "unused", "relay-leases", dlq);
    env.remove("RELAY_STREAM_ARN");
    env.remove("RELAY_EVENT_TYPE");
    env.insert(
        "RELAY_TABLES_FILE".into(),
        tables_file.display().to_string(),
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tables_reach_their_own_event_types_with_their_own_options() {
    let test = "tables_two";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let orders_arn = moto.create_table("orders").await;
    let _refunds_arn = moto.create_table("refunds").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    // orders by its stream ARN, refunds by table name: both ways of naming a source.
    let env = tables_env(
        test,
        &moto,
        &nakadi,
        &dlq,
        &format!(
            r#"
[[table]]
stream_arn = "{orders_arn}"
event_type = "{ORDERS}"
data_type = "payments:order"
compaction_key = true

[[table]]
name = "refunds"
event_type = "{REFUNDS}"
drop_attributes = ["iban"]
"#
        ),
    );

    // Refunds' event type is down for a while: its events are dead-lettered and must come back
    // to it, not to the orders' event type, when the re-drain loop republishes them.
    nakadi
        .fault(json!({"status": 503, "event_type": REFUNDS}))
        .await;
    let ddb = moto.dynamodb().await;
    for i in 0..3 {
        put(
            &ddb,
            "orders",
            &[("pk", &format!("o-{i}")), ("state", "open")],
        )
        .await;
        put(
            &ddb,
            "refunds",
            &[
                ("pk", &format!("r-{i}")),
                ("iban", "DE89370400440532013000"),
            ],
        )
        .await;
    }
    let relay = Relay::start(test, "relay", &env);
    relay.wait_ready().await;
    wait_for(
        "the refunds in the DLQ",
        Duration::from_secs(60),
        || async { (queue_depth(&moto, &dlq).await == 3).then_some(()) },
    )
    .await;
    let orders = wait_for("3 order events", Duration::from_secs(60), || async {
        let events = events_of(&nakadi, ORDERS).await;
        (events.len() >= 3).then_some(events)
    })
    .await;
    assert!(events_of(&nakadi, REFUNDS).await.is_empty());

    nakadi.clear_faults().await;
    let refunds = wait_for(
        "3 re-drained refund events",
        Duration::from_secs(60),
        || async {
            let events = events_of(&nakadi, REFUNDS).await;
            (events.len() >= 3).then_some(events)
        },
    )
    .await;
    wait_for("an empty DLQ", Duration::from_secs(30), || async {
        (queue_depth(&moto, &dlq).await == 0).then_some(())
    })
    .await;

    let mut order_keys: Vec<&str> = orders
        .iter()
        .map(|e| e["metadata"]["partition_compaction_key"].as_str().unwrap())
        .collect();
    order_keys.sort();
    assert_eq!(order_keys, ["o-0", "o-1", "o-2"]);
    assert!(orders.iter().all(|e| e["data_type"] == "payments:order"));
    let mut refund_keys: Vec<&str> = refunds
        .iter()
        .map(|e| {
            assert!(e["metadata"].get("partition_compaction_key").is_none());
            assert_eq!(e["data_type"], REFUNDS);
            assert!(e["data"]["item"].get("iban").is_none(), "{e}");
            e["data"]["item"]["pk"].as_str().unwrap()
        })
        .collect();
    refund_keys.sort();
    assert_eq!(refund_keys, ["r-0", "r-1", "r-2"]);
    assert_eq!(events_of(&nakadi, ORDERS).await.len(), 3);

    let status: Value = serde_json::from_str(&relay.get("/status").await.unwrap().1).unwrap();
    let tables: Vec<&str> = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["orders", "refunds"], "{status:#}");
    for table in ["orders", "refunds"] {
        assert!(
            status["shards"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["table"] == table && s["state"] == "owned"),
            "{status:#}"
        );
    }
    let metrics = relay.get("/metrics").await.unwrap().1;
    for table in ["orders", "refunds"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("relay_records_read_total{{table=\"{table}\"}}")
            ),
            3.0
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "relay_events_published_total{outcome=\"dead_lettered\",table=\"refunds\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "relay_events_published_total{outcome=\"delivered\",table=\"orders\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_file_with_a_missing_table_exits_2_naming_it() {
    let test = "tables_missing";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let env = tables_env(
        test,
        &moto,
        &nakadi,
        &dlq,
        &format!(
            "[[table]]\nname = \"orders\"\nevent_type = \"{ORDERS}\"\n\n[[table]]\nname = \"ghosts\"\nevent_type = \"{REFUNDS}\"\n"
        ),
    );
    let mut relay = Relay::start(test, "relay", &env);
    let status = relay.process.wait_exit(Duration::from_secs(60)).await;
    let logs = relay.logs();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("RELAY_TABLES_FILE") && logs.contains("table ghosts"),
        "{logs}"
    );
}

//! Several tables in one deployment (RELAY_TABLES_FILE), end to end with the real relay binary,
//! moto and the Nakadi test server: each table's changes reach its own event type with its own
//! options, dead letters go back to the event type they came from, and `/status` and the
//! metrics tell the tables apart. And `event-type`: each table's Nakadi event type, valid against
//! Nakadi's API definition, with the table's events valid against its schema.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

use crate::support::*;

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
            "relay_events_published_total{event_type=\"payments.refund-changed\",outcome=\"dead_lettered\",table=\"refunds\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "relay_events_published_total{event_type=\"payments.order-changed\",outcome=\"delivered\",table=\"orders\"}"
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

// ---------------------------------------------------------------------------------------------
// `event-type`: the event type a table's events need, valid against Nakadi's API definition.

/// Runs `event-type` with the relay's required variables plus `set`, and nothing from the
/// test's own environment; no AWS endpoint is set, so any AWS call would fail.
fn event_type(args: &[&str], set: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut env: HashMap<&str, &str> = HashMap::from([
        ("RELAY_LEASE_TABLE", "leases"),
        ("RELAY_NAKADI_URL", "http://127.0.0.1:1"),
        ("RELAY_DLQ_URL", "http://127.0.0.1:1/123456789012/dlq"),
    ]);
    env.extend(set.iter().copied());
    let args: Vec<&str> = std::iter::once("event-type")
        .chain(args.iter().copied())
        .collect();
    run_binary(&args, &env)
}

/// Validates with Python's jsonschema (Draft 4, the draft of Swagger 2.0 and of Nakadi's event
/// schemas), the spec's YAML read by PyYAML: the event type against the spec's `EventType`, with
/// its `#/definitions/...` references resolved in the whole file; then every `good` data against
/// the event type's own schema, and no `bad` one. Prints what failed.
const VALIDATE: &str = r##"
import json, sys, yaml, jsonschema
spec = yaml.safe_load(open(sys.argv[1]))
case = json.load(sys.stdin)
root = {"$ref": "#/definitions/EventType", "definitions": spec["definitions"]}
problems = []
for e in jsonschema.Draft4Validator(root).iter_errors(case["event_type"]):
    problems.append("event type: %s at %s" % (e.message, list(e.absolute_path)))
# The validator must bite: an unknown category is refused by the spec.
if jsonschema.Draft4Validator(root).is_valid(dict(case["event_type"], category="other")):
    problems.append("the spec's EventType did not refuse category 'other'")
data = json.loads(case["event_type"]["schema"]["schema"])
jsonschema.Draft4Validator.check_schema(data)
check = jsonschema.Draft4Validator(data)
for d in case["good"]:
    for e in check.iter_errors(d):
        problems.append("good data %s: %s" % (json.dumps(d), e.message))
for d in case["bad"]:
    if check.is_valid(d):
        problems.append("bad data passed: %s" % json.dumps(d))
print("\n".join(problems))
sys.exit(1 if problems else 0)
"##;

fn validate(event_type: &Value, good: Value, bad: Value) {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/nakadi-event-bus-api.yaml");
    // Nakadi's API definition is read where the issue points, beside the work tree, not copied
    // into it.
    assert!(
        spec.exists(),
        "{} is missing: the test validates against Nakadi's own API definition",
        spec.display()
    );
    let mut child = std::process::Command::new(python())
        .args(["-c", VALIDATE])
        .arg(&spec)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the venv's python");
    let case = json!({"event_type": event_type, "good": good, "bad": bad});
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), case.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The spec: partition_key_fields "MUST be a valid required field as defined in the schema", and
/// the ordering fields "must be present in the schema".
fn assert_fields_in_schema(e: &Value, key: &[&str]) {
    let data: Value = serde_json::from_str(e["schema"]["schema"].as_str().unwrap()).unwrap();
    let partition: Vec<String> = key.iter().map(|k| format!("item.{k}")).collect();
    let instance: Vec<String> = key.iter().map(|k| format!("data.item.{k}")).collect();
    assert_eq!(e["partition_key_fields"], json!(partition));
    assert_eq!(e["ordering_instance_ids"], json!(instance));
    assert_eq!(e["ordering_key_fields"], json!(["data.sequence_number"]));
    assert!(
        data["required"]
            .as_array()
            .unwrap()
            .contains(&json!("item"))
    );
    assert_eq!(data["properties"]["item"]["required"], json!(key));
    assert!(data["properties"]["sequence_number"].is_object());
}

#[test]
fn the_event_type_of_a_table_is_valid_against_nakadis_api_and_its_events_against_it() {
    // The demo's table: a hash key only, no compaction.
    let (code, stdout, stderr) = event_type(
        &["--owning-application", "stups_orders", "--key", "pk"],
        &[
            ("RELAY_TABLE_NAME", "orders"),
            ("RELAY_EVENT_TYPE", ORDERS),
            ("RELAY_DATA_TYPE", "payments:order"),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let orders: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(orders["name"], ORDERS);
    assert_eq!(orders["owning_application"], "stups_orders");
    assert_eq!(orders["category"], "data");
    assert_eq!(orders["partition_strategy"], "hash");
    assert_eq!(orders["cleanup_policy"], "delete");
    assert_eq!(orders["compatibility_mode"], "forward");
    assert_eq!(
        orders["enrichment_strategies"],
        json!(["metadata_enrichment"])
    );
    assert_fields_in_schema(&orders, &["pk"]);
    let seq = "0000000000000000000400000000000012345678";
    validate(
        &orders,
        json!([
            // README's example event.
            {"item": {"pk": "order-42", "amount": 12.50, "status": "paid"},
             "patch": [{"op": "replace", "path": "/status", "value": "paid"}],
             "sequence_number": seq},
            {"item": {"pk": "order-42"}, "patch": [{"op": "remove", "path": "/status"}],
             "sequence_number": seq, "ttl_expired": true},
            // A snapshot's S event, or one dead-lettered before sequence numbers: none.
            {"item": {"pk": "order-43", "new_attribute": [1, 2]}, "patch": []},
        ]),
        json!([
            {"item": {"amount": 1}, "patch": []},
            {"item": {"pk": "order-42"}},
            {"item": {"pk": "order-42"}, "patch": [{"op": "rename", "path": "/a"}]},
            {"item": {"pk": "order-42"}, "patch": [], "sequence_number": "12345"},
            {"item": {"pk": "order-42"}, "patch": [], "ttl_expired": "yes"},
        ]),
    );

    // One of several tables, with a range key, compaction, and everything passed through.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tables.toml");
    std::fs::write(
        &file,
        format!(
            "[[table]]\nname = \"orders\"\nevent_type = \"{ORDERS}\"\n\n\
             [[table]]\nname = \"refunds\"\nevent_type = \"{REFUNDS}\"\ncompaction_key = true\n"
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let authorization = r#"{"admins":[{"data_type":"team","value":"payments"}],"readers":[{"data_type":"*","value":"*"}],"writers":[{"data_type":"service","value":"stups_orders-relay"}]}"#;
    let (code, stdout, stderr) = event_type(
        &[
            "--owning-application",
            "stups_orders",
            "--table",
            "refunds",
            "--key",
            "order_id,refund_no",
            "--audience",
            "company-internal",
            "--authorization",
            authorization,
            "--label",
            "tier=1",
        ],
        &[("RELAY_TABLES_FILE", &file)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let refunds: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(refunds["name"], REFUNDS);
    assert_eq!(refunds["cleanup_policy"], "compact");
    assert_eq!(refunds["audience"], "company-internal");
    assert_eq!(refunds["labels"], json!({"tier": "1"}));
    assert_eq!(
        refunds["authorization"],
        serde_json::from_str::<Value>(authorization).unwrap()
    );
    assert_fields_in_schema(&refunds, &["order_id", "refund_no"]);
    validate(
        &refunds,
        json!([
            {"item": {"order_id": "order-42", "refund_no": 17, "amount": 5},
             "patch": [{"op": "add", "path": "/amount", "value": 5}],
             "sequence_number": "0000000000000000000000000000000000000001"},
        ]),
        json!([{"item": {"order_id": "order-42"}, "patch": []}]),
    );

    // Several tables and no --table: which one is ambiguous.
    let (code, _, stderr) = event_type(
        &["--owning-application", "a", "--key", "pk"],
        &[("RELAY_TABLES_FILE", &file)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--table") && stderr.contains("refunds"),
        "{stderr}"
    );
}

#[test]
fn an_event_type_that_cannot_work_exits_2_naming_the_setting() {
    let table = [("RELAY_TABLE_NAME", "orders"), ("RELAY_EVENT_TYPE", ORDERS)];
    // Nakadi's field paths are dot-separated: `item.order.id` would name a nested field.
    let refused = |args: &[&str], env: &[(&str, &str)]| {
        let (code, stdout, stderr) = event_type(args, env);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        stderr
    };
    let stderr = refused(&["--owning-application", "a", "--key", "order.id"], &table);
    assert!(
        stderr.contains("--key") && stderr.contains("order.id"),
        "{stderr}"
    );

    // Hash partitioning reads the key from every event's item.
    let mut dropped = table.to_vec();
    dropped.push(("RELAY_DROP_ATTRIBUTES", "email,sk"));
    let stderr = refused(&["--owning-application", "a", "--key", "pk,sk"], &dropped);
    assert!(
        stderr.contains("RELAY_DROP_ATTRIBUTES") && stderr.contains("\"sk\""),
        "{stderr}"
    );

    // The relay's own configuration errors, as the other subcommands report them.
    let mut wrong = table.to_vec();
    wrong.push(("RELAY_COMPACTION_KEY", "maybe"));
    let stderr = refused(&["--owning-application", "a", "--key", "pk"], &wrong);
    assert!(stderr.contains("  RELAY_COMPACTION_KEY: "), "{stderr}");
}

const SHOP_ROUTES: &str = r#"
[[table]]
name = "shop"

[[table.route]]
event_type = "shop.order-changed"
data_type = "shop:order"
when = { attribute = "entity", equals = "order" }

[[table.route]]
event_type = "shop.customer-changed"
drop_attributes = ["email"]
when = { attribute = "entity", equals = "customer" }

[[table.route]]
event_type = "shop.audit-changed"
when = { all = [{ attribute = "pk", begins_with = "AUDIT#" }, { not = { attribute = "entity", exists = true } }] }
"#;

/// Issue #25, a single-table design end to end: every record arrives at exactly the event type
/// its route names, an item whose `entity` changes from order to customer gives a `D` on the
/// order type and a `C` on the customer type with the record's eid, a record no route takes is
/// counted as filtered, each event type keeps per-key order, a route's dead letter is re-drained
/// to its own event type, `/status` lists the routes, and `event-type` prints one definition per
/// route. The customer route drops an attribute, so records are routed on their text, in
/// front of the filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_each_entity_to_its_own_event_type() {
    routes_end_to_end("tables_routes", SHOP_ROUTES).await;
}

/// The same where no route filters or drops anything: records are routed while the transform
/// reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_decided_inside_the_transform_send_each_entity_to_its_own_event_type() {
    let routes = SHOP_ROUTES.replace("drop_attributes = [\"email\"]\n", "");
    assert_ne!(routes, SHOP_ROUTES);
    routes_end_to_end("tables_routes_in_transform", &routes).await;
}

async fn routes_end_to_end(test: &str, routes: &str) {
    let drops_email = routes.contains("drop_attributes");
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let _shop = moto.create_table("shop").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let env = tables_env(test, &moto, &nakadi, &dlq, routes);
    // The audit route's first publish is refused: its event is dead-lettered, and the re-drain
    // loop sends it back to the audit type, not to the table's other types.
    nakadi
        .fault(json!({"event_type": "shop.audit-changed", "status": 422, "times": 1}))
        .await;
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;

    let ddb = moto.dynamodb().await;
    let writes: &[&[(&str, &str)]] = &[
        &[("pk", "ORDER#1"), ("entity", "order"), ("v", "1")],
        &[
            ("pk", "CUSTOMER#1"),
            ("entity", "customer"),
            ("email", "a@example.org"),
        ],
        &[("pk", "NOTE#1"), ("entity", "note")],
        &[("pk", "ORDER#1"), ("entity", "order"), ("v", "2")],
        &[("pk", "ORDER#2"), ("entity", "order"), ("v", "1")],
        &[("pk", "AUDIT#1"), ("v", "1")],
        &[("pk", "ORDER#2"), ("entity", "customer"), ("v", "2")],
    ];
    for item in writes {
        put(&ddb, "shop", item).await;
    }
    ddb.delete_item()
        .table_name("shop")
        .key("pk", AttributeValue::S("CUSTOMER#1".into()))
        .send()
        .await
        .unwrap();

    // (pk, data_op) per event type, in arrival order.
    let ops = |events: &[Value]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["data"]["item"]["pk"].as_str().unwrap().to_owned(),
                    e["data_op"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let expected_orders = [
        ("ORDER#1", "C"),
        ("ORDER#1", "U"),
        ("ORDER#2", "C"),
        ("ORDER#2", "D"),
    ];
    let expected_customers = [("CUSTOMER#1", "C"), ("ORDER#2", "C"), ("CUSTOMER#1", "D")];
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let (orders, customers, audits) =
        wait_for("every routed event", Duration::from_secs(60), || async {
            let orders = events_of(&nakadi, "shop.order-changed").await;
            let customers = events_of(&nakadi, "shop.customer-changed").await;
            let audits = events_of(&nakadi, "shop.audit-changed").await;
            (orders.len() >= 4 && customers.len() >= 3 && !audits.is_empty())
                .then_some((orders, customers, audits))
        })
        .await;
    assert_eq!(ops(&orders), owned(&expected_orders));
    assert_eq!(ops(&customers), owned(&expected_customers));
    assert_eq!(ops(&audits), owned(&[("AUDIT#1", "C")]));
    assert_eq!(
        nakadi.events().await.len(),
        8,
        "an event went to two types or none"
    );
    // Each route's options: the order type's data_type, the customer type without email.
    assert!(orders.iter().all(|e| e["data_type"] == "shop:order"));
    let emails = customers
        .iter()
        .filter(|e| e["data"]["item"].get("email").is_some())
        .count();
    // CUSTOMER#1's C and D have it, unless the route drops it.
    assert_eq!(emails, if drops_email { 0 } else { 2 });
    // The move: the D of the old image on the order type, the C of the new image on the
    // customer type, both with the record's eid.
    assert_eq!(orders[3]["data"]["item"]["entity"], "order");
    assert_eq!(customers[1]["data"]["item"]["entity"], "customer");
    assert_eq!(
        orders[3]["metadata"]["eid"],
        customers[1]["metadata"]["eid"]
    );

    let metrics = wait_for("the metrics", Duration::from_secs(10), || async {
        relay.get("/metrics").await.map(|(_, m)| m)
    })
    .await;
    assert_eq!(
        metric(
            &metrics,
            "relay_records_filtered_total{reason=\"no_route\",table=\"shop\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "relay_events_published_total{event_type=\"shop.order-changed\",outcome=\"delivered\",table=\"shop\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &metrics,
            "relay_events_published_total{event_type=\"shop.audit-changed\",outcome=\"dead_lettered\",table=\"shop\"}"
        ),
        1.0
    );
    let (_, status) = relay.get("/status").await.unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    let routes: Vec<&str> = status["tables"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "shop.order-changed",
            "shop.customer-changed",
            "shop.audit-changed"
        ]
    );

    let (code, out, err) = run_binary(
        &["event-type", "--owning-application", "shop", "--key", "pk"],
        &env,
    );
    assert_eq!(code, Some(0), "{err}");
    let types: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = types
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, routes);
}

/// Issue #25's bad input, through the binary: a tables file with a bad route exits 2 naming the
/// table, the route's number and the problem, before anything starts; a route that drops a key
/// attribute its compaction key needs is refused at start, once the key schema is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_exit_2_naming_the_table_and_the_route() {
    let test = "tables_bad_routes";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let _shop = moto.create_table("shop").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let two_operators = SHOP_ROUTES.replace(
        r#"when = { attribute = "entity", equals = "customer" }"#,
        r#"when = { attribute = "entity", equals = "customer", begins_with = "c" }"#,
    );
    let env = tables_env(test, &moto, &nakadi, &dlq, &two_operators);
    let (code, _, err) = run_binary(&["run"], &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "[[table]] 1 (shop): route 2: when: condition has two operators (equals, begins_with): give one"
        ),
        "{err}"
    );

    let drops_key = SHOP_ROUTES.replace(
        r#"data_type = "shop:order""#,
        "data_type = \"shop:order\"\ncompaction_key = true\ndrop_attributes = [\"pk\"]",
    );
    let env = tables_env(test, &moto, &nakadi, &dlq, &drops_key);
    let (code, _, err) = run_binary(&["run"], &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "table shop, route 1 (shop.order-changed) drops the key attribute \"pk\", which the compaction key needs"
        ),
        "{err}"
    );
}

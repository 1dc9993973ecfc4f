//! Bad input, end to end:
//! - edge items written through moto arrive exactly as DESIGN.md's conversion table says;
//! - every configuration variable wrong in every way: exit code 2 naming it;
//! - token files that are empty or hold what no HTTP header may: exit code 2 naming
//!   RELAY_NAKADI_TOKEN_FILE, the token not shown;
//! - a Nakadi that answers with malformed, oversized, truncated or foreign bodies, or accepts the
//!   connection and never answers: the events end in the DLQ with the reason, nothing is lost.
//!
//! Hostile input to the transform and the parsers, as properties: the `properties` module.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use dynamodb_nakadi_relay::transform::eid_for;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// JSON comparison with numbers compared by decimal value, digit for digit (never via f64).

/// A JSON number as (negative, significant digits, exponent): value = 0.digits × 10^exp... in
/// effect `digits × 10^exp` with no leading or trailing zeros in `digits`. Two spellings of one
/// value (`1E+2`, `100`, `1.00e2`) give the same triple; two values never do.
fn canon(text: &str) -> (bool, String, i64) {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().expect("exponent")),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut exp = exp - frac.len() as i64;
    digits = digits.trim_start_matches('0').to_owned();
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if digits.is_empty() {
        return (false, "0".into(), 0);
    }
    (negative, digits, exp)
}

/// Equal as JSON, numbers by exact decimal value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => canon(&x.to_string()) == canon(&y.to_string()),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w))
        }
        _ => a == b,
    }
}

fn assert_json_eq(got: &Value, want: &Value, what: &str) {
    assert!(
        json_eq(got, want),
        "{what}:\n got  {}\n want {}",
        shorten(&got.to_string()),
        shorten(&want.to_string())
    );
}

fn shorten(s: &str) -> String {
    if s.len() > 3000 {
        let end = (0..=3000).rev().find(|&i| s.is_char_boundary(i)).unwrap();
        format!("{}…({} bytes)", &s[..end], s.len())
    } else {
        s.to_owned()
    }
}

/// DESIGN.md's conversion table, as the test's own oracle (independent of the relay's code).
fn oracle(v: &AttributeValue) -> Value {
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => serde_json::from_str(n).unwrap(),
        AttributeValue::B(b) => b64(b.as_ref()),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::M(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), oracle(v))).collect())
        }
        AttributeValue::L(l) => Value::Array(l.iter().map(oracle).collect()),
        AttributeValue::Ss(ss) => {
            // Rust orders strings by their UTF-8 bytes, which is code point order.
            let mut ss = ss.clone();
            ss.sort();
            Value::Array(ss.into_iter().map(Value::String).collect())
        }
        AttributeValue::Ns(ns) => {
            let mut ns: Vec<&String> = ns.iter().collect();
            // The test's sets hold values an f64 tells apart exactly.
            ns.sort_by(|a, b| {
                a.parse::<f64>()
                    .unwrap()
                    .total_cmp(&b.parse::<f64>().unwrap())
            });
            Value::Array(
                ns.into_iter()
                    .map(|n| serde_json::from_str(n).unwrap())
                    .collect(),
            )
        }
        AttributeValue::Bs(bs) => {
            let mut bs: Vec<&[u8]> = bs.iter().map(|b| b.as_ref()).collect();
            bs.sort();
            Value::Array(bs.into_iter().map(b64).collect())
        }
        other => panic!("unknown attribute value {other:?}"),
    }
}

fn oracle_item(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(item.iter().map(|(k, v)| (k.clone(), oracle(v))).collect())
}

// ---------------------------------------------------------------------------------------------
// Edge items end to end.

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

fn nested(depth: usize, leaf: AttributeValue) -> AttributeValue {
    (0..depth).fold(leaf, |inner, i| {
        AttributeValue::M(HashMap::from([(format!("level-{i}"), inner)]))
    })
}

/// Every awkward thing the conversion table covers, in one item.
fn edge_item(version: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".into(), s("edge")),
        ("version".into(), n(version)),
        ("n38".into(), n("12345678901234567890123456789012345678")),
        (
            "n38_negative_fraction".into(),
            n("-1234567890123456789.0123456789012345678"),
        ),
        ("huge".into(), n("1E+125")),
        (
            "max".into(),
            n("9.9999999999999999999999999999999999999E+125"),
        ),
        ("tiny".into(), n("1E-130")),
        ("negative_tiny".into(), n("-1E-130")),
        ("zero".into(), n("0")),
        ("empty".into(), s("")),
        ("astral".into(), s("💳 𝄞 😀 \u{10FFFF}")),
        (
            "control_and_quotes".into(),
            s("tab\t nl\n quote\" backslash\\ nul\u{0}"),
        ),
        ("a/b".into(), s("slash")),
        ("t~x".into(), s("tilde")),
        ("~1".into(), s("looks escaped")),
        ("with space".into(), s("space")),
        ("ünïcødé 名前 🚀".into(), s("non-ascii name")),
        ("deep".into(), nested(30, s("bottom"))),
        (
            "ss".into(),
            AttributeValue::Ss(vec![
                "b".into(),
                "a".into(),
                "ä".into(),
                "B".into(),
                "😀".into(),
                "\u{FFFD}".into(),
            ]),
        ),
        (
            "ns".into(),
            AttributeValue::Ns(vec![
                "10".into(),
                "9".into(),
                "-1".into(),
                "1E+2".into(),
                "0.5".into(),
                "-0.25".into(),
            ]),
        ),
        (
            "bs".into(),
            AttributeValue::Bs(vec![
                Blob::new(vec![0xff]),
                Blob::new(vec![0x00, 0x01]),
                Blob::new(vec![0x80]),
                Blob::new(vec![0x00]),
            ]),
        ),
        (
            "binary_not_utf8".into(),
            AttributeValue::B(Blob::new(vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28])),
        ),
        (
            "binary_empty".into(),
            AttributeValue::B(Blob::new(Vec::<u8>::new())),
        ),
        (
            "list".into(),
            AttributeValue::L(vec![
                AttributeValue::Null(true),
                AttributeValue::Bool(true),
                AttributeValue::Bool(false),
                s(""),
                n("0"),
                AttributeValue::L(vec![]),
                AttributeValue::M(HashMap::new()),
            ]),
        ),
        ("empty_map".into(), AttributeValue::M(HashMap::new())),
        ("empty_list".into(), AttributeValue::L(vec![])),
    ])
}

/// The MODIFY: changes under awkward names, a set only re-ordered, a deep leaf, a number's digits.
fn edge_item_modified() -> HashMap<String, AttributeValue> {
    let mut item = edge_item("2");
    item.insert("a/b".into(), s("slash changed"));
    item.insert("t~x".into(), s("tilde changed"));
    item.insert("~1".into(), s("still not escaped"));
    item.insert("n38".into(), n("12345678901234567890123456789012345679"));
    item.insert("deep".into(), nested(30, s("new bottom")));
    item.remove("with space");
    item.insert("added €".into(), AttributeValue::Bool(true));
    // The same set, written in another order: no patch.
    item.insert(
        "ss".into(),
        AttributeValue::Ss(vec![
            "\u{FFFD}".into(),
            "😀".into(),
            "B".into(),
            "ä".into(),
            "a".into(),
            "b".into(),
        ]),
    );
    item.insert(
        "ns".into(),
        AttributeValue::Ns(vec![
            "0.5".into(),
            "-0.25".into(),
            "1E+2".into(),
            "10".into(),
            "9".into(),
            "-1".into(),
        ]),
    );
    item
}

fn apply_patch(base: &Value, patch: &Value) -> Value {
    // Through text: from_value turns a 38-digit number into a u128 and refuses it.
    let patch: json_patch::Patch =
        serde_json::from_str(&patch.to_string()).expect("an RFC 6902 patch");
    let mut doc = base.clone();
    json_patch::patch(&mut doc, &patch).expect("the patch applies");
    doc
}

fn patch_paths(patch: &Value) -> Vec<String> {
    patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_items_arrive_exactly_as_the_conversion_table_says() {
    let test = "bad_input_edge_items";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let arn = moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let ddb = moto.dynamodb().await;
    let put = |item: HashMap<String, AttributeValue>| {
        let ddb = ddb.clone();
        async move {
            ddb.put_item()
                .table_name("orders")
                .set_item(Some(item))
                .send()
                .await
                .expect("moto takes the item")
        }
    };
    let first = edge_item("1");
    let second = edge_item_modified();
    // ~350 KB: an INSERT carries it twice (item and patch), ~700 KB, under Nakadi's 999,000.
    let big_text: String = (0..350_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let big = HashMap::from([
        ("pk".to_string(), s("big")),
        ("blob".to_string(), s(&big_text)),
    ]);
    put(first.clone()).await;
    put(second.clone()).await;
    put(big.clone()).await;
    ddb.delete_item()
        .table_name("orders")
        .key("pk", s("edge"))
        .send()
        .await
        .unwrap();

    let env = base_env(&moto, &nakadi, &arn, "relay-leases", &dlq);
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    let events = wait_for("the four events", Duration::from_secs(60), || async {
        let events = nakadi.events().await;
        (events.len() >= 4).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 4, "exactly one event per change");
    let records = stream_records(&moto, &arn).await;
    for (event, (event_id, _)) in events.iter().zip(&records) {
        assert_eq!(
            event["metadata"]["eid"],
            eid_for(event_id).to_string().as_str()
        );
    }
    let (insert, modify, insert_big, remove) = (&events[0], &events[1], &events[2], &events[3]);

    let first_json = oracle_item(&first);
    let second_json = oracle_item(&second);
    assert_eq!(insert["data_op"], "C");
    assert_json_eq(&insert["data"]["item"], &first_json, "INSERT item");
    assert_json_eq(
        &apply_patch(&json!({}), &insert["data"]["patch"]),
        &first_json,
        "INSERT patch from {}",
    );
    // Digit for digit, as text, not only by value.
    let raw = insert["data"]["item"]["n38"].to_string();
    assert_eq!(raw, "12345678901234567890123456789012345678");
    assert_eq!(
        canon(&insert["data"]["item"]["huge"].to_string()),
        (false, "1".into(), 125)
    );
    assert_eq!(
        canon(&insert["data"]["item"]["tiny"].to_string()),
        (false, "1".into(), -130)
    );
    assert_eq!(insert["data"]["item"]["binary_not_utf8"], "//4AgMMo");
    assert_eq!(
        insert["data"]["item"]["ss"],
        json!(["B", "a", "b", "ä", "\u{FFFD}", "😀"])
    );
    assert_eq!(
        insert["data"]["item"]["bs"],
        json!(["AA==", "AAE=", "gA==", "/w=="])
    );
    let mut deep = &insert["data"]["item"]["deep"];
    for i in (0..30).rev() {
        deep = &deep[format!("level-{i}")];
    }
    assert_eq!(deep, "bottom", "30 levels deep");

    assert_eq!(modify["data_op"], "U");
    assert_json_eq(&modify["data"]["item"], &second_json, "MODIFY item");
    assert_json_eq(
        &apply_patch(&first_json, &modify["data"]["patch"]),
        &second_json,
        "MODIFY patch",
    );
    let paths = patch_paths(&modify["data"]["patch"]);
    for want in ["/a~1b", "/t~0x", "/~01", "/with space", "/added €", "/n38"] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }
    assert!(
        paths
            .iter()
            .all(|p| !p.starts_with("/ss") && !p.starts_with("/ns")),
        "a re-ordered set made a patch: {paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("/deep/level-29/")),
        "{paths:?}"
    );

    assert_eq!(insert_big["data_op"], "C");
    assert_eq!(insert_big["data"]["item"]["blob"], big_text.as_str());
    assert!(insert_big.to_string().len() > 700_000);

    assert_eq!(remove["data_op"], "D");
    assert_json_eq(
        &remove["data"]["item"],
        &second_json,
        "REMOVE item is the old image",
    );
    assert_json_eq(
        &apply_patch(&second_json, &remove["data"]["patch"]),
        &json!({}),
        "REMOVE patch to {}",
    );
    assert_eq!(queue_depth(&moto, &dlq).await, 0, "nothing dead-lettered");
    drop(relay);
}

// ---------------------------------------------------------------------------------------------
// Configuration.

fn valid_config() -> HashMap<&'static str, String> {
    HashMap::from([
        ("RELAY_TABLE_NAME", "orders".into()),
        ("RELAY_LEASE_TABLE", "leases".into()),
        ("RELAY_NAKADI_URL", "http://127.0.0.1:1".into()),
        ("RELAY_EVENT_TYPE", "et".into()),
        (
            "RELAY_DLQ_URL",
            "http://127.0.0.1:1/123456789012/dlq".into(),
        ),
        // Nothing listens there: a configuration error must come before any AWS call, or the
        // test would see a connection error instead.
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1".into()),
        ("AWS_REGION", REGION.into()),
    ])
}

/// Runs the binary with the valid config changed by `set`.
fn run(args: &[&str], set: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut env = valid_config();
    for (k, v) in set {
        env.insert(k, v.to_string());
    }
    let (code, _, stderr) = run_binary(args, &env);
    (code, stderr)
}

/// One variable wrong at a time: blank (counts as unset, as Helm renders an unset value),
/// malformed or out of its documented range. Each required variable left out entirely:
/// the `relay` module.
const WRONG: &[(&str, &str)] = &[
    ("RELAY_TABLE_NAME", "   "),
    ("RELAY_STREAM_ARN", "orders"),
    (
        "RELAY_STREAM_ARN",
        "arn:aws:dynamodb:eu-central-1:1:table/orders",
    ),
    ("RELAY_STREAM_ARN", "https://example.org/table/x/stream/y"),
    ("RELAY_LEASE_TABLE", ""),
    ("RELAY_CREATE_LEASE_TABLE", "maybe"),
    ("RELAY_CREATE_LEASE_TABLE", "2"),
    ("RELAY_NAKADI_URL", "nakadi:8080"),
    ("RELAY_NAKADI_URL", "ftp://nakadi.example.org"),
    ("RELAY_NAKADI_URL", "not a url"),
    ("RELAY_NAKADI_URL", "http://"),
    ("RELAY_ON_PUBLISH_FAILURE", "drop"),
    ("RELAY_ON_PUBLISH_FAILURE", "DLQ"),
    ("RELAY_NAKADI_BATCH_SIZE", "0"),
    ("RELAY_NAKADI_BATCH_SIZE", "10001"),
    ("RELAY_NAKADI_BATCH_SIZE", "-1"),
    ("RELAY_NAKADI_BATCH_SIZE", "1.5"),
    ("RELAY_NAKADI_BATCH_SIZE", "many"),
    ("RELAY_NAKADI_BATCH_BYTES", "1023"),
    ("RELAY_NAKADI_BATCH_BYTES", "67108865"),
    ("RELAY_NAKADI_BATCH_BYTES", "4MiB"),
    ("RELAY_NAKADI_GZIP_MIN_BYTES", "-1"),
    ("RELAY_NAKADI_GZIP_MIN_BYTES", "99999999999999999999999"),
    ("RELAY_NAKADI_TIMEOUT", "99ms"),
    ("RELAY_NAKADI_TIMEOUT", "11m"),
    ("RELAY_NAKADI_TIMEOUT", "-1s"),
    ("RELAY_NAKADI_TIMEOUT", "10"),
    ("RELAY_NAKADI_MAX_ATTEMPTS", "0"),
    ("RELAY_NAKADI_MAX_ATTEMPTS", "1001"),
    ("RELAY_NAKADI_MAX_ATTEMPTS", "x"),
    ("RELAY_NAKADI_MAX_RETRY_TIME", "2h"),
    ("RELAY_NAKADI_MAX_RETRY_TIME", "soon"),
    ("RELAY_DLQ_URL", "relay-dlq"),
    ("RELAY_INITIAL_POSITION", "AT_TIMESTAMP"),
    ("RELAY_INITIAL_POSITION", "trim_horizon"),
    ("RELAY_COMPACTION_KEY", "yes please"),
    ("RELAY_HTTP_ADDR", "8080"),
    ("RELAY_HTTP_ADDR", "localhost:8080"),
    ("RELAY_HTTP_ADDR", "0.0.0.0:99999"),
    ("RELAY_DLQ_REDRAIN_INTERVAL", "500ms"),
    ("RELAY_DLQ_REDRAIN_INTERVAL", "2h"),
    ("RELAY_DLQ_REDRAIN_INTERVAL", "soon"),
    ("RELAY_DLQ_REDRAIN_RATE", "0"),
    ("RELAY_DLQ_REDRAIN_RATE", "1000001"),
    ("RELAY_DLQ_REDRAIN_RATE", "fast"),
    ("RELAY_LOG_FORMAT", "xml"),
    ("RELAY_LOG_FORMAT", "JSON"),
    ("RELAY_LEASE_DURATION", "999ms"),
    ("RELAY_LEASE_DURATION", "11m"),
    ("RELAY_LEASE_DURATION", "long"),
    ("RELAY_LEASE_RENEW_INTERVAL", "99ms"),
    ("RELAY_LEASE_RENEW_INTERVAL", "6m"),
    ("RELAY_LEASE_RENEW_INTERVAL", "often"),
    ("RELAY_SHARD_SYNC_INTERVAL", "500ms"),
    ("RELAY_SHARD_SYNC_INTERVAL", "2h"),
    ("RELAY_SHARD_SYNC_INTERVAL", "x"),
    ("RELAY_SHUTDOWN_TIMEOUT", "500ms"),
    ("RELAY_SHUTDOWN_TIMEOUT", "11m"),
    ("RELAY_SHUTDOWN_TIMEOUT", "x"),
];

/// (the variable the message must name, the changes to the valid config, whether the message
/// must quote the value).
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, bool);

#[test]
fn every_configuration_variable_wrong_in_every_way_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().display().to_string();
    let missing_file = dir.path().join("absent").display().to_string();
    let mut cases: Vec<Case> = WRONG
        .iter()
        .map(|&(var, value)| {
            // The stream ARN's message shows the expected format instead of the value.
            let quoted = !value.trim().is_empty() && var != "RELAY_STREAM_ARN";
            (var, vec![(var, value)], quoted)
        })
        .collect();
    // The cases whose problem is a file or another variable.
    cases.extend([
        (
            "RELAY_NAKADI_TOKEN_FILE",
            vec![("RELAY_NAKADI_TOKEN_FILE", missing_file.as_str())],
            true,
        ),
        (
            "RELAY_NAKADI_TOKEN_FILE",
            vec![("RELAY_NAKADI_TOKEN_FILE", dir_path.as_str())],
            true,
        ),
        // The credentials directory holds no `nakadi-token-secret`.
        (
            "RELAY_NAKADI_TOKEN_NAME",
            vec![("CREDENTIALS_DIR", dir_path.as_str())],
            false,
        ),
        (
            "RELAY_NAKADI_TOKEN_NAME",
            vec![
                ("CREDENTIALS_DIR", dir_path.as_str()),
                ("RELAY_NAKADI_TOKEN_NAME", "other"),
            ],
            true,
        ),
        // Valid alone, but not under half the (default 6 s) lease duration.
        (
            "RELAY_LEASE_RENEW_INTERVAL",
            vec![("RELAY_LEASE_RENEW_INTERVAL", "3s")],
            false,
        ),
    ]);
    let mut failures = Vec::new();
    for (named, set, quoted) in &cases {
        let (code, stderr) = run(&[], set);
        if code != Some(2) || !stderr.contains(&format!("  {named}: ")) {
            failures.push(format!(
                "{set:?}: exit {code:?}, expected 2 naming {named}: {stderr}"
            ));
        }
        // Exactly one problem: a wrong value must not drag others into the report.
        if !stderr.starts_with("invalid configuration (1 problems):") {
            failures.push(format!("{set:?}: not exactly one problem: {stderr}"));
        }
        // The operator's first question is what the pod really got.
        let value = set.iter().find_map(|(k, v)| (k == named).then_some(*v));
        if let (true, Some(v)) = (*quoted, value) {
            if !stderr.contains(v) {
                failures.push(format!(
                    "{named}={v:?}: the value is not quoted in: {stderr}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `redrive` reads the same configuration before it touches the queue.
#[test]
fn redrive_with_a_wrong_variable_exits_2_naming_it() {
    let (code, stderr) = run(&["redrive", "--once"], &[("RELAY_NAKADI_BATCH_SIZE", "0")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("  RELAY_NAKADI_BATCH_SIZE: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_files_that_cannot_be_used_exit_2_naming_relay_nakadi_token_file() {
    let test = "bad_input_token_files";
    // Empty and header-breaking tokens pass the config check (the file exists) and are refused
    // when the publisher reads them, after the AWS checks: so moto is needed.
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let arn = moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[u8])] = &[
        ("empty", b""),
        ("blank", b" \n\t\n"),
        ("two-lines", b"secret-part-one\nsecret-part-two"),
        ("control-char", b"secret\x07bell"),
        ("not-utf8", b"\xff\xfe secret"),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut env = base_env(&moto, &nakadi, &arn, "relay-leases", &dlq);
        env.insert("RELAY_NAKADI_TOKEN_FILE".into(), path.display().to_string());
        let mut relay = Relay::start(test, &format!("relay-{name}"), &env);
        let status = relay.process.wait_exit(Duration::from_secs(60)).await;
        let logs = relay.logs();
        assert_eq!(status.code(), Some(2), "{name}: {logs}");
        assert!(logs.contains("RELAY_NAKADI_TOKEN_FILE"), "{name}: {logs}");
        assert!(
            logs.contains(&path.display().to_string()),
            "{name}: the path is named: {logs}"
        );
        assert!(
            !logs.contains("secret"),
            "{name}: the token is shown: {logs}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A Nakadi that misbehaves.

/// What the fake Nakadi answers to a request whose (single) event has this `pk`.
const CASES: &[&str] = &[
    "ok",
    "ok-with-5mb-body",
    "207-not-json",
    "207-wrong-shape",
    "207-foreign-items",
    "207-oversized",
    "207-oversized-chunked",
    "207-truncated",
    "422-garbage",
    "422-foreign-items",
    "500-huge-body",
    "bad-status-line",
    "silent",
    "close-at-once",
];

/// The DLQ message's `failure.status` and a part of its reason, per case that must fail.
fn expected_failure(case: &str) -> Option<(Value, &'static str)> {
    Some(match case {
        "ok" | "ok-with-5mb-body" => return None,
        "207-not-json" | "207-wrong-shape" => (json!(207), "207 with a body that is not Nakadi's"),
        "207-foreign-items" => (json!(207), "207: 1 of 1 events not submitted"),
        "207-oversized" | "207-oversized-chunked" => {
            (json!(207), "207 with a body over 1048576 bytes")
        }
        "207-truncated" => (json!(207), "207 with a body that broke off"),
        "422-garbage" => (json!(422), "422 with a body that is not Nakadi's"),
        "422-foreign-items" => (json!(422), "422: events rejected"),
        "500-huge-body" => (json!(500), "500 Internal Server Error"),
        "bad-status-line" | "close-at-once" => (Value::Null, "gave up after 2 attempts"),
        "silent" => (Value::Null, "no response within 500ms"),
        other => panic!("unknown case {other}"),
    })
}

#[derive(Default)]
struct FakeLog {
    /// (case, eid) per request received.
    requests: Vec<(String, String)>,
    /// eids answered 200.
    accepted: HashSet<String>,
}

/// A Nakadi that answers every publishing request with the misbehaviour its event's `pk` names,
/// until `healthy` is set; then with 200.
struct FakeNakadi {
    url: String,
    log: Arc<Mutex<FakeLog>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeNakadi {
    async fn start() -> FakeNakadi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, h) = (log.clone(), healthy.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, l.clone(), h.clone()));
            }
        });
        FakeNakadi { url, log, healthy }
    }
}

/// Reads one HTTP/1.1 request: (head, body).
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    log: Arc<Mutex<FakeLog>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) {
    let Some((head, body)) = read_request(&mut conn).await else {
        return;
    };
    assert!(
        !head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "the test disables gzip"
    );
    let events: Vec<Value> = serde_json::from_slice(&body).expect("the relay sends a JSON array");
    let eids: Vec<String> = events
        .iter()
        .map(|e| e["metadata"]["eid"].as_str().unwrap().to_owned())
        .collect();
    let case = if healthy.load(std::sync::atomic::Ordering::SeqCst) {
        "ok".to_owned()
    } else {
        events[0]["data"]["item"]["pk"].as_str().unwrap().to_owned()
    };
    log.lock()
        .unwrap()
        .requests
        .extend(eids.iter().map(|e| (case.clone(), e.clone())));
    let foreign = "00000000-0000-5000-8000-000000000000";
    let status_line = |code: u16| match code {
        200 => "HTTP/1.1 200 OK",
        207 => "HTTP/1.1 207 Multi-Status",
        422 => "HTTP/1.1 422 Unprocessable Entity",
        _ => "HTTP/1.1 500 Internal Server Error",
    };
    let reply = |code: u16, body: &[u8]| {
        let mut out = format!(
            "{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            status_line(code),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let out: Vec<u8> = match case.as_str() {
        "ok" => reply(200, b""),
        "ok-with-5mb-body" => reply(200, &vec![b'x'; 5 << 20]),
        "207-not-json" => reply(207, b"<html><body>502 Bad Gateway</body></html>"),
        "207-wrong-shape" => reply(207, br#"{"unexpected": true, "items": 3}"#),
        "207-foreign-items" => reply(207, json!([{"eid": foreign, "publishing_status": "submitted", "step": "publishing"}]).to_string().as_bytes()),
        "207-oversized" => {
            let item = json!({"eid": eids[0], "publishing_status": "submitted", "step": "publishing", "detail": "x".repeat(1000)});
            let items: Vec<Value> = (0..1200).map(|_| item.clone()).collect();
            reply(207, serde_json::to_string(&items).unwrap().as_bytes())
        }
        "207-oversized-chunked" => {
            let mut out = format!("{}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", status_line(207)).into_bytes();
            let piece = json!({"eid": eids[0], "publishing_status": "submitted", "detail": "y".repeat(4000)}).to_string();
            out.extend_from_slice(b"1\r\n[\r\n");
            for i in 0..300 {
                let p = if i == 0 { piece.clone() } else { format!(",{piece}") };
                out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
            }
            out.extend_from_slice(b"1\r\n]\r\n0\r\n\r\n");
            out
        }
        "207-truncated" => {
            let mut out = format!("{}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n", status_line(207)).into_bytes();
            out.extend_from_slice(br#"[{"eid":""#);
            out
        }
        "422-garbage" => reply(422, b"\x00\xff not json at all"),
        "422-foreign-items" => reply(422, json!([{"eid": foreign, "publishing_status": "failed", "step": "validating", "detail": "someone else's"}]).to_string().as_bytes()),
        "500-huge-body" => reply(500, &vec![b'E'; 3 << 20]),
        "bad-status-line" => b"HTTP/1.1 abc this is not http\r\n\r\n".to_vec(),
        "silent" => {
            // Accepted and read, never answered: held open until the relay gives up.
            let mut sink = [0u8; 1024];
            while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        "close-at-once" => return,
        other => panic!("unknown case {other}"),
    };
    if case == "ok" || case == "ok-with-5mb-body" {
        log.lock().unwrap().accepted.extend(eids);
    }
    let _ = conn.write_all(&out).await;
    let _ = conn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_missing_nakadi_answers_dead_letter_with_the_reason_and_lose_nothing()
 {
    let test = "bad_input_nakadi_answers";
    let moto = Moto::start(test).await;
    // The Nakadi test server is not used for publishing here; base_env wants one for its URL.
    let unused = Nakadi::start(test, &[]);
    let fake = FakeNakadi::start().await;
    let arn = moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let ddb = moto.dynamodb().await;
    for case in CASES {
        ddb.put_item()
            .table_name("orders")
            .item("pk", s(case))
            .send()
            .await
            .unwrap();
    }
    let records = stream_records(&moto, &arn).await;
    let eid_of: HashMap<String, &str> = records
        .iter()
        .zip(CASES)
        .map(|((event_id, _), case)| (eid_for(event_id).to_string(), *case))
        .collect();
    let mut env = base_env(&moto, &unused, &arn, "relay-leases", &dlq);
    env.insert("RELAY_NAKADI_URL".into(), fake.url.clone());
    env.insert("RELAY_NAKADI_BATCH_SIZE".into(), "1".into());
    env.insert("RELAY_NAKADI_GZIP_MIN_BYTES".into(), "1000000000".into());
    env.insert("RELAY_NAKADI_TIMEOUT".into(), "500ms".into());
    env.insert("RELAY_NAKADI_MAX_ATTEMPTS".into(), "2".into());
    env.insert("RELAY_NAKADI_MAX_RETRY_TIME".into(), "5s".into());
    env.insert("RELAY_DLQ_REDRAIN_INTERVAL".into(), "1h".into());
    let mut relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    let failing = CASES
        .iter()
        .filter(|c| expected_failure(c).is_some())
        .count();
    let last = records.last().unwrap().1.clone();
    wait_for(
        "every misanswered event in the DLQ and the checkpoint at the end",
        Duration::from_secs(90),
        || async {
            (queue_depth(&moto, &dlq).await == failing
                && checkpoints(&moto, "relay-leases").await == vec![last.clone()])
            .then_some(())
        },
    )
    .await;

    // Read every dead letter, then make them visible again for the re-drive.
    let sqs = moto.sqs().await;
    // Behind a lock: every poll of wait_for adds to it, and the poll's future may only borrow.
    let letters: Mutex<HashMap<String, (Value, String)>> = Mutex::new(HashMap::new());
    wait_for("all dead letters received", Duration::from_secs(30), || {
        let (sqs, dlq, letters) = (&sqs, &dlq, &letters);
        async move {
            let out = sqs
                .receive_message()
                .queue_url(dlq)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .send()
                .await
                .unwrap();
            for m in out.messages() {
                let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                let eid = body["event"]["metadata"]["eid"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                letters
                    .lock()
                    .unwrap()
                    .insert(eid, (body, m.receipt_handle().unwrap().to_owned()));
            }
            (letters.lock().unwrap().len() == failing).then_some(())
        }
    })
    .await;
    let letters = letters.into_inner().unwrap();
    let mut problems = Vec::new();
    for (eid, (body, handle)) in &letters {
        let case = eid_of[eid];
        let (status, reason) =
            expected_failure(case).unwrap_or_else(|| panic!("{case} was dead-lettered: {body}"));
        let got_reason = body["failure"]["reason"].as_str().unwrap();
        if body["failure"]["status"] != status || !got_reason.contains(reason) {
            problems.push(format!(
                "{case}: want status {status} and reason containing {reason:?}, got {}",
                body["failure"]
            ));
        }
        // A 3 MiB error page must not become a 3 MiB reason.
        if got_reason.len() > 2000 {
            problems.push(format!("{case}: reason of {} bytes", got_reason.len()));
        }
        if body["failure"]["attempts"] != 2 {
            problems.push(format!("{case}: attempts {}", body["failure"]["attempts"]));
        }
        sqs.change_message_visibility()
            .queue_url(&dlq)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let accepted = fake.log.lock().unwrap().accepted.clone();
    let delivered: HashSet<&str> = accepted.iter().map(|e| eid_of[e]).collect();
    assert_eq!(delivered, HashSet::from(["ok", "ok-with-5mb-body"]));

    // Nakadi heals: the re-drive publishes every dead letter; every record reached Nakadi.
    relay.process.signal("TERM");
    relay.process.wait_exit(Duration::from_secs(30)).await;
    fake.healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        redrive_once(&env).await,
        json!({"published": failing, "failed": 0, "undecodable": 0})
    );
    assert_eq!(queue_depth(&moto, &dlq).await, 0);
    let accepted = fake.log.lock().unwrap().accepted.clone();
    let all: HashSet<String> = eid_of.keys().cloned().collect();
    assert_eq!(accepted, all, "every record reached Nakadi");
}

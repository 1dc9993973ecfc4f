//! `check` against moto and the Nakadi test server, with the real binary: every check passes (or
//! cannot be verified without writing) on a setup like the demo's, and writes nothing; each
//! broken piece fails its own check, and only that one, with exit code 1; endpoints that hang or
//! refuse fail within the bound; `--json` lists every check, and `--table` picks the tables.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{ScalarAttributeType, StreamViewType};
use aws_sdk_sqs::types::QueueAttributeName;
use dynamodb_nakadi_relay::check::CHECK_TIMEOUT;
use dynamodb_nakadi_relay::ids::StreamArn;
use dynamodb_nakadi_relay::lease::LeaseTable;
use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "check-token";
const LEASES: &str = "relay-leases";

/// The demo's pieces: the table `orders` (keyed by `pk`) with its stream, the DLQ with its
/// parking queue, the Nakadi test server with a token and the event type `event-type` prints for
/// the table. The lease table does not exist: the relay may create it.
struct Setup {
    moto: Moto,
    nakadi: Nakadi,
    dlq: String,
    /// The relay's variables: the table by name, the token file.
    env: HashMap<String, String>,
}

async fn demo_like(test: &str) -> Setup {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &["--token", TOKEN]);
    moto.create_table("orders").await;
    let dlq = moto.create_dlq_with_parking("relay-dlq").await;
    let token = output_dir(test).join("nakadi-token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut env = base_env(&moto, &nakadi, "", LEASES, &dlq);
    env.remove("RELAY_STREAM_ARN");
    env.insert("RELAY_TABLE_NAME".into(), "orders".into());
    env.insert(
        "RELAY_NAKADI_TOKEN_FILE".into(),
        token.display().to_string(),
    );
    register_printed_event_type(&nakadi, &env, &[]).await;
    Setup {
        moto,
        nakadi,
        dlq,
        env,
    }
}

/// Registers the event type that `event-type` prints for the configured table (`extra`: more
/// of its arguments, such as `--table`), as an operator creates it in Nakadi.
async fn register_printed_event_type(
    nakadi: &Nakadi,
    env: &HashMap<String, String>,
    extra: &[&str],
) {
    let mut args = vec![
        "event-type",
        "--owning-application",
        "stups_orders",
        "--key",
        "pk",
    ];
    args.extend(extra);
    let (code, stdout, stderr) = run_binary(&args, env);
    assert_eq!(code, Some(0), "event-type: {stderr}");
    nakadi
        .register_event_type(&serde_json::from_str(&stdout).unwrap())
        .await;
}

/// Creates the lease table with the relay's own code, as its first start does.
async fn create_lease_table(moto: &Moto) {
    let arn = StreamArn::new("arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/x");
    LeaseTable::new(
        moto.dynamodb().await,
        LEASES.into(),
        arn,
        Duration::from_secs(5),
    )
    .ensure_exists(true)
    .await
    .unwrap();
}

/// `check` with `args`: (exit code, stdout, stderr).
fn check(args: &[&str], env: &HashMap<String, String>) -> (Option<i32>, String, String) {
    let args: Vec<&str> = std::iter::once("check")
        .chain(args.iter().copied())
        .collect();
    run_binary(&args, env)
}

/// `check --json` with `args`: the exit code and the report.
fn check_json(args: &[&str], env: &HashMap<String, String>) -> (Option<i32>, Value) {
    let args: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let (code, stdout, stderr) = check(&args, env);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {stdout}{stderr}"));
    (code, report)
}

fn checks(report: &Value) -> &Vec<Value> {
    report["checks"].as_array().expect("checks is an array")
}

/// The ids of the checks with `status`, in report order.
fn with_status<'a>(report: &'a Value, status: &str) -> Vec<&'a str> {
    checks(report)
        .iter()
        .filter(|c| c["status"] == status)
        .map(|c| c["check"].as_str().unwrap())
        .collect()
}

/// The one line of check `id` (of `subject` where several have it).
fn line<'a>(report: &'a Value, id: &str) -> &'a Value {
    let found: Vec<&Value> = checks(report).iter().filter(|c| c["check"] == id).collect();
    assert_eq!(found.len(), 1, "one {id} line in {report:#}");
    found[0]
}

/// Each human line's mark and check id, the last line (the counts) left out.
fn marks(table: &str) -> Vec<(&str, &str)> {
    let lines: Vec<&str> = table.lines().collect();
    lines[..lines.len() - 1]
        .iter()
        .map(|l| {
            let mut words = l.split_whitespace();
            (words.next().unwrap(), words.next().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_a_demo_like_setup_and_writes_nothing() {
    let test = "check_demo";
    let s = demo_like(test).await;

    let (code, stdout, stderr) = check(&[], &s.env);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let not_verifiable = ["lease_write", "dlq_send", "nakadi_publish"];
    for (mark, id) in marks(&stdout) {
        let wanted = if not_verifiable.contains(&id) {
            "?"
        } else {
            "✓"
        };
        assert_eq!(mark, wanted, "{id}:\n{stdout}");
    }
    assert!(
        stdout.ends_with("13 passed, 0 failed, 3 not verifiable\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("does not exist yet: the relay creates it at start"),
        "{stdout}"
    );
    let described = s
        .moto
        .dynamodb()
        .await
        .describe_table()
        .table_name(LEASES)
        .send()
        .await;
    assert!(described.is_err(), "check created the lease table");

    // Once the lease table exists, the write permission is proved without a write.
    create_lease_table(&s.moto).await;
    let (code, report) = check_json(&[], &s.env);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(
        with_status(&report, "not_verifiable"),
        ["dlq_send", "nakadi_publish"]
    );
    assert!(
        line(&report, "lease_write")["detail"]
            .as_str()
            .unwrap()
            .contains("UpdateItem is allowed"),
        "{report:#}"
    );

    let leases = s
        .moto
        .dynamodb()
        .await
        .scan()
        .table_name(LEASES)
        .send()
        .await
        .unwrap();
    assert_eq!(leases.count(), 0, "check wrote to the lease table");
    let sqs = s.moto.sqs().await;
    let parking = sqs
        .get_queue_url()
        .queue_name("relay-dlq-parking")
        .send()
        .await
        .unwrap();
    for queue in [s.dlq.as_str(), parking.queue_url().unwrap()] {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        let messages =
            &attributes.attributes().unwrap()[&QueueAttributeName::ApproximateNumberOfMessages];
        assert_eq!(messages, "0", "check sent to {queue}");
    }
    assert!(s.nakadi.events().await.is_empty(), "check published");
}

/// One broken piece: what is changed, and the check that must fail with these words.
struct Broken {
    what: &'static str,
    env: Vec<(&'static str, String)>,
    fails: &'static str,
    words: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_piece_fails_its_own_check_with_exit_1() {
    let test = "check_broken";
    let s = demo_like(test).await;
    create_lease_table(&s.moto).await;
    s.moto
        .create_table_viewing(
            "orders-keys-only",
            &[("pk", ScalarAttributeType::S)],
            StreamViewType::KeysOnly,
        )
        .await;
    let wrong_token = output_dir(test).join("wrong-token");
    std::fs::write(&wrong_token, "not-the-token").unwrap();

    let cases = [
        Broken {
            what: "missing table",
            env: vec![("RELAY_TABLE_NAME", "refunds".into())],
            fails: "source_table",
            words: &["RELAY_TABLE_NAME", "ResourceNotFoundException", "refunds"],
        },
        Broken {
            what: "wrong view type",
            env: vec![("RELAY_TABLE_NAME", "orders-keys-only".into())],
            fails: "view_type",
            words: &["KEYS_ONLY", "needs NEW_AND_OLD_IMAGES"],
        },
        Broken {
            what: "missing queue",
            env: vec![(
                "RELAY_DLQ_URL",
                format!("{}/123456789012/absent-dlq", s.moto.endpoint),
            )],
            fails: "dlq",
            words: &["RELAY_DLQ_URL", "absent-dlq does not exist"],
        },
        Broken {
            what: "unknown event type",
            env: vec![("RELAY_EVENT_TYPE", "payments.refund-changed".into())],
            fails: "event_type",
            words: &["404", "payments.refund-changed", "event-type"],
        },
        Broken {
            what: "401 from Nakadi",
            env: vec![("RELAY_NAKADI_TOKEN_FILE", wrong_token.display().to_string())],
            fails: "event_type",
            words: &["401", "RELAY_NAKADI_TOKEN_FILE"],
        },
    ];
    for case in cases {
        let mut env = s.env.clone();
        env.extend(case.env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let (code, report) = check_json(&[], &env);
        let what = format!("{}: {report:#}", case.what);
        assert_eq!(code, Some(1), "{what}");
        assert_eq!(report["passed"], false, "{what}");
        assert_eq!(with_status(&report, "failed"), [case.fails], "{what}");
        let detail = line(&report, case.fails)["detail"].as_str().unwrap();
        for word in case.words {
            assert!(detail.contains(word), "{word:?} missing in {what}");
        }

        let (code, stdout, _) = check(&[], &env);
        assert_eq!(code, Some(1), "{}: {stdout}", case.what);
        assert!(
            marks(&stdout).contains(&("✗", case.fails)),
            "{}: {stdout}",
            case.what
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_fail_within_the_bound() {
    // AWS accepts connections and never answers; Nakadi refuses them.
    let silent = Silent::start().await;
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", silent.url.clone()),
        ("AWS_REGION", REGION.into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("RELAY_TABLE_NAME", "orders".into()),
        ("RELAY_LEASE_TABLE", LEASES.into()),
        ("RELAY_NAKADI_URL", refused),
        ("RELAY_EVENT_TYPE", "payments.order-changed".into()),
        (
            "RELAY_DLQ_URL",
            format!("{}/123456789012/relay-dlq", silent.url),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let started = Instant::now();
    let (code, report) = tokio::task::spawn_blocking(move || check_json(&[], &env))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{report:#}");
    // The groups run side by side, each call bounded: about one bound in all.
    assert!(
        took < CHECK_TIMEOUT + Duration::from_secs(5),
        "check took {took:?}"
    );
    assert_eq!(
        with_status(&report, "failed"),
        ["source_table", "lease_table", "dlq", "event_type"],
        "{report:#}"
    );
    let bound = format!(
        "no answer within {}",
        humantime::format_duration(CHECK_TIMEOUT)
    );
    for id in ["source_table", "lease_table", "dlq"] {
        let detail = line(&report, id)["detail"].as_str().unwrap();
        assert!(detail.contains(&bound), "{id}: {detail}");
    }
    let detail = line(&report, "event_type")["detail"].as_str().unwrap();
    assert!(detail.contains("Connection refused"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lists_every_check_and_table_picks_the_tables() {
    let test = "check_json";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    moto.create_table("orders").await;
    moto.create_table("refunds").await;
    let dlq = moto.create_dlq_with_parking("relay-dlq").await;
    let env = tables_env(
        test,
        &moto,
        &nakadi,
        &dlq,
        "[[table]]\nname = \"orders\"\nevent_type = \"payments.order-changed\"\n\n\
         [[table]]\nname = \"refunds\"\nevent_type = \"payments.refund-changed\"\n",
    );
    for table in ["orders", "refunds"] {
        register_printed_event_type(&nakadi, &env, &["--table", table]).await;
    }

    let (code, report) = check_json(&[], &env);
    assert_eq!(code, Some(0), "{report:#}");
    let keys = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&report), ["checks", "counts", "passed"]);
    assert_eq!(report["passed"], true);
    for c in checks(&report) {
        assert_eq!(keys(c), ["check", "detail", "status", "subject"], "{c}");
        assert!(
            ["passed", "failed", "not_verifiable"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
    }
    let count = |status| with_status(&report, status).len();
    assert_eq!(
        report["counts"],
        serde_json::json!({"passed": count("passed"), "failed": 0,
                           "not_verifiable": count("not_verifiable")})
    );
    let listed: Vec<(&str, &str)> = checks(&report)
        .iter()
        .map(|c| (c["check"].as_str().unwrap(), c["subject"].as_str().unwrap()))
        .collect();
    let source = |table| {
        [
            ("source_table", table),
            ("stream", table),
            ("view_type", table),
        ]
    };
    let event_type = |name| {
        [
            ("event_type", name),
            ("event_type_category", name),
            ("event_type_partitioning", name),
            ("event_type_cleanup_policy", name),
            ("nakadi_publish", name),
        ]
    };
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    wanted.extend(source("orders"));
    wanted.extend(source("refunds"));
    wanted.extend([
        ("lease_table", LEASES),
        ("lease_key_schema", LEASES),
        ("lease_write", LEASES),
    ]);
    wanted.extend(["dlq", "dlq_size", "dlq_redrive", "dlq_send"].map(|id| (id, dlq.as_str())));
    wanted.push(("nakadi_token", "RELAY_NAKADI_TOKEN_FILE"));
    wanted.extend(event_type("payments.order-changed"));
    wanted.extend(event_type("payments.refund-changed"));
    assert_eq!(listed, wanted);

    let (code, report) = check_json(&["--table", "refunds"], &env);
    assert_eq!(code, Some(0), "{report:#}");
    let subjects: Vec<&str> = checks(&report)
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"refunds") && subjects.contains(&"payments.refund-changed"));
    assert!(
        !subjects.contains(&"orders") && !subjects.contains(&"payments.order-changed"),
        "{subjects:?}"
    );

    let (code, stdout, stderr) = check(&["--table", "ghosts"], &env);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("--table") && stderr.contains("refunds"),
        "{stderr}"
    );

    let mut unconfigured = env.clone();
    unconfigured.remove("RELAY_LEASE_TABLE");
    let (code, stdout, stderr) = check(&[], &unconfigured);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("RELAY_LEASE_TABLE"), "{stderr}");
}

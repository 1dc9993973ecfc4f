//! The dead-letter queue and the re-drain loop, end to end: the real relay binary, moto and the
//! Nakadi test server.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use dynamodb_nakadi_relay::dlq::message::{EXTENDED_PAYLOAD_SIZE, S3Pointer, encode_gzip};
use dynamodb_nakadi_relay::dlq::{DeadLetter, DeadLetterQueue, DlqError, Origin, Redrainer};
use dynamodb_nakadi_relay::nakadi::{
    Failure, FailureKind, FailureMode, Publisher, PublisherConfig, TokenSource,
};
use dynamodb_nakadi_relay::transform::{Event, eid_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::*;

struct Env {
    moto: Moto,
    nakadi: Nakadi,
    stream_arn: String,
    dlq: String,
    env: HashMap<String, String>,
}

async fn setup(test: &str, queue_attributes: &[(&str, &str)]) -> Env {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let stream_arn = moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", queue_attributes).await;
    let mut env = base_env(&moto, &nakadi, &stream_arn, "relay-leases", &dlq);
    env.insert("RELAY_NAKADI_MAX_ATTEMPTS".into(), "3".into());
    env.insert("RELAY_NAKADI_MAX_RETRY_TIME".into(), "1s".into());
    Env {
        moto,
        nakadi,
        stream_arn,
        dlq,
        env,
    }
}

async fn put(moto: &Moto, keys: std::ops::Range<usize>, extra: &[(&str, AttributeValue)]) {
    let ddb = moto.dynamodb().await;
    for i in keys {
        let mut item = HashMap::from([
            ("pk".to_string(), AttributeValue::S(format!("order-{i:04}"))),
            ("seq".to_string(), AttributeValue::N(i.to_string())),
        ]);
        for (k, v) in extra {
            item.insert(k.to_string(), v.clone());
        }
        ddb.put_item()
            .table_name("orders")
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
}

/// Up to 10 messages of the DLQ, with their attributes.
async fn received(t: &Env) -> Vec<aws_sdk_sqs::types::Message> {
    t.moto
        .sqs()
        .await
        .receive_message()
        .queue_url(&t.dlq)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

fn eids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["metadata"]["eid"].as_str().unwrap().to_owned())
        .collect()
}

async fn expected_eids(t: &Env) -> HashSet<String> {
    stream_records(&t.moto, &t.stream_arn)
        .await
        .into_iter()
        .map(|(event_id, _)| eid_for(&event_id).to_string())
        .collect()
}

async fn last_sequence(t: &Env) -> String {
    stream_records(&t.moto, &t.stream_arn)
        .await
        .last()
        .unwrap()
        .1
        .clone()
}

/// A queue made with `attributes`, and the relay's handle on it.
async fn dlq_on(moto: &Moto, name: &str, attributes: &[(&str, &str)]) -> (String, DeadLetterQueue) {
    let url = moto.create_queue(name, attributes).await;
    let dlq = DeadLetterQueue::connect(moto.sqs().await, url.clone())
        .await
        .unwrap();
    (url, dlq)
}

/// Waits until Nakadi holds `events` events and the lease's checkpoint is `last`.
async fn wait_published_and_checkpointed(t: &Env, events: usize, last: &str) {
    wait_for(
        "the events published and the checkpoint at the end",
        Duration::from_secs(60),
        || async {
            let n = t.nakadi.events().await.len();
            (n == events && checkpoints(&t.moto, "relay-leases").await == [last]).then_some(())
        },
    )
    .await;
}

/// Waits until the DLQ holds `letters` messages and the lease's checkpoint is past the stream's
/// last record: everything was dead-lettered, and only then checkpointed.
async fn wait_dead_lettered_and_checkpointed(t: &Env, letters: usize) {
    let last = last_sequence(t).await;
    wait_for(
        "the letters in the DLQ and the checkpoint past them",
        Duration::from_secs(60),
        || async {
            let cps = checkpoints(&t.moto, "relay-leases").await;
            (queue_depth(&t.moto, &t.dlq).await == letters && cps == vec![last.clone()])
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nakadi_down_everything_waits_in_sqs_then_is_redrained_with_first_eids() {
    let test = "dlq_nakadi_down";
    let t = setup(test, &[]).await;
    t.nakadi.fault(json!({"status": 503})).await;
    put(&t.moto, 0..50, &[]).await;
    let relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    wait_dead_lettered_and_checkpointed(&t, 50).await;
    assert!(t.nakadi.events().await.is_empty());

    t.nakadi.clear_faults().await;
    let events = wait_for(
        "the re-drain to publish everything",
        Duration::from_secs(60),
        || async {
            let events = t.nakadi.events().await;
            (events.len() >= 50).then_some(events)
        },
    )
    .await;
    wait_for(
        "the queue to end empty",
        Duration::from_secs(30),
        || async { (queue_depth(&t.moto, &t.dlq).await == 0).then_some(()) },
    )
    .await;
    let got: HashSet<String> = eids(&events).into_iter().collect();
    assert_eq!(got.len(), events.len(), "an event was published twice");
    assert_eq!(got, expected_eids(&t).await);
    let (_, metrics) = relay.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("relay_dlq_redrained_total{outcome=\"published\"} 50"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rejected_event_goes_to_the_dlq_with_its_reason_and_the_rest_flows() {
    let test = "dlq_one_rejected";
    let t = setup(test, &[]).await;
    put(&t.moto, 0..20, &[]).await;
    let records = stream_records(&t.moto, &t.stream_arn).await;
    let rejected = eid_for(&records[7].0).to_string();
    t.nakadi.fault(json!({"reject_eids": [rejected]})).await;
    // The re-drain loop must not take the message away before the test reads it.
    let mut env = t.env.clone();
    env.insert("RELAY_DLQ_REDRAIN_INTERVAL".into(), "1h".into());
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    wait_published_and_checkpointed(&t, 19, &records.last().unwrap().1).await;
    assert!(!eids(&t.nakadi.events().await).contains(&rejected));
    let msgs = received(&t).await;
    assert_eq!(msgs.len(), 1);
    let body: Value = serde_json::from_str(msgs[0].body().unwrap()).unwrap();
    assert_eq!(body["event"]["metadata"]["eid"], rejected.as_str());
    assert_eq!(body["event_type"], "payments.order-changed");
    assert_eq!(body["failure"]["status"], 422);
    assert!(
        body["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("rejected by test rule"),
        "{body}"
    );
    assert_eq!(body["source"]["sequence_number"], records[7].1.as_str());
    assert_eq!(
        msgs[0].message_attributes().unwrap()["reason"].string_value(),
        Some("rejected")
    );
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_unreachable_too_nothing_is_checkpointed_until_both_come_back() {
    let test = "dlq_sqs_down";
    let t = setup(test, &[]).await;
    let sqs = FaultProxy::start(&t.moto.endpoint).await;
    let mut env = t.env.clone();
    env.insert("AWS_ENDPOINT_URL_SQS".into(), sqs.url.clone());
    put(&t.moto, 0..10, &[]).await;
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    wait_for("the first events", Duration::from_secs(60), || async {
        (t.nakadi.events().await.len() == 10).then_some(())
    })
    .await;
    let checkpoint_before = checkpoints(&t.moto, "relay-leases").await;

    t.nakadi.fault(json!({"status": 503})).await;
    sqs.set_down(true);
    put(&t.moto, 10..30, &[]).await;
    wait_for(
        "the relay to fail writing to the DLQ",
        Duration::from_secs(60),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            m.lines()
                .find(|l| l.starts_with("relay_dlq_write_failures_total "))
                .filter(|l| !l.ends_with(" 0"))
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(
        checkpoints(&t.moto, "relay-leases").await,
        checkpoint_before,
        "checkpoint moved although nothing was delivered"
    );

    sqs.set_down(false);
    t.nakadi.clear_faults().await;
    let events = wait_for("everything to arrive", Duration::from_secs(90), || async {
        let events = t.nakadi.events().await;
        let got: HashSet<String> = eids(&events).into_iter().collect();
        (got.len() == 30).then_some(events)
    })
    .await;
    let got: HashSet<String> = eids(&events).into_iter().collect();
    assert_eq!(got, expected_eids(&t).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_600_kb_event_round_trips_through_a_256_kib_queue() {
    let test = "dlq_large_event";
    let t = setup(test, &[("MaximumMessageSize", "262144")]).await;
    t.nakadi.fault(json!({"status": 503})).await;
    // An INSERT carries the item twice (item and patch): a 300 KB item makes a ~600 KB event.
    let big: String = (0..300_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    put(&t.moto, 0..1, &[("blob", AttributeValue::S(big.clone()))]).await;
    let relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    wait_for("the event in the DLQ", Duration::from_secs(60), || async {
        (queue_depth(&t.moto, &t.dlq).await == 1).then_some(())
    })
    .await;
    t.nakadi.clear_faults().await;
    let events = wait_for("the re-drained event", Duration::from_secs(60), || async {
        let events = t.nakadi.events().await;
        (events.len() == 1).then_some(events)
    })
    .await;
    assert!(serde_json::to_string(&events[0]).unwrap().len() > 600_000);
    assert_eq!(events[0]["data"]["item"]["blob"], big.as_str());
    assert_eq!(
        eids(&events),
        expected_eids(&t).await.into_iter().collect::<Vec<_>>()
    );
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_mode_keeps_order_and_never_dead_letters() {
    let test = "dlq_block_mode";
    let t = setup(test, &[]).await;
    let mut env = t.env.clone();
    env.insert("RELAY_ON_PUBLISH_FAILURE".into(), "block".into());
    t.nakadi.fault(json!({"status": 503})).await;
    put(&t.moto, 0..30, &[]).await;
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    // Well past the attempts and retry time after which dlq mode would give up.
    wait_for(
        "the relay to retry many times",
        Duration::from_secs(60),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            let retries: f64 = m
                .lines()
                .find_map(|l| {
                    l.strip_prefix("relay_publish_retries_total{reason=\"server_error\"} ")
                })?
                .parse()
                .ok()?;
            (retries >= 8.0 * 30.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        queue_depth(&t.moto, &t.dlq).await,
        0,
        "block mode dead-lettered"
    );
    assert_eq!(
        checkpoints(&t.moto, "relay-leases").await,
        vec!["TRIM_HORIZON".to_string()]
    );

    t.nakadi.clear_faults().await;
    let events = wait_for("every event", Duration::from_secs(60), || async {
        let events = t.nakadi.events().await;
        (events.len() >= 30).then_some(events)
    })
    .await;
    let order: Vec<String> = events
        .iter()
        .map(|e| e["data"]["item"]["seq"].to_string())
        .collect();
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(order, expected, "stream order");
    assert_eq!(queue_depth(&t.moto, &t.dlq).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_once_republishes_the_queue_and_exits() {
    let test = "dlq_redrive_once";
    let t = setup(test, &[]).await;
    t.nakadi.fault(json!({"status": 503})).await;
    put(&t.moto, 0..12, &[]).await;
    let mut env = t.env.clone();
    env.insert("RELAY_DLQ_REDRAIN_INTERVAL".into(), "1h".into());
    let mut relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    wait_for(
        "every event in the DLQ",
        Duration::from_secs(60),
        || async { (queue_depth(&t.moto, &t.dlq).await == 12).then_some(()) },
    )
    .await;
    relay.process.signal("TERM");
    relay.process.wait_exit(Duration::from_secs(30)).await;
    t.nakadi.clear_faults().await;

    assert_eq!(
        redrive_once(&env).await,
        json!({"published": 12, "failed": 0, "undecodable": 0})
    );
    assert_eq!(queue_depth(&t.moto, &t.dlq).await, 0);
    let got: HashSet<String> = eids(&t.nakadi.events().await).into_iter().collect();
    assert_eq!(got, expected_eids(&t).await);
}

/// A Nakadi event of the test event type whose item carries `payload`, and its dead letter.
fn letter_with(i: u64, payload: &str) -> DeadLetter {
    let eid = uuid::Uuid::from_u128(0x5f0c_8a5e_3f8e_5d9a_9c1e_0000_0000_0000 + u128::from(i));
    let body = json!({
        "metadata": {"eid": eid, "occurred_at": "2026-11-22T06:16:10.123Z"},
        "data_op": "C",
        "data_type": "payments.order-changed",
        "data": {"item": {"pk": format!("order-{i}"), "payload": payload}, "patch": []},
    });
    let event = Event::new(
        eid,
        body.to_string().as_bytes(),
        &format!("event-{i}"),
        &format!("{}", 1000 + i),
        0,
    );
    let failure = Failure {
        kind: FailureKind::RetriesExhausted,
        reason: "test".into(),
        status: Some(503),
        attempts: 3,
        first_failed_at: time::OffsetDateTime::UNIX_EPOCH,
        last_failed_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    DeadLetter::from_event(
        Origin::Stream {
            stream_arn: "arn:aws:dynamodb:eu-central-1:1:table/orders/stream/x",
            shard_id: "shard-1",
        },
        "payments.order-changed",
        &event,
        &failure,
    )
}

/// `n` characters of the base64 alphabet, uniformly random (xorshift): gzip cannot shrink their
/// base64 encoding below their own length.
fn incompressible(n: usize, mut seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(ALPHABET[(seed >> 58) as usize])
        })
        .collect()
}

async fn set_max_message_size(moto: &Moto, url: &str, bytes: usize) {
    moto.sqs()
        .await
        .set_queue_attributes()
        .queue_url(url)
        .attributes(QueueAttributeName::MaximumMessageSize, bytes.to_string())
        .send()
        .await
        .expect("setting MaximumMessageSize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_too_large_for_the_queue_goes_once_its_limit_is_raised_without_a_restart() {
    let moto = Moto::start("dlq_too_large_then_raised").await;
    let (url, dlq) = dlq_on(&moto, "small-dlq", &[("MaximumMessageSize", "1024")]).await;
    // Shared with every shard's delivery: a clone made now sees the limit read later.
    let shard_copy = dlq.clone();
    assert_eq!(dlq.max_bytes(), 1024);
    let letter = letter_with(7, &incompressible(6000, 0x9e37_79b9_7f4a_7c15));
    assert!(
        encode_gzip(&letter.body).len() > 6000,
        "the test letter compresses"
    );

    let err = dlq.send(std::slice::from_ref(&letter)).await.unwrap_err();
    assert!(matches!(err, DlqError::TooLarge { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        letter.eid.as_deref().unwrap(),
        "shard shard-1",
        "sequence number 1007",
        "MaximumMessageSize of 1024 bytes",
        "raise the queue's MaximumMessageSize to at least",
        url.as_str(),
    ] {
        assert!(text.contains(part), "{part:?} not in: {text}");
    }
    assert_eq!(queue_depth(&moto, &url).await, 0);

    // The operator raises the limit; the same queue value (no restart) takes the letter.
    set_max_message_size(&moto, &url, 1_048_576).await;
    dlq.send(std::slice::from_ref(&letter)).await.unwrap();
    assert_eq!(shard_copy.max_bytes(), 1_048_576);
    let out = moto
        .sqs()
        .await
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let [m] = out.messages() else {
        panic!("expected one message: {out:?}")
    };
    // It fits now as it is: plain JSON, no content-encoding.
    assert!(
        !m.message_attributes()
            .unwrap()
            .contains_key("content-encoding")
    );
    assert_eq!(m.body(), Some(letter.body.as_str()));

    // A letter no SQS queue can take says so instead of asking for a raise.
    let huge = letter_with(8, &incompressible(1_100_000, 0x2545_f491_4f6c_dd1d));
    let err = dlq.send(&[huge]).await.unwrap_err().to_string();
    assert!(err.contains("more than any SQS queue takes"), "{err}");
}

/// A re-drain loop for the test event type whose publish retries for up to a minute, with the
/// given visibility timeout.
/// One re-drain round of `dlq` into `nakadi`: (published, failed, undecodable).
async fn one_round(dlq: DeadLetterQueue, nakadi: &Nakadi) -> (u64, u64, u64) {
    let report = redrainer(dlq, nakadi, Duration::from_secs(30))
        .round(&CancellationToken::new())
        .await;
    (report.published, report.failed, report.undecodable)
}

fn redrainer(dlq: DeadLetterQueue, nakadi: &Nakadi, visibility: Duration) -> Redrainer {
    let publisher = Publisher::new(PublisherConfig {
        base_url: nakadi.url.clone(),
        event_type: "payments.order-changed".into(),
        token: TokenSource::None,
        batch_size: 100,
        batch_bytes: 1_000_000,
        gzip_min_bytes: 1_000_000,
        request_timeout: Duration::from_secs(10),
        max_attempts: 10,
        max_retry_time: Duration::from_secs(60),
        on_failure: FailureMode::DeadLetter,
    })
    .unwrap();
    Redrainer {
        dlq,
        publishers: HashMap::from([("payments.order-changed".to_string(), publisher)]),
        interval: Duration::from_secs(1),
        rate: 1000,
        visibility,
    }
}

/// A receiver that leaves what it gets visible (timeout 0): how many messages are visible.
async fn visible_messages(sqs: &aws_sdk_sqs::Client, url: &str) -> usize {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap()
        .messages()
        .len()
}

/// Messages received and not yet visible again (ApproximateNumberOfMessagesNotVisible).
async fn in_flight(moto: &Moto, url: &str) -> usize {
    let out = moto
        .sqs()
        .await
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrain_keeps_messages_invisible_while_a_slow_publish_retries_then_deletes_them() {
    let test = "dlq_redrain_visibility";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let (url, dlq) = dlq_on(&moto, "relay-dlq", &[]).await;
    let letters: Vec<DeadLetter> = (0..5).map(|i| letter_with(i, "x")).collect();
    dlq.send(&letters).await.unwrap();

    let probe = moto.sqs().await;
    assert_eq!(
        visible_messages(&probe, &url).await,
        5,
        "the probe sees visible messages"
    );

    // Each request answers 503 after 2 s, three times: the publish takes over 6 s, twice the
    // visibility timeout of 3 s.
    nakadi
        .fault(json!({"status": 503, "latency_ms": 2000, "times": 3}))
        .await;
    let visibility = Duration::from_secs(3);
    let redrainer = redrainer(dlq, &nakadi, visibility);
    let started = std::time::Instant::now();
    let round = tokio::spawn(async move {
        let report = redrainer.round(&CancellationToken::new()).await;
        (report, started.elapsed())
    });
    wait_for(
        "the re-drain to receive the messages",
        Duration::from_secs(30),
        || async { (in_flight(&moto, &url).await == 5).then_some(()) },
    )
    .await;
    // From then until the round is over, the probe must never see the messages.
    let deadline = started + Duration::from_secs(60);
    let mut seen = 0;
    while !round.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the re-drain round did not end within 60 s"
        );
        seen += visible_messages(&probe, &url).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (report, took) = round.await.unwrap();
    assert_eq!(
        seen, 0,
        "other receivers got messages whose publish was in flight"
    );
    assert!(took > visibility * 2, "the publish was not slow: {took:?}");
    assert_eq!(
        (report.published, report.failed, report.undecodable),
        (5, 0, 0)
    );
    assert_eq!(queue_depth(&moto, &url).await, 0, "delivered, not deleted");
    let got: Vec<String> = eids(&nakadi.events().await);
    let want: Vec<String> = letters.iter().map(|l| l.eid.clone().unwrap()).collect();
    assert_eq!(got, want, "each published once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_visibility_extension_is_counted_and_the_publish_goes_on() {
    let test = "dlq_redrain_extension_fails";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let (url, dlq) = dlq_on(&moto, "relay-dlq", &[]).await;
    let letters: Vec<DeadLetter> = (0..2).map(|i| letter_with(i, "x")).collect();
    dlq.send(&letters).await.unwrap();
    let series =
        "relay_aws_errors_total{kind=\"other\",operation=\"ChangeMessageVisibilityBatch\"}";
    let errors = || {
        let text = dynamodb_nakadi_relay::metrics::render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = errors();

    nakadi
        .fault(json!({"status": 503, "latency_ms": 2000, "times": 2}))
        .await;
    let redrainer = redrainer(dlq, &nakadi, Duration::from_secs(3));
    let round = tokio::spawn(async move { redrainer.round(&CancellationToken::new()).await });
    let sqs = moto.sqs().await;
    wait_for(
        "the re-drain to receive the messages",
        Duration::from_secs(30),
        || async { (in_flight(&moto, &url).await == 2).then_some(()) },
    )
    .await;
    // Their receipt handles become invalid: every extension fails.
    sqs.purge_queue().queue_url(&url).send().await.unwrap();
    let report = round.await.unwrap();
    assert_eq!(report.published, 2, "the publish went on: {report:?}");
    assert!(errors() > before, "the failed extension was not counted");
}

const BUCKET: &str = "relay-dead-letters";

/// The one message of the queue, received with its attributes and left visible.
async fn the_message(moto: &Moto, url: &str) -> aws_sdk_sqs::types::Message {
    let out = moto
        .sqs()
        .await
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let [m] = out.messages() else {
        panic!("expected one message: {out:?}")
    };
    m.clone()
}

/// The checks of an SQS Extended Client pointer message to `letter`: the body exactly the
/// library's format, `ExtendedPayloadSize` the letter's size, the letter's own attributes kept,
/// the object the plain letter, under `dead-letters/<event type>/<eid>/`. Returns the key.
async fn assert_pointer_to(
    moto: &Moto,
    m: &aws_sdk_sqs::types::Message,
    letter: &DeadLetter,
) -> String {
    let body = m.body().unwrap();
    let key = body
        .strip_prefix(&format!(
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{{"s3BucketName":"{BUCKET}","s3Key":""#
        ))
        .and_then(|rest| rest.strip_suffix(r#""}]"#))
        .unwrap_or_else(|| panic!("not the Extended Client pointer: {body}"))
        .to_owned();
    let eid = letter.eid.as_deref().unwrap();
    assert!(
        key.starts_with(&format!("dead-letters/payments.order-changed/{eid}/"))
            && key.ends_with(".json"),
        "{key}"
    );
    let attributes = m.message_attributes().unwrap();
    let size = &attributes[EXTENDED_PAYLOAD_SIZE];
    assert_eq!(size.data_type(), "Number");
    assert_eq!(
        size.string_value(),
        Some(letter.body.len().to_string().as_str())
    );
    assert_eq!(
        attributes["event_type"].string_value(),
        Some("payments.order-changed")
    );
    assert_eq!(attributes["reason"].string_value(), Some(letter.reason));
    assert_eq!(attributes["eid"].string_value(), Some(eid));
    assert!(!attributes.contains_key("content-encoding"));
    assert_eq!(
        moto.object(BUCKET, &key).await.as_deref(),
        Some(letter.body.as_str()),
        "the object is the letter, plain"
    );
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_too_large_even_gzipped_goes_to_s3_and_the_queue_gets_the_extended_client_pointer()
{
    let moto = Moto::start("dlq_s3_offload").await;
    moto.create_bucket(BUCKET).await;
    let (url, dlq) = dlq_on(&moto, "small-dlq", &[("MaximumMessageSize", "1024")]).await;
    let dlq = dlq.with_s3(moto.s3().await, Some(BUCKET.into()));
    let letter = letter_with(7, &incompressible(6000, 0x9e37_79b9_7f4a_7c15));
    assert!(
        encode_gzip(&letter.body).len() > 6000,
        "the test letter compresses"
    );

    dlq.send(std::slice::from_ref(&letter)).await.unwrap();

    assert_eq!(dlq.max_bytes(), 1024, "the limit is what it was");
    let m = the_message(&moto, &url).await;
    let key = assert_pointer_to(&moto, &m, &letter).await;
    assert_eq!(moto.object_keys(BUCKET).await, vec![key.clone()]);
    // What a consumer of the format reads from the body.
    assert_eq!(
        S3Pointer::from_body(m.body().unwrap()),
        Some(Ok(S3Pointer {
            bucket: BUCKET.into(),
            key
        }))
    );

    // The same letter sent again (a retried send) gets an object of its own.
    dlq.send(std::slice::from_ref(&letter)).await.unwrap();
    assert_eq!(moto.object_keys(BUCKET).await.len(), 2);
}

/// moto with a bucket and a dead-letter queue of `max_message_size` bytes whose letters too
/// large for it go to the bucket, and a Nakadi test server.
async fn with_bucket(
    test: &str,
    max_message_size: &str,
) -> (Moto, Nakadi, String, DeadLetterQueue) {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    moto.create_bucket(BUCKET).await;
    let (url, dlq) = dlq_on(
        &moto,
        "relay-dlq",
        &[("MaximumMessageSize", max_message_size)],
    )
    .await;
    let dlq = dlq.with_s3(moto.s3().await, Some(BUCKET.into()));
    (moto, nakadi, url, dlq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrain_publishes_a_letter_from_s3_then_deletes_its_message_and_then_its_object() {
    let test = "dlq_s3_redrain";
    // Room for a small letter as it is; the large one does not fit even gzip-compressed.
    let (moto, nakadi, url, dlq) = with_bucket(test, "4096").await;
    let payload = incompressible(6000, 0x2545_f491_4f6c_dd1d);
    let letters = vec![letter_with(1, "small"), letter_with(2, &payload)];
    dlq.send(&letters).await.unwrap();
    assert_eq!(queue_depth(&moto, &url).await, 2);
    let [key] = &moto.object_keys(BUCKET).await[..] else {
        panic!("expected one object")
    };
    assert!(key.contains(letters[1].eid.as_deref().unwrap()), "{key}");

    assert_eq!(one_round(dlq, &nakadi).await, (2, 0, 0));
    let events = nakadi.events().await;
    let want: Vec<String> = letters.iter().map(|l| l.eid.clone().unwrap()).collect();
    assert_eq!(eids(&events), want);
    let large = &events[1];
    assert_eq!(large["data"]["item"]["payload"], payload.as_str());
    assert_eq!(
        queue_depth(&moto, &url).await,
        0,
        "the messages are deleted"
    );
    assert!(
        moto.object_keys(BUCKET).await.is_empty(),
        "the object is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pointer_whose_message_could_not_be_deleted_keeps_its_object() {
    let test = "dlq_s3_message_kept";
    let (moto, nakadi, url, dlq) = with_bucket(test, "1024").await;
    let letter = letter_with(3, &incompressible(3000, 0x1234_5678_9abc_def1));
    dlq.send(std::slice::from_ref(&letter)).await.unwrap();
    let keys = moto.object_keys(BUCKET).await;
    assert_eq!(keys.len(), 1);

    // A slow publish (two 503s after 2 s each), during which the queue is purged: the receipt
    // handle becomes invalid, so the message cannot be deleted once Nakadi took the event.
    nakadi
        .fault(json!({"status": 503, "latency_ms": 2000, "times": 2}))
        .await;
    let redrainer = redrainer(dlq, &nakadi, Duration::from_secs(30));
    let round = tokio::spawn(async move { redrainer.round(&CancellationToken::new()).await });
    wait_for(
        "the re-drain to receive the message",
        Duration::from_secs(30),
        || async { (in_flight(&moto, &url).await == 1).then_some(()) },
    )
    .await;
    moto.sqs()
        .await
        .purge_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    let report = round.await.unwrap();

    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(
        eids(&nakadi.events().await),
        vec![letter.eid.clone().unwrap()]
    );
    // Deleting the object of a message that may come back would lose its letter.
    assert_eq!(moto.object_keys(BUCKET).await, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pointer_whose_object_is_gone_stays_in_the_queue_to_be_parked() {
    let test = "dlq_s3_object_gone";
    let (moto, nakadi, url, dlq) = with_bucket(test, "1024").await;
    let letter = letter_with(4, &incompressible(3000, 0x0f0f_1234_5678_9abc));
    dlq.send(std::slice::from_ref(&letter)).await.unwrap();
    let [key] = &moto.object_keys(BUCKET).await[..] else {
        panic!("expected one object")
    };
    moto.s3()
        .await
        .delete_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();

    assert_eq!(one_round(dlq, &nakadi).await, (0, 0, 1));
    assert!(nakadi.events().await.is_empty());
    assert_eq!(
        queue_depth(&moto, &url).await,
        1,
        "the message stays for the redrive policy"
    );
}

/// The wiring end to end: RELAY_DLQ_S3_BUCKET → the relay's S3 client → the pointer in the
/// queue → the re-drain loop reads it back, publishes, and cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_puts_a_letter_too_large_for_its_queue_to_s3_and_redrains_it() {
    let test = "dlq_s3_relay";
    let t = setup(test, &[("MaximumMessageSize", "1024")]).await;
    t.moto.create_bucket(BUCKET).await;
    let mut env = t.env.clone();
    env.insert("RELAY_DLQ_S3_BUCKET".into(), BUCKET.into());
    t.nakadi.fault(json!({"status": 503})).await;
    let blob = incompressible(5000, 0x5555_1234_aaaa_0001);
    put(&t.moto, 0..1, &[("blob", AttributeValue::S(blob.clone()))]).await;
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    wait_dead_lettered_and_checkpointed(&t, 1).await;
    let [key] = &t.moto.object_keys(BUCKET).await[..] else {
        panic!("expected one object")
    };
    let letter: Value = serde_json::from_str(&t.moto.object(BUCKET, key).await.unwrap()).unwrap();
    assert_eq!(letter["event"]["data"]["item"]["blob"], blob.as_str());
    assert!(t.nakadi.events().await.is_empty());

    t.nakadi.clear_faults().await;
    let events = wait_for("the re-drained event", Duration::from_secs(60), || async {
        let events = t.nakadi.events().await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0]["data"]["item"]["blob"], blob.as_str());
    assert_eq!(
        eids(&events),
        expected_eids(&t).await.into_iter().collect::<Vec<_>>()
    );
    wait_for(
        "the message and then the object deleted",
        Duration::from_secs(30),
        || async {
            (queue_depth(&t.moto, &t.dlq).await == 0 && t.moto.object_keys(BUCKET).await.is_empty())
                .then_some(())
        },
    )
    .await;
    drop(relay);
}

/// Messages a pod received and hid count in the DLQ's depth (`state="in_flight"`): they are no
/// less in the queue than visible ones, only for a while out of sight. A message parked by the
/// DLQ's redrive policy counts in `relay_parking_depth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_depth_counts_messages_in_flight_and_the_parking_depth_parked_ones() {
    let test = "dlq_depth_in_flight_parked";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let stream_arn = moto.create_table("orders").await;
    let parking = moto.create_queue("relay-parking", &[]).await;
    let policy = json!({
        "deadLetterTargetArn": moto.queue_arn(&parking).await,
        "maxReceiveCount": "10",
    })
    .to_string();
    let dlq = moto
        .create_queue("relay-dlq", &[("RedrivePolicy", policy.as_str())])
        .await;
    let sqs = moto.sqs().await;
    for (url, body) in [(&dlq, "in flight"), (&parking, "parked")] {
        sqs.send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    // Received and hidden for an hour, as the re-drain loop hides a letter that keeps failing.
    let received = sqs
        .receive_message()
        .queue_url(&dlq)
        .visibility_timeout(3600)
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages().len(), 1);

    let env = base_env(&moto, &nakadi, &stream_arn, "relay-leases", &dlq);
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    let m = wait_for(
        "the DLQ's and the parking queue's depth sampled",
        Duration::from_secs(30),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            (metric(&m, "relay_dlq_depth{state=\"in_flight\"}") >= 1.0
                && metric(&m, "relay_parking_depth") >= 1.0)
                .then_some(m)
        },
    )
    .await;
    assert_eq!(metric(&m, "relay_dlq_depth{state=\"in_flight\"}"), 1.0);
    assert_eq!(metric(&m, "relay_dlq_depth{state=\"visible\"}"), 0.0);
    assert_eq!(metric(&m, "relay_parking_depth"), 1.0);
    for operation in ["GetQueueUrl", "GetQueueAttributes"] {
        assert_eq!(
            metric(
                &m,
                &format!("relay_aws_errors_total{{kind=\"other\",operation=\"{operation}\"}}")
            ),
            0.0,
            "{operation} failed: {}",
            relay.logs()
        );
    }
}

/// `relay_event_delay_seconds` holds the events the shard workers published from the stream,
/// and not those the re-drain loop published from the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_delay_counts_live_events_and_not_re_drained_ones() {
    let test = "dlq_event_delay";
    let t = setup(test, &[]).await;
    put(&t.moto, 0..5, &[]).await;
    let records = stream_records(&t.moto, &t.stream_arn).await;
    let rejected = eid_for(&records[2].0).to_string();
    t.nakadi.fault(json!({"reject_eids": [rejected]})).await;
    let relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    wait_dead_lettered_and_checkpointed(&t, 1).await;
    t.nakadi.clear_faults().await;
    wait_for(
        "the rejected event re-drained",
        Duration::from_secs(60),
        || async {
            let published = eids(&t.nakadi.events().await).contains(&rejected);
            (published && queue_depth(&t.moto, &t.dlq).await == 0).then_some(())
        },
    )
    .await;
    let (_, m) = relay.get("/metrics").await.unwrap();
    let series = |name: &str| metric(&m, &format!("{name}{{table=\"orders\"}}"));
    assert_eq!(
        metric(&m, "relay_dlq_redrained_total{outcome=\"published\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_events_published_total{event_type=\"payments.order-changed\",outcome=\"delivered\",table=\"orders\"}"
        ),
        4.0
    );
    assert_eq!(series("relay_event_delay_seconds_count"), 4.0, "{m}");
    // Written moments before the relay read them: within the first buckets, not the last.
    assert!(series("relay_event_delay_seconds_sum") / 4.0 < 60.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "relay_event_delay_seconds_bucket{table=\"orders\",le=\"3600\"}"
        ),
        4.0
    );
}

/// `skip` in `block` mode: a record Nakadi always refuses, in the middle of a page, holds its
/// shard until an operator skips it; then its event goes to the DLQ, the records after it are
/// published, and the lease's audit trail says who asked and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_unblocks_a_shard_in_block_mode_and_dead_letters_the_record() {
    let test = "dlq_skip_in_block_mode";
    let t = setup(test, &[]).await;
    let mut env = t.env.clone();
    env.insert("RELAY_ON_PUBLISH_FAILURE".into(), "block".into());
    env.insert("RELAY_DLQ_REDRAIN_INTERVAL".into(), "1h".into());
    // Written before the relay starts, so the first page holds all ten.
    put(&t.moto, 0..10, &[]).await;
    let records = stream_records(&t.moto, &t.stream_arn).await;
    let (poison_event, poison_seq) = records[4].clone();
    let poison = eid_for(&poison_event).to_string();
    t.nakadi.fault(json!({"reject_eids": [poison]})).await;
    let relay = Relay::start(test, "relay-1", &env);
    relay.wait_ready().await;
    wait_for(
        "the page refused again and again",
        Duration::from_secs(30),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            let retries = metric(&m, "relay_publish_retries_total{reason=\"rejected\"}");
            (retries >= 3.0).then_some(())
        },
    )
    .await;
    assert!(
        t.nakadi.events().await.is_empty(),
        "block mode published past the poison record"
    );
    let shard = {
        let (code, out, err) = run_binary(&["leases", "--json"], &t.env);
        assert_eq!(code, Some(0), "{out}{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["shards"][0]["state"], "owned", "{report}");
        assert_eq!(
            report["shards"][0]["checkpoint"], "TRIM_HORIZON",
            "{report}"
        );
        report["shards"][0]["shard_id"].as_str().unwrap().to_owned()
    };

    // Bad input changes nothing: an unknown shard is bad usage, a number the shard does not
    // hold is refused naming the checkpoint, and a dry run only says what it would do.
    let skip = |shard: &str, seq: &str, extra: &[&str]| {
        let mut args = vec!["skip", "--shard", shard, "--sequence-number", seq];
        args.extend(["--reason", "INC-42: Nakadi refuses the amount"]);
        args.extend(extra);
        run_binary(&args, &t.env)
    };
    let (code, _, err) = skip("shardId-unknown", &poison_seq, &[]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = skip(&shard, "1", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("TRIM_HORIZON"), "{err}");
    let (code, out, err) = skip(&shard, &poison_seq, &["--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("would skip"), "{out}");
    assert!(t.nakadi.events().await.is_empty());

    let (code, out, err) = skip(&shard, &poison_seq, &["--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["sequence_number"], poison_seq.as_str());
    wait_published_and_checkpointed(&t, 9, &records.last().unwrap().1).await;
    let published = eids(&t.nakadi.events().await);
    assert!(!published.contains(&poison));
    let order: Vec<u64> = t
        .nakadi
        .events()
        .await
        .iter()
        .map(|e| e["data"]["item"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 5, 6, 7, 8, 9], "stream order");
    let msgs = received(&t).await;
    assert_eq!(msgs.len(), 1);
    let body: Value = serde_json::from_str(msgs[0].body().unwrap()).unwrap();
    assert_eq!(body["event"]["metadata"]["eid"], poison.as_str());
    assert_eq!(body["source"]["sequence_number"], poison_seq.as_str());
    assert_eq!(
        msgs[0].message_attributes().unwrap()["reason"].string_value(),
        Some("skipped")
    );

    // The audit trail: on the lease, in `leases`, and in the log of the pod that acted on it.
    let (code, out, err) = run_binary(&["leases", "--json"], &t.env);
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let row = &report["shards"][0];
    assert_eq!(row["skip_sequence_numbers"], json!([poison_seq]));
    let audit = row["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 1, "{row}");
    assert_eq!(audit[0]["action"], "skip");
    assert_eq!(audit[0]["reason"], "INC-42: Nakadi refuses the amount");
    assert!(
        audit[0]["by"].as_str().unwrap().starts_with("arn:aws"),
        "{row}"
    );
    assert!(
        relay
            .logs()
            .contains("reading the shard as an operator asked")
    );
    // The record is passed now: a second skip is refused.
    let (code, _, err) = skip(&shard, &poison_seq, &[]);
    assert_eq!(code, Some(1), "{err}");
    drop(relay);
}

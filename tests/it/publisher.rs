//! The Nakadi publisher over real HTTP against the Nakadi test server
//! (`tests/servers/nakadi_server.py`), one test per Nakadi row of DESIGN.md's failure table.
//!
//! Every test checks what the server finally holds, not only what `publish` returned: an event
//! Nakadi accepted is never sent again, and no event is lost (each one is either at the server
//! exactly once or came back as `Failed`). The one allowed exception is an answer the relay never
//! saw (a timeout after the server stored the batch): then the same eid, byte for byte, arrives
//! twice, which is the at-least-once promise.
//!
//! Each test starts its own server on port 0, so they run in parallel without sharing state.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamodb_nakadi_relay::nakadi::{
    FailureKind, FailureMode, Gate, Halt, Outcome, PublishContext, Publisher, PublisherConfig,
    TokenSource,
};
use dynamodb_nakadi_relay::transform::Event;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const EVENT_TYPE: &str = "payments.order-changed";

/// The Nakadi test server as a child process, killed when dropped.
struct NakadiServer {
    _child: Child,
    base_url: String,
    http: reqwest::Client,
}

impl NakadiServer {
    async fn start(token: Option<&str>) -> NakadiServer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        let script = root.join("tests/servers/nakadi_server.py");
        assert!(
            python.is_file(),
            "{} is missing: these tests need the project's Python environment; run `make test` \
             (it creates .venv with the pinned requirements) instead of skipping them",
            python.display()
        );
        assert!(script.is_file(), "{} is missing", script.display());
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the Nakadi test server did not say LISTENING within 30 s")
            .expect("reading the server's stdout")
            .expect("the Nakadi test server exited before listening (see its stderr above)");
        let port: u16 = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the server: {first:?}"));
        NakadiServer {
            _child: child,
            base_url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("control API reachable");
        let status = response.status();
        let text = response.text().await.expect("control API body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).expect("control API answers JSON")
    }

    async fn faults(&self, rules: Value) {
        self.control(reqwest::Method::POST, "/_test/faults", Some(rules))
            .await;
    }

    async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "/_test/faults", None)
            .await;
    }

    async fn set_token(&self, token: &str) {
        self.control(
            reqwest::Method::POST,
            "/_test/token",
            Some(json!({ "token": token })),
        )
        .await;
    }

    /// The events the server stored, as the exact text it received, in arrival order.
    async fn events(&self) -> Vec<String> {
        // Fetched as text and split with RawValue so the bytes are compared as they were sent.
        let url = format!("{}/_test/events", self.base_url);
        let text = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        #[derive(serde::Deserialize)]
        struct Stored<'a> {
            #[serde(borrow)]
            events: Vec<&'a serde_json::value::RawValue>,
        }
        let stored: Stored<'_> = serde_json::from_str(&text).unwrap();
        stored.events.iter().map(|e| e.get().to_owned()).collect()
    }

    async fn requests(&self) -> Vec<Value> {
        let v = self
            .control(reqwest::Method::GET, "/_test/requests", None)
            .await;
        v.as_array().unwrap().clone()
    }

    fn config(&self) -> PublisherConfig {
        PublisherConfig {
            base_url: self.base_url.clone(),
            event_type: EVENT_TYPE.into(),
            token: TokenSource::None,
            batch_size: 10,
            batch_bytes: 1 << 20,
            gzip_min_bytes: 16 << 10,
            request_timeout: Duration::from_secs(5),
            max_attempts: 8,
            max_retry_time: Duration::from_secs(30),
            on_failure: FailureMode::DeadLetter,
        }
    }
}

/// Polls `check` until it yields a value, failing the test at the deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let eid = Uuid::new_v4();
            let body = format!(
                r#"{{"metadata":{{"eid":"{eid}","occurred_at":"2026-11-22T06:16:10.123Z"}},"data_op":"U","data_type":"payments:order","data":{{"item":{{"id":"order-{i}","amount":12.50,"big":123456789012345678901234567890123456.78}},"patch":[{{"op":"replace","path":"/amount","value":12.50}}]}}}}"#
            );
            Event::new(
                eid,
                body.as_bytes(),
                &format!("record-{i}"),
                &format!("{:021}", 4_000_000 + i),
                1_700_000_000_000,
            )
        })
        .collect()
}

fn ctx() -> PublishContext<'static> {
    PublishContext {
        shard_id: "shardId-00000001700000000000-abcdef01",
    }
}

async fn publish(p: &Publisher, events: &[Event]) -> Vec<Outcome> {
    let never = CancellationToken::new();
    let gate = Gate {
        deadline: &never,
        fence: None,
    };
    p.publish(events, &ctx(), &gate).await
}

fn eid_of(raw: &str) -> Uuid {
    let v: Value = serde_json::from_str(raw).unwrap();
    v["metadata"]["eid"].as_str().unwrap().parse().unwrap()
}

/// The delivery contract: a delivered event is at the server exactly once, byte for byte; a
/// failed one is not there at all; nothing else is there.
async fn assert_exactly_once_or_failed(
    server: &NakadiServer,
    events: &[Event],
    outcomes: &[Outcome],
) {
    assert_eq!(outcomes.len(), events.len(), "one outcome per event");
    let stored = server.events().await;
    let mut copies: HashMap<Uuid, Vec<&str>> = HashMap::new();
    for raw in &stored {
        copies.entry(eid_of(raw)).or_default().push(raw);
    }
    for (event, outcome) in events.iter().zip(outcomes) {
        let found = copies.remove(&event.eid).unwrap_or_default();
        match outcome {
            Outcome::Delivered => {
                assert_eq!(
                    found.len(),
                    1,
                    "delivered event {} stored {} times",
                    event.eid,
                    found.len()
                );
                assert_eq!(
                    found[0].as_bytes(),
                    event.body(),
                    "stored bytes differ from the event"
                );
            }
            Outcome::Failed(f) => {
                assert!(
                    found.is_empty(),
                    "failed event {} ({f:?}) is at the server",
                    event.eid
                );
            }
            Outcome::NotSent(halt) => panic!("no gate closes in these tests: {halt:?}"),
        }
    }
    assert!(
        copies.is_empty(),
        "the server holds events nobody sent: {copies:?}"
    );
}

fn failures(outcomes: &[Outcome]) -> Vec<&dynamodb_nakadi_relay::nakadi::Failure> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn statuses(requests: &[Value]) -> Vec<Option<u64>> {
    requests.iter().map(|r| r["status"].as_u64()).collect()
}

fn request_eids(request: &Value) -> Vec<Uuid> {
    request["eids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn status_200_delivers_every_event_once_in_order_with_a_flow_id_per_request() {
    let server = NakadiServer::start(None).await;
    let p = Publisher::new(server.config()).unwrap();
    let evs = events(25);
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;

    let stored: Vec<Uuid> = server.events().await.iter().map(|e| eid_of(e)).collect();
    assert_eq!(
        stored,
        evs.iter().map(|e| e.eid).collect::<Vec<_>>(),
        "stream order"
    );
    let requests = server.requests().await;
    assert_eq!(requests.len(), 3, "25 events in batches of 10");
    let flows: std::collections::HashSet<&str> = requests
        .iter()
        .map(|r| r["flow_id"].as_str().unwrap())
        .collect();
    assert_eq!(flows.len(), 3);
    assert!(flows.iter().all(|f| Uuid::parse_str(f).is_ok()));
    assert!(requests.iter().all(|r| r["gzip"] == false));

    // Above the threshold the body goes gzipped, and Nakadi still gets the same bytes.
    let gz = Publisher::new(PublisherConfig {
        gzip_min_bytes: 1,
        ..server.config()
    })
    .unwrap();
    let more = events(5);
    let out2 = publish(&gz, &more).await;
    let all: Vec<Event> = evs.iter().chain(&more).cloned().collect();
    let outcomes: Vec<Outcome> = out.into_iter().chain(out2).collect();
    assert_exactly_once_or_failed(&server, &all, &outcomes).await;
    assert_eq!(server.requests().await.last().unwrap()["gzip"], true);
}

#[tokio::test]
async fn status_207_resends_only_the_items_not_submitted() {
    let server = NakadiServer::start(None).await;
    server
        .faults(json!({"partial": {"fail_every": 2}, "times": 1}))
        .await;
    let p = Publisher::new(server.config()).unwrap();
    let evs = events(6);
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    let requests = server.requests().await;
    assert_eq!(statuses(&requests), vec![Some(207), Some(200)]);
    assert_eq!(
        request_eids(&requests[1]),
        vec![evs[0].eid, evs[2].eid, evs[4].eid],
        "only the failed items again, same eids"
    );
}

#[tokio::test]
async fn status_422_items_rejects_the_failed_and_resends_the_aborted() {
    let server = NakadiServer::start(None).await;
    let mut evs = events(6);
    server
        .faults(json!({"reject_eids": [evs[1].eid.to_string(), evs[4].eid.to_string()]}))
        .await;
    // And one event that fails the server's real schema check.
    let invalid = Uuid::new_v4();
    let body = format!(
        r#"{{"metadata":{{"eid":"{invalid}","occurred_at":"2026-11-22T06:16:10Z"}},"data_op":"X","data_type":"t","data":{{"item":{{}},"patch":[]}}}}"#
    );
    evs[2] = Event::new(
        invalid,
        body.as_bytes(),
        evs[2].event_id(),
        evs[2].sequence_number(),
        evs[2].created_at_ms,
    );
    let p = Publisher::new(server.config()).unwrap();
    let out = publish(&p, &evs).await;
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    for (i, o) in out.iter().enumerate() {
        match i {
            1 | 4 => {
                let Outcome::Failed(f) = o else {
                    panic!("{i}: {o:?}")
                };
                assert_eq!(f.kind, FailureKind::Rejected);
                assert_eq!(f.reason, "rejected by test rule");
                assert_eq!(f.status, Some(422));
                assert_eq!(f.attempts, 1);
            }
            2 => {
                let Outcome::Failed(f) = o else {
                    panic!("{i}: {o:?}")
                };
                assert_eq!(f.kind, FailureKind::Rejected);
                assert!(f.reason.contains("schema violation"), "{}", f.reason);
            }
            _ => assert_eq!(*o, Outcome::Delivered, "{i}"),
        }
    }
    let requests = server.requests().await;
    assert_eq!(statuses(&requests), vec![Some(422), Some(200)]);
    assert_eq!(
        request_eids(&requests[1]),
        vec![evs[0].eid, evs[3].eid, evs[5].eid]
    );
}

/// A whole-request rejection: one request, no retry, every event back as `Rejected` with the
/// Problem's title and detail, nothing stored.
async fn rejected_whole_request(status: u16, title: &str) {
    let server = NakadiServer::start(None).await;
    server.faults(json!({ "status": status })).await;
    let p = Publisher::new(server.config()).unwrap();
    let evs = events(4);
    let out = publish(&p, &evs).await;
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    let failed = failures(&out);
    assert_eq!(failed.len(), 4);
    for f in failed {
        assert_eq!(f.kind, FailureKind::Rejected);
        assert_eq!(f.status, Some(status));
        assert_eq!(f.reason, format!("{title}: injected by a test fault rule"));
        assert_eq!(f.attempts, 1);
    }
    assert_eq!(
        statuses(&server.requests().await),
        vec![Some(status as u64)]
    );
}

#[tokio::test]
async fn status_422_problem_is_rejected_without_retry() {
    rejected_whole_request(422, "Unprocessable Entity").await;
}

#[tokio::test]
async fn status_400_is_rejected_without_retry() {
    rejected_whole_request(400, "Bad Request").await;
}

#[tokio::test]
async fn status_403_is_rejected_without_retry() {
    rejected_whole_request(403, "Forbidden").await;
}

#[tokio::test]
async fn status_404_is_rejected_without_retry() {
    rejected_whole_request(404, "Not Found").await;
}

fn write_token(path: &Path, token: &str) {
    // Replaced, not rewritten: a new file renamed over the old one, as a secret rotation does.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn status_401_rereads_the_token_and_succeeds_once_it_is_fixed() {
    let server = NakadiServer::start(Some("good-token-1")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nakadi-token");
    write_token(&path, "stale-token-0");
    let p = Publisher::new(PublisherConfig {
        token: TokenSource::File(path.clone()),
        max_attempts: 1000,
        max_retry_time: Duration::from_secs(60),
        ..server.config()
    })
    .unwrap();
    let evs = events(3);
    let task = {
        let (p, evs) = (p.clone(), evs.clone());
        tokio::spawn(async move { publish(&p, &evs).await })
    };
    eventually("a 401 at the server", || async {
        statuses(&server.requests().await)
            .contains(&Some(401))
            .then_some(())
    })
    .await;
    write_token(&path, "good-token-1");
    let out = task.await.unwrap();
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    let requests = server.requests().await;
    let last = requests.last().unwrap();
    assert_eq!(last["authorization"], "ok");
    assert!(
        requests[..requests.len() - 1]
            .iter()
            .all(|r| r["status"] == 401)
    );

    // A token that stays wrong ends like any other lasting failure.
    let stuck = Publisher::new(PublisherConfig {
        token: TokenSource::File(path.clone()),
        max_attempts: 3,
        ..server.config()
    })
    .unwrap();
    server.set_token("another-token-2").await;
    let more = events(2);
    let out = publish(&stuck, &more).await;
    for f in failures(&out) {
        assert_eq!(f.kind, FailureKind::RetriesExhausted);
        assert_eq!(f.status, Some(401));
        assert_eq!(f.attempts, 3);
    }
    assert_eq!(failures(&out).len(), 2);
}

#[tokio::test]
async fn status_429_waits_at_least_retry_after() {
    let server = NakadiServer::start(None).await;
    server
        .faults(json!({"status": 429, "times": 1, "retry_after": "1"}))
        .await;
    let p = Publisher::new(server.config()).unwrap();
    let evs = events(3);
    let start = Instant::now();
    let out = publish(&p, &evs).await;
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    assert_eq!(
        statuses(&server.requests().await),
        vec![Some(429), Some(200)]
    );
}

#[tokio::test]
async fn status_503_is_retried_until_nakadi_recovers() {
    let server = NakadiServer::start(None).await;
    server.faults(json!({"status": 503, "times": 3})).await;
    let p = Publisher::new(server.config()).unwrap();
    let evs = events(3);
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    assert_eq!(
        statuses(&server.requests().await),
        vec![Some(503), Some(503), Some(503), Some(200)]
    );
}

#[tokio::test]
async fn status_5xx_that_lasts_exhausts_the_retries() {
    let server = NakadiServer::start(None).await;
    server.faults(json!({"status": 500})).await;
    let p = Publisher::new(PublisherConfig {
        max_attempts: 3,
        ..server.config()
    })
    .unwrap();
    let evs = events(3);
    let out = publish(&p, &evs).await;
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    let failed = failures(&out);
    assert_eq!(failed.len(), 3);
    for f in failed {
        assert_eq!(f.kind, FailureKind::RetriesExhausted);
        assert_eq!(f.status, Some(500));
        assert_eq!(f.attempts, 3);
        assert!(f.first_failed_at < f.last_failed_at);
    }
    assert_eq!(server.requests().await.len(), 3);
}

#[tokio::test]
async fn timeout_of_a_failing_request_is_retried_without_duplicates() {
    let server = NakadiServer::start(None).await;
    server
        .faults(json!({"latency_ms": 1500, "status": 503, "times": 1}))
        .await;
    let p = Publisher::new(PublisherConfig {
        request_timeout: Duration::from_millis(500),
        ..server.config()
    })
    .unwrap();
    let evs = events(3);
    let start = Instant::now();
    let out = publish(&p, &evs).await;
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
}

#[tokio::test]
async fn timeout_after_the_server_stored_the_batch_duplicates_with_the_same_eids() {
    let server = NakadiServer::start(None).await;
    server.faults(json!({"latency_ms": 1500, "times": 1})).await;
    let p = Publisher::new(PublisherConfig {
        request_timeout: Duration::from_millis(500),
        ..server.config()
    })
    .unwrap();
    let evs = events(3);
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    // The slow request completes at the server after the relay gave up on it.
    eventually("the slow request to finish", || async {
        statuses(&server.requests().await)
            .iter()
            .all(Option::is_some)
            .then_some(())
    })
    .await;
    let requests = server.requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(request_eids(&requests[0]), request_eids(&requests[1]));
    let stored = server.events().await;
    for e in &evs {
        let copies: Vec<&String> = stored.iter().filter(|s| eid_of(s) == e.eid).collect();
        assert_eq!(copies.len(), 2, "the unanswered request and its retry");
        assert!(copies.iter().all(|c| c.as_bytes() == e.body()));
    }
    assert_eq!(stored.len(), 6);
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let server = NakadiServer::start(None).await;
    server
        .faults(json!({"drop_connection": true, "times": 2}))
        .await;
    let p = Publisher::new(server.config()).unwrap();
    let evs = events(4);
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
    assert_eq!(
        statuses(&server.requests().await),
        vec![None, None, Some(200)]
    );
}

#[tokio::test]
async fn at_the_shutdown_deadline_the_request_in_flight_ends_within_its_timeout_and_no_new_one_is_sent()
 {
    let server = NakadiServer::start(None).await;
    server.faults(json!({"hang": true})).await;
    let timeout = Duration::from_secs(2);
    let p = Publisher::new(PublisherConfig {
        request_timeout: timeout,
        max_retry_time: Duration::from_secs(600),
        ..server.config()
    })
    .unwrap();
    let evs = events(3);
    let abort = CancellationToken::new();
    let task = {
        let (p, evs, abort) = (p.clone(), evs.clone(), abort.clone());
        tokio::spawn(async move {
            let gate = Gate {
                deadline: &abort,
                fence: None,
            };
            p.publish(&evs, &ctx(), &gate).await
        })
    };
    eventually("the request to reach the server", || async {
        (!server.requests().await.is_empty()).then_some(())
    })
    .await;
    let cancelled_at = Instant::now();
    abort.cancel();
    let result = tokio::time::timeout(timeout * 2, task)
        .await
        .expect("publish returns within the request timeout after the deadline")
        .unwrap();
    assert!(
        result
            .iter()
            .all(|o| matches!(o, Outcome::NotSent(Halt::Deadline))),
        "{result:?}"
    );
    assert!(cancelled_at.elapsed() <= timeout + Duration::from_millis(500));
    assert_eq!(
        server.requests().await.len(),
        1,
        "no new request after the deadline"
    );

    // After the restart the same events are published again: nothing was stored before.
    server.clear_faults().await;
    assert!(server.events().await.is_empty());
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
}

#[tokio::test]
async fn a_rotated_token_file_is_used_by_the_next_request() {
    let server = NakadiServer::start(Some("rotation-token-A")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nakadi-token");
    write_token(&path, "rotation-token-A");
    let p = Publisher::new(PublisherConfig {
        token: TokenSource::File(path.clone()),
        ..server.config()
    })
    .unwrap();
    let first = events(2);
    let out1 = publish(&p, &first).await;

    server.set_token("rotation-token-B").await;
    write_token(&path, "rotation-token-B");
    let second = events(2);
    let out2 = publish(&p, &second).await;

    let all: Vec<Event> = first.into_iter().chain(second).collect();
    let outcomes: Vec<Outcome> = out1.into_iter().chain(out2).collect();
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &all, &outcomes).await;
    let requests = server.requests().await;
    assert_eq!(
        statuses(&requests),
        vec![Some(200), Some(200)],
        "no 401 in between"
    );
    assert!(requests.iter().all(|r| r["authorization"] == "ok"));
}

#[tokio::test]
async fn the_credentials_directory_convention_is_read() {
    let server = NakadiServer::start(Some("dir-token-C")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nakadi-token-secret"), "dir-token-C\n").unwrap();
    std::fs::write(dir.path().join("nakadi-token-type"), "Bearer\n").unwrap();
    let p = Publisher::new(PublisherConfig {
        token: TokenSource::CredentialsDir {
            dir: dir.path().to_owned(),
            name: "nakadi".into(),
        },
        ..server.config()
    })
    .unwrap();
    let evs = events(2);
    let out = publish(&p, &evs).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered));
    assert_exactly_once_or_failed(&server, &evs, &out).await;
}

#[tokio::test]
async fn a_missing_token_file_fails_the_start_naming_the_path() {
    let missing = PathBuf::from("/nonexistent/dir/nakadi-token");
    let err = Publisher::new(PublisherConfig {
        token: TokenSource::File(missing.clone()),
        base_url: "http://127.0.0.1:9".into(),
        event_type: EVENT_TYPE.into(),
        batch_size: 1,
        batch_bytes: 1 << 20,
        gzip_min_bytes: 0,
        request_timeout: Duration::from_secs(1),
        max_attempts: 1,
        max_retry_time: Duration::ZERO,
        on_failure: FailureMode::DeadLetter,
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/dir/nakadi-token"),
        "{err}"
    );
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
}

/// Writes a log line into the current thread's capture buffer, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(sink) = &*c.borrow() {
                sink.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures, until dropped, every log line emitted on this thread, at TRACE from every crate.
///
/// The subscriber is the process-wide default, not a thread-scoped one: tracing caches per
/// call site whether anyone listens, and with a single scoped subscriber a call site first hit
/// by another test's thread is cached as "nobody", silently dropping the lines this test looks
/// for.
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    fn start() -> LogCapture {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .json()
                .init();
        });
        let sink = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(sink.clone()));
        LogCapture(sink)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Every log line of a run that reads, uses, rotates and is refused a token, at TRACE and from
/// every crate (reqwest and hyper included), and every `Debug` of the parts: the token is nowhere.
/// Single-threaded runtime, so that every task of the run (hyper's connection tasks too) logs on
/// the capturing thread.
#[tokio::test(flavor = "current_thread")]
async fn the_token_appears_in_no_log_line_and_no_debug_output() {
    let logs = LogCapture::start();

    const FIRST: &str = "s3cr3t-first-7f6e5d";
    const SECOND: &str = "s3cr3t-second-4c3b2a";
    let server = NakadiServer::start(Some(FIRST)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nakadi-token");
    write_token(&path, FIRST);
    let config = PublisherConfig {
        token: TokenSource::File(path.clone()),
        max_attempts: 1000,
        ..server.config()
    };
    let p = Publisher::new(config.clone()).unwrap();
    publish(&p, &events(3)).await;

    // A retry, a rejection and a 401 with re-read, all logged.
    server.faults(json!({"status": 503, "times": 1})).await;
    publish(&p, &events(2)).await;
    server.faults(json!({"status": 403, "times": 1})).await;
    publish(&p, &events(2)).await;
    server.set_token(SECOND).await;
    let task = {
        let p = p.clone();
        tokio::spawn(async move { publish(&p, &events(2)).await })
    };
    eventually("a 401", || async {
        statuses(&server.requests().await)
            .contains(&Some(401))
            .then_some(())
    })
    .await;
    write_token(&path, SECOND);
    let out = task.await.unwrap();
    assert!(out.iter().all(|o| *o == Outcome::Delivered));

    let debug = format!("{p:?} {config:?}");
    let text = logs.text();
    // The capture works: the run's own lines are there.
    assert!(text.contains("publishing failed; retrying"), "{text}");
    assert!(text.contains("Nakadi rejected events"));
    assert!(text.contains("flow_id"));
    assert!(
        text.contains("hyper_util"),
        "other crates' TRACE lines are captured too"
    );
    assert!(text.contains("unauthorized"));
    assert!(text.contains("read a new Nakadi token"));
    for token in [FIRST, SECOND] {
        assert!(!text.contains(token), "token in the logs");
        assert!(!debug.contains(token), "token in Debug: {debug}");
    }
}

//! The retry loop against a scripted Nakadi, in paused tokio time: every delay is exact, so the
//! backoff bounds, the jitter and `Retry-After` can be checked without waiting for them.

use std::collections::VecDeque;
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use flate2::read::GzDecoder;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::fence::Fence;
use crate::nakadi::TokenSource;

/// What the scripted Nakadi does with one request.
enum Reply {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    Hang,
    /// Answers `status` after a while.
    Slow(Duration, u16),
    Fail(TransportError),
}

fn status(status: u16) -> Reply {
    Reply::Status {
        status,
        retry_after: None,
        body: String::new(),
    }
}

fn with_body(status: u16, body: impl Into<String>) -> Reply {
    Reply::Status {
        status,
        retry_after: None,
        body: body.into(),
    }
}

fn retry_after(status: u16, secs: u64) -> Reply {
    Reply::Status {
        status,
        retry_after: Some(Duration::from_secs(secs)),
        body: String::new(),
    }
}

/// A reply built from the eids of the request it answers.
type Step = Box<dyn FnOnce(&[Uuid]) -> Reply + Send>;

/// A request as the scripted Nakadi saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    flow_id: Uuid,
    eids: Vec<Uuid>,
    /// The JSON array, decompressed.
    json: Bytes,
    gzip: bool,
    authorization: Option<String>,
}

#[derive(Default)]
struct Nakadi {
    steps: Mutex<VecDeque<Step>>,
    /// What to do once the script ran out; 200 if unset.
    then: Mutex<Option<Box<dyn Fn() -> Reply + Send>>>,
    seen: Mutex<Vec<Seen>>,
}

impl Nakadi {
    fn script(steps: Vec<Step>) -> Arc<Nakadi> {
        Arc::new(Nakadi {
            steps: Mutex::new(steps.into()),
            ..Nakadi::default()
        })
    }

    fn always(reply: impl Fn() -> Reply + Send + 'static) -> Arc<Nakadi> {
        let n = Nakadi::script(vec![]);
        *n.then.lock().unwrap() = Some(Box::new(reply));
        n
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

struct Scripted(Arc<Nakadi>);

impl Transport for Scripted {
    fn send(&self, request: Request) -> SendFuture<'_> {
        Box::pin(async move {
            let json = if request.gzip {
                let mut out = Vec::new();
                GzDecoder::new(&request.body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                Bytes::from(out)
            } else {
                request.body.clone()
            };
            let array: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
            let eids: Vec<Uuid> = array
                .iter()
                .map(|e| e["metadata"]["eid"].as_str().unwrap().parse().unwrap())
                .collect();
            self.0.seen.lock().unwrap().push(Seen {
                at: Instant::now(),
                flow_id: request.flow_id,
                eids: eids.clone(),
                json,
                gzip: request.gzip,
                authorization: request
                    .authorization
                    .map(|a| a.header().to_str().unwrap().to_owned()),
            });
            let step = self.0.steps.lock().unwrap().pop_front();
            let reply = match step {
                Some(step) => step(&eids),
                None => match &*self.0.then.lock().unwrap() {
                    Some(then) => then(),
                    None => status(200),
                },
            };
            match reply {
                Reply::Status {
                    status,
                    retry_after,
                    body,
                } => Ok(Response {
                    status,
                    retry_after,
                    body: Body::Read(Bytes::from(body)),
                }),
                Reply::Hang => std::future::pending().await,
                Reply::Slow(after, status) => {
                    tokio::time::sleep(after).await;
                    Ok(Response {
                        status,
                        retry_after: None,
                        body: Body::Read(Bytes::new()),
                    })
                }
                Reply::Fail(e) => Err(e),
            }
        })
    }
}

fn step(reply: impl FnOnce(&[Uuid]) -> Reply + Send + 'static) -> Step {
    Box::new(reply)
}

fn fixed(reply: Reply) -> Step {
    Box::new(move |_| reply)
}

/// A 207 or 422 item array giving each eid the status `fate` chooses.
fn items(status: u16, eids: &[Uuid], fate: impl Fn(usize) -> &'static str) -> Reply {
    let items: Vec<serde_json::Value> = eids
        .iter()
        .enumerate()
        .map(|(i, eid)| {
            let s = fate(i);
            serde_json::json!({
                "eid": eid.to_string(),
                "publishing_status": s,
                "step": if s == "submitted" { "none" } else { "validating" },
                "detail": if s == "failed" { format!("bad event {i}") } else { String::new() },
            })
        })
        .collect();
    with_body(status, serde_json::to_string(&items).unwrap())
}

fn event(n: usize) -> Event {
    let eid = Uuid::from_u128(0x1000 + n as u128);
    let body = format!(
        r#"{{"metadata":{{"eid":"{eid}","occurred_at":"2026-01-01T00:00:00.000Z"}},"data_op":"C","data_type":"t","data":{{"item":{{"n":{n},"amount":1.50}},"patch":[]}}}}"#
    );
    Event::new(
        eid,
        body.as_bytes(),
        &format!("ev-{n}"),
        &format!("{:021}", 100 + n),
        0,
    )
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(event).collect()
}

fn config() -> PublisherConfig {
    PublisherConfig {
        base_url: "http://nakadi.invalid".into(),
        event_type: "t".into(),
        token: TokenSource::None,
        batch_size: 100,
        batch_bytes: 1 << 20,
        gzip_min_bytes: usize::MAX,
        request_timeout: Duration::from_secs(5),
        max_attempts: 8,
        max_retry_time: Duration::from_secs(60),
        on_failure: FailureMode::DeadLetter,
    }
}

fn publisher(config: PublisherConfig, nakadi: &Arc<Nakadi>) -> Publisher {
    Publisher::with_transport(config, Box::new(Scripted(nakadi.clone()))).unwrap()
}

async fn publish(p: &Publisher, events: &[Event]) -> Vec<Outcome> {
    p.publish(
        events,
        Publishing::Shard("shard-1"),
        &Gate {
            deadline: &CancellationToken::new(),
            fence: None,
        },
    )
    .await
}

fn eids(events: &[Event]) -> Vec<Uuid> {
    events.iter().map(|e| e.eid).collect()
}

fn failure(o: &Outcome) -> &Failure {
    match o {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn all_delivered(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| *o == Outcome::Delivered)
}

#[tokio::test(start_paused = true)]
async fn delivers_in_order_split_by_count_and_bytes() {
    let nakadi = Nakadi::script(vec![]);
    let evs = events(7);
    let p = publisher(
        PublisherConfig {
            batch_size: 3,
            ..config()
        },
        &nakadi,
    );
    let out = publish(&p, &evs).await;
    assert!(all_delivered(&out));
    let seen = nakadi.seen();
    let groups: Vec<Vec<Uuid>> = seen.iter().map(|s| s.eids.clone()).collect();
    assert_eq!(
        groups,
        vec![eids(&evs[0..3]), eids(&evs[3..6]), eids(&evs[6..7])]
    );
    let flow_ids: std::collections::HashSet<Uuid> = seen.iter().map(|s| s.flow_id).collect();
    assert_eq!(flow_ids.len(), 3, "a fresh flow id per request");
    assert!(seen.iter().all(|s| s.flow_id.get_version_num() == 4));

    // Bytes: each event is the same size, so a limit of two events' array makes pairs.
    let nakadi = Nakadi::script(vec![]);
    let two = batch::array_len([evs[0].body().len(), evs[1].body().len()]);
    let p = publisher(
        PublisherConfig {
            batch_bytes: two,
            ..config()
        },
        &nakadi,
    );
    assert!(all_delivered(&publish(&p, &evs[..5]).await));
    let sizes: Vec<usize> = nakadi.seen().iter().map(|s| s.eids.len()).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn body_is_the_events_joined_verbatim_and_gzipped_from_the_threshold() {
    let evs = events(3);
    let expected = batch::json_array(evs.iter().map(|e| e.body()));
    for (threshold, gzip) in [(expected.len() + 1, false), (expected.len(), true)] {
        let nakadi = Nakadi::script(vec![]);
        let p = publisher(
            PublisherConfig {
                gzip_min_bytes: threshold,
                ..config()
            },
            &nakadi,
        );
        assert!(all_delivered(&publish(&p, &evs).await));
        let seen = nakadi.seen();
        assert_eq!(seen[0].gzip, gzip);
        assert_eq!(
            seen[0].json, expected,
            "1.50 stays 1.50: no re-serialization"
        );
    }
}

fn huge_event(n: usize) -> Event {
    let e = event(n);
    let pad = "x".repeat(MAX_EVENT_BYTES);
    let body = format!(r#"{{"metadata":{{"eid":"{}"}},"pad":"{pad}"}}"#, e.eid);
    Event::new(e.eid, body.as_bytes(), e.event_id(), e.sequence_number(), 0)
}

#[tokio::test(start_paused = true)]
async fn too_large_event_fails_without_a_request() {
    let nakadi = Nakadi::script(vec![]);
    let mut evs = events(3);
    evs[1] = huge_event(1);
    let p = publisher(config(), &nakadi);
    let out = publish(&p, &evs).await;
    assert_eq!(out[0], Outcome::Delivered);
    assert_eq!(out[2], Outcome::Delivered);
    let f = failure(&out[1]);
    assert_eq!(f.kind, FailureKind::TooLarge);
    assert_eq!(f.attempts, 0);
    assert_eq!(f.status, None);
    let sent: Vec<Uuid> = nakadi.seen().iter().flat_map(|s| s.eids.clone()).collect();
    assert_eq!(sent, vec![evs[0].eid, evs[2].eid]);
}

#[tokio::test(start_paused = true)]
async fn block_mode_sends_even_a_too_large_event_alone() {
    let nakadi = Nakadi::script(vec![]);
    let mut evs = events(3);
    evs[1] = huge_event(1);
    let p = publisher(
        PublisherConfig {
            on_failure: FailureMode::Block,
            batch_bytes: 4096,
            ..config()
        },
        &nakadi,
    );
    assert!(all_delivered(&publish(&p, &evs).await));
    let groups: Vec<Vec<Uuid>> = nakadi.seen().iter().map(|s| s.eids.clone()).collect();
    assert_eq!(
        groups,
        vec![vec![evs[0].eid], vec![evs[1].eid], vec![evs[2].eid]]
    );
}

#[tokio::test(start_paused = true)]
async fn partial_207_resends_only_what_was_not_submitted() {
    let nakadi = Nakadi::script(vec![step(|eids| {
        items(
            207,
            eids,
            |i| if i % 2 == 1 { "failed" } else { "submitted" },
        )
    })]);
    let evs = events(5);
    let p = publisher(config(), &nakadi);
    let before = METRICS
        .publish_retries
        .with_label_values(&["partial"])
        .get();
    let out = publish(&p, &evs).await;
    assert!(all_delivered(&out));
    let seen = nakadi.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].eids, vec![evs[1].eid, evs[3].eid]);
    assert_eq!(
        seen[1].json,
        batch::json_array([evs[1].body(), evs[3].body()]),
        "same bytes again"
    );
    let after = METRICS
        .publish_retries
        .with_label_values(&["partial"])
        .get();
    assert!(after >= before + 2);
}

#[tokio::test(start_paused = true)]
async fn partial_207_items_are_matched_by_eid_not_position() {
    // The array comes back reversed, and one event is not mentioned at all.
    let nakadi = Nakadi::script(vec![step(|eids| {
        let mut listed: Vec<Uuid> = eids[..3].to_vec();
        listed.reverse();
        items(
            207,
            &listed,
            |i| if i == 0 { "failed" } else { "submitted" },
        )
    })]);
    let evs = events(4);
    let p = publisher(config(), &nakadi);
    assert!(all_delivered(&publish(&p, &evs).await));
    // evs[2] was listed first (failed); evs[3] was not listed: both go again.
    assert_eq!(nakadi.seen()[1].eids, vec![evs[2].eid, evs[3].eid]);
}

#[tokio::test(start_paused = true)]
async fn malformed_207_resends_everything() {
    let nakadi = Nakadi::script(vec![fixed(with_body(207, "<html>oops</html>"))]);
    let evs = events(3);
    let p = publisher(config(), &nakadi);
    assert!(all_delivered(&publish(&p, &evs).await));
    let seen = nakadi.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].eids, eids(&evs));
}

#[tokio::test(start_paused = true)]
async fn invalid_422_rejects_failed_items_and_resends_aborted_ones() {
    let nakadi = Nakadi::script(vec![step(|eids| {
        items(422, eids, |i| if i == 1 { "failed" } else { "aborted" })
    })]);
    let evs = events(3);
    let p = publisher(config(), &nakadi);
    let out = publish(&p, &evs).await;
    assert_eq!(out[0], Outcome::Delivered);
    assert_eq!(out[2], Outcome::Delivered);
    let f = failure(&out[1]);
    assert_eq!(f.kind, FailureKind::Rejected);
    assert_eq!(f.reason, "bad event 1");
    assert_eq!(f.status, Some(422));
    assert_eq!(f.attempts, 1);
    assert_eq!(nakadi.seen()[1].eids, vec![evs[0].eid, evs[2].eid]);
}

#[tokio::test(start_paused = true)]
async fn whole_request_rejections_are_not_retried() {
    let cases = [
        (
            422,
            r#"{"title":"Unprocessable Entity","status":422,"detail":"not a data change type"}"#,
            "Unprocessable Entity: not a data change type",
        ),
        (
            400,
            r#"{"title":"Bad Request","status":400,"detail":"not a JSON array"}"#,
            "Bad Request: not a JSON array",
        ),
        (
            403,
            r#"{"title":"Forbidden","status":403,"detail":"no write scope"}"#,
            "Forbidden: no write scope",
        ),
        (404, r#"{"title":"Not Found","status":404}"#, "Not Found"),
    ];
    for (code, body, reason) in cases {
        let nakadi = Nakadi::always(move || with_body(code, body));
        let p = publisher(config(), &nakadi);
        let out = publish(&p, &events(2)).await;
        assert_eq!(nakadi.seen().len(), 1, "{code}: no retry");
        for o in &out {
            let f = failure(o);
            assert_eq!(f.kind, FailureKind::Rejected, "{code}");
            assert_eq!(f.reason, reason);
            assert_eq!(f.status, Some(code));
            assert_eq!(f.attempts, 1);
            assert_eq!(f.first_failed_at, f.last_failed_at);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn block_mode_retries_rejections_with_capped_backoff_until_accepted() {
    let mut steps: Vec<Step> = (0..12)
        .map(|_| {
            fixed(with_body(
                422,
                r#"{"title":"Unprocessable Entity","status":422}"#,
            ))
        })
        .collect();
    steps.push(step(|eids| {
        items(422, eids, |i| if i == 0 { "failed" } else { "aborted" })
    }));
    let nakadi = Nakadi::script(steps);
    let p = publisher(
        PublisherConfig {
            on_failure: FailureMode::Block,
            max_attempts: 1,
            max_retry_time: Duration::ZERO,
            ..config()
        },
        &nakadi,
    );
    let out = publish(&p, &events(2)).await;
    assert!(all_delivered(&out), "block mode never fails");
    assert_eq!(nakadi.seen().len(), 14);
    assert!(nakadi.gaps().iter().all(|g| *g <= Backoff::NAKADI.max));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts() {
    let nakadi = Nakadi::always(|| status(503));
    let p = publisher(
        PublisherConfig {
            max_attempts: 4,
            ..config()
        },
        &nakadi,
    );
    let out = publish(&p, &events(2)).await;
    assert_eq!(nakadi.seen().len(), 4);
    for o in &out {
        let f = failure(o);
        assert_eq!(f.kind, FailureKind::RetriesExhausted);
        assert_eq!(f.status, Some(503));
        assert_eq!(f.attempts, 4);
        assert!(f.reason.contains("503 Service Unavailable"), "{}", f.reason);
        assert!(f.first_failed_at <= f.last_failed_at);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_gaps_stay_within_the_backoff_caps() {
    let nakadi = Nakadi::always(|| status(500));
    let p = publisher(
        PublisherConfig {
            max_attempts: 12,
            max_retry_time: Duration::from_secs(3600),
            ..config()
        },
        &nakadi,
    );
    publish(&p, &events(1)).await;
    let gaps = nakadi.gaps();
    assert_eq!(gaps.len(), 11);
    for (k, gap) in gaps.iter().enumerate() {
        assert!(*gap <= Backoff::NAKADI.cap(k as u32), "gap {k}: {gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_first_retry_over_its_whole_range() {
    let cap = Backoff::NAKADI.cap(0);
    let mut firsts = Vec::new();
    for _ in 0..300 {
        let nakadi = Nakadi::script(vec![fixed(status(503))]);
        let p = publisher(config(), &nakadi);
        assert!(all_delivered(&publish(&p, &events(1)).await));
        firsts.push(nakadi.gaps()[0]);
    }
    assert!(firsts.iter().all(|g| *g <= cap));
    assert!(
        firsts.iter().any(|g| *g < cap / 4),
        "full jitter reaches near zero"
    );
    assert!(firsts.iter().any(|g| *g > cap * 3 / 4), "and near the cap");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    for (code, secs, label) in [(503, 2, "server_error"), (429, 3, "rate_limited")] {
        let before = METRICS.publish_retries.with_label_values(&[label]).get();
        let nakadi = Nakadi::script(vec![fixed(retry_after(code, secs))]);
        let p = publisher(config(), &nakadi);
        assert!(all_delivered(&publish(&p, &events(2)).await));
        let gap = nakadi.gaps()[0];
        let asked = Duration::from_secs(secs);
        // The first retry's own draw is at most 100 ms, far below what the server asked.
        assert!(
            gap >= asked && gap <= asked + Backoff::NAKADI.cap(0),
            "{code}: {gap:?}"
        );
        assert!(METRICS.publish_retries.with_label_values(&[label]).get() >= before + 2);
    }
}

#[tokio::test(start_paused = true)]
async fn max_retry_time_bounds_the_whole_batch() {
    let nakadi = Nakadi::always(|| status(502));
    let budget = Duration::from_secs(5);
    let p = publisher(
        PublisherConfig {
            max_attempts: 1000,
            max_retry_time: budget,
            ..config()
        },
        &nakadi,
    );
    let start = Instant::now();
    let out = publish(&p, &events(1)).await;
    assert!(start.elapsed() <= budget, "{:?}", start.elapsed());
    assert!(nakadi.seen().len() > 3);
    assert_eq!(failure(&out[0]).kind, FailureKind::RetriesExhausted);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_budget_gives_up_at_once() {
    let nakadi = Nakadi::always(|| retry_after(503, 120));
    let p = publisher(config(), &nakadi);
    let start = Instant::now();
    let out = publish(&p, &events(1)).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(nakadi.seen().len(), 1);
    assert_eq!(failure(&out[0]).kind, FailureKind::RetriesExhausted);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_times_out_at_the_request_timeout() {
    let nakadi = Nakadi::script(vec![fixed(Reply::Hang)]);
    let timeout = Duration::from_secs(5);
    let p = publisher(config(), &nakadi);
    let before = METRICS
        .publish_retries
        .with_label_values(&["timeout"])
        .get();
    assert!(all_delivered(&publish(&p, &events(2)).await));
    let gap = nakadi.gaps()[0];
    assert!(
        gap >= timeout && gap <= timeout + Backoff::NAKADI.cap(0),
        "{gap:?}"
    );
    assert!(
        METRICS
            .publish_retries
            .with_label_values(&["timeout"])
            .get()
            >= before + 2
    );

    let nakadi = Nakadi::always(|| Reply::Hang);
    let p = publisher(
        PublisherConfig {
            max_attempts: 2,
            ..config()
        },
        &nakadi,
    );
    let out = publish(&p, &events(1)).await;
    let f = failure(&out[0]);
    assert_eq!(f.kind, FailureKind::RetriesExhausted);
    assert_eq!(f.status, None);
    assert!(f.reason.contains("no response within 5s"), "{}", f.reason);
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried() {
    let nakadi = Nakadi::script(vec![
        fixed(Reply::Fail(TransportError::Connection(
            "connection refused".into(),
        ))),
        fixed(Reply::Fail(TransportError::Timeout(
            "connect timeout".into(),
        ))),
    ]);
    let p = publisher(config(), &nakadi);
    assert!(all_delivered(&publish(&p, &events(1)).await));
    assert_eq!(nakadi.seen().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_lets_the_request_in_flight_answer_and_sends_no_new_one() {
    // The request in flight when the deadline passes is answered, and its answer counts: the
    // first event was accepted and is not published again by whoever continues.
    let nakadi = Nakadi::script(vec![fixed(Reply::Slow(Duration::from_secs(2), 200))]);
    let p = publisher(
        PublisherConfig {
            batch_size: 1,
            max_retry_time: Duration::from_secs(3600),
            ..config()
        },
        &nakadi,
    );
    let deadline = CancellationToken::new();
    let gate = Gate {
        deadline: &deadline,
        fence: None,
    };
    let cancel = deadline.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let start = Instant::now();
    let out = p.publish(&events(3), Publishing::Shard("s"), &gate).await;
    assert_eq!(out[0], Outcome::Delivered);
    assert_eq!(out[1], Outcome::NotSent(Halt::Deadline));
    assert_eq!(out[2], Outcome::NotSent(Halt::Deadline));
    assert_eq!(nakadi.seen().len(), 1, "no request after the deadline");
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    // A closed gate sends nothing at all.
    let out = p.publish(&events(1), Publishing::Shard("s"), &gate).await;
    assert_eq!(out, vec![Outcome::NotSent(Halt::Deadline)]);
    assert_eq!(nakadi.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_backoff_wait_promptly() {
    let nakadi = Nakadi::always(|| retry_after(503, 60));
    let p = publisher(
        PublisherConfig {
            max_retry_time: Duration::from_secs(3600),
            ..config()
        },
        &nakadi,
    );
    let deadline = CancellationToken::new();
    let cancel = deadline.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let start = Instant::now();
    let gate = Gate {
        deadline: &deadline,
        fence: None,
    };
    let out = p.publish(&events(1), Publishing::Shard("s"), &gate).await;
    assert_eq!(out, vec![Outcome::NotSent(Halt::Deadline)]);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(nakadi.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_closed_fence_is_checked_before_every_request() {
    let lease = Duration::from_secs(6);
    let fence = Fence::new(lease);
    fence.heartbeat_succeeded(Instant::now());
    // Every request fails, so the publisher keeps retrying until the fence closes.
    let nakadi = Nakadi::always(|| status(503));
    let p = publisher(
        PublisherConfig {
            max_retry_time: Duration::from_secs(3600),
            max_attempts: 1000,
            ..config()
        },
        &nakadi,
    );
    let never = CancellationToken::new();
    let gate = Gate {
        deadline: &never,
        fence: Some(&fence),
    };
    let out = p.publish(&events(2), Publishing::Shard("s"), &gate).await;
    assert_eq!(out, vec![Outcome::NotSent(Halt::Fenced); 2]);
    let closes = lease - Fence::margin(lease);
    let seen = nakadi.seen();
    let last = seen.last().expect("requests were sent").at;
    assert!(
        last.duration_since(seen[0].at) < closes,
        "a request was sent after the fence closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_is_never_dead_lettered_however_long_it_lasts() {
    // Retry-After far beyond the budget: the relay waits (capped) and tries again, never gives up.
    let mut script: Vec<Step> = (0..20).map(|_| fixed(retry_after(429, 600))).collect();
    script.push(fixed(status(200)));
    let nakadi = Nakadi::script(script);
    let p = publisher(
        PublisherConfig {
            max_attempts: 3,
            max_retry_time: Duration::from_secs(5),
            ..config()
        },
        &nakadi,
    );
    let before = METRICS
        .publish_retries
        .with_label_values(&["rate_limited"])
        .get();
    let out = publish(&p, &events(2)).await;
    assert!(all_delivered(&out), "{out:?}");
    assert_eq!(nakadi.seen().len(), 21);
    assert!(
        nakadi
            .gaps()
            .iter()
            .all(|g| *g <= MAX_RATE_LIMIT_WAIT + Duration::from_millis(1))
    );
    assert!(nakadi.gaps().iter().all(|g| *g >= MAX_RATE_LIMIT_WAIT));
    assert!(
        METRICS
            .publish_retries
            .with_label_values(&["rate_limited"])
            .get()
            >= before + 40
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_attempts_do_not_use_up_the_budget_of_other_failures() {
    let mut script: Vec<Step> = (0..5).map(|_| fixed(retry_after(429, 1))).collect();
    script.push(fixed(status(503)));
    script.push(fixed(status(200)));
    let nakadi = Nakadi::script(script);
    let p = publisher(
        PublisherConfig {
            max_attempts: 3,
            ..config()
        },
        &nakadi,
    );
    assert!(all_delivered(&publish(&p, &events(1)).await));
    assert_eq!(nakadi.seen().len(), 7);
}

fn token_file(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    fs::write(&path, content).unwrap();
    (dir, path)
}

#[tokio::test(start_paused = true)]
async fn a_401_rereads_the_token_even_when_the_file_looks_unchanged() {
    let (_dir, path) = token_file("token-one");
    let rotate = path.clone();
    let nakadi = Nakadi::script(vec![step(move |_| {
        // Rewritten in place with the same length and the old modification time: only a forced
        // re-read can see it.
        let modified = fs::metadata(&rotate).unwrap().modified().unwrap();
        fs::write(&rotate, "token-two").unwrap();
        let f = fs::File::options().write(true).open(&rotate).unwrap();
        f.set_modified(modified).unwrap();
        status(401)
    })]);
    let p = publisher(
        PublisherConfig {
            token: TokenSource::File(path),
            ..config()
        },
        &nakadi,
    );
    let before = METRICS
        .publish_retries
        .with_label_values(&["unauthorized"])
        .get();
    assert!(all_delivered(&publish(&p, &events(1)).await));
    let auth: Vec<Option<String>> = nakadi
        .seen()
        .iter()
        .map(|s| s.authorization.clone())
        .collect();
    assert_eq!(
        auth,
        vec![
            Some("Bearer token-one".to_owned()),
            Some("Bearer token-two".to_owned())
        ]
    );
    assert!(
        METRICS
            .publish_retries
            .with_label_values(&["unauthorized"])
            .get()
            > before
    );
}

#[tokio::test(start_paused = true)]
async fn a_lasting_401_exhausts_the_retries() {
    let (_dir, path) = token_file("stale");
    let nakadi = Nakadi::always(|| with_body(401, r#"{"title":"Unauthorized","status":401}"#));
    let p = publisher(
        PublisherConfig {
            token: TokenSource::File(path),
            max_attempts: 3,
            ..config()
        },
        &nakadi,
    );
    let out = publish(&p, &events(1)).await;
    assert_eq!(nakadi.seen().len(), 3);
    let f = failure(&out[0]);
    assert_eq!(f.kind, FailureKind::RetriesExhausted);
    assert_eq!(f.status, Some(401));
    assert!(!f.reason.contains("stale"));
}

#[tokio::test(start_paused = true)]
async fn a_rotated_token_file_is_used_by_the_next_request() {
    let (dir, path) = token_file("first-token");
    let nakadi = Nakadi::script(vec![]);
    let p = publisher(
        PublisherConfig {
            token: TokenSource::File(path.clone()),
            ..config()
        },
        &nakadi,
    );
    publish(&p, &events(1)).await;
    let tmp = dir.path().join("new");
    fs::write(&tmp, "second-token\n").unwrap();
    fs::rename(&tmp, &path).unwrap();
    publish(&p, &events(1)).await;
    let auth: Vec<Option<String>> = nakadi
        .seen()
        .iter()
        .map(|s| s.authorization.clone())
        .collect();
    assert_eq!(
        auth,
        vec![
            Some("Bearer first-token".to_owned()),
            Some("Bearer second-token".to_owned())
        ]
    );
    assert!(!format!("{p:?}").contains("second-token"));
}

#[tokio::test(start_paused = true)]
async fn every_request_is_timed() {
    let nakadi = Nakadi::script(vec![step(|eids| {
        items(207, eids, |i| if i == 0 { "submitted" } else { "failed" })
    })]);
    let p = publisher(config(), &nakadi);
    let requests_before = METRICS.publish_duration.get_sample_count();
    assert!(all_delivered(&publish(&p, &events(3)).await));
    assert!(METRICS.publish_duration.get_sample_count() >= requests_before + 2);
}

#[tokio::test(start_paused = true)]
async fn the_delay_of_each_accepted_event_is_observed_and_no_other() {
    // Event 0 is rejected, 1 and 2 are accepted on the second request.
    let nakadi = Nakadi::script(vec![
        step(|eids| items(422, eids, |i| if i == 0 { "failed" } else { "aborted" })),
        fixed(status(200)),
    ]);
    let created_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 - 30_000;
    let evs: Vec<Event> = (0..3)
        .map(|n| {
            let e = event(n);
            Event::new(
                e.eid,
                e.body(),
                &format!("ev-{n}"),
                e.sequence_number(),
                created_ms,
            )
        })
        .collect();
    let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("delay", "test")).unwrap();
    let p = publisher(config(), &nakadi).observing_delay(histogram.clone());
    let outcomes = publish(&p, &evs).await;
    assert!(matches!(outcomes[0], Outcome::Failed(_)));
    assert!(all_delivered(&outcomes[1..]));
    assert_eq!(histogram.get_sample_count(), 2, "the accepted events only");
    let mean = histogram.get_sample_sum() / 2.0;
    assert!(
        (30.0..40.0).contains(&mean),
        "{mean} s from creation to acceptance"
    );

    // A publisher built without it (the re-drain loop's, the snapshot's) observes nothing.
    let nakadi = Nakadi::script(vec![]);
    let plain = publisher(config(), &nakadi);
    assert!(all_delivered(&publish(&plain, &evs).await));
    assert_eq!(histogram.get_sample_count(), 2);
}

#[test]
fn events_url_appends_the_path_and_encodes_the_name() {
    let url = events_url("https://nakadi.example.org", "payments.order-changed").unwrap();
    assert_eq!(
        url.as_str(),
        "https://nakadi.example.org/event-types/payments.order-changed/events"
    );
    let url = events_url("http://localhost:8080/nakadi/", "a b/c").unwrap();
    assert_eq!(
        url.as_str(),
        "http://localhost:8080/nakadi/event-types/a%20b%2Fc/events"
    );
    assert!(events_url("ftp://x", "t").is_err());
    assert!(events_url("not a url", "t").is_err());
    // The event type itself, as `check` reads it.
    let url = event_type_url("http://localhost:8080/nakadi/", "a b/c").unwrap();
    assert_eq!(
        url.as_str(),
        "http://localhost:8080/nakadi/event-types/a%20b%2Fc"
    );
}

#[test]
fn missing_token_file_is_an_error_naming_the_path() {
    let err = Publisher::new(PublisherConfig {
        token: TokenSource::File("/nonexistent/nakadi-token".into()),
        ..config()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/nakadi-token"),
        "{err}"
    );
}

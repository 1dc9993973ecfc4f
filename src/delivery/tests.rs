//! [`Delivery`] against in-memory fakes, a row per row of the product's failure table that
//! concerns delivery (`shared/DESIGN.md`, "Delivery guarantees").
//!
//! The fake publisher answers with a scripted outcome per event: what the real publisher makes of
//! that row's Nakadi answers after its own retries (`nakadi::publisher::tests` holds it to that,
//! answer by answer). The fake queue answers each send as scripted and takes every send after the
//! script. Both close the gate the way an outcome says it closed (drain deadline, lapsed fence),
//! in paused tokio time, so the retry waits of the queue cost nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::fence::Fence;
use crate::nakadi::FailureKind;

/// Long enough that the fence never lapses by itself during a row: a row closes it explicitly.
const LEASE: Duration = Duration::from_secs(24 * 3600);

/// The gate of a row, and how the fakes close it.
#[derive(Clone)]
struct Gatekeeper {
    deadline: CancellationToken,
    fence: Arc<Fence>,
}

impl Gatekeeper {
    fn open() -> Gatekeeper {
        let fence = Arc::new(Fence::new(LEASE));
        fence.heartbeat_succeeded(Instant::now());
        Gatekeeper {
            deadline: CancellationToken::new(),
            fence,
        }
    }

    fn gate(&self) -> Gate<'_> {
        Gate {
            deadline: &self.deadline,
            fence: Some(&self.fence),
        }
    }

    /// The drain deadline passes, or the fence lapses (time runs past it).
    async fn close(&self, halt: Halt) {
        match halt {
            Halt::Deadline => self.deadline.cancel(),
            Halt::Fenced => {
                let until = self.fence.open_until().expect("the fence is open");
                tokio::time::advance(until - Instant::now() + Duration::from_millis(1)).await;
            }
        }
    }
}

/// The publisher's outcome per event, and the events it was asked to publish.
struct FakeNakadi {
    outcomes: Vec<Outcome>,
    gate: Gatekeeper,
    /// Each call's events, by sequence number.
    received: Mutex<Vec<Vec<String>>>,
}

impl Publish for FakeNakadi {
    async fn publish(&self, events: &[Event], _: Publishing<'_>, gate: &Gate<'_>) -> Vec<Outcome> {
        assert!(gate.halted().is_none(), "published with the gate closed");
        let seqs = events.iter().map(|e| e.sequence_number().to_owned());
        self.received.lock().unwrap().push(seqs.collect());
        // An event is left undecided only because the gate closed.
        let halt = self.outcomes.iter().find_map(|o| match o {
            Outcome::NotSent(halt) => Some(*halt),
            _ => None,
        });
        if let Some(halt) = halt {
            self.gate.close(halt).await;
        }
        self.outcomes.clone()
    }
}

/// How the fake queue answers one send.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Take,
    /// Fails: unreachable, throttled, or a letter too large for it (the writer's errors all
    /// mean the same to delivery: not written, try again).
    Refuse,
    /// Fails, and meanwhile the gate closes.
    RefuseAndClose(Halt),
}

struct FakeQueue {
    answers: Mutex<VecDeque<Answer>>,
    gate: Gatekeeper,
    /// Each send's letters.
    sent: Mutex<Vec<Vec<String>>>,
    /// `relay_shards_blocked` as each send found it.
    blocked: Mutex<Vec<i64>>,
}

impl LetterQueue for FakeQueue {
    type Letter = String;
    type Error = &'static str;

    async fn send(&self, letters: &[String]) -> Result<(), &'static str> {
        self.sent.lock().unwrap().push(letters.to_vec());
        self.blocked
            .lock()
            .unwrap()
            .push(METRICS.shards_blocked.get());
        let answer = self.answers.lock().unwrap().pop_front();
        match answer.unwrap_or(Answer::Take) {
            Answer::Take => Ok(()),
            Answer::Refuse => Err("queue unreachable"),
            Answer::RefuseAndClose(halt) => {
                self.gate.close(halt).await;
                Err("queue unreachable")
            }
        }
    }
}

fn event(n: usize) -> Event {
    let eid = Uuid::from_u128(0x1000 + n as u128);
    let body = format!(r#"{{"metadata":{{"eid":"{eid}"}},"data_op":"C"}}"#);
    Event::new(eid, body.as_bytes(), &format!("ev-{n}"), &n.to_string(), 0)
}

/// The letter of an event Nakadi finally did not take: its sequence number (the page position),
/// the failure's kind and status.
fn letter(event: &Event, failure: &Failure) -> String {
    let status = failure.status.map_or("-".to_owned(), |s| s.to_string());
    format!(
        "{} {} {status}",
        event.sequence_number(),
        failure.kind.label()
    )
}

fn delivered() -> Outcome {
    Outcome::Delivered
}

fn failed(kind: FailureKind, status: Option<u16>) -> Outcome {
    let now = OffsetDateTime::now_utc();
    Outcome::Failed(Failure {
        kind,
        reason: "as Nakadi said".into(),
        status,
        attempts: 3,
        first_failed_at: now,
        last_failed_at: now,
    })
}

fn not_sent(halt: Halt) -> Outcome {
    Outcome::NotSent(halt)
}

/// A report's done prefix: its length, the events delivered and the letters written in it, and
/// why it ends early.
#[derive(Debug, PartialEq)]
struct Prefix(usize, u64, u64, Option<Halt>);

fn prefix(done: usize, delivered: u64, dead_lettered: u64, halted: Option<Halt>) -> Prefix {
    Prefix(done, delivered, dead_lettered, halted)
}

impl Prefix {
    fn of<L>(report: &Report<L>) -> Prefix {
        Prefix(
            report.done,
            report.delivered,
            report.dead_lettered,
            report.halted,
        )
    }
}

struct Row {
    /// The failure table's row, as DESIGN.md words it.
    row: &'static str,
    /// The page, an entry a letter: `e` an event, `m` a record that cannot become an event
    /// (dead-lettered as it is), `s` one filtered out.
    page: &'static str,
    /// The publisher's outcome for each `e`, in order.
    nakadi: Vec<Outcome>,
    /// The queue's answer to each send; it takes every send after these.
    queue: Vec<Answer>,
    /// How each entry ended: `D` delivered, `L` dead-lettered, `S` skipped, `w` letter not
    /// written, `n` not sent.
    settled: &'static str,
    prefix: Prefix,
    /// Every send the queue received (retries are the same letters again).
    sent: Vec<Vec<&'static str>>,
}

fn settled(code: &str) -> Vec<Settled> {
    code.chars()
        .map(|c| match c {
            'D' => Settled::Delivered,
            'L' => Settled::DeadLettered,
            'S' => Settled::Skipped,
            'w' => Settled::LetterNotWritten,
            'n' => Settled::NotSent,
            _ => panic!("no entry state {c:?}"),
        })
        .collect()
}

/// A row whose events Nakadi all accepted in the end: nothing for the queue.
fn accepted(row: &'static str, events: usize) -> Row {
    Row {
        row,
        page: &"eeee"[..events],
        nakadi: vec![delivered(); events],
        queue: vec![],
        settled: &"DDDD"[..events],
        prefix: prefix(events, events as u64, 0, None),
        sent: vec![],
    }
}

fn rows() -> Vec<Row> {
    use FailureKind::{Rejected, RetriesExhausted, TooLarge};
    use Halt::{Deadline, Fenced};
    let ok = delivered;
    vec![
        accepted("Nakadi 200: checkpoint", 3),
        accepted(
            "Nakadi 207: the items not submitted are re-sent and then accepted",
            3,
        ),
        Row {
            row: "Nakadi 207: an item whose re-sends fail until the retry budget ends goes to the DLQ",
            page: "eee",
            nakadi: vec![ok(), failed(RetriesExhausted, Some(207)), ok()],
            queue: vec![],
            settled: "DLD",
            prefix: prefix(3, 2, 1, None),
            sent: vec![vec!["1 retries_exhausted 207"]],
        },
        Row {
            row: "Nakadi 422 with items: failed items to the DLQ with the reason, aborted ones re-sent",
            page: "eee",
            nakadi: vec![ok(), failed(Rejected, Some(422)), ok()],
            queue: vec![],
            settled: "DLD",
            prefix: prefix(3, 2, 1, None),
            sent: vec![vec!["1 rejected 422"]],
        },
        Row {
            row: "5xx: retried with backoff, then to the DLQ",
            page: "ee",
            nakadi: vec![
                failed(RetriesExhausted, Some(503)),
                failed(RetriesExhausted, Some(503)),
            ],
            queue: vec![],
            settled: "LL",
            prefix: prefix(2, 0, 2, None),
            sent: vec![vec!["0 retries_exhausted 503", "1 retries_exhausted 503"]],
        },
        Row {
            row: "timeout, connection error: retried with backoff, then to the DLQ",
            page: "ee",
            nakadi: vec![ok(), failed(RetriesExhausted, None)],
            queue: vec![],
            settled: "DL",
            prefix: prefix(2, 1, 1, None),
            sent: vec![vec!["1 retries_exhausted -"]],
        },
        accepted("429: waited for and tried again, never dead-lettered", 2),
        Row {
            row: "429 until the drain deadline: nothing dead-lettered, nothing done",
            page: "ee",
            nakadi: vec![not_sent(Deadline), not_sent(Deadline)],
            queue: vec![],
            settled: "nn",
            prefix: prefix(0, 0, 0, Some(Deadline)),
            sent: vec![],
        },
        accepted("401: the token file is re-read and the request retried", 1),
        Row {
            row: "401 that lasts: the retries run out, to the DLQ",
            page: "e",
            nakadi: vec![failed(RetriesExhausted, Some(401))],
            queue: vec![],
            settled: "L",
            prefix: prefix(1, 0, 1, None),
            sent: vec![vec!["0 retries_exhausted 401"]],
        },
        Row {
            row: "400 / 403 / 404 / 422 problem: not retryable, to the DLQ with the reason",
            page: "eeee",
            nakadi: vec![
                failed(Rejected, Some(400)),
                failed(Rejected, Some(403)),
                failed(Rejected, Some(404)),
                failed(Rejected, Some(422)),
            ],
            queue: vec![],
            settled: "LLLL",
            prefix: prefix(4, 0, 4, None),
            sent: vec![vec![
                "0 rejected 400",
                "1 rejected 403",
                "2 rejected 404",
                "3 rejected 422",
            ]],
        },
        Row {
            row: "event larger than Nakadi accepts: never sent, to the DLQ",
            page: "eee",
            nakadi: vec![ok(), failed(TooLarge, None), ok()],
            queue: vec![],
            settled: "DLD",
            prefix: prefix(3, 2, 1, None),
            sent: vec![vec!["1 too_large -"]],
        },
        Row {
            row: "DLQ write fails: no checkpoint, retried with backoff, the shard waits",
            page: "eee",
            nakadi: vec![ok(), failed(Rejected, Some(422)), ok()],
            queue: vec![Answer::Refuse, Answer::Refuse],
            settled: "DLD",
            prefix: prefix(3, 2, 1, None),
            sent: vec![vec!["1 rejected 422"]; 3],
        },
        Row {
            row: "DLQ write fails until the drain deadline: done up to the first letter",
            page: "eeee",
            nakadi: vec![
                ok(),
                failed(Rejected, Some(422)),
                ok(),
                failed(Rejected, Some(422)),
            ],
            queue: vec![Answer::Refuse, Answer::RefuseAndClose(Deadline)],
            settled: "DwDw",
            prefix: prefix(1, 1, 0, Some(Deadline)),
            sent: vec![vec!["1 rejected 422", "3 rejected 422"]; 2],
        },
        Row {
            row: "dead letter too large for the queue, no bucket: the shard waits until the limit is raised",
            page: "e",
            nakadi: vec![failed(TooLarge, None)],
            queue: vec![Answer::Refuse, Answer::Refuse, Answer::Refuse],
            settled: "L",
            prefix: prefix(1, 0, 1, None),
            sent: vec![vec!["0 too_large -"]; 4],
        },
        Row {
            row: "this pod could not heartbeat: no publish request after the fence closed",
            page: "eee",
            nakadi: vec![ok(), not_sent(Fenced), not_sent(Fenced)],
            queue: vec![],
            settled: "Dnn",
            prefix: prefix(1, 1, 0, Some(Fenced)),
            sent: vec![],
        },
        Row {
            row: "this pod could not heartbeat: no DLQ write after the fence closed",
            page: "ee",
            nakadi: vec![failed(Rejected, Some(422)), ok()],
            queue: vec![Answer::RefuseAndClose(Fenced)],
            settled: "wD",
            prefix: prefix(0, 0, 0, Some(Fenced)),
            sent: vec![vec!["0 rejected 422"]],
        },
        Row {
            row: "drain deadline: what was accepted is done, the rest left with the same eids",
            page: "eee",
            nakadi: vec![ok(), ok(), not_sent(Deadline)],
            queue: vec![],
            settled: "DDn",
            prefix: prefix(2, 2, 0, Some(Deadline)),
            sent: vec![],
        },
        Row {
            row: "drain deadline: a letter due before it is not written, the gate being closed",
            page: "eee",
            nakadi: vec![ok(), failed(Rejected, Some(422)), not_sent(Deadline)],
            queue: vec![],
            settled: "Dwn",
            prefix: prefix(1, 1, 0, Some(Deadline)),
            sent: vec![],
        },
        Row {
            row: "drain deadline: an event Nakadi decided after an undecided one is outside the prefix",
            page: "eee",
            nakadi: vec![not_sent(Deadline), ok(), failed(Rejected, Some(422))],
            queue: vec![],
            settled: "nDw",
            prefix: prefix(0, 0, 0, Some(Deadline)),
            sent: vec![],
        },
        Row {
            row: "RELAY_ON_PUBLISH_FAILURE=dlq: a rejected event goes to the DLQ and the rest flows",
            page: "eee",
            nakadi: vec![failed(Rejected, Some(422)), ok(), ok()],
            queue: vec![],
            settled: "LDD",
            prefix: prefix(3, 2, 1, None),
            sent: vec![vec!["0 rejected 422"]],
        },
        Row {
            row: "RELAY_ON_PUBLISH_FAILURE=block: the rejection is retried until the drain deadline, never dead-lettered",
            page: "eee",
            nakadi: vec![not_sent(Deadline), not_sent(Deadline), not_sent(Deadline)],
            queue: vec![],
            settled: "nnn",
            prefix: prefix(0, 0, 0, Some(Deadline)),
            sent: vec![],
        },
        Row {
            row: "record that cannot become an event: dead-lettered as it is, in its place",
            page: "eme",
            nakadi: vec![ok(), ok()],
            queue: vec![],
            settled: "DLD",
            prefix: prefix(3, 2, 1, None),
            sent: vec![vec!["1 malformed"]],
        },
        Row {
            row: "filtered records: done along with what is before them",
            page: "ses",
            nakadi: vec![ok()],
            queue: vec![],
            settled: "SDS",
            prefix: prefix(3, 1, 0, None),
            sent: vec![],
        },
        Row {
            row: "filtered record after an undecided event: outside the prefix",
            page: "es",
            nakadi: vec![not_sent(Deadline)],
            queue: vec![],
            settled: "nS",
            prefix: prefix(0, 0, 0, Some(Deadline)),
            sent: vec![],
        },
    ]
}

/// Runs one row and checks the report, each entry's end, and what each fake received.
async fn check(row: &Row) {
    let name = row.row;
    let gate = Gatekeeper::open();
    let mut events = Vec::new();
    let entries: Vec<Entry<String>> = row
        .page
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            'e' => {
                events.push(event(i));
                Entry::Event
            }
            'm' => Entry::Letter(Box::new(format!("{i} malformed"))),
            's' => Entry::Skipped,
            _ => panic!("{name}: no entry kind {c:?}"),
        })
        .collect();
    assert_eq!(
        events.len(),
        row.nakadi.len(),
        "{name}: an outcome per event"
    );
    let nakadi = FakeNakadi {
        outcomes: row.nakadi.clone(),
        gate: gate.clone(),
        received: Mutex::default(),
    };
    let queue = FakeQueue {
        answers: Mutex::new(row.queue.iter().copied().collect()),
        gate: gate.clone(),
        sent: Mutex::default(),
        blocked: Mutex::default(),
    };
    let delivery = Delivery {
        publisher: &nakadi,
        dlq: &queue,
    };
    let write_failures = METRICS.dlq_write_failures.get();

    // A row that never ends would spin through paused time; this ends it.
    let report = tokio::time::timeout(
        LEASE * 10,
        delivery.deliver(
            &events,
            &entries,
            letter,
            Publishing::Shard("shard"),
            &gate.gate(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: delivery never ended"));

    assert_eq!(Prefix::of(&report), row.prefix, "{name}: report");
    assert_eq!(report.entries, settled(row.settled), "{name}: entries");
    let page: Vec<String> = events
        .iter()
        .map(|e| e.sequence_number().to_owned())
        .collect();
    assert_eq!(
        *nakadi.received.lock().unwrap(),
        [page],
        "{name}: the publisher is asked once, for every event in order"
    );
    assert_eq!(
        *queue.sent.lock().unwrap(),
        row.sent,
        "{name}: letters sent"
    );

    // Every letter due is handed back in its place, written or not.
    let due: Vec<usize> = (report.entries.iter().enumerate())
        .filter(|(_, s)| matches!(s, Settled::DeadLettered | Settled::LetterNotWritten))
        .map(|(i, _)| i)
        .collect();
    let positions: Vec<usize> = report.letters.iter().map(|(i, _)| *i).collect();
    assert_eq!(positions, due, "{name}: letters' places");
    for (i, l) in &report.letters {
        assert!(
            l.starts_with(&format!("{i} ")),
            "{name}: letter {l:?} at {i}"
        );
    }

    // Each refused send is counted, and the shard counts as blocked from the first refusal until
    // the delivery ends.
    let sends = row.sent.len();
    let written = row.prefix.2 > 0;
    let refused = sends - usize::from(written);
    assert_eq!(
        METRICS.dlq_write_failures.get() - write_failures,
        refused as u64,
        "{name}: relay_dlq_write_failures_total"
    );
    let blocked = queue.blocked.lock().unwrap().clone();
    let expected: Vec<i64> = (0..sends).map(|i| i64::from(i > 0)).collect();
    assert_eq!(
        blocked, expected,
        "{name}: relay_shards_blocked during sends"
    );
    assert_eq!(
        METRICS.shards_blocked.get(),
        0,
        "{name}: relay_shards_blocked after"
    );

    // The done prefix ends at the first entry not done.
    let done = (report.entries.iter())
        .take_while(|s| {
            matches!(
                s,
                Settled::Delivered | Settled::DeadLettered | Settled::Skipped
            )
        })
        .count();
    assert_eq!(report.done, done, "{name}: the done prefix");
}

// `relay_dlq_write_failures_total` and `relay_shards_blocked` are process-wide: the rows run one
// after another, in one test.
#[tokio::test(start_paused = true)]
async fn the_failure_table() {
    for row in rows() {
        check(&row).await;
    }
}

//! What Nakadi's answer to one publishing request means: the Nakadi rows of the failure table.
//!
//! | answer | verdict |
//! |---|---|
//! | 200 (any 2xx but 207) | delivered |
//! | 207 with items | `submitted` items delivered, the rest re-sent (`partial`) |
//! | 422 with items | `failed` items rejected with their `detail`, the rest re-sent (`aborted`) |
//! | 422 Problem, 400, 403, 404, other 3xx/4xx | the whole request rejected |
//! | 401 | re-read the token, retry (`unauthorized`) |
//! | 429 | retry, honouring `Retry-After` (`rate_limited`) |
//! | 408, timeout | retry (`timeout`) |
//! | 5xx, a 207/422 body that is not what the spec says | retry (`server_error`) |
//! | no response | retry (`connection`) |
//!
//! Bodies are only trusted when they parse: a 207 that cannot be read tells nothing about which
//! items got through, so everything is re-sent (a duplicate with the same eid, never a loss).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;
use time::{Date, Month, PrimitiveDateTime, Time};
use uuid::Uuid;

/// The most of a response body the publisher reads. Nakadi's item arrays are about 150 bytes per
/// event, so even the largest batch stays far below; anything beyond is not Nakadi talking.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// The longest `Retry-After` obeyed: a server asking for more is more likely broken than right,
/// and the attempt and time budgets still bound the wait in dead-letter mode.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why events are sent again: the `reason` label of `relay_publish_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RetryReason {
    ServerError,
    RateLimited,
    Timeout,
    Connection,
    /// Items of a 207 that were not `submitted`.
    Partial,
    /// Items of a 422 that were `aborted` because another item failed.
    Aborted,
    Unauthorized,
    /// Only in block mode, which retries rejections too.
    Rejected,
}

impl RetryReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            RetryReason::ServerError => "server_error",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::Timeout => "timeout",
            RetryReason::Connection => "connection",
            RetryReason::Partial => "partial",
            RetryReason::Aborted => "aborted",
            RetryReason::Unauthorized => "unauthorized",
            RetryReason::Rejected => "rejected",
        }
    }
}

/// The body as far as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    Read(Bytes),
    /// Longer than [`MAX_BODY_BYTES`].
    TooLarge,
    /// The connection failed while the body was read.
    Broken(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PublishingStatus {
    Submitted,
    Failed,
    Aborted,
    /// A status this code does not know is treated like one that did not get through.
    #[serde(other)]
    Unknown,
}

/// One element of a 207 or 422 array (`BatchItemResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct BatchItem {
    /// Absent if the event had none; kept as text since only a well-formed one can match.
    #[serde(default)]
    pub eid: Option<String>,
    pub publishing_status: PublishingStatus,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

impl BatchItem {
    pub(crate) fn eid(&self) -> Option<Uuid> {
        self.eid.as_deref().and_then(|e| Uuid::parse_str(e).ok())
    }

    /// The item's failure in Nakadi's words, for the dead-letter message.
    pub(crate) fn reason(&self) -> String {
        match (&self.detail, &self.step) {
            (Some(detail), _) if !detail.trim().is_empty() => detail.clone(),
            (_, Some(step)) => format!("rejected by Nakadi at step {step}, without detail"),
            _ => "rejected by Nakadi without detail".to_owned(),
        }
    }
}

/// Nakadi's `Problem` (RFC 7807). Every field optional: a reason is built from whatever is there.
#[derive(Debug, Clone, Default, Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// What to do about one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered,
    /// 207: the items decide one by one.
    Partial(Vec<BatchItem>),
    /// 422 with an item array: `failed` items are rejected, the others were not tried.
    Invalid(Vec<BatchItem>),
    /// Not retryable: every event of the request failed for `reason`.
    Rejected {
        reason: String,
    },
    /// Retry everything, after re-reading the token if `reason` is `Unauthorized`.
    Retry {
        reason: RetryReason,
        detail: String,
        retry_after: Option<Duration>,
    },
}

/// The verdict on a response that arrived. `retry_after` is the parsed header.
pub(crate) fn classify(status: u16, retry_after: Option<Duration>, body: &Body) -> Verdict {
    let retry = |reason, detail: String| Verdict::Retry {
        reason,
        detail,
        retry_after,
    };
    match status {
        207 => match items(body) {
            Ok(items) => Verdict::Partial(items),
            Err(why) => retry(RetryReason::ServerError, format!("207 with {why}")),
        },
        200..=299 => Verdict::Delivered,
        401 => retry(RetryReason::Unauthorized, summary(status, body)),
        408 => retry(RetryReason::Timeout, summary(status, body)),
        429 => retry(RetryReason::RateLimited, summary(status, body)),
        422 => match parse::<ItemsOrProblem>(body) {
            Ok(ItemsOrProblem::Items(items)) => Verdict::Invalid(items),
            Ok(ItemsOrProblem::Problem(p)) => Verdict::Rejected {
                reason: problem_reason(status, &p),
            },
            // Nakadi's 422 is always one or the other: a body that is neither came from
            // something in between, and says nothing about the events.
            Err(why) => retry(RetryReason::ServerError, format!("422 with {why}")),
        },
        500..=599 => retry(RetryReason::ServerError, summary(status, body)),
        // 400, 403, 404, 413, unexpected redirects and the like: the same request would get the
        // same answer, so retrying only delays the dead letter.
        _ => Verdict::Rejected {
            reason: summary(status, body),
        },
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ItemsOrProblem {
    Items(Vec<BatchItem>),
    Problem(Problem),
}

fn items(body: &Body) -> Result<Vec<BatchItem>, String> {
    parse::<Vec<BatchItem>>(body)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Body) -> Result<T, String> {
    match body {
        Body::Read(bytes) => {
            serde_json::from_slice(bytes).map_err(|e| format!("a body that is not Nakadi's ({e})"))
        }
        Body::TooLarge => Err(format!("a body over {MAX_BODY_BYTES} bytes")),
        Body::Broken(e) => Err(format!("a body that broke off ({e})")),
    }
}

/// A one-line reason for a whole-request failure: the Problem's title and detail when the body
/// is one, else the status and the start of the body.
pub(crate) fn summary(status: u16, body: &Body) -> String {
    match parse::<Problem>(body) {
        Ok(p) if p.title.is_some() || p.detail.is_some() => problem_reason(status, &p),
        _ => {
            let head = status_line(status);
            match body {
                Body::Read(b) if !b.is_empty() => {
                    let text = String::from_utf8_lossy(&b[..b.len().min(200)]);
                    let text: String = text.chars().filter(|c| !c.is_control()).collect();
                    format!("{head}: {}", text.trim())
                }
                _ => head,
            }
        }
    }
}

fn problem_reason(status: u16, p: &Problem) -> String {
    let title = p.title.clone().unwrap_or_else(|| status_line(status));
    match &p.detail {
        Some(detail) if !detail.trim().is_empty() => format!("{title}: {detail}"),
        _ => title,
    }
}

pub(crate) fn status_line(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match reason {
        Some(r) => format!("{status} {r}"),
        None => status.to_string(),
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110), capped at [`MAX_RETRY_AFTER`].
/// Anything else is ignored: the normal backoff applies.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Some(at) = http_date(value) {
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        return None;
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date format servers may send.
fn http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let [_weekday, day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = match *month {
        "Jan" => Month::January,
        "Feb" => Month::February,
        "Mar" => Month::March,
        "Apr" => Month::April,
        "May" => Month::May,
        "Jun" => Month::June,
        "Jul" => Month::July,
        "Aug" => Month::August,
        "Sep" => Month::September,
        "Oct" => Month::October,
        "Nov" => Month::November,
        "Dec" => Month::December,
        _ => return None,
    };
    let date = Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let mut hms = clock.split(':').map(|p| p.parse::<u8>().ok());
    let (Some(Some(h)), Some(Some(m)), Some(Some(s)), None) =
        (hms.next(), hms.next(), hms.next(), hms.next())
    else {
        return None;
    };
    let time = Time::from_hms(h, m, s).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> Body {
        Body::Read(Bytes::copy_from_slice(s.as_bytes()))
    }

    const EID_A: &str = "11111111-1111-4111-8111-111111111111";
    const EID_B: &str = "22222222-2222-4222-8222-222222222222";

    fn is_retry(v: &Verdict, want: RetryReason) -> bool {
        matches!(v, Verdict::Retry { reason, .. } if *reason == want)
    }

    #[test]
    fn statuses_map_to_the_failure_table() {
        let empty = read("");
        let cases: &[(u16, &str)] = &[
            (200, "delivered"),
            (201, "delivered"),
            (202, "delivered"),
            (204, "delivered"),
            (301, "rejected"),
            (400, "rejected"),
            (401, "unauthorized"),
            (403, "rejected"),
            (404, "rejected"),
            (408, "timeout"),
            (409, "rejected"),
            (413, "rejected"),
            (429, "rate_limited"),
            (500, "server_error"),
            (502, "server_error"),
            (503, "server_error"),
            (504, "server_error"),
            (599, "server_error"),
        ];
        for &(status, want) in cases {
            let got = match classify(status, None, &empty) {
                Verdict::Delivered => "delivered",
                Verdict::Rejected { .. } => "rejected",
                Verdict::Retry { reason, .. } => reason.label(),
                other => panic!("{status}: {other:?}"),
            };
            assert_eq!(got, want, "status {status}");
        }
    }

    #[test]
    fn a_200_is_delivered_whatever_its_body() {
        for body in [
            read("garbage"),
            Body::TooLarge,
            Body::Broken("reset".into()),
        ] {
            assert_eq!(classify(200, None, &body), Verdict::Delivered);
        }
    }

    #[test]
    fn partial_207_lists_each_item() {
        let body = read(&format!(
            r#"[{{"eid":"{EID_A}","publishing_status":"submitted","step":"none"}},
                {{"eid":"{EID_B}","publishing_status":"failed","step":"publishing","detail":"broker down"}}]"#
        ));
        let Verdict::Partial(items) = classify(207, None, &body) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].eid(), Some(EID_A.parse().unwrap()));
        assert_eq!(items[0].publishing_status, PublishingStatus::Submitted);
        assert_eq!(items[1].publishing_status, PublishingStatus::Failed);
        assert_eq!(items[1].reason(), "broker down");
    }

    #[test]
    fn unknown_item_status_is_kept_as_unknown() {
        let body = read(&format!(
            r#"[{{"eid":"{EID_A}","publishing_status":"queued"}}]"#
        ));
        let Verdict::Partial(items) = classify(207, None, &body) else {
            panic!()
        };
        assert_eq!(items[0].publishing_status, PublishingStatus::Unknown);
    }

    #[test]
    fn malformed_207_bodies_retry_everything_as_server_error() {
        let bad = [
            read(""),
            read("not json"),
            read(r#"{"title":"odd"}"#),
            read(r#"[{"eid":"x"}]"#),
            read(r#"[{"publishing_status":7}]"#),
            Body::TooLarge,
            Body::Broken("connection reset".into()),
        ];
        for body in bad {
            let v = classify(207, None, &body);
            assert!(is_retry(&v, RetryReason::ServerError), "{body:?} → {v:?}");
        }
    }

    #[test]
    fn invalid_422_with_items() {
        let body = read(&format!(
            r##"[{{"eid":"{EID_A}","publishing_status":"failed","step":"validating","detail":"#/data: missing"}},
                {{"eid":"{EID_B}","publishing_status":"aborted","step":"none"}}]"##
        ));
        let Verdict::Invalid(items) = classify(422, None, &body) else {
            panic!()
        };
        assert_eq!(items[0].reason(), "#/data: missing");
        assert_eq!(items[1].publishing_status, PublishingStatus::Aborted);
    }

    #[test]
    fn item_reason_without_detail_names_the_step() {
        let item = BatchItem {
            eid: None,
            publishing_status: PublishingStatus::Failed,
            step: Some("enriching".into()),
            detail: None,
        };
        assert!(item.reason().contains("enriching"));
    }

    #[test]
    fn unparseable_eid_matches_nothing() {
        let item = BatchItem {
            eid: Some("not-a-uuid".into()),
            publishing_status: PublishingStatus::Submitted,
            step: None,
            detail: None,
        };
        assert_eq!(item.eid(), None);
    }

    #[test]
    fn problem_422_is_rejected_with_title_and_detail() {
        let body = read(
            r#"{"type":"http://httpstatus.es/422","title":"Unprocessable Entity","status":422,"detail":"event type is not a data change type"}"#,
        );
        assert_eq!(
            classify(422, None, &body),
            Verdict::Rejected {
                reason: "Unprocessable Entity: event type is not a data change type".into()
            }
        );
    }

    #[test]
    fn malformed_422_is_a_server_error() {
        for body in [read("<html>bad gateway</html>"), read(""), Body::TooLarge] {
            let v = classify(422, None, &body);
            assert!(is_retry(&v, RetryReason::ServerError), "{body:?} → {v:?}");
        }
    }

    #[test]
    fn rejections_carry_problem_or_body_text() {
        let forbidden = read(r#"{"title":"Forbidden","status":403,"detail":"no write scope"}"#);
        assert_eq!(
            classify(403, None, &forbidden),
            Verdict::Rejected {
                reason: "Forbidden: no write scope".into()
            }
        );
        let not_found = read(r#"{"title":"Not Found","status":404}"#);
        assert_eq!(
            classify(404, None, &not_found),
            Verdict::Rejected {
                reason: "Not Found".into()
            }
        );
        // Not a Problem: the status and the start of the body, on one line.
        let html = read("<html>\n<b>bad request</b></html>");
        assert_eq!(
            classify(400, None, &html),
            Verdict::Rejected {
                reason: "400 Bad Request: <html><b>bad request</b></html>".into()
            }
        );
        let long = read(&"x".repeat(5000));
        let Verdict::Rejected { reason } = classify(400, None, &long) else {
            panic!()
        };
        assert!(reason.len() < 300, "{reason}");
        assert_eq!(
            classify(404, None, &Body::TooLarge),
            Verdict::Rejected {
                reason: "404 Not Found".into()
            }
        );
    }

    #[test]
    fn retry_after_is_passed_on() {
        let v = classify(503, Some(Duration::from_secs(2)), &read(""));
        assert_eq!(
            v,
            Verdict::Retry {
                reason: RetryReason::ServerError,
                detail: "503 Service Unavailable".into(),
                retry_after: Some(Duration::from_secs(2)),
            }
        );
        let v = classify(429, Some(Duration::from_secs(7)), &read(""));
        assert!(
            matches!(v, Verdict::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 06 Nov 1994 08:49:37
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        for junk in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 31 Feb 1994 08:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }
}

/// Whatever comes back from the network: no panic, and the verdict is the failure table's.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| Body::Read(Bytes::from(b))),
            4 => any::<String>().prop_map(|s| Body::Read(Bytes::from(s))),
            2 => items_json().prop_map(|(_, text)| Body::Read(Bytes::from(text))),
            1 => Just(Body::TooLarge),
            1 => any::<String>().prop_map(Body::Broken),
        ]
    }

    /// A 207/422 item array as Nakadi writes it, and the items it must parse into.
    fn items_json() -> impl Strategy<Value = (Vec<BatchItem>, String)> {
        let status = prop_oneof![
            Just(("submitted".to_owned(), PublishingStatus::Submitted)),
            Just(("failed".to_owned(), PublishingStatus::Failed)),
            Just(("aborted".to_owned(), PublishingStatus::Aborted)),
            "[a-z]{1,10}"
                .prop_filter("a known status", |s| {
                    !["submitted", "failed", "aborted"].contains(&s.as_str())
                })
                .prop_map(|s| (s, PublishingStatus::Unknown)),
        ];
        let item = (
            prop::option::of(any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string())),
            status,
            prop::option::of(any::<String>()),
            prop::option::of(any::<String>()),
        );
        prop::collection::vec(item, 0..8).prop_map(|items| {
            let mut parsed = Vec::new();
            let mut wire = Vec::new();
            for (eid, (text, status), step, detail) in items {
                let mut w = json!({"publishing_status": text});
                for (key, value) in [("eid", &eid), ("step", &step), ("detail", &detail)] {
                    if let Some(v) = value {
                        w[key] = json!(v);
                    }
                }
                wire.push(w);
                parsed.push(BatchItem {
                    eid,
                    publishing_status: status,
                    step,
                    detail,
                });
            }
            (parsed, serde_json::to_string(&wire).unwrap())
        })
    }

    fn imf_fixdate(t: time::OffsetDateTime) -> String {
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        t.format(&format).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_answer_gets_the_verdict_of_the_failure_table(
            status in 0u16..1000,
            retry_after in prop::option::of(0u64..400),
            body in body(),
        ) {
            let retry_after = retry_after.map(Duration::from_secs);
            let verdict = classify(status, retry_after, &body);
            let retry_reason = match &verdict {
                Verdict::Retry { reason, retry_after: r, detail } => {
                    prop_assert_eq!(*r, retry_after);
                    prop_assert!(!detail.is_empty());
                    Some(*reason)
                }
                _ => None,
            };
            match status {
                207 => prop_assert!(
                    matches!(verdict, Verdict::Partial(_))
                        || retry_reason == Some(RetryReason::ServerError),
                    "{:?}", verdict
                ),
                200..=299 => prop_assert_eq!(&verdict, &Verdict::Delivered),
                401 => prop_assert_eq!(retry_reason, Some(RetryReason::Unauthorized)),
                408 => prop_assert_eq!(retry_reason, Some(RetryReason::Timeout)),
                429 => prop_assert_eq!(retry_reason, Some(RetryReason::RateLimited)),
                422 => prop_assert!(
                    matches!(verdict, Verdict::Invalid(_) | Verdict::Rejected { .. })
                        || retry_reason == Some(RetryReason::ServerError),
                    "{:?}", verdict
                ),
                500..=599 => prop_assert_eq!(retry_reason, Some(RetryReason::ServerError)),
                _ => prop_assert!(
                    matches!(&verdict, Verdict::Rejected { reason } if !reason.is_empty()),
                    "{:?}", verdict
                ),
            }
        }

        #[test]
        fn item_arrays_as_nakadi_writes_them_parse_back_exactly((items, text) in items_json()) {
            let body = Body::Read(Bytes::from(text));
            prop_assert_eq!(classify(207, None, &body), Verdict::Partial(items.clone()));
            prop_assert_eq!(classify(422, None, &body), Verdict::Invalid(items.clone()));
            for item in &items {
                let eid = item.eid.as_deref().map(|e| Uuid::parse_str(e).unwrap());
                prop_assert_eq!(item.eid(), eid);
                prop_assert!(!item.reason().trim().is_empty());
            }
        }

        /// A reason built from a body that is not a Problem is one short line, whatever the
        /// body: it goes into every DLQ message and log line of the request.
        #[test]
        fn reasons_from_foreign_bodies_are_one_short_line(
            status in 400u16..600,
            bytes in prop::collection::vec(any::<u8>(), 0..5000),
        ) {
            let body = Body::Read(Bytes::from(bytes));
            prop_assume!(!matches!(parse::<Problem>(&body), Ok(p) if p.title.is_some() || p.detail.is_some()));
            let reason = summary(status, &body);
            prop_assert!(reason.len() <= 60 + 3 * 200, "{} bytes", reason.len());
            prop_assert!(!reason.chars().any(char::is_control), "{:?}", reason);
        }

        #[test]
        fn retry_after_never_panics_and_never_exceeds_the_cap(value in any::<String>()) {
            if let Some(wait) = parse_retry_after(&value, SystemTime::now()) {
                prop_assert!(wait <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn retry_after_round_trips_seconds_and_dates(
            secs in any::<u64>(),
            now in 0i64..253_402_300_000,
            ahead in -1000i64..1000,
        ) {
            let now_time = SystemTime::UNIX_EPOCH + Duration::from_secs(now as u64);
            prop_assert_eq!(
                parse_retry_after(&secs.to_string(), now_time),
                Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
            );
            let at = time::OffsetDateTime::from_unix_timestamp(now + ahead).unwrap();
            prop_assume!(at.year() >= 1 && at.year() <= 9999);
            prop_assert_eq!(
                parse_retry_after(&imf_fixdate(at), now_time),
                Some(Duration::from_secs(ahead.max(0) as u64).min(MAX_RETRY_AFTER))
            );
        }
    }
}

//! The dead-letter message body of DESIGN.md, and its encoding for SQS:
//! `{"event": <the Nakadi event>, "event_type", "source": {"kind": "stream_record", stream_arn,
//! shard_id, sequence_number, event_id}, "failure": {reason, status, attempts, first_failed_at,
//! last_failed_at}}`; an item of the `snapshot` command has `"source": {"kind": "snapshot_item",
//! table_arn, segment, event_id}`. Letters written before `kind` existed are still read.
//! A stream record that could not become an event carries `"record": <the raw stream record>`
//! instead of `event`: the re-drain loop cannot publish it, so the queue's redrive policy moves it
//! to the parking queue where an operator looks at it.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::nakadi::Failure;
use crate::transform::{Event, TransformFailure};

/// One message for the DLQ, its body already serialized.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: String,
    /// Metric label and message attribute: rejected, retries_exhausted, too_large, malformed_record.
    pub reason: &'static str,
    pub event_type: String,
    pub eid: Option<String>,
    /// Where the record came from, for error messages.
    pub origin: String,
}

/// Where a dead letter's record came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A record of a table's stream.
    Stream {
        stream_arn: &'a str,
        shard_id: &'a str,
    },
    /// An item the `snapshot` command scanned, in one Scan segment.
    Snapshot { table_arn: &'a str, segment: u32 },
}

impl Origin<'_> {
    fn source(self, sequence_number: Option<&str>, event_id: Option<&str>) -> Source {
        let event_id = event_id.map(str::to_owned);
        match self {
            Origin::Stream {
                stream_arn,
                shard_id,
            } => Source::StreamRecord {
                stream_arn: stream_arn.to_owned(),
                shard_id: shard_id.to_owned(),
                sequence_number: sequence_number.map(str::to_owned),
                event_id,
            },
            Origin::Snapshot { table_arn, segment } => Source::SnapshotItem {
                table_arn: table_arn.to_owned(),
                segment,
                event_id,
            },
        }
    }

    fn describe(self, sequence_number: Option<&str>) -> String {
        match (self, sequence_number) {
            (Origin::Stream { shard_id, .. }, Some(seq)) => {
                format!("shard {shard_id}, sequence number {seq}")
            }
            (Origin::Stream { shard_id, .. }, None) => {
                format!("shard {shard_id}, no sequence number")
            }
            (Origin::Snapshot { segment, .. }, _) => format!("snapshot segment {segment}"),
        }
    }
}

/// The body's `source`: what the record was, by `kind`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "SourceFields")]
pub enum Source {
    StreamRecord {
        stream_arn: String,
        shard_id: String,
        sequence_number: Option<String>,
        event_id: Option<String>,
    },
    SnapshotItem {
        table_arn: String,
        segment: u32,
        event_id: Option<String>,
    },
}

/// The snapshot's letters before `kind` existed: this shard id, the table's ARN as
/// `stream_arn`, and `segment-<n>` as `sequence_number`.
const LEGACY_SNAPSHOT_SHARD: &str = "snapshot";

/// `source` as any version wrote it.
#[derive(Deserialize)]
struct SourceFields {
    kind: Option<String>,
    stream_arn: Option<String>,
    shard_id: Option<String>,
    sequence_number: Option<String>,
    event_id: Option<String>,
    table_arn: Option<String>,
    segment: Option<u32>,
}

impl TryFrom<SourceFields> for Source {
    type Error = String;

    fn try_from(f: SourceFields) -> Result<Source, String> {
        let missing = |field: &str| format!("source has no {field}");
        let legacy_snapshot =
            f.kind.is_none() && f.shard_id.as_deref() == Some(LEGACY_SNAPSHOT_SHARD);
        match f.kind.as_deref() {
            Some("snapshot_item") => Ok(Source::SnapshotItem {
                table_arn: f.table_arn.ok_or_else(|| missing("table_arn"))?,
                segment: f.segment.ok_or_else(|| missing("segment"))?,
                event_id: f.event_id,
            }),
            None if legacy_snapshot => Ok(Source::SnapshotItem {
                table_arn: f.stream_arn.ok_or_else(|| missing("stream_arn"))?,
                segment: f
                    .sequence_number
                    .as_deref()
                    .and_then(|s| s.strip_prefix("segment-")?.parse().ok())
                    .ok_or_else(|| missing("segment-<n> as sequence_number"))?,
                event_id: f.event_id,
            }),
            Some("stream_record") | None => Ok(Source::StreamRecord {
                stream_arn: f.stream_arn.ok_or_else(|| missing("stream_arn"))?,
                shard_id: f.shard_id.ok_or_else(|| missing("shard_id"))?,
                sequence_number: f.sequence_number,
                event_id: f.event_id,
            }),
            Some(other) => Err(format!("source of unknown kind {other:?}")),
        }
    }
}

impl Source {
    fn event_id(&self) -> Option<&str> {
        match self {
            Source::StreamRecord { event_id, .. } | Source::SnapshotItem { event_id, .. } => {
                event_id.as_deref()
            }
        }
    }

    /// The sequence number the event was published with: a snapshot event's is its segment.
    fn sequence_number(&self) -> String {
        match self {
            Source::StreamRecord {
                sequence_number, ..
            } => sequence_number.clone().unwrap_or_default(),
            Source::SnapshotItem { segment, .. } => format!("segment-{segment}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct FailureInfo {
    pub reason: String,
    pub status: Option<u16>,
    pub attempts: u32,
    pub first_failed_at: String,
    pub last_failed_at: String,
}

#[derive(Serialize, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub record: Option<&'a RawValue>,
    pub event_type: String,
    pub source: Source,
    pub failure: FailureInfo,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("UTC time formats as RFC 3339")
}

impl DeadLetter {
    /// An event Nakadi finally did not take.
    pub fn from_event(
        origin: Origin<'_>,
        event_type: &str,
        event: &Event,
        failure: &Failure,
    ) -> DeadLetter {
        let raw: &RawValue =
            serde_json::from_slice(event.body()).expect("events are serialized JSON objects");
        let message = Message {
            event: Some(raw),
            record: None,
            event_type: event_type.to_owned(),
            source: origin.source(Some(event.sequence_number()), Some(event.event_id())),
            failure: FailureInfo {
                reason: failure.reason.clone(),
                status: failure.status,
                attempts: failure.attempts,
                first_failed_at: rfc3339(failure.first_failed_at),
                last_failed_at: rfc3339(failure.last_failed_at),
            },
        };
        DeadLetter {
            body: serde_json::to_string(&message).expect("message serializes"),
            reason: failure.kind.label(),
            event_type: event_type.to_owned(),
            eid: Some(event.eid.to_string()),
            origin: origin.describe(Some(event.sequence_number())),
        }
    }

    /// A stream record that could not become an event. The record is kept as it came when it is
    /// JSON, else as a string, so nothing of it is lost.
    pub fn malformed(
        origin: Origin<'_>,
        event_type: &str,
        raw_record: &str,
        failure: &TransformFailure,
    ) -> DeadLetter {
        let as_string;
        let record: &RawValue = match serde_json::from_str(raw_record) {
            Ok(raw) => raw,
            Err(_) => {
                as_string =
                    serde_json::value::to_raw_value(raw_record).expect("a string serializes");
                &as_string
            }
        };
        let now = rfc3339(OffsetDateTime::now_utc());
        let message = Message {
            event: None,
            record: Some(record),
            event_type: event_type.to_owned(),
            source: origin.source(
                failure.sequence_number.as_deref(),
                failure.event_id.as_deref(),
            ),
            failure: FailureInfo {
                reason: failure.error.to_string(),
                status: None,
                attempts: 0,
                first_failed_at: now.clone(),
                last_failed_at: now,
            },
        };
        DeadLetter {
            body: serde_json::to_string(&message).expect("message serializes"),
            reason: "malformed_record",
            event_type: event_type.to_owned(),
            eid: None,
            origin: origin.describe(failure.sequence_number.as_deref()),
        }
    }

    /// Names the record for an operator: eid (when it became an event), shard, sequence number.
    pub fn describe(&self) -> String {
        let mut text = match &self.eid {
            Some(eid) => format!("eid {eid}, "),
            None => String::new(),
        };
        text.push_str(&self.origin);
        text
    }
}

/// The value of the `content-encoding` message attribute of compressed bodies.
pub const GZIP: &str = "gzip";

/// Compresses a body too large for the queue: gzip, then base64, since SQS bodies are text.
pub fn encode_gzip(body: &str) -> String {
    let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::default());
    gz.write_all(body.as_bytes())
        .expect("writing to memory cannot fail");
    BASE64.encode(gz.finish().expect("writing to memory cannot fail"))
}

pub fn decode_gzip(body: &str) -> Result<String, String> {
    let compressed = BASE64
        .decode(body.trim())
        .map_err(|e| format!("gzip body is not base64: {e}"))?;
    let mut out = String::new();
    GzDecoder::new(&compressed[..])
        .read_to_string(&mut out)
        .map_err(|e| format!("gzip body does not decompress: {e}"))?;
    Ok(out)
}

/// The SQS Extended Client Library's pointer to a payload in S3: what the queue carries instead
/// of a letter that does not fit it even gzip-compressed (the letter itself, plain JSON, is the
/// object). The format is the library's, so its Java and Python clients (and tools built on them)
/// read such a message as the letter:
///
/// - body:
///   `["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"…","s3Key":"…"}]`,
///   Jackson's default typing of the class `PayloadS3Pointer`
///   (awslabs/payload-offloading-java-common-lib-for-aws, `PayloadS3Pointer.java` and
///   `JsonDataConverter.java`: `enableDefaultTyping(NON_FINAL)` writes `[class name, object]`);
///   the Python client (awslabs/amazon-sqs-python-extended-client-lib, `client.py`) writes the
///   same list with `MESSAGE_POINTER_CLASS`, and reads the legacy class
///   `com.amazon.sqs.javamessaging.MessageS3Pointer` too.
/// - message attribute `ExtendedPayloadSize` (DataType `Number`): the payload's size in bytes;
///   both clients recognise a pointer by it (`RESERVED_ATTRIBUTE_NAME` in
///   awslabs/amazon-sqs-java-extended-client-lib `SQSExtendedClientConstants.java` and in the
///   Python `client.py`; older versions used `SQSLargePayloadSize`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Pointer {
    #[serde(rename = "s3BucketName")]
    pub bucket: String,
    #[serde(rename = "s3Key")]
    pub key: String,
}

/// The class name that opens a pointer body.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The class name of pointers written by version 1 of the Java library, still read by its
/// successors.
const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";
/// The message attribute of a pointer: the payload's size in bytes.
pub const EXTENDED_PAYLOAD_SIZE: &str = "ExtendedPayloadSize";

impl S3Pointer {
    /// The message body, exactly as the Java library writes it (no white space).
    pub fn to_body(&self) -> String {
        serde_json::to_string(&(POINTER_CLASS, self)).expect("a pointer serializes")
    }

    /// `None` when `body` is no pointer: a dead-letter body is a JSON object and a gzip one is
    /// base64, neither starts with `[`. `Some(Err)`: it looks like one but is not readable.
    pub fn from_body(body: &str) -> Option<Result<S3Pointer, String>> {
        if !body.trim_start().starts_with('[') {
            return None;
        }
        Some(match serde_json::from_str::<(String, S3Pointer)>(body) {
            Ok((class, pointer)) if class == POINTER_CLASS || class == LEGACY_POINTER_CLASS => {
                Ok(pointer)
            }
            Ok((class, _)) => Err(format!(
                "a pointer of class {class:?}, not an SQS Extended Client Library pointer"
            )),
            Err(e) => Err(format!("not an SQS Extended Client Library pointer: {e}")),
        })
    }

    /// Where a letter too large for the queue goes in the bucket:
    /// `dead-letters/<event type>/<eid>/<random UUID>.json` (`no-eid` for a stream record that
    /// could not become an event). The eid makes an event's objects easy to find; the random
    /// part makes every write its own object, so a letter sent twice (a retried send, a record
    /// read again after a crash) never shares an object with another message, whose re-drain
    /// would delete it from under this one. Characters outside `A-Z a-z 0-9 . _ -` of the event
    /// type become `_` (Nakadi's names have none).
    pub fn key_for(letter: &DeadLetter) -> String {
        let event_type: String = letter
            .event_type
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{OBJECT_PREFIX}{event_type}/{}/{}.json",
            letter.eid.as_deref().unwrap_or("no-eid"),
            uuid::Uuid::new_v4()
        )
    }
}

/// The prefix of every object the relay puts to the bucket (lifecycle rules and IAM use it).
pub const OBJECT_PREFIX: &str = "dead-letters/";

/// What the re-drain loop can publish again from a message body.
pub fn event_from_body(body: &str) -> Result<(String, Event), String> {
    let message: Message<'_> =
        serde_json::from_str(body).map_err(|e| format!("not a dead-letter message: {e}"))?;
    let Some(raw) = message.event else {
        return Err(format!(
            "holds a stream record that could not become an event ({})",
            message.failure.reason
        ));
    };
    #[derive(Deserialize)]
    struct Meta {
        eid: uuid::Uuid,
    }
    #[derive(Deserialize)]
    struct Envelope {
        metadata: Meta,
    }
    let envelope: Envelope = serde_json::from_str(raw.get())
        .map_err(|e| format!("event has no valid metadata.eid: {e}"))?;
    let event = Event::new(
        envelope.metadata.eid,
        raw.get().as_bytes(),
        message.source.event_id().unwrap_or_default(),
        &message.source.sequence_number(),
        0,
    );
    Ok((message.event_type, event))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::nakadi::FailureKind;

    pub(super) fn stream(shard_id: &str) -> Origin<'_> {
        Origin::Stream {
            stream_arn: "arn:s",
            shard_id,
        }
    }

    fn event() -> Event {
        let body = r#"{"metadata":{"eid":"5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f","occurred_at":"2026-11-22T06:16:10.123Z"},"data_op":"C","data_type":"t","data":{"item":{"n":12345678901234567890123456789012345678},"patch":[]}}"#;
        Event::new(
            "5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f".parse().unwrap(),
            body.as_bytes(),
            "e1",
            "100",
            0,
        )
    }

    fn failure() -> Failure {
        Failure {
            kind: FailureKind::Rejected,
            reason: "schema mismatch".into(),
            status: Some(422),
            attempts: 1,
            first_failed_at: OffsetDateTime::UNIX_EPOCH,
            last_failed_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn event_round_trips_through_the_message_exactly() {
        let letter = DeadLetter::from_event(stream("shard-1"), "et", &event(), &failure());
        assert_eq!(letter.reason, "rejected");
        assert_eq!(
            letter.describe(),
            "eid 5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f, shard shard-1, sequence number 100"
        );
        let v: serde_json::Value = serde_json::from_str(&letter.body).unwrap();
        assert_eq!(v["source"]["shard_id"], "shard-1");
        assert_eq!(v["failure"]["status"], 422);
        assert_eq!(v["failure"]["first_failed_at"], "1970-01-01T00:00:00Z");
        let (event_type, back) = event_from_body(&letter.body).unwrap();
        assert_eq!(event_type, "et");
        // Byte for byte: the 38-digit number and the eid are what was first published.
        assert_eq!(back.body(), event().body());
        assert_eq!(back.eid, event().eid);
        assert_eq!(back.sequence_number(), "100");
    }

    #[test]
    fn the_s3_pointer_is_the_extended_client_format() {
        let pointer = S3Pointer {
            bucket: "orders-relay-dead-letters".into(),
            key: "dead-letters/et/5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f/x.json".into(),
        };
        assert_eq!(
            pointer.to_body(),
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"orders-relay-dead-letters","s3Key":"dead-letters/et/5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f/x.json"}]"#
        );
        assert_eq!(S3Pointer::from_body(&pointer.to_body()), Some(Ok(pointer)));
        // As the Python client writes it (json.dumps: spaces), and the legacy Java class.
        for body in [
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]"#,
            r#" ["com.amazon.sqs.javamessaging.MessageS3Pointer",{"s3Key":"k","s3BucketName":"b","extra":1}]"#,
        ] {
            assert_eq!(
                S3Pointer::from_body(body),
                Some(Ok(S3Pointer {
                    bucket: "b".into(),
                    key: "k".into()
                })),
                "{body}"
            );
        }
        for broken in [
            r#"["java.lang.String",{"s3BucketName":"b","s3Key":"k"}]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b"}]"#,
            "[1, 2, 3]",
        ] {
            assert!(
                matches!(S3Pointer::from_body(broken), Some(Err(_))),
                "{broken}"
            );
        }
        let letter = DeadLetter::from_event(stream("shard-1"), "et", &event(), &failure());
        assert_eq!(S3Pointer::from_body(&letter.body), None);
        assert_eq!(S3Pointer::from_body(&encode_gzip(&letter.body)), None);
    }

    #[test]
    fn object_keys_name_the_event_type_and_eid_and_are_unique() {
        let mut letter = DeadLetter::from_event(
            stream("shard-1"),
            "payments.order-changed",
            &event(),
            &failure(),
        );
        let key = S3Pointer::key_for(&letter);
        let rest = key
            .strip_prefix(
                "dead-letters/payments.order-changed/5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f/",
            )
            .unwrap_or_else(|| panic!("{key}"));
        let id = rest.strip_suffix(".json").unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{key}");
        assert_ne!(S3Pointer::key_for(&letter), key);
        letter.eid = None;
        letter.event_type = "odd type/x".into();
        assert!(
            S3Pointer::key_for(&letter).starts_with("dead-letters/odd_type_x/no-eid/"),
            "{}",
            S3Pointer::key_for(&letter)
        );
    }

    #[test]
    fn gzip_round_trip() {
        let body = "x".repeat(100_000);
        let encoded = encode_gzip(&body);
        assert!(encoded.len() < 2_000);
        assert_eq!(decode_gzip(&encoded).unwrap(), body);
        assert!(decode_gzip("not base64!").is_err());
    }

    #[test]
    fn malformed_records_are_kept_but_not_republished() {
        let failure = TransformFailure {
            sequence_number: Some("7".into()),
            event_id: None,
            error: crate::transform::TransformError::Malformed("no eventID".into()),
        };
        for raw in [r#"{"dynamodb":{}}"#, "not json at all"] {
            let letter = DeadLetter::malformed(stream("s"), "et", raw, &failure);
            assert_eq!(letter.reason, "malformed_record");
            assert_eq!(letter.describe(), "shard s, sequence number 7");
            let v: serde_json::Value = serde_json::from_str(&letter.body).unwrap();
            assert!(v.get("event").is_none());
            assert_eq!(v["source"]["sequence_number"], "7");
            assert!(
                event_from_body(&letter.body)
                    .unwrap_err()
                    .contains("could not become an event")
            );
        }
    }
    /// Letters queued or parked by versions before `source.kind`, as they wrote them.
    const V1_STREAM_EVENT: &str = include_str!("../../tests/fixtures/dlq/stream-event-v1.json");
    const V1_SNAPSHOT_EVENT: &str = include_str!("../../tests/fixtures/dlq/snapshot-event-v1.json");
    const V1_MALFORMED_RECORD: &str =
        include_str!("../../tests/fixtures/dlq/malformed-record-v1.json");

    fn source_of(body: &str) -> Source {
        serde_json::from_str::<Message<'_>>(body).unwrap().source
    }

    #[test]
    fn letters_written_before_the_source_kind_are_still_read() {
        assert_eq!(
            source_of(V1_STREAM_EVENT),
            Source::StreamRecord {
                stream_arn: "arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/2026-11-01T00:00:00.000".into(),
                shard_id: "shardId-00000001700000000000-abcdef01".into(),
                sequence_number: Some("4000000000000000000001".into()),
                event_id: Some("c81e728d9d4c2f636f067f89cc14862c".into()),
            }
        );
        assert_eq!(
            source_of(V1_SNAPSHOT_EVENT),
            Source::SnapshotItem {
                table_arn: "arn:aws:dynamodb:eu-central-1:123456789012:table/orders".into(),
                segment: 3,
                event_id: Some("snapshot|orders|ord-2".into()),
            }
        );
        let (event_type, event) = event_from_body(V1_STREAM_EVENT).unwrap();
        assert_eq!(event_type, "payments.order-changed");
        assert_eq!(
            event.eid.to_string(),
            "5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f"
        );
        assert_eq!(event.sequence_number(), "4000000000000000000001");
        assert_eq!(event.event_id(), "c81e728d9d4c2f636f067f89cc14862c");
        let stored: Value = serde_json::from_str(V1_STREAM_EVENT).unwrap();
        let body: Value = serde_json::from_slice(event.body()).unwrap();
        assert_eq!(body, stored["event"], "the event is re-published as it was");
        let (_, event) = event_from_body(V1_SNAPSHOT_EVENT).unwrap();
        assert_eq!(event.sequence_number(), "segment-3");
        assert_eq!(event.event_id(), "snapshot|orders|ord-2");
        let malformed = event_from_body(V1_MALFORMED_RECORD).unwrap_err();
        assert!(
            malformed.contains("could not become an event"),
            "{malformed}"
        );
    }

    #[test]
    fn a_snapshot_items_letter_names_its_table_and_segment_not_a_shard() {
        let origin = Origin::Snapshot {
            table_arn: "arn:aws:dynamodb:eu-central-1:123456789012:table/orders",
            segment: 3,
        };
        let letter = DeadLetter::from_event(origin, "et", &event(), &failure());
        let body: Value = serde_json::from_str(&letter.body).unwrap();
        assert_eq!(
            body["source"],
            serde_json::json!({
                "kind": "snapshot_item",
                "table_arn": "arn:aws:dynamodb:eu-central-1:123456789012:table/orders",
                "segment": 3,
                "event_id": "e1",
            })
        );
        assert!(
            letter.describe().ends_with("snapshot segment 3"),
            "{}",
            letter.describe()
        );
        let stream = DeadLetter::from_event(stream("shard-1"), "et", &event(), &failure());
        let body: Value = serde_json::from_str(&stream.body).unwrap();
        assert_eq!(body["source"]["kind"], "stream_record");
        assert_eq!(body["source"]["shard_id"], "shard-1");
        let unknown = V1_STREAM_EVENT.replace(r#""source":{"#, r#""source":{"kind":"table_scan","#);
        let err = event_from_body(&unknown).unwrap_err();
        assert!(err.contains("unknown kind"), "{err}");
    }
}

/// What the re-drain loop reads back is what was written, and what it cannot read is refused
/// without a panic (one bad message must not stop the loop for all the others).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::tests::stream;
    use super::*;
    use crate::nakadi::FailureKind;

    /// An event body as the transform writes it: `metadata.eid` and any data, numbers with
    /// their exact digits.
    fn event() -> impl Strategy<Value = Event> {
        let leaf = prop_oneof![
            any::<String>().prop_map(Value::String),
            "-?[1-9][0-9]{0,37}(\\.[0-9]{1,10})?(E[+-]?[0-9]{1,3})?"
                .prop_map(|n| serde_json::from_str(&n).unwrap()),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        let data = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        (any::<u128>(), data, any::<String>(), any::<String>()).prop_map(
            |(eid, item, sequence_number, event_id)| {
                let eid = Uuid::from_u128(eid);
                let body = json!({"metadata": {"eid": eid, "occurred_at": "2026-11-22T06:16:10.123Z"},
                                  "data_op": "U", "data_type": "t", "data": {"item": item, "patch": []}});
                Event::new(
                    eid,
                    &serde_json::to_vec(&body).unwrap(),
                    &event_id,
                    &sequence_number,
                    0,
                )
            },
        )
    }

    fn failure() -> impl Strategy<Value = Failure> {
        (
            prop_oneof![
                Just(FailureKind::Rejected),
                Just(FailureKind::RetriesExhausted),
                Just(FailureKind::TooLarge),
                Just(FailureKind::Skipped),
            ],
            any::<String>(),
            prop::option::of(any::<u16>()),
            any::<u32>(),
            0i64..253_402_300_799,
        )
            .prop_map(|(kind, reason, status, attempts, at)| Failure {
                kind,
                reason,
                status,
                attempts,
                first_failed_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
                last_failed_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            })
    }

    /// Byte edits of a valid body: deletions, insertions and replacements at random places.
    fn garble(text: &str, edits: &[(usize, u8, u8)]) -> String {
        let mut b = text.as_bytes().to_vec();
        for &(at, op, byte) in edits {
            if b.is_empty() {
                break;
            }
            let at = at % b.len();
            match op % 3 {
                0 => {
                    b.remove(at);
                }
                1 => b.insert(at, byte),
                _ => b[at] = byte,
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    /// What the re-drain loop would publish from any body it gets: the event's own eid.
    fn check_any_body(body: &str) {
        if let Ok((_, event)) = event_from_body(body) {
            let v: Value = serde_json::from_slice(event.body()).expect("a published event is JSON");
            assert_eq!(
                v["metadata"]["eid"]
                    .as_str()
                    .and_then(|e| Uuid::parse_str(e).ok()),
                Some(event.eid),
                "{body}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn an_event_round_trips_through_its_dead_letter_byte_for_byte(
            event in event(),
            failure in failure(),
            shard in any::<String>(),
            event_type in any::<String>(),
        ) {
            let letter = DeadLetter::from_event(stream(&shard), &event_type, &event, &failure);
            prop_assert_eq!(letter.reason, failure.kind.label());
            prop_assert_eq!(letter.eid, Some(event.eid.to_string()));
            let (back_type, back) = event_from_body(&letter.body).unwrap();
            prop_assert_eq!(back_type, event_type);
            prop_assert_eq!(&back.body(), &event.body());
            prop_assert_eq!(back.eid, event.eid);
            prop_assert_eq!(back.sequence_number(), event.sequence_number());
            prop_assert_eq!(back.event_id(), event.event_id());
            let v: Value = serde_json::from_str(&letter.body).unwrap();
            prop_assert_eq!(&v["failure"]["reason"], &json!(failure.reason));
            prop_assert_eq!(&v["failure"]["status"], &json!(failure.status));
            prop_assert_eq!(&v["source"]["shard_id"], &json!(shard));
        }

        #[test]
        fn a_malformed_record_is_kept_whole(raw in prop_oneof![any::<String>(), event().prop_map(|e| String::from_utf8(e.body().to_vec()).unwrap())]) {
            let failure = TransformFailure {
                sequence_number: Some("7".into()),
                event_id: None,
                error: crate::transform::TransformError::Malformed("test".into()),
            };
            let letter = DeadLetter::malformed(stream("s"), "et", &raw, &failure);
            let v: Value = serde_json::from_str(&letter.body).unwrap();
            let kept = serde_json::from_str::<Value>(&raw).unwrap_or(Value::String(raw.clone()));
            prop_assert_eq!(&v["record"], &kept);
            prop_assert!(event_from_body(&letter.body).is_err());
        }

        #[test]
        fn gzip_round_trips_any_body(body in any::<String>()) {
            prop_assert_eq!(decode_gzip(&encode_gzip(&body)).unwrap(), body);
        }

        #[test]
        fn decoding_never_panics_on_any_text(body in any::<String>()) {
            check_any_body(&body);
            let _ = decode_gzip(&body);
            let _ = S3Pointer::from_body(&body);
        }

        #[test]
        fn decoding_never_panics_on_garbled_bodies(
            event in event(),
            failure in failure(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
        ) {
            let letter = DeadLetter::from_event(stream("s"), "et", &event, &failure);
            check_any_body(&garble(&letter.body, &edits));
            let _ = decode_gzip(&garble(&encode_gzip(&letter.body), &edits));
        }

        #[test]
        fn decoding_never_panics_on_odd_messages(
            event in prop_oneof![Just(None), Just(Some(json!(null))), Just(Some(json!("e"))), Just(Some(json!({"metadata": {}}))),
                                 Just(Some(json!({"metadata": {"eid": "not-a-uuid"}}))), Just(Some(json!({"metadata": {"eid": 5}}))),
                                 "[0-9a-fA-F-]{0,40}".prop_map(|e| Some(json!({"metadata": {"eid": e}})))],
            record in prop::option::of(Just(json!({"dynamodb": {}}))),
            status in prop_oneof![Just(json!(422)), Just(json!(null)), Just(json!(-1)), Just(json!(70000)), Just(json!("x"))],
            attempts in prop_oneof![Just(json!(1)), Just(json!(-1)), Just(json!(1e20)), Just(json!(null))],
            source in prop_oneof![Just(json!({"stream_arn": "a", "shard_id": "s"})), Just(json!({})), Just(json!(null)),
                                  Just(json!({"stream_arn": "a", "shard_id": "s", "sequence_number": 5}))],
        ) {
            let mut m = json!({"event_type": "et", "source": source,
                               "failure": {"reason": "r", "status": status, "attempts": attempts,
                                           "first_failed_at": "t", "last_failed_at": "t"}});
            if let Some(e) = event {
                m["event"] = e;
            }
            if let Some(r) = record {
                m["record"] = r;
            }
            check_any_body(&m.to_string());
        }
    }
}

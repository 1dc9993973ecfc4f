//! The dead-letter message body of DESIGN.md, and its encoding for SQS:
//! `{"event": <the Nakadi event>, "event_type", "source": {stream_arn, shard_id, sequence_number,
//! event_id}, "failure": {reason, status, attempts, first_failed_at, last_failed_at}}`.
//! A stream record that could not become an event carries `"record": <the raw stream record>`
//! instead of `event`: the re-drain loop cannot publish it, so the queue's redrive policy moves it
//! to the parking queue where an operator looks at it.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::nakadi::{Failure, FailureKind};
use crate::stream::ShardId;
use crate::transform::{Event, TransformFailure};

/// One message for the DLQ, its body already serialized.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: String,
    /// Metric label and message attribute: rejected, retries_exhausted, too_large, malformed_record.
    pub reason: &'static str,
    pub event_type: String,
    pub eid: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Source {
    pub stream_arn: String,
    pub shard_id: String,
    pub sequence_number: Option<String>,
    pub event_id: Option<String>,
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

pub fn reason_label(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Rejected => "rejected",
        FailureKind::RetriesExhausted => "retries_exhausted",
        FailureKind::TooLarge => "too_large",
    }
}

impl DeadLetter {
    /// An event Nakadi finally did not take.
    pub fn from_event(
        stream_arn: &str,
        shard: &ShardId,
        event_type: &str,
        event: &Event,
        failure: &Failure,
    ) -> DeadLetter {
        let raw: &RawValue =
            serde_json::from_slice(&event.body).expect("events are serialized JSON objects");
        let message = Message {
            event: Some(raw),
            record: None,
            event_type: event_type.to_owned(),
            source: Source {
                stream_arn: stream_arn.to_owned(),
                shard_id: shard.to_string(),
                sequence_number: Some(event.sequence_number.clone()),
                event_id: Some(event.event_id.clone()),
            },
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
            reason: reason_label(&failure.kind),
            event_type: event_type.to_owned(),
            eid: Some(event.eid.to_string()),
        }
    }

    /// A stream record that could not become an event. The record is kept as it came when it is
    /// JSON, else as a string, so nothing of it is lost.
    pub fn malformed(
        stream_arn: &str,
        shard: &ShardId,
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
            source: Source {
                stream_arn: stream_arn.to_owned(),
                shard_id: shard.to_string(),
                sequence_number: failure.sequence_number.clone(),
                event_id: failure.event_id.clone(),
            },
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
        }
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
    let event = Event {
        eid: envelope.metadata.eid,
        body: Bytes::copy_from_slice(raw.get().as_bytes()),
        sequence_number: message.source.sequence_number.unwrap_or_default(),
        event_id: message.source.event_id.unwrap_or_default(),
        created_at_ms: 0,
    };
    Ok((message.event_type, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let body = r#"{"metadata":{"eid":"5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f","occurred_at":"2026-11-22T06:16:10.123Z"},"data_op":"C","data_type":"t","data":{"item":{"n":12345678901234567890123456789012345678},"patch":[]}}"#;
        Event {
            eid: "5f0c8a5e-3f8e-5d9a-9c1e-1f2b3c4d5e6f".parse().unwrap(),
            body: Bytes::from_static(body.as_bytes()),
            sequence_number: "100".into(),
            event_id: "e1".into(),
            created_at_ms: 0,
        }
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
        let letter = DeadLetter::from_event(
            "arn:s",
            &ShardId::new("shard-1"),
            "et",
            &event(),
            &failure(),
        );
        assert_eq!(letter.reason, "rejected");
        let v: serde_json::Value = serde_json::from_str(&letter.body).unwrap();
        assert_eq!(v["source"]["shard_id"], "shard-1");
        assert_eq!(v["failure"]["status"], 422);
        assert_eq!(v["failure"]["first_failed_at"], "1970-01-01T00:00:00Z");
        let (event_type, back) = event_from_body(&letter.body).unwrap();
        assert_eq!(event_type, "et");
        // Byte for byte: the 38-digit number and the eid are what was first published.
        assert_eq!(back.body, event().body);
        assert_eq!(back.eid, event().eid);
        assert_eq!(back.sequence_number, "100");
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
            let letter = DeadLetter::malformed("arn:s", &ShardId::new("s"), "et", raw, &failure);
            assert_eq!(letter.reason, "malformed_record");
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
}

//! Pure: a DynamoDB stream record → the Nakadi data change event (DESIGN.md, "The event").
//!
//! ```json
//! {"metadata":{"eid":"…","occurred_at":"2026-11-22T06:16:10.123Z","partition_compaction_key":"…"},
//!  "data_op":"U","data_type":"…","data":{"item":{…},"patch":[…]}}
//! ```
//!
//! The event is exact and deterministic: numbers keep DynamoDB's digits (never an f64), sets are
//! sorted so their order never makes a patch, object keys are sorted by name, so one record
//! always gives the same bytes.
//!
//! Two paths keep the same contract. [`transform`] reads the wire record once, borrowing from
//! it (`wire`): the new image is written as the item's JSON while it is read (`render`), then
//! the old image is read against it, skipping every member whose text is the new member's, and
//! only what changed becomes patch operations (`diff`); `event` puts the envelope around them.
//! [`transform_reference`] is the straightforward one (`serde_json::Value` images,
//! `json_patch::diff`, serde for the envelope): the property tests hold the fast path to its
//! bytes, and the fast path hands it every record it does not take, so failures are explained
//! in one place.
//!
//! What bounds the fast path is reading and writing the new image: every byte of it is scanned,
//! every value checked and copied, every map's members put in name order. Of the old image only
//! what changed is read; the rest is compared with the new image's text as runs of bytes.

pub mod condition;
mod diff;
pub(crate) mod event;
pub(crate) mod number;
mod reference;
mod render;
mod snapshot;
mod timestamp;
pub(crate) mod wire;

#[cfg(test)]
mod tests;

use uuid::Uuid;

pub use snapshot::snapshot_event;

/// `data.sequence_number`'s length: the longest sequence number DynamoDB Streams' API allows.
pub const SEQUENCE_NUMBER_DIGITS: usize = 40;

/// How many zeros go before the stream record's sequence number in `data.sequence_number`, so
/// that comparing two as text compares them as numbers: DynamoDB's are decimal numbers of 21 to
/// [`SEQUENCE_NUMBER_DIGITS`] digits (a longer one gets no zeros). `None` when it is not a
/// decimal number: the record is then malformed, since the event type's schema (which
/// `event-type` registers) would refuse its event, and the transform says why more plainly.
pub(crate) fn sequence_number_padding(seq: &str) -> Option<usize> {
    let digits = seq.as_bytes();
    (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .then(|| SEQUENCE_NUMBER_DIGITS.saturating_sub(digits.len()))
}

/// `data.sequence_number` for the stream record's sequence number ([`sequence_number_padding`]).
pub(crate) fn padded_sequence_number(seq: &str) -> Option<String> {
    sequence_number_padding(seq).map(|zeros| format!("{}{seq}", "0".repeat(zeros)))
}

/// Nakadi's limit for one event's serialized size, in bytes.
pub const MAX_EVENT_BYTES: usize = 999_000;

/// What a deployment sets for every event it builds.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// `data_type` of every event (RELAY_DATA_TYPE, default the event type name).
    pub data_type: String,
    /// Key attribute names in key-schema order (hash, then range) when RELAY_COMPACTION_KEY=true;
    /// None: no partition_compaction_key.
    ///
    /// One name: the key is that attribute's value as a string (S as is, N its digits, B its
    /// base64). Two: the compact JSON array text of both values, e.g. `["order-42",17]`. That
    /// cannot collide: JSON text is unambiguous, so two different (hash, range) pairs never give
    /// the same array, whatever `"`, `,` or `|` the values contain, and a table's events are all
    /// of one form.
    pub compaction_key: Option<Vec<String>>,
}

/// One Nakadi event ready to publish, with where it came from. Also rebuilt from DLQ messages.
///
/// The serialized event, the record's eventID and its sequence number are one buffer (the
/// fast path writes them into a thread's shared chunk): two `String`s of their own would cost a
/// `malloc` and a `free` each per record.
#[derive(Debug, Clone)]
pub struct Event {
    /// `metadata.eid`: [`eid_for`] the record's eventID.
    pub eid: Uuid,
    /// The body, then the eventID, then the sequence number.
    data: bytes::Bytes,
    body_len: u32,
    event_id_len: u32,
    /// `ApproximateCreationDateTime` in milliseconds since the epoch (for lag).
    pub created_at_ms: i64,
    /// Which of its table's routes the event goes to (`crate::route`); 0 for a table without
    /// routes.
    pub route: usize,
}

impl Event {
    /// An event of its parts, copied into one buffer.
    pub fn new(
        eid: Uuid,
        body: &[u8],
        event_id: &str,
        sequence_number: &str,
        created_at_ms: i64,
    ) -> Event {
        let mut data = Vec::with_capacity(body.len() + event_id.len() + sequence_number.len());
        data.extend_from_slice(body);
        data.extend_from_slice(event_id.as_bytes());
        data.extend_from_slice(sequence_number.as_bytes());
        Event::from_parts(eid, data.into(), body.len(), event_id.len(), created_at_ms)
    }

    /// An event whose `data` holds the body (`body_len` bytes), the eventID (`event_id_len`
    /// bytes) and the sequence number, in that order.
    fn from_parts(
        eid: Uuid,
        data: bytes::Bytes,
        body_len: usize,
        event_id_len: usize,
        created_at_ms: i64,
    ) -> Event {
        let (body_len, event_id_len) = (
            u32::try_from(body_len).expect("an event is far below 4 GiB"),
            u32::try_from(event_id_len).expect("an eventID is far below 4 GiB"),
        );
        let event = Event {
            eid,
            data,
            body_len,
            event_id_len,
            created_at_ms,
            route: 0,
        };
        debug_assert!(
            std::str::from_utf8(&event.data[body_len as usize..]).is_ok(),
            "the eventID and sequence number are text"
        );
        event
    }

    /// The serialized Nakadi event, a JSON object.
    pub fn body(&self) -> &[u8] {
        &self.data[..self.body_len as usize]
    }

    /// The stream record's `eventID`.
    pub fn event_id(&self) -> &str {
        let at = self.body_len as usize;
        text(&self.data[at..at + self.event_id_len as usize])
    }

    /// The stream record's `dynamodb.SequenceNumber`.
    pub fn sequence_number(&self) -> &str {
        text(&self.data[(self.body_len + self.event_id_len) as usize..])
    }
}

/// Text the constructors copied from `str`s, whole.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("copied from a str")
}

/// A record that could not become an event: the caller dead-letters it with the raw record.
#[derive(Debug)]
pub struct TransformFailure {
    /// Whatever could be read of the record.
    pub sequence_number: Option<String>,
    pub event_id: Option<String>,
    /// Its `Display` is the DLQ message's reason.
    pub error: TransformError,
}

/// Why a record cannot become an event. None of these is retryable: the record is what it is.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// Not the JSON of a stream record, or a field the event needs is missing or mistyped.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// An attribute value without an exact JSON form: an N that is not a number, a B that is not
    /// base64, an unknown type. `path` is the JSON Pointer of the attribute in the image.
    #[error("{image} attribute {path}: {problem}")]
    Attribute {
        image: &'static str,
        path: String,
        problem: String,
    },
    #[error("eventName {0:?} is not INSERT, MODIFY or REMOVE")]
    UnknownEventName(String),
    /// The record lacks the image its event is made of; streams of any view type other than
    /// NEW_AND_OLD_IMAGES produce these.
    #[error(
        "{event_name} record without {image}: the stream's view type must be NEW_AND_OLD_IMAGES"
    )]
    MissingImage {
        event_name: &'static str,
        image: &'static str,
    },
    /// `ApproximateCreationDateTime` (as received) is not a time in the years 0000 to 9999.
    #[error("ApproximateCreationDateTime {0} is out of range")]
    Timestamp(String),
    /// `partition_compaction_key` cannot be made from the item.
    #[error("partition_compaction_key: {0}")]
    CompactionKey(String),
}

/// The namespace of eids: UUID v5 of the name `urn:dynamodb-nakadi-relay:eid` in the URL
/// namespace (`Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:dynamodb-nakadi-relay:eid")`), so anyone
/// can derive it again.
///
/// It is fixed forever: an eid must be the same on every retry, re-drain and replay, also across
/// relay versions, or consumers that drop duplicates by eid see a replayed record as new. A
/// namespace of its own keeps the relay's eids apart from UUID v5s other systems make of the same
/// eventIDs.
pub const EID_NAMESPACE: Uuid = Uuid::from_u128(0x567b5df6_5f14_5551_95be_61791ea4d717);

/// The eid of the record with this `eventID`: UUID v5 of it under [`EID_NAMESPACE`].
///
/// SHA-1 from the `sha1` crate, not the `uuid` crate's own: that one has no SHA-NI code, and
/// hashing is a noticeable part of the transform. `eid_is_uuid_v5` holds the two to the same
/// UUIDs. An eventID of up to 39 bytes (DynamoDB's have 32) fits one block with the namespace and
/// the padding, which is compressed straight away, skipping the hasher's buffering
/// (docs/performance.md has the figures).
pub fn eid_for(event_id: &str) -> Uuid {
    let id = event_id.as_bytes();
    let len = 16 + id.len();
    let digest: [u8; 20] = if len <= 55 {
        let mut block = [0u8; 64];
        block[..16].copy_from_slice(EID_NAMESPACE.as_bytes());
        block[16..len].copy_from_slice(id);
        // SHA-1's padding: a one bit, zeros, the message's length in bits.
        block[len] = 0x80;
        block[56..].copy_from_slice(&(len as u64 * 8).to_be_bytes());
        let mut state = [
            0x6745_2301,
            0xefcd_ab89,
            0x98ba_dcfe,
            0x1032_5476,
            0xc3d2_e1f0,
        ];
        sha1::compress(&mut state, &[block.into()]);
        let mut digest = [0u8; 20];
        for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        digest
    } else {
        use sha1::Digest as _;
        let mut sha1 = sha1::Sha1::new();
        sha1.update(EID_NAMESPACE.as_bytes());
        sha1.update(id);
        sha1.finalize().into()
    };
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// What the fast path made of a record of a table with routes ([`transform_routed`]).
#[derive(Debug)]
pub enum Routed {
    /// The event, of the route that takes the record ([`Event::route`]).
    Event(Event),
    /// No route takes the record.
    Unrouted { sequence_number: String },
    /// Not decided here: the fast path does not take the record, or its images take different
    /// routes. [`crate::route::Routes::apply`] then routes it on its text.
    Undecided,
}

/// The record routed and transformed in one reading ([`crate::route`]): its images are routed
/// as they are read, and the event is written with its route's `settings`.
pub fn transform_routed<'s>(
    raw: &str,
    router: &condition::Router,
    settings: impl Fn(usize) -> &'s EventSettings,
) -> Routed {
    event::build_routed(raw, router, settings).unwrap_or(Routed::Undecided)
}

/// `raw` is one element of the `Records` array of a DynamoDB Streams GetRecords response, as the
/// raw JSON of the wire protocol (e.g. `{"eventID":"..","eventName":"MODIFY","dynamodb":
/// {"ApproximateCreationDateTime":1.763794570123E9,"Keys":{..},"NewImage":{"id":{"S":"a"},
/// "n":{"N":"1.50"}},"OldImage":{..},"SequenceNumber":"..","SizeBytes":..,
/// "StreamViewType":"NEW_AND_OLD_IMAGES"},"eventSource":"aws:dynamodb",..}`).
///
/// `item` is the new image (the old one for REMOVE); `patch` turns the old image (`{}` if none)
/// into the new one (`{}` if none). INSERT needs the new image, REMOVE the old one, MODIFY both:
/// a MODIFY patch from `{}` would claim every attribute was added. The event's size is not
/// checked here: the publisher holds it to [`MAX_EVENT_BYTES`].
pub fn transform(raw: &str, settings: &EventSettings) -> Result<Event, TransformFailure> {
    match event::build(raw, settings) {
        Some(event) => Ok(event),
        None => transform_reference(raw, settings),
    }
}

/// The same contract on the straightforward path (`serde_json::Value` images, `json_patch::diff`,
/// serde for the envelope): the reference the fast path is property-tested against, and the one
/// that explains records the fast path does not take.
pub fn transform_reference(raw: &str, settings: &EventSettings) -> Result<Event, TransformFailure> {
    reference::transform(raw, settings)
}

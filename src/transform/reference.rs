//! The straightforward path: the record read as a `serde_json::Value`, both images converted to
//! `Value`s, the patch from `json_patch::diff`, the event serialized by serde.
//!
//! It is the definition the fast path is property-tested against, and it is what explains a
//! record the fast path does not take: its errors name the attribute at fault.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::transform::number::{self, Decimal};
use crate::transform::{
    Event, EventSettings, TransformError, TransformFailure, eid_for, timestamp,
};

/// See [`crate::transform::transform_reference`].
pub(crate) fn transform(raw: &str, settings: &EventSettings) -> Result<Event, TransformFailure> {
    let record: Value = serde_json::from_str(raw).map_err(|e| TransformFailure {
        sequence_number: None,
        event_id: None,
        error: TransformError::Malformed(format!("not JSON: {e}")),
    })?;
    let event_id = record.get("eventID").and_then(Value::as_str);
    let sequence_number = record
        .get("dynamodb")
        .and_then(|d| d.get("SequenceNumber"))
        .and_then(Value::as_str);
    build(&record, event_id, sequence_number, settings).map_err(|error| TransformFailure {
        sequence_number: sequence_number.map(str::to_owned),
        event_id: event_id.map(str::to_owned),
        error,
    })
}

/// The envelope's fields in the order of the contract. A struct rather than `json!`: without
/// serde_json's `preserve_order` a `Value` object sorts its keys, which would put `data` first.
#[derive(Serialize)]
struct Envelope<'a> {
    metadata: Metadata,
    data_op: &'a str,
    data_type: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
pub(crate) struct Metadata {
    pub(crate) eid: String,
    pub(crate) occurred_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) partition_compaction_key: Option<String>,
}

#[derive(Serialize)]
struct Data<'a> {
    item: &'a Value,
    patch: &'a json_patch::Patch,
    /// The stream record's, padded ([`super::padded_sequence_number`]); snapshot events have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<&'a str>,
}

/// The event's bytes: the envelope in the contract's field order around `item`, `patch` and the
/// padded sequence number.
pub(crate) fn envelope(
    metadata: Metadata,
    data_op: &str,
    data_type: &str,
    item: &Value,
    patch: &json_patch::Patch,
    sequence_number: Option<&str>,
) -> Vec<u8> {
    let envelope = Envelope {
        metadata,
        data_op,
        data_type,
        data: Data {
            item,
            patch,
            sequence_number,
        },
    };
    serde_json::to_vec(&envelope).expect("a Value and strings always serialize")
}

fn build(
    record: &Value,
    event_id: Option<&str>,
    sequence_number: Option<&str>,
    settings: &EventSettings,
) -> Result<Event, TransformError> {
    let malformed = |what: &str| TransformError::Malformed(what.to_owned());
    let event_id = event_id.ok_or_else(|| malformed("no eventID string"))?;
    let sequence_number =
        sequence_number.ok_or_else(|| malformed("no dynamodb.SequenceNumber string"))?;
    let padded = super::padded_sequence_number(sequence_number).ok_or_else(|| {
        TransformError::Malformed(format!(
            "dynamodb.SequenceNumber {} is not a decimal number",
            serde_json::Value::from(sequence_number)
        ))
    })?;
    let dynamodb = record
        .get("dynamodb")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("no dynamodb object"))?;
    let event_name = record
        .get("eventName")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no eventName string"))?;

    let created = match dynamodb.get("ApproximateCreationDateTime") {
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(malformed("no dynamodb.ApproximateCreationDateTime number")),
    };
    let created_at_ms = Decimal::parse(&created)
        .and_then(|d| d.millis())
        .ok_or_else(|| TransformError::Timestamp(created.clone()))?;
    let occurred_at =
        timestamp::reference(created_at_ms).ok_or(TransformError::Timestamp(created))?;

    let new = image(dynamodb, "NewImage")?;
    let old = image(dynamodb, "OldImage")?;
    let missing = |event_name, image| TransformError::MissingImage { event_name, image };
    let (data_op, item) = match event_name {
        "INSERT" => ("C", new.as_ref().ok_or(missing("INSERT", "NewImage"))?),
        "MODIFY" => {
            old.as_ref().ok_or(missing("MODIFY", "OldImage"))?;
            ("U", new.as_ref().ok_or(missing("MODIFY", "NewImage"))?)
        }
        "REMOVE" => ("D", old.as_ref().ok_or(missing("REMOVE", "OldImage"))?),
        other => return Err(TransformError::UnknownEventName(other.to_owned())),
    };
    let partition_compaction_key = settings
        .compaction_key
        .as_deref()
        .map(|names| compaction_key(item, names))
        .transpose()?;

    let empty = Value::Object(Map::new());
    let patch = json_patch::diff(
        old.as_ref().unwrap_or(&empty),
        new.as_ref().unwrap_or(&empty),
    );
    let eid = eid_for(event_id);
    let metadata = Metadata {
        eid: eid.hyphenated().to_string(),
        occurred_at,
        partition_compaction_key,
    };
    let body = envelope(
        metadata,
        data_op,
        &settings.data_type,
        item,
        &patch,
        Some(&padded),
    );
    Ok(Event::new(
        eid,
        &body,
        event_id,
        sequence_number,
        created_at_ms,
    ))
}

/// See `Writer::compaction_key` in the fast path for the format and why.
pub(crate) fn compaction_key(item: &Value, names: &[String]) -> Result<String, TransformError> {
    let value = |name: &String| match item.get(name) {
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(v.clone()),
        _ => Err(TransformError::CompactionKey(format!(
            "key attribute {name:?} is not a string, number or binary of the item"
        ))),
    };
    match names {
        [] => Err(TransformError::CompactionKey(
            "no key attributes configured".into(),
        )),
        [name] => Ok(match value(name)? {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        names => {
            let values = names.iter().map(value).collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Array(values).to_string())
        }
    }
}

pub(crate) fn image(
    dynamodb: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<Value>, TransformError> {
    match dynamodb.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(attributes)) => {
            let mut path = Path {
                image: name,
                tokens: Vec::new(),
            };
            Ok(Some(Value::Object(fields(attributes, &mut path)?)))
        }
        Some(_) => Err(TransformError::Malformed(format!(
            "{name} is not a map of attribute values"
        ))),
    }
}

/// Where in an image an attribute value is, for errors.
struct Path {
    image: &'static str,
    tokens: Vec<String>,
}

impl Path {
    fn error(&self, problem: impl Into<String>) -> TransformError {
        let pointer = self
            .tokens
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect();
        TransformError::Attribute {
            image: self.image,
            path: pointer,
            problem: problem.into(),
        }
    }

    fn at<T>(&mut self, token: String, f: impl FnOnce(&mut Path) -> T) -> T {
        self.tokens.push(token);
        let out = f(self);
        self.tokens.pop();
        out
    }
}

fn fields(
    attributes: &Map<String, Value>,
    path: &mut Path,
) -> Result<Map<String, Value>, TransformError> {
    attributes
        .iter()
        .map(|(name, value)| {
            Ok((
                name.clone(),
                path.at(name.clone(), |p| attribute(value, p))?,
            ))
        })
        .collect()
}

fn attribute(value: &Value, path: &mut Path) -> Result<Value, TransformError> {
    let typed = value.as_object().filter(|o| o.len() == 1);
    let Some((tag, inner)) = typed.and_then(|o| o.iter().next()) else {
        return Err(path.error("not an attribute value (an object with exactly one type)"));
    };
    let wrong = |path: &Path| path.error(format!("{tag} has a value of the wrong JSON type"));
    Ok(match tag.as_str() {
        "S" => Value::String(inner.as_str().ok_or_else(|| wrong(path))?.to_owned()),
        "N" => Value::Number(number(inner.as_str().ok_or_else(|| wrong(path))?, path)?),
        "B" => Value::String(binary(inner.as_str().ok_or_else(|| wrong(path))?, path)?.0),
        "BOOL" => Value::Bool(inner.as_bool().ok_or_else(|| wrong(path))?),
        "NULL" => {
            inner.as_bool().ok_or_else(|| wrong(path))?;
            Value::Null
        }
        "M" => Value::Object(fields(inner.as_object().ok_or_else(|| wrong(path))?, path)?),
        "L" => {
            let items = inner.as_array().ok_or_else(|| wrong(path))?;
            let items = items
                .iter()
                .enumerate()
                .map(|(i, item)| path.at(i.to_string(), |p| attribute(item, p)))
                .collect::<Result<_, _>>()?;
            Value::Array(items)
        }
        "SS" => {
            let mut members = set_members(inner, path)?;
            members.sort();
            Value::Array(
                members
                    .into_iter()
                    .map(|m| Value::String(m.to_owned()))
                    .collect(),
            )
        }
        "NS" => {
            let mut members = set_members(inner, path)?
                .into_iter()
                .enumerate()
                .map(|(i, m)| path.at(i.to_string(), |p| number_text(m, p)))
                .collect::<Result<Vec<_>, _>>()?;
            members.sort_by(|a, b| number::cmp_members(a, b));
            let members = members.iter().map(|m| number(m, path).map(Value::Number));
            Value::Array(members.collect::<Result<_, _>>()?)
        }
        "BS" => {
            let mut members = set_members(inner, path)?
                .into_iter()
                .enumerate()
                .map(|(i, m)| path.at(i.to_string(), |p| binary(m, p)))
                .collect::<Result<Vec<_>, _>>()?;
            members.sort_by(|a, b| a.1.cmp(&b.1));
            Value::Array(
                members
                    .into_iter()
                    .map(|(text, _)| Value::String(text))
                    .collect(),
            )
        }
        other => return Err(path.error(format!("unknown attribute type {other:?}"))),
    })
}

fn set_members<'v>(set: &'v Value, path: &mut Path) -> Result<Vec<&'v str>, TransformError> {
    let members = set
        .as_array()
        .ok_or_else(|| path.error("a set that is not an array"))?;
    members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.as_str().ok_or_else(|| {
                path.at(i.to_string(), |p| {
                    p.error("a set member that is not a string")
                })
            })
        })
        .collect()
}

fn number(text: &str, path: &Path) -> Result<Number, TransformError> {
    number_text(text, path)?
        .parse()
        .map_err(|_| path.error(format!("N {} is not a number", shorten(text))))
}

/// The number in serde_json's spelling.
fn number_text(text: &str, path: &Path) -> Result<String, TransformError> {
    number::canonical(text)
        .map(|n| n.into_owned())
        .ok_or_else(|| path.error(format!("N {} is not a number", shorten(text))))
}

/// The text and its bytes.
fn binary(text: &str, path: &Path) -> Result<(String, Vec<u8>), TransformError> {
    match STANDARD.decode(text) {
        Ok(bytes) => Ok((text.to_owned(), bytes)),
        Err(e) => Err(path.error(format!("B {} is not base64: {e}", shorten(text)))),
    }
}

/// An offending value quoted in an error, cut to keep DLQ reasons and logs short.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

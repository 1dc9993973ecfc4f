//! A scanned item → the snapshot's `data_op: "S"` event.
//!
//! The item goes through the reference path's image conversion and its compaction key, so an S
//! event holds exactly the item and patch an INSERT record of the same image gives: `item` is the
//! item as plain JSON, `patch` the operations that turn `{}` into it (one `add` per top-level
//! attribute). Only the envelope is written here, in the contract's field order.
//!
//! The eid is UUID v5 under [`EID_NAMESPACE`](super::EID_NAMESPACE) of
//! `snapshot:<table>:<key JSON>`, where `<table>` is the table's name and `<key JSON>` the compact
//! JSON array of the key attributes' values as the event shows them, in key-schema order (hash,
//! then range): `snapshot:orders:["order-42"]`, `snapshot:orders:["order-42",17]`. The same item
//! in a re-run (a resumed or repeated snapshot) gets the same eid, so consumers drop the
//! duplicates. No stream eid can equal it: those are made of DynamoDB's eventIDs, which never
//! start with `snapshot:`.

use super::reference;
use super::{Event, EventSettings, TransformError, eid_for, timestamp};
use serde_json::{Map, Value};

/// The name whose UUID v5 under [`EID_NAMESPACE`](super::EID_NAMESPACE) is a snapshot event's
/// eid.
fn snapshot_eid_name(table: &str, key: &[Value]) -> String {
    format!("snapshot:{table}:{}", Value::Array(key.to_vec()))
}

/// The S event of one item of `table`, scanned at `scanned_at_ms` (its `occurred_at`).
///
/// `image` is the item in DynamoDB JSON, as in a stream record's `NewImage`
/// (`{"pk":{"S":"a"},"n":{"N":"1.50"}}`); `key_attributes` are the table's key attribute names
/// in key-schema order. The returned event's `event_id` is the eid's name; its `sequence_number`
/// is `source`, where the caller says the item came from.
pub fn snapshot_event(
    table: &str,
    image: Map<String, Value>,
    key_attributes: &[String],
    scanned_at_ms: i64,
    settings: &EventSettings,
    source: &str,
) -> Result<Event, TransformError> {
    let mut holder = Map::new();
    holder.insert("Item".to_owned(), Value::Object(image));
    let item = reference::image(&holder, "Item")?.expect("the holder has the item");
    let key = key_attributes
        .iter()
        .map(|name| match item.get(name) {
            Some(v @ (Value::String(_) | Value::Number(_))) => Ok(v.clone()),
            _ => Err(TransformError::Malformed(format!(
                "key attribute {name:?} is not a string, number or binary of the item"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let event_id = snapshot_eid_name(table, &key);
    let eid = eid_for(&event_id);
    let occurred_at = timestamp::reference(scanned_at_ms)
        .ok_or_else(|| TransformError::Timestamp(format!("{scanned_at_ms} ms")))?;
    let partition_compaction_key = settings
        .compaction_key
        .as_deref()
        .map(|names| reference::compaction_key(&item, names))
        .transpose()?;
    let patch = json_patch::diff(&Value::Object(Map::new()), &item);
    let metadata = reference::Metadata {
        eid: eid.hyphenated().to_string(),
        occurred_at,
        partition_compaction_key,
    };
    // A scanned item has no place in the stream, so no sequence number.
    let body = reference::envelope(metadata, "S", &settings.data_type, &item, &patch, None);
    Ok(Event::new(eid, &body, &event_id, source, scanned_at_ms))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use uuid::Uuid;

    use super::*;
    use crate::transform::transform_reference;

    fn settings(compaction_key: Option<&[&str]>) -> EventSettings {
        EventSettings {
            data_type: "payments:order".into(),
            compaction_key: compaction_key.map(|k| k.iter().map(|n| n.to_string()).collect()),
        }
    }

    /// An INSERT record of this image, as DynamoDB Streams sends it.
    fn insert(image: &Value) -> String {
        format!(
            r#"{{"eventID":"e1","eventName":"INSERT","dynamodb":{{"ApproximateCreationDateTime":1.7637921701E9,"NewImage":{image},"SequenceNumber":"100","StreamViewType":"NEW_AND_OLD_IMAGES"}}}}"#
        )
    }

    fn body(event: &Event) -> Value {
        serde_json::from_slice(event.body()).unwrap()
    }

    fn order() -> Value {
        json!({
            "pk": {"S": "order-42"},
            "sk": {"N": "17"},
            "precise": {"N": "12345678901234567890.123456789012345678"},
            "huge": {"N": "9.9999999999999999999999999999999999999E+125"},
            "tags": {"SS": ["z", "a"]},
            "amounts": {"NS": ["10", "-1.5", "9"]},
            "blob": {"B": "AAEC"},
            "blobs": {"BS": ["AgM=", "AAE="]},
            "a/b~c": {"M": {"lines": {"L": [{"N": "1"}, {"NULL": true}, {"BOOL": false}]}}},
        })
    }

    #[test]
    fn item_and_patch_are_those_of_an_insert_of_the_same_image() {
        for keys in [None, Some(&["pk"][..]), Some(&["pk", "sk"][..])] {
            let settings = settings(keys);
            let image = order();
            let s = snapshot_event(
                "orders",
                image.as_object().unwrap().clone(),
                &["pk".into(), "sk".into()],
                1_763_792_170_100,
                &settings,
                "",
            )
            .unwrap();
            let c = transform_reference(&insert(&image), &settings).unwrap();
            let (mut s, mut c) = (body(&s), body(&c));
            assert_eq!(s["data_op"], "S");
            assert_eq!(c["data_op"], "C");
            // Same scan time as the record's creation time: then only the op and eid differ, and
            // the S event has no sequence number.
            assert_eq!(s["metadata"]["occurred_at"], c["metadata"]["occurred_at"]);
            assert!(s["data"].get("sequence_number").is_none());
            c["data"].as_object_mut().unwrap().remove("sequence_number");
            for v in [&mut s, &mut c] {
                v["data_op"] = Value::Null;
                v["metadata"]["eid"] = Value::Null;
            }
            assert_eq!(s, c, "compaction key {keys:?}");
        }
    }

    #[test]
    fn numbers_keep_their_digits_in_the_bytes() {
        let s = snapshot_event(
            "orders",
            order().as_object().unwrap().clone(),
            &["pk".into()],
            0,
            &settings(None),
            "",
        )
        .unwrap();
        let text = std::str::from_utf8(s.body()).unwrap();
        assert!(text.contains(r#""precise":12345678901234567890.123456789012345678"#));
        assert!(text.contains(r#""huge":9.9999999999999999999999999999999999999e+125"#));
        assert!(text.starts_with(r#"{"metadata":{"eid":""#), "{text}");
        assert!(text.contains(r#""occurred_at":"1970-01-01T00:00:00.000Z"},"data_op":"S","#));
    }

    #[test]
    fn eid_is_uuid_v5_of_the_documented_name() {
        let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:dynamodb-nakadi-relay:eid");
        let cases: &[(&[Value], &str)] = &[
            (&[json!("order-42")], r#"snapshot:orders:["order-42"]"#),
            (
                &[json!("order-42"), json!(17)],
                r#"snapshot:orders:["order-42",17]"#,
            ),
            (&[json!("a\"b,c")], r#"snapshot:orders:["a\"b,c"]"#),
        ];
        for (key, name) in cases {
            assert_eq!(snapshot_eid_name("orders", key), *name);
            assert_eq!(
                eid_for(&snapshot_eid_name("orders", key)),
                Uuid::new_v5(&namespace, name.as_bytes())
            );
        }
        // Another table, another key: another name.
        assert_ne!(
            snapshot_eid_name("orders", &[json!("a")]),
            snapshot_eid_name("invoices", &[json!("a")])
        );
        assert_ne!(
            snapshot_eid_name("orders", &[json!("1")]),
            snapshot_eid_name("orders", &[json!(1)])
        );
    }

    #[test]
    fn same_item_gives_the_same_eid_whenever_scanned() {
        let event = |at| {
            snapshot_event(
                "orders",
                order().as_object().unwrap().clone(),
                &["pk".into(), "sk".into()],
                at,
                &settings(None),
                "",
            )
            .unwrap()
        };
        let (first, again) = (event(1_000), event(2_000));
        assert_eq!(first.eid, again.eid);
        assert_eq!(first.event_id(), r#"snapshot:orders:["order-42",17]"#);
        assert_eq!(first.eid, eid_for(first.event_id()));
        assert_ne!(first.body(), again.body(), "occurred_at is the scan time");
    }

    #[test]
    fn bad_items_are_explained() {
        let no_key = snapshot_event(
            "orders",
            json!({"other": {"S": "x"}}).as_object().unwrap().clone(),
            &["pk".into()],
            0,
            &settings(None),
            "",
        )
        .unwrap_err();
        assert!(no_key.to_string().contains("\"pk\""), "{no_key}");
        let bad_number = snapshot_event(
            "orders",
            json!({"pk": {"S": "a"}, "n": {"N": "one"}})
                .as_object()
                .unwrap()
                .clone(),
            &["pk".into()],
            0,
            &settings(None),
            "",
        )
        .unwrap_err();
        assert!(
            matches!(&bad_number, TransformError::Attribute { path, .. } if path == "/n"),
            "{bad_number}"
        );
    }
}

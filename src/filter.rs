//! Which records become events, and what of them: RELAY_TTL_DELETES, RELAY_EVENT_NAMES and
//! RELAY_DROP_ATTRIBUTES.
//!
//! A filtered-out record is not lost: it is a decision the operator configured, counted in
//! `relay_records_filtered_total`, and the shard's checkpoint moves past it like past a published
//! one. With none of the three set (the default) the filter is not consulted at all, so the
//! transform's fast path pays nothing for it.
//!
//! TTL deletions are REMOVE records whose `userIdentity` is the DynamoDB service itself
//! (`{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}`, the member names of the
//! Streams API; Lambda's lower-case form is Lambda's own). `mark` publishes them with
//! `"ttl_expired": true` inside `data`, next to `item` and `patch`: Nakadi allows no other
//! top-level keys in a data change event, and `metadata` has no free field.
//!
//! Dropped attributes are removed from both images before the event is built, so they appear
//! neither in the item nor in the patch, nor in a dead letter of the record. Only top-level
//! attribute names are matched: they are what a table's schema names, and a nested path syntax
//! would need an escaping rule of its own. Key attributes cannot be dropped while
//! RELAY_COMPACTION_KEY needs them (checked at start).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::transform::{self, Event, EventSettings, TransformFailure};

/// What to do with TTL deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlDeletes {
    /// As any other REMOVE: `data_op` D.
    Publish,
    Skip,
    /// Published with `data.ttl_expired: true`.
    Mark,
}

/// The record kinds DynamoDB Streams knows, as a set of which to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventNames {
    pub insert: bool,
    pub modify: bool,
    pub remove: bool,
}

impl EventNames {
    pub const ALL: EventNames = EventNames {
        insert: true,
        modify: true,
        remove: true,
    };

    /// Parses `INSERT,MODIFY` and the like (case-sensitive, as in the records).
    pub fn parse(raw: &str) -> Result<EventNames, String> {
        let mut names = EventNames {
            insert: false,
            modify: false,
            remove: false,
        };
        for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "INSERT" => names.insert = true,
                "MODIFY" => names.modify = true,
                "REMOVE" => names.remove = true,
                _ => return Err(format!("{name:?} is not INSERT, MODIFY or REMOVE")),
            }
        }
        if names
            == (EventNames {
                insert: false,
                modify: false,
                remove: false,
            })
        {
            return Err("must name at least one of INSERT, MODIFY, REMOVE".into());
        }
        Ok(names)
    }

    fn keeps(&self, event_name: &str) -> bool {
        match event_name {
            "INSERT" => self.insert,
            "MODIFY" => self.modify,
            "REMOVE" => self.remove,
            // Unknown names are kept, so the transform dead-letters them with the reason.
            _ => true,
        }
    }
}

/// The configured filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub ttl_deletes: TtlDeletes,
    pub event_names: EventNames,
    pub drop_attributes: Vec<String>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            ttl_deletes: TtlDeletes::Publish,
            event_names: EventNames::ALL,
            drop_attributes: Vec::new(),
        }
    }
}

/// Why a record was not published; the `reason` label of `relay_records_filtered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    TtlDelete,
    EventName,
    /// No route of its table takes it (`crate::route`).
    NoRoute,
}

impl Skip {
    pub const ALL: [Skip; 3] = [Skip::TtlDelete, Skip::EventName, Skip::NoRoute];

    pub fn label(self) -> &'static str {
        match self {
            Skip::TtlDelete => "ttl_delete",
            Skip::EventName => "event_name",
            Skip::NoRoute => "no_route",
        }
    }
}

/// A record no route takes, skipped like a filtered one; None when its sequence number cannot
/// be read, so that a transform dead-letters it with the precise reason.
pub fn unrouted(raw: &str) -> Option<Filtered<'_>> {
    let head = serde_json::from_str::<Head>(raw).ok()?;
    Some(Filtered::Skipped {
        sequence_number: head.dynamodb?.sequence_number?.into_owned(),
        reason: Skip::NoRoute,
    })
}

/// What became of one record.
#[derive(Debug)]
pub enum Filtered<'a> {
    Event(Event),
    /// Configured away; the checkpoint moves past `sequence_number`.
    Skipped {
        sequence_number: String,
        reason: Skip,
    },
    /// The record (with dropped attributes already removed) cannot become an event.
    Failed {
        raw: Cow<'a, str>,
        failure: TransformFailure,
    },
}

/// The part of a record the filter decides on; everything else is skipped by the parser.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "eventName", borrow)]
    event_name: Option<Cow<'a, str>>,
    #[serde(rename = "userIdentity", borrow)]
    user_identity: Option<Identity<'a>>,
    #[serde(borrow)]
    dynamodb: Option<Sequence<'a>>,
}

#[derive(Deserialize)]
struct Identity<'a> {
    #[serde(rename = "PrincipalId", borrow)]
    principal_id: Option<Cow<'a, str>>,
    #[serde(rename = "Type", borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Sequence<'a> {
    #[serde(rename = "SequenceNumber", borrow)]
    sequence_number: Option<Cow<'a, str>>,
}

impl Filter {
    /// Whether the filter changes anything; if not, records go straight to the transform.
    pub fn is_pass_through(&self) -> bool {
        *self == Filter::default()
    }

    /// Filters and transforms one raw stream record (see [`transform::transform`]).
    pub fn apply<'a>(&self, raw: &'a str, settings: &EventSettings) -> Filtered<'a> {
        let mut ttl_expired = false;
        if !self.is_pass_through() {
            // A record the filter cannot read goes on to the transform, which dead-letters it
            // with the precise reason.
            if let Ok(head) = serde_json::from_str::<Head>(raw) {
                let ttl = head.event_name.as_deref() == Some("REMOVE")
                    && head.user_identity.is_some_and(|id| {
                        id.kind.as_deref() == Some("Service")
                            && id.principal_id.as_deref() == Some("dynamodb.amazonaws.com")
                    });
                let skip = if ttl && self.ttl_deletes == TtlDeletes::Skip {
                    Some(Skip::TtlDelete)
                } else if !self
                    .event_names
                    .keeps(head.event_name.as_deref().unwrap_or(""))
                {
                    Some(Skip::EventName)
                } else {
                    None
                };
                let sequence_number = head.dynamodb.and_then(|d| d.sequence_number);
                if let (Some(reason), Some(seq)) = (skip, sequence_number) {
                    return Filtered::Skipped {
                        sequence_number: seq.into_owned(),
                        reason,
                    };
                }
                ttl_expired = ttl && self.ttl_deletes == TtlDeletes::Mark;
            }
        }
        let raw = self.drop_attributes(raw);
        match transform::transform(&raw, settings) {
            Ok(event) if ttl_expired => Filtered::Event(Event::new(
                event.eid,
                &mark_ttl_expired(event.body()),
                event.event_id(),
                event.sequence_number(),
                event.created_at_ms,
            )),
            Ok(event) => Filtered::Event(event),
            Err(failure) => Filtered::Failed { raw, failure },
        }
    }

    /// The record without the dropped attributes in either image. The record is re-serialized
    /// through `serde_json::Value`; with `arbitrary_precision` its numbers (the creation time)
    /// keep their digits. Only records of deployments that drop attributes pay for this.
    fn drop_attributes<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        if self.drop_attributes.is_empty() {
            return Cow::Borrowed(raw);
        }
        let Ok(mut record) = serde_json::from_str::<Value>(raw) else {
            return Cow::Borrowed(raw);
        };
        let mut changed = false;
        for image in ["NewImage", "OldImage"] {
            if let Some(Value::Object(attrs)) =
                record.get_mut("dynamodb").and_then(|d| d.get_mut(image))
            {
                for name in &self.drop_attributes {
                    changed |= attrs.remove(name).is_some();
                }
            }
        }
        if !changed {
            return Cow::Borrowed(raw);
        }
        Cow::Owned(record.to_string())
    }
}

/// The event with `"ttl_expired":true` as the last member of `data`. Both transform paths end
/// the event with the `data` object (`…,"data":{"item":…,"patch":[…],"sequence_number":"…"}}`),
/// which a test below holds them to, so the member goes before the last two braces.
fn mark_ttl_expired(body: &[u8]) -> Vec<u8> {
    debug_assert!(
        body.ends_with(b"\"}}"),
        "the event ends with data.sequence_number"
    );
    let end = body.len() - 2;
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(&body[..end]);
    out.extend_from_slice(br#","ttl_expired":true}}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EventSettings {
        EventSettings {
            data_type: "orders".into(),
            compaction_key: None,
        }
    }

    fn record(event_name: &str, ttl: bool) -> String {
        let images = match event_name {
            "INSERT" => {
                r#""NewImage":{"id":{"S":"a"},"email":{"S":"x@example.org"},"n":{"N":"1"}}"#
            }
            "MODIFY" => {
                r#""NewImage":{"id":{"S":"a"},"email":{"S":"y@example.org"},"n":{"N":"2"}},"OldImage":{"id":{"S":"a"},"email":{"S":"x@example.org"},"n":{"N":"1"}}"#
            }
            _ => r#""OldImage":{"id":{"S":"a"},"email":{"S":"x@example.org"},"n":{"N":"2"}}"#,
        };
        let identity = if ttl {
            r#","userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}"#
        } else {
            ""
        };
        format!(
            r#"{{"eventID":"e1","eventName":"{event_name}","dynamodb":{{"ApproximateCreationDateTime":1.763794570123E9,"Keys":{{"id":{{"S":"a"}}}},{images},"SequenceNumber":"100","SizeBytes":10,"StreamViewType":"NEW_AND_OLD_IMAGES"}}{identity}}}"#
        )
    }

    fn event(filter: &Filter, raw: &str) -> Value {
        match filter.apply(raw, &settings()) {
            Filtered::Event(e) => serde_json::from_slice(e.body()).unwrap(),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn skipped(filter: &Filter, raw: &str) -> Skip {
        match filter.apply(raw, &settings()) {
            Filtered::Skipped {
                sequence_number,
                reason,
            } => {
                assert_eq!(sequence_number, "100");
                reason
            }
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn the_default_filter_is_the_transform() {
        let f = Filter::default();
        assert!(f.is_pass_through());
        for raw in [record("INSERT", false), record("REMOVE", true)] {
            let expected = transform::transform(&raw, &settings()).unwrap();
            let Filtered::Event(got) = f.apply(&raw, &settings()) else {
                panic!("expected an event");
            };
            assert_eq!(got.body(), expected.body());
        }
    }

    #[test]
    fn ttl_deletions_are_skipped_marked_or_published() {
        let skip = Filter {
            ttl_deletes: TtlDeletes::Skip,
            ..Filter::default()
        };
        assert_eq!(skipped(&skip, &record("REMOVE", true)), Skip::TtlDelete);
        assert_eq!(event(&skip, &record("REMOVE", false))["data_op"], "D");

        let mark = Filter {
            ttl_deletes: TtlDeletes::Mark,
            ..Filter::default()
        };
        let marked = event(&mark, &record("REMOVE", true));
        assert_eq!(marked["data"]["ttl_expired"], true);
        assert_eq!(marked["data_op"], "D");
        assert_eq!(marked["data"]["item"]["id"], "a");
        let user_delete = event(&mark, &record("REMOVE", false));
        assert!(user_delete["data"].get("ttl_expired").is_none());
    }

    #[test]
    fn both_transform_paths_end_with_data_so_the_mark_lands_inside_it() {
        for raw in [
            record("INSERT", false),
            record("MODIFY", false),
            record("REMOVE", true),
        ] {
            for event in [
                transform::transform(&raw, &settings()).unwrap(),
                transform::transform_reference(&raw, &settings()).unwrap(),
            ] {
                let body = event.body();
                let marked: Value = serde_json::from_slice(&mark_ttl_expired(body)).unwrap();
                let plain: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(marked["data"]["ttl_expired"], true);
                assert_eq!(marked["data"]["patch"], plain["data"]["patch"]);
                assert_eq!(
                    marked["data"]["sequence_number"],
                    plain["data"]["sequence_number"]
                );
                assert_eq!(marked["metadata"], plain["metadata"]);
            }
        }
    }

    #[test]
    fn event_names_not_listed_are_skipped() {
        let f = Filter {
            event_names: EventNames::parse("INSERT, REMOVE").unwrap(),
            ..Filter::default()
        };
        assert_eq!(skipped(&f, &record("MODIFY", false)), Skip::EventName);
        assert_eq!(event(&f, &record("INSERT", false))["data_op"], "C");
        assert_eq!(event(&f, &record("REMOVE", true))["data_op"], "D");
    }

    #[test]
    fn dropped_attributes_are_in_neither_item_nor_patch() {
        let f = Filter {
            drop_attributes: vec!["email".into(), "absent".into()],
            ..Filter::default()
        };
        let e = event(&f, &record("MODIFY", false));
        assert_eq!(e["data"]["item"], serde_json::json!({"id": "a", "n": 2}));
        assert_eq!(
            e["data"]["patch"],
            serde_json::json!([{"op": "replace", "path": "/n", "value": 2}])
        );
        assert_eq!(e["metadata"]["occurred_at"], "2025-11-22T06:56:10.123Z");
    }

    #[test]
    fn a_record_that_fails_is_dead_lettered_without_the_dropped_attributes() {
        let f = Filter {
            drop_attributes: vec!["email".into()],
            ..Filter::default()
        };
        let raw = record("MODIFY", false).replace(r#""N":"2""#, r#""N":"two""#);
        match f.apply(&raw, &settings()) {
            Filtered::Failed { raw, failure } => {
                assert!(!raw.contains("example.org"), "{raw}");
                assert!(
                    failure.error.to_string().contains("/n"),
                    "{}",
                    failure.error
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_records_reach_the_transform_and_fail_there() {
        let f = Filter {
            ttl_deletes: TtlDeletes::Skip,
            ..Filter::default()
        };
        assert!(matches!(
            f.apply("not json", &settings()),
            Filtered::Failed { .. }
        ));
    }

    #[test]
    fn event_names_parse() {
        assert_eq!(
            EventNames::parse("INSERT,MODIFY,REMOVE"),
            Ok(EventNames::ALL)
        );
        assert!(EventNames::parse("insert").is_err());
        assert!(EventNames::parse(" , ").is_err());
    }
}

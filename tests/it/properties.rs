//! The record → event path on input no well-behaved stream sends: arbitrary text, byte-garbled
//! records and structurally odd ones. The transform must never panic (a panic kills the shard's
//! task, and the record would be re-read and kill the next owner too); what it accepts must be a
//! valid data change event with the record's eid, and what it refuses must say why, so the DLQ
//! message has a reason.
//!
//! The parsers of Nakadi's answers and of DLQ bodies have their properties beside their code
//! (src/nakadi/response.rs, src/dlq/message.rs): they are crate-private.

use std::sync::LazyLock;

use dynamodb_nakadi_relay::transform::{EventSettings, eid_for, transform};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(include_str!("../schema/data-change-event.schema.json")).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
});

fn settings(compaction: bool) -> EventSettings {
    EventSettings {
        data_type: "payments:order".into(),
        compaction_key: compaction.then(|| vec!["pk".to_string()]),
    }
}

/// Whether `raw` became an event (with compaction off), after checking the contract either way.
fn check_transform(raw: &str) -> bool {
    let mut accepted = false;
    for compaction in [false, true] {
        match transform(raw, &settings(compaction)) {
            Ok(event) => {
                let v: Value = serde_json::from_slice(event.body()).unwrap_or_else(|e| {
                    panic!(
                        "event is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(event.body())
                    )
                });
                let errors: Vec<String> = SCHEMA.iter_errors(&v).map(|e| e.to_string()).collect();
                assert!(
                    errors.is_empty(),
                    "accepted {raw:?} as an invalid event {v}: {errors:?}"
                );
                assert_eq!(v["metadata"]["eid"], event.eid.to_string().as_str());
                assert_eq!(event.eid, eid_for(event.event_id()));
                accepted |= !compaction;
            }
            Err(failure) => {
                assert!(
                    !failure.error.to_string().trim().is_empty(),
                    "a refusal without a reason for {raw:?}"
                );
            }
        }
    }
    accepted
}

/// DynamoDB attribute values, mostly right, sometimes wrong in the ways a wire record can be.
fn attribute() -> impl Strategy<Value = Value> {
    // Mostly what DynamoDB sends, so that whole records get through and their events are
    // checked too; one leaf in about six is something it never sends.
    let number = prop_oneof![
        8 => "-?(0|[1-9][0-9]{0,37})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?",
        1 => Just("1E+125".to_string()),
        1 => Just("1E-130".to_string()),
        1 => Just("NaN".to_string()),
        1 => Just("".to_string()),
        1 => Just("+1".to_string()),
        1 => Just(".5".to_string()),
        1 => Just("1e99999999999999999999".to_string()),
        1 => any::<String>(),
    ];
    let leaf = prop_oneof![
        4 => any::<String>().prop_map(|s| json!({"S": s})),
        4 => number.clone().prop_map(|n| json!({"N": n})),
        2 => "([A-Za-z0-9+/]{4}){0,3}".prop_map(|b| json!({"B": b})),
        2 => any::<bool>().prop_map(|b| json!({"BOOL": b})),
        2 => Just(json!({"NULL": true})),
        2 => prop::collection::btree_set(any::<String>(), 1..4).prop_map(|v| json!({"SS": v})),
        2 => prop::collection::vec(number, 1..4).prop_map(|v| json!({"NS": v})),
        1 => prop::collection::vec("[A-Za-z0-9+/]{0,8}={0,2}", 0..4).prop_map(|v| json!({"BS": v})),
        1 => any::<String>().prop_map(|b| json!({"B": b})),
        1 => Just(json!({"NULL": false})),
        // Wrong shapes.
        1 => Just(json!({"S": 5})),
        1 => Just(json!({"N": 5})),
        1 => Just(json!({"X": "unknown type"})),
        1 => Just(json!({})),
        1 => Just(json!({"S": "a", "N": "1"})),
        1 => Just(json!("bare")),
        1 => Just(json!(null)),
        1 => Just(json!({"BOOL": "true"})),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            4 => prop::collection::vec(inner.clone(), 0..4).prop_map(|l| json!({"L": l})),
            4 => prop::collection::hash_map("[a-z/~ é]{0,6}", inner.clone(), 0..4)
                .prop_map(|m| json!({"M": m})),
            1 => prop::collection::vec(inner, 0..3).prop_map(|l| json!({"M": l})),
        ]
    })
}

fn image() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => prop::collection::hash_map("[a-z/~ é]{0,6}", attribute(), 0..3).prop_map(|mut m| {
            m.insert("pk".into(), json!({"S": "k"}));
            json!(m)
        }),
        1 => Just(json!({})),
        1 => Just(json!(null)),
        1 => Just(json!([1, 2])),
        1 => Just(json!("image")),
    ]
}

fn record() -> impl Strategy<Value = Value> {
    let event_name = prop_oneof![
        4 => Just(json!("INSERT")),
        4 => Just(json!("MODIFY")),
        4 => Just(json!("REMOVE")),
        1 => Just(json!("UPSERT")),
        1 => Just(json!(7)),
        1 => Just(Value::Null),
    ];
    let created = prop_oneof![
        8 => (1_000_000_000.0..2_000_000_000.0f64).prop_map(|f| json!(f)),
        1 => any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => any::<i64>().prop_map(|i| json!(i)),
        1 => Just(json!("2026-11-22T06:16:10Z")),
        1 => Just(serde_json::from_str::<Value>("1e400").unwrap()),
        1 => Just(serde_json::from_str::<Value>("-99999999999999999999999999").unwrap()),
    ];
    let event_id = prop_oneof![
        8 => "[0-9a-f]{32}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
        1 => Just(None),
    ];
    let sequence = prop_oneof![
        8 => "[1-9][0-9]{20}".prop_map(Some),
        1 => "[0-9]{0,30}".prop_map(Some),
        1 => Just(None),
    ];
    let image = || {
        prop_oneof![
            6 => image().prop_map(Some),
            1 => Just(None),
        ]
    };
    (event_id, event_name, created, image(), image(), sequence)
        .prop_map(|(event_id, name, created, new, old, seq)| {
            let mut dynamodb = json!({"ApproximateCreationDateTime": created, "Keys": {"pk": {"S": "k"}},
                                      "StreamViewType": "NEW_AND_OLD_IMAGES", "SizeBytes": 10});
            if let Some(new) = new {
                dynamodb["NewImage"] = new;
            }
            if let Some(old) = old {
                dynamodb["OldImage"] = old;
            }
            if let Some(seq) = seq {
                dynamodb["SequenceNumber"] = json!(seq);
            }
            let mut r =
                json!({"eventName": name, "eventSource": "aws:dynamodb", "dynamodb": dynamodb});
            if let Some(id) = event_id {
                r["eventID"] = json!(id);
            }
            r
        })
}

const VALID: &str = include_str!("../fixtures/transform/order-modify.json");

/// Byte edits of a valid text: deletions, insertions and replacements at random places.
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn transform_never_panics_on_any_text(raw in any::<String>()) {
        check_transform(&raw);
    }

    #[test]
    fn transform_never_panics_on_garbled_records(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        check_transform(&garble(VALID, &edits));
    }

    #[test]
    fn transform_never_panics_on_structurally_odd_records(r in record()) {
        check_transform(&r.to_string());
    }
}

/// The generators reach both sides of the contract: without this, a transform that refused
/// everything (or a generator that only made garbage) would pass the properties above.
#[test]
fn the_generators_produce_accepted_and_refused_records() {
    assert!(check_transform(VALID), "the fixture is accepted");
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..300 {
        let r = record().new_tree(&mut runner).unwrap().current();
        if check_transform(&r.to_string()) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        accepted >= 10 && refused >= 10,
        "accepted {accepted}, refused {refused}"
    );
}

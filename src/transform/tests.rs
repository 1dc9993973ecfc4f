//! The contract of the event, on both paths: every attribute type and edge, the patch, the
//! envelope, failures, and property tests of the fast path against the reference.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(include_str!(
        "../../tests/schema/data-change-event.schema.json"
    ))
    .expect("the schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
});

fn settings() -> EventSettings {
    EventSettings {
        data_type: "payments:order".into(),
        compaction_key: None,
    }
}

fn keyed(names: &[&str]) -> EventSettings {
    EventSettings {
        compaction_key: Some(names.iter().map(|n| n.to_string()).collect()),
        ..settings()
    }
}

/// A wire record; the images are DynamoDB JSON, written into it as they are.
fn record(event_name: &str, old: Option<&str>, new: Option<&str>) -> String {
    let mut dynamodb = String::from(r#"{"ApproximateCreationDateTime":1.7637921701E9"#);
    if let Some(new) = new {
        dynamodb += &format!(r#","NewImage":{new}"#);
    }
    if let Some(old) = old {
        dynamodb += &format!(r#","OldImage":{old}"#);
    }
    dynamodb += r#","SequenceNumber":"100","SizeBytes":50,"StreamViewType":"NEW_AND_OLD_IMAGES"}"#;
    format!(
        r#"{{"eventID":"e1","eventName":"{event_name}","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"eu-central-1","dynamodb":{dynamodb}}}"#
    )
}

fn image(value: &Value) -> String {
    serde_json::to_string(value).unwrap()
}

/// The event on both paths: the fast path must take the record and match the reference byte
/// for byte, and the event must be valid by the project's schema.
fn event(raw: &str, settings: &EventSettings) -> Event {
    let reference = transform_reference(raw, settings)
        .unwrap_or_else(|f| panic!("reference failed: {}\n{raw}", f.error));
    let fast = event::build(raw, settings).expect("the fast path takes the record");
    assert_eq!(
        text(&fast),
        text(&reference),
        "fast vs reference for\n{raw}"
    );
    assert_eq!(
        (
            &fast.eid,
            &fast.sequence_number(),
            &fast.event_id(),
            fast.created_at_ms
        ),
        (
            &reference.eid,
            &reference.sequence_number(),
            &reference.event_id(),
            reference.created_at_ms
        )
    );
    let body: Value = serde_json::from_slice(fast.body()).unwrap();
    if let Err(e) = SCHEMA.validate(&body) {
        panic!(
            "invalid by the schema: {e} at {}\n{}",
            e.instance_path(),
            text(&fast)
        );
    }
    fast
}

fn text(event: &Event) -> &str {
    std::str::from_utf8(event.body()).unwrap()
}

fn body(event: &Event) -> Value {
    serde_json::from_slice(event.body()).unwrap()
}

#[derive(serde::Deserialize)]
struct Parts<'a> {
    #[serde(borrow)]
    data: DataParts<'a>,
}

#[derive(serde::Deserialize)]
struct DataParts<'a> {
    #[serde(borrow)]
    item: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    patch: &'a serde_json::value::RawValue,
}

/// The item's JSON text inside the event.
fn item_text(event: &Event) -> &str {
    let parts: Parts = serde_json::from_str(text(event)).unwrap();
    parts.data.item.get()
}

/// The patch's operations as they are in the event, without the brackets.
fn patch_text(event: &Event) -> &str {
    let parts: Parts = serde_json::from_str(text(event)).unwrap();
    let patch = parts.data.patch.get();
    &patch[1..patch.len() - 1]
}

#[test]
fn the_event_is_exactly_so() {
    let raw = record(
        "MODIFY",
        Some(r#"{"id":{"S":"a"},"n":{"N":"1"},"tags":{"SS":["a","b"]},"gone":{"BOOL":true}}"#),
        Some(r#"{"n":{"N":"1.50"},"id":{"S":"a"},"tags":{"SS":["b","a"]}}"#),
    );
    let e = event(&raw, &settings());
    assert_eq!(
        text(&e),
        concat!(
            r#"{"metadata":{"eid":"e6d05ca3-204b-57d8-bd8e-4379276fdeeb","occurred_at":"2025-11-22T06:16:10.100Z"},"#,
            r#""data_op":"U","data_type":"payments:order","#,
            r#""data":{"item":{"id":"a","n":1.50,"tags":["a","b"]},"#,
            r#""patch":[{"op":"replace","path":"/n","value":1.50},{"op":"remove","path":"/gone"}],"#,
            r#""sequence_number":"0000000000000000000000000000000000000100"}}"#
        )
    );
    assert_eq!(e.eid, eid_for("e1"));
    assert_eq!(e.sequence_number(), "100");
    assert_eq!(e.event_id(), "e1");
    assert_eq!(e.created_at_ms, 1_763_792_170_100);
}

#[test]
fn eids_are_fixed_forever() {
    let derived = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:dynamodb-nakadi-relay:eid");
    assert_eq!(EID_NAMESPACE, derived);
    assert_eq!(
        eid_for("e1").to_string(),
        "e6d05ca3-204b-57d8-bd8e-4379276fdeeb"
    );
    assert_eq!(
        eid_for("c81e728d9d4c2f636f067f89cc14862c").to_string(),
        "daffa7a8-567c-556e-9970-edd38f462cf5"
    );
    assert_eq!(eid_for("e1").get_version_num(), 5);
}

#[test]
fn every_attribute_type_and_edge() {
    let cases: &[(&str, &str, &str)] = &[
        ("S", r#"{"S":"hello"}"#, r#""hello""#),
        ("empty S", r#"{"S":""}"#, r#""""#),
        ("astral plane", r#"{"S":"😀 𝄞"}"#, r#""😀 𝄞""#),
        (
            "astral plane as surrogate escapes",
            r#"{"S":"\ud83d\ude00"}"#,
            r#""😀""#,
        ),
        (
            "escapes",
            r#"{"S":"q\"b\\n\n\t\u0001\u001f\/é\u00e9"}"#,
            r#""q\"b\\n\n\t\u0001\u001f/éé""#,
        ),
        (
            "DEL and U+2028 stay raw",
            "{\"S\":\"\u{7f}\u{2028}\"}",
            "\"\u{7f}\u{2028}\"",
        ),
        (
            "38 digits",
            r#"{"N":"12345678901234567890123456789012345678"}"#,
            "12345678901234567890123456789012345678",
        ),
        (
            "38 digits, negative fraction",
            r#"{"N":"-0.12345678901234567890123456789012345678"}"#,
            "-0.12345678901234567890123456789012345678",
        ),
        ("1E+125", r#"{"N":"1E+125"}"#, "1e+125"),
        ("1E-130", r#"{"N":"1E-130"}"#, "1e-130"),
        (
            "largest",
            r#"{"N":"9.9999999999999999999999999999999999999E+125"}"#,
            "9.9999999999999999999999999999999999999e+125",
        ),
        (
            "smallest negative",
            r#"{"N":"-9.9999999999999999999999999999999999999E+125"}"#,
            "-9.9999999999999999999999999999999999999e+125",
        ),
        (
            "many decimals",
            r#"{"N":"-123.45600000000000000000000000000000001"}"#,
            "-123.45600000000000000000000000000000001",
        ),
        ("digits as sent", r#"{"N":"1.50"}"#, "1.50"),
        ("zero", r#"{"N":"0"}"#, "0"),
        ("exponent without sign", r#"{"N":"5e3"}"#, "5e+3"),
        ("B, not UTF-8", r#"{"B":"AAEC/w=="}"#, r#""AAEC/w==""#),
        ("empty B", r#"{"B":""}"#, r#""""#),
        ("BOOL true", r#"{"BOOL":true}"#, "true"),
        ("BOOL false", r#"{"BOOL":false}"#, "false"),
        ("NULL", r#"{"NULL":true}"#, "null"),
        (
            "M, keys sorted",
            r#"{"M":{"b":{"N":"2"},"a":{"S":"x"},"B":{"NULL":true}}}"#,
            r#"{"B":null,"a":"x","b":2}"#,
        ),
        ("empty M", r#"{"M":{}}"#, "{}"),
        (
            "NULL and BOOL in L",
            r#"{"L":[{"NULL":true},{"BOOL":false},{"BOOL":true},{"S":"x"},{"L":[]}]}"#,
            r#"[null,false,true,"x",[]]"#,
        ),
        ("empty L", r#"{"L":[]}"#, "[]"),
        // U+FF5E before U+1F600: code point order, where UTF-16 order would swap them.
        (
            "SS reversed",
            r#"{"SS":["😀","～","é","c","b","a","Z",""]}"#,
            r#"["","Z","a","b","c","é","～","😀"]"#,
        ),
        (
            "NS reversed",
            r#"{"NS":["1E+125","100","99.5","10","1E-130","0","-1","-1E+125"]}"#,
            "[-1e+125,-1,0,1e-130,10,99.5,100,1e+125]",
        ),
        (
            "NS, 38 digits differing in the last",
            r#"{"NS":["1.0000000000000000000000000000000000002","1.0000000000000000000000000000000000001"]}"#,
            "[1.0000000000000000000000000000000000001,1.0000000000000000000000000000000000002]",
        ),
        (
            "BS reversed, by bytes not by text",
            r#"{"BS":["/w==","gA==","AQ==","AA=="]}"#,
            r#"["AA==","AQ==","gA==","/w=="]"#,
        ),
    ];
    for (label, attribute, want) in cases {
        let raw = record("INSERT", None, Some(&format!(r#"{{"a":{attribute}}}"#)));
        let e = event(&raw, &settings());
        assert_eq!(item_text(&e), format!(r#"{{"a":{want}}}"#), "{label}");
        assert_eq!(
            patch_text(&e),
            format!(r#"{{"op":"add","path":"/a","value":{want}}}"#),
            "{label}"
        );
    }
}

#[test]
fn attribute_names_sort_by_code_point_and_escape_in_paths() {
    let names = ["z", "a/b", "m~n", "with space", "ünï", "", "A", "q\"", "~1"];
    let old: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), json!({"N": "1"})))
        .collect();
    let new: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), json!({"N": "2"})))
        .collect();
    let raw = record(
        "MODIFY",
        Some(&image(&Value::Object(old))),
        Some(&image(&Value::Object(new))),
    );
    let e = event(&raw, &settings());
    assert_eq!(
        item_text(&e),
        r#"{"":2,"A":2,"a/b":2,"m~n":2,"q\"":2,"with space":2,"z":2,"~1":2,"ünï":2}"#
    );
    let paths: Vec<String> = body(&e)["data"]["patch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/",
            "/A",
            "/a~1b",
            "/m~0n",
            "/q\"",
            "/with space",
            "/z",
            "/~01",
            "/ünï"
        ]
    );
    assert!(patch_text(&e).contains(r#""path":"/q\"""#));
}

#[test]
fn escaped_names_on_the_wire() {
    let raw = record(
        "INSERT",
        None,
        Some(r#"{"a\/b":{"S":"x"},"\u00fc":{"S":"y"},"t\tab":{"S":"z"}}"#),
    );
    let e = event(&raw, &settings());
    assert_eq!(item_text(&e), r#"{"a/b":"x","t\tab":"z","ü":"y"}"#);
    assert!(patch_text(&e).contains(r#""path":"/a~1b""#));
    assert!(patch_text(&e).contains(r#""path":"/t\tab""#));
}

#[test]
fn patches() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("unchanged", r#"{"a":{"S":"x"}}"#, r#"{"a":{"S":"x"}}"#, ""),
        (
            "replace",
            r#"{"a":{"S":"x"}}"#,
            r#"{"a":{"S":"y"}}"#,
            r#"{"op":"replace","path":"/a","value":"y"}"#,
        ),
        (
            "add, then remove",
            r#"{"a":{"S":"x"},"b":{"N":"1"}}"#,
            r#"{"c":{"BOOL":true},"a":{"S":"x"}}"#,
            r#"{"op":"add","path":"/c","value":true},{"op":"remove","path":"/b"}"#,
        ),
        (
            "type change",
            r#"{"a":{"S":"1"}}"#,
            r#"{"a":{"N":"1"}}"#,
            r#"{"op":"replace","path":"/a","value":1}"#,
        ),
        (
            "map to list",
            r#"{"a":{"M":{}}}"#,
            r#"{"a":{"L":[]}}"#,
            r#"{"op":"replace","path":"/a","value":[]}"#,
        ),
        (
            "numbers compare by their digits",
            r#"{"a":{"N":"1"}}"#,
            r#"{"a":{"N":"1.0"}}"#,
            r#"{"op":"replace","path":"/a","value":1.0}"#,
        ),
        (
            "exponent spelling is no change",
            r#"{"a":{"N":"1E2"}}"#,
            r#"{"a":{"N":"1e+2"}}"#,
            "",
        ),
        (
            "S and B of the same text are the same JSON",
            r#"{"a":{"S":"AQ=="}}"#,
            r#"{"a":{"B":"AQ=="}}"#,
            "",
        ),
        (
            "set and list of the same JSON",
            r#"{"a":{"SS":["x"]}}"#,
            r#"{"a":{"L":[{"S":"x"}]}}"#,
            "",
        ),
        (
            "nested map",
            r#"{"m":{"M":{"x":{"N":"1"},"y":{"N":"1"}}}}"#,
            r#"{"m":{"M":{"x":{"N":"2"},"y":{"N":"1"}}}}"#,
            r#"{"op":"replace","path":"/m/x","value":2}"#,
        ),
        (
            "list grows",
            r#"{"l":{"L":[{"N":"1"}]}}"#,
            r#"{"l":{"L":[{"N":"1"},{"N":"2"},{"N":"3"}]}}"#,
            r#"{"op":"add","path":"/l/1","value":2},{"op":"add","path":"/l/2","value":3}"#,
        ),
        (
            "list shrinks",
            r#"{"l":{"L":[{"N":"1"},{"N":"2"},{"N":"3"}]}}"#,
            r#"{"l":{"L":[{"N":"9"}]}}"#,
            r#"{"op":"replace","path":"/l/0","value":9},{"op":"remove","path":"/l/1"},{"op":"remove","path":"/l/1"}"#,
        ),
        (
            "list of maps",
            r#"{"l":{"L":[{"M":{"q":{"N":"1"}}},{"M":{"q":{"N":"1"}}}]}}"#,
            r#"{"l":{"L":[{"M":{"q":{"N":"1"}}},{"M":{"q":{"N":"2"}}}]}}"#,
            r#"{"op":"replace","path":"/l/1/q","value":2}"#,
        ),
        (
            "set order only",
            r#"{"s":{"SS":["a","b","c"]},"n":{"NS":["3","1","2"]},"b":{"BS":["AQ==","AA=="]}}"#,
            r#"{"s":{"SS":["c","a","b"]},"n":{"NS":["2","3","1"]},"b":{"BS":["AA==","AQ=="]}}"#,
            "",
        ),
        (
            "set member added",
            r#"{"s":{"SS":["a","c"]}}"#,
            r#"{"s":{"SS":["c","b","a"]}}"#,
            r#"{"op":"replace","path":"/s/1","value":"b"},{"op":"add","path":"/s/2","value":"c"}"#,
        ),
        (
            "spelled differently, same JSON",
            r#"{"m":{"M":{"b":{"N":"1E2"},"a":{"S":"\u0078"}}},"l":{"L":[ {"S":"y"} ]}}"#,
            r#"{"l":{"L":[{"S":"y"}]},"m":{"M":{"a":{"S":"x"},"b":{"N":"1e+2"}}}}"#,
            "",
        ),
        (
            "deep in one item of a list of maps",
            r#"{"l":{"L":[{"M":{"q":{"N":"1"},"r":{"L":[{"S":"a"},{"S":"b"}]}}},{"M":{"q":{"N":"1"}}}]}}"#,
            r#"{"l":{"L":[{"M":{"q":{"N":"1"},"r":{"L":[{"S":"a"},{"S":"c"}]}}},{"M":{"q":{"N":"1"}}}]}}"#,
            r#"{"op":"replace","path":"/l/0/r/1","value":"c"}"#,
        ),
        (
            "plain values against escaped or other spellings",
            r#"{"a":{"S":"a/b"},"n":{"N":"100"},"l":{"L":[{"M":{"q":{"S":"x"},"r":{"N":"-0.50"}}}]}}"#,
            r#"{"a":{"S":"a\/b"},"n":{"N":"1E2"},"l":{"L":[{"M":{"q":{"S":"\u0078"},"r":{"N":"-0.5"}}}]}}"#,
            r#"{"op":"replace","path":"/l/0/r","value":-0.5},{"op":"replace","path":"/n","value":1e+2}"#,
        ),
        (
            "everything removed",
            r#"{"a":{"S":"x"},"b":{"S":"y"}}"#,
            "{}",
            r#"{"op":"remove","path":"/a"},{"op":"remove","path":"/b"}"#,
        ),
    ];
    for (label, old, new, want) in cases {
        let e = event(&record("MODIFY", Some(old), Some(new)), &settings());
        assert_eq!(patch_text(&e), *want, "{label}");
        assert_patch_applies(&e, old, new);
    }
}

/// Applying the event's patch to the old image's JSON gives the new image's JSON exactly.
fn assert_patch_applies(e: &Event, old: &str, new: &str) {
    let json_of = |image: &str, event_name| {
        let raw = if event_name == "REMOVE" {
            record("REMOVE", Some(image), None)
        } else {
            record("INSERT", None, Some(image))
        };
        body(&event(&raw, &settings()))["data"]["item"].clone()
    };
    let (mut doc, want) = (json_of(old, "REMOVE"), json_of(new, "INSERT"));
    // From the text: through a `Value`, serde_json would read `-0` back as `0`.
    let patch: json_patch::Patch = serde_json::from_str(&format!("[{}]", patch_text(e))).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(doc, want);
    assert_eq!(
        serde_json::to_string(&doc).unwrap(),
        serde_json::to_string(&want).unwrap()
    );
}

#[test]
fn insert_and_remove() {
    let item = r#"{"id":{"S":"a"},"n":{"N":"1"}}"#;
    let insert = event(&record("INSERT", None, Some(item)), &settings());
    assert_eq!(body(&insert)["data_op"], "C");
    assert_eq!(item_text(&insert), r#"{"id":"a","n":1}"#);
    assert_eq!(
        patch_text(&insert),
        r#"{"op":"add","path":"/id","value":"a"},{"op":"add","path":"/n","value":1}"#
    );
    let remove = event(&record("REMOVE", Some(item), None), &settings());
    assert_eq!(body(&remove)["data_op"], "D");
    assert_eq!(item_text(&remove), r#"{"id":"a","n":1}"#);
    assert_eq!(
        patch_text(&remove),
        r#"{"op":"remove","path":"/id"},{"op":"remove","path":"/n"}"#
    );
}

fn nested(depth: usize, leaf: &str) -> String {
    let mut v = format!(r#"{{"S":"{leaf}"}}"#);
    for _ in 0..depth {
        v = format!(r#"{{"M":{{"n":{v}}}}}"#);
    }
    format!(r#"{{"n":{v}}}"#)
}

#[test]
fn nesting_30_and_32_levels_deep() {
    for depth in [30, 32] {
        let (old, new) = (nested(depth, "old"), nested(depth, "new"));
        let e = event(&record("MODIFY", Some(&old), Some(&new)), &settings());
        let path = "/n".repeat(depth + 1);
        assert_eq!(
            patch_text(&e),
            format!(r#"{{"op":"replace","path":"{path}","value":"new"}}"#)
        );
        assert_patch_applies(&e, &old, &new);
    }
}

#[test]
fn a_350_kb_item() {
    let attributes: serde_json::Map<String, Value> = (0..350)
        .map(|i| {
            (
                format!("attr_{i:03}"),
                json!({"S": format!("{i:03}-{}", "x".repeat(996))}),
            )
        })
        .collect();
    let mut changed = attributes.clone();
    changed.insert("attr_123".into(), json!({"N": "42"}));
    let (old, new) = (
        image(&Value::Object(attributes)),
        image(&Value::Object(changed)),
    );
    let insert = event(&record("INSERT", None, Some(&old)), &settings());
    assert!(
        insert.body().len() > 700_000,
        "item and its adds: {}",
        insert.body().len()
    );
    let modify = event(&record("MODIFY", Some(&old), Some(&new)), &settings());
    assert!(modify.body().len() > 350_000);
    assert_eq!(
        patch_text(&modify),
        r#"{"op":"replace","path":"/attr_123","value":42}"#
    );
    assert_patch_applies(&modify, &old, &new);
}

#[test]
fn the_same_record_gives_the_same_bytes_whatever_the_wire_order() {
    let a = record(
        "MODIFY",
        Some(r#"{"x":{"N":"1"},"s":{"SS":["b","a"]}}"#),
        Some(r#"{"y":{"BOOL":true},"x":{"N":"2"},"s":{"SS":["a","b"]}}"#),
    );
    let b = record(
        "MODIFY",
        Some(r#"{"s":{"SS":["a","b"]},"x":{"N":"1"}}"#),
        Some(r#"{"s":{"SS":["b","a"]},"x":{"N":"2"},"y":{"BOOL":true}}"#),
    );
    let first = transform(&a, &settings()).unwrap();
    assert_eq!(first.body(), transform(&a, &settings()).unwrap().body());
    assert_eq!(first.body(), transform(&b, &settings()).unwrap().body());
}

/// A thread writes events into shared chunks and takes a chunk again once all its events are
/// dropped: an event kept alive keeps its bytes, however many events follow.
#[test]
fn events_keep_their_bytes_while_their_chunk_is_reused() {
    let raw = include_str!("../../tests/fixtures/transform/order-modify.json").trim_end();
    let kept = transform(raw, &settings()).unwrap();
    let copy = kept.body().to_vec();
    let mut dropped = 0;
    // Some hundred events of 1.7 KB fill several 64 KB chunks.
    for _ in 0..300 {
        dropped += transform(raw, &settings()).unwrap().body().len();
    }
    assert_eq!(dropped, 300 * copy.len());
    assert_eq!(kept.body(), copy);
}

#[test]
fn compaction_keys() {
    let item = r#"{"id":{"S":"order-42"},"n":{"N":"17"},"e":{"N":"1E2"},"b":{"B":"AAEC/w=="},"q":{"S":"say \"hi\""},"m":{"M":{}}}"#;
    let raw = record("INSERT", None, Some(item));
    let key = |settings: &EventSettings| {
        body(&event(&raw, settings))["metadata"]["partition_compaction_key"].clone()
    };
    assert_eq!(
        key(&settings()),
        Value::Null,
        "absent without RELAY_COMPACTION_KEY"
    );
    assert!(!text(&event(&raw, &settings())).contains("partition_compaction_key"));
    assert_eq!(key(&keyed(&["id"])), "order-42");
    assert_eq!(key(&keyed(&["n"])), "17");
    assert_eq!(key(&keyed(&["e"])), "1e+2");
    assert_eq!(key(&keyed(&["b"])), "AAEC/w==");
    assert_eq!(key(&keyed(&["q"])), "say \"hi\"");
    assert_eq!(key(&keyed(&["id", "n"])), r#"["order-42",17]"#);
    assert_eq!(key(&keyed(&["q", "b"])), r#"["say \"hi\"","AAEC/w=="]"#);
    let removed = event(&record("REMOVE", Some(item), None), &keyed(&["id"]));
    assert_eq!(
        body(&removed)["metadata"]["partition_compaction_key"],
        "order-42"
    );
    assert!(
        text(&event(&raw, &keyed(&["id", "n"])))
            .starts_with(r#"{"metadata":{"eid":"e6d05ca3-204b-57d8-bd8e-4379276fdeeb","occurred_at":"2025-11-22T06:16:10.100Z","partition_compaction_key":"[\"order-42\",17]"},"data_op":"C""#)
    );

    // Values that hold the separators of a naive format still give different keys.
    let pair = |hash: &str, range: &str| {
        let item = json!({"h": {"S": hash}, "r": {"S": range}});
        let raw = record("INSERT", None, Some(&image(&item)));
        body(&event(&raw, &keyed(&["h", "r"])))["metadata"]["partition_compaction_key"].clone()
    };
    assert_ne!(pair("a\",\"b", "c"), pair("a", "b\",\"c"));
    assert_ne!(pair("a|b", "c"), pair("a", "b|c"));

    for (names, want) in [
        (
            &["missing"][..],
            "partition_compaction_key: key attribute \"missing\" is not a string, number or binary of the item",
        ),
        (
            &["m"][..],
            "partition_compaction_key: key attribute \"m\" is not a string, number or binary of the item",
        ),
        (
            &["id", "missing"][..],
            "partition_compaction_key: key attribute \"missing\" is not a string, number or binary of the item",
        ),
        (
            &[][..],
            "partition_compaction_key: no key attributes configured",
        ),
    ] {
        assert_fails(&raw, &keyed(names), Some("100"), Some("e1"), want);
    }
}

/// Both paths fail alike, the fast path leaves the record to the reference, and the failure
/// carries what could be read.
fn assert_fails(
    raw: &str,
    settings: &EventSettings,
    seq: Option<&str>,
    id: Option<&str>,
    reason: &str,
) {
    assert!(
        event::build(raw, settings).is_none(),
        "the fast path took {raw}"
    );
    let failure = transform(raw, settings).expect_err(raw);
    let reference = transform_reference(raw, settings).expect_err(raw);
    assert_eq!(failure.error.to_string(), reference.error.to_string());
    assert_eq!(failure.error.to_string(), reason, "{raw}");
    assert_eq!(failure.sequence_number.as_deref(), seq, "{raw}");
    assert_eq!(failure.event_id.as_deref(), id, "{raw}");
}

#[test]
fn malformed_records_fail_with_what_could_be_read() {
    let new = |attributes: &str| record("INSERT", None, Some(attributes));
    let cases: Vec<(String, Option<&str>, Option<&str>, &str)> = vec![
        ("not JSON".into(), None, None, "malformed record: not JSON: expected ident at line 1 column 2"),
        (r#"{"eventID":"e1""#.into(), None, None, "malformed record: not JSON: EOF while parsing an object at line 1 column 15"),
        (r#"["e1","INSERT",{}]"#.into(), None, None, "malformed record: no eventID string"),
        (r#"{"eventName":"INSERT","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":1,"NewImage":{}}}"#.into(),
            Some("100"), None, "malformed record: no eventID string"),
        (r#"{"eventID":5,"eventName":"INSERT","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":1,"NewImage":{}}}"#.into(),
            Some("100"), None, "malformed record: no eventID string"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"ApproximateCreationDateTime":1,"NewImage":{}}}"#.into(),
            None, Some("e1"), "malformed record: no dynamodb.SequenceNumber string"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"SequenceNumber":100,"ApproximateCreationDateTime":1,"NewImage":{}}}"#.into(),
            None, Some("e1"), "malformed record: no dynamodb.SequenceNumber string"),
        (r#"{"eventID":"e1","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":1,"NewImage":{}}}"#.into(),
            Some("100"), Some("e1"), "malformed record: no eventName string"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"SequenceNumber":"100","NewImage":{}}}"#.into(),
            Some("100"), Some("e1"), "malformed record: no dynamodb.ApproximateCreationDateTime number"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":"1","NewImage":{}}}"#.into(),
            Some("100"), Some("e1"), "malformed record: no dynamodb.ApproximateCreationDateTime number"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":1E+20,"NewImage":{}}}"#.into(),
            Some("100"), Some("e1"), "ApproximateCreationDateTime 1e+20 is out of range"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":-1E+12,"NewImage":{}}}"#.into(),
            Some("100"), Some("e1"), "ApproximateCreationDateTime -1e+12 is out of range"),
        (r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"SequenceNumber":"100","ApproximateCreationDateTime":1,"NewImage":[]}}"#.into(),
            Some("100"), Some("e1"), "malformed record: NewImage is not a map of attribute values"),
        (record("UPDATE", None, Some("{}")), Some("100"), Some("e1"), "eventName \"UPDATE\" is not INSERT, MODIFY or REMOVE"),
        (record("MODIFY", None, None), Some("100"), Some("e1"),
            "MODIFY record without OldImage: the stream's view type must be NEW_AND_OLD_IMAGES"),
        (record("MODIFY", None, Some("{}")), Some("100"), Some("e1"),
            "MODIFY record without OldImage: the stream's view type must be NEW_AND_OLD_IMAGES"),
        (record("MODIFY", Some("{}"), None), Some("100"), Some("e1"),
            "MODIFY record without NewImage: the stream's view type must be NEW_AND_OLD_IMAGES"),
        (record("INSERT", None, None), Some("100"), Some("e1"),
            "INSERT record without NewImage: the stream's view type must be NEW_AND_OLD_IMAGES"),
        (record("REMOVE", None, Some("{}")), Some("100"), Some("e1"),
            "REMOVE record without OldImage: the stream's view type must be NEW_AND_OLD_IMAGES"),
        (new(r#"{"price":{"N":"1.2.3"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /price: N "1.2.3" is not a number"#),
        (new(r#"{"l":{"L":[{"M":{"a/b":{"N":"12a"}}}]}}"#), Some("100"), Some("e1"), r#"NewImage attribute /l/0/a~1b: N "12a" is not a number"#),
        (new(r#"{"ns":{"NS":["1","x"]}}"#), Some("100"), Some("e1"), r#"NewImage attribute /ns/1: N "x" is not a number"#),
        (new(r#"{"n":{"N":" 1"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /n: N " 1" is not a number"#),
        (new(r#"{"n":{"N":"+1"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /n: N "+1" is not a number"#),
        (new(r#"{"n":{"N":"NaN"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /n: N "NaN" is not a number"#),
        (new(r#"{"n":{"N":"Infinity"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /n: N "Infinity" is not a number"#),
        (new(r#"{"n":{"N":".5"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /n: N ".5" is not a number"#),
        (new(r#"{"n":{"N":1}}"#), Some("100"), Some("e1"), "NewImage attribute /n: N has a value of the wrong JSON type"),
        (new(&format!(r#"{{"n":{{"N":"{}x"}}}}"#, "1".repeat(100))), Some("100"), Some("e1"),
            "NewImage attribute /n: N \"1111111111111111111111111111111111111111111111111111111111111111\"… is not a number"),
        (new(r#"{"b":{"B":"not base64!"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /b: B "not base64!" is not base64: Invalid symbol 32, offset 3."#),
        (new(r#"{"b":{"B":"AQ="}}"#), Some("100"), Some("e1"), r#"NewImage attribute /b: B "AQ=" is not base64: Invalid padding"#),
        (new(r#"{"bs":{"BS":["AQ==","*"]}}"#), Some("100"), Some("e1"), r#"NewImage attribute /bs/1: B "*" is not base64: Invalid symbol 42, offset 0."#),
        (new(r#"{"x":{"X":"1"}}"#), Some("100"), Some("e1"), r#"NewImage attribute /x: unknown attribute type "X""#),
        (new(r#"{"x":{"S":"a","N":"1"}}"#), Some("100"), Some("e1"), "NewImage attribute /x: not an attribute value (an object with exactly one type)"),
        (new(r#"{"x":{}}"#), Some("100"), Some("e1"), "NewImage attribute /x: not an attribute value (an object with exactly one type)"),
        (new(r#"{"x":"a"}"#), Some("100"), Some("e1"), "NewImage attribute /x: not an attribute value (an object with exactly one type)"),
        (new(r#"{"x":{"BOOL":"true"}}"#), Some("100"), Some("e1"), "NewImage attribute /x: BOOL has a value of the wrong JSON type"),
        (new(r#"{"x":{"SS":"a"}}"#), Some("100"), Some("e1"), "NewImage attribute /x: a set that is not an array"),
        (new(r#"{"x":{"SS":["a",1]}}"#), Some("100"), Some("e1"), "NewImage attribute /x/1: a set member that is not a string"),
        (record("MODIFY", Some(r#"{"m":{"M":{"~":{"N":"1,5"}}}}"#), Some("{}")), Some("100"), Some("e1"),
            r#"OldImage attribute /m/~0: N "1,5" is not a number"#),
    ];
    for (raw, seq, id, reason) in &cases {
        assert_fails(raw, &settings(), *seq, *id, reason);
    }
}

#[test]
fn the_reference_builds_what_the_fast_path_leaves() {
    // Repeated names are JSON, never sent by DynamoDB: the fast path leaves them to the
    // reference, which keeps the last, as a JSON object is usually read.
    let raw = record(
        "INSERT",
        None,
        Some(r#"{"a":{"S":"first"},"b":{"M":{"c":{"N":"1"},"c":{"N":"2"}}},"a":{"S":"last"}}"#),
    );
    assert!(event::build(&raw, &settings()).is_none());
    let e = transform(&raw, &settings()).unwrap();
    assert_eq!(
        text(&e),
        text(&transform_reference(&raw, &settings()).unwrap())
    );
    assert_eq!(item_text(&e), r#"{"a":"last","b":{"c":2}}"#);
}

#[test]
fn repeated_old_images_and_old_names_are_left_to_the_reference() {
    // Never sent by DynamoDB. The fast path notes each old value in the new image's field, and
    // a second value for the same field would be lost: the reference resolves them.
    let repeated_image = record(
        "MODIFY",
        Some(r#"{"a":{"N":"1"}},"OldImage":{"a":{"N":"2"}}"#),
        Some(r#"{"a":{"N":"2"}}"#),
    );
    let repeated_name = record(
        "MODIFY",
        Some(r#"{"a":{"N":"2"},"a":{"N":"1"}}"#),
        Some(r#"{"a":{"N":"2"}}"#),
    );
    for (raw, patch) in [
        (repeated_image, ""),
        (repeated_name, r#"{"op":"replace","path":"/a","value":2}"#),
    ] {
        assert!(event::build(&raw, &settings()).is_none(), "{raw}");
        let e = transform(&raw, &settings()).unwrap();
        assert_eq!(
            text(&e),
            text(&transform_reference(&raw, &settings()).unwrap())
        );
        assert_eq!(patch_text(&e), patch, "{raw}");
    }
}

/// The record with its old image before its new one on the wire.
fn old_first(raw: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Record<'a> {
        #[serde(borrow)]
        dynamodb: Images<'a>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Images<'a> {
        #[serde(borrow)]
        new_image: &'a serde_json::value::RawValue,
        #[serde(borrow)]
        old_image: &'a serde_json::value::RawValue,
    }
    let images = serde_json::from_str::<Record>(raw).unwrap().dynamodb;
    let new_part = format!(r#","NewImage":{}"#, images.new_image.get());
    let old_part = format!(r#","OldImage":{}"#, images.old_image.get());
    let swapped = raw.replacen(
        &format!("{new_part}{old_part}"),
        &format!("{old_part}{new_part}"),
        1,
    );
    assert_ne!(swapped, raw);
    swapped
}

#[test]
fn image_order_on_the_wire_does_not_matter() {
    let raw = fixture("modify").trim_end();
    assert!(raw.find("NewImage") < raw.find("OldImage"));
    let swapped = old_first(raw);
    assert!(swapped.find("OldImage") < swapped.find("NewImage"));
    assert_eq!(
        event(raw, &settings()).body(),
        event(&swapped, &settings()).body()
    );
}

#[test]
fn a_remove_with_a_new_image_is_left_to_the_reference() {
    // Never sent by DynamoDB; the fast path reads an old image against the new one.
    let raw = record(
        "REMOVE",
        Some(r#"{"a":{"N":"1"}}"#),
        Some(r#"{"a":{"N":"1"}}"#),
    );
    assert!(event::build(&raw, &settings()).is_none());
    let e = transform(&raw, &settings()).unwrap();
    assert_eq!(
        text(&e),
        text(&transform_reference(&raw, &settings()).unwrap())
    );
    assert_eq!(item_text(&e), r#"{"a":1}"#);
}

#[test]
fn escapes_and_whitespace_on_the_wire_stay_on_the_fast_path() {
    let raw = record(
        "MODIF\\u0059",
        Some(r#"{"a":{"N":"1"}}"#),
        Some(r#" { "a" : { "N" : "2" } , "b\u00e9" : { "S" : "x\n" } } "#),
    );
    let e = event(
        &raw.replace(r#""eventID":"e1""#, "\n\t\"eventID\" : \"e1\" "),
        &settings(),
    );
    assert_eq!(body(&e)["data_op"], "U");
    assert_eq!(item_text(&e), r#"{"a":2,"bé":"x\n"}"#);
}

fn fixture(name: &str) -> &'static str {
    match name {
        "modify" => include_str!("../../tests/fixtures/transform/order-modify.json"),
        "insert" => include_str!("../../tests/fixtures/transform/order-insert.json"),
        "remove" => include_str!("../../tests/fixtures/transform/order-remove.json"),
        _ => unreachable!(),
    }
}

#[test]
fn order_records() {
    for (name, data_op) in [("modify", "U"), ("insert", "C"), ("remove", "D")] {
        let raw = fixture(name).trim_end();
        let e = event(raw, &keyed(&["order_id"]));
        let b = body(&e);
        assert_eq!(b["data_op"], data_op);
        assert_eq!(b["metadata"]["occurred_at"], "2025-11-22T06:16:10.123Z");
        assert_eq!(b["metadata"]["eid"], "daffa7a8-567c-556e-9970-edd38f462cf5");
        assert_eq!(
            b["metadata"]["partition_compaction_key"],
            "ord-7f3c9a2e-5b1d-4e8f-9a6c-2d4b8e1f0a37"
        );
        assert_eq!(b["data"]["item"]["total_amount"].to_string(), "149.85");
        assert!(
            item_text(&e).len() > 900,
            "an item of about 1 KB: {}",
            item_text(&e).len()
        );
    }
    let modify = event(fixture("modify").trim_end(), &settings());
    let patch = body(&modify)["data"]["patch"].clone();
    assert_eq!(
        patch,
        json!([
            {"op": "replace", "path": "/line_items/1/quantity", "value": 3},
            {"op": "replace", "path": "/status", "value": "SHIPPED"},
            {"op": "add", "path": "/tags/3", "value": "shipped"},
            {"op": "add", "path": "/tracking_number", "value": "JJD000390007811234567"},
            {"op": "replace", "path": "/updated_at", "value": "2025-11-22T06:16:10.123Z"},
            {"op": "replace", "path": "/version", "value": 4},
        ])
    );
}

// Property tests: random images in DynamoDB JSON, from small pools of names and values so that
// old and new images share much and differ in places, deep down too.

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "a/b", "~1", "é", "", "q\"\n"]).prop_map(String::from),
        1 => "\\PC{0,3}",
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["x", "y", "", "AQ==", "😀", "\"\\\u{1}\u{7f}"]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["1", "1.0", "2", "-0", "0", "1E+2", "100", "1e2", "0.5"]).prop_map(String::from),
        1 => (any::<bool>(), "(0|[1-9][0-9]{0,37})", proptest::option::of("[0-9]{1,10}"), proptest::option::of((-130i32..=125, prop::bool::ANY)))
            .prop_map(|(negative, int, frac, exp)| {
                let mut n = if negative { format!("-{int}") } else { int };
                if let Some(frac) = frac {
                    n = format!("{n}.{frac}");
                }
                if let Some((exp, upper)) = exp {
                    n = format!("{n}{}{exp}", if upper { "E" } else { "e" });
                }
                n
            }),
    ]
}

fn binary() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..5).prop_map(|b| STANDARD.encode(b))
}

fn set<S: Strategy<Value = String>>(members: S) -> impl Strategy<Value = Vec<String>> {
    prop::collection::hash_set(members, 1..5).prop_map(|s| s.into_iter().collect())
}

fn attribute() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        string().prop_map(|s| json!({"S": s})),
        number().prop_map(|n| json!({"N": n})),
        binary().prop_map(|b| json!({"B": b})),
        any::<bool>().prop_map(|b| json!({"BOOL": b})),
        Just(json!({"NULL": true})),
        set(string()).prop_map(|s| json!({"SS": s})),
        set(number()).prop_map(|s| json!({"NS": s})),
        set(binary()).prop_map(|s| json!({"BS": s})),
    ];
    scalar.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|l| json!({"L": l})),
            prop::collection::btree_map(name(), inner, 0..4).prop_map(|m| json!({"M": m})),
        ]
    })
}

fn attributes() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(name(), attribute(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// The same image with every set's members in another order.
/// `value` as JSON with every object's members in reverse order, and with `spaced`, a space
/// around every token.
fn reversed(value: &Value, spaced: bool) -> String {
    let gap = if spaced { " " } else { "" };
    match value {
        Value::Object(map) => {
            let members: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{}{gap}:{gap}{}", image(&json!(k)), reversed(v, spaced)))
                .collect();
            format!("{{{gap}{}{gap}}}", members.join(&format!("{gap},{gap}")))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| reversed(v, spaced)).collect();
            format!("[{gap}{}{gap}]", items.join(&format!("{gap},{gap}")))
        }
        other => image(other),
    }
}

/// The attribute value `attribute` with one change deep inside it, at the place `choice` leads
/// to through lists and maps: the value there replaced by `with`, or in a list, `with` appended
/// or the last item removed.
fn change_deep(attribute: &mut Value, choice: &[usize], with: Value) {
    let Some((&step, rest)) = choice.split_first() else {
        *attribute = with;
        return;
    };
    if let Some(Value::Array(items)) = attribute.get_mut("L") {
        match step % 6 {
            0 => items.push(with),
            1 => {
                items.pop();
            }
            _ if items.is_empty() => items.push(with),
            _ => {
                let at = step % items.len();
                change_deep(&mut items[at], rest, with);
            }
        }
    } else if let Some(Value::Object(members)) = attribute.get_mut("M") {
        let count = members.len().max(1);
        match members.values_mut().nth(step % count) {
            Some(member) => change_deep(member, rest, with),
            None => *attribute = with,
        }
    } else {
        *attribute = with;
    }
}

fn reorder_sets(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("SS" | "NS" | "BS", Value::Array(members)) => {
                            let mut members = members.clone();
                            members.reverse();
                            let half = members.len() / 2;
                            members.rotate_left(half);
                            Value::Array(members)
                        }
                        _ => reorder_sets(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reorder_sets).collect()),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `eid_for` hashes with another SHA-1 than the `uuid` crate's: the UUIDs are the same.
    #[test]
    fn eid_is_uuid_v5(event_id in any::<String>()) {
        prop_assert_eq!(eid_for(&event_id), Uuid::new_v5(&EID_NAMESPACE, event_id.as_bytes()));
    }

    #[test]
    fn the_patch_turns_old_into_new(old in attributes(), new in attributes()) {
        let (old, new) = (image(&old), image(&new));
        // `event` holds the fast path to the reference's bytes and to the schema.
        let raw = record("MODIFY", Some(&old), Some(&new));
        let e = event(&raw, &settings());
        assert_patch_applies(&e, &old, &new);
        let swapped = event(&old_first(&raw), &settings());
        prop_assert_eq!(e.body(), swapped.body());
    }

    #[test]
    fn a_changed_copy_patches_exactly(old in attributes(), name in name(), value in attribute()) {
        // Random pairs rarely share deep structure; one change inside a copy does.
        let mut new = old.clone();
        let target = new.as_object_mut().unwrap();
        match target.values_mut().find_map(|v| v.get_mut("M")) {
            Some(Value::Object(inner)) => { inner.insert(name, value); }
            _ => { target.insert(name, value); }
        }
        let (old, new) = (image(&old), image(&new));
        let raw = record("MODIFY", Some(&old), Some(&new));
        let e = event(&raw, &settings());
        assert_patch_applies(&e, &old, &new);
        let swapped = event(&old_first(&raw), &settings());
        prop_assert_eq!(e.body(), swapped.body());
    }

    #[test]
    fn a_change_deep_inside_lists_and_maps_patches_exactly(
        old in attributes(),
        choice in prop::collection::vec(any::<usize>(), 1..6),
        value in attribute(),
    ) {
        // Changed lists and maps are diffed item by item and member by member on the wire,
        // most of them the same text as the new image's.
        let mut new = old.clone();
        let members = new.as_object_mut().unwrap();
        let count = members.len();
        match members.values_mut().nth(choice[0] % count.max(1)) {
            Some(member) => change_deep(member, &choice[1..], value),
            None => { members.insert("a".into(), value); }
        }
        let (old, new) = (image(&old), image(&new));
        let raw = record("MODIFY", Some(&old), Some(&new));
        let e = event(&raw, &settings());
        assert_patch_applies(&e, &old, &new);
        let swapped = event(&old_first(&raw), &settings());
        prop_assert_eq!(e.body(), swapped.body());
    }

    #[test]
    fn the_old_images_member_order_and_spacing_change_nothing(old in attributes(), name in name(), value in attribute()) {
        // The old image is compared member by member with the new one in wire order; members in
        // another order, or the same text spaced otherwise, must still be matched by name.
        let mut new = old.clone();
        new.as_object_mut().unwrap().insert(name, value);
        let (old_text, new_text) = (image(&old), image(&new));
        let sorted = event(&record("MODIFY", Some(&old_text), Some(&new_text)), &settings());
        for spaced in [false, true] {
            let raw = record("MODIFY", Some(&reversed(&old, spaced)), Some(&new_text));
            let unsorted = event(&raw, &settings());
            prop_assert_eq!(unsorted.body(), sorted.body());
        }
    }

    #[test]
    fn set_order_never_makes_a_patch(attrs in attributes()) {
        let (old, new) = (image(&attrs), image(&reorder_sets(&attrs)));
        let e = event(&record("MODIFY", Some(&old), Some(&new)), &settings());
        prop_assert_eq!(patch_text(&e), "");
        let again = event(&record("MODIFY", Some(&new), Some(&old)), &settings());
        prop_assert_eq!(item_text(&e), item_text(&again));
    }

    #[test]
    fn the_same_record_twice_gives_the_same_bytes(attrs in attributes(), event_name in prop::sample::select(vec!["INSERT", "REMOVE"])) {
        let attrs = image(&attrs);
        let raw = if event_name == "INSERT" { record(event_name, None, Some(&attrs)) } else { record(event_name, Some(&attrs), None) };
        let (first, second) = (event(&raw, &settings()), transform(&raw, &settings()).unwrap());
        prop_assert_eq!(first.body(), second.body());
        prop_assert_eq!(first.eid, second.eid);
    }
}

/// `data.sequence_number` as each kind of sequence number gives it: DynamoDB's numbers padded to
/// 40 digits on both paths; anything else is a malformed record.
#[test]
fn sequence_numbers_are_padded_so_text_order_is_number_order() {
    let with_seq = |seq: &str| {
        record("INSERT", None, Some(r#"{"id":{"S":"a"}}"#)).replace(
            r#""SequenceNumber":"100""#,
            &format!(r#""SequenceNumber":{}"#, json!(seq)),
        )
    };
    let forty = "1234567890123456789012345678901234567890";
    let longer = "49000000000000000000000000000000000000000000000000000001";
    for (seq, published) in [
        ("1", format!("{}1", "0".repeat(39))),
        (
            "400000000000000000123",
            format!("{}400000000000000000123", "0".repeat(19)),
        ),
        (forty, forty.to_owned()),
        (longer, longer.to_owned()),
    ] {
        let e = event(&with_seq(seq), &settings());
        let body: Value = serde_json::from_slice(e.body()).unwrap();
        assert_eq!(body["data"]["sequence_number"], published.as_str(), "{seq}");
        assert_eq!(
            e.sequence_number(),
            seq,
            "the checkpoint keeps the record's own"
        );
    }
    // Not a decimal number: the event type's schema would refuse the event, so the record is
    // malformed, with the reason in its dead letter and its sequence number kept for the source.
    for (seq, reason) in [
        (
            "shard-7/\"42\"",
            r#"dynamodb.SequenceNumber "shard-7/\"42\"" is not a decimal number"#,
        ),
        ("", r#"dynamodb.SequenceNumber "" is not a decimal number"#),
    ] {
        let raw = with_seq(seq);
        assert!(
            event::build(&raw, &settings()).is_none(),
            "the fast path leaves {seq:?}"
        );
        let failure = transform(&raw, &settings()).expect_err(seq);
        assert_eq!(
            failure.error.to_string(),
            format!("malformed record: {reason}")
        );
        assert_eq!(failure.sequence_number.as_deref(), Some(seq));
    }
}

proptest! {
    #[test]
    fn padded_sequence_numbers_compare_as_their_numbers(a in 1u128..u128::MAX, b in 1u128..u128::MAX) {
        let (a_text, b_text) = (a.to_string(), b.to_string());
        let (pa, pb) = (padded_sequence_number(&a_text).unwrap(), padded_sequence_number(&b_text).unwrap());
        prop_assert_eq!(pa.len(), SEQUENCE_NUMBER_DIGITS);
        prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
    }
}

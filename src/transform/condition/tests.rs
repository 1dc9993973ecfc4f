use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

use super::*;
use crate::transform::{EventSettings, Routed, event, transform, transform_routed};

/// A `when = { … }` of the tables file, as TOML reads it.
fn toml_when(inline: &str) -> toml::Value {
    let table: toml::Table = toml::from_str(&format!("when = {inline}")).expect("TOML");
    table["when"].clone()
}

fn when(inline: &str) -> Condition {
    Condition::parse(&toml_when(&format!("{{ {inline} }}")))
        .unwrap_or_else(|e| panic!("{inline}: {e}"))
}

impl Condition {
    /// Whether the condition holds for `image`, an image object's text as the record has it
    /// (`{"entity":{"S":"order"},…}`).
    fn holds(&self, image: &str) -> bool {
        Router::new(vec![Some(self.clone())]).route(image).is_some()
    }

    /// The plain reference: the image as a tree, and the rules as the docs state them.
    fn holds_plain(&self, image: &Value) -> bool {
        // The text of an attribute of type `tag`: an attribute value is an object of one member,
        // its type.
        let typed = |name: &str, tag: &str| -> Option<&str> {
            let value = image.get(name)?.as_object()?;
            if value.len() != 1 {
                return None;
            }
            value.get(tag)?.as_str()
        };
        match self {
            Condition::Equals { attribute, value } => typed(attribute, "S") == Some(value),
            Condition::EqualsNumber { attribute, value } => typed(attribute, "N")
                .and_then(plain_decimal)
                .is_some_and(|n| Some(n) == plain_decimal(value.as_str())),
            Condition::BeginsWith { attribute, prefix } => {
                typed(attribute, "S").is_some_and(|s| s.starts_with(prefix.as_str()))
            }
            Condition::Exists { attribute, present } => {
                image.get(attribute.as_str()).is_some() == *present
            }
            Condition::AnyOf { attribute, values } => {
                typed(attribute, "S").is_some_and(|s| values.iter().any(|v| v == s))
            }
            Condition::Not(condition) => !condition.holds_plain(image),
            Condition::All(conditions) => conditions.iter().all(|c| c.holds_plain(image)),
        }
    }
}

/// A JSON number as (negative, significant digits, exponent of the last one), zero as
/// `(false, "", 0)`: two numbers are equal exactly when these are.
fn plain_decimal(text: &str) -> Option<(bool, String, i64)> {
    if text.contains(char::is_whitespace)
        || serde_json::from_str::<serde_json::Number>(text).is_err()
    {
        return None;
    }
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((mantissa, exp)) => (mantissa, exp.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    let exp = exp - frac.len() as i64 + (digits.len() - significant.len()) as i64;
    Some((negative, significant.to_owned(), exp))
}

/// Both evaluators on `image`, which must agree; the answer.
fn holds(condition: &Condition, image: &str) -> bool {
    let fast = condition.holds(image);
    let value: Value = serde_json::from_str(image).expect("JSON");
    assert_eq!(
        fast,
        condition.holds_plain(&value),
        "{condition:?} on {image}"
    );
    fast
}

/// Every kind of attribute, some escaped on the wire, some odd.
const IMAGE: &str = r#"{"entity":{"S":"order"},"pk":{"S":"ORDER#42"},"total":{"N":"12.50"},
    "flag":{"BOOL":true},"gone":{"NULL":true},"nested":{"M":{"deep":{"S":"order"}}},
    "list":{"L":[{"S":"order"}]},"tags":{"SS":["order"]},"code":{"S":"ord\u0065r"},
    "q\"{}":{"S":"a\"b}{"},"\u0073ku":{"\u0053":"x-1"},"count":{"N":"1\u0032"},
    "odd":{"S":"order","N":"1"},"bare":"order","empty":{"S":""},"spaced" : { "S" : "order" } }"#;

#[test]
fn each_operator_on_each_type() {
    for (condition, want) in [
        (r#"attribute = "entity", equals = "order""#, true),
        (r#"attribute = "entity", equals = "Order""#, false),
        (r#"attribute = "entity", equals = "orde""#, false),
        (r#"attribute = "empty", equals = """#, true),
        (r#"attribute = "spaced", equals = "order""#, true),
        // Another type than the operator's never matches.
        (r#"attribute = "total", equals = "12.50""#, false),
        (r#"attribute = "flag", equals = "true""#, false),
        (r#"attribute = "tags", equals = "order""#, false),
        (r#"attribute = "tags", any_of = ["order"]"#, false),
        (r#"attribute = "entity", equals_number = "0""#, false),
        (r#"attribute = "total", begins_with = "12""#, false),
        (r#"attribute = "total", any_of = ["12.50"]"#, false),
        (r#"attribute = "total", equals_number = "12.5""#, true),
        (r#"attribute = "total", equals_number = "12.51""#, false),
        (r#"attribute = "pk", begins_with = "ORDER#""#, true),
        (r#"attribute = "pk", begins_with = "ORDER#42""#, true),
        (r#"attribute = "pk", begins_with = "ORDER#420""#, false),
        (r#"attribute = "pk", begins_with = "CUSTOMER#""#, false),
        (
            r#"attribute = "entity", any_of = ["customer", "order"]"#,
            true,
        ),
        (r#"attribute = "entity", any_of = ["customer"]"#, false),
        // `exists` is about the name alone, whatever the type, NULL too.
        (r#"attribute = "entity", exists = true"#, true),
        (r#"attribute = "gone", exists = true"#, true),
        (r#"attribute = "flag", exists = true"#, true),
        (r#"attribute = "bare", exists = true"#, true),
        (r#"attribute = "missing", exists = true"#, false),
        (r#"attribute = "missing", exists = false"#, true),
        (r#"attribute = "entity", exists = false"#, false),
        // Names are top-level names, never paths.
        (r#"attribute = "deep", exists = true"#, false),
        (r#"attribute = "nested.deep", equals = "order""#, false),
        // A missing attribute equals nothing.
        (r#"attribute = "missing", equals = "order""#, false),
        (r#"attribute = "missing", equals_number = "0""#, false),
        (r#"attribute = "missing", begins_with = "o""#, false),
        (r#"attribute = "missing", any_of = ["order"]"#, false),
        // What is not an attribute value of one member has no type.
        (r#"attribute = "odd", equals = "order""#, false),
        (r#"attribute = "odd", exists = true"#, true),
        (r#"attribute = "bare", equals = "order""#, false),
    ] {
        assert_eq!(holds(&when(condition), IMAGE), want, "{condition}");
    }
}

#[test]
fn escapes_in_names_tags_and_values_are_read_as_json_reads_them() {
    for (condition, want) in [
        (r#"attribute = "code", equals = "order""#, true),
        (r#"attribute = "code", equals = "ord\\u0065r""#, false),
        (r#"attribute = "q\"{}", equals = "a\"b}{""#, true),
        (r#"attribute = "q\"{}", begins_with = "a\"""#, true),
        (r#"attribute = "sku", equals = "x-1""#, true),
        (r#"attribute = "count", equals_number = "12""#, true),
    ] {
        assert_eq!(holds(&when(condition), IMAGE), want, "{condition}");
    }
}

#[test]
fn not_and_all_nest() {
    for (condition, want) in [
        (r#"not = { attribute = "entity", equals = "order" }"#, false),
        (r#"not = { attribute = "missing", equals = "order" }"#, true),
        (
            r#"not = { not = { attribute = "entity", equals = "order" } }"#,
            true,
        ),
        (
            r#"all = [{ attribute = "entity", equals = "order" }, { attribute = "pk", begins_with = "ORDER#" }]"#,
            true,
        ),
        (
            r#"all = [{ attribute = "entity", equals = "order" }, { attribute = "pk", begins_with = "CUSTOMER#" }]"#,
            false,
        ),
        (
            r#"all = [{ attribute = "entity", equals = "order" }, { not = { attribute = "gone", exists = true } }]"#,
            false,
        ),
        (
            r#"not = { all = [{ attribute = "entity", exists = true }, { all = [{ attribute = "total", equals_number = "1.25E1" }] }] }"#,
            false,
        ),
    ] {
        assert_eq!(holds(&when(condition), IMAGE), want, "{condition}");
    }
}

#[test]
fn numbers_compare_as_decimals() {
    let image = r#"{"a":{"N":"12.5"},"b":{"N":"12.50"},"c":{"N":"1.25E1"},"neg":{"N":"-12.5"},
        "z":{"N":"0"},"nz":{"N":"-0"},"zf":{"N":"0.000"},"ze":{"N":"0E+5"},"big":{"N":"1E+125"},
        "tiny":{"N":"1E-130"},"bad":{"N":"twelve"}}"#;
    let cases: &[(&[&str], &[&str], bool)] = &[
        (
            &["a", "b", "c"],
            &["12.5", "12.50", "1.25E1", "1.25e+1", "125E-1", "0.125e2"],
            true,
        ),
        (&["a", "b", "c"], &["-12.5", "12.49", "12", "125"], false),
        (&["neg"], &["-12.50", "-1.25E1"], true),
        (&["neg"], &["12.5", "-0"], false),
        (
            &["z", "nz", "zf", "ze"],
            &["0", "-0", "0.0", "0e7", "-0.00E-3"],
            true,
        ),
        (&["z", "nz", "zf", "ze"], &["1E-130", "-1E-130"], false),
        (&["big"], &["1e125", "10E124", "0.1e126"], true),
        (&["big"], &["1E+124", "9.99E124"], false),
        (&["tiny"], &["0.1E-129", "1e-130"], true),
        (&["tiny"], &["0"], false),
        (&["bad"], &["0", "12"], false),
    ];
    for (attributes, values, want) in cases {
        for attribute in *attributes {
            for value in *values {
                let condition = when(&format!(
                    r#"attribute = "{attribute}", equals_number = "{value}""#
                ));
                assert_eq!(holds(&condition, image), *want, "{attribute} = {value}");
            }
        }
    }
}

#[test]
fn an_image_that_cannot_be_read_has_what_came_before_the_problem() {
    let entity = when(r#"attribute = "entity", equals = "order""#);
    let missing = when(r#"attribute = "entity", exists = false"#);
    for (image, found) in [
        (r#"{"entity":{"S":"order"},"x":"#, true),
        (r#"{"x":{"S":"y"} "entity":{"S":"order"}}"#, false),
        // A raw control character, which no scan steps over.
        (
            "{\"x\":{\"S\":\"a\u{1}b\"},\"entity\":{\"S\":\"order\"}}",
            false,
        ),
        ("null", false),
        ("", false),
        ("[1]", false),
    ] {
        assert_eq!(entity.holds(image), found, "{image}");
        assert_eq!(missing.holds(image), !found, "{image}");
    }
}

#[test]
fn equality_is_as_written_and_numbers_by_value() {
    let number = |value: &str| when(&format!(r#"attribute = "n", equals_number = "{value}""#));
    assert_eq!(number("12.5"), number("1.25E1"));
    assert_eq!(number("-0"), number("0.00"));
    assert_ne!(number("12.5"), number("12.51"));
    assert_ne!(
        number("12.5"),
        when(r#"attribute = "m", equals_number = "12.5""#)
    );
    assert_eq!(
        when(
            r#"all = [{ attribute = "a", exists = true }, { attribute = "n", equals_number = "1" }]"#
        ),
        when(
            r#"all = [{ attribute = "a", exists = true }, { attribute = "n", equals_number = "1.0" }]"#
        ),
    );
    assert_ne!(
        when(r#"attribute = "a", any_of = ["x", "y"]"#),
        when(r#"attribute = "a", any_of = ["x"]"#),
    );
    assert_eq!(Number::parse("1.0").unwrap().as_str(), "1.0");
}

#[test]
fn conditions_parse_to_their_operators() {
    assert_eq!(
        when(r#"attribute = "pk", begins_with = "ORDER#""#),
        Condition::BeginsWith {
            attribute: "pk".into(),
            prefix: "ORDER#".into()
        }
    );
    assert_eq!(
        when(r#"not = { attribute = "e", any_of = ["a", "b"] }"#),
        Condition::Not(Box::new(Condition::AnyOf {
            attribute: "e".into(),
            values: vec!["a".into(), "b".into()]
        }))
    );
    assert_eq!(
        when(r#"all = [{ attribute = "e", exists = false }, { attribute = "e", equals = "" }]"#),
        Condition::All(vec![
            Condition::Exists {
                attribute: "e".into(),
                present: false
            },
            Condition::Equals {
                attribute: "e".into(),
                value: String::new()
            },
        ])
    );
}

#[test]
fn bad_conditions_say_what_is_wrong_with_which_key() {
    const KEYS: &str = "equals, equals_number, begins_with, exists, any_of, not, all";
    for (inline, message) in [
        (
            r#"{ attribute = "e" }"#,
            format!("condition has no operator: give one of {KEYS}"),
        ),
        ("{}", format!("condition has no operator: give one of {KEYS}")),
        (
            r#"{ attribute = "e", equals = "order", begins_with = "o" }"#,
            "condition has two operators (equals, begins_with): give one".into(),
        ),
        (
            r#"{ not = { attribute = "e", exists = true }, all = [], attribute = "e", exists = true }"#,
            "condition has three operators (exists, not, all): give one".into(),
        ),
        (
            r#"{ attribute = "n", equals_number = "12,5" }"#,
            r#"equals_number "12,5" is not a decimal, such as "12.50" or "-1.5E3""#.into(),
        ),
        (
            r#"{ attribute = "n", equals_number = "" }"#,
            r#"equals_number "" is not a decimal, such as "12.50" or "-1.5E3""#.into(),
        ),
        (
            r#"{ attribute = "n", equals_number = 12.5 }"#,
            r#"equals_number must be a decimal in a string, such as "12.50" (TOML's floats are binary), not a float"#.into(),
        ),
        (
            r#"{ attribute = "n", equals_number = 12 }"#,
            r#"equals_number must be a decimal in a string, such as "12.50" (TOML's floats are binary), not an integer"#.into(),
        ),
        (
            r#"{ attribute = "pk", begins_with = "" }"#,
            r#"begins_with must not be empty: every string begins with """#.into(),
        ),
        (
            r#"{ attribute = "e", any_of = [] }"#,
            "any_of must list at least one string".into(),
        ),
        (
            r#"{ attribute = "e", any_of = ["order", ""] }"#,
            "any_of[1] must not be empty".into(),
        ),
        (
            r#"{ attribute = "e", equal = "order" }"#,
            format!(r#"unknown key "equal" in a condition: the keys are attribute, {KEYS}"#),
        ),
        (
            r#"{ equals = "order" }"#,
            "equals needs attribute, the name of the top-level attribute it tests".into(),
        ),
        (
            r#"{ attribute = "e", not = { attribute = "e", exists = true } }"#,
            "not takes no attribute: name it in the conditions inside".into(),
        ),
        (
            r#"{ attribute = "e", all = [{ attribute = "e", exists = true }] }"#,
            "all takes no attribute: name it in the conditions inside".into(),
        ),
        (
            r#"{ attribute = "", exists = true }"#,
            "attribute must not be empty".into(),
        ),
        (
            r#"{ attribute = 1, exists = true }"#,
            "attribute must be a string, the name of a top-level attribute, not an integer".into(),
        ),
        (
            r#"{ attribute = "e", equals = 1 }"#,
            "equals must be a string, not an integer".into(),
        ),
        (
            r#"{ attribute = "e", begins_with = ["o"] }"#,
            "begins_with must be a string, not an array".into(),
        ),
        (
            r#"{ attribute = "e", exists = "yes" }"#,
            "exists must be true or false, not a string".into(),
        ),
        (
            r#"{ attribute = "e", any_of = "order" }"#,
            "any_of must be a list of strings, not a string".into(),
        ),
        (
            r#"{ attribute = "e", any_of = ["order", 1] }"#,
            "any_of[1] must be a string, not an integer".into(),
        ),
        (
            r#"{ not = [{ attribute = "e", exists = true }] }"#,
            r#"not: a condition is a table such as { attribute = "entity", equals = "order" }, not an array"#.into(),
        ),
        (
            r#"{ not = { attribute = "e", exists = 1 } }"#,
            "not: exists must be true or false, not an integer".into(),
        ),
        (
            r#"{ all = { attribute = "e", exists = true } }"#,
            "all must be a list of conditions, not a table".into(),
        ),
        ("{ all = [] }", "all must list at least one condition".into()),
        (
            r#"{ all = [{ attribute = "e", exists = true }, { attribute = "e" }] }"#,
            format!("all[1]: condition has no operator: give one of {KEYS}"),
        ),
        (
            r#"{ all = [{ not = { attribute = "n", equals_number = "x" } }] }"#,
            r#"all[0]: not: equals_number "x" is not a decimal, such as "12.50" or "-1.5E3""#
                .into(),
        ),
        (
            r#""entity = order""#,
            r#"a condition is a table such as { attribute = "entity", equals = "order" }, not a string"#.into(),
        ),
    ] {
        let error = Condition::parse(&toml_when(inline)).expect_err(inline);
        assert_eq!(error, message, "{inline}");
    }
}

#[test]
fn the_router_takes_the_first_route_that_holds() {
    let conditions = || {
        vec![
            Some(when(r#"attribute = "entity", equals = "order""#)),
            Some(when(r#"attribute = "pk", begins_with = "CUSTOMER#""#)),
            Some(when(
                r#"attribute = "entity", any_of = ["order", "customer"]"#,
            )),
        ]
    };
    let with_fallback = Router::new(conditions().into_iter().chain([None]).collect());
    let without = Router::new(conditions());
    for (image, want) in [
        (r#"{"pk":{"S":"ORDER#1"},"entity":{"S":"order"}}"#, Some(0)),
        (
            r#"{"pk":{"S":"CUSTOMER#1"},"entity":{"S":"order"}}"#,
            Some(0),
        ),
        (
            r#"{"pk":{"S":"CUSTOMER#1"},"entity":{"S":"customer"}}"#,
            Some(1),
        ),
        (r#"{"pk":{"S":"C#1"},"entity":{"S":"customer"}}"#, Some(2)),
        (r#"{"pk":{"S":"C#1"},"entity":{"S":"invoice"}}"#, None),
        ("{}", None),
    ] {
        assert_eq!(without.route(image), want, "{image}");
        assert_eq!(with_fallback.route(image), want.or(Some(3)), "{image}");
    }
    // A first route without a condition needs nothing of the image, not even to read it.
    assert_eq!(Router::new(vec![None]).route("not JSON"), Some(0));
    assert_eq!(Router::new(Vec::new()).route("{}"), None);
}

#[test]
fn the_router_looks_up_more_names_than_it_keeps_on_the_stack() {
    let names: Vec<String> = (0..SLOTS + 3).map(|i| format!("a{i}")).collect();
    let router = Router::new(
        names
            .iter()
            .map(|name| {
                Some(Condition::Equals {
                    attribute: name.clone(),
                    value: "yes".into(),
                })
            })
            .collect(),
    );
    for (i, name) in names.iter().enumerate() {
        let image = format!(r#"{{"a0":{{"S":"no"}},"{name}":{{"S":"yes"}}}}"#);
        let want = (i > 0).then_some(i);
        assert_eq!(router.route(&image), want, "{image}");
    }
}

#[test]
fn a_repeated_name_counts_as_its_first() {
    let image = r#"{"entity":{"S":"order"},"entity":{"S":"customer"}}"#;
    assert!(when(r#"attribute = "entity", equals = "order""#).holds(image));
    assert!(!when(r#"attribute = "entity", equals = "customer""#).holds(image));
    let escaped = r#"{"entity":{"\u0053":"order"},"entity":{"S":"customer"}}"#;
    assert!(when(r#"attribute = "entity", equals = "order""#).holds(escaped));
}

// images(): the record as GetRecords returns it.

fn fixture(name: &str) -> &'static str {
    match name {
        "modify" => include_str!("../../../tests/fixtures/transform/order-modify.json"),
        "insert" => include_str!("../../../tests/fixtures/transform/order-insert.json"),
        "remove" => include_str!("../../../tests/fixtures/transform/order-remove.json"),
        _ => unreachable!(),
    }
}

/// The images of `raw` as trees, as serde_json reads them.
fn images_plain(raw: &str) -> (Option<Value>, Option<Value>) {
    let record: Value = serde_json::from_str(raw).expect("JSON");
    let image = |name: &str| {
        record["dynamodb"]
            .get(name)
            .filter(|image| !image.is_null())
            .cloned()
    };
    (image("NewImage"), image("OldImage"))
}

/// `images(raw)`, parsed, which must be what serde_json reads.
fn assert_images(raw: &str) -> Images<'_> {
    let found = images(raw).unwrap_or_else(|| panic!("no images in {raw}"));
    let parse = |text: Option<&str>| text.map(|t| serde_json::from_str::<Value>(t).expect(t));
    assert_eq!(
        (parse(found.new), parse(found.old)),
        images_plain(raw),
        "{raw}"
    );
    found
}

#[test]
fn images_of_the_order_fixtures() {
    for (name, new, old) in [
        ("modify", true, true),
        ("insert", true, false),
        ("remove", false, true),
    ] {
        let found = assert_images(fixture(name).trim_end());
        assert_eq!(
            (found.new.is_some(), found.old.is_some()),
            (new, old),
            "{name}"
        );
    }
}

#[test]
fn images_in_any_member_order_with_any_strings() {
    let new = r#"{"pk":{"S":"a}\"{"},"m":{"M":{"x":{"S":"}}]"}}}}"#;
    let old = r#"{"pk":{"S":"{\"NewImage\":{}}"}}"#;
    let head = r#""eventID":"e}{\"1","eventName":"MODIFY""#;
    let user = r#""userIdentity":{"PrincipalId":"{\"OldImage\":1}","Type":"Service"}"#;
    for raw in [
        format!(
            r#"{{{head},"dynamodb":{{"ApproximateCreationDateTime":1.7E9,"NewImage":{new},"OldImage":{old},"SequenceNumber":"1"}},{user}}}"#
        ),
        format!(
            r#"{{"dynamodb":{{"OldImage":{old},"Keys":{{"pk":{{"S":"}}"}}}},"NewImage":{new}}},{user},{head}}}"#
        ),
        format!(r#"{{{user},"dynamodb":{{"NewImage":{new}}},{head}}}"#),
        format!(r#"{{{head},"dynamodb":{{"OldImage":{old},"NewImage":null}}}}"#),
        format!(r#"{{{head},"dynamodb":{{"NewImage":{new},"OldImage":null}}}}"#),
        format!(r#"{{{head},"dynamodb":{{"SequenceNumber":"1"}}}}"#),
        format!(r#"{{{head}}}"#),
        // Whitespace between tokens, escaped member names.
        format!(
            "{{ {head} , \"dynamodb\" : {{ \"New\\u0049mage\" : {new} ,\n\"OldImage\"\t:\t{old} }} }}\n"
        ),
        // A second `dynamodb` replaces the first, as in serde_json; a second image too.
        format!(
            r#"{{"dynamodb":{{"NewImage":{new}}},"dynamodb":{{"OldImage":{old},"OldImage":{new}}}}}"#
        ),
    ] {
        assert_images(&raw);
    }
}

#[test]
fn records_that_cannot_be_read_have_no_images() {
    for raw in [
        "",
        "null",
        "[]",
        r#"{"dynamodb":{"NewImage":"x"}}"#,
        r#"{"dynamodb":{"NewImage":[]}}"#,
        r#"{"dynamodb":{"NewImage":{"a":{"S":"x"}}}"#,
        r#"{"dynamodb":{"NewImage":{"a":{"S":"x"}}}}}"#,
        r#"{"dynamodb":{"NewImage":{"a":{"S":"x"}}}} x"#,
        r#"{"dynamodb":"x","eventID":"e"#,
    ] {
        assert_eq!(images(raw), None, "{raw}");
    }
}

// Property tests: images from small pools of names and values, so that conditions name
// attributes that are there, of the type they test or another, with the values they look for.

fn name() -> impl Strategy<Value = String> {
    // Mostly one name, so that conditions mostly test attributes that are there.
    prop_oneof![
        2 => Just("entity".to_owned()),
        3 => prop::sample::select(vec!["pk", "n", "é", "q\"{", ""]).prop_map(String::from),
    ]
}

fn string() -> impl Strategy<Value = String> {
    // Mostly the one value conditions look for, so that they hold often.
    prop_oneof![
        2 => Just("order".to_owned()),
        3 => prop::sample::select(vec!["ord", "", "ORDER#1", "a\"b}", "é😀", "\\\n"])
            .prop_map(String::from),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "12.5", "12.50", "1.25E1", "125e-1", "-12.5", "0", "-0", "0.0", "1e2", "100", "7",
    ])
    .prop_map(String::from)
}

/// Attribute values as DynamoDB sends them and, with `odd`, some it never sends.
fn attribute_of(odd: bool) -> impl Strategy<Value = Value> {
    let dynamodb = prop_oneof![
        6 => string().prop_map(|s| json!({"S": s})),
        4 => number().prop_map(|n| json!({"N": n})),
        1 => any::<bool>().prop_map(|b| json!({"BOOL": b})),
        1 => Just(json!({"NULL": true})),
        1 => prop::collection::btree_set(string(), 1..3).prop_map(|s| json!({"SS": s})),
    ];
    let scalar = if odd {
        prop_oneof![
            14 => dynamodb,
            1 => Just(json!({"N": "twelve"})),
            // No attribute value, two types, a type of the wrong JSON type.
            1 => string().prop_map(|s| json!(s)),
            1 => (string(), number()).prop_map(|(s, n)| json!({"S": s, "N": n})),
            1 => Just(json!({"S": 5})),
        ]
        .boxed()
    } else {
        dynamodb.boxed()
    };
    // Mostly scalars, which conditions test; a recursive strategy alone gave mostly maps.
    let nested = scalar.clone().prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|l| json!({"L": l})),
            prop::collection::btree_map(name(), inner, 0..3).prop_map(|m| json!({"M": m})),
        ]
    });
    prop_oneof![4 => scalar, 1 => nested]
}

fn attribute() -> impl Strategy<Value = Value> {
    attribute_of(true)
}

fn image_value() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(name(), attribute(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn condition() -> impl Strategy<Value = Condition> {
    let leaf = prop_oneof![
        (name(), string()).prop_map(|(attribute, value)| Condition::Equals { attribute, value }),
        (name(), number()).prop_map(|(attribute, value)| Condition::EqualsNumber {
            attribute,
            value: Number::parse(&value).expect("a number"),
        }),
        (
            name(),
            prop::sample::select(vec!["o", "ord", "order", "ORDER#", "a\"", "é"])
        )
            .prop_map(|(attribute, prefix)| Condition::BeginsWith {
                attribute,
                prefix: prefix.into()
            }),
        (name(), any::<bool>())
            .prop_map(|(attribute, present)| Condition::Exists { attribute, present }),
        (name(), prop::collection::vec(string(), 1..3))
            .prop_map(|(attribute, values)| Condition::AnyOf { attribute, values }),
    ];
    let nested = leaf.clone().prop_recursive(3, 8, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| Condition::Not(Box::new(c))),
            prop::collection::vec(inner, 1..3).prop_map(Condition::All),
        ]
    });
    prop_oneof![2 => leaf, 1 => nested]
}

/// How an image is written on the wire: every `escape`th character of each string as a `\u`
/// escape (none with 0), and with `spaced`, whitespace around every token.
#[derive(Debug, Clone, Copy)]
struct Spelling {
    escape: usize,
    spaced: bool,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (0usize..4, any::<bool>()).prop_map(|(escape, spaced)| Spelling { escape, spaced })
}

fn write(value: &Value, spelling: Spelling, out: &mut String) {
    let gap = if spelling.spaced { " \n" } else { "" };
    let string = |s: &str, out: &mut String| {
        out.push('"');
        for (i, c) in s.chars().enumerate() {
            if spelling.escape > 0 && i % spelling.escape == 0 {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            } else {
                let json = serde_json::to_string(&c.to_string()).expect("a string");
                out.push_str(&json[1..json.len() - 1]);
            }
        }
        out.push('"');
    };
    match value {
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(gap);
                write(item, spelling, out);
                out.push_str(gap);
            }
            out.push(']');
        }
        Value::Object(members) => {
            out.push('{');
            for (i, (name, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(gap);
                string(name, out);
                out.push_str(gap);
                out.push(':');
                out.push_str(gap);
                write(value, spelling, out);
                out.push_str(gap);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn spelled(value: &Value, spelling: Spelling) -> String {
    let mut out = String::new();
    write(value, spelling, &mut out);
    assert_eq!(
        &serde_json::from_str::<Value>(&out).expect("JSON"),
        value,
        "{out}"
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_fast_path_decides_as_the_plain_evaluator(
        image in image_value(),
        condition in condition(),
        spelling in spelling(),
    ) {
        let text = spelled(&image, spelling);
        prop_assert_eq!(condition.holds(&text), condition.holds_plain(&image), "{}", text);
    }

    #[test]
    fn the_router_takes_the_plain_first_match(
        image in image_value(),
        conditions in prop::collection::vec(prop::option::weighted(0.9, condition()), 0..4),
        spelling in spelling(),
    ) {
        let text = spelled(&image, spelling);
        let want = conditions
            .iter()
            .position(|c| c.as_ref().is_none_or(|c| c.holds_plain(&image)));
        prop_assert_eq!(Router::new(conditions).route(&text), want, "{}", text);
    }

    #[test]
    fn images_are_found_in_any_member_order(
        new in prop::option::of(image_value()),
        old in prop::option::of(image_value()),
        spelling in spelling(),
        order in Just((0..4).collect::<Vec<usize>>()).prop_shuffle(),
    ) {
        let image = |name: &str, image: &Option<Value>| {
            let text = image.as_ref().map_or("null".into(), |i| spelled(i, spelling));
            format!(r#""{name}":{text}"#)
        };
        let dynamodb = [
            image("NewImage", &new),
            image("OldImage", &old),
            r#""Keys":{"pk":{"S":"}{\""}}"#.into(),
            r#""SequenceNumber":"100""#.into(),
        ];
        let members: Vec<&str> = order.iter().map(|&i| dynamodb[i].as_str()).collect();
        let raw = format!(
            r#"{{"eventID":"e","dynamodb":{{{}}},"eventSource":"aws:dynamodb"}}"#,
            members.join(",")
        );
        let found = images(&raw).expect("images");
        let parse = |text: Option<&str>| text.map(|t| serde_json::from_str::<Value>(t).expect("JSON"));
        prop_assert_eq!(parse(found.new), new);
        prop_assert_eq!(parse(found.old), old);
    }
}

/// Where a record's events go by the plain evaluator, as `Routes` decides: `Ok(route)` for one
/// route, `Err(true)` when no route takes it, `Err(false)` when its images route apart.
fn plain_decision(
    conditions: &[Option<Condition>],
    new: Option<&Value>,
    old: Option<&Value>,
) -> Result<usize, bool> {
    let route = |image: &Value| {
        conditions
            .iter()
            .position(|c| c.as_ref().is_none_or(|c| c.holds_plain(image)))
    };
    match (new.map(route), old.map(route)) {
        (Some(to), Some(from)) if to != from => Err(false),
        (Some(only), _) | (None, Some(only)) => only.ok_or(true),
        (None, None) => unreachable!("every record has an image"),
    }
}

/// Each route's events name it in their data_type.
fn route_settings() -> Vec<EventSettings> {
    (0..4)
        .map(|route| EventSettings {
            data_type: format!("route-{route}"),
            compaction_key: None,
        })
        .collect()
}

/// A record whose old image is the new one with some attributes changed, added or removed,
/// its images in either member order (so that the transform reads the old one both on its own
/// and against the new one), and the routes it meets.
#[derive(Debug, Clone)]
struct RoutedCase {
    raw: String,
    new: Option<Value>,
    old: Option<Value>,
    conditions: Vec<Option<Condition>>,
}

fn routed_case() -> impl Strategy<Value = RoutedCase> {
    // Mostly attribute values DynamoDB sends, spelled as it does, so that the fast path takes
    // most records: it leaves escaped type tags and whitespace to the reference.
    let attribute = || prop_oneof![9 => attribute_of(false), 1 => attribute()];
    let spelling = prop_oneof![
        3 => Just(Spelling {
            escape: 0,
            spaced: false
        }),
        1 => spelling(),
    ];
    (
        prop::sample::select(vec!["INSERT", "MODIFY", "REMOVE"]),
        prop::collection::btree_map(name(), attribute(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        prop::collection::vec((name(), prop::option::weighted(0.7, attribute())), 0..3),
        spelling,
        any::<bool>(),
        prop::collection::vec(prop::option::weighted(0.9, condition()), 1..4),
    )
        .prop_map(|(kind, new, edits, spelling, new_first, conditions)| {
            let mut old = new.clone();
            for (name, value) in edits {
                match value {
                    Some(value) => old[name.as_str()] = value,
                    None => {
                        old.as_object_mut().expect("an image").remove(&name);
                    }
                }
            }
            let (new, old) = match kind {
                "INSERT" => (Some(new), None),
                "REMOVE" => (None, Some(old)),
                _ => (Some(new), Some(old)),
            };
            let member = |name: &str, image: &Option<Value>| {
                image
                    .as_ref()
                    .map(|image| format!(r#""{name}":{}"#, spelled(image, spelling)))
            };
            let mut images = [member("NewImage", &new), member("OldImage", &old)];
            if !new_first {
                images.reverse();
            }
            let images: Vec<String> = images.into_iter().flatten().collect();
            let raw = format!(
                r#"{{"eventID":"e1","eventName":"{kind}","dynamodb":{{"ApproximateCreationDateTime":1.7637921701E9,"Keys":{{"pk":{{"S":"k"}}}},{},"SequenceNumber":"100"}},"eventSource":"aws:dynamodb"}}"#,
                images.join(",")
            );
            RoutedCase {
                raw,
                new,
                old,
                conditions,
            }
        })
}

/// The transform's routing of `case` against the plain evaluator's on the images as trees:
/// where the fast path takes the record, so must the routing, with the event it builds alone.
/// What came of it: `"event"`, `"unrouted"`, `"moved"` or `"not taken"`.
fn check_routed(case: &RoutedCase) -> &'static str {
    let RoutedCase {
        raw,
        new,
        old,
        conditions,
    } = case;
    let settings = route_settings();
    let routed = transform_routed(raw, &Router::new(conditions.clone()), |route| {
        &settings[route]
    });
    let want = plain_decision(conditions, new.as_ref(), old.as_ref());
    // Whether the fast path takes the record as the route's (any route's, when none takes it).
    let fast = |route: usize| event::build(raw, &settings[route]).is_some();
    match (routed, want) {
        (Routed::Event(event), Ok(route)) => {
            assert_eq!(event.route, route, "{raw}");
            let alone = transform(raw, &settings[route]).expect("the fast path took it");
            assert_eq!(event.body(), alone.body(), "{raw}");
            "event"
        }
        (Routed::Unrouted { sequence_number }, Err(true)) => {
            assert_eq!(sequence_number, "100");
            "unrouted"
        }
        (Routed::Undecided, Err(false)) => "moved",
        (Routed::Undecided, Ok(route)) if !fast(route) => "not taken",
        (Routed::Undecided, Err(true)) if !fast(0) => "not taken",
        (routed, want) => panic!("{routed:?} where the plain evaluator says {want:?}: {raw}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_transform_routes_as_the_plain_evaluator(case in routed_case()) {
        check_routed(&case);
    }
}

/// The property above reaches every outcome, MODIFYs read both ways among its events.
#[test]
fn the_routing_cases_reach_every_outcome() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..1_000 {
        let case = routed_case().new_tree(&mut runner).unwrap().current();
        let mut outcome = check_routed(&case).to_owned();

        if outcome == "event" && case.new.is_some() && case.old.is_some() {
            let new_first = case.raw.find("NewImage") < case.raw.find("OldImage");
            outcome += if new_first {
                " (new first)"
            } else {
                " (old first)"
            };
        }
        *seen.entry(outcome).or_insert(0) += 1;
    }
    for outcome in [
        "event",
        "event (new first)",
        "event (old first)",
        "unrouted",
        "moved",
        "not taken",
    ] {
        assert!(seen.get(outcome).is_some_and(|&n| n >= 10), "{seen:?}");
    }
}

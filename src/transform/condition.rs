//! Which of a table's routes a record takes: the conditions of the tables file's
//! `[[table.route]]` entries, and their evaluation on the raw stream record. `crate::route`
//! uses them; they live here because the fast transform evaluates them.
//!
//! Routing builds no tree, and reads a record in one of two ways:
//!
//! - **While the transform reads it** (`transform_routed`, for tables whose routes filter and
//!   drop nothing): the transform has located every member of the new image, and the old
//!   image's as it compared it with the new one, so a route looks up its attributes there
//!   ([`Router::route_found`], [`attribute_at`]). This costs a few lookups per record.
//! - **On its text** ([`Router::route`], for the rest, and for records the fast transform does
//!   not take): [`images`] finds where the two images are, and one walk over an image looks up
//!   the top-level attributes all the routes name, stepping over the others' values with the
//!   page's bracket scan (`scan::skip`).
//!
//! The text is located, not checked: the transform checks the record after the route is
//! chosen, and dead-letters a malformed one, so routing only needs to be deterministic on it.
//! An image is read up to the first thing that cannot be read; attributes not found by then
//! count as missing. A name that appears twice in an image, which DynamoDB never sends, counts
//! as its first appearance: the walk stops as soon as it has found every name it looks for
//! (the fast transform refuses such an image).

use std::ops::Range;

use bumpalo::Bump;

use crate::scan;
use crate::transform::number::Decimal;
use crate::transform::wire::{self, Name, Parser, Text};

/// A route's `when`: a test of an image's top-level attributes. Attribute names are literal
/// names, never paths: they are what a table's schema names.
///
/// Equality (for finding a route identical to an earlier one) is as written, except that
/// numbers are equal by value.
///
/// `A` is how an attribute is named: as written, or (in a [`Router`]) by the index of its
/// slot among the router's names, so that evaluating looks up no name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition<A = String> {
    /// `equals`: a string (`S`) attribute with exactly this text.
    Equals {
        attribute: A,
        value: String,
    },
    /// `equals_number`: a number (`N`) attribute of this value.
    EqualsNumber {
        attribute: A,
        value: Number,
    },
    /// `begins_with`: a string (`S`) attribute that begins with this text.
    BeginsWith {
        attribute: A,
        prefix: String,
    },
    /// `exists`: the attribute is there (`present`), of any type, `NULL` too; or is not.
    Exists {
        attribute: A,
        present: bool,
    },
    /// `any_of`: a string (`S`) attribute equal to one of these.
    AnyOf {
        attribute: A,
        values: Vec<String>,
    },
    Not(Box<Condition<A>>),
    /// Every one of them holds.
    All(Vec<Condition<A>>),
}

/// A decimal number as configured, kept as its text: DynamoDB numbers have up to 38 digits,
/// beyond any float, and are compared digit by digit (`transform::number`).
#[derive(Debug, Clone)]
pub struct Number(String);

impl Number {
    /// `None` unless `text` is a JSON number (`12.50`, `-1`, `1.25E1`; not `+1`, `.5`, `1.`).
    pub fn parse(text: &str) -> Option<Number> {
        Decimal::parse(text).map(|_| Number(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn decimal(&self) -> Decimal<'_> {
        Decimal::parse(&self.0).expect("checked by Number::parse")
    }
}

/// By value: `12.5`, `12.50` and `1.25E1` are one number.
impl PartialEq for Number {
    fn eq(&self, other: &Number) -> bool {
        self.decimal().cmp_value(&other.decimal()).is_eq()
    }
}

impl Eq for Number {}

/// The operators, in the order messages list them.
const OPERATORS: [&str; 7] = [
    "equals",
    "equals_number",
    "begins_with",
    "exists",
    "any_of",
    "not",
    "all",
];

impl Condition {
    /// A `when` of the tables file. The message says what is wrong and with which key; the
    /// caller names the table and the route.
    pub fn parse(value: &toml::Value) -> Result<Condition, String> {
        let table = value.as_table().ok_or_else(|| {
            format!(
                r#"a condition is a table such as {{ attribute = "entity", equals = "order" }}, not {}"#,
                kind(value)
            )
        })?;
        if let Some(key) = table
            .keys()
            .find(|key| *key != "attribute" && !OPERATORS.contains(&key.as_str()))
        {
            return Err(format!(
                "unknown key {key:?} in a condition: the keys are attribute, {}",
                OPERATORS.join(", ")
            ));
        }
        let given: Vec<&str> = OPERATORS
            .into_iter()
            .filter(|op| table.contains_key(*op))
            .collect();
        let op = match given[..] {
            [op] => op,
            [] => {
                return Err(format!(
                    "condition has no operator: give one of {}",
                    OPERATORS.join(", ")
                ));
            }
            _ => {
                return Err(format!(
                    "condition has {} operators ({}): give one",
                    NUMBERS[given.len()],
                    given.join(", ")
                ));
            }
        };
        let value = &table[op];
        match (op, table.get("attribute")) {
            ("not" | "all", Some(_)) => Err(format!(
                "{op} takes no attribute: name it in the conditions inside"
            )),
            ("not", None) => Ok(Condition::Not(Box::new(
                Condition::parse(value).map_err(|e| format!("not: {e}"))?,
            ))),
            ("all", None) => {
                let items = value.as_array().ok_or_else(|| {
                    format!("all must be a list of conditions, not {}", kind(value))
                })?;
                if items.is_empty() {
                    return Err("all must list at least one condition".into());
                }
                let all = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Condition::parse(item).map_err(|e| format!("all[{i}]: {e}")))
                    .collect::<Result<_, _>>()?;
                Ok(Condition::All(all))
            }
            (_, None) => Err(format!(
                "{op} needs attribute, the name of the top-level attribute it tests"
            )),
            (_, Some(toml::Value::String(name))) if name.is_empty() => {
                Err("attribute must not be empty".into())
            }
            (_, Some(toml::Value::String(name))) => leaf(op, name.clone(), value),
            (_, Some(other)) => Err(format!(
                "attribute must be a string, the name of a top-level attribute, not {}",
                kind(other)
            )),
        }
    }
}

impl<A> Condition<A> {
    /// The condition with each attribute named by `name` instead.
    fn renamed<B>(&self, name: &mut impl FnMut(&A) -> B) -> Condition<B> {
        match self {
            Condition::Equals { attribute, value } => Condition::Equals {
                attribute: name(attribute),
                value: value.clone(),
            },
            Condition::EqualsNumber { attribute, value } => Condition::EqualsNumber {
                attribute: name(attribute),
                value: value.clone(),
            },
            Condition::BeginsWith { attribute, prefix } => Condition::BeginsWith {
                attribute: name(attribute),
                prefix: prefix.clone(),
            },
            Condition::Exists { attribute, present } => Condition::Exists {
                attribute: name(attribute),
                present: *present,
            },
            Condition::AnyOf { attribute, values } => Condition::AnyOf {
                attribute: name(attribute),
                values: values.clone(),
            },
            Condition::Not(condition) => Condition::Not(Box::new(condition.renamed(name))),
            Condition::All(conditions) => {
                Condition::All(conditions.iter().map(|c| c.renamed(name)).collect())
            }
        }
    }
}

impl Condition<usize> {
    /// Evaluated on `found`, the value of each slot's attribute, `None` when the image has no
    /// such attribute.
    fn eval(&self, found: &[Option<Attribute<'_>>]) -> bool {
        let find = |slot: &usize| found[*slot];
        match self {
            Condition::Equals { attribute, value } => {
                matches!(find(attribute), Some(Attribute::String(s)) if s == value.as_bytes())
            }
            Condition::EqualsNumber { attribute, value } => match find(attribute) {
                Some(Attribute::Number(text)) => {
                    Decimal::parse(text).is_some_and(|n| n.cmp_value(&value.decimal()).is_eq())
                }
                _ => false,
            },
            Condition::BeginsWith { attribute, prefix } => {
                matches!(find(attribute), Some(Attribute::String(s)) if s.starts_with(prefix.as_bytes()))
            }
            Condition::Exists { attribute, present } => find(attribute).is_some() == *present,
            Condition::AnyOf { attribute, values } => match find(attribute) {
                Some(Attribute::String(s)) => values.iter().any(|v| s == v.as_bytes()),
                _ => false,
            },
            Condition::Not(condition) => !condition.eval(found),
            Condition::All(conditions) => conditions.iter().all(|c| c.eval(found)),
        }
    }
}

/// The condition of an operator that tests `attribute`, with its `value` checked.
fn leaf(op: &str, attribute: String, value: &toml::Value) -> Result<Condition, String> {
    let string = |value: &toml::Value, key: &str| match value {
        toml::Value::String(s) => Ok(s.clone()),
        other => Err(format!("{key} must be a string, not {}", kind(other))),
    };
    Ok(match op {
        "equals" => Condition::Equals {
            attribute,
            value: string(value, op)?,
        },
        "equals_number" => {
            let toml::Value::String(text) = value else {
                return Err(format!(
                    r#"equals_number must be a decimal in a string, such as "12.50" (TOML's floats are binary), not {}"#,
                    kind(value)
                ));
            };
            let value = Number::parse(text).ok_or_else(|| {
                format!(r#"equals_number {text:?} is not a decimal, such as "12.50" or "-1.5E3""#)
            })?;
            Condition::EqualsNumber { attribute, value }
        }
        "begins_with" => {
            let prefix = string(value, op)?;
            if prefix.is_empty() {
                return Err("begins_with must not be empty: every string begins with \"\"".into());
            }
            Condition::BeginsWith { attribute, prefix }
        }
        "exists" => Condition::Exists {
            attribute,
            present: value
                .as_bool()
                .ok_or_else(|| format!("exists must be true or false, not {}", kind(value)))?,
        },
        "any_of" => {
            let items = value
                .as_array()
                .ok_or_else(|| format!("any_of must be a list of strings, not {}", kind(value)))?;
            if items.is_empty() {
                return Err("any_of must list at least one string".into());
            }
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let item = string(item, &format!("any_of[{i}]"))?;
                if item.is_empty() {
                    return Err(format!("any_of[{i}] must not be empty"));
                }
                values.push(item);
            }
            Condition::AnyOf { attribute, values }
        }
        op => unreachable!("{op} tests no attribute"),
    })
}

/// How many operators a condition gave, in words: there are seven.
const NUMBERS: [&str; 8] = ["no", "one", "two", "three", "four", "five", "six", "seven"];

/// A TOML value's type, with its article, for messages.
fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The route of each image: the first of a table's routes whose condition holds.
#[derive(Debug, Clone)]
pub struct Router {
    /// In route order; `None` always holds (a route without `when`, the table's fallback).
    conditions: Vec<Option<Condition<usize>>>,
    /// Every name the conditions test, once, by slot: one walk over an image finds them all.
    names: Vec<String>,
    /// Their keys for comparing ([`Name`]), taken once.
    keys: Vec<(u64, u64)>,
}

/// How many attributes a route decision looks up without allocating; routes mostly test one
/// or two (an entity type, a key prefix).
pub(crate) const SLOTS: usize = 8;

impl Router {
    pub fn new(conditions: Vec<Option<Condition>>) -> Router {
        let mut names: Vec<String> = Vec::new();
        let mut slot = |name: &String| match names.iter().position(|n| n == name) {
            Some(slot) => slot,
            None => {
                names.push(name.clone());
                names.len() - 1
            }
        };
        let conditions = conditions
            .iter()
            .map(|c| c.as_ref().map(|c| c.renamed(&mut slot)))
            .collect();
        let keys = names
            .iter()
            .map(|name| Name::new(Text::Decoded(name)).key)
            .collect();
        Router {
            conditions,
            names,
            keys,
        }
    }

    /// The index of the first route whose condition holds for `image` (an image object's
    /// text), `None` when none does.
    pub fn route(&self, image: &str) -> Option<usize> {
        // A first route without a condition needs nothing of the image.
        if let Some(None) = self.conditions.first() {
            return Some(0);
        }
        let arena = Bump::new();
        let mut stack = [None; SLOTS];
        let mut heap = Vec::new();
        let found = match self.names.len() {
            n if n <= SLOTS => &mut stack[..n],
            n => {
                heap.resize(n, None);
                &mut heap[..]
            }
        };
        walk(image, &arena, &self.names, found);
        self.route_found(found)
    }

    /// Every name the conditions test, once, by slot ([`Router::route_found`]).
    pub(crate) fn names(&self) -> impl ExactSizeIterator<Item = Name<'_>> {
        self.names.iter().zip(&self.keys).map(|(name, &key)| Name {
            key,
            text: Text::Decoded(name),
        })
    }

    /// The route of an image whose attributes have been found otherwise: `found[k]` is the
    /// value of the `k`th of [`Router::names`].
    pub(crate) fn route_found(&self, found: &[Option<Attribute<'_>>]) -> Option<usize> {
        self.conditions
            .iter()
            .position(|c| c.as_ref().is_none_or(|c| c.eval(found)))
    }
}

/// An attribute's value as far as a condition looks at it, read at `at` in `raw`, where an
/// attribute value starts. `None` when there is none to read.
pub(crate) fn attribute_at<'a>(raw: &'a str, arena: &'a Bump, at: usize) -> Option<Attribute<'a>> {
    let mut p = Parser::new(raw, arena, at, 2);
    // Most are `{"S":"…"}` or `{"N":"…"}` as DynamoDB spells them, read in one step.
    match p.plain_value() {
        Some((tag, text)) => Attribute::plain(raw, tag, text),
        None => attribute(&mut p),
    }
}

/// An attribute's value as far as a condition looks at it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attribute<'a> {
    /// `S`: its text, unescaped.
    String(&'a [u8]),
    /// `N`: its text, unescaped (perhaps not a number at all).
    Number(&'a str),
    /// Any other type, or no attribute value at all (not an object of one member): present,
    /// and equal to nothing.
    Other,
}

impl<'a> Attribute<'a> {
    /// A plain value of `text`, as `Parser::plain_value` found it: its tag (`S` or `N`) and
    /// where its text is.
    fn plain(text: &'a str, tag: u8, at: Range<usize>) -> Option<Attribute<'a>> {
        Some(match tag {
            b'S' => Attribute::String(text.as_bytes().get(at)?),
            _ => Attribute::Number(text.get(at)?),
        })
    }
}

/// Notes in `found` the values of the top-level attributes of `image` named in `names` (the same
/// index), stopping when all are found.
fn walk<'a>(
    image: &'a str,
    arena: &'a Bump,
    names: &[impl AsRef<str>],
    found: &mut [Option<Attribute<'a>>],
) {
    if names.is_empty() {
        return;
    }
    let mut missing = names.len();
    let mut p = Parser::new(image, arena, 0, 0);
    let mut note = |name: &[u8], value: Attribute<'a>| {
        let slot = names
            .iter()
            .zip(found.iter_mut())
            .find(|(n, slot)| slot.is_none() && wire::equal(n.as_ref().as_bytes(), name))
            .map(|(_, slot)| slot);
        if let Some(slot) = slot {
            *slot = Some(value);
            missing -= 1;
        }
        missing == 0
    };
    let mut members = || -> Option<()> {
        p.expect(b'{')?;
        if p.eat(b'}') {
            return Some(());
        }
        loop {
            p.whitespace();
            // Most members are `"name":{"S":"…"}` or `{"N":"…"}` as DynamoDB spells them,
            // read in one step.
            if let Some((name, tag, value)) = p.plain_member() {
                if note(name, Attribute::plain(image, tag, value)?) {
                    return Some(());
                }
            } else {
                let name = p.string()?;
                p.expect(b':')?;
                if names
                    .iter()
                    .any(|n| wire::equal(n.as_ref().as_bytes(), name.as_bytes()))
                {
                    let value = attribute(&mut p)?;
                    if note(name.as_bytes(), value) {
                        return Some(());
                    }
                } else {
                    skip(&mut p)?;
                }
            }
            if !p.next_or(b'}')? {
                return Some(());
            }
        }
    };
    // What could not be read is missing, as the module says.
    let _ = members();
}

/// An attribute value that is not plain: its type tag or its text escaped, another type, or
/// odd JSON that is no attribute value.
fn attribute<'a>(p: &mut Parser<'a>) -> Option<Attribute<'a>> {
    if p.peek()? != b'{' {
        skip(p)?;
        return Some(Attribute::Other);
    }
    let (mut value, mut members) = (Attribute::Other, 0);
    p.members(|p, tag, _| {
        members += 1;
        value = match (tag.as_bytes(), p.peek()?) {
            (b"S", b'"') => Attribute::String(p.string()?.as_bytes()),
            (b"N", b'"') => Attribute::Number(p.str()?),
            _ => {
                skip(p)?;
                Attribute::Other
            }
        };
        Some(())
    })?;
    Some(if members == 1 {
        value
    } else {
        Attribute::Other
    })
}

/// Steps over a value with the page's bracket scan: in a large map or list, 64 bytes at a
/// time, where the parser reads token by token.
fn skip(p: &mut Parser<'_>) -> Option<()> {
    p.whitespace();
    scan::skip(p.bytes, &mut p.at)
}

/// The text of a record's images, as [`images`] finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Images<'a> {
    /// `dynamodb.NewImage`; `None` when the record has none, or `null`.
    pub new: Option<&'a str>,
    /// `dynamodb.OldImage`, the same.
    pub old: Option<&'a str>,
}

/// Where `raw`, one stream record as GetRecords returned it, has its images, in any member
/// order. Values are stepped over, not checked. `None` when `raw` is not a record that can be
/// read so far, or an image is neither an object nor `null`; the transform explains such a
/// record when it fails on it.
pub fn images(raw: &str) -> Option<Images<'_>> {
    let arena = Bump::new();
    let mut p = Parser::new(raw, &arena, 0, 0);
    let (mut new, mut old): (Option<Range<usize>>, Option<Range<usize>>) = (None, None);
    p.members(|p, name, _| match name.as_bytes() {
        b"dynamodb" => {
            // A second `dynamodb` replaces the first, images and all, as it does for serde_json
            // and so for the transform.
            (new, old) = (None, None);
            p.members(|p, name, _| match name.as_bytes() {
                b"NewImage" => image(p).map(|image| new = image),
                b"OldImage" => image(p).map(|image| old = image),
                _ => skip(p),
            })
        }
        _ => skip(p),
    })?;
    p.whitespace();
    if p.at != raw.len() {
        return None;
    }
    Some(Images {
        new: new.and_then(|r| raw.get(r)),
        old: old.and_then(|r| raw.get(r)),
    })
}

/// Where an image object is, or `None` for `null`.
fn image(p: &mut Parser<'_>) -> Option<Option<Range<usize>>> {
    if p.null()? {
        return Some(None);
    }
    if p.peek()? != b'{' {
        return None;
    }
    let start = p.at;
    scan::skip(p.bytes, &mut p.at)?;
    Some(Some(start..p.at))
}

#[cfg(test)]
mod tests;

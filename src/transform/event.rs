//! The fast path: the parsed record written as the event's bytes in one pass.
//!
//! The item is serialized straight from the attribute tree, and the patch is written while the
//! two trees are walked side by side; no `serde_json::Value`, no `json_patch::Patch` is built.
//! The walk makes the same operations, in the same order, as `json_patch::diff` on the
//! reference's values, so both paths give byte-identical events (a property test holds them to
//! it).

use bytes::Bytes;

use crate::transform::number::Decimal;
use crate::transform::wire::{self, Item, Json, Name, Span, Text, Tree};
use crate::transform::{Event, EventSettings, eid_for, timestamp};

/// The event for `raw`, or `None` when the record is not one the fast path takes: the caller
/// then asks the reference path, which explains what is wrong with it.
pub(crate) fn build(raw: &str, settings: &EventSettings) -> Option<Event> {
    let record = wire::parse(raw)?;
    let (data_op, item) = match &*record.event_name {
        "INSERT" => ("C", record.new_image?),
        "MODIFY" => {
            record.old_image?;
            ("U", record.new_image?)
        }
        // A REMOVE never has a new image; with one, its old image was read against it and
        // holds only the attributes the new one lacks: the reference takes such a record.
        "REMOVE" if record.new_image.is_none() => ("D", record.old_image?),
        _ => return None,
    };
    let created_at_ms = Decimal::parse(record.created)?.millis()?;
    let eid = eid_for(&record.event_id);

    // The event holds the item (smaller than its image on the wire) and a patch (at most the
    // changed values); half as much again covers an INSERT, whose patch repeats the item.
    let mut w = Writer {
        tree: &record.tree,
        out: Vec::with_capacity(raw.len() + raw.len() / 2 + 256),
        path: Vec::new(),
        ops: 0,
    };
    w.out.extend_from_slice(br#"{"metadata":{"eid":""#);
    w.out.extend_from_slice(
        eid.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    w.out.extend_from_slice(br#"","occurred_at":""#);
    timestamp::write(created_at_ms, &mut w.out)?;
    w.out.push(b'"');
    if let Some(names) = &settings.compaction_key {
        w.out.extend_from_slice(br#","partition_compaction_key":"#);
        w.compaction_key(item, names)?;
    }
    w.out.extend_from_slice(br#"},"data_op":""#);
    w.out.extend_from_slice(data_op.as_bytes());
    w.out.extend_from_slice(br#"","data_type":"#);
    w.string(&settings.data_type);
    w.out.extend_from_slice(br#","data":{"item":"#);
    w.object(item);
    w.out.extend_from_slice(br#","patch":["#);
    w.diff_fields(
        record.old_image.unwrap_or(Span::EMPTY),
        record.new_image.unwrap_or(Span::EMPTY),
    );
    w.out.extend_from_slice(b"]}}");

    Some(Event {
        eid,
        body: Bytes::from(w.out),
        sequence_number: record.sequence_number.to_string(),
        event_id: record.event_id.to_string(),
        created_at_ms,
    })
}

struct Writer<'t, 'a> {
    tree: &'t Tree<'a>,
    out: Vec<u8>,
    /// Where the diff is, as the steps of a JSON Pointer; written out only for an operation.
    path: Vec<Step<'t>>,
    /// Patch operations written so far.
    ops: usize,
}

enum Step<'t> {
    Name(&'t str),
    Index(usize),
}

impl<'t, 'a> Writer<'t, 'a> {
    fn text(&mut self, text: &Text<'_>) {
        match text {
            Text::Plain(s) => {
                self.out.push(b'"');
                self.out.extend_from_slice(s.as_bytes());
                self.out.push(b'"');
            }
            Text::Decoded(s) => self.string(s),
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push(b'"');
        escape(&mut self.out, s.as_bytes(), false);
        self.out.push(b'"');
    }

    fn value(&mut self, value: &Json<'_>) {
        match value {
            Json::String(t) => self.text(t),
            Json::Number(n) => self.out.extend_from_slice(n.as_bytes()),
            Json::Bool(true) => self.out.extend_from_slice(b"true"),
            Json::Bool(false) => self.out.extend_from_slice(b"false"),
            Json::Null => self.out.extend_from_slice(b"null"),
            Json::Unchanged => unreachable!("only old images read against a new one hold it"),
            Json::Object(span) => self.object(*span),
            Json::Array(span) => {
                self.out.push(b'[');
                for (i, item) in self.tree.items(*span).iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.value(&item.value);
                }
                self.out.push(b']');
            }
        }
    }

    fn object(&mut self, span: Span) {
        self.out.push(b'{');
        for (i, field) in self.tree.fields(span).enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.text(&field.name.text);
            self.out.push(b':');
            self.value(&field.value);
        }
        self.out.push(b'}');
    }

    /// One key attribute: its value as a string (S as is, N its digits, B its base64). Several:
    /// the JSON array text of their values, `["order-42",17]`, which no other pair of values
    /// produces, whatever characters the values hold.
    fn compaction_key(&mut self, item: Span, names: &[String]) -> Option<()> {
        let tree = self.tree;
        let key_value = |name: &String| {
            let value = &tree.field(item, &Name::new(Text::Plain(name)))?.value;
            matches!(value, Json::String(_) | Json::Number(_)).then_some(value)
        };
        match names {
            [] => None,
            [name] => {
                match key_value(name)? {
                    Json::String(t) => self.text(t),
                    Json::Number(n) => self.string(n),
                    _ => unreachable!("key_value returns strings and numbers only"),
                }
                Some(())
            }
            names => {
                let mut array = Writer {
                    tree: self.tree,
                    out: Vec::new(),
                    path: Vec::new(),
                    ops: 0,
                };
                array.out.push(b'[');
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        array.out.push(b',');
                    }
                    array.value(key_value(name)?);
                }
                array.out.push(b']');
                self.out.push(b'"');
                escape(&mut self.out, &array.out, false);
                self.out.push(b'"');
                Some(())
            }
        }
    }

    fn op(&mut self, op: &[u8], value: Option<&Json<'_>>) {
        if self.ops > 0 {
            self.out.push(b',');
        }
        self.ops += 1;
        self.out.extend_from_slice(br#"{"op":""#);
        self.out.extend_from_slice(op);
        self.out.extend_from_slice(br#"","path":""#);
        for step in &self.path {
            self.out.push(b'/');
            match step {
                Step::Name(name) => escape(&mut self.out, name.as_bytes(), true),
                Step::Index(index) => write_index(&mut self.out, *index),
            }
        }
        self.out.push(b'"');
        if let Some(value) = value {
            self.out.extend_from_slice(br#","value":"#);
            self.value(value);
        }
        self.out.push(b'}');
    }

    /// As `json_patch::diff`: containers of the same kind are walked, other values replaced when
    /// they differ.
    fn diff(&mut self, old: &'t Json<'a>, new: &'t Json<'a>) {
        match (old, new) {
            (Json::Object(old), Json::Object(new)) => {
                self.diff_fields(*old, *new);
            }
            (Json::Array(old), Json::Array(new)) => {
                self.diff_items(self.tree.items(*old), self.tree.items(*new));
            }
            (Json::String(a), Json::String(b)) if same(a.as_bytes(), b.as_bytes()) => {}
            (Json::Number(a), Json::Number(b)) if a == b => {}
            (Json::Bool(a), Json::Bool(b)) if a == b => {}
            (Json::Null, Json::Null) | (Json::Unchanged, _) => {}
            _ => self.op(b"replace", Some(new)),
        }
    }

    /// New fields in order (walked or added), then the old fields that are gone (removed):
    /// `json_patch::diff`'s order. Each new field carries its old value, and `removed` are the
    /// old object's fields the new one lacks (see `wire::Tree`).
    fn diff_fields(&mut self, removed: Span, new: Span) {
        let tree = self.tree;
        for field in tree.fields(new) {
            match &field.old {
                Some(Json::Unchanged) => {}
                old => {
                    self.path.push(Step::Name(&field.name.text));
                    match old {
                        Some(old) => self.diff(old, &field.value),
                        None => self.op(b"add", Some(&field.value)),
                    }
                    self.path.pop();
                }
            }
        }
        for field in tree.fields(removed) {
            self.path.push(Step::Name(&field.name.text));
            self.op(b"remove", None);
            self.path.pop();
        }
    }

    /// Index by index; a longer new list adds at its tail, a shorter one removes the old tail,
    /// each removal at the same index, as `json_patch::diff` does.
    fn diff_items(&mut self, old: &'t [Item<'a>], new: &'t [Item<'a>]) {
        for (i, (old, new)) in old.iter().zip(new).enumerate() {
            self.path.push(Step::Index(i));
            self.diff(&old.value, &new.value);
            self.path.pop();
        }
        self.path.push(Step::Index(new.len().min(old.len())));
        for _ in new.len()..old.len() {
            self.op(b"remove", None);
        }
        self.path.pop();
        for (i, item) in new.iter().enumerate().skip(old.len()) {
            self.path.push(Step::Index(i));
            self.op(b"add", Some(&item.value));
            self.path.pop();
        }
    }
}

/// String equality, eight bytes at a time: most values of a MODIFY are unchanged and short, and
/// a library call per comparison cost more than the comparing.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = a_chunks.remainder() == b_chunks.remainder();
    tails_equal
        && a_chunks.zip(b_chunks).all(|(x, y)| {
            u64::from_ne_bytes(x.try_into().expect("8 bytes"))
                == u64::from_ne_bytes(y.try_into().expect("8 bytes"))
        })
}

fn write_index(out: &mut Vec<u8>, index: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = index;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Escapes `bytes` (UTF-8) for the inside of a JSON string exactly as serde_json does; with
/// `pointer`, first as a JSON Pointer reference token (`~` → `~0`, `/` → `~1`, RFC 6901).
fn escape(out: &mut Vec<u8>, bytes: &[u8], pointer: bool) {
    // Bit 1: JSON escapes the byte; bit 2: a pointer token does. A table lookup per byte, as
    // most bytes need nothing and are copied in runs.
    const CLASS: [u8; 256] = {
        let mut class = [0u8; 256];
        let mut b = 0;
        while b < 0x20 {
            class[b] = 1;
            b += 1;
        }
        class[b'"' as usize] = 1;
        class[b'\\' as usize] = 1;
        class[b'~' as usize] = 2;
        class[b'/' as usize] = 2;
        class
    };
    let mask = if pointer { 3 } else { 1 };
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if CLASS[usize::from(b)] & mask == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'~' => out.extend_from_slice(b"~0"),
            b'/' => out.extend_from_slice(b"~1"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(s: &str, pointer: bool) -> String {
        let mut out = Vec::new();
        escape(&mut out, s.as_bytes(), pointer);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_every_ascii_character_as_serde_json_does() {
        for c in (0u8..0x80).map(char::from) {
            let s = c.to_string();
            let serde = serde_json::to_string(&s).unwrap();
            assert_eq!(
                format!("\"{}\"", escaped(&s, false)),
                serde,
                "{:#x}",
                c as u32
            );
        }
    }

    #[test]
    fn escapes_pointer_tokens() {
        assert_eq!(escaped("a/b~c", true), "a~1b~0c");
        assert_eq!(escaped("~1", true), "~01");
        assert_eq!(escaped("\"/\n", true), "\\\"~1\\n");
        assert_eq!(escaped("a/b~c", false), "a/b~c");
    }

    proptest! {
        #[test]
        fn escape_matches_serde_json(s in any::<String>()) {
            prop_assert_eq!(format!("\"{}\"", escaped(&s, false)), serde_json::to_string(&s).unwrap());
        }
    }
}

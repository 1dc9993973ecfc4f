//! The stream record as it arrives, parsed once and borrowing from the wire text.
//!
//! Attribute values turn into their JSON form while they are read: numbers checked and spelled as
//! serde_json spells them, binaries checked, sets sorted, object fields sorted by name. What is
//! left is a small JSON tree whose strings are mostly slices of the record, which the event writer
//! serializes and diffs without building anything else.
//!
//! The old image is read against the new one and mostly not read at all: a member whose text is
//! the new image's member's text is skipped after one comparison of bytes, and the new field
//! notes that its old value is the same ([`Json::Unchanged`]). Only what changed is read, and
//! only the attributes the new image lacks become fields of the old image (see [`Tree`]).
//!
//! A parser of its own, not serde visitors: the record is all small objects (`{"S":"…"}` per
//! value), and with serde_json's per-key visitor calls, parsing took more than half of the whole
//! transform (measured on the benchmark's order record). It checks JSON as strictly as
//! serde_json, so it never takes a record the reference rejects, and declines (`None`) whatever
//! it does not handle itself: escaped type tags, repeated attribute names or images, nesting
//! deeper than [`MAX_DEPTH`]. The reference path then parses the record again and either
//! explains the problem with the attribute's path or, for such an odd record, builds the event
//! itself. Escaped strings are decoded by serde_json.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::ops::Deref;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::transform::number::{self, Decimal};

/// Arrays and objects nested deeper than this are left to the reference. Below serde_json's own
/// limit of 128, so the reference never fails on depth where this parser succeeds; far above the
/// 32 levels DynamoDB allows (67 here, each level being an attribute value and its map).
const MAX_DEPTH: u32 = 100;

/// A JSON string of the record.
#[derive(Debug, Clone)]
pub(crate) enum Text<'a> {
    /// The wire text had no escape sequence, and the parser rejects raw control characters, so
    /// it contains nothing JSON needs escaped: it is written back between quotes as it is.
    Plain(&'a str),
    /// Unescaped; must be escaped again when written.
    Decoded(String),
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Plain(s) => s,
            Text::Decoded(s) => s,
        }
    }
}

/// An attribute name, with its first 16 bytes as an integer (zero-padded, big-endian) for
/// comparing. Sorting the fields and matching names up compares names some hundreds of times per
/// record; by integers almost every comparison is a few instructions, where comparing slices is
/// a library call.
#[derive(Debug)]
pub(crate) struct Name<'a> {
    key: u128,
    pub text: Text<'a>,
}

impl<'a> Name<'a> {
    pub(crate) fn new(text: Text<'a>) -> Name<'a> {
        Name {
            key: head(text.as_bytes()),
            text,
        }
    }
}

/// The first 16 bytes of `b` as a big-endian integer, zero-padded.
///
/// Read as at most two overlapping loads from each end: shifting bytes in one by one was 6% of
/// the whole transform, and copying into a zeroed buffer to load that stalls the processor (a
/// store it cannot forward to the load). Overlapping bytes are the same bytes at the same place,
/// so or-ing both loads is exact.
fn head(b: &[u8]) -> u128 {
    let n = b.len();
    let be64 = |at: usize| u128::from(u64::from_be_bytes(b[at..at + 8].try_into().expect("8")));
    let be32 = |at: usize| u128::from(u32::from_be_bytes(b[at..at + 4].try_into().expect("4")));
    if n >= 16 {
        be64(0) << 64 | be64(8)
    } else if n >= 8 {
        be64(0) << 64 | be64(n - 8) << (8 * (16 - n))
    } else if n >= 4 {
        be32(0) << 96 | be32(n - 4) << (8 * (16 - n))
    } else {
        b.iter()
            .enumerate()
            .fold(0, |key, (i, &byte)| key | u128::from(byte) << (120 - 8 * i))
    }
}

/// Byte order, which is code point order.
impl Ord for Name<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.text.as_bytes(), other.text.as_bytes());
        self.key.cmp(&other.key).then_with(|| {
            if a.len() <= 16 && b.len() <= 16 {
                // Equal up to the shorter one's end, and zeros after it: it is a prefix.
                a.len().cmp(&b.len())
            } else {
                a.cmp(b)
            }
        })
    }
}

impl PartialOrd for Name<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Name<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Name<'_> {}

/// An attribute value in its JSON form. Objects and arrays are spans of the record's [`Tree`].
#[derive(Debug)]
pub(crate) enum Json<'a> {
    String(Text<'a>),
    /// In serde_json's spelling; digits never need escaping.
    Number(Cow<'a, str>),
    Bool(bool),
    Null,
    Object(Span),
    Array(Span),
    /// In an old image: the same wire text as the new image's value at the same place (the
    /// attribute of the same name, the item at the same index), so the same value. It is not
    /// read twice, and the diff knows it has no change without looking into it: most of a
    /// MODIFY's old image is unchanged.
    Unchanged,
}

/// A field of an object.
#[derive(Debug)]
pub(crate) struct Field<'a> {
    pub name: Name<'a>,
    pub value: Json<'a>,
    /// In a new image read with an old one: the old image's value of the same name. `None`: the
    /// old image has no such attribute; [`Json::Unchanged`]: the same wire text.
    pub old: Option<Json<'a>>,
    /// Offsets in the record: the name's opening quote, the value's start and its end. The
    /// member's text (`at..end`) recognizes an unchanged member of the old image, the value's
    /// text (`value_at..end`) an unchanged value under another spelling of the name.
    at: u32,
    value_at: u32,
    end: u32,
    /// Its place among its object's members on the wire.
    wire: u32,
}

/// An item of an array.
#[derive(Debug)]
pub(crate) struct Item<'a> {
    pub value: Json<'a>,
    /// The item's wire text, to recognize an unchanged item in the old image.
    raw: &'a str,
}

/// The new image's value an old image's value is read against, when it is a map or a list.
#[derive(Debug, Clone, Copy)]
enum Twin {
    Object(Span),
    Array(Span),
    Other,
}

impl Twin {
    fn of(value: &Json<'_>) -> Twin {
        match value {
            Json::Object(span) => Twin::Object(*span),
            Json::Array(span) => Twin::Array(*span),
            _ => Twin::Other,
        }
    }
}

/// Where an object's fields or an array's items are in the [`Tree`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: usize,
    len: usize,
}

impl Span {
    /// No fields: the image a record lacks.
    pub(crate) const EMPTY: Span = Span { start: 0, len: 0 };

    fn range(self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// The fields and items of all objects and arrays of a record. A few vectors per record instead
/// of some per object, because allocating and freeing was a large share of the budget.
///
/// An object of a new image holds all its fields, each with the old image's value of its name
/// ([`Field::old`]). An object of an old image read against the new one holds only the fields
/// the new object lacks, the removed ones; read against nothing (no new image, or a new value
/// that is no map), that is all of them. So a patch is the new fields' changes, then the old
/// object's fields removed, and no old field is sorted or matched by name when it is unchanged.
#[derive(Debug, Default)]
pub(crate) struct Tree<'a> {
    /// Every field of the record, where it was read; objects are lists of indices into it, so
    /// that closing and sorting an object moves four bytes per field, not the field.
    fields: Vec<Field<'a>>,
    /// Per object (a [`Span`]), its fields in wire order, as an old image is compared with them.
    wire: Vec<u32>,
    /// Per object (the same [`Span`]), its fields sorted by name.
    sorted: Vec<u32>,
    /// Each array's items together.
    items: Vec<Item<'a>>,
}

impl<'a> Tree<'a> {
    /// An object's fields, sorted by name (byte order, which is code point order), names unique.
    pub(crate) fn fields(&self, span: Span) -> impl Iterator<Item = &Field<'a>> {
        self.sorted[span.range()]
            .iter()
            .map(|&i| &self.fields[i as usize])
    }

    /// The object's field named `name`.
    pub(crate) fn field(&self, span: Span, name: &Name<'_>) -> Option<&Field<'a>> {
        self.find(span, name).map(|i| &self.fields[i])
    }

    /// Where the object's field named `name` is in `fields`.
    fn find(&self, span: Span, name: &Name<'_>) -> Option<usize> {
        let sorted = &self.sorted[span.range()];
        let at = sorted
            .binary_search_by(|&i| self.fields[i as usize].name.cmp(name))
            .ok()?;
        Some(sorted[at] as usize)
    }

    pub(crate) fn items(&self, span: Span) -> &[Item<'a>] {
        &self.items[span.start..span.start + span.len]
    }
}

/// The parts of a stream record the event is made of; the rest of it is checked and skipped.
pub(crate) struct Record<'a> {
    pub event_id: Text<'a>,
    pub event_name: Text<'a>,
    /// `ApproximateCreationDateTime`, a JSON number as written.
    pub created: &'a str,
    pub sequence_number: Text<'a>,
    /// Spans of objects in `tree`.
    pub new_image: Option<Span>,
    pub old_image: Option<Span>,
    pub tree: Tree<'a>,
}

/// `None`: not a record the fast path takes (see the module doc).
pub(crate) fn parse(raw: &str) -> Option<Record<'_>> {
    let mut p = Parser {
        text: raw,
        bytes: raw.as_bytes(),
        at: 0,
        depth: 0,
        open_fields: Vec::with_capacity(32),
        open_items: Vec::with_capacity(16),
        // About one field per 40 bytes of DynamoDB JSON, and fewer items: mostly no regrowth,
        // little waste.
        tree: Tree {
            fields: Vec::with_capacity(raw.len() / 40),
            wire: Vec::with_capacity(raw.len() / 40),
            sorted: Vec::with_capacity(raw.len() / 40),
            items: Vec::with_capacity(raw.len() / 200),
        },
    };
    // Offsets are u32, to keep fields small; a record is at most some 400 KB.
    u32::try_from(raw.len()).ok()?;
    let record = p.record()?;
    p.whitespace();
    (p.at == p.bytes.len()).then_some(record)
}

/// The `dynamodb` member of a record, as far as it was found.
struct StreamRecord<'a> {
    created: Option<&'a str>,
    sequence_number: Option<Text<'a>>,
    new_image: Option<Span>,
    old_image: Option<Span>,
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    /// The fields (indices into the tree's) of the objects being read, innermost last.
    open_fields: Vec<u32>,
    /// The items of the arrays being read, innermost last. A finished array's items move to the
    /// tree together, after those of the arrays inside it.
    open_items: Vec<Item<'a>>,
    tree: Tree<'a>,
}

impl<'a> Parser<'a> {
    #[inline(always)]
    fn whitespace(&mut self) {
        // Records come without whitespace between tokens: one comparison decides it.
        if self.bytes.get(self.at).is_some_and(|&b| b > b' ') {
            return;
        }
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.whitespace();
        let found = self.bytes.get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied()
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// An object, each member's value read by `value`, which gets the member's name and where
    /// the name's opening quote is.
    fn members(
        &mut self,
        mut value: impl FnMut(&mut Self, Text<'a>, usize) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        self.enter()?;
        if !self.eat(b'}') {
            loop {
                self.whitespace();
                let at = self.at;
                let name = self.string()?;
                self.expect(b':')?;
                value(self, name, at)?;
                if self.eat(b'}') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// An array, each element read by `element`.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.enter()?;
        if !self.eat(b']') {
            loop {
                element(self)?;
                if self.eat(b']') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn record(&mut self) -> Option<Record<'a>> {
        let (mut event_id, mut event_name, mut dynamodb) = (None, None, None);
        // A repeated member overwrites the earlier one, as it does in the reference's `Value`.
        self.members(|p, name, _| {
            match &*name {
                "eventID" => event_id = Some(p.string()?),
                "eventName" => event_name = Some(p.string()?),
                "dynamodb" => dynamodb = Some(p.stream_record()?),
                _ => p.skip()?,
            }
            Some(())
        })?;
        let dynamodb: StreamRecord<'a> = dynamodb?;
        Some(Record {
            event_id: event_id?,
            event_name: event_name?,
            created: dynamodb.created?,
            sequence_number: dynamodb.sequence_number?,
            new_image: dynamodb.new_image,
            old_image: dynamodb.old_image,
            tree: std::mem::take(&mut self.tree),
        })
    }

    fn stream_record(&mut self) -> Option<StreamRecord<'a>> {
        let mut record = StreamRecord {
            created: None,
            sequence_number: None,
            new_image: None,
            old_image: None,
        };
        let (mut new_image_read, mut old_image_read) = (false, false);
        // An old image that comes first is checked, then read once the new one is known.
        let mut old_image_at = None;
        self.members(|p, name, _| {
            match &*name {
                "ApproximateCreationDateTime" => record.created = Some(p.number()?),
                "SequenceNumber" => record.sequence_number = Some(p.string()?),
                "NewImage" => {
                    // A second one would leave an old image read against the wrong twin.
                    if std::mem::replace(&mut new_image_read, true) {
                        return None;
                    }
                    record.new_image = p.image(None)?;
                }
                // A second one would leave the new image's fields holding two old values.
                "OldImage" if std::mem::replace(&mut old_image_read, true) => return None,
                "OldImage" if new_image_read => record.old_image = p.image(record.new_image)?,
                "OldImage" => {
                    p.whitespace();
                    let start = p.at;
                    p.skip()?;
                    old_image_at = Some((start, p.at));
                }
                _ => p.skip()?,
            }
            Some(())
        })?;
        if let Some((start, end)) = old_image_at {
            let after = std::mem::replace(&mut self.at, start);
            record.old_image = self.image(record.new_image)?;
            if self.at != end {
                return None;
            }
            self.at = after;
        }
        Some(record)
    }

    /// `null` counts as absent, as it does for the reference. For an old image, `twin` is the
    /// new image, when it has been read.
    fn image(&mut self, twin: Option<Span>) -> Option<Option<Span>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        match twin {
            Some(twin) => self.old_fields(twin),
            None => self.fields(),
        }
        .map(Some)
    }

    /// A map of attribute names to attribute values: an image, or the value of an `M`.
    fn fields(&mut self) -> Option<Span> {
        let base = self.open_fields.len();
        self.members(|p, name, at| {
            let name = Name::new(name);
            p.whitespace();
            let value_at = p.at;
            let value = p.attribute(Twin::Other)?;
            p.push_field(name, value, at, value_at);
            Some(())
        })?;
        self.close_object(base)
    }

    /// A map of an old image read against `twin`, the new image's map at the same place: each
    /// member becomes the `old` of the twin's field of its name, or, when the twin has none, a
    /// field of the returned object (see [`Tree`]).
    ///
    /// Members mostly come in the same order in both images and most are unchanged, so each is
    /// first compared as text with the twin's member that follows the last one matched.
    fn old_fields(&mut self, twin: Span) -> Option<Span> {
        let base = self.open_fields.len();
        // The twin's member, in wire order, this one is compared with first.
        let mut next = 0;
        self.expect(b'{')?;
        self.enter()?;
        if !self.eat(b'}') {
            loop {
                self.whitespace();
                if !self.same_member(twin, &mut next)? {
                    let at = self.at;
                    let name = Name::new(self.string()?);
                    self.expect(b':')?;
                    self.whitespace();
                    let value_at = self.at;
                    match self.tree.find(twin, &name) {
                        Some(i) => {
                            let field = &self.tree.fields[i];
                            let (raw, of) = (self.value_text(field), Twin::of(&field.value));
                            next = field.wire as usize + 1;
                            let value = self.old_attribute(Some((raw, of)))?;
                            self.set_old(i, value)?;
                        }
                        None => {
                            let value = self.attribute(Twin::Other)?;
                            self.push_field(name, value, at, value_at);
                        }
                    }
                }
                if self.eat(b'}') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        self.depth -= 1;
        self.close_object(base)
    }

    /// Whether the member here is, as text, the twin's member at wire position `next` (see
    /// [`Parser::skip_same`]); then it is skipped, and that field's old value is
    /// [`Json::Unchanged`]. `None`: a repeated name.
    fn same_member(&mut self, twin: Span, next: &mut usize) -> Option<bool> {
        if *next >= twin.len {
            return Some(false);
        }
        let index = self.tree.wire[twin.start + *next] as usize;
        let field = &self.tree.fields[index];
        let member = &self.bytes[field.at as usize..field.end as usize];
        if !self.skip_same(member) {
            return Some(false);
        }
        self.set_old(index, Json::Unchanged)?;
        *next += 1;
        Some(true)
    }

    /// Skips `read`, text already read and checked, if it comes next and ends there: followed
    /// by `,`, `}` or `]`, the same text is exactly the same JSON (a value, or an object member).
    fn skip_same(&mut self, read: &[u8]) -> bool {
        let end = self.at + read.len();
        let same = self.bytes[self.at..].starts_with(read)
            && matches!(
                self.bytes[end..]
                    .iter()
                    .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')),
                Some(b',' | b'}' | b']')
            );
        if same {
            self.at = end;
        }
        same
    }

    /// Gives the new image's field at `index` its old value; `None` if it has one already (the
    /// old map repeats a name, which the reference resolves).
    fn set_old(&mut self, index: usize, value: Json<'a>) -> Option<()> {
        let old = &mut self.tree.fields[index].old;
        if old.is_some() {
            return None;
        }
        *old = Some(value);
        Some(())
    }

    /// The wire text of a field's value.
    fn value_text(&self, field: &Field<'_>) -> &'a str {
        &self.text[field.value_at as usize..field.end as usize]
    }

    /// Adds a field to the object being read; its value ends where the parser is.
    #[inline]
    fn push_field(&mut self, name: Name<'a>, value: Json<'a>, at: usize, value_at: usize) {
        self.open_fields.push(self.tree.fields.len() as u32);
        self.tree.fields.push(Field {
            name,
            value,
            old: None,
            at: at as u32,
            value_at: value_at as u32,
            end: self.at as u32,
            wire: 0,
        });
    }

    /// Makes the fields from `base` on one object of the tree, and sorts it by name.
    fn close_object(&mut self, base: usize) -> Option<Span> {
        let Tree {
            fields,
            wire,
            sorted,
            ..
        } = &mut self.tree;
        let start = wire.len();
        wire.extend(self.open_fields.drain(base..));
        for (place, &i) in wire[start..].iter().enumerate() {
            fields[i as usize].wire = place as u32;
        }
        sorted.extend_from_slice(&wire[start..]);
        let sorted = &mut sorted[start..];
        let name = |i: u32| &fields[i as usize].name;
        if sorted.len() <= 32 {
            // Items have some tens of attributes per map, where an insertion sort does less
            // than the library's sorts, which are built for long slices: a fifth of their
            // instructions on the benchmark's order.
            for i in 1..sorted.len() {
                let x = sorted[i];
                let mut j = i;
                while j > 0 && name(sorted[j - 1]) > name(x) {
                    sorted[j] = sorted[j - 1];
                    j -= 1;
                }
                sorted[j] = x;
            }
        } else {
            sorted.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
        }
        // Repeated names are legal JSON but never sent by DynamoDB; the reference resolves them.
        if sorted.windows(2).any(|w| name(w[0]) == name(w[1])) {
            return None;
        }
        Some(Span {
            start,
            len: wire.len() - start,
        })
    }

    /// The items of an `L`, read against the items of `twin` when it is part of an old image.
    fn list(&mut self, twin: Option<Span>) -> Option<Span> {
        let base = self.open_items.len();
        let mut index = 0;
        self.elements(|p| {
            p.whitespace();
            let start = p.at;
            let value = match twin {
                Some(twin) => {
                    let items = p.tree.items(twin);
                    let twin = items.get(index).map(|i| (i.raw, Twin::of(&i.value)));
                    p.old_attribute(twin)?
                }
                None => p.attribute(Twin::Other)?,
            };
            index += 1;
            let raw = &p.text[start..p.at];
            p.open_items.push(Item { value, raw });
            Some(())
        })?;
        Some(self.close_array(base))
    }

    /// A value of an old image whose twin in the new image has the wire text `raw`.
    ///
    /// The same text here makes it [`Json::Unchanged`] ([`Parser::skip_same`]). Otherwise a map
    /// or list is read member by member against its twin's.
    fn old_attribute(&mut self, twin: Option<(&'a str, Twin)>) -> Option<Json<'a>> {
        let Some((raw, twin)) = twin else {
            return self.attribute(Twin::Other);
        };
        if self.skip_same(raw.as_bytes()) {
            return Some(Json::Unchanged);
        }
        self.attribute(twin)
    }

    /// Moves the items from `base` on to the tree as one array.
    fn close_array(&mut self, base: usize) -> Span {
        let start = self.tree.items.len();
        self.tree.items.extend(self.open_items.drain(base..));
        Span {
            start,
            len: self.tree.items.len() - start,
        }
    }

    /// One attribute value, `{"<type>": <value>}`, to its JSON form. In an old image, `twin` is
    /// the new image's value at the same place.
    fn attribute(&mut self, twin: Twin) -> Option<Json<'a>> {
        // Most values are strings and numbers, and DynamoDB sends no whitespace: their opening
        // is matched as one word instead of five tokens (some 30 instructions less per value).
        if let Some(&[b'{', b'"', tag @ (b'S' | b'N'), b'"', b':', b'"']) =
            self.bytes.get(self.at..self.at + 6)
        {
            self.enter()?;
            self.at += 5;
            let text = self.string()?;
            let value = match tag {
                b'S' => Json::String(text),
                _ => Json::Number(number_attribute(text)?),
            };
            self.expect(b'}')?;
            self.depth -= 1;
            return Some(value);
        }
        self.expect(b'{')?;
        self.enter()?;
        self.expect(b'"')?;
        // Type tags are read as bytes; an escaped one is left to the reference.
        let tag_start = self.at;
        while self.bytes.get(self.at)?.is_ascii_uppercase() {
            self.at += 1;
        }
        let tag = &self.bytes[tag_start..self.at];
        self.expect(b'"')?;
        self.expect(b':')?;
        let value = match tag {
            b"S" => Json::String(self.string()?),
            b"N" => Json::Number(number_attribute(self.string()?)?),
            b"B" => Json::String(binary(self.string()?)?),
            b"BOOL" => Json::Bool(self.boolean()?),
            b"NULL" => {
                self.boolean()?;
                Json::Null
            }
            b"M" => Json::Object(match twin {
                Twin::Object(span) => self.old_fields(span)?,
                _ => self.fields()?,
            }),
            b"L" => Json::Array(self.list(match twin {
                Twin::Array(span) => Some(span),
                _ => None,
            })?),
            // Set members are items whose raw text is their string, never an attribute value's:
            // no item of an old list matches one.
            b"SS" => {
                let base = self.open_items.len();
                self.elements(|p| {
                    p.whitespace();
                    let start = p.at;
                    let value = Json::String(p.string()?);
                    let raw = &p.text[start..p.at];
                    p.open_items.push(Item { value, raw });
                    Some(())
                })?;
                self.open_items[base..].sort_unstable_by(|a, b| {
                    set_text(&a.value)
                        .as_bytes()
                        .cmp(set_text(&b.value).as_bytes())
                });
                Json::Array(self.close_array(base))
            }
            b"NS" => {
                let base = self.open_items.len();
                self.elements(|p| {
                    p.whitespace();
                    let start = p.at;
                    let value = Json::Number(number_attribute(p.string()?)?);
                    let raw = &p.text[start..p.at];
                    p.open_items.push(Item { value, raw });
                    Some(())
                })?;
                self.open_items[base..].sort_unstable_by(|a, b| {
                    number::cmp_members(set_text(&a.value), set_text(&b.value))
                });
                Json::Array(self.close_array(base))
            }
            b"BS" => {
                let mut members = Vec::new();
                self.elements(|p| {
                    p.whitespace();
                    let start = p.at;
                    let member = p.string()?;
                    let raw = &p.text[start..p.at];
                    members.push((STANDARD.decode(member.as_bytes()).ok()?, member, raw));
                    Some(())
                })?;
                members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let base = self.open_items.len();
                self.open_items
                    .extend(members.into_iter().map(|(_, member, raw)| Item {
                        value: Json::String(member),
                        raw,
                    }));
                Json::Array(self.close_array(base))
            }
            _ => return None,
        };
        self.expect(b'}')?;
        self.depth -= 1;
        Some(value)
    }

    #[inline(always)]
    fn string(&mut self) -> Option<Text<'a>> {
        self.whitespace();
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at + 1;
        let end = find_special(self.bytes, start);
        match self.bytes.get(end)? {
            b'"' => {
                self.at = end + 1;
                Some(Text::Plain(&self.text[start..end]))
            }
            b'\\' => self.escaped_string(start - 1, end),
            _ => None, // a raw control character: not JSON
        }
    }

    /// A string with escape sequences, from its opening quote; `at` is its first backslash.
    fn escaped_string(&mut self, quote: usize, mut at: usize) -> Option<Text<'a>> {
        loop {
            match self.bytes.get(at)? {
                b'"' => break,
                // Steps over the escaped byte; the hex digits of `\u` are ordinary bytes.
                b'\\' => at = find_special(self.bytes, at + 2),
                _ => return None,
            }
        }
        // Rare, so serde_json decodes it, with its exact rules (surrogate pairs, bad escapes).
        let decoded: String = serde_json::from_str(&self.text[quote..=at]).ok()?;
        self.at = at + 1;
        Some(Text::Decoded(decoded))
    }

    /// A JSON number's text, checked.
    fn number(&mut self) -> Option<&'a str> {
        self.whitespace();
        let start = self.at;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
        }
        let text = &self.text[start..self.at];
        Decimal::parse(text).map(|_| text)
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            _ => self.literal(b"false").map(|()| false),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.whitespace();
        let found = self.bytes.get(self.at..self.at + word.len())? == word;
        self.at += word.len();
        found.then_some(())
    }

    /// Checks and skips any JSON value.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.members(|p, _, _| p.skip()),
            b'[' => self.elements(|p| p.skip()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }
}

/// Where the next `"`, `\` or control character is, from `at` (the string's end, an escape, or an
/// error), or `bytes.len()`. Eight bytes at a time, as it runs over every string of the record
/// (and of every GetRecords page, to locate the records).
pub(crate) fn find_special(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // The classic "has a zero byte" / "has a byte below n" bit tricks: exact for the lowest
        // matching byte, which is all that is used.
        let control = v.wrapping_sub(ONES * 0x20) & !v;
        let quote =
            (v ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(v ^ (ONES * u64::from(b'"')));
        let backslash =
            (v ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(v ^ (ONES * u64::from(b'\\')));
        let found = (control | quote | backslash) & HIGH;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return at;
        }
        at += 1;
    }
    at.min(bytes.len())
}

/// The text of a set member.
fn set_text<'t>(member: &'t Json<'_>) -> &'t str {
    match member {
        Json::String(t) => t,
        Json::Number(n) => n,
        _ => "",
    }
}

fn number_attribute(text: Text<'_>) -> Option<Cow<'_, str>> {
    match text {
        Text::Plain(s) => number::canonical(s),
        Text::Decoded(s) => number::canonical(&s).map(|c| Cow::Owned(c.into_owned())),
    }
}

fn binary(text: Text<'_>) -> Option<Text<'_>> {
    // Decoding is the one complete check of base64 (alphabet, padding, trailing bits); the bytes
    // are dropped, the event carries the text.
    STANDARD.decode(text.as_bytes()).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_first_special_byte() {
        for (s, want) in [
            ("", 0),
            ("abc", 3),
            ("abc\"", 3),
            ("abcdefghij\\k", 10),
            ("abcdefgh\u{1}", 8),
            ("é😀\u{7f}xxxxxxxxxxxxx\"", 20),
            ("\u{1f}", 0),
        ] {
            assert_eq!(find_special(s.as_bytes(), 0), want, "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn find_special_matches_a_plain_loop(s in any::<Vec<u8>>(), from in 0usize..4) {
            let want = s.iter().enumerate().skip(from)
                .find(|(_, b)| **b == b'"' || **b == b'\\' || **b < 0x20)
                .map_or(s.len(), |(i, _)| i);
            prop_assert_eq!(find_special(&s, from.min(s.len())), want);
        }

        #[test]
        fn head_is_the_zero_padded_prefix(b in prop::collection::vec(any::<u8>(), 0..24)) {
            let mut padded = [0u8; 16];
            let n = b.len().min(16);
            padded[..n].copy_from_slice(&b[..n]);
            prop_assert_eq!(head(&b), u128::from_be_bytes(padded));
        }

        /// The parser never takes text serde_json rejects: the reference would fail on it.
        #[test]
        fn takes_no_json_that_serde_json_rejects(s in r#"[\[\]{}",:0-9a-z\\ .eE+-]{0,24}"#) {
            let mut p = Parser {
                text: &s,
                bytes: s.as_bytes(),
                at: 0,
                depth: 0,
                open_fields: Vec::new(),
                open_items: Vec::new(),
                tree: Tree::default(),
            };
            if p.skip().is_some() && { p.whitespace(); p.at == s.len() } {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok(), "{:?}", s);
            }
        }
    }
}

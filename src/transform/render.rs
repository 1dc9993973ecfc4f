//! Attribute values written as their JSON form while they are read.
//!
//! Each value is checked and written once, straight into the output: strings and names are
//! copied from the record with their quotes, numbers checked and spelled as serde_json spells
//! them, binaries checked, sets sorted. A map whose members are all plain (`{"S":…}`,
//! `{"N":…}`) is read first and then written in name order; any other map is written in wire
//! order, then put in name order by copying its finished text once (not at all when it came
//! sorted). The image's own members are put in order only where the event copies them
//! ([`Image::write_object`]).
//! Nothing is built that the event does not contain: no tree, no value per attribute.
//!
//! The output is canonical JSON: the same value always gives the same bytes (members sorted by
//! name, sets sorted, one spelling per number, serde_json's escaping, no whitespace). So two
//! values are equal exactly when their texts are, which is what the diff (`diff`) relies on.

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::scan::value_end;
use crate::transform::number;
use crate::transform::wire::{Name, Parser, Text, head, plain_parts};

/// A member of a written map.
#[derive(Debug)]
pub(crate) struct Member<'a> {
    pub name: Name<'a>,
    /// In the record: the name's opening quote, the value's start and its end.
    pub at: u32,
    pub value_at: u32,
    pub end: u32,
    /// In the output: where `"name":value` starts, where its value starts, and the end.
    out_at: u32,
    out_value: u32,
    out_end: u32,
}

impl<'a> Member<'a> {
    /// A member read from `at` to `end` in the record, its value from `value_at`, and not
    /// written (yet).
    fn read(name: Name<'a>, at: usize, value_at: usize, end: usize) -> Member<'a> {
        Member {
            name,
            at: at as u32,
            value_at: value_at as u32,
            end: end as u32,
            out_at: 0,
            out_value: 0,
            out_end: 0,
        }
    }

    /// Where the member's text is in the record, `"name":value`.
    pub(crate) fn span(&self) -> (usize, usize) {
        (self.at as usize, self.end as usize)
    }

    /// The value's text in the record.
    pub(crate) fn wire_value<'t>(&self, record: &'t [u8]) -> &'t [u8] {
        &record[self.value_at as usize..self.end as usize]
    }

    /// The value's JSON in the output it was written to.
    pub(crate) fn json<'o>(&self, out: &'o [u8]) -> &'o [u8] {
        &out[self.out_value as usize..self.out_end as usize]
    }
}

/// An image, written: its members in wire order and, in `sorted`, their indices by name. Its
/// JSON holds the members in wire order: [`Image::write_object`] writes them in name order.
#[derive(Debug)]
pub(crate) struct Image<'a> {
    pub members: Vec<Member<'a>>,
    pub sorted: Vec<u32>,
}

impl<'a> Image<'a> {
    /// The members in name order.
    pub(crate) fn by_name(&self) -> impl Iterator<Item = (usize, &Member<'a>)> {
        self.sorted
            .iter()
            .map(|&i| (i as usize, &self.members[i as usize]))
    }

    /// The image as a JSON object, from `json`, the text it was written to: its members in
    /// name order. Only the event's copy of the item is put in order, not also the text it was
    /// written to, which saves two copies of the item.
    pub(crate) fn write_object(&self, json: &[u8], out: &mut impl bytes::BufMut) {
        out.put_u8(b'{');
        for (k, (_, member)) in self.by_name().enumerate() {
            if k > 0 {
                out.put_u8(b',');
            }
            out.put_slice(&json[member.out_at as usize..member.out_end as usize]);
        }
        out.put_u8(b'}');
    }

    /// The index of the member named `name`, for the few names the routes test: in an image
    /// of some dozens of members, comparing each one's key in turn costs less than the binary
    /// search's steps through the name order.
    pub(crate) fn scan(&self, name: &Name<'_>) -> Option<usize> {
        if self.members.len() > 64 {
            return self.find(name);
        }
        self.members
            .iter()
            .position(|member| member.name.key == name.key && member.name == *name)
    }

    /// The index of the member named `name`.
    pub(crate) fn find(&self, name: &Name<'_>) -> Option<usize> {
        let at = self
            .sorted
            .binary_search_by(|&i| self.members[i as usize].name.cmp(name))
            .ok()?;
        Some(self.sorted[at] as usize)
    }
}

/// Scratch space reused across the values of a record, and from record to record by a thread
/// ([`Renderer::recycle`]): the members of the maps being written (innermost last) and their
/// name order, the text of members being reordered, set members, and the vectors of images
/// given back.
#[derive(Debug, Default)]
pub(crate) struct Renderer<'a> {
    members: Vec<Member<'a>>,
    sorted: Vec<u32>,
    reorder: Vec<u8>,
    /// The members of the string set being written.
    strings: Vec<SetString<'a>>,
    numbers: Vec<Cow<'a, str>>,
    /// Every `L` written, so that the diff finds a changed list's items without reading the new
    /// list again.
    lists: Vec<WrittenList>,
    /// The items of the lists in `lists`, each list's a run of them.
    items: Vec<Span>,
    /// The items of the lists being written, innermost last.
    open_items: Vec<Span>,
    /// The vectors of images given back, emptied: they borrow no record, so they are kept as
    /// they are from record to record.
    spare: Vec<(Vec<Member<'static>>, Vec<u32>)>,
    orders: Orders,
}

/// Where a text is in the record: `start..end`, as `u32`s to keep the vectors of them small (a
/// record is far below 4 GB).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    fn new(range: Range<usize>) -> Span {
        Span {
            start: range.start as u32,
            end: range.end as u32,
        }
    }

    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A member of a string set, as read.
#[derive(Debug, Clone, Copy)]
struct SetString<'a> {
    /// Its first eight bytes as an integer: most members are told apart by these alone.
    head: u64,
    text: Text<'a>,
    /// Its text in the record, quotes included.
    wire: Span,
}

/// A list that was written.
#[derive(Debug, Clone, Copy)]
struct WrittenList {
    /// Where its attribute value (`{"L":[…]}`) starts in the record.
    at: u32,
    /// Its items: a run of [`Renderer::items`].
    first: u32,
    len: u32,
}

/// Vectors with more room than this are not kept from record to record, so that one large item
/// does not stay allocated.
pub(crate) const KEEP: usize = 64 << 10;

/// `v`'s allocation as an empty vector of `U`, a type of the same size and alignment (here:
/// the same type, borrowing from another record), or a new vector when `v` is larger than
/// [`KEEP`] bytes. The library collects such a map in place, in the allocation it consumes;
/// the closure never runs, as `v` is empty. This lets a thread keep vectors of values that
/// borrow the record without unsafe code (`recycling_keeps_the_allocation` holds it to that).
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    if v.capacity() * size_of::<T>() > KEEP {
        return Vec::new();
    }
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

impl<'a> Renderer<'a> {
    /// Emptied for the next record, which it does not borrow. Images written from it are given
    /// back first ([`Renderer::give_back`]), so that their vectors are kept too.
    pub(crate) fn recycle(self) -> Renderer<'static> {
        Renderer {
            members: recycle(self.members),
            sorted: recycle(self.sorted),
            reorder: recycle(self.reorder),
            strings: recycle(self.strings),
            numbers: recycle(self.numbers),
            lists: recycle(self.lists),
            items: recycle(self.items),
            open_items: recycle(self.open_items),
            spare: self.spare,
            orders: self.orders,
        }
    }

    /// Keeps `image`'s vectors for the next image.
    pub(crate) fn give_back(&mut self, image: Image<'a>) {
        self.spare
            .push((recycle(image.members), recycle(image.sorted)));
    }

    /// Empty vectors for an image, kept ones if there are.
    fn spare(&mut self) -> Image<'a> {
        let (members, sorted) = self.spare.pop().unwrap_or_default();
        Image {
            members: recycle(members),
            sorted,
        }
    }

    /// Where the items of the list whose attribute value starts at `at` in the record are in
    /// `items` ([`Renderer::list_item`]), if it was written.
    pub(crate) fn list_items(&self, at: usize) -> Option<Range<usize>> {
        let list = self.lists.iter().find(|list| list.at as usize == at)?;
        Some(list.first as usize..(list.first + list.len) as usize)
    }

    /// Where an item of [`Renderer::list_items`] is in the record: (start, end), as
    /// [`Parser::skip_run`] takes spans.
    pub(crate) fn list_item(&self, index: usize) -> (usize, usize) {
        let item = self.items[index];
        (item.start as usize, item.end as usize)
    }

    /// The members of the map at `q` (its `{`), in text already read and checked: names read,
    /// values stepped over. They have no JSON ([`Member::json`]).
    pub(crate) fn index(&mut self, q: &mut Parser<'a>) -> Option<Image<'a>> {
        let mut image = self.spare();
        q.expect(b'{')?;
        if !q.eat(b'}') {
            loop {
                q.whitespace();
                let at = q.at;
                let (name, value_at) = match q.plain_member() {
                    Some((name, _, _)) => (Name::new(Text::Plain(name)), at + name.len() + 3),
                    None => {
                        let name = Name::new(q.string()?);
                        q.expect(b':')?;
                        q.whitespace();
                        let value_at = q.at;
                        q.at = value_end(q.bytes, value_at);
                        (name, value_at)
                    }
                };
                image.members.push(Member::read(name, at, value_at, q.at));
                if !q.next_or(b'}')? {
                    break;
                }
            }
        }
        image.sorted.resize(image.members.len(), 0);
        self.orders.sort(&image.members, &mut image.sorted)?;
        Some(image)
    }

    /// An image (a map of attribute names to values) written to `out` as the members of a JSON
    /// object in wire order (see [`Image::write_object`]). `null` counts as no image, as it does
    /// for the reference.
    pub(crate) fn image(
        &mut self,
        p: &mut Parser<'a>,
        out: &mut Vec<u8>,
    ) -> Option<Option<Image<'a>>> {
        if p.null()? {
            return Some(None);
        }
        // An image is the outermost map, so the stacks end up holding its members and their
        // order alone: they become the image's vectors, and the stacks take spare ones.
        debug_assert!(self.members.is_empty() && self.sorted.is_empty());
        self.map(p, out, false)?;
        let mut image = self.spare();
        std::mem::swap(&mut image.members, &mut self.members);
        std::mem::swap(&mut image.sorted, &mut self.sorted);
        Some(Some(image))
    }

    /// The value of an `M`: leaves its members, and their name order, on the stacks. Its text is
    /// put in name order when `in_order`, else left in wire order.
    fn map(&mut self, p: &mut Parser<'a>, out: &mut Vec<u8>, in_order: bool) -> Option<()> {
        let base = self.members.len();
        p.expect(b'{')?;
        p.enter()?;
        out.push(b'{');
        let body = out.len();
        // A map put in name order is read without being written while its members are plain,
        // as the maps of items mostly are: if all of them are, they are then written straight
        // in name order, not in wire order and copied into name order. Its first other member
        // has the ones before it written in wire order.
        let mut deferred = in_order;
        if !p.eat(b'}') {
            loop {
                p.whitespace();
                let at = p.at;
                if deferred {
                    if let Some((name, _, _)) = p.plain_member() {
                        let value_at = at + name.len() + 3;
                        let name = Name::new(Text::Plain(name));
                        self.members.push(Member::read(name, at, value_at, p.at));
                        if !p.next_or(b'}')? {
                            break;
                        }
                        continue;
                    }
                    deferred = false;
                    let read = self.members.len() - base;
                    self.write_plain_members(p, out, base, 0..read)?;
                }
                let next = self.members.len() > base;
                let (name, value_at, out_at, out_value) = match p.plain_member() {
                    // `"name":` and a string copied as DynamoDB spells them, with the comma
                    // before them when it is right there: one copy.
                    Some((name, tag, value)) => {
                        let value_at = at + name.len() + 3;
                        let from = match next {
                            true if p.bytes[at - 1] == b',' => at - 1,
                            true => {
                                out.push(b',');
                                at
                            }
                            false => at,
                        };
                        copy(out, p.bytes, from..value_at);
                        let out_value = out.len();
                        write_plain(out, p, tag, value)?;
                        (
                            Text::Plain(name),
                            value_at,
                            out_value - (value_at - at),
                            out_value,
                        )
                    }
                    None => {
                        if next {
                            out.push(b',');
                        }
                        let out_at = out.len();
                        let name = p.string()?;
                        write_text(out, &name, &p.bytes[at..p.at]);
                        p.expect(b':')?;
                        out.push(b':');
                        let out_value = out.len();
                        p.whitespace();
                        let value_at = p.at;
                        self.attribute(p, out)?;
                        (name, value_at, out_at, out_value)
                    }
                };
                self.members.push(Member {
                    name: Name::new(name),
                    at: at as u32,
                    value_at: value_at as u32,
                    end: p.at as u32,
                    out_at: out_at as u32,
                    out_value: out_value as u32,
                    out_end: out.len() as u32,
                });
                if !p.next_or(b'}')? {
                    break;
                }
            }
        }
        p.leave();
        if deferred {
            let first = self.sorted.len();
            self.sorted.resize(first + self.members.len() - base, 0);
            self.orders
                .sort(&self.members[base..], &mut self.sorted[first..])?;
            let sorted = std::mem::take(&mut self.sorted);
            let order = sorted[first..].iter().map(|&i| i as usize);
            let written = self.write_plain_members(p, out, base, order);
            self.sorted = sorted;
            written?;
        } else {
            self.sort_members(base, body, out, in_order)?;
        }
        out.push(b'}');
        Some(())
    }

    /// Writes the plain members from `base` on, read but not written yet, in the order of
    /// `order` (indices from `base`), each after a comma but the first.
    fn write_plain_members(
        &mut self,
        p: &Parser<'a>,
        out: &mut Vec<u8>,
        base: usize,
        order: impl Iterator<Item = usize>,
    ) -> Option<()> {
        for (k, i) in order.enumerate() {
            if k > 0 {
                out.push(b',');
            }
            let member = &mut self.members[base + i];
            let (at, value_at, end) = (
                member.at as usize,
                member.value_at as usize,
                member.end as usize,
            );
            member.out_at = out.len() as u32;
            copy(out, p.bytes, at..value_at);
            member.out_value = out.len() as u32;
            let (tag, text) = plain_parts(p.bytes, value_at..end);
            write_plain(out, p, tag, text)?;
            member.out_end = out.len() as u32;
        }
        Some(())
    }

    /// Puts the members from `base` on, written from `body` on in wire order, in name order:
    /// their order goes on `sorted`, and with `in_order` their text is copied in that order when
    /// it differs.
    fn sort_members(
        &mut self,
        base: usize,
        body: usize,
        out: &mut Vec<u8>,
        in_order: bool,
    ) -> Option<()> {
        let members = &mut self.members[base..];
        let start = self.sorted.len();
        self.sorted.resize(start + members.len(), 0);
        let sorted = &mut self.sorted[start..];
        if !self.orders.sort(members, sorted)? || !in_order {
            return Some(());
        }
        self.reorder.clear();
        for (k, &i) in sorted.iter().enumerate() {
            if k > 0 {
                self.reorder.push(b',');
            }
            let member = &mut members[i as usize];
            let text = member.out_at as usize..member.out_end as usize;
            let at = (body + self.reorder.len()) as u32;
            member.out_value = at + (member.out_value - member.out_at);
            member.out_end = at + (member.out_end - member.out_at);
            member.out_at = at;
            self.reorder.extend_from_slice(&out[text]);
        }
        out.truncate(body);
        out.extend_from_slice(&self.reorder);
        Some(())
    }

    /// One attribute value, `{"<type>": <value>}`, written to `out` as its JSON form.
    pub(crate) fn attribute(&mut self, p: &mut Parser<'a>, out: &mut Vec<u8>) -> Option<()> {
        let at = p.at;
        if let Some((tag, value)) = p.plain_value() {
            return write_plain(out, p, tag, value);
        }
        p.expect(b'{')?;
        p.enter()?;
        p.expect(b'"')?;
        // Type tags are read as bytes (an escaped one is left to the reference): one, two or
        // four of them, so the closing quote is looked for at those places, not byte by byte.
        let tag_start = p.at;
        let head = p.bytes.get(tag_start..tag_start + 5)?;
        let len = match head {
            [_, b'"', ..] => 1,
            [_, _, b'"', ..] => 2,
            [_, _, _, _, b'"'] => 4,
            _ => return None,
        };
        let tag = &head[..len];
        p.at = tag_start + len + 1;
        p.expect(b':')?;
        match tag {
            b"S" => self.string(p, out)?,
            b"N" => write_number(out, p.str()?)?,
            b"B" => {
                p.whitespace();
                let at = p.at;
                let text = p.string()?;
                // Decoding is the one complete check of base64 (alphabet, padding, trailing
                // bits); the bytes are dropped, the event carries the text.
                STANDARD.decode(text.as_bytes()).ok()?;
                write_text(out, &text, &p.bytes[at..p.at]);
            }
            b"BOOL" => match p.boolean()? {
                // Each branch copies a text of a length it knows: no call of `memcpy`.
                true => out.extend_from_slice(b"true"),
                false => out.extend_from_slice(b"false"),
            },
            b"NULL" => {
                p.boolean()?;
                out.extend_from_slice(b"null");
            }
            b"M" => {
                let (base, sorted) = (self.members.len(), self.sorted.len());
                self.map(p, out, true)?;
                self.members.truncate(base);
                self.sorted.truncate(sorted);
            }
            b"L" => {
                out.push(b'[');
                let open = self.open_items.len();
                p.elements(|p| {
                    if self.open_items.len() > open {
                        out.push(b',');
                    }
                    p.whitespace();
                    let start = p.at;
                    self.attribute(p, out)?;
                    self.open_items.push(Span::new(start..p.at));
                    Some(())
                })?;
                out.push(b']');
                let first = self.items.len() as u32;
                self.items.extend(self.open_items.drain(open..));
                let len = self.items.len() as u32 - first;
                self.lists.push(WrittenList {
                    at: at as u32,
                    first,
                    len,
                });
            }
            b"SS" => self.string_set(p, out)?,
            b"NS" => {
                self.numbers.clear();
                p.elements(|p| {
                    self.numbers.push(number::canonical(p.str()?)?);
                    Some(())
                })?;
                self.numbers
                    .sort_unstable_by(|a, b| number::cmp_members(a, b));
                write_array(out, &self.numbers, |out, n| {
                    out.extend_from_slice(n.as_bytes())
                });
            }
            b"BS" => {
                let mut members = Vec::new();
                p.elements(|p| {
                    p.whitespace();
                    let at = p.at;
                    let member = p.string()?;
                    let bytes = STANDARD.decode(member.as_bytes()).ok()?;
                    members.push((bytes, member, at..p.at));
                    Some(())
                })?;
                members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                write_array(out, &members, |out, (_, text, wire)| {
                    write_text(out, text, &p.bytes[wire.clone()])
                });
            }
            _ => return None,
        }
        p.expect(b'}')?;
        p.leave();
        Some(())
    }

    /// The value of an `SS`: its members in byte order (code point order), compared by their
    /// first eight bytes as an integer unless those are the same, and each copied as it came
    /// with its quotes unless it had escapes. Sorting and writing the texts as strings took
    /// two thirds of a set's cost.
    fn string_set(&mut self, p: &mut Parser<'a>, out: &mut Vec<u8>) -> Option<()> {
        let set = &mut self.strings;
        set.clear();
        p.elements(|p| {
            p.whitespace();
            let at = p.at;
            let text = p.string()?;
            set.push(SetString {
                head: head(text.as_bytes()).0,
                text,
                wire: Span::new(at..p.at),
            });
            Some(())
        })?;
        set.sort_unstable_by(|a, b| {
            a.head
                .cmp(&b.head)
                .then_with(|| a.text.as_bytes().cmp(b.text.as_bytes()))
        });
        write_array(out, set, |out, s| {
            write_text(out, &s.text, &p.bytes[s.wire.range()])
        });
        Some(())
    }

    /// A string value: copied from the record with its quotes when it has no escapes.
    #[inline(always)]
    fn string(&mut self, p: &mut Parser<'a>, out: &mut Vec<u8>) -> Option<()> {
        p.whitespace();
        let at = p.at;
        let text = p.string()?;
        write_text(out, &text, &p.bytes[at..p.at]);
        Some(())
    }
}

/// The name order of the last map of each number of members (up to [`KEYED`]), with whether
/// it moved members, kept by a thread from record to record.
#[derive(Debug, Default)]
struct Orders(Vec<(Vec<u32>, bool)>);

impl Orders {
    /// [`sort_by_name`], first trying the order of the last map of as many members: a table's
    /// items mostly have the same attributes in the same order, and a list's maps too. That an
    /// order holds is checked by one comparison of names per member (the names in that order
    /// ascend strictly, so it is the one order, and no name repeats); sorting takes several.
    fn sort(&mut self, members: &[Member<'_>], sorted: &mut [u32]) -> Option<bool> {
        let n = members.len();
        if n > KEYED {
            return sort_by_name(members, sorted);
        }
        if self.0.len() <= n {
            self.0.resize_with(n + 1, Default::default);
        }
        let (last, moved) = &mut self.0[n];
        let name = |i: u32| &members[i as usize].name;
        // Names mostly differ in their first eight bytes: compared by those alone first.
        let ascend = |w: &[u32]| {
            let (a, b) = (name(w[0]), name(w[1]));
            a.key.0 < b.key.0 || (a.key.0 == b.key.0 && a < b)
        };
        if last.len() == n && last.windows(2).all(ascend) {
            sorted.copy_from_slice(last);
            return Some(*moved);
        }
        *moved = sort_by_name(members, sorted)?;
        last.clear();
        last.extend_from_slice(sorted);
        Some(*moved)
    }
}

/// Writes into `sorted` the indices of `members` in the order of their names; whether that
/// order differs from theirs. `None`: a name is repeated, which is legal JSON but never sent by
/// DynamoDB; the reference resolves it.
fn sort_by_name(members: &[Member<'_>], sorted: &mut [u32]) -> Option<bool> {
    let name = |i: u32| &members[i as usize].name;
    let n = members.len();
    if n > KEYED {
        for (k, i) in sorted.iter_mut().enumerate() {
            *i = k as u32;
        }
        sorted.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
        if sorted.windows(2).any(|w| name(w[0]) == name(w[1])) {
            return None;
        }
        return Some(sorted.iter().enumerate().any(|(k, &i)| k != i as usize));
    }
    // A member's name's first seven bytes and its index, in one integer: sorting those is
    // sorting plain integers, which the library does without a call per comparison. The names a
    // prefix does not tell apart stand next to each other afterwards and are put in order by
    // their whole text. An insertion sort of (name key, index) pairs cost far more.
    let mut keys = [0u64; KEYED];
    let keys = &mut keys[..n];
    for (k, (key, member)) in keys.iter_mut().zip(members).enumerate() {
        *key = member.name.key.0 & !0xff | k as u64;
    }
    keys.sort_unstable();
    let index = |key: u64| u32::from(key as u8);
    let mut run = 0;
    for k in 1..n + 1 {
        if k < n && keys[k] >> 8 == keys[run] >> 8 {
            continue;
        }
        if k - run > 1 {
            let names = &mut keys[run..k];
            names.sort_unstable_by(|&a, &b| name(index(a)).cmp(name(index(b))));
            if names
                .windows(2)
                .any(|w| name(index(w[0])) == name(index(w[1])))
            {
                return None;
            }
        }
        run = k;
    }
    let mut moved = false;
    for (k, (i, &key)) in sorted.iter_mut().zip(keys.iter()).enumerate() {
        *i = index(key);
        moved |= *i != k as u32;
    }
    Some(moved)
}

/// Maps with up to this many members are sorted by integer keys (`sort_by_name`), which hold a
/// member's index in their lowest byte; items have some tens of attributes per map.
const KEYED: usize = 64;

/// `text` as a JSON string; `wire` is its text in the record, quotes included, which is that
/// when it had no escapes (the reader rejects raw control characters).
#[inline(always)]
fn write_text(out: &mut Vec<u8>, text: &Text<'_>, wire: &[u8]) {
    match text {
        Text::Plain(_) => out.extend_from_slice(wire),
        Text::Decoded(s) => write_string(out, s),
    }
}

/// A plain `S` or `N` value ([`Parser::plain_value`]) whose text is at `value`: a string copied
/// with its quotes, a number as it came when it is a plain decimal.
#[inline(always)]
fn write_plain(out: &mut Vec<u8>, p: &Parser<'_>, tag: u8, value: Range<usize>) -> Option<()> {
    match tag {
        b'S' => copy(out, p.bytes, value.start - 1..value.end + 1),
        _ if number::is_plain_decimal(&p.bytes[value.clone()]) => {
            copy(out, p.bytes, value);
        }
        _ => write_number(out, p.text.get(value)?)?,
    }
    Some(())
}

/// Appends `bytes[range]` to `out`. A text of up to 32 bytes (most names and values) is copied
/// as 32 bytes, a length the compiler copies in two vector moves, and cut back: a `memcpy` call
/// for a length it does not know costs more than the copy itself (docs/performance.md).
#[inline(always)]
fn copy(out: &mut Vec<u8>, bytes: &[u8], range: Range<usize>) {
    let len = range.len();
    match bytes.get(range.start..range.start + 32) {
        Some(block) if len <= 32 => {
            let at = out.len();
            let block: &[u8; 32] = block.try_into().expect("32 bytes");
            out.extend_from_slice(block);
            out.truncate(at + len);
        }
        _ => out.extend_from_slice(&bytes[range]),
    }
}

/// An `N`'s text in serde_json's spelling; `None` if it is not a JSON number.
fn write_number(out: &mut Vec<u8>, text: &str) -> Option<()> {
    out.extend_from_slice(number::canonical(text)?.as_bytes());
    Some(())
}

fn write_array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape(out, s.as_bytes(), false);
    out.push(b'"');
}

/// Escapes `bytes` (UTF-8) for the inside of a JSON string exactly as serde_json does; with
/// `pointer`, first as a JSON Pointer reference token (`~` → `~0`, `/` → `~1`, RFC 6901).
pub(crate) fn escape(out: &mut Vec<u8>, bytes: &[u8], pointer: bool) {
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

    fn member(name: &str) -> Member<'_> {
        Member::read(Name::new(Text::Plain(name.as_bytes())), 0, 0, 0)
    }

    #[test]
    fn copies_texts_of_any_length_anywhere() {
        let bytes: Vec<u8> = (0..100).collect();
        for range in [0..0, 3..10, 0..32, 60..92, 68..100, 90..100, 5..38, 0..100] {
            let mut out = b"head".to_vec();
            copy(&mut out, &bytes, range.clone());
            assert_eq!(out[..4], *b"head");
            assert_eq!(out[4..], bytes[range.clone()], "{range:?}");
        }
    }

    #[test]
    fn recycling_keeps_the_allocation() {
        let text = String::from("name");
        let mut members = vec![member(&text)];
        members.reserve(100);
        let (at, capacity) = (members.as_ptr() as usize, members.capacity());
        let kept: Vec<Member<'static>> = recycle(members);
        assert_eq!((kept.as_ptr() as usize, kept.capacity()), (at, capacity));
        assert!(kept.is_empty());
        let large: Vec<u8> = Vec::with_capacity(KEEP + 1);
        assert_eq!(
            recycle::<u8, u8>(large).capacity(),
            0,
            "larger than KEEP: not kept"
        );
    }

    proptest! {
        /// Byte order, by the integer keys (up to `KEYED` members) and without them; names that
        /// share their first seven bytes or more, and repeated names, are common here.
        #[test]
        fn sort_by_name_is_byte_order(
            names in prop::collection::vec("(shippin|payment_)?[a-c~é]{0,10}", 0..90),
        ) {
            let members: Vec<Member<'_>> = names.iter().map(|n| member(n)).collect();
            let mut sorted = vec![0; names.len()];
            let mut want = names.clone();
            want.sort();
            let repeated = want.windows(2).any(|w| w[0] == w[1]);
            match sort_by_name(&members, &mut sorted) {
                None => prop_assert!(repeated),
                Some(moved) => {
                    prop_assert!(!repeated);
                    let got: Vec<&String> = sorted.iter().map(|&i| &names[i as usize]).collect();
                    prop_assert_eq!(got, want.iter().collect::<Vec<_>>());
                    let identity = sorted.iter().enumerate().all(|(k, &i)| k == i as usize);
                    prop_assert_eq!(moved, !identity);
                }
            }
        }

        /// The order of an earlier map is taken only where it is this map's: maps repeat one
        /// list of names (taken from the last map) or bring their own, of few letters and
        /// lengths so that counts and orders meet.
        #[test]
        fn orders_sort_as_sort_by_name(
            first in prop::collection::vec("[a-c]{0,2}", 0..6),
            maps in prop::collection::vec(
                (any::<bool>(), prop::collection::vec("[a-c]{0,2}", 0..6)),
                1..16,
            ),
        ) {
            let mut orders = Orders::default();
            let mut names = first;
            for (repeat, own) in maps {
                if !repeat {
                    names = own;
                }
                let members: Vec<Member<'_>> = names.iter().map(|n| member(n)).collect();
                let (mut got, mut want) = (vec![0; names.len()], vec![0; names.len()]);
                let result = orders.sort(&members, &mut got);
                prop_assert_eq!(result, sort_by_name(&members, &mut want));
                if result.is_some() {
                    prop_assert_eq!(got, want);
                }
            }
        }

        #[test]
        fn escape_matches_serde_json(s in any::<String>()) {
            prop_assert_eq!(format!("\"{}\"", escaped(&s, false)), serde_json::to_string(&s).unwrap());
        }

        /// RFC 6901's escapes, then JSON's; runs of `~`, `/` and quotes are common here.
        #[test]
        fn pointer_escape_is_rfc_6901_then_json(s in "([~/\"\\\\\n\u{1}a-zé]{0,3}[a-z0-9_]{0,12}){0,4}") {
            let token = s.replace('~', "~0").replace('/', "~1");
            prop_assert_eq!(format!("\"{}\"", escaped(&s, true)), serde_json::to_string(&token).unwrap());
        }
    }
}

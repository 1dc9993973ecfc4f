//! The patch: JSON Patch operations from the old image to the new one, in `json_patch::diff`'s
//! order, written as they are found.
//!
//! The old image is read against the new one, which is already read and written ([`Image`]):
//! DynamoDB sends both images' attributes in the same order, so the old text is compared as one
//! run of bytes with the new members from the one after the last matched, and every member it
//! covers whole is skipped (`Parser::skip_run`). A changed map or list is walked the same way, its
//! members or items compared as text with the new value's, so a list of maps where one item
//! changed costs little more than comparing its bytes. Any other changed value is written as JSON
//! (which checks it) and diffed with the new value's JSON: both are canonical (`render`), so
//! values are equal exactly when their texts are. Old members the new image lacks are checked
//! and removed.
//!
//! Members are found in wire order, and the patch lists them in name order (as the reference's
//! sorted maps do): each map's operations are put in that order once the map has been read.

use std::borrow::Cow;

use bumpalo::Bump;

use crate::scan::{string_end, value_end};
use crate::transform::number;
use crate::transform::render::{Image, Member, Renderer, escape, recycle};
use crate::transform::wire::{Name, Parser, Text, equal};

/// The operations written so far, each as `,{"op":…}` (so the array's text is all but the first
/// byte), and the JSON Pointer of the value being diffed, escaped for a JSON string. A thread
/// keeps one from record to record ([`Patch::recycle`]).
#[derive(Debug, Default)]
pub(crate) struct Patch {
    ops: Vec<u8>,
    path: Vec<u8>,
    /// Values written as JSON to be compared.
    values: Vec<u8>,
    /// What the old maps being read hold for their new members, innermost last.
    olds: Vec<Old>,
    /// A map's operations put in name order.
    ordered: Vec<u8>,
    /// What the old image holds for each top-level member of the new one, kept once the patch
    /// is written: the routes read the old image through it ([`Patch::old_value_at`]).
    top: Vec<Old>,
    /// The old image's top-level members the new one lacks: where each one's name and value
    /// start in the record.
    top_gone: Vec<(u32, u32)>,
}

/// What the old image holds for a top-level member of the new one ([`Patch::old_value`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OldValue {
    Missing,
    /// The same text as the new one.
    Same,
    /// Another value, which starts here in the record.
    At(usize),
}

/// What the old map holds for a member of the new one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Old {
    /// No member of that name.
    Missing,
    /// The same text.
    Same,
    /// Another value, which starts at `old_at` in the record: the operations at `ops` turn it
    /// into the new one.
    Changed { ops: (u32, u32), old_at: u32 },
}

impl Patch {
    /// Emptied for the next record, with room for the operations of a record of `bytes` bytes
    /// (an INSERT's patch repeats the item).
    pub(crate) fn recycle(self, bytes: usize) -> Patch {
        let mut ops = recycle(self.ops);
        ops.reserve(bytes);
        Patch {
            ops,
            path: recycle(self.path),
            values: recycle(self.values),
            olds: recycle(self.olds),
            ordered: recycle(self.ordered),
            top: recycle(self.top),
            top_gone: recycle(self.top_gone),
        }
    }

    /// The operations as the inside of a JSON array.
    pub(crate) fn ops(&self) -> &[u8] {
        self.ops.get(1..).unwrap_or_default()
    }

    /// Every member of `new` (written in `json`) added: the patch from no image.
    pub(crate) fn add_all(&mut self, new: &Image<'_>, json: &[u8]) {
        for (_, member) in new.by_name() {
            let path = self.push_text(&member.name.text);
            op(&mut self.ops, &self.path, Op::Add, Some(member.json(json)));
            self.path.truncate(path);
        }
    }

    /// Every member of `old` removed: the patch to no image.
    pub(crate) fn remove_all(&mut self, old: &Image<'_>) {
        for (_, member) in old.by_name() {
            let path = self.push_text(&member.name.text);
            op(&mut self.ops, &self.path, Op::Remove, None);
            self.path.truncate(path);
        }
    }

    /// The old image at `p` read against `new` (written in `json`). `None`: the old image is
    /// not one the fast path takes (malformed, or it repeats a name).
    pub(crate) fn old_against_new<'a>(
        &mut self,
        p: &mut Parser<'a>,
        r: &mut Renderer<'a>,
        new: &Image<'a>,
        json: &[u8],
    ) -> Option<()> {
        self.map(p, r, new, Some(json))
    }

    /// The old map at `p` against the new map `new`, whose members' JSON is in `json` when it
    /// has been written (the image), else written from their wire text when added.
    fn map<'a>(
        &mut self,
        p: &mut Parser<'a>,
        r: &mut Renderer<'a>,
        new: &Image<'a>,
        json: Option<&[u8]>,
    ) -> Option<()> {
        let record = p.bytes;
        let base = self.ops.len();
        let olds = self.olds.len();
        self.olds.resize(olds + new.members.len(), Old::Missing);
        // With where each one's name and value start.
        let mut gone: Vec<(Name<'a>, u32, u32)> = Vec::new();
        // The new member, in wire order, the next old member is compared with first.
        let mut next = 0;
        p.expect(b'{')?;
        p.enter()?;
        if !p.eat(b'}') {
            loop {
                p.whitespace();
                let spans = new.members[next..].iter().map(Member::span);
                let same = p.skip_run(spans);
                if same > 0 {
                    for old in &mut self.olds[olds + next..olds + next + same] {
                        if *old != Old::Missing {
                            return None;
                        }
                        *old = Old::Same;
                    }
                    next += same;
                } else {
                    let name_at = p.at as u32;
                    let name = Name::new(p.string()?);
                    p.expect(b':')?;
                    p.whitespace();
                    // A changed value mostly keeps its place: its name is checked there first.
                    let at = match new.members.get(next) {
                        Some(member) if member.name == name => Some(next),
                        _ => new.find(&name),
                    };
                    match at {
                        // The old map repeats a name, which the reference resolves.
                        Some(i) if self.olds[olds + i] != Old::Missing => return None,
                        Some(i) => {
                            next = i + 1;
                            let member = &new.members[i];
                            let old_at = p.at as u32;
                            self.olds[olds + i] = if p.skip_same(member.wire_value(record)) {
                                Old::Same
                            } else {
                                let start = self.ops.len() as u32;
                                let path = self.push_text(&name.text);
                                let json = json.map(|json| member.json(json));
                                self.value(p, r, member.value_at as usize, json)?;
                                self.path.truncate(path);
                                Old::Changed {
                                    ops: (start, self.ops.len() as u32),
                                    old_at,
                                }
                            };
                        }
                        None => {
                            let value_at = p.at as u32;
                            self.check(p, r)?;
                            gone.push((name, name_at, value_at));
                        }
                    }
                }
                if !p.next_or(b'}')? {
                    break;
                }
            }
        }
        p.leave();
        gone.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if gone.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let mut ordered = std::mem::take(&mut self.ordered);
        ordered.clear();
        for (i, member) in new.by_name() {
            match self.olds[olds + i] {
                Old::Same => {}
                Old::Changed {
                    ops: (start, end), ..
                } => {
                    ordered.extend_from_slice(&self.ops[start as usize..end as usize]);
                }
                Old::Missing => {
                    let path = self.push_text(&member.name.text);
                    match json {
                        Some(json) => {
                            op(&mut ordered, &self.path, Op::Add, Some(member.json(json)))
                        }
                        None => {
                            let mut q = p.fork(member.value_at as usize);
                            add_from_wire(&mut ordered, &self.path, &mut self.values, r, &mut q)?;
                        }
                    }
                    self.path.truncate(path);
                }
            }
        }
        for (name, ..) in &gone {
            let path = self.push_text(&name.text);
            op(&mut ordered, &self.path, Op::Remove, None);
            self.path.truncate(path);
        }
        self.ops.truncate(base);
        self.ops.extend_from_slice(&ordered);
        self.ordered = ordered;
        if olds == 0 {
            // The image's own map: kept for the routes, and the stack left empty.
            std::mem::swap(&mut self.top, &mut self.olds);
            self.olds.clear();
            self.top_gone.clear();
            self.top_gone.extend(
                gone.iter()
                    .map(|&(_, name_at, value_at)| (name_at, value_at)),
            );
        } else {
            self.olds.truncate(olds);
        }
        Some(())
    }

    /// What the old image holds for the new image's top-level member `i`, after
    /// [`Patch::old_against_new`] read the one against the other.
    pub(crate) fn old_value(&self, i: usize) -> OldValue {
        match self.top[i] {
            Old::Missing => OldValue::Missing,
            Old::Same => OldValue::Same,
            Old::Changed { old_at, .. } => OldValue::At(old_at as usize),
        }
    }

    /// Where the value of the old image's top-level attribute `name`, which the new image
    /// lacks, starts in the record; `None` when the old image lacks it too.
    pub(crate) fn gone_value_at(&self, name: &Name<'_>, raw: &str, arena: &Bump) -> Option<usize> {
        self.top_gone.iter().find_map(|&(name_at, value_at)| {
            let mut p = Parser::new(raw, arena, name_at as usize, 2);
            (Name::new(p.string()?) == *name).then_some(value_at as usize)
        })
    }

    /// The old list at `p` against the new list whose `[` is at `new_at` in the same text.
    fn list<'a>(
        &mut self,
        p: &mut Parser<'a>,
        r: &mut Renderer<'a>,
        items: std::ops::Range<usize>,
    ) -> Option<()> {
        let count = items.len();
        let mut i = 0;
        // An element here is a run of items the same as the new list's, or one other item.
        p.elements(|p| {
            p.whitespace();
            let same = p.skip_run((items.start + i..items.end).map(|k| r.list_item(k)));
            if same > 0 {
                i += same;
                return Some(());
            }
            if i < count {
                let (start, _) = r.list_item(items.start + i);
                let path = self.push_index(i);
                self.value(p, r, start, None)?;
                self.path.truncate(path);
            } else {
                self.check(p, r)?;
            }
            i += 1;
            Some(())
        })?;
        let path = self.push_index(count.min(i));
        for _ in count..i {
            op(&mut self.ops, &self.path, Op::Remove, None);
        }
        self.path.truncate(path);
        for k in i..count {
            let (start, _) = r.list_item(items.start + k);
            let path = self.push_index(k);
            let mut q = p.fork(start);
            add_from_wire(&mut self.ops, &self.path, &mut self.values, r, &mut q)?;
            self.path.truncate(path);
        }
        Some(())
    }

    /// The old attribute value at `p` against the new one at `new_at` (its JSON is `json`, if
    /// written), which differ as text.
    fn value<'a>(
        &mut self,
        p: &mut Parser<'a>,
        r: &mut Renderer<'a>,
        new_at: usize,
        json: Option<&[u8]>,
    ) -> Option<()> {
        let record = p.bytes;
        // A plain old value (`{"S":…}`, `{"N":…}` as DynamoDB spells them) is its own JSON, or
        // its digits are: compared with the new value's JSON as it is, and replaced by it if
        // they differ. Most changes of an item are such (a status, a time, a version), and
        // writing the old value out first took a tenth of what they cost.
        // The new value's JSON is taken the same way when it was not written (inside a map
        // that was read again for the diff).
        let new_json = json.or_else(|| plain_json(&mut p.fork(new_at)));
        if let Some(new_json) = new_json
            && let Some(old) = plain_json(p)
        {
            if !equal(old, new_json) {
                self.op(Op::Replace, Some(new_json));
            }
            return Some(());
        }
        let new_tag = tag(record, new_at);
        // A list of the new image was written, so its items are known.
        let new_items = (new_tag == Some(b'L'))
            .then(|| r.list_items(new_at))
            .flatten();
        match (tag(record, p.at), new_tag, new_items) {
            (Some(b'M'), Some(b'M'), _) => {
                let mut q = p.fork(new_at + 5);
                let new = r.index(&mut q)?;
                p.at += 5;
                p.enter()?;
                self.map(p, r, &new, None)?;
                r.give_back(new);
            }
            (Some(b'L'), _, Some(items)) => {
                p.at += 5;
                p.enter()?;
                self.list(p, r, items)?;
            }
            _ => {
                let mut values = self.write_value(r, p)?;
                match json {
                    // The new value's JSON is compared where it is, not copied.
                    Some(json) => self.json(&values, json),
                    None => {
                        let old_end = values.len();
                        r.attribute(&mut p.fork(new_at), &mut values)?;
                        self.json(&values[..old_end], &values[old_end..]);
                    }
                }
                self.values = values;
                return Some(());
            }
        }
        p.expect(b'}')?;
        p.leave();
        Some(())
    }

    /// Checks the old attribute value at `p`, which the patch needs no more of.
    fn check<'a>(&mut self, p: &mut Parser<'a>, r: &mut Renderer<'a>) -> Option<()> {
        self.values = self.write_value(r, p)?;
        Some(())
    }

    /// The attribute value at `p` written as JSON into the scratch buffer, which is taken out
    /// for the caller to use and give back (`self.values`).
    fn write_value<'a>(&mut self, r: &mut Renderer<'a>, p: &mut Parser<'a>) -> Option<Vec<u8>> {
        let mut values = std::mem::take(&mut self.values);
        values.clear();
        r.attribute(p, &mut values)?;
        Some(values)
    }

    /// As `json_patch::diff` on the values of two canonical JSON texts: objects and arrays are
    /// walked, other values replaced when they differ.
    fn json(&mut self, old: &[u8], new: &[u8]) {
        if equal(old, new) {
            return;
        }
        match (old[0], new[0]) {
            (b'{', b'{') => self.object(old, new),
            (b'[', b'[') => self.array(old, new),
            _ => self.op(Op::Replace, Some(new)),
        }
    }

    /// New members in order (walked or added), then the old members that are gone (removed).
    /// Both objects are sorted by name, so one merge walk pairs them.
    fn object(&mut self, old: &[u8], new: &[u8]) {
        let (old, new) = (members(old), members(new));
        let mut gone = Vec::new();
        let mut o = 0;
        for (name, value) in &new {
            while o < old.len() && old[o].0 < *name {
                gone.push(o);
                o += 1;
            }
            let path = self.push_name(name);
            if o < old.len() && old[o].0 == *name {
                self.json(old[o].1, value);
                o += 1;
            } else {
                self.op(Op::Add, Some(value));
            }
            self.path.truncate(path);
        }
        gone.extend(o..old.len());
        for o in gone {
            let path = self.push_name(&old[o].0);
            self.op(Op::Remove, None);
            self.path.truncate(path);
        }
    }

    /// Index by index; a longer new array adds at its tail, a shorter one removes the old tail,
    /// each removal at the same index. Walked in step, without listing the items first.
    fn array(&mut self, old: &[u8], new: &[u8]) {
        let (mut o, mut n, mut i) = (1, 1, 0);
        while old[o] != b']' && new[n] != b']' {
            let (old_end, new_end) = (value_end(old, o), value_end(new, n));
            let path = self.push_index(i);
            self.json(&old[o..old_end], &new[n..new_end]);
            self.path.truncate(path);
            (o, n, i) = (after(old, old_end), after(new, new_end), i + 1);
        }
        let path = self.push_index(i);
        while old[o] != b']' {
            self.op(Op::Remove, None);
            o = after(old, value_end(old, o));
        }
        self.path.truncate(path);
        while new[n] != b']' {
            let end = value_end(new, n);
            let path = self.push_index(i);
            self.op(Op::Add, Some(&new[n..end]));
            self.path.truncate(path);
            (n, i) = (after(new, end), i + 1);
        }
    }

    fn op(&mut self, kind: Op, value: Option<&[u8]>) {
        op(&mut self.ops, &self.path, kind, value);
    }

    /// Adds an attribute name to the path, as it is when it needs no escaping: a name without
    /// escapes on the wire has no `"`, `\` or control character, so only `~` and `/` are looked
    /// for, eight bytes at a time. Escaping byte by byte was a tenth of an INSERT.
    fn push_text(&mut self, name: &Text<'_>) -> usize {
        match name {
            Text::Plain(name) if !has_tilde_or_slash(name) => {
                let len = self.path.len();
                self.path.push(b'/');
                self.path.extend_from_slice(name);
                len
            }
            _ => self.push_name(name.as_bytes()),
        }
    }

    /// Adds a member name (unescaped) to the path; returns the length to truncate it to after.
    fn push_name(&mut self, name: &[u8]) -> usize {
        let len = self.path.len();
        self.path.push(b'/');
        escape(&mut self.path, name, true);
        len
    }

    fn push_index(&mut self, index: usize) -> usize {
        let len = self.path.len();
        self.path.push(b'/');
        self.path
            .extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
        len
    }
}

/// The JSON of the plain attribute value at `p` ([`Parser::plain_value`]), which `p` then
/// steps over: a string's text with its quotes, a plain decimal's digits. `None`, and `p` left
/// where it was, for any other value.
fn plain_json<'a>(p: &mut Parser<'a>) -> Option<&'a [u8]> {
    let at = p.at;
    let (tag, text) = p.plain_value()?;
    let record = p.bytes;
    match tag {
        b'S' => Some(&record[text.start - 1..text.end + 1]),
        _ if number::is_plain_decimal(&record[text.clone()]) => Some(&record[text]),
        _ => {
            p.at = at;
            None
        }
    }
}

/// A JSON Patch operation's kind.
#[derive(Debug, Clone, Copy)]
enum Op {
    Add,
    Remove,
    Replace,
}

impl Op {
    /// Writes the operation's text up to its path: one copy, where the op's name and the text
    /// around it took three, and of a length known in each branch, which the compiler copies
    /// without calling `memcpy`.
    fn write_head(self, ops: &mut Vec<u8>) {
        match self {
            Op::Add => ops.extend_from_slice(br#",{"op":"add","path":""#),
            Op::Remove => ops.extend_from_slice(br#",{"op":"remove","path":""#),
            Op::Replace => ops.extend_from_slice(br#",{"op":"replace","path":""#),
        }
    }
}

/// Writes one operation, `,{"op":…,"path":…[,"value":…]}`.
fn op(ops: &mut Vec<u8>, path: &[u8], kind: Op, value: Option<&[u8]>) {
    kind.write_head(ops);
    ops.extend_from_slice(path);
    match value {
        Some(value) => {
            ops.extend_from_slice(br#"","value":"#);
            ops.extend_from_slice(value);
            ops.push(b'}');
        }
        None => ops.extend_from_slice(br#""}"#),
    }
}

/// Writes an `add` of the attribute value at `p`, written as JSON into the scratch `values`.
fn add_from_wire<'a>(
    ops: &mut Vec<u8>,
    path: &[u8],
    values: &mut Vec<u8>,
    r: &mut Renderer<'a>,
    p: &mut Parser<'a>,
) -> Option<()> {
    values.clear();
    r.attribute(p, values)?;
    op(ops, path, Op::Add, Some(values));
    Some(())
}

/// Whether `b` holds a `~` or a `/`: eight bytes at a time, the last eight overlapping the ones
/// before, each tested for a byte equal to either (the classic test for a zero byte, which has
/// no false positives).
fn has_tilde_or_slash(b: &[u8]) -> bool {
    const LOW: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = LOW << 7;
    let has = |word: u64, byte: u8| {
        let x = word ^ (LOW * u64::from(byte));
        x.wrapping_sub(LOW) & !x & HIGH != 0
    };
    let either = |word: u64| has(word, b'~') | has(word, b'/');
    let n = b.len();
    if n < 8 {
        return b.iter().any(|&c| c == b'~' || c == b'/');
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let mut at = 0;
    while at + 8 < n {
        if either(word(at)) {
            return true;
        }
        at += 8;
    }
    either(word(n - 8))
}

/// The type tag of the attribute value at `at` when it is spelled `{"M":` or `{"L":`, as
/// DynamoDB spells them (anything else is diffed as JSON, which is exact, only slower).
fn tag(record: &[u8], at: usize) -> Option<u8> {
    match record.get(at..at + 5)? {
        &[b'{', b'"', tag @ (b'M' | b'L'), b'"', b':'] => Some(tag),
        _ => None,
    }
}

/// The members of a canonical JSON object: unescaped names and values' texts.
fn members(object: &[u8]) -> Vec<(Cow<'_, [u8]>, &[u8])> {
    let mut members = Vec::new();
    let mut at = 1;
    while object[at] != b'}' {
        let name_end = string_end(object, at);
        let name = &object[at + 1..name_end - 1];
        let name = if name.contains(&b'\\') {
            let decoded: String =
                serde_json::from_slice(&object[at..name_end]).expect("the event's own JSON");
            Cow::Owned(decoded.into_bytes())
        } else {
            Cow::Borrowed(name)
        };
        let end = value_end(object, name_end + 1);
        members.push((name, &object[name_end + 1..end]));
        at = after(object, end);
    }
    members
}

/// Where the next member or item starts after one that ends at `end`, in canonical JSON.
fn after(text: &[u8], end: usize) -> usize {
    end + usize::from(text[end] == b',')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn diff(old: &str, new: &str) -> String {
        let mut patch = Patch::default();
        patch.json(old.as_bytes(), new.as_bytes());
        format!("[{}]", String::from_utf8(patch.ops().to_vec()).unwrap())
    }

    proptest! {
        #[test]
        fn has_tilde_or_slash_is_a_byte_search(
            b in prop::collection::vec(prop_oneof![Just(b'~'), Just(b'/'), any::<u8>()], 0..40),
        ) {
            prop_assert_eq!(has_tilde_or_slash(&b), b.iter().any(|&c| c == b'~' || c == b'/'));
        }
    }

    /// The walk over canonical texts is `json_patch::diff` on their values.
    #[test]
    fn walks_as_json_patch_does() {
        for (old, new) in [
            (
                r#"{"a":1,"b":{"c":[1,2,3]},"d":"x"}"#,
                r#"{"a":2,"b":{"c":[1,5]},"e":null}"#,
            ),
            (
                r#"[{"a":"x\"y"},[],{}]"#,
                r#"[{"a":"x\"z","b":true},[[]],{"":{}},7]"#,
            ),
            (
                r#"{"a/b":1,"a~b":[]}"#,
                r#"{"a\u0000":1,"a/b":"1","a~b":{}}"#,
            ),
            (r#"{"x":[1,2]}"#, r#"[1,2]"#),
        ] {
            let values = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
            let want = serde_json::to_string(&json_patch::diff(&values(old), &values(new)));
            assert_eq!(diff(old, new), want.unwrap(), "{old} -> {new}");
        }
    }
}

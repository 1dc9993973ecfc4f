//! Reading the stream record as it arrives: JSON tokens borrowing from the wire text.
//!
//! A reader of its own, not serde visitors: the record is all small objects (`{"S":"…"}` per
//! value), and with serde_json's per-key visitor calls, parsing dominated the whole transform
//! (figures in docs/performance.md). It checks JSON as strictly as
//! serde_json, so the fast path never takes a record the reference rejects, and declines
//! (`None`) whatever it does not handle itself: escaped type tags, repeated attribute names or
//! images, nesting as deep as [`MAX_DEPTH`]. The reference path then parses the record again and
//! either explains the problem with the attribute's path or, for such an odd record, builds the
//! event itself. Escaped strings are decoded by serde_json, into an arena of the record.

use std::cmp::Ordering;
use std::ops::Range;

use bumpalo::Bump;
use wide::u8x16;

use crate::scan::find_special;
use crate::transform::number::Decimal;

/// Arrays and objects nested this deep are left to the reference: [`Parser::enter`] keeps the
/// depth below it, so that the object of a plain value, one level deeper, needs no check of its
/// own ([`Parser::plain_value`], on the hottest path). Below serde_json's own limit
/// of 128, so the reference never fails on depth where this parser succeeds; far above the 32
/// levels DynamoDB allows (67 here, each level being an attribute value and its map).
const MAX_DEPTH: u32 = 100;

/// A plain value ([`Parser::plain_value`]) is `{"S":"` (or `N`), its text, `"}`: these are the
/// lengths of both ends, and the tag is the third byte.
const PLAIN_OPEN: usize = br#"{"S":""#.len();
const PLAIN_CLOSE: usize = br#""}"#.len();
const PLAIN_TAG: usize = br#"{""#.len();

/// The tag and the text (without quotes) of the plain value at `value` in `bytes`, as
/// [`Parser::plain_value`] found it.
#[inline(always)]
pub(crate) fn plain_parts(bytes: &[u8], value: Range<usize>) -> (u8, Range<usize>) {
    (
        bytes[value.start + PLAIN_TAG],
        value.start + PLAIN_OPEN..value.end - PLAIN_CLOSE,
    )
}

/// A JSON string of the record.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Text<'a> {
    /// The wire text had no escape sequence, and the parser rejects raw control characters, so
    /// it contains nothing JSON needs escaped: it is written back between quotes as it is. Kept
    /// as bytes: it lies between two quotes of a `str`, so it is UTF-8, and taking it as a `str`
    /// would check that again for every string.
    Plain(&'a [u8]),
    /// Unescaped, into the record's arena ([`Parser`]); must be escaped again when written.
    /// Borrowed, not owned, so that nothing the renderer notes needs dropping: clearing its
    /// vectors of members was a loop over them.
    Decoded(&'a str),
}

impl<'a> Text<'a> {
    pub(crate) fn as_bytes(&self) -> &'a [u8] {
        match self {
            Text::Plain(b) => b,
            Text::Decoded(s) => s.as_bytes(),
        }
    }
}

/// An attribute name, with its first 16 bytes as an integer (zero-padded, big-endian) for
/// comparing. Sorting the fields and matching names up compares names some hundreds of times per
/// record; by integers almost every comparison is a few instructions, where comparing slices is
/// a library call.
///
/// The key is two halves, not a `u128`: that would align every member to 16 bytes, and members
/// are written by the hundred per record.
#[derive(Debug)]
pub(crate) struct Name<'a> {
    pub key: (u64, u64),
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

/// The first 16 bytes of `b`, zero-padded, as two big-endian integers (the first eight bytes,
/// then the next eight).
///
/// Read as at most two overlapping loads from each end: shifting bytes in one by one is slow on
/// this hot path, and copying into a zeroed buffer to load that stalls the processor (a
/// store it cannot forward to the load). Overlapping bytes are the same bytes at the same place,
/// so or-ing both loads is exact. Each half is shifted on its own: a shift of a `u128` took
/// several instructions.
pub(crate) fn head(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    let be32 = |at: usize| u64::from(u32::from_be_bytes(b[at..at + 4].try_into().expect("4")));
    if n >= 16 {
        (be64(0), be64(8))
    } else if n > 8 {
        (be64(0), be64(n - 8) << (8 * (16 - n)))
    } else if n == 8 {
        (be64(0), 0)
    } else if n >= 4 {
        (be32(0) << 32 | be32(n - 4) << (8 * (8 - n)), 0)
    } else {
        let first = b
            .iter()
            .enumerate()
            .fold(0, |key, (i, &byte)| key | u64::from(byte) << (56 - 8 * i));
        (first, 0)
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

pub(crate) struct Parser<'a> {
    pub text: &'a str,
    pub bytes: &'a [u8],
    /// Where escaped strings are decoded to, to live as long as the record.
    arena: &'a Bump,
    pub at: usize,
    depth: u32,
    /// The last run compared by [`Parser::skip_run`]: from where in this text, against where,
    /// how many bytes were the same.
    run: (usize, usize, usize),
}

impl<'a> Parser<'a> {
    /// A reader of `text` from `at`, inside `depth` open arrays and objects, decoding escaped
    /// strings into `arena`.
    pub(crate) fn new(text: &'a str, arena: &'a Bump, at: usize, depth: u32) -> Parser<'a> {
        Parser {
            text,
            bytes: text.as_bytes(),
            arena,
            at,
            depth,
            run: (0, 0, 0),
        }
    }

    /// A reader of the same text from `at`, as if outside any array or object.
    pub(crate) fn fork(&self, at: usize) -> Parser<'a> {
        Parser::new(self.text, self.arena, at, 0)
    }

    #[inline(always)]
    pub(crate) fn whitespace(&mut self) {
        // Records come without whitespace between tokens: one comparison decides it.
        if self.bytes.get(self.at).is_some_and(|&b| b > b' ') {
            return;
        }
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then consumes `byte` if it comes next. This and the other steps of a
    /// token are inlined: they run for every token, and a call cost more than the step.
    #[inline(always)]
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        // Records come without whitespace between tokens: the byte is looked for first.
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            return true;
        }
        self.whitespace();
        let found = self.bytes.get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    /// After a member or element: consumes the comma before the next one (`true`) or `close`,
    /// which ends them (`false`). One step, where eating the close and then expecting the comma
    /// looked at the next byte three times.
    #[inline(always)]
    pub(crate) fn next_or(&mut self, close: u8) -> Option<bool> {
        let byte = match self.bytes.get(self.at) {
            Some(&byte) if byte > b' ' => byte,
            _ => {
                self.whitespace();
                *self.bytes.get(self.at)?
            }
        };
        self.at += 1;
        match byte {
            b',' => Some(true),
            _ if byte == close => Some(false),
            _ => None,
        }
    }

    #[inline(always)]
    pub(crate) fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied()
    }

    pub(crate) fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth < MAX_DEPTH).then_some(())
    }

    pub(crate) fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Skips `read`, text already read and checked, if it comes next and ends there: followed
    /// by `,`, `}` or `]`, the same text is exactly the same JSON (a value, or an object member).
    pub(crate) fn skip_same(&mut self, read: &[u8]) -> bool {
        let end = self.at + read.len();
        let same = self.bytes.get(self.at..end).is_some_and(|b| equal(b, read)) && self.ends(end);
        if same {
            self.at = end;
        }
        same
    }

    /// Skips as many of the texts at `spans` as come next, the same, each ending there
    /// ([`Parser::skip_same`]); how many. The spans are text already read and checked, one
    /// after the other in the record with only commas and whitespace between them: an object's
    /// members or an array's items. The old image's members are mostly its new image's, in the
    /// same order, so they are compared as one run of bytes ([`common_prefix`]), not each on its
    /// own with a step of the reader between (some hundred instructions per member).
    pub(crate) fn skip_run(&mut self, spans: impl IntoIterator<Item = (usize, usize)>) -> usize {
        let mut spans = spans.into_iter();
        let Some((start, mut end)) = spans.next() else {
            return 0;
        };
        // A changed member's value is compared again inside it (a list whose one item
        // changed): the bytes the member's run found the same are not compared twice.
        let (old, new, len) = self.run;
        let known = match self.at.checked_sub(old) {
            Some(into) if into <= len && start.checked_sub(new) == Some(into) => len - into,
            _ => 0,
        };
        let same =
            known + common_prefix(&self.bytes[self.at + known..], &self.bytes[start + known..]);
        self.run = (self.at, start, same);
        // Where the last two spans counted end in this text.
        let (mut count, mut ends) = (0, [self.at; 2]);
        while end - start <= same {
            count += 1;
            ends = [ends[1], self.at + (end - start)];
            match spans.next() {
                Some((_, next)) => end = next,
                None => break,
            }
        }
        if count == 0 {
            return 0;
        }
        // The bytes after each span but the last are the same as in the spans' text, where a
        // comma follows; after the last one they may differ.
        if self.ends(ends[1]) {
            self.at = ends[1];
        } else {
            self.at = ends[0];
            count -= 1;
        }
        count
    }

    /// Whether a value or member that ends at `at` ends there: `,`, `}` or `]` follows it.
    fn ends(&self, at: usize) -> bool {
        let ends = |b: Option<&u8>| matches!(b, Some(b',' | b'}' | b']'));
        ends(self.bytes.get(at))
            || ends(
                self.bytes[at.min(self.bytes.len())..]
                    .iter()
                    .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')),
            )
    }

    /// An object, each member's value read by `value`, which gets the member's name and where
    /// the name's opening quote is.
    pub(crate) fn members(
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
                if !self.next_or(b'}')? {
                    break;
                }
            }
        }
        self.leave();
        Some(())
    }

    /// An array, each element read by `element`.
    pub(crate) fn elements(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'[')?;
        self.enter()?;
        if !self.eat(b']') {
            loop {
                element(self)?;
                if !self.next_or(b']')? {
                    break;
                }
            }
        }
        self.leave();
        Some(())
    }

    #[inline(always)]
    pub(crate) fn string(&mut self) -> Option<Text<'a>> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        let end = find_special(self.bytes, start);
        match self.bytes.get(end)? {
            b'"' => {
                self.at = end + 1;
                Some(Text::Plain(&self.bytes[start..end]))
            }
            b'\\' => self.escaped_string(start - 1, end),
            _ => None, // a raw control character: not JSON
        }
    }

    /// A string as a `str` (the eventID, the sequence number, a number's text): a plain one is
    /// sliced from the record's text, which checks only that its ends are char boundaries (they
    /// are, next to quotes), where taking its bytes as a `str` would check all of them again.
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        self.whitespace();
        let quote = self.at;
        match self.string()? {
            Text::Plain(_) => self.text.get(quote + 1..self.at - 1),
            Text::Decoded(s) => Some(s),
        }
    }

    /// An attribute value `{"S":"text"}` or `{"N":"text"}` spelled as DynamoDB spells it (no
    /// whitespace, no escapes), which most values of an item are: read in one step, and its tag
    /// (`S` or `N`) and where its text is (without quotes) returned. Anything else is not read
    /// (`None`), for the caller to read token by token, which took a tenth more instructions
    /// per member.
    #[inline(always)]
    pub(crate) fn plain_value(&mut self) -> Option<(u8, Range<usize>)> {
        let at = self.at;
        // `{"S":"` or `{"N":"`: six bytes compared as one integer, the tag's masked off.
        const HEAD: u64 = u64::from_le_bytes(*b"{\"\0\":\"\0\0");
        let word = u64::from_le_bytes(self.bytes.get(at..at + 8)?.try_into().expect("8"));
        let tag = (word >> 16) as u8;
        if word & 0xffff_ff00_ffff != HEAD || !matches!(tag, b'S' | b'N') {
            return None;
        }
        let end = find_special(self.bytes, at + PLAIN_OPEN);
        if self.bytes.get(end..end + PLAIN_CLOSE) != Some(b"\"}") {
            return None;
        }
        self.at = end + PLAIN_CLOSE;
        Some((tag, at + PLAIN_OPEN..end))
    }

    /// A member `"name":` and a [`Parser::plain_value`], read in one step: its name, tag and
    /// value's text. Anything else is not read (`None`).
    #[inline(always)]
    pub(crate) fn plain_member(&mut self) -> Option<(&'a [u8], u8, Range<usize>)> {
        let at = self.at;
        if self.bytes.get(at) != Some(&b'"') {
            return None;
        }
        let name_end = find_special(self.bytes, at + 1);
        if self.bytes.get(name_end..name_end + 2) != Some(b"\":") {
            return None;
        }
        self.at = name_end + 2;
        let Some((tag, value)) = self.plain_value() else {
            self.at = at;
            return None;
        };
        Some((&self.bytes[at + 1..name_end], tag, value))
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
        Some(Text::Decoded(self.arena.alloc_str(&decoded)))
    }

    /// A JSON number, checked.
    pub(crate) fn number(&mut self) -> Option<Decimal<'a>> {
        self.whitespace();
        let start = self.at;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
        }
        Decimal::parse(&self.text[start..self.at])
    }

    /// Consumes `null` if it comes next.
    pub(crate) fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    pub(crate) fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            _ => self.literal(b"false").map(|()| false),
        }
    }

    pub(crate) fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.whitespace();
        let found = self.bytes.get(self.at..self.at + word.len())? == word;
        self.at += word.len();
        found.then_some(())
    }

    /// Checks and skips any JSON value.
    pub(crate) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            // Most objects skipped are attribute values (`Keys`), spelled as DynamoDB spells them.
            b'{' if self.plain_value().is_some() => Some(()),
            b'{' => self.members(|p, _, _| p.skip()),
            b'[' => self.elements(|p| p.skip()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }
}

/// `a == b`, inline. The texts compared are mostly some tens of bytes, for which the library's
/// call cost more than the comparing (a twentieth of the transform): they are compared eight
/// bytes at a time, the last eight overlapping the ones before.
#[inline(always)]
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n > 64 {
        return a == b;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    if n >= 8 {
        let mut at = 0;
        while at + 8 < n {
            if word(a, at) != word(b, at) {
                return false;
            }
            at += 8;
        }
        word(a, n - 8) == word(b, n - 8)
    } else if n >= 4 {
        half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4)
    } else {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
}

/// How many bytes `a` and `b` begin with in common: compared 64 at a time, as runs of equal
/// members are mostly some hundred bytes and more; the four comparisons' masks are one integer,
/// so the first difference is found without comparing its block again.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let lanes = |s: &[u8]| u8x16::new(s.try_into().expect("16 bytes"));
    let mut at = 0;
    for (x, y) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
        let eq = |k: usize| {
            let same = lanes(&x[k..k + 16])
                .cmp_eq(lanes(&y[k..k + 16]))
                .move_mask();
            u64::from(same as u16) << k
        };
        let same = eq(0) | eq(16) | eq(32) | eq(48);
        if same != u64::MAX {
            return at + (!same).trailing_zeros() as usize;
        }
        at += 64;
    }
    for (x, y) in a[at..].chunks_exact(16).zip(b[at..].chunks_exact(16)) {
        let same = lanes(x).cmp_eq(lanes(y)).move_mask();
        if same != 0xffff {
            return at + (!same).trailing_zeros() as usize;
        }
        at += 16;
    }
    at + a[at..]
        .iter()
        .zip(&b[at..])
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The members of `new` (an object's text) as spans in `text`, which holds it at `at`.
    fn spans(text: &str, new: &str) -> Vec<(usize, usize)> {
        let at = text.find(new).expect("holds it");
        let arena = Bump::new();
        let mut p = Parser::new(text, &arena, at, 0);
        let mut spans = Vec::new();
        p.members(|p, _, start| {
            p.skip()?;
            spans.push((start, p.at));
            Some(())
        })
        .expect("an object");
        spans
    }

    #[test]
    fn skips_a_run_of_members_up_to_the_first_that_differs() {
        let new = r#"{"a":1,"b":[2,3],"c":"x","d":4}"#;
        for (old, count, rest) in [
            (r#"{"a":1,"b":[2,3],"c":"x","d":4}"#, 4, "}"),
            (
                r#"{"a":1,"b":[2,3],"c":"y","d":4}"#,
                2,
                r#","c":"y","d":4}"#,
            ),
            (r#"{"a":2,"b":[2,3]}"#, 0, r#""a":2,"b":[2,3]}"#),
            // The same bytes, but the last member's value goes on, or whitespace follows it.
            (r#"{"a":1,"b":[2,3],"c":"x","d":45}"#, 3, r#","d":45}"#),
            (r#"{"a":1,"b":[2,3] , "c":"x"}"#, 2, r#" , "c":"x"}"#),
            (r#"{"a":1,"b":[2,3],"c":"x" }"#, 3, " }"),
            (r#"{"a":1}"#, 1, "}"),
        ] {
            let text = format!("{new}{old}");
            let arena = Bump::new();
            let mut p = Parser::new(&text, &arena, new.len() + 1, 0);
            assert_eq!(p.skip_run(spans(&text, new)), count, "{old}");
            assert_eq!(&text[p.at..], rest, "{old}");
        }
    }

    #[test]
    fn a_run_inside_the_last_run_compared_counts_from_what_it_found() {
        let new = r#"{"a":[1,2,3,4],"b":5}"#;
        let old = r#"{"a":[1,2,9,4],"b":5}"#;
        let text = format!("{new}{old}");
        let arena = Bump::new();
        let mut p = Parser::new(&text, &arena, new.len() + 1, 0);
        assert_eq!(p.skip_run(spans(&text, new)), 0);
        p.at = text.rfind('[').unwrap() + 1;
        let items = [0, 2, 4, 6].map(|k| (k + 6, k + 7));
        assert_eq!(p.skip_run(items), 2);
        assert_eq!(&text[p.at..], r#",9,4],"b":5}"#);
    }

    proptest! {
        #[test]
        fn common_prefix_matches_a_plain_loop(
            a in prop::collection::vec(0u8..2, 0..200),
            b in prop::collection::vec(0u8..2, 0..200),
            same in 0usize..200,
        ) {
            // Mostly long common prefixes: `b` begins with some of `a`.
            let mut b = b;
            let n = same.min(a.len()).min(b.len());
            b[..n].copy_from_slice(&a[..n]);
            let want = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            prop_assert_eq!(common_prefix(&a, &b), want);
        }

        #[test]
        fn equal_is_slice_equality(a in prop::collection::vec(0u8..3, 0..80), flip in any::<usize>()) {
            prop_assert!(equal(&a, &a.clone()));
            let mut b = a.clone();
            if !b.is_empty() {
                let at = flip % b.len();
                b[at] ^= 1;
                prop_assert!(!equal(&a, &b));
            }
            prop_assert_eq!(equal(&a, &a[..a.len() / 2]), a.is_empty());
        }

        #[test]
        fn head_is_the_zero_padded_prefix(b in prop::collection::vec(any::<u8>(), 0..24)) {
            let mut padded = [0u8; 16];
            let n = b.len().min(16);
            padded[..n].copy_from_slice(&b[..n]);
            let (first, second) = head(&b);
            prop_assert_eq!(u128::from(first) << 64 | u128::from(second), u128::from_be_bytes(padded));
        }

        /// The parser never takes text serde_json rejects: the reference would fail on it.
        #[test]
        fn takes_no_json_that_serde_json_rejects(s in r#"[\[\]{}",:0-9a-z\\ .eE+-]{0,24}"#) {
            let arena = Bump::new();
            let mut p = Parser::new(&s, &arena, 0, 0);
            if p.skip().is_some() && { p.whitespace(); p.at == s.len() } {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok(), "{:?}", s);
            }
        }
    }
}

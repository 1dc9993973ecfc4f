//! A GetRecords response body kept as it came, with where each record lies in it.
//!
//! The relay needs the records as raw JSON, because the transform writes the event straight from
//! the wire's attribute values; decoding them into the SDK's types (`Record`, `AttributeValue`
//! maps) would cost more CPU than the whole rest of the relay's work for a record
//! (docs/performance.md). So [`RecordsPage::parse`] locates the records and the iterator in one
//! scan of the body (`locate`), and the page owns the body. The bodies' buffers are used again
//! for later pages ([`PAGE_BUFFERS`]).

use std::ops::Range;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::value::RawValue;
use wide::u8x16;

use crate::transform::find_special;

/// GetRecords pages are at most about 1 MB of records plus their JSON framing.
const MAX_RESERVE: u64 = 4 << 20;

/// An empty buffer for a page of `expected` bytes (its Content-Length), capped so a wrong header
/// cannot reserve much more than a page.
pub fn page_buffer(expected: usize) -> Vec<u8> {
    PAGE_BUFFERS.take(expected.min(MAX_RESERVE as usize))
}

/// Buffers of pages the relay is done with, for the next GetRecords responses of the process.
/// A page read into fresh memory faults in each of its memory pages, a visible share of the
/// relay's CPU at full speed (figures in docs/performance.md). At most
/// [`PageBuffers::KEPT`] buffers of at most [`MAX_RESERVE`] bytes are kept.
static PAGE_BUFFERS: PageBuffers = PageBuffers(Mutex::new(Vec::new()));

struct PageBuffers(Mutex<Vec<Vec<u8>>>);

impl PageBuffers {
    const KEPT: usize = 4;

    /// An empty buffer with room for `bytes`, a kept one if there is one.
    fn take(&self, bytes: usize) -> Vec<u8> {
        let kept = self.0.lock().expect("page buffers poisoned").pop();
        let mut buffer = kept.unwrap_or_default();
        buffer.reserve(bytes);
        buffer
    }

    fn keep(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > MAX_RESERVE as usize {
            return;
        }
        let mut kept = self.0.lock().expect("page buffers poisoned");
        if kept.len() < Self::KEPT {
            buffer.clear();
            kept.push(buffer);
        }
    }
}

/// One GetRecords response: the body and where each record's JSON lies in it.
#[derive(Debug, Clone)]
pub struct RecordsPage {
    body: String,
    records: Vec<Range<usize>>,
    /// None once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
}

#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(rename = "Records", borrow, default)]
    records: Vec<&'a RawValue>,
    #[serde(rename = "NextShardIterator")]
    next_iterator: Option<String>,
}

impl RecordsPage {
    /// Locates the records and reads the iterator; gives the body back when it is not a page.
    ///
    /// The page as AWS sends it is scanned ([`locate`]); anything else is left to serde, which
    /// reads any spelling of a page and refuses what is none.
    pub fn parse(body: String) -> Result<RecordsPage, String> {
        if let Some((records, next_iterator)) = locate(body.as_bytes()) {
            return Ok(RecordsPage {
                body,
                records,
                next_iterator,
            });
        }
        let Ok(page) = serde_json::from_str::<RawPage<'_>>(&body) else {
            return Err(body);
        };
        let base = body.as_ptr() as usize;
        // Offsets instead of borrowed slices, so the page can own its body.
        let records = page
            .records
            .iter()
            .map(|r| {
                let start = r.get().as_ptr() as usize - base;
                start..start + r.get().len()
            })
            .collect();
        Ok(RecordsPage {
            next_iterator: page.next_iterator,
            records,
            body,
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The raw JSON of every record, in stream order.
    pub fn records(&self) -> impl Iterator<Item = &str> {
        self.records.iter().map(|r| &self.body[r.clone()])
    }
}

impl Drop for RecordsPage {
    /// The body's buffer is kept for a later page ([`PAGE_BUFFERS`]).
    fn drop(&mut self) {
        PAGE_BUFFERS.keep(std::mem::take(&mut self.body).into_bytes());
    }
}

/// The records' places and the iterator of a page spelled as AWS spells it: one object with the
/// members `Records` (an array) and `NextShardIterator` (a string or null) in any order, others
/// skipped, no whitespace, no escaped member names. `None` for anything else.
///
/// Records are found by matching brackets and skipping strings, not read: serde's reading of
/// the page cost more than half of what the transform costs (docs/performance.md), and the
/// transform reads every record strictly anyway; a record it cannot read is
/// dead-lettered with the reason. The brackets are matched by kind, so a record's end is where
/// its JSON value ends.
fn locate(b: &[u8]) -> Option<(Vec<Range<usize>>, Option<String>)> {
    let mut at = 0;
    let (mut records, mut next_iterator) = (None, None);
    expect(b, &mut at, b'{')?;
    while b.get(at) != Some(&b'}') {
        let name = plain_string(b, &mut at)?;
        expect(b, &mut at, b':')?;
        match name {
            b"Records" if records.is_none() => records = Some(record_ranges(b, &mut at)?),
            b"NextShardIterator" if next_iterator.is_none() => {
                next_iterator = Some(if b[at..].starts_with(b"null") {
                    at += 4;
                    None
                } else {
                    let text = plain_string(b, &mut at)?;
                    Some(String::from_utf8(text.to_vec()).ok()?)
                });
            }
            b"Records" | b"NextShardIterator" => return None,
            _ => skip(b, &mut at)?,
        }
        match b.get(at)? {
            b',' if b.get(at + 1) == Some(&b'"') => at += 1,
            b'}' => {}
            _ => return None,
        }
    }
    (at + 1 == b.len()).then(|| (records.unwrap_or_default(), next_iterator.flatten()))
}

fn expect(b: &[u8], at: &mut usize, byte: u8) -> Option<()> {
    (b.get(*at) == Some(&byte)).then(|| *at += 1)
}

/// The elements of the `Records` array, each as where its text is.
fn record_ranges(b: &[u8], at: &mut usize) -> Option<Vec<Range<usize>>> {
    expect(b, at, b'[')?;
    // Records of a full page are 1 to 400 KB; most pages are small.
    let mut records = Vec::with_capacity(64);
    if expect(b, at, b']').is_some() {
        return Some(records);
    }
    loop {
        let start = *at;
        skip(b, at)?;
        records.push(start..*at);
        match b.get(*at)? {
            b',' => *at += 1,
            b']' => {
                *at += 1;
                return Some(records);
            }
            _ => return None,
        }
    }
}

/// A string without escapes, as its bytes; `at` is on its opening quote.
fn plain_string<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    expect(b, at, b'"')?;
    let start = *at;
    let end = find_special(b, start);
    (b.get(end)? == &b'"').then(|| {
        *at = end + 1;
        &b[start..end]
    })
}

/// Steps over one JSON value from `at`: a string to its closing quote, an array or object to
/// its matching bracket, anything else to the next `,`, `]` or `}`. Nesting deeper than 128 is
/// refused, as serde_json refuses it; so is a raw control character in a string.
fn skip(b: &[u8], at: &mut usize) -> Option<()> {
    match *b.get(*at)? {
        b'"' => *at = string_end(b, *at + 1)? + 1,
        b'{' | b'[' => *at = container_end(b, *at)?,
        _ => {
            while !matches!(b.get(*at)?, b',' | b']' | b'}') {
                *at += 1;
            }
        }
    }
    Some(())
}

/// Where the array or object opened at `at` ends (after its closing bracket).
///
/// Reads 64 bytes at a time: SIMD compares give one bit per byte for quotes, brackets, and
/// backslashes or control characters; the strings are the spans between unescaped quotes (a
/// prefix XOR of the quote bits), and only the brackets outside them are visited one by one.
/// Records are mostly small `{"S":"…"}` objects, so the walk byte by byte it replaced (strings
/// skipped eight bytes at a time) paid per token, where this pays per 64 bytes and per bracket
/// (`cargo bench --bench records`, scan and scan_escaped; figures in docs/performance.md).
///
/// It reads exactly as that walk did: a backslash in a string steps over the next byte, whatever
/// it is, one outside a string is an ordinary byte, and a raw control character in a string
/// before the end refuses the value (serde_json refuses it too), as does nesting deeper than 128.
fn container_end(b: &[u8], at: usize) -> Option<usize> {
    // The open brackets' bytes, innermost last.
    let mut open = [0u8; 128];
    let mut depth = 0;
    // All ones when the block starts inside a string.
    let mut in_string = 0u64;
    let mut pos = at;
    let mut tail;
    loop {
        let block: &[u8; 64] = match b.get(pos..pos + 64) {
            Some(block) => block.try_into().expect("64 bytes"),
            None => {
                // Spaces mean nothing to the scan, in a string or out of one.
                let rest = b.get(pos..).filter(|rest| !rest.is_empty())?;
                tail = [b' '; 64];
                tail[..rest.len()].copy_from_slice(rest);
                &tail
            }
        };
        let classes = classify(block);
        let strings = strings(block, &classes, in_string);
        in_string = 0u64.wrapping_sub(strings.inside >> 63);
        let mut brackets = classes.bracket & !strings.inside & strings.counted;
        while brackets != 0 {
            let i = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            let c = block[i];
            // Bit 1 is set in `{` and `[`, not in `}` and `]`; bit 5 tells `{}` from `[]`.
            if c & 2 != 0 {
                *open.get_mut(depth)? = c;
                depth += 1;
            } else {
                depth -= 1;
                if (open[depth] ^ c) & 0x20 != 0 {
                    return None;
                }
                if depth == 0 {
                    return Some(pos + i + 1);
                }
            }
        }
        if strings.counted != u64::MAX {
            return None;
        }
        pos += strings.step;
    }
}

/// One bit per byte of a block, the lowest for its first byte.
struct Classes {
    quote: u64,
    /// Backslashes and control characters: none in most blocks.
    rare: u64,
    /// `{`, `}`, `[` and `]`.
    bracket: u64,
}

fn classify(block: &[u8; 64]) -> Classes {
    let mut classes = Classes {
        quote: 0,
        rare: 0,
        bracket: 0,
    };
    for (i, chunk) in block.chunks_exact(16).enumerate() {
        let v = u8x16::new(chunk.try_into().expect("16 bytes"));
        let bits = |is: u8x16| u64::from(is.move_mask() as u16) << (16 * i);
        classes.quote |= bits(v.cmp_eq(u8x16::splat(b'"')));
        classes.rare |= bits(v.cmp_eq(u8x16::splat(b'\\')) | is_control(v));
        // `[` and `]` with bit 5 set are `{` and `}`.
        let folded = v | u8x16::splat(0x20);
        classes.bracket |=
            bits(folded.cmp_eq(u8x16::splat(b'{')) | folded.cmp_eq(u8x16::splat(b'}')));
    }
    classes
}

fn is_control(v: u8x16) -> u8x16 {
    v.min(u8x16::splat(0x1f)).cmp_eq(v)
}

/// Where a block's strings are.
struct Strings {
    /// From each string's opening quote to the byte before its closing quote.
    inside: u64,
    /// The bytes before the first control character in a string: the value ends before it or
    /// is refused.
    counted: u64,
    /// 65 when the block's last byte escapes the next block's first.
    step: usize,
}

/// Most blocks have no backslash and no control character: their strings are where the quotes
/// say, with no byte-by-byte work.
fn strings(block: &[u8; 64], classes: &Classes, in_string: u64) -> Strings {
    if classes.rare == 0 {
        return Strings {
            inside: prefix_xor(classes.quote) ^ in_string,
            counted: u64::MAX,
            step: 64,
        };
    }
    let mut backslash = 0;
    for (i, chunk) in block.chunks_exact(16).enumerate() {
        let v = u8x16::new(chunk.try_into().expect("16 bytes"));
        backslash |= u64::from(v.cmp_eq(u8x16::splat(b'\\')).move_mask() as u16) << (16 * i);
    }
    // simdjson's escape scan: in each run of backslashes, every other one escapes the byte after
    // it, counted from the run's start. As if every backslash were in a string.
    const ODD: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    let code = ((backslash << 1 | ODD).wrapping_sub(backslash)) ^ ODD;
    let escaped = code ^ backslash;
    let inside = prefix_xor(classes.quote & !escaped) ^ in_string;
    // Exact as long as no backslash is outside a string, where the walk took it as ordinary.
    if backslash & !inside != 0 {
        return strings_in_order(block, classes, in_string);
    }
    let control = classes.rare & !backslash & inside & !escaped;
    Strings {
        inside,
        counted: (control & control.wrapping_neg()).wrapping_sub(1),
        step: 64 + ((code & backslash) >> 63) as usize,
    }
}

/// A block with a backslash outside any string, which is no JSON: read quote by quote, as the
/// backslash is an ordinary byte there.
fn strings_in_order(block: &[u8; 64], classes: &Classes, in_string: u64) -> Strings {
    let (mut quotes, mut inside) = (0u64, in_string != 0);
    let mut strings = Strings {
        inside: 0,
        counted: u64::MAX,
        step: 64,
    };
    let mut events = classes.quote | classes.rare;
    while events != 0 {
        let i = events.trailing_zeros();
        let bit = 1u64 << i;
        events &= events - 1;
        if classes.quote & bit != 0 {
            inside = !inside;
            quotes |= bit;
        } else if inside {
            if block[i as usize] != b'\\' {
                strings.counted = bit - 1;
                break;
            }
            if i == 63 {
                strings.step = 65;
            } else {
                events &= !(bit << 1);
            }
        }
    }
    strings.inside = prefix_xor(quotes) ^ in_string;
    strings
}

/// Each bit the XOR of itself and all bits below it: ones from an opening quote on, until the
/// closing one.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

/// The closing quote of the string whose content starts at `at`.
fn string_end(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = find_special(b, at);
        match b.get(at)? {
            b'"' => return Some(at),
            // Steps over the escaped byte; the hex digits of `\u` are ordinary bytes.
            b'\\' => at += 2,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<RecordsPage, String> {
        RecordsPage::parse(body.to_owned())
    }

    #[test]
    fn page_buffers_are_kept_up_to_a_number_and_size() {
        let buffers = PageBuffers(Mutex::new(Vec::new()));
        let sized = |bytes: usize| Vec::<u8>::with_capacity(bytes);
        buffers.keep(sized(MAX_RESERVE as usize + 1));
        buffers.keep(Vec::new());
        assert!(
            buffers.0.lock().unwrap().is_empty(),
            "too large, or nothing"
        );
        let mut page = sized(1000);
        page.extend_from_slice(b"{}");
        let at = page.as_ptr() as usize;
        buffers.keep(page);
        let again = buffers.take(10);
        assert_eq!(
            (again.as_ptr() as usize, again.len()),
            (at, 0),
            "the same memory, empty"
        );
        for _ in 0..PageBuffers::KEPT + 2 {
            buffers.keep(sized(100));
        }
        assert_eq!(buffers.0.lock().unwrap().len(), PageBuffers::KEPT);
        assert!(buffers.take(5000).capacity() >= 5000);
    }

    #[test]
    fn page_keeps_each_record_verbatim() {
        let record_a =
            r#"{"eventID":"a","n":{"N":"1.50"},"s":{"S":"}]\"{["},"l":{"L":[{"M":{}},[]]}}"#;
        for body in [
            // As AWS sends it: scanned.
            format!(r#"{{"Records":[{record_a},{{"eventID":"b"}}],"NextShardIterator":"it"}}"#),
            // Spaced and reordered: read by serde.
            format!(
                r#" {{ "NextShardIterator" : "it", "Records" : [ {record_a} , {{"eventID":"b"}} ] }} "#
            ),
        ] {
            let page = parse(&body).unwrap();
            let records: Vec<_> = page.records().collect();
            assert_eq!(records, vec![record_a, r#"{"eventID":"b"}"#], "{body}");
            assert_eq!(page.next_iterator.as_deref(), Some("it"));
        }
    }

    #[test]
    fn pages_without_records_or_iterator() {
        for body in [
            "{}",
            r#"{"Records":[]}"#,
            r#"{"Records":[],"NextShardIterator":null}"#,
        ] {
            assert!(locate(body.as_bytes()).is_some(), "{body}");
            let page = parse(body).unwrap();
            assert!(page.is_empty());
            assert_eq!(page.next_iterator, None);
        }
    }

    #[test]
    fn what_is_not_a_page_goes_back_unchanged() {
        for body in [
            "<html>",
            r#"{"Records":[{"a":1}"#,
            r#"{"Records":[{"a":[1}]}"#,
            r#"{"Records":[],"Records":[]}"#,
            r#"{"Records":null}"#,
            r#"{"Records":[]}x"#,
            "",
        ] {
            assert!(locate(body.as_bytes()).is_none(), "{body}");
            assert_eq!(parse(body).unwrap_err(), body);
        }
        let deep = format!(r#"{{"Records":[{}{}]}}"#, "[".repeat(129), "]".repeat(129));
        assert!(locate(deep.as_bytes()).is_none());
    }

    /// Any JSON value, as serde_json writes it (no whitespace), sometimes with escapes.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            r#"[a-z"\\\[\]{},:\n\u{e9}\u{1F600}]{0,12}"#.prop_map(Value::String),
            // Across the scan's 64-byte blocks, escapes at any place.
            r#"[a-z"\\\n\u{e9}]{40,140}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z\"]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The walk byte by byte that the block scan replaced, for reference: a backslash in a
    /// string steps over the next byte, one outside is an ordinary byte.
    fn walk_end(b: &[u8], mut at: usize) -> Option<usize> {
        let mut open = Vec::new();
        loop {
            let c = *b.get(at)?;
            at += 1;
            match c {
                b'"' => loop {
                    match *b.get(at)? {
                        b'"' => {
                            at += 1;
                            break;
                        }
                        b'\\' => at += 2,
                        0..0x20 => return None,
                        _ => at += 1,
                    }
                },
                b'{' | b'[' if open.len() == 128 => return None,
                b'{' | b'[' => open.push(c),
                b'}' | b']' => {
                    if !matches!((open.pop()?, c), (b'{', b'}') | (b'[', b']')) {
                        return None;
                    }
                    if open.is_empty() {
                        return Some(at);
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn escapes_and_control_characters_at_every_place_in_a_block() {
        // Before the string, a backslash outside any string: the block is read quote by quote.
        for outside in ["", "\\"] {
            for run in 0..6 {
                for pad in 40..140 {
                    for end in ["\"]", "\"\n\"]", "\"]\"\n\"", "\n\"]", "\"\u{e9}]"] {
                        let (pad, run) = ("x".repeat(pad), "\\".repeat(run));
                        let body = format!(r#"[{outside}"{pad}{run}{end}"#);
                        let b = body.as_bytes();
                        assert_eq!(container_end(b, 0), walk_end(b, 0), "{body:?}");
                    }
                }
            }
        }
        // A control character in a string past the value's end is none of its business.
        assert_eq!(container_end(b"{\"a\":1}\"\n\"]", 0), Some(7));
        assert_eq!(container_end(b"{\"a\":\"\n\"}", 0), None);
        // Escaped, it is stepped over; a backslash outside a string is an ordinary byte.
        assert_eq!(container_end(b"{\"a\":\"\\\n\"}", 0), Some(10));
        assert_eq!(container_end(br#"{"a":\}"#, 0), Some(7));
    }

    /// Bytes that mean something to the scan, in any order: mostly not JSON.
    fn soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => Just("\""),
            3 => Just("\\"),
            2 => Just("{"),
            2 => Just("}"),
            2 => Just("["),
            2 => Just("]"),
            1 => Just("\n"),
            1 => Just("\u{e9}"),
            4 => Just("a"),
            1 => Just(","),
            1 => Just(":"),
        ];
        let deep = prop::collection::vec(prop_oneof![Just("{"), Just("[")], 120..136);
        (
            prop_oneof![Just("{"), Just("[")],
            0..140usize,
            prop::option::weighted(0.2, deep),
            prop::collection::vec(piece, 0..200),
        )
            .prop_map(|(first, pad, deep, pieces)| {
                let closing: String = deep
                    .iter()
                    .flatten()
                    .rev()
                    .map(|open| if *open == "{" { '}' } else { ']' })
                    .collect();
                format!(
                    r#"{first}"{}"{}{}{closing}"#,
                    "x".repeat(pad),
                    deep.unwrap_or_default().concat(),
                    pieces.concat()
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The block scan ends a value exactly where the byte walk does, JSON or not.
        #[test]
        fn the_block_scan_agrees_with_the_byte_walk(body in soup()) {
            prop_assert_eq!(container_end(body.as_bytes(), 0), walk_end(body.as_bytes(), 0));
        }
    }

    proptest! {
        /// The scanner finds exactly the records serde finds.
        #[test]
        fn the_scan_agrees_with_serde(records in prop::collection::vec(value(), 0..6), iterator in prop::option::of("[a-zA-Z0-9|:/]{1,20}")) {
            let body = serde_json::to_string(&serde_json::json!({
                "Records": records,
                "NextShardIterator": iterator,
            })).unwrap();
            let (ranges, next) = locate(body.as_bytes()).expect("a page as AWS spells it");
            let found: Vec<serde_json::Value> = ranges
                .iter()
                .map(|r| serde_json::from_str(&body[r.clone()]).unwrap())
                .collect();
            prop_assert_eq!(found, records);
            prop_assert_eq!(next, iterator);
        }
    }
}

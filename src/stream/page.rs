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

use crate::scan::{expect, plain_string, skip};
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// The records' places and the iterator of a page: one object with the members `Records` (an
/// array) and `NextShardIterator` (a string or null) in any order, others skipped, whitespace
/// between tokens or none, no escaped member names. `None` for anything else.
///
/// Records are found by matching brackets and skipping strings, not read: serde's reading of
/// the page cost more than half of what the transform costs (docs/performance.md), and the
/// transform reads every record strictly anyway; a record it cannot read is
/// dead-lettered with the reason. The brackets are matched by kind, so a record's end is where
/// its JSON value ends.
fn locate(b: &[u8]) -> Option<(Vec<Range<usize>>, Option<String>)> {
    let mut at = 0;
    let (mut records, mut next_iterator) = (None, None);
    space(b, &mut at);
    expect(b, &mut at, b'{')?;
    space(b, &mut at);
    while b.get(at) != Some(&b'}') {
        let name = plain_string(b, &mut at)?;
        space(b, &mut at);
        expect(b, &mut at, b':')?;
        space(b, &mut at);
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
            _ => {
                let value = at;
                skip(b, &mut at)?;
                (at > value).then_some(())?;
            }
        }
        space(b, &mut at);
        match b.get(at)? {
            b',' => {
                at += 1;
                space(b, &mut at);
                // Another member, not a trailing comma.
                (b.get(at) == Some(&b'"')).then_some(())?;
            }
            b'}' => {}
            _ => return None,
        }
    }
    at += 1;
    space(b, &mut at);
    (at == b.len()).then(|| (records.unwrap_or_default(), next_iterator.flatten()))
}

/// The elements of the `Records` array, each as where its text is.
fn record_ranges(b: &[u8], at: &mut usize) -> Option<Vec<Range<usize>>> {
    expect(b, at, b'[')?;
    space(b, at);
    // Records of a full page are 1 to 400 KB; most pages are small.
    let mut records = Vec::with_capacity(64);
    if expect(b, at, b']').is_some() {
        return Some(records);
    }
    loop {
        let start = *at;
        skip(b, at)?;
        // An element, not a trailing comma.
        (*at > start).then_some(())?;
        records.push(start..*at);
        space(b, at);
        match b.get(*at)? {
            b',' => {
                *at += 1;
                space(b, at);
            }
            b']' => {
                *at += 1;
                return Some(records);
            }
            _ => return None,
        }
    }
}

/// Steps over JSON whitespace between the page's tokens. AWS sends none, but a page spelled
/// with it is scanned too: moto's, with Python's default separators, is the one the tests and
/// the benchmark read.
fn space(b: &[u8], at: &mut usize) {
    while matches!(b.get(*at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        *at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::tests::value;
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
            // Spaced and reordered.
            format!(
                r#" {{ "NextShardIterator" : "it", "Records" : [ {record_a} , {{"eventID":"b"}} ] }} "#
            ),
            // Escaped member names: read by serde.
            format!(
                r#"{{"Next\u0053hardIterator":"it","Records":[{record_a},{{"eventID":"b"}}]}}"#
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
            r#"{"Records":[],}"#,
            r#"{"Records":[1,]}"#,
            r#"{"Records":[] , }"#,
            r#"{"Records":[],"x":}"#,
            "",
        ] {
            assert!(locate(body.as_bytes()).is_none(), "{body}");
            assert_eq!(parse(body).unwrap_err(), body);
        }
        let deep = format!(r#"{{"Records":[{}{}]}}"#, "[".repeat(129), "]".repeat(129));
        assert!(locate(deep.as_bytes()).is_none());
    }

    proptest! {
        /// The scanner finds exactly the records serde finds, in a page spelled as AWS spells
        /// it and in one with whitespace.
        #[test]
        fn the_scan_agrees_with_serde(records in prop::collection::vec(value(), 0..6), iterator in prop::option::of("[a-zA-Z0-9|:/]{1,20}"), pretty in any::<bool>()) {
            let page = serde_json::json!({
                "Records": records,
                "NextShardIterator": iterator,
            });
            let body = if pretty {
                serde_json::to_string_pretty(&page)
            } else {
                serde_json::to_string(&page)
            }
            .unwrap();
            let (ranges, next) = locate(body.as_bytes()).expect("a page");
            let found: Vec<serde_json::Value> = ranges
                .iter()
                .map(|r| serde_json::from_str(&body[r.clone()]).unwrap())
                .collect();
            prop_assert_eq!(found, records);
            prop_assert_eq!(next, iterator);
        }
    }
}

//! Taking GetRecords' records raw from the response body, under the SDK.
//!
//! The SDK decodes every record into its own types (`Record`, `AttributeValue` maps): about 18 µs
//! of CPU per 1.2 KB record, measured, which is more than the whole rest of the relay's work for
//! that record. The relay needs the records as raw JSON anyway, because the transform writes the
//! event straight from the wire's attribute values.
//!
//! So a per-call interceptor wraps a successful (200) response body: when the body has been read to
//! its end, the wrapper locates the records and the iterator in one borrowing parse, keeps the page
//! for the caller and hands the SDK a small body with only `NextShardIterator`. The SDK still signs the request, resolves credentials, retries, and
//! decodes errors (non-200 bodies are passed through untouched), so its error types and retry
//! classification stay in force. The alternatives measured and rejected are in docs/DESIGN.md.

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Where the interceptor leaves the page of the last successful attempt.
pub type Slot = Arc<Mutex<Option<RecordsPage>>>;

#[derive(Debug)]
pub struct CaptureRecords {
    slot: Slot,
}

impl CaptureRecords {
    pub fn new(slot: Slot) -> CaptureRecords {
        CaptureRecords { slot }
    }
}

impl Intercept for CaptureRecords {
    fn name(&self) -> &'static str {
        "CaptureRecords"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if response.status().as_u16() != 200 {
            return Ok(());
        }
        let inner = response.take_body();
        // Sized from Content-Length up front: growing a megabyte page by doubling copies it
        // several times. Capped, so a wrong header cannot reserve much more than a page.
        let expected = inner.size_hint().lower().min(MAX_RESERVE) as usize;
        *response.body_mut() = SdkBody::from_body_1_x(CaptureBody {
            inner,
            buf: BytesMut::with_capacity(expected),
            slot: self.slot.clone(),
            done: false,
        });
        Ok(())
    }
}

/// GetRecords pages are at most about 1 MB of records plus their JSON framing.
const MAX_RESERVE: u64 = 4 << 20;

struct CaptureBody {
    inner: SdkBody,
    buf: BytesMut,
    slot: Slot,
    done: bool,
}

impl Body for CaptureBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.done = true;
                    let full = std::mem::take(&mut self.buf).freeze();
                    // A body that is not the expected JSON goes to the SDK unchanged, so its
                    // deserializer reports the error as it would for any malformed response.
                    let small = match RecordsPage::parse(full.clone()) {
                        Ok(page) => {
                            let small = match &page.next_iterator {
                                Some(it) => Bytes::from(
                                    serde_json::to_vec(
                                        &serde_json::json!({ "NextShardIterator": it }),
                                    )
                                    .expect("a string serializes"),
                                ),
                                None => Bytes::from_static(b"{}"),
                            };
                            *self.slot.lock().expect("capture slot poisoned") = Some(page);
                            small
                        }
                        Err(_) => full,
                    };
                    return Poll::Ready(Some(Ok(Frame::data(small))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// One GetRecords response: the body and where each record's JSON lies in it.
#[derive(Debug, Clone)]
pub struct RecordsPage {
    body: Bytes,
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
    /// Locates the records and reads the iterator in one pass over the body.
    pub fn parse(body: Bytes) -> Result<RecordsPage, serde_json::Error> {
        let page: RawPage<'_> = serde_json::from_slice(&body)?;
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
            body,
            records,
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
        // The body was parsed as JSON (so UTF-8) and the ranges are whole JSON values.
        let text = std::str::from_utf8(&self.body).expect("parsed JSON is UTF-8");
        self.records.iter().map(move |r| &text[r.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_keeps_each_record_verbatim() {
        let body = Bytes::from_static(
            br#"{"Records":[{"eventID":"a","n":{"N":"1.50"}} , {"eventID":"b"}],"NextShardIterator":"it"}"#,
        );
        let page = RecordsPage::parse(body).unwrap();
        let records: Vec<_> = page.records().collect();
        assert_eq!(
            records,
            vec![r#"{"eventID":"a","n":{"N":"1.50"}}"#, r#"{"eventID":"b"}"#]
        );
        assert_eq!(page.next_iterator.as_deref(), Some("it"));
    }

    #[test]
    fn page_without_records_is_empty() {
        let page = RecordsPage::parse(Bytes::from_static(b"{}")).unwrap();
        assert!(page.is_empty());
        assert_eq!(page.next_iterator, None);
        assert!(RecordsPage::parse(Bytes::from_static(b"<html>")).is_err());
    }
}

//! The lease table's Scan answers, read by the relay under the SDK.
//!
//! Every pod scans every lease and heartbeat of its stream each round, so what reading one item
//! costs grows with leases × pods. The SDK's deserializer builds a map of `AttributeValue`s for
//! every item, each name and value in a fresh allocation, which under callgrind cost several
//! times what the rest of an idle pod's round did (docs/performance.md); serde reads the same
//! item straight into the few fields a lease has, each item turned into its lease or heartbeat
//! as it is read, so a page of a thousand leases is never held twice. So [`RawScan`], a
//! per-call interceptor, takes a successful answer's body, reads its items here, and hands the
//! SDK only `LastEvaluatedKey`. The SDK still signs, retries and decodes errors (an answer with another
//! status passes untouched), so the failure table's classes stay as they were.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::table::{KIND_SHARD, KIND_WORKER, Snapshot};
use super::{AuditEntry, Checkpoint, Heartbeat, Lease, OperatorMarks};
use crate::ids::ShardId;

/// The leases and heartbeats of the last successful answer the interceptor read, or why they
/// could not be read.
type Slot = Arc<Mutex<Option<Result<Snapshot, String>>>>;

/// One Scan call's interceptor; [`RawScan::items`] gives what it read.
#[derive(Debug, Clone, Default)]
pub(super) struct RawScan(Slot);

impl RawScan {
    /// The leases and heartbeats of the call's successful answer; an error names what could
    /// not be read. None when the call did not succeed.
    pub(super) fn page(&self) -> Option<Result<Snapshot, String>> {
        self.0.lock().expect("scan slot poisoned").take()
    }
}

impl Intercept for RawScan {
    fn name(&self) -> &'static str {
        "RawScan"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if response.status().as_u16() != 200 {
            return Ok(());
        }
        let inner = response.take_body();
        // Sized from Content-Length up front, so a page of a thousand leases is not copied
        // while it grows.
        let expected = usize::try_from(inner.size_hint().lower()).unwrap_or(0);
        *response.body_mut() = SdkBody::from_body_1_x(ReadItems {
            inner,
            buf: Vec::with_capacity(expected.min(MAX_RESERVE)),
            slot: self.0.clone(),
            done: false,
        });
        Ok(())
    }
}

/// A Scan answer is at most 1 MB of items plus their JSON framing; a wrong Content-Length
/// reserves no more than this.
const MAX_RESERVE: usize = 2 << 20;

/// The answer's body, read to its end; the SDK is given only `LastEvaluatedKey`.
struct ReadItems {
    inner: SdkBody,
    buf: Vec<u8>,
    slot: Slot,
    done: bool,
}

impl Body for ReadItems {
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
                    let (items, rest) = match serde_json::from_slice::<Page>(&self.buf) {
                        Ok(page) => {
                            let rest = match page.last_evaluated_key {
                                Some(key) => format!(r#"{{"LastEvaluatedKey":{}}}"#, key.get()),
                                None => "{}".to_owned(),
                            };
                            (Ok(page.items.0), rest)
                        }
                        Err(e) => (
                            Err(format!("a Scan answer the relay cannot read: {e}")),
                            "{}".to_owned(),
                        ),
                    };
                    *self.slot.lock().expect("scan slot poisoned") = Some(items);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
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

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(rename = "Items", default)]
    items: Items,
    #[serde(rename = "LastEvaluatedKey", borrow)]
    last_evaluated_key: Option<&'a RawValue>,
}

/// `Items`, each turned into a lease or a heartbeat as soon as it is read; items of other
/// kinds (the stream's start) and items missing what their kind needs are left out.
#[derive(Default)]
struct Items(Snapshot);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Items, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Items;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of items")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut read = Snapshot::default();
                while let Some(item) = seq.next_element::<Item>()? {
                    match item.kind.s() {
                        Some(KIND_WORKER) => read.workers.extend(item.heartbeat()),
                        Some(KIND_SHARD) => read.leases.extend(item.lease()),
                        _ => {}
                    }
                }
                Ok(Items(read))
            }
        }
        deserializer.deserialize_seq(Each)
    }
}

/// An attribute as DynamoDB's JSON writes it: the types lease items use; any other reads as
/// none of them, as an attribute of an unexpected type did through the SDK's map.
#[derive(Debug, Deserialize, Default)]
struct Attr {
    #[serde(rename = "S")]
    s: Option<String>,
    #[serde(rename = "N")]
    n: Option<String>,
    #[serde(rename = "L")]
    l: Option<Vec<Attr>>,
    #[serde(rename = "SS")]
    ss: Option<Vec<String>>,
    #[serde(rename = "M")]
    m: Option<HashMap<String, Attr>>,
}

impl Attr {
    fn s(&self) -> Option<&str> {
        self.s.as_deref()
    }

    fn owned(&self) -> Option<String> {
        self.s.clone()
    }

    fn n<T: FromStr>(&self) -> Option<T> {
        self.n.as_deref()?.parse().ok()
    }
}

/// A lease, heartbeat or stream-start item: the attributes the relay reads, any other skipped.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Item {
    kind: Attr,
    shard_id: Attr,
    owner: Attr,
    counter: Attr,
    checkpoint: Attr,
    parent_shard_ids: Attr,
    owner_switches: Attr,
    handoff_to: Attr,
    last_sequence_number: Attr,
    checkpoint_created_ms: Attr,
    replay_from_ms: Attr,
    skip_sequence_numbers: Attr,
    audit: Attr,
    worker_id: Attr,
    fingerprint: Attr,
}

impl Item {
    fn lease(&self) -> Option<Lease> {
        Some(Lease {
            shard_id: ShardId::new(self.shard_id.s()?),
            owner: self.owner.owned(),
            counter: self.counter.n()?,
            checkpoint: Checkpoint::parse(self.checkpoint.s()?),
            parent_shard_ids: self
                .parent_shard_ids
                .l
                .iter()
                .flatten()
                .filter_map(Attr::s)
                .map(ShardId::new)
                .collect(),
            owner_switches: self.owner_switches.n().unwrap_or(0),
            handoff_to: self.handoff_to.owned(),
            last_sequence_number: self.last_sequence_number.owned(),
            checkpoint_created_ms: self.checkpoint_created_ms.n(),
            operator: OperatorMarks {
                replay_from_ms: self.replay_from_ms.n(),
                skip_sequence_numbers: self.skip_sequence_numbers.ss.clone().unwrap_or_default(),
                audit: self
                    .audit
                    .l
                    .iter()
                    .flatten()
                    .filter_map(|entry| audit_entry(entry.m.as_ref()?))
                    .collect(),
            },
        })
    }

    fn heartbeat(&self) -> Option<Heartbeat> {
        Some(Heartbeat {
            worker_id: self.worker_id.owned()?,
            counter: self.counter.n()?,
            fingerprint: self.fingerprint.owned(),
        })
    }
}

fn audit_entry(fields: &HashMap<String, Attr>) -> Option<AuditEntry> {
    let field = |name: &str| fields.get(name)?.owned();
    Some(AuditEntry {
        action: field("action")?,
        by: field("by")?,
        reason: field("reason")?,
        at: field("at")?,
        change: field("change")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Snapshot {
        serde_json::from_str::<Page>(json).unwrap().items.0
    }

    #[test]
    fn a_lease_item_reads_every_field_and_skips_the_rest() {
        let page = r#"{"Count":1,"ScannedCount":1,"Items":[{
            "lease_key":{"S":"arn:aws:dynamodb:eu-central-1:1:table/t/stream/s|shardId-1"},
            "stream_arn":{"S":"arn:aws:dynamodb:eu-central-1:1:table/t/stream/s"},
            "kind":{"S":"shard"},"shard_id":{"S":"shardId-2"},"owner":{"S":"pod-a"},
            "counter":{"N":"17"},"checkpoint":{"S":"4900"},
            "parent_shard_ids":{"L":[{"S":"shardId-1"},{"NULL":true}]},
            "owner_switches":{"N":"3"},"handoff_to":{"S":"pod-b"},
            "last_sequence_number":{"S":"5000"},"checkpoint_created_ms":{"N":"-5"},
            "replay_from_ms":{"N":"1700000000000"},"skip_sequence_numbers":{"SS":["4901","4902"]},
            "audit":{"L":[{"M":{"action":{"S":"rewind"},"by":{"S":"arn:me"},"reason":{"S":"INC-1"},
                "at":{"S":"2026-12-07T05:00:00Z"},"change":{"S":"4900 → TRIM_HORIZON"}}},
                {"M":{"action":{"S":"skip"}}}]},
            "updated_at":{"S":"2026-12-07T05:00:00Z"},"extra":{"BOOL":true}}]}"#;
        let read = read(page);
        assert!(read.workers.is_empty());
        assert_eq!(
            read.leases,
            vec![Lease {
                shard_id: ShardId::new("shardId-2"),
                owner: Some("pod-a".into()),
                counter: 17,
                checkpoint: Checkpoint::Sequence("4900".into()),
                parent_shard_ids: vec![ShardId::new("shardId-1")],
                owner_switches: 3,
                handoff_to: Some("pod-b".into()),
                last_sequence_number: Some("5000".into()),
                checkpoint_created_ms: Some(-5),
                operator: OperatorMarks {
                    replay_from_ms: Some(1_700_000_000_000),
                    skip_sequence_numbers: vec!["4901".into(), "4902".into()],
                    audit: vec![AuditEntry {
                        action: "rewind".into(),
                        by: "arn:me".into(),
                        reason: "INC-1".into(),
                        at: "2026-12-07T05:00:00Z".into(),
                        change: "4900 → TRIM_HORIZON".into(),
                    }],
                },
            }]
        );
    }

    #[test]
    fn a_free_lease_of_an_earlier_version_reads_with_defaults() {
        let read = read(
            r#"{"Items":[{"kind":{"S":"shard"},"shard_id":{"S":"shardId-1"},
            "counter":{"N":"0"},"checkpoint":{"S":"TRIM_HORIZON"},"owner":{"NULL":true}}]}"#,
        );
        let lease = &read.leases[0];
        assert_eq!(lease.owner, None);
        assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon);
        assert!(lease.parent_shard_ids.is_empty());
        assert_eq!(lease.owner_switches, 0);
        assert_eq!(lease.operator, OperatorMarks::default());
    }

    #[test]
    fn items_without_what_their_kind_needs_and_other_kinds_are_left_out() {
        let read = read(
            r#"{"Items":[
            {"kind":{"S":"shard"},"shard_id":{"S":"shardId-1"},"checkpoint":{"S":"TRIM_HORIZON"}},
            {"kind":{"S":"shard"},"shard_id":{"S":"shardId-1"},"counter":{"S":"1"},"checkpoint":{"S":"x"}},
            {"kind":{"S":"worker"},"counter":{"N":"4"}},
            {"kind":{"S":"stream_start"},"initial_position":{"S":"LATEST"}},
            {"kind":{"S":"worker"},"worker_id":{"S":"pod-a"},"counter":{"N":"4"},"fingerprint":{"S":"f"}}]}"#,
        );
        assert!(read.leases.is_empty(), "{:?}", read.leases);
        assert_eq!(
            read.workers,
            vec![Heartbeat {
                worker_id: "pod-a".into(),
                counter: 4,
                fingerprint: Some("f".into()),
            }]
        );
    }

    async fn body(body: &'static str) -> (Bytes, Option<Result<Snapshot, String>>) {
        let scan = RawScan::default();
        let body = ReadItems {
            inner: SdkBody::from(body),
            buf: Vec::new(),
            slot: scan.0.clone(),
            done: false,
        };
        let rest = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        (rest, scan.page())
    }

    #[tokio::test]
    async fn the_sdk_is_handed_only_the_last_evaluated_key() {
        let (rest, page) = body(
            r#"{"Items":[{"kind":{"S":"worker"},"worker_id":{"S":"a"},"counter":{"N":"1"}}],"LastEvaluatedKey":{"lease_key":{"S":"a|b"}},"Count":1}"#,
        )
        .await;
        assert_eq!(rest, r#"{"LastEvaluatedKey":{"lease_key":{"S":"a|b"}}}"#);
        assert_eq!(page.unwrap().unwrap().workers.len(), 1);
        let (rest, page) = body(r#"{"Items":[],"Count":0}"#).await;
        assert_eq!(rest, "{}");
        let page = page.unwrap().unwrap();
        assert!(page.leases.is_empty() && page.workers.is_empty());
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_page_is_an_error_naming_it() {
        let (_, page) = body(r#"{"Items":{"not":"a list"}}"#).await;
        let error = page.unwrap().unwrap_err();
        assert!(
            error.contains("a Scan answer the relay cannot read"),
            "{error}"
        );
    }
}

//! The lease table's Scan answers, read by the relay under the SDK.
//!
//! Every pod scans every lease and heartbeat of its stream each round, so what reading one item
//! costs grows with leases × pods. The SDK's deserializer builds a map of `AttributeValue`s for
//! every item, each name and value in a fresh allocation, which under callgrind cost several
//! times what the rest of an idle pod's round did (docs/performance.md); serde reads the same
//! item straight into the few fields a lease has. So [`RawScan`], a per-call interceptor, takes
//! a successful answer's body, reads its items here, and hands the SDK only
//! `LastEvaluatedKey`. The SDK still signs, retries and decodes errors (an answer with another
//! status passes untouched), so the failure table's classes stay as they were.

use std::collections::HashMap;
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
use serde_json::value::RawValue;

use super::{AuditEntry, Checkpoint, Heartbeat, Lease, OperatorMarks};
use crate::ids::ShardId;

/// The items of the last successful answer the interceptor read, or why they could not be.
type Slot = Arc<Mutex<Option<Result<Vec<Item>, String>>>>;

/// One Scan call's interceptor; [`RawScan::items`] gives what it read.
#[derive(Debug, Clone, Default)]
pub(super) struct RawScan(Slot);

impl RawScan {
    /// The items of the call's successful answer; an error names what could not be read.
    /// None when the call did not succeed.
    pub(super) fn items(&self) -> Option<Result<Vec<Item>, String>> {
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
        *response.body_mut() = SdkBody::from_body_1_x(ReadItems {
            inner,
            buf: Vec::new(),
            slot: self.0.clone(),
            done: false,
        });
        Ok(())
    }
}

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
                            (Ok(page.items), rest)
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
    items: Vec<Item>,
    #[serde(rename = "LastEvaluatedKey", borrow)]
    last_evaluated_key: Option<&'a RawValue>,
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
pub(super) struct Item {
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
    pub(super) fn kind(&self) -> Option<&str> {
        self.kind.s()
    }

    pub(super) fn lease(&self) -> Option<Lease> {
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

    pub(super) fn heartbeat(&self) -> Option<Heartbeat> {
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

    fn items(json: &str) -> Vec<Item> {
        serde_json::from_str::<Page>(json).unwrap().items
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
        let items = items(page);
        assert_eq!(items[0].kind(), Some("shard"));
        let lease = items[0].lease().unwrap();
        assert_eq!(
            lease,
            Lease {
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
            }
        );
    }

    #[test]
    fn a_free_lease_of_an_earlier_version_reads_with_defaults() {
        let items = items(
            r#"{"Items":[{"kind":{"S":"shard"},"shard_id":{"S":"shardId-1"},
            "counter":{"N":"0"},"checkpoint":{"S":"TRIM_HORIZON"},"owner":{"NULL":true}}]}"#,
        );
        let lease = items[0].lease().unwrap();
        assert_eq!(lease.owner, None);
        assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon);
        assert!(lease.parent_shard_ids.is_empty());
        assert_eq!(lease.owner_switches, 0);
        assert_eq!(lease.operator, OperatorMarks::default());
    }

    #[test]
    fn items_without_what_a_lease_or_heartbeat_needs_are_none() {
        let items = items(
            r#"{"Items":[
            {"kind":{"S":"shard"},"shard_id":{"S":"shardId-1"},"checkpoint":{"S":"TRIM_HORIZON"}},
            {"kind":{"S":"shard"},"shard_id":{"S":"shardId-1"},"counter":{"S":"1"},"checkpoint":{"S":"x"}},
            {"kind":{"S":"worker"},"counter":{"N":"4"}},
            {"kind":{"S":"worker"},"worker_id":{"S":"pod-a"},"counter":{"N":"4"},"fingerprint":{"S":"f"}}]}"#,
        );
        assert_eq!(items[0].lease(), None);
        assert_eq!(items[1].lease(), None, "a counter of the wrong type");
        assert_eq!(items[2].heartbeat(), None);
        assert_eq!(
            items[3].heartbeat(),
            Some(Heartbeat {
                worker_id: "pod-a".into(),
                counter: 4,
                fingerprint: Some("f".into()),
            })
        );
    }

    async fn read(body: &'static str) -> (Bytes, Option<Result<Vec<Item>, String>>) {
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
        (rest, scan.items())
    }

    #[tokio::test]
    async fn the_sdk_is_handed_only_the_last_evaluated_key() {
        let (rest, items) = read(
            r#"{"Items":[{"kind":{"S":"worker"}}],"LastEvaluatedKey":{"lease_key":{"S":"a|b"}},"Count":1}"#,
        )
        .await;
        assert_eq!(rest, r#"{"LastEvaluatedKey":{"lease_key":{"S":"a|b"}}}"#);
        assert_eq!(items.unwrap().unwrap().len(), 1);
        let (rest, items) = read(r#"{"Items":[],"Count":0}"#).await;
        assert_eq!(rest, "{}");
        assert!(items.unwrap().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_page_is_an_error_naming_it() {
        let (_, items) = read(r#"{"Items":{"not":"a list"}}"#).await;
        let error = items.unwrap().unwrap_err();
        assert!(
            error.contains("a Scan answer the relay cannot read"),
            "{error}"
        );
    }
}

//! The internal re-drain loop: republishes what waits in the DLQ and deletes it once Nakadi took
//! it. It runs in every pod; SQS's visibility timeout keeps pods from working on the same
//! message at once.
//!
//! A message is received with an explicit visibility timeout ([`VISIBILITY_TIMEOUT`]) which is
//! extended every third of it for as long as its publish is in flight: one publish may retry for
//! `RELAY_NAKADI_MAX_RETRY_TIME`, longer than the timeout, and a message that became visible
//! meanwhile would be published by another pod too and count a receive towards its parking.
//!
//! A message that is the SQS Extended Client Library's pointer (a letter too large for the queue,
//! in the bucket of `RELAY_DLQ_S3_BUCKET`) is read from S3 and published like any other; once
//! Nakadi took it, the message is deleted first and the object after it: an object left behind
//! is garbage for the bucket's lifecycle rule, while a message left without its object could
//! never be published. A pointer whose object is missing stays in the queue, whose redrive
//! policy parks it.
//!
//! Each event type's batch goes through [`Delivery`], the step a shard's page goes through, with
//! two differences: done, for a message whose event Nakadi accepted, is deleting it; and an event
//! that fails again already has its dead letter in the queue, the message itself, which is kept
//! and backed off rather than written again ([`InQueue`]).
//!
//! Never a busy loop: a round ends when the queue is empty or Nakadi keeps failing, then the loop
//! waits `RELAY_DLQ_REDRAIN_INTERVAL` (longer, doubling, while Nakadi keeps failing). A rate limit
//! keeps a full queue from flooding a Nakadi that has just recovered.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::message::{GZIP, S3Pointer, decode_gzip, event_from_body};
use super::writer::DeadLetterQueue;
use crate::delivery::{Delivery, Entry, LetterQueue, Settled};
use crate::metrics::{self, METRICS};
use crate::nakadi::{Gate, Publisher, Publishing};
use crate::transform::Event;

/// Long-poll wait of one ReceiveMessage call (SQS allows up to 20 s).
const RECEIVE_WAIT_SECONDS: i32 = 1;
/// Longest visibility timeout SQS allows (12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// How long a received message stays invisible to other pods before its visibility is extended;
/// it is extended every third of this while its publish is in flight.
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Redrainer {
    pub dlq: DeadLetterQueue,
    /// A publisher per event type of the deployment's tables, in dead-letter mode even when
    /// shards block: a message that fails again stays in the queue, so waiting for it here would
    /// only stall the loop.
    pub publishers: HashMap<String, Publisher>,
    pub interval: Duration,
    /// Events per second at most.
    pub rate: u32,
    /// Visibility timeout of received messages, extended while they are published:
    /// [`VISIBILITY_TIMEOUT`] (whole seconds, at least one; tests set less).
    pub visibility: Duration,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub published: u64,
    pub failed: u64,
    pub undecodable: u64,
}

impl Redrainer {
    /// Rounds every interval until `shutdown`. A message in flight when shutdown comes stays in
    /// the queue and becomes visible again: nothing is lost by stopping anywhere.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut pause = self.interval;
        let mut parking = Parking::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            self.sample_depth(&mut parking).await;
            let report = self.round(&shutdown).await;
            if report.published + report.failed + report.undecodable > 0 {
                info!(?report, "dead-letter re-drain round done");
            }
            // Nakadi took nothing it was offered: wait longer before offering again.
            pause = if report.failed > 0 && report.published == 0 {
                (pause * 2).min(self.interval * 16)
            } else {
                self.interval
            };
        }
    }

    /// Receives and republishes until the queue is empty, Nakadi fails a whole batch, or
    /// shutdown. Used by the loop and by `redrive --once`.
    pub async fn round(&self, shutdown: &CancellationToken) -> RoundReport {
        let mut report = RoundReport::default();
        let started = Instant::now();
        while !shutdown.is_cancelled() {
            let messages = match self.receive().await {
                Ok(m) if m.is_empty() => break,
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "receiving from the dead-letter queue failed");
                    break;
                }
            };
            let batch = self.republish(&messages, shutdown).await;
            report.published += batch.published;
            report.failed += batch.failed;
            report.undecodable += batch.undecodable;
            if batch.published == 0 && batch.failed > 0 {
                break;
            }
            // The rate limit: this round may not have published faster than `rate` per second.
            let due = Duration::from_secs_f64(report.published as f64 / f64::from(self.rate));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        report
    }

    async fn receive(&self) -> Result<Vec<Message>, String> {
        let out = self
            .dlq
            .client()
            .receive_message()
            .queue_url(self.dlq.url())
            .max_number_of_messages(10)
            .wait_time_seconds(RECEIVE_WAIT_SECONDS)
            .visibility_timeout(self.visibility_seconds())
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| {
                metrics::aws_error("ReceiveMessage", "other");
                DisplayErrorContext(&e).to_string()
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn republish(&self, messages: &[Message], shutdown: &CancellationToken) -> RoundReport {
        let mut report = RoundReport::default();
        // Per event type (one per configured table), in the order received.
        let mut batches: BTreeMap<String, (Vec<Event>, Vec<&Message>)> = BTreeMap::new();
        let mut keep: Vec<&Message> = Vec::new();
        // The S3 objects of pointer messages, by receipt handle: deleted after their message.
        let mut objects: HashMap<&str, S3Pointer> = HashMap::new();
        // Reading S3 objects may take a while: other pods must not receive the messages meanwhile.
        let all: Vec<&Message> = messages.iter().collect();
        let decoded = self
            .while_invisible(
                &all,
                futures::future::join_all(messages.iter().map(|m| self.decode(m))),
            )
            .await;
        for (m, decoded) in messages.iter().zip(decoded) {
            match decoded {
                Ok(d) if self.publishers.contains_key(&d.event_type) => {
                    if let Some(object) = d.object {
                        objects.insert(m.receipt_handle().unwrap_or_default(), object);
                    }
                    let batch = batches.entry(d.event_type).or_default();
                    batch.0.push(d.event);
                    batch.1.push(m);
                }
                Ok(d) => {
                    warn!(message_id = m.message_id(), event_type = %d.event_type, "dead letter is for an event type no table of this deployment publishes; leaving it");
                    report.undecodable += 1;
                    keep.push(m);
                }
                Err(Undecoded::Never(why)) => {
                    error!(message_id = m.message_id(), %why, "dead letter cannot be republished; the queue's redrive policy will park it");
                    report.undecodable += 1;
                    keep.push(m);
                }
                Err(Undecoded::NotNow(why)) => {
                    warn!(message_id = m.message_id(), %why, "the S3 object of a dead letter could not be read; trying again later");
                    report.failed += 1;
                    keep.push(m);
                }
            }
        }
        // Other pods must not receive them while the publish retries, however long that takes.
        let in_flight: Vec<&Message> = batches.values().flat_map(|b| b.1.clone()).collect();
        let published = self
            .while_invisible(&in_flight, self.publish(&batches, shutdown))
            .await;
        let mut delete = Vec::new();
        for (m, settled) in published {
            match settled {
                // Nakadi took it: done is deleting it.
                Settled::Delivered => {
                    report.published += 1;
                    delete.push(m);
                }
                // Failed again: its letter is the message itself, which stays.
                Settled::DeadLettered | Settled::LetterNotWritten => {
                    report.failed += 1;
                    keep.push(m);
                }
                // Shutdown: the message stays in the queue and becomes visible again.
                Settled::NotSent | Settled::Skipped => {}
            }
        }
        let deleted = self.delete(&delete).await;
        self.delete_objects(
            deleted
                .iter()
                .filter_map(|m| objects.get(m.receipt_handle()?)),
        )
        .await;
        self.back_off(&keep).await;
        metrics::dlq_redrained("published", report.published);
        metrics::dlq_redrained("failed", report.failed);
        metrics::dlq_redrained("undecodable", report.undecodable);
        report
    }

    /// Delivers each event type's batch; how each message ended.
    async fn publish<'m>(
        &self,
        batches: &BTreeMap<String, (Vec<Event>, Vec<&'m Message>)>,
        shutdown: &CancellationToken,
    ) -> Vec<(&'m Message, Settled)> {
        let gate = Gate {
            deadline: shutdown,
            fence: None,
        };
        let mut published = Vec::new();
        for (event_type, (events, event_messages)) in batches {
            let delivery = Delivery {
                publisher: &self.publishers[event_type],
                dlq: &InQueue,
            };
            let entries: Vec<Entry<String>> = events.iter().map(|_| Entry::Event).collect();
            let report = delivery
                .deliver(
                    events,
                    &entries,
                    |_, failure| failure.reason.clone(),
                    Publishing::Redrain,
                    &gate,
                )
                .await;
            for (i, reason) in report.letters {
                warn!(message_id = event_messages[i].message_id(), %reason, "dead letter failed again");
            }
            published.extend(event_messages.iter().copied().zip(report.entries));
        }
        published
    }

    fn visibility_seconds(&self) -> i32 {
        self.visibility.as_secs().clamp(1, MAX_VISIBILITY.as_secs()) as i32
    }

    /// Runs `work` while extending the visibility of `messages` every third of the timeout, so
    /// they stay invisible until it returns. An extension in flight when `work` returns is
    /// finished first, so that it cannot land after the delete or back-off that follows.
    async fn while_invisible<T>(&self, messages: &[&Message], work: impl Future<Output = T>) -> T {
        let mut work = pin!(work);
        let every = Duration::from_secs(self.visibility_seconds() as u64) / 3;
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(every) => {}
            }
            let mut extend = pin!(self.change_visibility(
                messages,
                |_| Duration::from_secs(self.visibility_seconds() as u64),
                "could not extend the visibility of dead letters being re-published; another pod may publish them too",
            ));
            tokio::select! {
                out = &mut work => {
                    extend.await;
                    return out;
                }
                () = &mut extend => {}
            }
        }
    }

    /// A message that was published but could not be deleted is received and published again
    /// later: a duplicate with the same eid, never a loss. Returns the messages deleted.
    async fn delete<'m>(&self, messages: &[&'m Message]) -> Vec<&'m Message> {
        if messages.is_empty() {
            return Vec::new();
        }
        let entries = batch_entries(messages, |id, m| {
            DeleteMessageBatchRequestEntry::builder()
                .id(id)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
        });
        let result = self
            .dlq
            .client()
            .delete_message_batch()
            .queue_url(self.dlq.url())
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => {
                if !out.failed().is_empty() {
                    warn!(
                        failed = out.failed().len(),
                        "some re-drained dead letters were not deleted and will be published again"
                    );
                }
                out.successful()
                    .iter()
                    .filter_map(|e| messages.get(e.id().parse::<usize>().ok()?).copied())
                    .collect()
            }
            Err(e) => {
                metrics::aws_error("DeleteMessageBatch", "other");
                warn!(error = %DisplayErrorContext(&e), "re-drained dead letters were not deleted and will be published again");
                Vec::new()
            }
        }
    }

    /// Deletes the S3 objects of pointer messages that were published and deleted. One that
    /// stays is only garbage (the bucket's lifecycle rule removes it).
    async fn delete_objects(&self, objects: impl Iterator<Item = &S3Pointer>) {
        let Some(s3) = self.dlq.s3() else { return };
        for object in objects {
            let result = s3
                .delete_object()
                .bucket(&object.bucket)
                .key(&object.key)
                .send()
                .await;
            if let Err(e) = result {
                metrics::aws_error("DeleteObject", "other");
                warn!(bucket = %object.bucket, key = %object.key, error = %DisplayErrorContext(&e), "the S3 object of a re-drained dead letter was not deleted; the bucket's lifecycle rule will remove it");
            }
        }
    }

    /// The event of a message: its body, gzip-compressed or not, or the S3 object it points to.
    async fn decode(&self, m: &Message) -> Result<Decoded, Undecoded> {
        let body = m
            .body()
            .ok_or_else(|| Undecoded::Never("message has no body".into()))?;
        let Some(pointer) = S3Pointer::from_body(body) else {
            let (event_type, event) = decode_body(m, body).map_err(Undecoded::Never)?;
            return Ok(Decoded {
                event_type,
                event,
                object: None,
            });
        };
        let pointer = pointer.map_err(Undecoded::Never)?;
        let letter = self.read_object(&pointer).await?;
        let (event_type, event) = event_from_body(&letter).map_err(|why| {
            Undecoded::Never(format!(
                "object s3://{}/{}: {why}",
                pointer.bucket, pointer.key
            ))
        })?;
        Ok(Decoded {
            event_type,
            event,
            object: Some(pointer),
        })
    }

    /// The letter an SQS Extended Client pointer names.
    async fn read_object(&self, pointer: &S3Pointer) -> Result<String, Undecoded> {
        let at = format!("s3://{}/{}", pointer.bucket, pointer.key);
        let Some(s3) = self.dlq.s3() else {
            return Err(Undecoded::NotNow(format!(
                "{at}: the message points to S3, but the relay has no S3 client"
            )));
        };
        let out = s3
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
            .map_err(|e| {
                metrics::aws_error("GetObject", "other");
                let missing = e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    || e.code() == Some("NoSuchBucket");
                let why = format!("{at}: {}", DisplayErrorContext(&e));
                if missing {
                    Undecoded::Never(format!(
                        "{why} (the object is gone: deleted, or expired by the bucket's lifecycle rule)"
                    ))
                } else {
                    Undecoded::NotNow(why)
                }
            })?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| Undecoded::NotNow(format!("{at}: reading the object failed: {e}")))?
            .into_bytes();
        String::from_utf8(bytes.to_vec())
            .map_err(|e| Undecoded::Never(format!("{at}: the object is not UTF-8: {e}")))
    }

    /// Hides messages that failed again for longer each time they are received, so a message
    /// Nakadi keeps refusing is retried ever more rarely until the redrive policy parks it.
    async fn back_off(&self, messages: &[&Message]) {
        self.change_visibility(
            messages,
            |m| {
                let received: u32 = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                self.interval
                    .saturating_mul(1u32.checked_shl(received.min(16)).unwrap_or(u32::MAX))
                    .min(MAX_VISIBILITY)
            },
            "could not extend the visibility of failed dead letters",
        )
        .await;
    }

    /// Sets each message's visibility timeout (from now) to `visibility(message)`. A failure,
    /// of the call or of some entries, is logged with `failed_to` and counted, never fatal: at
    /// worst a message becomes visible early and is published again, with the same eid.
    async fn change_visibility(
        &self,
        messages: &[&Message],
        visibility: impl Fn(&Message) -> Duration,
        failed_to: &str,
    ) {
        if messages.is_empty() {
            return;
        }
        let entries = batch_entries(messages, |id, m| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(id)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .visibility_timeout(visibility(m).as_secs() as i32)
                .build()
        });
        let result = self
            .dlq
            .client()
            .change_message_visibility_batch()
            .queue_url(self.dlq.url())
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) if out.failed().is_empty() => {}
            Ok(out) => {
                metrics::aws_error("ChangeMessageVisibilityBatch", "other");
                let first = &out.failed()[0];
                warn!(
                    failed = out.failed().len(),
                    total = messages.len(),
                    code = first.code(),
                    error = first.message().unwrap_or_default(),
                    "{failed_to}"
                );
            }
            Err(e) => {
                metrics::aws_error("ChangeMessageVisibilityBatch", "other");
                warn!(error = %DisplayErrorContext(&e), "{failed_to}");
            }
        }
    }

    /// Samples the DLQ's depth, visible and in flight (received by a pod and hidden: being
    /// re-published, or backing off after failing again, for up to SQS's 12 hours), and, when
    /// its redrive policy names a parking queue, that queue's depth. A failed call keeps the
    /// values sampled last; it is logged and counted.
    async fn sample_depth(&self, parking: &mut Parking) {
        let result = self
            .dlq
            .client()
            .get_queue_attributes()
            .queue_url(self.dlq.url())
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await;
        let attributes = match result {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                metrics::aws_error("GetQueueAttributes", "other");
                warn!(error = %DisplayErrorContext(&e), "could not sample the dead-letter queue depth");
                return;
            }
        };
        for (state, attribute) in [
            ("visible", QueueAttributeName::ApproximateNumberOfMessages),
            (
                "in_flight",
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
        ] {
            if let Some(depth) = count(&attributes, &attribute) {
                METRICS.dlq_depth.with_label_values(&[state]).set(depth);
            }
        }
        match attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|policy| dead_letter_target(policy))
        {
            Some(arn) => {
                if let Some(depth) = parking.depth(&self.dlq, &arn).await {
                    METRICS.parking_depth.set(depth);
                }
            }
            None => {
                *parking = Parking::default();
                METRICS.parking_depth.set(0);
            }
        }
    }
}

/// One entry per message of a batch call, its id the message's index in `messages`, which is
/// how the call's answer names the entries that failed or succeeded.
fn batch_entries<T, E: std::fmt::Debug>(
    messages: &[&Message],
    entry: impl Fn(String, &Message) -> Result<T, E>,
) -> Vec<T> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| entry(i.to_string(), m).expect("id and handle are set"))
        .collect()
}

/// A queue attribute that is a count.
fn count(
    attributes: &HashMap<QueueAttributeName, String>,
    name: &QueueAttributeName,
) -> Option<i64> {
    attributes.get(name).and_then(|v| v.parse().ok())
}

/// The `deadLetterTargetArn` of a queue's `RedrivePolicy` attribute (a JSON document).
pub(crate) fn dead_letter_target(policy: &str) -> Option<String> {
    let policy: serde_json::Value = serde_json::from_str(policy).ok()?;
    policy
        .get("deadLetterTargetArn")?
        .as_str()
        .filter(|arn| !arn.is_empty())
        .map(str::to_owned)
}

/// The URL of the queue `arn` names, found with GetQueueUrl by the name and owner in the ARN:
/// how the parking queue is found from the DLQ's redrive policy.
pub(crate) async fn queue_url(client: &aws_sdk_sqs::Client, arn: &str) -> Result<String, String> {
    // arn:<partition>:sqs:<region>:<account>:<name>
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, "sqs", _, account, name] = parts[..] else {
        return Err("the redrive policy's deadLetterTargetArn is no SQS queue ARN".into());
    };
    let out = client
        .get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| {
            metrics::aws_error("GetQueueUrl", "other");
            DisplayErrorContext(&e).to_string()
        })?;
    Ok(out
        .queue_url()
        .ok_or("GetQueueUrl answered without a URL")?
        .to_owned())
}

/// The parking queue as the re-drain loop last found it: the target of the DLQ's redrive
/// policy, its URL looked up once per ARN (GetQueueUrl by name and owner, as the ARN gives them).
#[derive(Debug, Default)]
struct Parking {
    arn: String,
    url: Option<String>,
    /// The last attempt failed: logged once until a sample succeeds again.
    failing: bool,
}

impl Parking {
    /// Messages in the parking queue, visible and in flight (an operator reading parked messages
    /// hides them for a while, and they are still parked); `None` when it could not be read.
    async fn depth(&mut self, dlq: &DeadLetterQueue, arn: &str) -> Option<i64> {
        if self.arn != arn {
            *self = Parking {
                arn: arn.to_owned(),
                ..Parking::default()
            };
        }
        let result = self.sample(dlq).await;
        match &result {
            Ok(_) => self.failing = false,
            Err(why) if !self.failing => {
                self.failing = true;
                warn!(parking_queue = %self.arn, error = %why, "could not sample the parking queue's depth (the DLQ's redrive policy target); relay_parking_depth keeps its last value");
            }
            Err(_) => {}
        }
        result.ok()
    }

    async fn sample(&mut self, dlq: &DeadLetterQueue) -> Result<i64, String> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => {
                let url = queue_url(dlq.client(), &self.arn).await?;
                self.url = Some(url.clone());
                url
            }
        };
        let out = dlq
            .client()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| {
                metrics::aws_error("GetQueueAttributes", "other");
                // Looked up again next time: the queue may have been deleted and re-created.
                self.url = None;
                DisplayErrorContext(&e).to_string()
            })?;
        let attributes = out.attributes.unwrap_or_default();
        Ok(count(
            &attributes,
            &QueueAttributeName::ApproximateNumberOfMessages,
        )
        .unwrap_or(0)
            + count(
                &attributes,
                &QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )
            .unwrap_or(0))
    }
}

/// The re-drain loop's letter queue, as [`Delivery`] sees it: an event that fails again already
/// has its dead letter in the queue, the message it was read from, which is kept (and backed off)
/// instead of written again. A letter is the failure's reason, for the log.
struct InQueue;

impl LetterQueue for InQueue {
    type Letter = String;
    type Error = Infallible;

    async fn send(&self, _: &[String]) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A received message ready to publish.
struct Decoded {
    event_type: String,
    event: Event,
    /// The S3 object it came from, when the message is a pointer.
    object: Option<S3Pointer>,
}

/// Why a message cannot be published now.
enum Undecoded {
    /// It never will be (not a dead letter, a record that never became an event, a pointer
    /// whose object is gone): left for the queue's redrive policy to park.
    Never(String),
    /// Its S3 object could not be read (throttling, access denied, a network fault): it may pass.
    NotNow(String),
}

/// The event of a message body that is no pointer.
fn decode_body(m: &Message, body: &str) -> Result<(String, Event), String> {
    let gzip = m
        .message_attributes()
        .and_then(|a| a.get("content-encoding"))
        .and_then(|v| v.string_value())
        == Some(GZIP);
    if gzip {
        event_from_body(&decode_gzip(body)?)
    } else {
        event_from_body(body)
    }
}

//! Writes dead letters to SQS with SendMessageBatch.
//!
//! A letter too large for the queue even gzip-compressed goes, whole and as plain JSON, to the
//! S3 bucket of `RELAY_DLQ_S3_BUCKET` when one is set, and the queue gets the SQS Extended Client
//! Library's pointer to it ([`S3Pointer`]); without a bucket it fails with
//! [`DlqError::TooLarge`] and the shard waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::builders::SendMessageBatchRequestEntryBuilder;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use tracing::{info, warn};

use super::message::{DeadLetter, EXTENDED_PAYLOAD_SIZE, GZIP, S3Pointer, encode_gzip};
use crate::delivery::LetterQueue;
use crate::metrics;

/// SendMessageBatch takes at most ten entries.
const MAX_ENTRIES: usize = 10;
/// Room left for the message attributes, which count towards the queue's size limit.
const ATTRIBUTE_ROOM: usize = 1024;

/// The largest MaximumMessageSize SQS allows.
pub const SQS_MAX_MESSAGE_BYTES: usize = 1_048_576;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// SQS says the queue does not exist: a setting to fix, not a fault to wait out.
    #[error("dead-letter queue {url} does not exist")]
    Missing { url: String },
    /// Throttling, 5xx, timeouts, connection errors, access denied: may pass.
    #[error("dead-letter queue {url} is not reachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("SQS refused {failed} of {total} dead letters: {message}")]
    Refused {
        failed: usize,
        total: usize,
        message: String,
    },
    /// Even gzip-compressed the letter does not fit the queue, whose limit was just read again:
    /// the shard waits until an operator raises it.
    #[error(
        "the dead letter of {record} is {bytes} bytes gzip-compressed, {needed} bytes with room for its attributes, over the MaximumMessageSize of {limit} bytes of queue {url}: {advice}"
    )]
    TooLarge {
        /// Names the record: eid, shard, sequence number.
        record: String,
        url: String,
        bytes: usize,
        needed: usize,
        limit: usize,
        /// What the operator can do.
        advice: String,
    },
    /// The letter does not fit the queue even gzip-compressed, and putting it to the bucket
    /// failed (throttling, access denied, no such bucket): the shard waits and retries.
    #[error(
        "the dead letter of {record} does not fit queue {url} even gzip-compressed, and putting it to s3://{bucket}/{key} failed: {message}"
    )]
    Offload {
        record: String,
        url: String,
        bucket: String,
        key: String,
        message: String,
    },
}

#[derive(Clone)]
pub struct DeadLetterQueue {
    client: Client,
    url: String,
    /// The queue's MaximumMessageSize, also the limit of one batch call: read at start and again
    /// whenever a letter does not fit, so raising it unblocks every clone without a restart.
    max_bytes: Arc<AtomicUsize>,
    /// Reads the objects of pointers in the re-drain loop, and writes letters too large for the
    /// queue when `bucket` is set.
    s3: Option<aws_sdk_s3::Client>,
    /// RELAY_DLQ_S3_BUCKET.
    bucket: Option<String>,
}

/// Where the shard worker and the snapshot write their dead letters.
impl LetterQueue for DeadLetterQueue {
    type Letter = DeadLetter;
    type Error = DlqError;

    fn send(&self, letters: &[DeadLetter]) -> impl Future<Output = Result<(), DlqError>> + Send {
        DeadLetterQueue::send(self, letters)
    }
}

impl DeadLetterQueue {
    /// Reads the queue's size limit; fails when the queue does not exist or cannot be reached,
    /// which the binary reports as a configuration error before anything starts.
    pub async fn connect(client: Client, url: String) -> Result<DeadLetterQueue, DlqError> {
        let max_bytes = read_max_bytes(&client, &url).await?;
        Ok(DeadLetterQueue {
            client,
            url,
            max_bytes: Arc::new(AtomicUsize::new(max_bytes)),
            s3: None,
            bucket: None,
        })
    }

    /// Letters too large for the queue even gzip-compressed go to `bucket` (RELAY_DLQ_S3_BUCKET)
    /// when it is set. The client is also what the re-drain loop reads pointers with, so it is
    /// needed without a bucket too: pointers written while one was configured still wait.
    pub fn with_s3(mut self, s3: aws_sdk_s3::Client, bucket: Option<String>) -> DeadLetterQueue {
        self.s3 = Some(s3);
        self.bucket = bucket;
        self
    }

    /// The S3 client the re-drain loop reads pointers with.
    pub fn s3(&self) -> Option<&aws_sdk_s3::Client> {
        self.s3.as_ref()
    }

    /// The queue's MaximumMessageSize as last read.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends every letter, or fails: the caller must not checkpoint past them until this is Ok.
    /// A letter too large even gzip-compressed makes it read the queue's limit again (an
    /// operator may have raised it since); if it still does not fit, it goes to the bucket with
    /// a pointer in the queue, or, without a bucket, fails with [`DlqError::TooLarge`].
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), DlqError> {
        let entries = match self.entries(letters, None).await {
            Err(DlqError::TooLarge { .. }) => {
                self.reread_max_bytes().await;
                let bucket = self.s3.as_ref().zip(self.bucket.as_deref());
                self.entries(letters, bucket).await?
            }
            other => other?,
        };
        let max_bytes = self.max_bytes();
        let mut batch: Vec<(SendMessageBatchRequestEntry, usize)> = Vec::new();
        let mut batch_bytes = 0;
        for (entry, size) in entries {
            if batch.len() == MAX_ENTRIES || (batch_bytes + size > max_bytes && !batch.is_empty()) {
                self.send_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push((entry, size));
        }
        if !batch.is_empty() {
            self.send_batch(batch).await?;
        }
        for letter in letters {
            metrics::dlq_sent(letter.reason);
        }
        Ok(())
    }

    /// The entries of `letters` for the limit as last read; with a `bucket` (and its client), a
    /// letter too large even gzip-compressed is put to it and its entry is the pointer. Every
    /// object is put before any message is sent, so no pointer ever names an object not yet
    /// written. An object whose send then fails is left behind (the caller sends the whole set
    /// again, to new objects): garbage for the bucket's lifecycle rule, never a loss.
    async fn entries(
        &self,
        letters: &[DeadLetter],
        bucket: Option<(&aws_sdk_s3::Client, &str)>,
    ) -> Result<Vec<(SendMessageBatchRequestEntry, usize)>, DlqError> {
        let max_bytes = self.max_bytes();
        let mut entries = Vec::with_capacity(letters.len());
        // Entry ids only need to be unique within one call.
        for (i, letter) in letters.iter().enumerate() {
            entries.push(match (self.entry(i, letter, max_bytes), bucket) {
                (Err(DlqError::TooLarge { .. }), Some((s3, bucket))) => {
                    self.offload(i, letter, s3, bucket).await?
                }
                (other, _) => other?,
            });
        }
        Ok(entries)
    }

    /// Reads the queue's MaximumMessageSize again; on failure the last value stays.
    async fn reread_max_bytes(&self) {
        match read_max_bytes(&self.client, &self.url).await {
            Ok(max_bytes) => {
                let before = self.max_bytes.swap(max_bytes, Ordering::Relaxed);
                if before != max_bytes {
                    info!(
                        url = %self.url,
                        before,
                        now = max_bytes,
                        "the dead-letter queue's MaximumMessageSize changed"
                    );
                }
            }
            Err(e) => {
                warn!(error = %e, "could not read the dead-letter queue's MaximumMessageSize again")
            }
        }
    }

    fn entry(
        &self,
        i: usize,
        letter: &DeadLetter,
        max_bytes: usize,
    ) -> Result<(SendMessageBatchRequestEntry, usize), DlqError> {
        let limit = body_limit(max_bytes);
        let (mut entry, _) = with_attributes(letter);
        let body = if letter.body.len() <= limit {
            letter.body.clone()
        } else {
            let compressed = encode_gzip(&letter.body);
            if compressed.len() > limit {
                let needed = compressed.len() + ATTRIBUTE_ROOM;
                return Err(DlqError::TooLarge {
                    record: letter.describe(),
                    url: self.url.clone(),
                    bytes: compressed.len(),
                    needed,
                    limit: max_bytes,
                    advice: if needed <= SQS_MAX_MESSAGE_BYTES {
                        format!(
                            "raise the queue's MaximumMessageSize to at least {needed} (SQS allows up to {SQS_MAX_MESSAGE_BYTES}), or set RELAY_DLQ_S3_BUCKET so that such letters go to S3; the relay reads the limit again on every attempt, and the shard waits without checkpointing until then"
                        )
                    } else {
                        format!(
                            "that is more than any SQS queue takes ({SQS_MAX_MESSAGE_BYTES} bytes), so it cannot be dead-lettered without RELAY_DLQ_S3_BUCKET (letters too large for the queue then go to S3); the shard waits without checkpointing"
                        )
                    },
                });
            }
            entry = entry.message_attributes("content-encoding", string_attribute(GZIP));
            compressed
        };
        let size = body.len() + ATTRIBUTE_ROOM;
        let entry = entry
            .id(i.to_string())
            .message_body(body)
            .build()
            .expect("id and body are set");
        Ok((entry, size))
    }

    /// Puts the letter to the bucket, whole and as plain JSON; its entry is the SQS Extended
    /// Client Library's pointer with the letter's own attributes and `ExtendedPayloadSize`.
    async fn offload(
        &self,
        i: usize,
        letter: &DeadLetter,
        s3: &aws_sdk_s3::Client,
        bucket: &str,
    ) -> Result<(SendMessageBatchRequestEntry, usize), DlqError> {
        let key = S3Pointer::key_for(letter);
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/json")
            .body(aws_sdk_s3::primitives::ByteStream::from(
                letter.body.clone().into_bytes(),
            ))
            .send()
            .await
            .map_err(|e| {
                metrics::aws_error("PutObject", "other");
                DlqError::Offload {
                    record: letter.describe(),
                    url: self.url.clone(),
                    bucket: bucket.to_owned(),
                    key: key.clone(),
                    message: DisplayErrorContext(&e).to_string(),
                }
            })?;
        info!(
            record = %letter.describe(),
            bytes = letter.body.len(),
            limit = self.max_bytes(),
            bucket = %bucket,
            key = %key,
            "a dead letter too large for the queue even gzip-compressed went to S3; the queue holds a pointer to it"
        );
        let size = letter.body.len().to_string();
        let (entry, attributes_bytes) = with_attributes(letter);
        let body = S3Pointer {
            bucket: bucket.to_owned(),
            key,
        }
        .to_body();
        // Counted as SQS counts them: body, and each attribute's name, type and value.
        let bytes = body.len()
            + attributes_bytes
            + EXTENDED_PAYLOAD_SIZE.len()
            + "Number".len()
            + size.len();
        let entry = entry
            .message_attributes(
                EXTENDED_PAYLOAD_SIZE,
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(size)
                    .build()
                    .expect("data type is set"),
            )
            .id(i.to_string())
            .message_body(body)
            .build()
            .expect("id and body are set");
        Ok((entry, bytes))
    }

    async fn send_batch(
        &self,
        batch: Vec<(SendMessageBatchRequestEntry, usize)>,
    ) -> Result<(), DlqError> {
        let total = batch.len();
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch.into_iter().map(|(e, _)| e).collect()))
            .send()
            .await
            .map_err(|e| {
                metrics::aws_error("SendMessageBatch", "other");
                DlqError::Unreachable {
                    url: self.url.clone(),
                    message: DisplayErrorContext(&e).to_string(),
                }
            })?;
        // The caller retries the whole set: re-sending the entries that did go through makes
        // duplicates in the queue, which the eid makes harmless; leaving one out would lose it.
        if let Some(first) = out.failed().first() {
            metrics::aws_error("SendMessageBatch", "other");
            return Err(DlqError::Refused {
                failed: out.failed().len(),
                total,
                message: format!("{}: {}", first.code(), first.message().unwrap_or_default()),
            });
        }
        Ok(())
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// An entry with the attributes every dead letter carries (event_type, reason, eid), so the
/// re-drain loop and operators can filter; and their size as SQS counts it.
fn with_attributes(letter: &DeadLetter) -> (SendMessageBatchRequestEntryBuilder, usize) {
    let mut attributes = vec![
        ("event_type", letter.event_type.as_str()),
        ("reason", letter.reason),
    ];
    if let Some(eid) = &letter.eid {
        attributes.push(("eid", eid));
    }
    let mut entry = SendMessageBatchRequestEntry::builder();
    let mut bytes = 0;
    for (name, value) in attributes {
        bytes += name.len() + "String".len() + value.len();
        entry = entry.message_attributes(name, string_attribute(value));
    }
    (entry, bytes)
}

/// The queue's MaximumMessageSize (SQS's default when it does not say).
async fn read_max_bytes(client: &Client, url: &str) -> Result<usize, DlqError> {
    queue_attributes(client, url, &[QueueAttributeName::MaximumMessageSize])
        .await
        .map(|attributes| max_bytes_of(&attributes))
}

/// The queue's MaximumMessageSize among `attributes`, SQS's default when they do not say.
pub(crate) fn max_bytes_of(attributes: &HashMap<QueueAttributeName, String>) -> usize {
    attributes
        .get(&QueueAttributeName::MaximumMessageSize)
        .and_then(|v| v.parse().ok())
        .unwrap_or(262_144)
}

/// The largest body that goes into a queue of MaximumMessageSize `max_bytes` as it is; a larger
/// one is gzip-compressed first.
pub(crate) fn body_limit(max_bytes: usize) -> usize {
    max_bytes.saturating_sub(ATTRIBUTE_ROOM)
}

/// The queue's `names` attributes; a queue that does not exist is told apart from one that
/// cannot be reached.
pub(crate) async fn queue_attributes(
    client: &Client,
    url: &str,
    names: &[QueueAttributeName],
) -> Result<HashMap<QueueAttributeName, String>, DlqError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .set_attribute_names(Some(names.to_vec()))
        .send()
        .await
        .map_err(|e| {
            metrics::aws_error("GetQueueAttributes", "other");
            let missing = e
                .as_service_error()
                .is_some_and(|s| s.is_queue_does_not_exist())
                || e.code() == Some("AWS.SimpleQueueService.NonExistentQueue");
            if missing {
                DlqError::Missing {
                    url: url.to_owned(),
                }
            } else {
                DlqError::Unreachable {
                    url: url.to_owned(),
                    message: DisplayErrorContext(&e).to_string(),
                }
            }
        })?;
    Ok(out.attributes.unwrap_or_default())
}

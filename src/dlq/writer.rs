//! Writes dead letters to SQS with SendMessageBatch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use tracing::{info, warn};

use super::message::{DeadLetter, GZIP, encode_gzip};
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
}

#[derive(Clone)]
pub struct DeadLetterQueue {
    client: Client,
    url: String,
    /// The queue's MaximumMessageSize, also the limit of one batch call: read at start and again
    /// whenever a letter does not fit, so raising it unblocks every clone without a restart.
    max_bytes: Arc<AtomicUsize>,
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
        })
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
    /// A letter too large even gzip-compressed fails with [`DlqError::TooLarge`], after reading
    /// the queue's limit again (an operator may have raised it since).
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), DlqError> {
        let entries = match self.entries(letters) {
            Err(DlqError::TooLarge { .. }) => {
                self.reread_max_bytes().await;
                self.entries(letters)?
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

    /// The entries of `letters` for the limit as last read.
    fn entries(
        &self,
        letters: &[DeadLetter],
    ) -> Result<Vec<(SendMessageBatchRequestEntry, usize)>, DlqError> {
        let max_bytes = self.max_bytes();
        letters
            .iter()
            .enumerate()
            // Entry ids only need to be unique within one call.
            .map(|(i, letter)| self.entry(i, letter, max_bytes))
            .collect()
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
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let limit = max_bytes.saturating_sub(ATTRIBUTE_ROOM);
        let mut entry = SendMessageBatchRequestEntry::builder()
            .message_attributes("event_type", attr(&letter.event_type))
            .message_attributes("reason", attr(letter.reason));
        if let Some(eid) = &letter.eid {
            entry = entry.message_attributes("eid", attr(eid));
        }
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
                            "raise the queue's MaximumMessageSize to at least {needed} (SQS allows up to {SQS_MAX_MESSAGE_BYTES}); the relay reads it again on every attempt, and the shard waits without checkpointing until then"
                        )
                    } else {
                        format!(
                            "that is more than any SQS queue takes ({SQS_MAX_MESSAGE_BYTES} bytes), so it cannot be dead-lettered; the shard waits without checkpointing"
                        )
                    },
                });
            }
            entry = entry.message_attributes("content-encoding", attr(GZIP));
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

/// The queue's MaximumMessageSize (SQS's default when it does not say).
async fn read_max_bytes(client: &Client, url: &str) -> Result<usize, DlqError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
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
    Ok(out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
        .and_then(|v| v.parse().ok())
        .unwrap_or(262_144))
}

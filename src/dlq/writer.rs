//! Writes dead letters to SQS with SendMessageBatch.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};

use super::message::{DeadLetter, GZIP, encode_gzip};
use crate::metrics;

/// SendMessageBatch takes at most ten entries.
const MAX_ENTRIES: usize = 10;
/// Room left for the message attributes, which count towards the queue's size limit.
const ATTRIBUTE_ROOM: usize = 1024;

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
    #[error(
        "a dead letter of {bytes} bytes exceeds the queue's MaximumMessageSize of {limit} bytes even gzip-compressed"
    )]
    TooLarge { bytes: usize, limit: usize },
}

#[derive(Clone)]
pub struct DeadLetterQueue {
    client: Client,
    url: String,
    /// The queue's MaximumMessageSize, read at start: also the limit of one batch call.
    max_bytes: usize,
}

impl DeadLetterQueue {
    /// Reads the queue's size limit; fails when the queue does not exist or cannot be reached,
    /// which the binary reports as a configuration error before anything starts.
    pub async fn connect(client: Client, url: String) -> Result<DeadLetterQueue, DlqError> {
        let out = client
            .get_queue_attributes()
            .queue_url(&url)
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
                    DlqError::Missing { url: url.clone() }
                } else {
                    DlqError::Unreachable {
                        url: url.clone(),
                        message: DisplayErrorContext(&e).to_string(),
                    }
                }
            })?;
        let max_bytes = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
            .and_then(|v| v.parse().ok())
            .unwrap_or(262_144);
        Ok(DeadLetterQueue {
            client,
            url,
            max_bytes,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends every letter, or fails: the caller must not checkpoint past them until this is Ok.
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), DlqError> {
        let mut entries = Vec::with_capacity(letters.len());
        for (i, letter) in letters.iter().enumerate() {
            // Entry ids only need to be unique within one call.
            entries.push(self.entry(i, letter)?);
        }
        let mut batch: Vec<(SendMessageBatchRequestEntry, usize)> = Vec::new();
        let mut batch_bytes = 0;
        for (entry, size) in entries {
            if batch.len() == MAX_ENTRIES
                || (batch_bytes + size > self.max_bytes && !batch.is_empty())
            {
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

    fn entry(
        &self,
        i: usize,
        letter: &DeadLetter,
    ) -> Result<(SendMessageBatchRequestEntry, usize), DlqError> {
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let limit = self.max_bytes - ATTRIBUTE_ROOM;
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
                return Err(DlqError::TooLarge {
                    bytes: compressed.len(),
                    limit: self.max_bytes,
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

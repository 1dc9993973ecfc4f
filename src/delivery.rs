//! The delivery step, written once: publish a page's events, dead-letter what finally failed,
//! and say how much of the page is safe to checkpoint.
//!
//! The shard worker and the snapshot both hand it a page of [`Entry`]s in source order and
//! checkpoint in their own terms (a lease's sequence number, a segment's scan key); the
//! difference between them is only how a failed event becomes a dead letter, which the caller
//! passes in.
//!
//! What it guarantees: an entry counts as done only when its event was accepted by Nakadi, or its
//! dead letter is in the queue, or it needed nothing (filtered). [`Report::done`] is the length of
//! the page's done *prefix*: a checkpoint after it never skips an entry that is not done. When
//! the gate closes (drain deadline, self-fence) the prefix may be shorter than the page, and the
//! rest is left to whoever continues, with the same eids.

use tokio::time::Instant;
use tracing::error;

use crate::dlq::{DeadLetter, DeadLetterQueue};
use crate::metrics::METRICS;
use crate::nakadi::{Failure, Gate, Halt, Outcome, PublishContext, Publisher};
use crate::retry::Backoff;
use crate::transform::Event;

/// One position of a page, in source order.
#[derive(Debug)]
pub enum Entry {
    /// To publish: the next of the page's events, in order.
    Event,
    /// Cannot become an event (malformed record): dead-lettered as it is. Boxed: letters are
    /// rare, and an entry is written for every record of every page.
    Letter(Box<DeadLetter>),
    /// Needs nothing (filtered out); done as soon as everything before it is.
    Skipped,
}

/// What a delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// How many entries from the start of the page are done.
    pub done: usize,
    /// Events Nakadi accepted, within the done prefix.
    pub delivered: u64,
    /// Dead letters written, within the done prefix.
    pub dead_lettered: u64,
    /// Why the page is not done to its end; `None` when `done` is the whole page.
    pub halted: Option<Halt>,
}

/// The publisher and the queue of one event type.
pub struct Delivery<'a> {
    pub publisher: &'a Publisher,
    pub dlq: &'a DeadLetterQueue,
}

impl Delivery<'_> {
    /// Delivers `entries`, whose [`Entry::Event`]s are `events` in order. `letter` turns an event Nakadi finally refused into its dead letter.
    /// Dead letters are retried until the queue takes them (failure table: "DLQ write fails":
    /// no checkpoint, the shard waits) or the gate closes.
    pub async fn deliver(
        &self,
        events: &[Event],
        entries: &[Entry],
        letter: impl Fn(&Event, &Failure) -> DeadLetter,
        ctx: &PublishContext<'_>,
        gate: &Gate<'_>,
    ) -> Report {
        let mut outcomes = events
            .iter()
            .zip(self.publisher.publish(events, ctx, gate).await);

        let mut report = Report::default();
        let mut letters = Vec::new();
        // Where each letter sits in the page: if the queue cannot take them, the done prefix ends
        // before the first.
        let mut first_letter_at = None;
        for (i, entry) in entries.iter().enumerate() {
            let new_letter = match entry {
                Entry::Skipped => None,
                Entry::Letter(l) => Some(DeadLetter::clone(l)),
                Entry::Event => match outcomes.next().expect("one outcome per event") {
                    (_, Outcome::Delivered) => {
                        report.delivered += 1;
                        None
                    }
                    (event, Outcome::Failed(failure)) => Some(letter(event, &failure)),
                    (_, Outcome::NotSent(halt)) => {
                        report.halted = Some(halt);
                        break;
                    }
                },
            };
            if let Some(l) = new_letter {
                first_letter_at.get_or_insert(i);
                letters.push(l);
            }
            report.done = i + 1;
        }
        if !letters.is_empty() {
            match self.dead_letter(&letters, gate).await {
                Ok(()) => report.dead_lettered = letters.len() as u64,
                Err(halt) => {
                    report.done = first_letter_at.expect("letters have a place");
                    report.halted = Some(halt);
                    // Before the first letter every event was accepted.
                    report.delivered = entries[..report.done]
                        .iter()
                        .filter(|e| matches!(e, Entry::Event))
                        .count() as u64;
                }
            }
        }
        report
    }

    /// Retries until the queue has every letter, or the gate closes.
    async fn dead_letter(&self, letters: &[DeadLetter], gate: &Gate<'_>) -> Result<(), Halt> {
        let mut attempt = 0;
        let mut blocked = None;
        loop {
            if let Some(halt) = gate.halted() {
                return Err(halt);
            }
            match self.dlq.send(letters).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    METRICS.dlq_write_failures.inc();
                    blocked.get_or_insert_with(Blocked::new);
                    error!(error = %e, letters = letters.len(), attempt, "writing to the dead-letter queue failed; the shard waits and retries without checkpointing");
                }
            }
            let delay = Backoff::AWS.delay(attempt, None);
            attempt += 1;
            let until = Instant::now() + delay;
            tokio::select! {
                _ = gate.deadline.cancelled() => return Err(Halt::Deadline),
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// A shard waiting on the dead-letter queue, for `relay_shards_blocked`; counted while alive.
struct Blocked;

impl Blocked {
    fn new() -> Blocked {
        METRICS.shards_blocked.inc();
        Blocked
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        METRICS.shards_blocked.dec();
    }
}

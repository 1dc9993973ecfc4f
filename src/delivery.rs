//! The delivery step, written once: publish a page's events, dead-letter what finally failed,
//! and say how much of the page is done.
//!
//! Three callers hand it a page of [`Entry`]s in source order: the shard worker and the snapshot
//! checkpoint the done prefix in their own terms (a lease's sequence number, a segment's scan
//! key); the DLQ re-drain loop settles each message on its own (deletes what Nakadi accepted,
//! keeps what failed again). What differs between them is passed in: how a failed event becomes
//! a dead letter (the `letter` function) and where letters go (a [`LetterQueue`]: SQS for the
//! shard worker and the snapshot; for the re-drain loop the queue the letter already is in).
//! [`Publish`] and [`LetterQueue`] are also the seams the tests plug their fakes into.
//!
//! What it guarantees: an entry counts as done only when its event was accepted by Nakadi, or its
//! dead letter is in the queue, or it needed nothing (filtered). [`Report::done`] is the length of
//! the page's done *prefix*: a checkpoint after it never skips an entry that is not done. When
//! the gate closes (drain deadline, self-fence) the prefix may be shorter than the page, and the
//! rest is left to whoever continues, with the same eids.

use std::fmt::Display;

use tokio::time::Instant;
use tracing::error;

use crate::metrics::METRICS;
use crate::nakadi::{Failure, Gate, Halt, Outcome, Publisher, Publishing};
use crate::retry::Backoff;
use crate::transform::Event;

#[cfg(test)]
mod tests;

/// Publishes events to Nakadi: the [`Publisher`] (fakes in the tests).
pub trait Publish: Sync {
    /// One outcome per event, in the same order; see [`Publisher::publish`].
    fn publish(
        &self,
        events: &[Event],
        who: Publishing<'_>,
        gate: &Gate<'_>,
    ) -> impl Future<Output = Vec<Outcome>> + Send;
}

impl Publish for Publisher {
    fn publish(
        &self,
        events: &[Event],
        who: Publishing<'_>,
        gate: &Gate<'_>,
    ) -> impl Future<Output = Vec<Outcome>> + Send {
        Publisher::publish(self, events, who, gate)
    }
}

/// Where the dead letters of a delivery go: the SQS dead-letter queue (`dlq::DeadLetterQueue`),
/// or, for the re-drain loop, nowhere new (its letters are already in the queue).
pub trait LetterQueue: Sync {
    type Letter: Clone + Send + Sync;
    type Error: Display;
    /// Writes every letter, or fails: no letter counts as written until this is `Ok`.
    fn send(
        &self,
        letters: &[Self::Letter],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// One position of a page, in source order.
#[derive(Debug)]
pub enum Entry<L> {
    /// To publish: the next of the page's events, in order.
    Event,
    /// Cannot become an event (malformed record): dead-lettered as it is. Boxed: letters are
    /// rare, and an entry is written for every record of every page.
    Letter(Box<L>),
    /// Needs nothing (filtered out); done as soon as everything before it is.
    Skipped,
}

/// What a delivery did: the done prefix, and how each entry ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<L> {
    /// How many entries from the start of the page are done.
    pub done: usize,
    /// Events Nakadi accepted, within the done prefix.
    pub delivered: u64,
    /// Dead letters written, within the done prefix.
    pub dead_lettered: u64,
    /// Why the page is not done to its end; `None` when `done` is the whole page.
    pub halted: Option<Halt>,
    /// How each entry ended, in page order.
    pub entries: Vec<Settled>,
    /// The letter of each entry that ended [`Settled::DeadLettered`] or
    /// [`Settled::LetterNotWritten`], with the entry's position, in page order.
    pub letters: Vec<(usize, L)>,
}

/// How one entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nakadi accepted its event.
    Delivered,
    /// Its dead letter is in the queue.
    DeadLettered,
    /// It needed nothing.
    Skipped,
    /// Its dead letter is due (the event finally failed, or the entry was a letter) but was not
    /// written: the gate closed first, or before the queue took it. Not done.
    LetterNotWritten,
    /// Its event was not decided before the gate closed. Not done.
    NotSent,
}

impl Settled {
    fn is_done(self) -> bool {
        matches!(
            self,
            Settled::Delivered | Settled::DeadLettered | Settled::Skipped
        )
    }
}

/// The publisher and the letter queue of one event type.
pub struct Delivery<'a, P, Q> {
    pub publisher: &'a P,
    pub dlq: &'a Q,
}

impl<P: Publish, Q: LetterQueue> Delivery<'_, P, Q> {
    /// Delivers `entries`, whose [`Entry::Event`]s are `events` in order, and reports the done
    /// prefix and how each entry ended. `letter` turns an event Nakadi finally refused into its
    /// dead letter.
    ///
    /// Letters due before the gate closed are written together, retried until the queue takes
    /// them (failure table: "DLQ write fails": no checkpoint, the shard waits) or the gate
    /// closes. Letters after an undecided event are not written: the entries are not in the done
    /// prefix, and whoever continues publishes them again. An event Nakadi accepted after an
    /// undecided one still ends [`Settled::Delivered`], outside the prefix.
    pub async fn deliver(
        &self,
        events: &[Event],
        entries: &[Entry<Q::Letter>],
        letter: impl Fn(&Event, &Failure) -> Q::Letter,
        who: impl Into<Publishing<'_>>,
        gate: &Gate<'_>,
    ) -> Report<Q::Letter> {
        let mut outcomes = events
            .iter()
            .zip(self.publisher.publish(events, who.into(), gate).await);

        let mut settled = Vec::with_capacity(entries.len());
        // The letters due, and where each sits in the page.
        let mut letters = Vec::new();
        let mut positions = Vec::new();
        // The first undecided event's halt: letters from there on are not written.
        let mut halted = None;
        // The letters due before it, the first of `letters`.
        let mut to_write = 0;
        for (i, entry) in entries.iter().enumerate() {
            let due = match entry {
                Entry::Skipped => {
                    settled.push(Settled::Skipped);
                    continue;
                }
                Entry::Letter(l) => Q::Letter::clone(l),
                Entry::Event => match outcomes.next().expect("one outcome per event") {
                    (_, Outcome::Delivered) => {
                        settled.push(Settled::Delivered);
                        continue;
                    }
                    (event, Outcome::Failed(failure)) => letter(event, &failure),
                    (_, Outcome::NotSent(halt)) => {
                        halted.get_or_insert(halt);
                        settled.push(Settled::NotSent);
                        continue;
                    }
                },
            };
            if halted.is_some() {
                settled.push(Settled::LetterNotWritten);
            } else {
                settled.push(Settled::DeadLettered);
                to_write += 1;
            }
            letters.push(due);
            positions.push(i);
        }
        if to_write > 0
            && let Err(halt) = self.dead_letter(&letters[..to_write], gate).await
        {
            halted = Some(halt);
            for &i in &positions[..to_write] {
                settled[i] = Settled::LetterNotWritten;
            }
        }

        let done = settled
            .iter()
            .position(|s| !s.is_done())
            .unwrap_or(settled.len());
        let count = |what| settled[..done].iter().filter(|s| **s == what).count() as u64;
        Report {
            done,
            delivered: count(Settled::Delivered),
            dead_lettered: count(Settled::DeadLettered),
            halted: if done < settled.len() { halted } else { None },
            entries: settled,
            letters: positions.into_iter().zip(letters).collect(),
        }
    }

    /// Retries until the queue has every letter, or the gate closes.
    async fn dead_letter(&self, letters: &[Q::Letter], gate: &Gate<'_>) -> Result<(), Halt> {
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

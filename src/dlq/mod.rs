//! The SQS dead-letter queue: what finally failed is kept there whole (the event itself, not a
//! pointer to a stream record that expires after 24 hours), and the re-drain loop publishes it
//! again once Nakadi takes it.
//!
//! `message` is the message format (pure), `writer` sends messages, `redrain` is the loop.

pub mod message;
pub mod redrain;
pub mod writer;

pub use message::{DeadLetter, Origin};
pub use redrain::Redrainer;
pub use writer::{DeadLetterQueue, DlqError};

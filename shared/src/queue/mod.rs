//! The SQS FIFO queue the intake and reconciler write to, and the dead-letter queue the worker
//! parks permanent failures in.
//!
//! SQS refuses what this module's types cannot hold, and both implementations ([`SqsQueue`] on
//! AWS, [`MemoryQueue`] in process) go through the same checks, so a breach fails a test even
//! where an emulator would let it pass:
//! - `MessageGroupId` and `MessageDeduplicationId`: 1–128 characters from `a-zA-Z0-9` and
//!   ``!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~`` ([`MessageGroupId`], [`DedupId`]). Commands derive
//!   theirs from hashes (a person's group from their email, a video's from its id), so an address
//!   with non-ASCII characters or of any length always has a valid group;
//! - message bodies and attribute values: only the characters `#x9 | #xA | #xD | #x20-#xD7FF |
//!   #xE000-#xFFFD | #x10000-#x10FFFF` ([`check_body`], [`attribute_text`]);
//! - a visibility timeout of 0–43 200 seconds, at most 10 entries per batch call.

use sha2::{Digest, Sha256};
use thiserror::Error;

use async_trait::async_trait;

use crate::commands::SyncCommand;
use crate::identity::Email;

pub mod memory;
pub mod sqs;

pub use memory::{MemoryQueue, ParkedMessage, SentMessage, VisibilityDelay};
pub use sqs::SqsQueue;

/// SQS takes at most 10 entries per batch call.
pub const SQS_BATCH_MAX: usize = 10;

/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY_SECS: i32 = 43_200;

/// How many characters of a parked message's reason travel as its attribute.
pub const REASON_MAX_CHARS: usize = 1000;

/// The longest group or deduplication id SQS accepts.
pub const ID_MAX_CHARS: usize = 128;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum QueueError {
    #[error("the queue did not accept {failed} of {total} message(s): {reason}")]
    Rejected { failed: usize, total: usize, reason: String },
    #[error("could not reach the queue: {0}")]
    Unavailable(String),
}

/// Why a string is not a valid SQS message group or deduplication id.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error("an SQS id must not be empty")]
    Empty,
    #[error("an SQS id has at most {ID_MAX_CHARS} characters, this one {0}")]
    TooLong(usize),
    #[error("an SQS id may hold only a-z, A-Z, 0-9 and ASCII punctuation, not {0:?}")]
    Character(char),
}

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || c.is_ascii_punctuation())) {
        return Err(IdError::Character(c));
    }
    // Every character is ASCII here, so bytes are characters.
    if s.len() > ID_MAX_CHARS {
        return Err(IdError::TooLong(s.len()));
    }
    Ok(())
}

/// The first 32 hex digits (128 bits) of the SHA-256 of `s`.
fn digest_prefix(s: &str) -> String {
    let mut hex = hex::encode(Sha256::digest(s.as_bytes()));
    hex.truncate(32);
    hex
}

/// A FIFO message group id SQS accepts. Messages of one group are delivered in order, one
/// group's at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageGroupId(String);

impl MessageGroupId {
    /// Checks `s` against SQS's rules.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check_id(&s)?;
        Ok(Self(s))
    }

    /// One person's group, `p-` and a hash of the (normalised) email: the same person always
    /// maps to the same group, whatever characters or length the address has.
    pub fn for_person(email: &Email) -> Self {
        Self::new(format!("p-{}", digest_prefix(email.as_str()))).expect("a hex digest is a valid id")
    }

    /// One video's group, `v-` and a hash of its id.
    pub fn for_video(video_id: &str) -> Self {
        Self::new(format!("v-{}", digest_prefix(video_id))).expect("a hex digest is a valid id")
    }

    /// One GHL contact's group, `c-` and a hash of its location and id.
    pub fn for_contact(location_id: &str, contact_id: &str) -> Self {
        Self::new(format!("c-{}", digest_prefix(&format!("{location_id}/{contact_id}"))))
            .expect("a hex digest is a valid id")
    }

    /// The group of a parked message that names none.
    pub fn parked() -> Self {
        Self("parked".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageGroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A FIFO message deduplication id SQS accepts: a second message with the same id within five
/// minutes is accepted and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupId(String);

impl DedupId {
    /// Checks `s` against SQS's rules.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check_id(&s)?;
        Ok(Self(s))
    }

    /// An id for any string (`h-` and its SHA-256): for names that may not be valid ids.
    pub fn digest(s: &str) -> Self {
        Self::new(format!("h-{}", hex::encode(Sha256::digest(s.as_bytes())))).expect("a hex digest is a valid id")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DedupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether SQS accepts `c` in a message body or attribute value.
fn sqs_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Checks a message body against SQS's character rules.
pub fn check_body(body: &str) -> Result<(), String> {
    if body.is_empty() {
        return Err("a message body must not be empty".into());
    }
    match body.chars().find(|c| !sqs_char(*c)) {
        Some(c) => Err(format!("a message body may not contain the character U+{:04X}", c as u32)),
        None => Ok(()),
    }
}

/// A string attribute value as SQS will take it: characters SQS refuses become U+FFFD, and the
/// text is cut to [`REASON_MAX_CHARS`] characters.
pub fn attribute_text(s: &str) -> String {
    let cut: String =
        s.chars().take(REASON_MAX_CHARS).map(|c| if sqs_char(c) { c } else { char::REPLACEMENT_CHARACTER }).collect();
    if cut.is_empty() { "-".into() } else { cut }
}

/// A visibility timeout SQS accepts.
pub fn visibility_secs(seconds: i32) -> i32 {
    seconds.clamp(0, MAX_VISIBILITY_SECS)
}

/// Where commands go.
#[async_trait]
pub trait CommandQueue: Send + Sync {
    /// Sends every command, or fails: a caller that gets `Ok` may acknowledge the event.
    async fn send(&self, commands: &[SyncCommand]) -> Result<(), QueueError>;
}

/// What a parked message carries.
#[derive(Debug, Clone)]
pub struct Parked<'a> {
    pub body: &'a str,
    pub group_id: &'a MessageGroupId,
    pub dedup_id: &'a DedupId,
    pub reason: &'a str,
    pub trace_id: Option<&'a str>,
}

/// The operations the worker needs on its queues.
#[async_trait]
pub trait WorkerQueues: Send + Sync {
    /// Moves a message to the dead-letter queue with its reason as an attribute.
    async fn park(&self, p: Parked<'_>) -> Result<(), QueueError>;
    /// Hides a message for `seconds` so its retry waits (exponential backoff).
    async fn delay_retry(&self, receipt_handle: &str, seconds: i32) -> Result<(), QueueError>;
}

/// Checks every command's body before any is sent: one refused body fails the whole send.
fn check_bodies(commands: &[SyncCommand]) -> Result<Vec<String>, QueueError> {
    let bodies: Vec<String> = commands.iter().map(SyncCommand::encode).collect();
    let bad: Vec<String> = bodies.iter().filter_map(|b| check_body(b).err()).collect();
    if bad.is_empty() {
        Ok(bodies)
    } else {
        Err(QueueError::Rejected { failed: bad.len(), total: commands.len(), reason: bad.join("; ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn the_validator_takes_what_sqs_takes_and_refuses_the_rest() {
        let all_punctuation = r##"!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"##;
        for ok in ["a", "A-z_0.9", all_punctuation, &"x".repeat(128), "ada@example.com"] {
            assert!(MessageGroupId::new(ok).is_ok(), "{ok:?}");
            assert!(DedupId::new(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(MessageGroupId::new(""), Err(IdError::Empty));
        assert_eq!(MessageGroupId::new("x".repeat(129)), Err(IdError::TooLong(129)));
        assert_eq!(DedupId::new("x".repeat(129)), Err(IdError::TooLong(129)));
        assert_eq!(MessageGroupId::new("josé@example.com"), Err(IdError::Character('é')));
        assert_eq!(DedupId::new("a b"), Err(IdError::Character(' ')));
        assert_eq!(DedupId::new("tab\there"), Err(IdError::Character('\t')));
    }

    #[test]
    fn every_person_gets_a_valid_group_and_keeps_it() {
        let long = format!("{}@{}.example.com", "l".repeat(64), "d".repeat(150));
        for raw in ["josé@example.com", "ada@bücher.example", "用户@例子.广告", long.as_str(), "ada@example.com"]
        {
            let e = email(raw);
            let g = MessageGroupId::for_person(&e);
            assert!(MessageGroupId::new(g.as_str()).is_ok(), "{raw}: {g}");
            assert_eq!(g, MessageGroupId::for_person(&email(&raw.to_uppercase())), "same person, same group");
            assert!(g.as_str().starts_with("p-"));
        }
        assert!(long.chars().count() > 200);
        assert_ne!(
            MessageGroupId::for_person(&email("a@example.com")),
            MessageGroupId::for_person(&email("b@example.com"))
        );
        assert_ne!(MessageGroupId::for_video("a@example.com"), MessageGroupId::for_person(&email("a@example.com")));
    }

    #[test]
    fn digests_make_any_name_a_dedup_id() {
        for raw in ["", "naïve id", &"é".repeat(300)] {
            let d = DedupId::digest(raw);
            assert!(DedupId::new(d.as_str()).is_ok());
            assert_eq!(d, DedupId::digest(raw));
        }
    }

    #[test]
    fn bodies_and_attributes_follow_sqs_characters() {
        assert!(check_body("{\"a\":\"héllo ✓ 🎉\"}").is_ok());
        assert!(check_body("").is_err());
        assert!(check_body("a\u{0}b").is_err());
        assert!(check_body("a\u{FFFF}b").is_err());
        assert!(check_body("a\u{FFFE}b").is_err());
        assert_eq!(attribute_text("bad\u{1}char\u{FFFF}"), "bad\u{FFFD}char\u{FFFD}");
        assert_eq!(attribute_text(&"r".repeat(5000)).chars().count(), REASON_MAX_CHARS);
        assert_eq!(attribute_text(""), "-");
        assert_eq!(visibility_secs(99_999), MAX_VISIBILITY_SECS);
        assert_eq!(visibility_secs(-3), 0);
    }
}

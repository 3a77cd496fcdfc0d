//! The queues in process, for tests: what was sent (with its group and deduplication ids), what
//! was parked (with its reason) and every visibility delay are recorded for assertions.
//!
//! It keeps SQS's rules: ids and bodies pass the same checks as on AWS, a deduplication id seen
//! within five minutes (by its clock) is accepted and dropped, on the queue and on the
//! dead-letter queue alike, and visibility delays are clamped to what SQS takes. As the
//! deployed queue is a high-throughput FIFO queue (`DeduplicationScope: messageGroup`), the
//! command queue deduplicates within each message group; the dead-letter queue, per queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{CommandQueue, DedupId, MessageGroupId, Parked, QueueError, WorkerQueues};
use crate::commands::{DecodeError, SyncCommand};
use crate::state::memory::{Clock, SystemClock};

/// How long SQS FIFO remembers a deduplication id.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// A message the queue accepted (and will deliver).
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    pub body: String,
    pub group_id: MessageGroupId,
    pub dedup_id: DedupId,
}

impl SentMessage {
    pub fn command(&self) -> Result<SyncCommand, DecodeError> {
        SyncCommand::decode(&self.body)
    }
}

/// A message in the dead-letter queue, with its attributes as SQS would hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedMessage {
    pub body: String,
    pub group_id: MessageGroupId,
    pub dedup_id: DedupId,
    pub reason: String,
    pub trace_id: Option<String>,
}

/// A retry hidden for `seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityDelay {
    pub receipt_handle: String,
    pub seconds: i32,
}

#[derive(Default)]
struct Log {
    sent: Vec<SentMessage>,
    /// Deduplication ids seen on the command queue, per message group.
    seen: HashMap<(MessageGroupId, DedupId), i64>,
    parked: Vec<ParkedMessage>,
    parked_seen: HashMap<DedupId, i64>,
    delays: Vec<VisibilityDelay>,
    duplicates: usize,
    unavailable: bool,
}

/// The command queue and the dead-letter queue in memory.
pub struct MemoryQueue {
    clock: Arc<dyn Clock>,
    log: Mutex<Log>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock, log: Mutex::new(Log::default()) }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every message accepted and not dropped as a duplicate, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.log().sent.clone()
    }

    /// Removes and returns the messages sent so far (as a consumer would receive them).
    pub fn take_sent(&self) -> Vec<SentMessage> {
        std::mem::take(&mut self.log().sent)
    }

    /// The sent messages as commands.
    pub fn commands(&self) -> Vec<SyncCommand> {
        self.sent().iter().map(|m| m.command().expect("the queue holds only encoded commands")).collect()
    }

    /// Messages dropped because their deduplication id was seen within the window.
    pub fn duplicates_dropped(&self) -> usize {
        self.log().duplicates
    }

    pub fn parked(&self) -> Vec<ParkedMessage> {
        self.log().parked.clone()
    }

    /// Removes and returns the parked messages so far.
    pub fn take_parked(&self) -> Vec<ParkedMessage> {
        std::mem::take(&mut self.log().parked)
    }

    pub fn delays(&self) -> Vec<VisibilityDelay> {
        self.log().delays.clone()
    }

    /// While set, every call fails as if SQS could not be reached.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.log().unavailable = unavailable;
    }

    /// Whether `id` was seen within the window (and records it when not).
    fn is_duplicate<K: std::hash::Hash + Eq + Clone>(seen: &mut HashMap<K, i64>, id: &K, now_ms: i64) -> bool {
        let window = DEDUP_WINDOW.as_millis() as i64;
        match seen.get(id) {
            Some(at) if now_ms - at < window => true,
            _ => {
                seen.insert(id.clone(), now_ms);
                false
            }
        }
    }
}

fn unavailable() -> QueueError {
    QueueError::Unavailable("the in-memory queue is set to be unavailable".into())
}

#[async_trait]
impl CommandQueue for MemoryQueue {
    async fn send(&self, commands: &[SyncCommand]) -> Result<(), QueueError> {
        let bodies = super::check_bodies(commands)?;
        let now = self.clock.now_ms();
        let mut log = self.log();
        if log.unavailable {
            return Err(unavailable());
        }
        for (c, body) in commands.iter().zip(bodies) {
            let dedup_id = c.dedup_id();
            if Self::is_duplicate(&mut log.seen, &(c.message_group(), dedup_id.clone()), now) {
                log.duplicates += 1;
                continue;
            }
            log.sent.push(SentMessage { body, group_id: c.message_group(), dedup_id });
        }
        Ok(())
    }
}

#[async_trait]
impl WorkerQueues for MemoryQueue {
    async fn park(&self, p: Parked<'_>) -> Result<(), QueueError> {
        super::check_body(p.body).map_err(|reason| QueueError::Rejected { failed: 1, total: 1, reason })?;
        let now = self.clock.now_ms();
        let mut log = self.log();
        if log.unavailable {
            return Err(unavailable());
        }
        if Self::is_duplicate(&mut log.parked_seen, p.dedup_id, now) {
            log.duplicates += 1;
            return Ok(());
        }
        log.parked.push(ParkedMessage {
            body: p.body.to_string(),
            group_id: p.group_id.clone(),
            dedup_id: p.dedup_id.clone(),
            reason: super::attribute_text(p.reason),
            trace_id: p.trace_id.map(super::attribute_text),
        });
        Ok(())
    }

    async fn delay_retry(&self, receipt_handle: &str, seconds: i32) -> Result<(), QueueError> {
        let mut log = self.log();
        if log.unavailable {
            return Err(unavailable());
        }
        if receipt_handle.is_empty() {
            return Err(QueueError::Rejected { failed: 1, total: 1, reason: "the receipt handle is empty".into() });
        }
        log.delays.push(VisibilityDelay {
            receipt_handle: receipt_handle.to_string(),
            seconds: super::visibility_secs(seconds),
        });
        Ok(())
    }
}

//! The schedule (EventBridge Scheduler, `ScheduleV2`): invokes the function asynchronously with
//! the template's `Input` every `every` (the template's expression is for AWS; locally the period
//! is a setting), optionally once at start. Asynchronous invocations wait for a free execution
//! environment and are retried after a function error as Lambda retries them (one minute, then
//! two).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::runtime::{ASYNC_RETRY_DELAYS, LocalFunction};

pub struct Scheduler {
    pub function: Arc<LocalFunction>,
    pub input: Value,
    pub every: Duration,
    pub run_at_start: bool,
    pub retry_delays: Vec<Duration>,
}

impl Scheduler {
    pub fn new(function: Arc<LocalFunction>, input: Value, every: Duration) -> Self {
        Self { function, input, every, run_at_start: false, retry_delays: ASYNC_RETRY_DELAYS.to_vec() }
    }

    /// Fires until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.every.max(Duration::from_millis(100)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The interval's first tick is immediate.
            ticks.tick().await;
            if self.run_at_start {
                self.function.invoke_event(self.input.clone(), self.retry_delays.clone());
            }
            loop {
                ticks.tick().await;
                self.function.invoke_event(self.input.clone(), self.retry_delays.clone());
            }
        })
    }
}

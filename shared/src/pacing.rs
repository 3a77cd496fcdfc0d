//! Client-side pacing shared by the GHL and SproutVideo clients (retries are in [`crate::retry`]).
//!
//! [`RateLimiter`] is a sliding-window limiter: at most `max` requests count against any
//! `interval`. The server counts a request when it arrives, some time after it started here and
//! before its answer came back, so a request counts here from its start until `interval` after
//! its answer: however much a busy machine or the network delays requests, the server never sees
//! more than `max` in its window. Each request holds a [`Slot`] while it is in flight.
//!
//! The window can be corrected from what the server reports (remaining budget, window size, an
//! explicit pause after a 429), so a process that shares a budget with others slows down when
//! the server says the shared budget is nearly spent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Sliding-window request limiter.
#[derive(Debug)]
pub struct RateLimiter {
    inner: Arc<Mutex<Window>>,
}

#[derive(Debug)]
struct Window {
    /// Requests allowed per interval for this process (after applying `share`).
    max: u32,
    interval: Duration,
    /// This process's share of the server's budget (1.0 = all of it).
    share: f64,
    /// Requests started and not answered yet.
    in_flight: u32,
    /// When the answered requests of the current window were answered, oldest first.
    answered: VecDeque<Instant>,
    /// No request may start before this instant (set after a 429).
    paused_until: Option<Instant>,
}

/// A request's place in the window, held while it is in flight. Dropping it (the answer came,
/// or the request was abandoned) starts its last `interval` in the window.
#[derive(Debug)]
#[must_use = "the slot counts the request only while it is held"]
pub struct Slot {
    window: Arc<Mutex<Window>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut w = lock(&self.window);
        w.in_flight = w.in_flight.saturating_sub(1);
        let now = Instant::now();
        w.answered.push_back(now);
    }
}

fn lock(m: &Mutex<Window>) -> MutexGuard<'_, Window> {
    // A panic while holding the lock leaves only counters behind: keep using them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often a caller looks again when every request of the window is still in flight.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(5);

impl RateLimiter {
    /// `max` requests per `interval`, of which this process may use `share` (0 < share <= 1).
    pub fn new(max: u32, interval: Duration, share: f64) -> Self {
        let share = if share.is_finite() && share > 0.0 { share.min(1.0) } else { 1.0 };
        Self {
            inner: Arc::new(Mutex::new(Window {
                max: scaled(max, share),
                interval,
                share,
                in_flight: 0,
                answered: VecDeque::new(),
                paused_until: None,
            })),
        }
    }

    /// Waits until one more request may start, and counts it while the slot is held.
    pub async fn acquire(&self) -> Slot {
        loop {
            // Without a bound the wait always ends in a start.
            if let Ok(slot) = self.acquire_within(None).await {
                return slot;
            }
        }
    }

    /// Like [`acquire`](Self::acquire), but within `max_wait`: when a server-ordered pause, or
    /// the wait for room in the window, would end later than that, nothing is counted and the
    /// wait it would have taken comes back as the error. A caller with a deadline thus never
    /// starts a request after it (and a claim held for a write never outlives its lease).
    pub async fn acquire_within(&self, max_wait: Option<Duration>) -> Result<Slot, Duration> {
        let asked = Instant::now();
        loop {
            let left = max_wait.map(|m| m.saturating_sub(asked.elapsed()));
            let wait = {
                let mut w = lock(&self.inner);
                let now = Instant::now();
                w.expire(now);
                let wait = match w.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        if w.used() < w.max {
                            w.in_flight += 1;
                            return Ok(Slot { window: self.inner.clone() });
                        }
                        match w.answered.front() {
                            Some(oldest) => (*oldest + w.span()).saturating_duration_since(now),
                            None => IN_FLIGHT_POLL,
                        }
                    }
                };
                if left.is_some_and(|l| wait > l) {
                    return Err(wait);
                }
                wait
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// How long requests are still held by a server-ordered pause (None when they are not).
    pub async fn paused_for(&self) -> Option<Duration> {
        let w = lock(&self.inner);
        w.paused_until.map(|u| u.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// Corrects the window from rate-limit headers: the server's window size and ceiling, and
    /// how much of the budget is left in the current window.
    pub async fn observe(&self, max: Option<u32>, interval: Option<Duration>, remaining: Option<u32>) {
        let mut w = lock(&self.inner);
        let now = Instant::now();
        if let Some(i) = interval.filter(|i| !i.is_zero()) {
            w.interval = i;
        }
        if let Some(m) = max.filter(|m| *m > 0) {
            w.max = scaled(m, w.share);
        }
        w.expire(now);
        if let Some(r) = remaining {
            // The server has less budget left than we think: count the difference as spent now.
            let local_left = w.max.saturating_sub(w.used());
            let server_left = scaled(r, w.share).min(r);
            for _ in server_left..local_left {
                w.answered.push_back(now);
            }
        }
    }

    /// Stops every request from starting for `d` (after a 429), at most
    /// [`MAX_SERVER_WAIT`](crate::retry::MAX_SERVER_WAIT).
    pub async fn pause(&self, d: Duration) {
        let mut w = lock(&self.inner);
        let now = Instant::now();
        let until = now.checked_add(d.min(crate::retry::MAX_SERVER_WAIT)).unwrap_or(now);
        if w.paused_until.is_none_or(|p| p < until) {
            w.paused_until = Some(until);
        }
    }

    /// The limiter's current ceiling per interval and the interval.
    pub async fn budget(&self) -> (u32, Duration) {
        let w = lock(&self.inner);
        (w.max, w.interval)
    }
}

impl Window {
    /// How long an answered request still counts: the server's interval after its answer (the
    /// server saw it no later than that), plus a few milliseconds for clocks read apart.
    fn span(&self) -> Duration {
        self.interval + Duration::from_millis(5)
    }

    fn used(&self) -> u32 {
        self.in_flight + self.answered.len() as u32
    }

    fn expire(&mut self, now: Instant) {
        let span = self.span();
        while let Some(front) = self.answered.front() {
            if now.saturating_duration_since(*front) >= span {
                self.answered.pop_front();
            } else {
                break;
            }
        }
    }
}

fn scaled(max: u32, share: f64) -> u32 {
    ((max as f64) * share).floor().max(1.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limiter_holds_requests_past_the_window_ceiling() {
        let l = RateLimiter::new(3, Duration::from_secs(10), 1.0);
        let start = Instant::now();
        for _ in 0..3 {
            drop(l.acquire().await);
        }
        assert!(start.elapsed() < Duration::from_millis(5));
        drop(l.acquire().await);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_counts_until_an_interval_after_its_answer() {
        let l = RateLimiter::new(2, Duration::from_secs(10), 1.0);
        let start = Instant::now();
        let slow = l.acquire().await;
        drop(l.acquire().await);
        // The slow request is answered 4 s after it started: the server may have seen it as
        // late as that, so its place frees 10 s after the answer, not after the start.
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(slow);
        drop(l.acquire().await);
        assert!(start.elapsed() >= Duration::from_secs(10), "the early answer's place frees first");
        drop(l.acquire().await);
        assert!(start.elapsed() >= Duration::from_secs(14), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_takes_the_servers_word_for_remaining_budget() {
        let l = RateLimiter::new(100, Duration::from_secs(10), 1.0);
        l.observe(Some(100), Some(Duration::from_secs(10)), Some(1)).await;
        let start = Instant::now();
        drop(l.acquire().await);
        drop(l.acquire().await);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn share_scales_the_ceiling_and_pause_blocks() {
        let l = RateLimiter::new(100, Duration::from_secs(10), 0.25);
        assert_eq!(l.budget().await.0, 25);
        l.pause(Duration::from_secs(3)).await;
        let start = Instant::now();
        drop(l.acquire().await);
        assert!(start.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_allowed_is_reported_not_waited() {
        let l = RateLimiter::new(10, Duration::from_secs(10), 1.0);
        l.pause(Duration::from_secs(u64::MAX)).await;
        let left = l.acquire_within(Some(Duration::from_secs(5))).await.unwrap_err();
        assert!(left > Duration::from_secs(3600) && left <= crate::retry::MAX_SERVER_WAIT, "{left:?}");
        assert!(l.paused_for().await.is_some());
        let l = RateLimiter::new(10, Duration::from_secs(10), 1.0);
        l.pause(Duration::from_secs(2)).await;
        let start = Instant::now();
        drop(l.acquire_within(Some(Duration::from_secs(5))).await.unwrap());
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_is_waited_out_only_within_the_bound() {
        let l = RateLimiter::new(2, Duration::from_secs(10), 1.0);
        drop(l.acquire().await);
        drop(l.acquire().await);
        // The window frees its first place ten seconds on: longer than a 3 s bound allows.
        let start = Instant::now();
        let wait = l.acquire_within(Some(Duration::from_secs(3))).await.unwrap_err();
        assert!(wait > Duration::from_secs(9), "{wait:?}");
        assert!(start.elapsed() < Duration::from_secs(3), "not waited: {:?}", start.elapsed());
        assert_eq!(lock(&l.inner).used(), 2, "nothing counted");
        // Within a bound long enough, the place is waited for.
        drop(l.acquire_within(Some(Duration::from_secs(11))).await.unwrap());
        assert!(start.elapsed() >= Duration::from_secs(9));
    }
}

//! Client-side pacing shared by the GHL and SproutVideo clients (retries are in [`crate::retry`]).
//!
//! [`RateLimiter`] is a sliding-window limiter: at most `max` requests start in any `interval`.
//! It can be corrected from what the server reports (remaining budget, window size, an explicit
//! pause after a 429), so a process that shares a budget with others slows down when the server
//! says the shared budget is nearly spent.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Sliding-window request limiter.
#[derive(Debug)]
pub struct RateLimiter {
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Requests allowed per interval for this process (after applying `share`).
    max: u32,
    interval: Duration,
    /// This process's share of the server's budget (1.0 = all of it).
    share: f64,
    /// Start times of the requests in the current window.
    starts: VecDeque<Instant>,
    /// No request may start before this instant (set after a 429).
    paused_until: Option<Instant>,
}

impl RateLimiter {
    /// `max` requests per `interval`, of which this process may use `share` (0 < share <= 1).
    pub fn new(max: u32, interval: Duration, share: f64) -> Self {
        let share = if share.is_finite() && share > 0.0 { share.min(1.0) } else { 1.0 };
        Self {
            inner: Mutex::new(Window {
                max: scaled(max, share),
                interval,
                share,
                starts: VecDeque::new(),
                paused_until: None,
            }),
        }
    }

    /// Waits until one more request may start, and counts it.
    pub async fn acquire(&self) {
        // Without a bound the wait always ends in a start.
        let _ = self.acquire_within(None).await;
    }

    /// Like [`acquire`](Self::acquire), but a server-ordered pause that lasts longer than
    /// `max_pause` is not waited out: its remaining length comes back as the error, and no
    /// request is counted. Waits for room in the window are taken as they come.
    pub async fn acquire_within(&self, max_pause: Option<Duration>) -> Result<(), Duration> {
        loop {
            let wait = {
                let mut w = self.inner.lock().await;
                let now = Instant::now();
                w.expire(now);
                match w.paused_until {
                    Some(until) if until > now => {
                        let left = until - now;
                        if max_pause.is_some_and(|m| left > m) {
                            return Err(left);
                        }
                        Some(left)
                    }
                    _ => {
                        if (w.starts.len() as u32) < w.max {
                            w.starts.push_back(now);
                            None
                        } else {
                            let oldest = *w.starts.front().expect("window is full");
                            Some((oldest + w.span()).saturating_duration_since(now))
                        }
                    }
                }
            };
            match wait {
                None => return Ok(()),
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            }
        }
    }

    /// How long requests are still held by a server-ordered pause (None when they are not).
    pub async fn paused_for(&self) -> Option<Duration> {
        let w = self.inner.lock().await;
        w.paused_until.map(|u| u.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// Corrects the window from rate-limit headers: the server's window size and ceiling, and
    /// how much of the budget is left in the current window.
    pub async fn observe(&self, max: Option<u32>, interval: Option<Duration>, remaining: Option<u32>) {
        let mut w = self.inner.lock().await;
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
            let local_left = w.max.saturating_sub(w.starts.len() as u32);
            let server_left = scaled(r, w.share).min(r);
            for _ in server_left..local_left {
                w.starts.push_back(now);
            }
        }
    }

    /// Stops every request from starting for `d` (after a 429), at most
    /// [`MAX_SERVER_WAIT`](crate::retry::MAX_SERVER_WAIT).
    pub async fn pause(&self, d: Duration) {
        let mut w = self.inner.lock().await;
        let now = Instant::now();
        let until = now.checked_add(d.min(crate::retry::MAX_SERVER_WAIT)).unwrap_or(now);
        if w.paused_until.is_none_or(|p| p < until) {
            w.paused_until = Some(until);
        }
    }

    /// The limiter's current ceiling per interval and the interval.
    pub async fn budget(&self) -> (u32, Duration) {
        let w = self.inner.lock().await;
        (w.max, w.interval)
    }
}

impl Window {
    /// How long a request counts against the window here: the server's interval plus a margin,
    /// because the server counts a request when it arrives, a little after it started here.
    fn span(&self) -> Duration {
        self.interval + self.interval / 40 + Duration::from_millis(5)
    }

    fn expire(&mut self, now: Instant) {
        let span = self.span();
        while let Some(front) = self.starts.front() {
            if now.saturating_duration_since(*front) >= span {
                self.starts.pop_front();
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
            l.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(5));
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_takes_the_servers_word_for_remaining_budget() {
        let l = RateLimiter::new(100, Duration::from_secs(10), 1.0);
        l.observe(Some(100), Some(Duration::from_secs(10)), Some(1)).await;
        let start = Instant::now();
        l.acquire().await;
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn share_scales_the_ceiling_and_pause_blocks() {
        let l = RateLimiter::new(100, Duration::from_secs(10), 0.25);
        assert_eq!(l.budget().await.0, 25);
        l.pause(Duration::from_secs(3)).await;
        let start = Instant::now();
        l.acquire().await;
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
        l.acquire_within(Some(Duration::from_secs(5))).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
    }
}

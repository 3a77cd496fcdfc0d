//! Client-side pacing and retry timing shared by the GHL and SproutVideo clients.
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
        loop {
            let wait = {
                let mut w = self.inner.lock().await;
                let now = Instant::now();
                w.expire(now);
                match w.paused_until {
                    Some(until) if until > now => Some(until - now),
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
                None => return,
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            }
        }
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

    /// Stops every request from starting for `d` (after a 429).
    pub async fn pause(&self, d: Duration) {
        let mut w = self.inner.lock().await;
        let until = Instant::now() + d;
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

/// How often and how long a client retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// First backoff ceiling; doubles on each attempt.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// No new attempt starts after this much time since the first one.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            deadline: Some(Duration::from_secs(60)),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter for retry number `attempt` (1 = first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
        let ceiling = exp.min(self.cap);
        let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    /// Whether a wait of `wait` before another attempt still fits the deadline.
    pub fn fits(&self, started: Instant, wait: Duration) -> bool {
        match self.deadline {
            Some(d) => started.elapsed() + wait < d,
            None => true,
        }
    }
}

/// Parses a `Retry-After` header given in seconds (HTTP dates are not used by these APIs).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let v = value?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
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

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            deadline: None,
        };
        for attempt in 1..20 {
            assert!(p.backoff(attempt) <= Duration::from_secs(1));
        }
        assert!(p.backoff(1) <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after(Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(Some("0.5")), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after(Some("soon")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}

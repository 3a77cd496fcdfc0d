//! The one retry driver behind the GHL and SproutVideo clients.
//!
//! A client describes how one attempt ended ([`Failure`]) and how its request may be repeated
//! ([`Replay`]); [`drive`] decides, by one rule for both clients, whether another attempt starts:
//!
//! - a failure that leaves the request's effect unknown (a 5xx, a timeout, a reset, a body cut
//!   off mid-answer) is retried only for a request that may be repeated ([`Replay::Idempotent`]);
//!   a request that may have created something ([`Replay::Once`]) ends in
//!   [`Stop::MayHaveWritten`] instead;
//! - a failure the server did not act on (a 429, a connection that was never made) is retried
//!   for every request;
//! - waits use exponential backoff with full jitter, or the server's `Retry-After` when it named
//!   one;
//! - attempts are bounded, and the deadline is checked before every retry, whatever the failure:
//!   a wait that would end past the deadline stops the call with [`Stop::Deadline`] instead of
//!   sleeping.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The longest server-requested wait taken into account (`Retry-After`, rate-limit intervals):
/// anything longer is read as this. Far longer than any deadline, so such a wait ends the retries.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How often and how long a client retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// First backoff ceiling; doubles on each attempt.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// No new attempt starts after this much time since the call began.
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
            Some(d) => started.elapsed().saturating_add(wait) < d,
            None => true,
        }
    }

    /// Time left before the deadline of a call that began at `started` (None: no deadline).
    pub fn time_left(&self, started: Instant) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_sub(started.elapsed()))
    }
}

/// Parses a `Retry-After` header given in seconds (HTTP dates are not used by these APIs).
/// Values are bounded by [`MAX_SERVER_WAIT`]; a negative or unreadable value is ignored.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let v = value?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_SERVER_WAIT));
    }
    let secs = v.parse::<f64>().ok().filter(|s| !s.is_nan() && *s >= 0.0)?;
    Some(Duration::try_from_secs_f64(secs).unwrap_or(MAX_SERVER_WAIT).min(MAX_SERVER_WAIT))
}

/// Whether a request may be sent again after a failure that leaves its effect unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Reads, PUT, DELETE, upserts: sending the request again leaves the same state.
    Idempotent,
    /// The request may create something (POST create): never sent again once it may have
    /// reached the server.
    Once,
}

/// How one attempt failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// No attempt can help (a 4xx, an unreadable complete answer).
    Final(E),
    /// The server did not act on the request: it was refused before processing (429), or never
    /// sent (no connection). Any request may be sent again, after `wait` when the server named one.
    NotApplied { error: E, wait: Option<Duration> },
    /// The request may have been acted on: a 5xx, a timeout, a reset, an answer cut off.
    Unknown { error: E, wait: Option<Duration> },
    /// Send again now without counting an attempt (a renewed credential after a 401). The
    /// client allows this once per call.
    Renewed(E),
}

/// Why [`drive`] stopped without a result.
#[derive(Debug, PartialEq)]
pub enum Stop<E> {
    /// A final failure, or the last failure once every attempt was used.
    Failed(E),
    /// A request that may create something failed without saying whether it did.
    MayHaveWritten(E),
    /// The next attempt could not start before the deadline: `wait` is how long it would have
    /// had to wait (the server's `Retry-After`, or the backoff).
    Deadline { attempts: u32, wait: Duration, last: E },
}

/// What an attempt knows about its call.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When the call began.
    pub started: Instant,
    /// Time left before the deadline, when it began (None: no deadline).
    pub time_left: Option<Duration>,
}

/// Runs `attempt` until it succeeds or the policy says stop. `what` names the call in logs.
pub async fn drive<T, E, F, Fut>(policy: &RetryPolicy, replay: Replay, what: &str, mut attempt: F) -> Result<T, Stop<E>>
where
    E: std::fmt::Display,
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let started = Instant::now();
    let mut number = 0u32;
    loop {
        number += 1;
        let failure = match attempt(Attempt { number, started, time_left: policy.time_left(started) }).await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        let (error, wait) = match failure {
            Failure::Final(e) => return Err(Stop::Failed(e)),
            Failure::Unknown { error, .. } if replay == Replay::Once => return Err(Stop::MayHaveWritten(error)),
            Failure::Unknown { error, wait } | Failure::NotApplied { error, wait } => {
                if number >= policy.max_attempts {
                    return Err(Stop::Failed(error));
                }
                (error, wait.unwrap_or_else(|| policy.backoff(number)).min(MAX_SERVER_WAIT))
            }
            Failure::Renewed(error) => {
                number -= 1;
                (error, Duration::ZERO)
            }
        };
        if !policy.fits(started, wait) {
            return Err(Stop::Deadline { attempts: number.max(1), wait, last: error });
        }
        tracing::debug!(what, attempt = number, wait_ms = wait.as_millis() as u64, error = %error, "retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn policy(deadline: Option<Duration>) -> RetryPolicy {
        RetryPolicy { max_attempts: 4, base: Duration::from_millis(100), cap: Duration::from_secs(1), deadline }
    }

    /// Plays the given failures in order, then succeeds; returns the attempts made.
    async fn play(
        p: &RetryPolicy,
        replay: Replay,
        script: Vec<Failure<&'static str>>,
    ) -> (Result<&'static str, Stop<&'static str>>, u32) {
        let script = Mutex::new(std::collections::VecDeque::from(script));
        let calls = Mutex::new(0u32);
        let r = drive(p, replay, "test", |_| {
            *calls.lock().unwrap() += 1;
            let next = script.lock().unwrap().pop_front();
            async move {
                match next {
                    Some(f) => Err(f),
                    None => Ok("done"),
                }
            }
        })
        .await;
        let n = *calls.lock().unwrap();
        (r, n)
    }

    fn unknown(e: &'static str) -> Failure<&'static str> {
        Failure::Unknown { error: e, wait: None }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_request_is_retried_through_unknown_failures() {
        let (r, n) = play(&policy(None), Replay::Idempotent, vec![unknown("503"), unknown("cut off")]).await;
        assert_eq!(r, Ok("done"));
        assert_eq!(n, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_is_never_sent_again_after_an_unknown_failure() {
        for e in ["503", "timed out", "reset", "cut off"] {
            let (r, n) = play(&policy(None), Replay::Once, vec![unknown(e)]).await;
            assert_eq!(r, Err(Stop::MayHaveWritten(e)));
            assert_eq!(n, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_refused_before_processing_is_sent_again() {
        let script = vec![
            Failure::NotApplied { error: "429", wait: Some(Duration::from_secs(1)) },
            Failure::NotApplied { error: "connect", wait: None },
        ];
        let t = Instant::now();
        let (r, n) = play(&policy(None), Replay::Once, script).await;
        assert_eq!(r, Ok("done"));
        assert_eq!(n, 3);
        assert!(t.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let (r, n) = play(&policy(None), Replay::Idempotent, (0..10).map(|_| unknown("500")).collect()).await;
        assert_eq!(r, Err(Stop::Failed("500")));
        assert_eq!(n, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_checked_after_every_kind_of_failure() {
        for f in [unknown("cut off"), Failure::NotApplied { error: "429", wait: None }] {
            let (r, n) = play(&policy(Some(Duration::ZERO)), Replay::Idempotent, vec![f]).await;
            assert!(matches!(r, Err(Stop::Deadline { attempts: 1, .. })), "{r:?}");
            assert_eq!(n, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_stops_instead_of_sleeping() {
        let huge = parse_retry_after(Some("99999999999")).unwrap();
        let t = Instant::now();
        let (r, n) = play(
            &policy(Some(Duration::from_secs(60))),
            Replay::Idempotent,
            vec![Failure::NotApplied { error: "429", wait: Some(huge) }],
        )
        .await;
        assert_eq!(r, Err(Stop::Deadline { attempts: 1, wait: MAX_SERVER_WAIT, last: "429" }));
        assert_eq!(n, 1);
        assert!(t.elapsed() < Duration::from_secs(1), "no sleep");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_credential_is_tried_at_once_and_not_counted() {
        let p = RetryPolicy { max_attempts: 1, ..policy(None) };
        let (r, n) = play(&p, Replay::Once, vec![Failure::Renewed("401")]).await;
        assert_eq!(r, Ok("done"));
        assert_eq!(n, 2);
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
    fn retry_after_parses_seconds_and_is_bounded() {
        assert_eq!(parse_retry_after(Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(Some("0.5")), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after(Some("soon")), None);
        assert_eq!(parse_retry_after(Some("-4")), None);
        assert_eq!(parse_retry_after(Some("NaN")), None);
        assert_eq!(parse_retry_after(None), None);
        for huge in ["99999999999", "18446744073709551615", "1e300", "inf", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(Some(huge)), Some(MAX_SERVER_WAIT), "{huge}");
        }
    }
}

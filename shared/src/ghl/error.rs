use std::time::Duration;

use thiserror::Error;

/// Everything a GHL call can end in. Carries GHL's message and `traceId` where there was one;
/// never a token.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GhlError {
    /// 401: the credential is missing, invalid or expired. Refresh it once, then give up.
    #[error("GHL rejected the credential (401): {message}{}", trace(.trace_id))]
    Unauthorized { message: String, trace_id: Option<String> },

    /// 403: the token has no access to this location or scope. A configuration problem.
    #[error("GHL refused access (403): {message}{}", trace(.trace_id))]
    Forbidden { message: String, trace_id: Option<String> },

    /// The contact, task or note does not exist (GHL answers 400 "... not found" or 404).
    #[error("GHL has no such record: {message}{}", trace(.trace_id))]
    NotFound { message: String, trace_id: Option<String> },

    /// 400 from a create on a location that does not allow duplicates.
    #[error("GHL already has this contact ({contact_id}, matched on {matching_field}){}", trace(.trace_id))]
    Duplicate { contact_id: String, matching_field: String, trace_id: Option<String> },

    /// 400/422: GHL refused the request as invalid. Sending it again will not help.
    #[error("GHL refused the request ({status}): {}{}", .messages.join("; "), trace(.trace_id))]
    Invalid { status: u16, messages: Vec<String>, trace_id: Option<String> },

    /// 429 after every allowed retry, or a wait GHL asked for that is longer than the call's
    /// deadline allows.
    #[error("GHL rate limit still exceeded after retries (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },

    /// GHL's daily request quota is spent: the client makes no call until it resets. Worth
    /// retrying after `retry_in`.
    #[error("GHL's daily request quota is spent; calls resume in {} s", .retry_in.as_secs())]
    DailyQuotaExhausted { retry_in: Duration },

    /// The credential cannot be used yet: the secret could not be read, or an expired or refused
    /// OAuth token waits for a process that may refresh it.
    #[error("GHL credential not available yet: {0}")]
    CredentialUnavailable(String),

    /// 5xx on a request that is safe to repeat, after every allowed retry.
    #[error("GHL server error ({status}) after retries: {message}{}", trace(.trace_id))]
    Server { status: u16, message: String, trace_id: Option<String> },

    /// A non-idempotent write (create contact, task or note) failed in a way that does not
    /// say whether GHL applied it. Look before writing again.
    #[error("GHL may have applied the write: {reason}")]
    MayHaveWritten { reason: String },

    /// The fleet's shared request budget (in the state table) could not be read or written, so
    /// no request was sent.
    #[error("{0}")]
    BudgetUnavailable(String),

    /// The request never got an answer (connection refused, DNS, reset before sending).
    #[error("could not reach GHL: {0}")]
    Transport(String),

    /// The caller's deadline ran out before an attempt could succeed.
    #[error("GHL call gave up at its deadline after {attempts} attempt(s): {last}")]
    DeadlineExceeded { attempts: u32, last: String },

    /// GHL answered 2xx with a body we could not read.
    #[error("unreadable GHL response: {0}")]
    Decode(String),

    /// Any other status.
    #[error("unexpected GHL status {status}: {message}{}", trace(.trace_id))]
    Unexpected { status: u16, message: String, trace_id: Option<String> },
}

fn trace(t: &Option<String>) -> String {
    t.as_ref().map(|t| format!(" (traceId {t})")).unwrap_or_default()
}

impl GhlError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::DailyQuotaExhausted { .. }
                | Self::CredentialUnavailable(_)
                | Self::BudgetUnavailable(_)
                | Self::Server { .. }
                | Self::MayHaveWritten { .. }
                | Self::Transport(_)
                | Self::DeadlineExceeded { .. }
        )
    }

    /// GHL's `traceId`, for support tickets and dead-letter attributes.
    pub fn trace_id(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { trace_id, .. }
            | Self::Forbidden { trace_id, .. }
            | Self::NotFound { trace_id, .. }
            | Self::Duplicate { trace_id, .. }
            | Self::Invalid { trace_id, .. }
            | Self::Server { trace_id, .. }
            | Self::Unexpected { trace_id, .. } => trace_id.as_deref(),
            _ => None,
        }
    }

    /// How long to wait before trying again, when GHL said (a 429's `Retry-After`, the daily
    /// quota's reset).
    pub fn retry_hint(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            Self::DailyQuotaExhausted { retry_in } => Some(*retry_in),
            _ => None,
        }
    }

    /// Whether the error was a 429.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::DailyQuotaExhausted { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_split() {
        assert!(GhlError::MayHaveWritten { reason: "500".into() }.is_retryable());
        assert!(GhlError::RateLimited { retry_after: None }.is_retryable());
        let quota = GhlError::DailyQuotaExhausted { retry_in: Duration::from_secs(3600) };
        assert!(quota.is_retryable() && quota.is_rate_limited());
        assert_eq!(quota.retry_hint(), Some(Duration::from_secs(3600)));
        assert!(GhlError::CredentialUnavailable("waiting".into()).is_retryable());
        assert!(
            !GhlError::Invalid {
                status: 422,
                messages: vec!["property x should not exist".into()],
                trace_id: Some("t1".into())
            }
            .is_retryable()
        );
        assert!(!GhlError::Unauthorized { message: "Invalid JWT".into(), trace_id: None }.is_retryable());
    }

    #[test]
    fn messages_carry_the_trace_id() {
        let e = GhlError::Invalid { status: 422, messages: vec!["a".into(), "b".into()], trace_id: Some("abc".into()) };
        assert_eq!(e.to_string(), "GHL refused the request (422): a; b (traceId abc)");
    }
}

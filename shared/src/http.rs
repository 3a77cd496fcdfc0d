//! Small helpers both API clients and the AWS adapters share.

use url::Url;

/// `base` + path segments (each percent-encoded) + query pairs.
pub fn build_url(base: &Url, segments: &[&str], query: &[(&str, String)]) -> Url {
    let mut url = base.clone();
    {
        let mut p = url.path_segments_mut().expect("base URL can carry a path");
        p.pop_if_empty();
        for s in segments {
            p.push(s);
        }
    }
    if !query.is_empty() {
        let mut qp = url.query_pairs_mut();
        for (k, v) in query {
            qp.append_pair(k, v);
        }
    }
    url
}

/// A short description of an AWS SDK error (its service message or its kind), never a payload.
/// Every `aws-sdk-*` crate re-exports the same `SdkError`.
pub fn aws_error_text<E: std::error::Error + 'static, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String {
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(s) => s.err().to_string(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "could not connect".into(),
        other => other.to_string(),
    }
}

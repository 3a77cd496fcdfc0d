//! The AWS SDK configuration and error descriptions every AWS adapter (queue, state, secrets)
//! uses.

/// The standard AWS configuration from the environment (`AWS_ENDPOINT_URL` points every client
/// at a local emulator; in Lambda the function's role credentials are used).
pub async fn load_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A short description of an AWS SDK error (its service message or its kind), never a payload.
/// Every `aws-sdk-*` crate re-exports the same `SdkError`.
pub fn error_text<E: std::error::Error + 'static, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String {
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(s) => s.err().to_string(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "could not connect".into(),
        other => other.to_string(),
    }
}

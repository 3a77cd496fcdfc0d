//! The AWS SDK configuration and error descriptions every AWS adapter (queue, state, secrets)
//! uses.

/// The standard AWS configuration from the environment (`AWS_ENDPOINT_URL` points every client
/// at a local emulator; in Lambda the function's role credentials are used).
pub async fn load_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A short description of an AWS SDK error (its service code and message, or its kind), never a
/// payload. An error the SDK does not model (AccessDenied, for one) is named by its code, so a
/// missing permission reads as such. Every `aws-sdk-*` crate re-exports the same `SdkError`.
pub fn error_text<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(s) => match (s.err().code(), s.err().message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => s.err().to_string(),
        },
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "could not connect".into(),
        other => other.to_string(),
    }
}

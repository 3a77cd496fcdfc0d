//! Lambda's Invoke API (`POST /2015-03-31/functions/{FunctionName}/invocations`) for the local
//! functions, so operators and tests invoke them as they would in AWS:
//! `aws lambda invoke --endpoint-url http://127.0.0.1:9001 --function-name sv-reconciler …`.
//!
//! `X-Amz-Invocation-Type`: `RequestResponse` (default) answers 200 with the function's response,
//! or with `X-Amz-Function-Error: Unhandled` and `{"errorType", "errorMessage"}`; `Event` queues
//! it (202); `DryRun` answers 204. A function at its concurrency answers 429
//! (`TooManyRequestsException`) to a synchronous call; an unknown function 404
//! (`ResourceNotFoundException`). Requests are not signature-checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::runtime::{ASYNC_RETRY_DELAYS, InvokeError, LocalFunction, MAX_PAYLOAD};

pub struct InvokeApi {
    pub functions: BTreeMap<String, Arc<LocalFunction>>,
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut r = (status, axum::Json(json!({"Type": "User", "message": message}))).into_response();
    r.headers_mut().insert("x-amzn-ErrorType", HeaderValue::from_str(kind).expect("ascii"));
    r
}

impl InvokeApi {
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let app = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .layer(DefaultBodyLimit::max(MAX_PAYLOAD + 1))
            .with_state(self);
        axum::serve(listener, app).await
    }
}

async fn invoke(
    State(api): State<Arc<InvokeApi>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A name, or an ARN ending in `function:<name>`.
    let short = name.rsplit(":function:").next().unwrap_or(&name).split(':').next().unwrap_or(&name);
    let Some(f) = api.functions.get(short) else {
        return aws_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", &format!("Function not found: {name}"));
    };
    let payload = if body.is_empty() { Bytes::from_static(b"{}") } else { body };
    let kind = headers.get("x-amz-invocation-type").and_then(|v| v.to_str().ok()).unwrap_or("RequestResponse");
    match kind {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            let Ok(v) = serde_json::from_slice(&payload) else {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "Could not parse request body into json",
                );
            };
            f.invoke_event(v, ASYNC_RETRY_DELAYS.to_vec());
            StatusCode::ACCEPTED.into_response()
        }
        _ => {
            let mut r = match f.invoke_bytes(payload, false, None).await {
                Ok(out) => (StatusCode::OK, out).into_response(),
                Err(InvokeError::Throttled(_)) => {
                    return aws_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", "Rate Exceeded.");
                }
                Err(InvokeError::RequestTooLarge) => {
                    return aws_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestTooLargeException",
                        "Request must be smaller than 6291456 bytes for the InvokeFunction operation",
                    );
                }
                Err(InvokeError::Function { error_type, error_message }) => {
                    let mut r =
                        (StatusCode::OK, axum::Json(json!({"errorType": error_type, "errorMessage": error_message})))
                            .into_response();
                    r.headers_mut().insert("X-Amz-Function-Error", HeaderValue::from_static("Unhandled"));
                    r
                }
            };
            r.headers_mut().insert("X-Amz-Executed-Version", HeaderValue::from_static("$LATEST"));
            r
        }
    }
}

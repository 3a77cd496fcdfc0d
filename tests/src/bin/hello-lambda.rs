//! The smallest `lambda_runtime` function (echoes its input): the baseline `make bench` compares
//! the functions' start time and memory with.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(|e: LambdaEvent<serde_json::Value>| async move {
        Ok::<_, lambda_runtime::Error>(e.payload)
    }))
    .await
}

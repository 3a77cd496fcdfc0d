//! `local-ghl`: the local HighLevel as a standalone server.
//!
//! `local-ghl [--listen 127.0.0.1:4010] [--tokens a,b] [--burst 100/10000] [--search-lag-ms 0]
//! [--webhook-url URL]` (env `LOCAL_GHL_ADDR`, `LOCAL_GHL_TOKENS`, `LOCAL_GHL_BURST`,
//! `LOCAL_GHL_SEARCH_LAG_MS`, `LOCAL_GHL_WEBHOOK_URL`).
//! `--search-lag-ms`: how long a contact write takes to show in search (off by default).
//! `--webhook-url`: where signed webhooks of tag changes go (`GET /_admin/webhooks` shows the
//! public keys to verify them with; `PUT /_admin/webhooks` changes the delivery settings).

use sync_tests::local_ghl::{GhlBehaviour, LocalGhl, WebhookSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addr = std::env::var("LOCAL_GHL_ADDR").unwrap_or_else(|_| "127.0.0.1:4010".into());
    let mut tokens = std::env::var("LOCAL_GHL_TOKENS").unwrap_or_default();
    let mut burst = std::env::var("LOCAL_GHL_BURST").unwrap_or_default();
    let mut search_lag = std::env::var("LOCAL_GHL_SEARCH_LAG_MS").unwrap_or_default();
    let mut webhook_url = std::env::var("LOCAL_GHL_WEBHOOK_URL").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().unwrap_or(addr),
            "--tokens" => tokens = args.next().unwrap_or_default(),
            "--burst" => burst = args.next().unwrap_or_default(),
            "--search-lag-ms" => search_lag = args.next().unwrap_or_default(),
            "--webhook-url" => webhook_url = args.next().unwrap_or_default(),
            "-h" | "--help" => {
                println!(
                    "local-ghl [--listen ADDR] [--tokens T1,T2] [--burst MAX/INTERVAL_MS] [--search-lag-ms MS] [--webhook-url URL]"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    let mut b = GhlBehaviour {
        valid_tokens: tokens.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect(),
        ..Default::default()
    };
    if let Some((max, ms)) = burst.split_once('/') {
        b.burst_max = max.parse()?;
        b.burst_interval_ms = ms.parse()?;
    }
    if !search_lag.is_empty() {
        b.search_lag_ms = search_lag
            .parse()
            .map_err(|e| anyhow::anyhow!("--search-lag-ms takes milliseconds ({search_lag}): {e}"))?;
    }
    let ghl = LocalGhl::new(b);
    if !webhook_url.is_empty() {
        ghl.set_webhooks(WebhookSettings { url: Some(webhook_url), ..Default::default() }).await;
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("local GHL listening on http://{}", listener.local_addr()?);
    axum::serve(listener, ghl.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

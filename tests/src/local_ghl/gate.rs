//! What stands before the API: the bearer token, the `Version` header, the rate window, injected
//! faults, and the OAuth refresh endpoint.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::{FaultKind, Faults, LocalGhl, Reply, Store, new_id};

type Limits = Vec<(&'static str, String)>;

pub(super) fn take_fault(f: &mut Faults, method: &Method, path: &str) -> Option<FaultKind> {
    if let Some(pos) = f.script.iter().position(|sf| {
        sf.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && sf.path_contains.as_deref().is_none_or(|p| path.contains(p))
    }) {
        return f.script.remove(pos).map(|sf| sf.kind);
    }
    let roll = |p: f64| p > 0.0 && fastrand::f64() < p;
    if roll(f.drop_rate) {
        Some(FaultKind::Drop)
    } else if roll(f.rate_limit_rate) {
        Some(FaultKind::RateLimit { retry_after_secs: f.retry_after_secs })
    } else if roll(f.error_rate) {
        Some(FaultKind::Status { status: 500 })
    } else if *method != Method::GET && roll(f.write_then_fail_rate) {
        Some(FaultKind::WriteThenFail)
    } else {
        None
    }
}

/// Auth, version header, the rate window and status faults. Ok carries the rate headers.
pub(super) fn gatekeep(
    s: &mut Store,
    token: Option<&str>,
    headers: &HeaderMap,
    fault: &Option<FaultKind>,
) -> Result<Limits, (Reply, Limits)> {
    let b = s.behaviour.clone();
    let key = token.unwrap_or("").to_string();
    let now = Instant::now();
    let interval = Duration::from_millis(b.burst_interval_ms.max(1));
    let window = s.windows.entry(key.clone()).or_default();
    while window.front().is_some_and(|t| now.duration_since(*t) >= interval) {
        window.pop_front();
    }
    let over = window.len() as u32 >= b.burst_max;
    if !over {
        window.push_back(now);
    }
    let used = window.len() as u32;
    let daily = s.daily.entry(key).or_default();
    let daily_spent = *daily >= b.daily_max;
    if !over && !daily_spent {
        *daily += 1;
    }
    let limits: Limits = vec![
        ("x-ratelimit-limit-daily", b.daily_max.to_string()),
        ("x-ratelimit-daily-remaining", b.daily_max.saturating_sub(*daily).to_string()),
        ("x-ratelimit-interval-milliseconds", b.burst_interval_ms.to_string()),
        ("x-ratelimit-max", b.burst_max.to_string()),
        ("x-ratelimit-remaining", b.burst_max.saturating_sub(used).to_string()),
    ];
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err((Reply::err(401, "Invalid JWT"), limits));
    };
    if !b.valid_tokens.is_empty() && !b.valid_tokens.iter().any(|t| t == token) {
        return Err((Reply::err(401, "Invalid JWT"), limits));
    }
    if b.require_version && headers.get("version").is_none() {
        return Err((Reply::err(401, "version header was not found."), limits));
    }
    if over || daily_spent {
        let mut r = Reply::ok(429, json!({"statusCode": 429, "message": "Too many requests"}));
        r.retry_after = None;
        return Err((r, limits));
    }
    match fault {
        Some(FaultKind::RateLimit { retry_after_secs }) => {
            let mut r = Reply::ok(429, json!({"statusCode": 429, "message": "Too many requests"}));
            r.retry_after = *retry_after_secs;
            Err((r, limits))
        }
        Some(FaultKind::Status { status }) => Err((Reply::err(*status, "Injected failure"), limits)),
        _ => Ok(limits),
    }
}

/// `POST /oauth/token` with `grant_type=refresh_token`: issues a new access token (accepted from
/// then on) and a new refresh token; the old refresh token is spent.
pub(super) async fn oauth_token(ghl: &LocalGhl, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let mut s = ghl.store.lock().await;
    let bad = |m: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "message": m}))).into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return bad("unsupported grant_type");
    }
    let Some(rt) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return bad("refresh_token is required");
    };
    if s.spent_refresh_tokens.contains(rt) {
        return bad("refresh token already used");
    }
    s.spent_refresh_tokens.push(rt.clone());
    s.oauth_refreshes += 1;
    let access = format!("at-{}", new_id());
    let refresh = format!("rt-{}", new_id());
    if !s.behaviour.valid_tokens.is_empty() {
        s.behaviour.valid_tokens.push(access.clone());
    }
    // A Location token's answer, with the fields HighLevel's OAuth documents list for it.
    axum::Json(json!({
        "access_token": access, "token_type": "Bearer", "expires_in": 86399, "refresh_token": refresh,
        "scope": "contacts.readonly contacts.write", "userType": "Location", "locationId": "loc",
        "companyId": "company1", "userId": "u1", "planId": "plan1", "isBulkInstallation": false
    }))
    .into_response()
}

/// The scope a request needs, as HighLevel's documents assign them.
fn scope_for(method: &Method, path: &str) -> Option<&'static str> {
    if path.starts_with("/locations/") && path.ends_with("/customFields") {
        return Some("locations/customFields.readonly");
    }
    if !path.starts_with("/contacts") {
        return None;
    }
    if *method == Method::GET || path == "/contacts/search" {
        Some("contacts.readonly")
    } else {
        Some("contacts.write")
    }
}

/// The location a request names: `locationId` in the query or the body, or the path's
/// `/locations/{id}/`.
fn location_named(path: &str, query: &str, body: &serde_json::Value) -> Option<String> {
    if let Some(rest) = path.strip_prefix("/locations/") {
        return rest.split('/').next().map(str::to_string);
    }
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "locationId")
        .map(|(_, v)| v.into_owned())
        .or_else(|| body.get("locationId").and_then(|v| v.as_str()).map(str::to_string))
}

/// Checks a token's grant (its location and scopes) against the request.
pub(super) fn authorize(
    s: &Store,
    token: Option<&str>,
    method: &Method,
    path: &str,
    query: &str,
    body: &serde_json::Value,
) -> Result<(), Reply> {
    let Some(grant) = token.and_then(|t| s.behaviour.token_grants.get(t)) else {
        return Ok(());
    };
    if let (Some(own), Some(named)) = (&grant.location_id, location_named(path, query, body))
        && *own != named
    {
        return Err(Reply::err(403, "The token does not have access to this location."));
    }
    if let (Some(scopes), Some(needed)) = (&grant.scopes, scope_for(method, path))
        && !scopes.iter().any(|s| s == needed)
    {
        return Err(Reply::err(401, "The token is not authorized for this scope."));
    }
    Ok(())
}

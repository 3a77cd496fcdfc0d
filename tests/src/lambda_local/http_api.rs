//! The HTTP API in front of a function (API Gateway HTTP API, Lambda proxy integration, payload
//! format 2.0).
//!
//! A request is matched against the template's routes (`404 {"message":"Not Found"}` otherwise),
//! throttled by the default route settings (`429 {"message":"Too Many Requests"}`), turned into a
//! version 2.0 event (`routeKey`, `rawPath`, `rawQueryString`, lower-cased headers with repeats
//! joined by commas, `cookies`, `queryStringParameters`, `pathParameters`, `requestContext.http`,
//! stage `$default`, the body base64-encoded with `isBase64Encoded` when it is not text) and
//! invoked synchronously; the function's response (`statusCode`, `headers`,
//! `multiValueHeaders`, `cookies`, `body`, `isBase64Encoded`, or any other JSON as a 200 body)
//! becomes the HTTP answer. A function error answers `500 {"message":"Internal Server Error"}`;
//! a throttled function `503 {"message":"Service Unavailable"}`; a body over 10 MB `413`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::runtime::{InvokeError, LocalFunction};
use super::template::{RouteDef, ThrottleDef};

/// HTTP API's payload limit.
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// A version 2.0 event, as API Gateway sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpApiEvent {
    pub version: String,
    pub route_key: String,
    pub raw_path: String,
    pub raw_query_string: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies: Option<Vec<String>>,
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_string_parameters: Option<BTreeMap<String, String>>,
    pub request_context: RequestContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_parameters: Option<BTreeMap<String, String>>,
    pub is_base64_encoded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    pub account_id: String,
    pub api_id: String,
    pub domain_name: String,
    pub domain_prefix: String,
    pub http: HttpContext,
    pub request_id: String,
    pub route_key: String,
    pub stage: String,
    pub time: String,
    pub time_epoch: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpContext {
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub source_ip: String,
    pub user_agent: String,
}

/// The structured response a function returns (payload format 2.0).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionResponse {
    status_code: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    multi_value_headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    cookies: Vec<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

/// A route as the HTTP API matches it.
#[derive(Debug, Clone)]
pub struct Route {
    pub def: RouteDef,
    segments: Option<Vec<Segment>>,
}

impl Route {
    pub fn new(def: RouteDef) -> Self {
        let segments = (def.path != "$default").then(|| {
            def.path
                .trim_start_matches('/')
                .split('/')
                .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(p) => match p.strip_suffix('+') {
                        Some(g) => Segment::Greedy(g.into()),
                        None => Segment::Param(p.into()),
                    },
                    None => Segment::Literal(s.into()),
                })
                .collect()
        });
        Self { def, segments }
    }

    pub fn route_key(&self) -> String {
        match &self.segments {
            None => "$default".into(),
            Some(_) => format!("{} {}", self.def.method, self.def.path),
        }
    }

    /// The path parameters when `method` and `path` match.
    fn matches(&self, method: &Method, path: &str) -> Option<BTreeMap<String, String>> {
        if self.def.method != "ANY" && self.def.method != method.as_str() {
            return None;
        }
        let Some(segments) = &self.segments else {
            return Some(BTreeMap::new());
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut params = BTreeMap::new();
        for (i, seg) in segments.iter().enumerate() {
            match seg {
                Segment::Greedy(name) => {
                    let rest = parts.get(i..).filter(|r| !r.is_empty() && !r[0].is_empty())?;
                    params.insert(name.clone(), decode(&rest.join("/")));
                    return Some(params);
                }
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let v = parts.get(i).filter(|v| !v.is_empty())?;
                    params.insert(name.clone(), decode(v));
                }
            }
        }
        (parts.len() == segments.len()).then_some(params)
    }

    /// More literal segments first, then a method over `ANY`, `$default` last.
    fn specificity(&self) -> (usize, usize, bool) {
        match &self.segments {
            None => (0, 0, false),
            Some(s) => (
                1 + s.iter().filter(|x| matches!(x, Segment::Literal(_))).count(),
                s.iter().filter(|x| !matches!(x, Segment::Greedy(_))).count(),
                self.def.method != "ANY",
            ),
        }
    }
}

fn decode(s: &str) -> String {
    urlencoding::decode(s).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string())
}

/// Whether API Gateway passes a body with this content type as text.
pub fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
        )
        || media.ends_with("+json")
        || media.ends_with("+xml")
}

/// Everything about one request the event is built from.
pub struct IncomingRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: String,
    pub api_id: &'a str,
    pub account_id: &'a str,
}

/// Builds the version 2.0 event for a request that matched `route`.
pub fn build_event(route: &Route, path_parameters: BTreeMap<String, String>, r: &IncomingRequest<'_>) -> HttpApiEvent {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in r.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == axum::http::header::COOKIE {
            cookies.extend(v.split(';').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()));
            continue;
        }
        headers.entry(name.as_str().to_ascii_lowercase()).and_modify(|e| *e = format!("{e},{v}")).or_insert(v);
    }
    let host = headers.get("host").cloned().unwrap_or_else(|| "localhost".into());
    let trace = format!(
        "Root=1-{:08x}-{}",
        chrono::Utc::now().timestamp(),
        &super::runtime::request_id().replace('-', "")[..24]
    );
    headers.entry("x-amzn-trace-id".into()).or_insert(trace);
    headers.entry("x-forwarded-for".into()).or_insert_with(|| r.source_ip.clone());
    headers.entry("x-forwarded-proto".into()).or_insert_with(|| "http".into());
    let port = host.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_else(|| "80".into());
    headers.entry("x-forwarded-port".into()).or_insert(port);
    let raw_query = r.uri.query().unwrap_or("").to_string();
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")));
        query.entry(k).and_modify(|e| *e = format!("{e},{v}")).or_insert(v);
    }
    let text = is_text(headers.get("content-type").map(String::as_str)) && std::str::from_utf8(r.body).is_ok();
    let body = (!r.body.is_empty())
        .then(|| if text { String::from_utf8_lossy(r.body).into_owned() } else { B64.encode(r.body) });
    let now = chrono::Utc::now();
    let route_key = route.route_key();
    HttpApiEvent {
        version: "2.0".into(),
        route_key: route_key.clone(),
        raw_path: r.uri.path().to_string(),
        raw_query_string: raw_query,
        cookies: (!cookies.is_empty()).then_some(cookies),
        query_string_parameters: (!query.is_empty()).then_some(query),
        request_context: RequestContext {
            account_id: r.account_id.into(),
            api_id: r.api_id.into(),
            domain_prefix: host.split('.').next().unwrap_or(&host).to_string(),
            domain_name: host,
            http: HttpContext {
                method: r.method.as_str().into(),
                path: r.uri.path().into(),
                protocol: "HTTP/1.1".into(),
                source_ip: r.source_ip.clone(),
                user_agent: headers.get("user-agent").cloned().unwrap_or_default(),
            },
            request_id: super::runtime::request_id(),
            route_key,
            stage: "$default".into(),
            time: now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            time_epoch: now.timestamp_millis(),
        },
        headers,
        is_base64_encoded: body.is_some() && !text,
        body,
        path_parameters: (!path_parameters.is_empty()).then_some(path_parameters),
    }
}

fn message(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "message": msg }))).into_response()
}

/// Turns a function's answer into the HTTP response API Gateway would send.
pub fn to_http_response(payload: &[u8]) -> Response {
    let internal = || message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    let value: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => return internal(),
    };
    if value.get("statusCode").is_none() {
        // Any other valid JSON: 200 with the JSON as the body.
        let mut r = (StatusCode::OK, payload.to_vec()).into_response();
        r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
        return r;
    }
    let Ok(f) = serde_json::from_value::<FunctionResponse>(value) else {
        return internal();
    };
    let Ok(status) = StatusCode::from_u16(f.status_code) else {
        return internal();
    };
    let body = match (&f.body, f.is_base64_encoded) {
        (None, _) => Vec::new(),
        (Some(b), false) => b.as_bytes().to_vec(),
        (Some(b), true) => match B64.decode(b) {
            Ok(b) => b,
            Err(_) => return internal(),
        },
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.remove("content-type");
    for (k, v) in &f.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            h.insert(n, v);
        }
    }
    for (k, vs) in &f.multi_value_headers {
        if let Ok(n) = HeaderName::try_from(k.as_str()) {
            for v in vs {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.append(n.clone(), v);
                }
            }
        }
    }
    for c in &f.cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append("set-cookie", v);
        }
    }
    r
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The HTTP API: routes to the functions that serve them.
pub struct HttpApi {
    routes: Vec<(Route, Arc<LocalFunction>)>,
    throttle: Option<(ThrottleDef, Mutex<Bucket>)>,
    api_id: String,
}

impl HttpApi {
    pub fn new(routes: Vec<(RouteDef, Arc<LocalFunction>)>, throttle: Option<ThrottleDef>) -> Arc<Self> {
        let mut routes: Vec<(Route, Arc<LocalFunction>)> =
            routes.into_iter().map(|(r, f)| (Route::new(r), f)).collect();
        routes.sort_by_key(|(r, _)| std::cmp::Reverse(r.specificity()));
        Arc::new(Self {
            routes,
            throttle: throttle.map(|t| (t, Mutex::new(Bucket { tokens: t.burst as f64, at: Instant::now() }))),
            api_id: "local".into(),
        })
    }

    fn admit(&self) -> bool {
        let Some((t, bucket)) = &self.throttle else { return true };
        let mut b = bucket.lock().expect("lock");
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * t.rate_per_sec).min(t.burst as f64);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Serves the API on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(MAX_BODY + 1))
            .with_state(self)
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await
    }
}

async fn handle(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((route, function, params)) =
        api.routes.iter().find_map(|(r, f)| r.matches(&method, uri.path()).map(|p| (r, f, p)))
    else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    if !api.admit() {
        return message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    }
    if body.len() > MAX_BODY {
        return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    }
    let event = build_event(
        route,
        params,
        &IncomingRequest {
            method: &method,
            uri: &uri,
            headers: &headers,
            body: &body,
            source_ip: peer.ip().to_string(),
            api_id: &api.api_id,
            account_id: &function.config.account_id,
        },
    );
    let payload = Bytes::from(serde_json::to_vec(&event).expect("the event serializes"));
    match function.invoke_bytes(payload, false, None).await {
        Ok(out) => to_http_response(&out),
        Err(InvokeError::Throttled(_)) => message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        Err(InvokeError::RequestTooLarge) => message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
        Err(InvokeError::Function { .. }) => message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> Route {
        Route::new(RouteDef { name: "r".into(), method: method.into(), path: path.into() })
    }

    fn request<'a>(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap, body: &'a [u8]) -> IncomingRequest<'a> {
        IncomingRequest {
            method,
            uri,
            headers,
            body,
            source_ip: "127.0.0.1".into(),
            api_id: "local",
            account_id: "123456789012",
        }
    }

    #[test]
    fn routes_match_with_their_parameters() {
        let r = route("GET", "/v1/contacts/{email}");
        assert_eq!(r.route_key(), "GET /v1/contacts/{email}");
        let p = r.matches(&Method::GET, "/v1/contacts/ada%40example.com").unwrap();
        assert_eq!(p["email"], "ada@example.com");
        assert!(r.matches(&Method::POST, "/v1/contacts/x").is_none());
        assert!(r.matches(&Method::GET, "/v1/contacts").is_none());
        assert!(r.matches(&Method::GET, "/v1/contacts/x/y").is_none());
        let g = route("ANY", "/files/{proxy+}");
        assert_eq!(g.matches(&Method::PUT, "/files/a/b").unwrap()["proxy"], "a/b");
        assert!(g.matches(&Method::PUT, "/files").is_none());
    }

    #[test]
    fn the_event_has_the_documented_shape() {
        let r = route("POST", "/webhooks/sproutvideo/{token}");
        let uri: Uri = "/webhooks/sproutvideo/tok?a=1&a=2&b=x%20y".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("Host", HeaderValue::from_static("127.0.0.1:3000"));
        h.insert("Content-Type", HeaderValue::from_static("application/json"));
        h.append("X-Multi", HeaderValue::from_static("one"));
        h.append("X-Multi", HeaderValue::from_static("two"));
        h.insert("Cookie", HeaderValue::from_static("c1=v1; c2=v2"));
        let params = r.matches(&Method::POST, uri.path()).unwrap();
        let e = build_event(&r, params, &request(&Method::POST, &uri, &h, br#"{"x":1}"#));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["version"], "2.0");
        assert_eq!(v["routeKey"], "POST /webhooks/sproutvideo/{token}");
        assert_eq!(v["rawPath"], "/webhooks/sproutvideo/tok");
        assert_eq!(v["rawQueryString"], "a=1&a=2&b=x%20y");
        assert_eq!(v["queryStringParameters"]["a"], "1,2");
        assert_eq!(v["queryStringParameters"]["b"], "x y");
        assert_eq!(v["headers"]["x-multi"], "one,two");
        assert_eq!(v["headers"]["content-type"], "application/json");
        assert!(v["headers"].get("cookie").is_none());
        assert_eq!(v["cookies"], serde_json::json!(["c1=v1", "c2=v2"]));
        assert_eq!(v["pathParameters"]["token"], "tok");
        assert_eq!(v["requestContext"]["stage"], "$default");
        assert_eq!(v["requestContext"]["http"]["method"], "POST");
        assert_eq!(v["requestContext"]["http"]["path"], "/webhooks/sproutvideo/tok");
        assert_eq!(v["body"], r#"{"x":1}"#);
        assert_eq!(v["isBase64Encoded"], false);
    }

    #[test]
    fn a_body_that_is_not_text_is_base64_encoded() {
        let r = route("POST", "/v1/events");
        let uri: Uri = "/v1/events".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/octet-stream"));
        let e = build_event(&r, BTreeMap::new(), &request(&Method::POST, &uri, &h, &[0, 159, 146, 150]));
        assert!(e.is_base64_encoded);
        assert_eq!(B64.decode(e.body.unwrap()).unwrap(), vec![0, 159, 146, 150]);
        let none = build_event(&r, BTreeMap::new(), &request(&Method::POST, &uri, &HeaderMap::new(), b""));
        assert!(none.body.is_none() && !none.is_base64_encoded);
    }

    #[tokio::test]
    async fn responses_become_http_answers() {
        use http_body_util::BodyExt;
        let r = to_http_response(
            br#"{"statusCode":202,"headers":{"content-type":"application/json"},"multiValueHeaders":{"x-a":["1","2"]},"cookies":["s=1"],"body":"eyJvayI6dHJ1ZX0=","isBase64Encoded":true}"#,
        );
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(r.headers()["set-cookie"], "s=1");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"ok":true}"#);
        let plain = to_http_response(br#"{"hello":"world"}"#);
        assert_eq!(plain.status(), 200);
        assert_eq!(to_http_response(b"not json").status(), 500);
        assert_eq!(to_http_response(br#"{"statusCode":"x"}"#).status(), 500);
    }
}

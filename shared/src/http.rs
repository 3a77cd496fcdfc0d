//! URL building for the GHL and SproutVideo clients, and the recorder of their answers.

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

/// One answer a client read: the request's method, its path below the client's base URL
/// (`/contacts/search`, `/videos`), and the JSON body as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedAnswer {
    pub method: String,
    pub path: String,
    pub body: serde_json::Value,
}

/// Keeps every successful JSON answer of the clients it is given to, as received, for a capture
/// (`doctor --capture`) or a test that compares answers.
#[derive(Debug, Default)]
pub struct Recorder {
    answers: std::sync::Mutex<Vec<RecordedAnswer>>,
}

impl Recorder {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// Keeps the answer to `method url` when its body is JSON; `base` is the client's base URL.
    pub fn keep(&self, method: &str, base: &Url, url: &Url, body: &[u8]) {
        let Ok(body) = serde_json::from_slice(body) else {
            return;
        };
        let prefix = base.path().trim_end_matches('/');
        let path = url.path().strip_prefix(prefix).unwrap_or(url.path()).to_string();
        let answer = RecordedAnswer { method: method.to_string(), path, body };
        self.answers.lock().expect("recorder lock").push(answer);
    }

    /// Every answer kept so far, oldest first.
    pub fn answers(&self) -> Vec<RecordedAnswer> {
        self.answers.lock().expect("recorder lock").clone()
    }

    /// The last answer kept.
    pub fn last(&self) -> Option<RecordedAnswer> {
        self.answers.lock().expect("recorder lock").last().cloned()
    }

    pub fn clear(&self) {
        self.answers.lock().expect("recorder lock").clear();
    }
}

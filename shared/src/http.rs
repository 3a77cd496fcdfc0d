//! URL building for the GHL and SproutVideo clients.

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

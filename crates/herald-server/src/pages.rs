//! What Herald serves to browsers besides the transports: the page at `/` (what Herald is and a
//! small console to try it) and the JavaScript SDK at `/client.js`, the very file of
//! `clients/js`, so a page imports it with no build step.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

pub async fn index() -> Html<&'static str> {
    Html(include_str!("pages/index.html"))
}

/// The JS SDK's source, compiled into the binary so the served module is the repository's.
pub const CLIENT_JS: &str = include_str!("../../../clients/js/herald.js");

/// A strong validator of this build's `client.js`: a revalidation costs a 304, not the file.
static CLIENT_JS_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let tag = format!("\"{:08x}-{:x}\"", crc32fast::hash(CLIENT_JS.as_bytes()), CLIENT_JS.len());
    HeaderValue::from_str(&tag).expect("hex digits make a valid header value")
});

/// `GET /client.js`: the SDK as an ES module. Cached for five minutes, then revalidated by its
/// ETag: the URL has no version in it, so a long cache would keep an old SDK after an upgrade.
pub async fn client_js(headers: HeaderMap) -> Response {
    let etag = CLIENT_JS_ETAG.clone();
    let cache = HeaderValue::from_static("public, max-age=300, must-revalidate");
    let matches = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()).is_some_and(|tags| {
        tags.split(',').any(|tag| tag.trim() == etag.to_str().unwrap_or_default() || tag.trim() == "*")
    });
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (header::CACHE_CONTROL, cache)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        CLIENT_JS,
    )
        .into_response()
}

//! Files served as they are, compiled into the binary: the SDK at `/client.js` and the pages'
//! stylesheet and scripts under `/assets/`. Each has a strong ETag, so a revalidation costs a
//! 304, not the file; URLs carry no version, so caches keep them five minutes at most.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The JS SDK's source, compiled in so the served module is the repository's.
pub const CLIENT_JS: &str = include_str!("../../../../clients/js/herald.js");

/// `/assets/{name}`: the stylesheet of every page, and each demo's script.
const ASSETS: &[(&str, &str, &str)] = &[
    ("herald.css", "text/css; charset=utf-8", include_str!("../../assets/herald.css")),
    ("demo/common.js", JAVASCRIPT, include_str!("../../assets/demo/common.js")),
    ("demo/chat.js", JAVASCRIPT, include_str!("../../assets/demo/chat.js")),
    ("demo/call.js", JAVASCRIPT, include_str!("../../assets/demo/call.js")),
    ("demo/board.js", JAVASCRIPT, include_str!("../../assets/demo/board.js")),
    ("demo/feed.js", JAVASCRIPT, include_str!("../../assets/demo/feed.js")),
    ("demo/files.js", JAVASCRIPT, include_str!("../../assets/demo/files.js")),
    ("demo/ticker.js", JAVASCRIPT, include_str!("../../assets/demo/ticker.js")),
    ("demo/live.js", JAVASCRIPT, include_str!("../../assets/demo/live.js")),
    ("admin/console.js", JAVASCRIPT, include_str!("../../assets/admin/console.js")),
];

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Each asset's ETag, in the order of [`ASSETS`], and the SDK's.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| ASSETS.iter().map(|(_, _, body)| etag_of(body)).collect());
static CLIENT_JS_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(CLIENT_JS));

fn etag_of(body: &str) -> HeaderValue {
    let tag = format!("\"{:08x}-{:x}\"", crc32fast::hash(body.as_bytes()), body.len());
    HeaderValue::from_str(&tag).expect("hex digits make a valid header value")
}

/// `GET /client.js`: the SDK as an ES module (CORS: the transports' layer, so any allowed
/// origin may import it).
pub async fn client_js(headers: HeaderMap) -> Response {
    serve(&headers, JAVASCRIPT, CLIENT_JS, CLIENT_JS_ETAG.clone())
}

/// `GET /assets/{*name}`.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|(path, _, _)| *path == name) {
        Some(index) => {
            let (_, content_type, body) = ASSETS[index];
            serve(&headers, content_type, body, ETAGS[index].clone())
        }
        None => ApiError::not_found().into_response(),
    }
}

fn serve(headers: &HeaderMap, content_type: &'static str, body: &'static str, etag: HeaderValue) -> Response {
    let cache = HeaderValue::from_static("public, max-age=300, must-revalidate");
    let matches = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()).is_some_and(|tags| {
        tags.split(',').any(|tag| tag.trim() == etag.to_str().unwrap_or_default() || tag.trim() == "*")
    });
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (header::CACHE_CONTROL, cache)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

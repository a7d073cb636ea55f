//! Files served as they are, compiled into the binary: the SDK at `/client.js` and the pages'
//! stylesheet and scripts under `/assets/`. Each has a strong ETag, so a revalidation costs a
//! 304, not the file; URLs carry no version, so caches keep them five minutes at most. A client
//! that accepts gzip gets it, compressed once on first request (`/client.js`: 46 KB → 12 KB).

use std::io::Write as _;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

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

/// One file as served: its bytes, gzipped, and an ETag for each form.
struct Served {
    content_type: &'static str,
    body: &'static str,
    etag: HeaderValue,
    gzipped: Bytes,
    gzipped_etag: HeaderValue,
}

impl Served {
    fn new(content_type: &'static str, body: &'static str) -> Self {
        let tag = format!("{:08x}-{:x}", crc32fast::hash(body.as_bytes()), body.len());
        let etag = |suffix: &str| {
            HeaderValue::from_str(&format!("\"{tag}{suffix}\"")).expect("hex digits make a valid header value")
        };
        Self { content_type, body, etag: etag(""), gzipped: gzip(body.as_bytes()), gzipped_etag: etag("-gz") }
    }
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Each asset as served, in the order of [`ASSETS`], and the SDK.
static SERVED: LazyLock<Vec<Served>> =
    LazyLock::new(|| ASSETS.iter().map(|(_, content_type, body)| Served::new(content_type, body)).collect());
static CLIENT_JS_SERVED: LazyLock<Served> = LazyLock::new(|| Served::new(JAVASCRIPT, CLIENT_JS));

/// `GET /client.js`: the SDK as an ES module (CORS: the transports' layer, so any allowed
/// origin may import it).
pub async fn client_js(headers: HeaderMap) -> Response {
    serve(&headers, &CLIENT_JS_SERVED)
}

/// `GET /assets/{*name}`.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|(path, _, _)| *path == name) {
        Some(index) => serve(&headers, &SERVED[index]),
        None => ApiError::not_found().into_response(),
    }
}

/// Whether the request accepts gzip: `Accept-Encoding` names `gzip` (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let codings = headers.get_all(header::ACCEPT_ENCODING).into_iter().filter_map(|value| value.to_str().ok());
    codings.flat_map(|value| value.split(',')).any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let weight = parts.find_map(|parameter| parameter.strip_prefix("q=")?.parse::<f32>().ok()).unwrap_or(1.0);
        (name.eq_ignore_ascii_case("gzip") || name == "*") && weight > 0.0
    })
}

fn serve(headers: &HeaderMap, served: &'static Served) -> Response {
    let gzipped = accepts_gzip(headers);
    let etag = if gzipped { served.gzipped_etag.clone() } else { served.etag.clone() };
    let cache = HeaderValue::from_static("public, max-age=300, must-revalidate");
    let vary = HeaderValue::from_static("accept-encoding");
    let matches = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()).is_some_and(|tags| {
        tags.split(',').any(|tag| tag.trim() == etag.to_str().unwrap_or_default() || tag.trim() == "*")
    });
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache), (header::VARY, vary)],
        )
            .into_response();
    }
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(served.content_type)),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
            (header::VARY, vary),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        if gzipped { axum::body::Body::from(served.gzipped.clone()) } else { axum::body::Body::from(served.body) },
    )
        .into_response();
    if gzipped {
        response.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

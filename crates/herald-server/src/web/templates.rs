//! The page templates (`templates/`, compiled in) and how a page is rendered: the bar's links,
//! HTML autoescaping, and the headers every page carries.

use std::sync::LazyLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::state::AppState;

/// Every template, by the name `{% extends %}` and [`render`] use.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("index.html", include_str!("../../templates/index.html")),
    ("doc.html", include_str!("../../templates/doc.html")),
    ("demo/chat.html", include_str!("../../templates/demo/chat.html")),
    ("demo/call.html", include_str!("../../templates/demo/call.html")),
    ("demo/board.html", include_str!("../../templates/demo/board.html")),
    ("demo/feed.html", include_str!("../../templates/demo/feed.html")),
    ("demo/files.html", include_str!("../../templates/demo/files.html")),
    ("demo/ticker.html", include_str!("../../templates/demo/ticker.html")),
    ("demo/live.html", include_str!("../../templates/demo/live.html")),
    ("admin/login.html", include_str!("../../templates/admin/login.html")),
    ("admin/_session.html", include_str!("../../templates/admin/_session.html")),
    ("admin/console.html", include_str!("../../templates/admin/console.html")),
    ("admin/channel.html", include_str!("../../templates/admin/channel.html")),
    ("admin/webhook.html", include_str!("../../templates/admin/webhook.html")),
];

static TEMPLATE_ENVIRONMENT: LazyLock<minijinja::Environment<'static>> = LazyLock::new(|| {
    let mut environment = minijinja::Environment::new();
    // Autoescaping follows the name: `.html` templates escape every value.
    for (name, source) in TEMPLATES {
        environment.add_template(name, source).unwrap_or_else(|error| panic!("template {name}: {error:#}"));
    }
    environment
});

/// One demo, as the front page and the bar list it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DemoLink {
    pub path: &'static str,
    pub name: &'static str,
    pub blurb: &'static str,
}

/// The demos, in the order the bar shows them (the demo module serves them).
pub const DEMOS: &[DemoLink] = &[
    DemoLink {
        path: "chat",
        name: "Chat",
        blurb: "Rooms, history on join, who is here, typing, and nothing lost across a drop.",
    },
    DemoLink { path: "call", name: "Video call", blurb: "Two tabs, one WebRTC call, signalled over a Herald channel." },
    DemoLink { path: "board", name: "Board", blurb: "Everyone's cursor on one canvas: many small messages a second." },
    DemoLink { path: "feed", name: "Feed", blurb: "Posts and likes, live for everyone; works on long-polling too." },
    DemoLink { path: "files", name: "Files", blurb: "Drop a file in one tab, download it in the others." },
    DemoLink {
        path: "ticker",
        name: "Tickers",
        blurb: "Stock prices and scores from a server-side publisher, on any transport.",
    },
    DemoLink { path: "live", name: "Live", blurb: "A presenter drives the slides; any number of viewers follow." },
];

/// Renders template `name` with `context` (the bar's demo links and the current page added).
/// A failure is a bug in a template: it is logged and answered 500, never a panic.
pub fn render(app: &AppState, name: &str, current: &str, context: minijinja::Value) -> Response {
    let demos: &[DemoLink] = if app.settings.demos.enabled { DEMOS } else { &[] };
    let base = minijinja::context! { demos => demos, current => current, version => env!("CARGO_PKG_VERSION") };
    let rendered = TEMPLATE_ENVIRONMENT
        .get_template(name)
        .and_then(|template| template.render(minijinja::context! { ..context, ..base }));
    match rendered {
        Ok(html) => {
            let mut response = Html(html).into_response();
            // Pages are rendered per request: no stale copy, and not framed by other sites.
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
            response
        }
        Err(error) => {
            tracing::error!(template = name, error = %format!("{error:#}"), "a page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Herald</title><p>This page failed to render; the server log says why."),
            )
                .into_response()
        }
    }
}

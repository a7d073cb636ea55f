//! `GET /docs/{name}`: the repository's `docs/*.md`, compiled in and rendered to HTML, so the
//! front page can link to the protocol and the client guide of this very build.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

const DOCS: &[(&str, &str)] = &[
    ("protocol", include_str!("../../../../docs/protocol.md")),
    ("clients", include_str!("../../../../docs/clients.md")),
    ("presence", include_str!("../../../../docs/presence.md")),
    ("webhooks", include_str!("../../../../docs/webhooks.md")),
    ("pusher", include_str!("../../../../docs/pusher.md")),
    ("scaling", include_str!("../../../../docs/scaling.md")),
    ("metrics", include_str!("../../../../docs/metrics.md")),
    ("configuration", include_str!("../../../../docs/configuration.md")),
    ("conformance", include_str!("../../../../docs/conformance.md")),
    ("fuzzing", include_str!("../../../../docs/fuzzing.md")),
];

/// Each document as HTML, made once.
static RENDERED: LazyLock<Vec<(&str, String, String)>> = LazyLock::new(|| {
    DOCS.iter()
        .map(|(name, markdown)| {
            let title = markdown.lines().find_map(|line| line.strip_prefix("# ")).unwrap_or(name).to_string();
            (*name, title, to_html(markdown))
        })
        .collect()
});

/// Markdown to HTML. The documents are the repository's own, but raw HTML in them (the test
/// markers `<!-- test: … -->`) is dropped rather than trusted; links between documents
/// (`protocol.md`) point at their pages here (`protocol`).
fn to_html(markdown: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag};
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_HEADING_ATTRIBUTES;
    let events = Parser::new_ext(markdown, options).filter_map(|event| match event {
        Event::Html(_) | Event::InlineHtml(_) => None,
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            let dest_url = match dest_url.split_once(".md") {
                Some((page, anchor)) if !page.contains("://") && !page.contains('/') => {
                    format!("{page}{anchor}").into()
                }
                _ => dest_url,
            };
            Some(Event::Start(Tag::Link { link_type, dest_url, title, id }))
        }
        other => Some(other),
    });
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

pub async fn doc(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    let Some((_, title, html)) = RENDERED.iter().find(|(doc, _, _)| *doc == name) else {
        return ApiError::not_found().into_response();
    };
    let documents: Vec<_> =
        RENDERED.iter().map(|(doc, title, _)| minijinja::context! { name => doc, title => title }).collect();
    crate::web::templates::render(
        &app,
        "doc.html",
        "docs",
        minijinja::context! {
            title => title,
            name => name,
            documents => documents,
            body => minijinja::Value::from_safe_string(html.clone()),
        },
    )
}

//! What Herald serves to people rather than programs: the front page, the docs, the shared
//! stylesheet and page scripts, and the JavaScript SDK at `/client.js` (the very file of
//! `clients/js`, so a page imports it with no build step). Pages are minijinja templates
//! compiled into the binary (`templates/`), rendered server-side with HTML autoescaping; the
//! demos and the admin console render theirs through [`templates::render`].

mod assets;
mod docs;
pub mod templates;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;

use crate::state::AppState;

pub use assets::{asset, client_js};
pub use docs::doc;

/// `GET /`: what this server is, and where to go from here.
pub async fn index(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map_or_else(|| app.settings.listen.to_string(), str::to_string);
    let (http, ws) = if app.settings.tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    let demos_off_reason = "by default they run only without [auth] on a loopback address; \
                            [demo] enabled = true serves them anyway";
    templates::render(
        &app,
        "index.html",
        "",
        minijinja::context! {
            title => "Herald",
            base_url => format!("{http}://{host}"),
            ws_url => format!("{ws}://{host}/ws"),
            api_open => app.settings.api_dev_mode(),
            demos_off_reason => demos_off_reason,
        },
    )
}

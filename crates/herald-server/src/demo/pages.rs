//! The demo pages themselves: each handler renders its template with what the page's URL
//! asks for (a room, a role, a transport), checked.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use crate::state::AppState;
use crate::web::templates::render;

/// The query every demo page may take.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    room: Option<String>,
    role: Option<String>,
    transport: Option<String>,
}

impl PageQuery {
    /// `?room=`, kept to what a channel name segment may hold (the page's script checks the same).
    fn room(&self, fallback: &'static str) -> String {
        self.room.as_deref().filter(|room| valid_room(room)).map_or_else(|| fallback.to_string(), str::to_string)
    }
}

/// A room name: 1 to 40 of letters, digits, `-` and `_`.
pub fn valid_room(room: &str) -> bool {
    (1..=40).contains(&room.len())
        && room.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn page(app: &AppState, template: &str, path: &str, title: &str, context: minijinja::Value) -> Response {
    render(app, template, path, minijinja::context! { title => title, ..context })
}

pub async fn chat(State(app): State<AppState>, Query(query): Query<PageQuery>) -> Response {
    let rooms = ["lobby", "random", "help"];
    page(&app, "demo/chat.html", "chat", "Chat", minijinja::context! { room => query.room("lobby"), rooms => rooms })
}

pub async fn call(State(app): State<AppState>, Query(query): Query<PageQuery>) -> Response {
    page(&app, "demo/call.html", "call", "Video call", minijinja::context! { room => query.room("lobby") })
}

pub async fn board(State(app): State<AppState>, Query(query): Query<PageQuery>) -> Response {
    page(&app, "demo/board.html", "board", "Board", minijinja::context! { room => query.room("lobby") })
}

pub async fn feed(State(app): State<AppState>) -> Response {
    page(&app, "demo/feed.html", "feed", "Feed", minijinja::context! {})
}

pub async fn files(State(app): State<AppState>, Query(query): Query<PageQuery>) -> Response {
    let max_file_size = app.settings.demos.max_file_size;
    let max_file_mib = max_file_size / (1024 * 1024);
    page(
        &app,
        "demo/files.html",
        "files",
        "Files",
        minijinja::context! { room => query.room("lobby"), max_file_mib, max_file_size },
    )
}

pub async fn ticker(State(app): State<AppState>, Query(query): Query<PageQuery>) -> Response {
    let transport =
        query.transport.as_deref().filter(|name| ["websocket", "sse", "poll"].contains(name)).unwrap_or("auto");
    page(&app, "demo/ticker.html", "ticker", "Tickers", minijinja::context! { transport })
}

pub async fn live(State(app): State<AppState>, Query(query): Query<PageQuery>) -> Response {
    let role = if query.role.as_deref() == Some("presenter") { "presenter" } else { "viewer" };
    page(&app, "demo/live.html", "live", "Live", minijinja::context! { room => query.room("keynote"), role })
}

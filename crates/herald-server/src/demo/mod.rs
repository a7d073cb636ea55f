//! The demo apps under `/demo/…`: chat, video call, multiplayer board, social feed, file
//! sharing, tickers and live broadcast, each a server-rendered page whose script uses the JS SDK
//! from `/client.js`. Their channels live in the built-in `demo` and `demo-signal` namespaces
//! (config: `[demo]`); the tickers' publisher and the file store are the only server-side parts.

pub mod files;
pub mod pages;
pub mod ticker;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The routes, mounted under `/demo` when demos are enabled.
pub fn router() -> Router<AppState> {
    Router::new()
        // The demos are listed on the front page.
        .route("/", get(|| async { axum::response::Redirect::to("/") }))
        .route("/chat", get(pages::chat))
        .route("/call", get(pages::call))
        .route("/board", get(pages::board))
        .route("/feed", get(pages::feed))
        .route("/files", get(pages::files))
        .route("/ticker", get(pages::ticker))
        .route("/live", get(pages::live))
        .route("/files/{room}", post(files::upload))
        .route("/files/{room}/{id}", get(files::download))
}

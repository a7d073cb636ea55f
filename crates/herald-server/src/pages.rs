//! The page served at `/`: what Herald is and a small console to try it from a browser.

use axum::response::Html;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("pages/index.html"))
}

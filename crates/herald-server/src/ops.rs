//! The operator's endpoints: `GET /healthz`, `GET /readyz` and `GET /metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use herald_wire::http::Status;

use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> impl IntoResponse {
    axum::Json(Status { status: "ok".to_string() })
}

pub async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    if app.shutdown.is_cancelled() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down")
            .into_response();
    }
    if !app.hub.is_ready() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", "the engine is not connected")
            .into_response();
    }
    axum::Json(Status { status: "ready".to_string() }).into_response()
}

/// `GET /metrics`: the gauges read now, then every metric in the Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("herald_connections_open").set(app.connections.open_connections() as f64);
    metrics::gauge!("herald_channels_with_subscribers").set(app.hub.channels().len() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
}

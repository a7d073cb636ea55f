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
    for (transport, open) in app.connections.open_by_transport() {
        metrics::gauge!("herald_connections", "transport" => transport.label()).set(open as f64);
    }
    let channels = crate::control::reserved::visible(app.hub.channels());
    metrics::gauge!("herald_channels").set(channels.len() as f64);
    metrics::gauge!("herald_subscriptions").set(channels.iter().map(|(_, count)| *count).sum::<usize>() as f64);
    metrics::gauge!("herald_presence_entries").set(app.hub.held_presence_entries() as f64);
    metrics::gauge!("herald_webhook_event_queue").set(app.webhooks.queued_events() as f64);
    match app.webhooks.outbox().pending_count().await {
        Ok(pending) => metrics::gauge!("herald_webhook_outbox_pending").set(pending as f64),
        Err(error) => tracing::warn!(%error, "cannot count the webhook outbox's pending deliveries"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
}

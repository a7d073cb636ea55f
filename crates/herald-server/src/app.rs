//! The application: shared state and the HTTP router that maps every endpoint to its module.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use herald_core::Hub;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::error::ApiError;
use crate::{api, pages, transport};

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    /// Cancelled when the server begins to shut down; every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(hub: Arc<Hub>, settings: Arc<Settings>, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        Self(Arc::new(AppInner { hub, settings, shutdown, tasks }))
    }
}

pub fn router(app: AppState) -> Router {
    // Room for the largest allowed data plus the envelope around it.
    let body_limit = app.settings.limits.max_message_size.get().saturating_mul(2).saturating_add(64 * 1024);
    let mut router = Router::new()
        .route("/", get(pages::index))
        .route("/ws", get(transport::ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/api", api::router().layer(DefaultBodyLimit::max(body_limit)));
    if app.settings.websocket.echo_route {
        router = router.route("/ws/echo", get(transport::ws::echo));
    }
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .with_state(app)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    if app.shutdown.is_cancelled() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down")
            .into_response();
    }
    axum::Json(serde_json::json!({ "status": "ready" })).into_response()
}

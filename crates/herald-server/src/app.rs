//! The application: shared state and the HTTP router that maps every endpoint to its module.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use herald_core::Hub;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Settings;
use crate::error::ApiError;
use crate::transport::limits::{ConnectionLimiter, KeyRates};
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
    /// Admission of long-lived connections (in all, per client IP, parked polls).
    pub connections: Arc<ConnectionLimiter>,
    /// Publish rate per API key.
    pub api_rates: KeyRates<usize>,
    /// Publish rate per client user publishing through the server API (the WebSocket rate).
    pub client_api_rates: KeyRates<String>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(hub: Arc<Hub>, settings: Arc<Settings>, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        let limits = &settings.limits;
        let connections =
            ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip, limits.max_pending_polls);
        let api_rates = KeyRates::new(limits.api_publish_rate);
        let client_api_rates = KeyRates::new(limits.client_publish_rate);
        crate::metrics::handle();
        Self(Arc::new(AppInner { hub, settings, shutdown, tasks, connections, api_rates, client_api_rates }))
    }
}

pub fn router(app: AppState) -> Router {
    // Room for the largest allowed data plus the envelope around it.
    let body_limit = app.settings.limits.max_message_size.get().saturating_mul(2).saturating_add(64 * 1024);
    let mut router = Router::new()
        .route("/", get(pages::index))
        .route("/ws", get(transport::ws::upgrade))
        .route("/sse", get(transport::streaming::sse))
        .route("/stream", get(transport::streaming::ndjson))
        .route("/poll", get(transport::poll::poll))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::scrape))
        .nest("/api", api::router().layer(DefaultBodyLimit::max(body_limit)).layer(api_cors_layer(&app.settings)));
    if app.settings.websocket.echo_route {
        router = router.route("/ws/echo", get(transport::ws::echo));
    }
    let cors = cors_layer(&app.settings);
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .layer(cors)
        .with_state(app)
}

/// CORS for the server API: only the configured origins (never "any"): a web page a developer
/// happens to visit must not drive their local Herald's API.
fn api_cors_layer(settings: &Settings) -> CorsLayer {
    let origins = settings.allowed_origins.iter().flatten().filter_map(|origin| HeaderValue::from_str(origin).ok());
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600))
}

/// CORS for browser use of the transports: the configured origins, or any origin in dev mode.
fn cors_layer(settings: &Settings) -> CorsLayer {
    let origins = match &settings.allowed_origins {
        None => AllowOrigin::any(),
        Some(origins) => AllowOrigin::list(origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok())),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("last-event-id")])
        .expose_headers([transport::poll::CURSOR_HEADER])
        .max_age(std::time::Duration::from_secs(3600))
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

//! The application: shared state and the HTTP router that maps every endpoint to its module.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use herald_core::{Hub, PublishRequest, Published};
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
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        hub: Arc<Hub>,
        webhooks: Arc<crate::webhooks::Webhooks>,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let limits = &settings.limits;
        let connections =
            ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip, limits.max_pending_polls);
        let api_rates = KeyRates::new(limits.api_publish_rate);
        let client_api_rates = KeyRates::new(limits.client_publish_rate);
        crate::metrics::handle();
        Self(Arc::new(AppInner { hub, settings, shutdown, tasks, connections, api_rates, client_api_rates, webhooks }))
    }

    /// Publishes a batch, and records the webhook events of what was published before
    /// answering: an acknowledged publish has its events in the outbox. Outcomes in order.
    pub async fn publish_batch(&self, requests: Vec<PublishRequest>) -> Vec<Result<Published, ApiError>> {
        // Each publish's webhook endpoints, with its data kept for their events.
        let events: Vec<Option<(Bytes, Vec<String>)>> = requests
            .iter()
            .map(|request| {
                let endpoints = self.webhooks.publication_endpoints(&request.channel);
                (!endpoints.is_empty()).then(|| (request.data.clone(), endpoints))
            })
            .collect();
        if events.iter().all(Option::is_none) {
            return self.hub.publish_batch(requests).await.into_iter().map(|outcome| Ok(outcome?)).collect();
        }
        // In a task of its own: a caller that goes away (a client disconnecting) must not cut
        // this between the publish and its events reaching the outbox.
        let count = requests.len();
        let app = self.clone();
        match self.tasks.spawn(async move { app.publish_with_events(requests, events).await }).await {
            Ok(outcomes) => outcomes,
            Err(error) => (0..count)
                .map(|_| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())))
                .collect(),
        }
    }

    async fn publish_with_events(
        &self,
        requests: Vec<PublishRequest>,
        events: Vec<Option<(Bytes, Vec<String>)>>,
    ) -> Vec<Result<Published, ApiError>> {
        let channels: Vec<_> = requests.iter().map(|request| request.channel.clone()).collect();
        let order = self.webhooks.order_guard(channels.iter()).await;
        let outcomes = self.hub.publish_batch(requests).await;
        let published: Vec<(&Published, &Bytes, &[String])> = outcomes
            .iter()
            .zip(&events)
            .filter_map(|(outcome, event)| {
                let (data, endpoints) = event.as_ref()?;
                Some((outcome.as_ref().ok()?, data, endpoints.as_slice()))
            })
            .collect();
        let submitted = self.webhooks.submit_publications(&published).await;
        drop(order);
        let recorded = match submitted {
            Ok(pending) => pending.wait().await,
            Err(error) => Err(error),
        };
        outcomes
            .into_iter()
            .zip(events)
            .map(|(outcome, event)| match (outcome, &recorded) {
                (Err(error), _) => Err(ApiError::from(error)),
                (Ok(_), Err(error)) if event.is_some() => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outbox_unavailable",
                    format!("published, but its webhook event could not be recorded ({error}): publish again with the same idempotency key"),
                )),
                (Ok(published), _) => Ok(published),
            })
            .collect()
    }

    pub async fn publish(&self, request: PublishRequest) -> Result<Published, ApiError> {
        self.publish_batch(vec![request]).await.pop().unwrap_or_else(|| {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no outcome for a publish"))
        })
    }
}

pub fn router(app: AppState) -> Router {
    // Room for the largest allowed data plus the envelope around it.
    let body_limit = app.settings.limits.max_message_size.get().saturating_mul(2).saturating_add(64 * 1024);
    let mut transports = Router::new()
        .route("/", get(pages::index))
        .route("/ws", get(transport::ws::upgrade))
        .route("/sse", get(transport::streaming::sse))
        .route("/stream", get(transport::streaming::ndjson))
        .route("/poll", get(transport::poll::poll))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::scrape));
    if app.settings.websocket.echo_route {
        transports = transports.route("/ws/echo", get(transport::ws::echo));
    }
    // A layer wraps only the routes (and 405 answers) registered before it, so each part gets
    // its own CORS after them: the API answers browsers with its stricter CORS alone, and a
    // preflight reaches the layer that answers it.
    let api = api::router()
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(api_cors_layer(&app.settings));
    transports
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::not_found() })
        .layer(cors_layer(&app.settings))
        .nest("/api", api)
        .with_state(app)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

/// CORS for the server API: only the configured origins (never "any"): a web page a developer
/// happens to visit must not drive their local Herald's API.
fn api_cors_layer(settings: &Settings) -> CorsLayer {
    let origins = settings.allowed_origins.iter().flatten().filter_map(|origin| HeaderValue::from_str(origin).ok());
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
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
    if !app.hub.is_ready() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", "the engine is not connected")
            .into_response();
    }
    axum::Json(serde_json::json!({ "status": "ready" })).into_response()
}

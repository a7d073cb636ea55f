//! The HTTP router: which path goes to which module, and the two CORS layers (the transports',
//! which allow any origin in dev mode, and the API's, which allows only configured origins). It
//! only assembles: every handler lives in its own module.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Settings;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{admin, api, demo, ops, pusher, transport, web};

pub fn router(app: AppState) -> Router {
    // Room for the largest allowed data plus the envelope around it.
    let body_limit = app.settings.limits.max_message_size.get().saturating_mul(2).saturating_add(64 * 1024);
    let mut transports = Router::new()
        .route("/", get(web::index))
        .route("/client.js", get(web::client_js))
        .route("/assets/{*name}", get(web::asset))
        .route("/docs/{name}", get(web::doc))
        .route("/docs", get(|| async { axum::response::Redirect::to("/docs/clients") }))
        .route("/ws", get(transport::ws::upgrade))
        .route("/sse", get(transport::streaming::sse))
        .route("/stream", get(transport::streaming::ndjson))
        .route("/poll", get(transport::poll::poll))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(pusher::client_routes(&app.settings.pusher.http_path));
    if app.settings.websocket.echo_route {
        transports = transports.route("/ws/echo", get(transport::ws::echo));
    }
    if app.settings.demos.enabled {
        // Room for the largest file the file-sharing demo takes.
        let upload_limit = app.settings.demos.max_file_size.saturating_add(64 * 1024);
        transports = transports.nest("/demo", demo::router().layer(DefaultBodyLimit::max(upload_limit)));
    }
    // A layer wraps only the routes (and 405 answers) registered before it, so each part gets
    // its own CORS after them: the API answers browsers with its stricter CORS alone, and a
    // preflight reaches the layer that answers it.
    let api = api::router()
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(api_cors_layer(&app.settings));
    let router = transports
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::not_found() })
        .layer(cors_layer(&app.settings))
        .nest("/api", api)
        // Pusher's server SDKs sign their requests; no browser calls this API.
        .merge(pusher::api_routes().layer(DefaultBodyLimit::max(body_limit)))
        // After the transports' CORS: the console answers its own origin only.
        .nest("/admin", admin::router());
    // Last, so it runs first: behind trusted proxies the client's address is the forwarded one.
    let router = if app.settings.trusted_proxies.is_empty() {
        router
    } else {
        router.layer(axum::middleware::map_request_with_state(
            app.settings.trusted_proxies.clone(),
            crate::proxy::client_address,
        ))
    };
    router.with_state(app)
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

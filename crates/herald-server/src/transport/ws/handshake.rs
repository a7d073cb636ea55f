//! The WebSocket opening handshake (RFC 6455) on hyper's upgrade, for `GET /ws` and the echo
//! route: origin check, admission, the handshake's checks, `101 Switching Protocols`, then the
//! connection's task, tracked from the start.

use std::future::Future;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::deflate::Deflate;
use super::session;
use super::watched::{Socket, WatchedIo};
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::state::AppState;
use crate::transport::limits::ConnectionPermit;
use crate::transport::origin::check_origin;

pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    // A token may come with the upgrade (`?token=` or `Authorization`), or later in `connect`;
    // `?positions=` is where the token's server-side subscriptions resume.
    let query = |name: &str| {
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let token = query("token").or_else(|| crate::auth::bearer(request.headers()).map(str::to_string));
    let positions = match query("positions").filter(|text| !text.is_empty()) {
        None => Vec::new(),
        Some(text) => match crate::transport::subscription::parse_positions(&text) {
            Ok(positions) => positions,
            Err(error) => return error.into_response(),
        },
    };
    let identity = match crate::auth::identify(app.settings.auth.as_deref(), token.as_deref()) {
        Ok(identity) => identity,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let session_app = app.clone();
    accept(app, peer, request, Transport::WebSocket, true, move |socket, permit, deflate| {
        session::run(session_app, socket, identity, positions, deflate, permit)
    })
    .unwrap_or_else(IntoResponse::into_response)
}

/// The echo route: same origin check, admission, handshake and limits as `/ws`.
pub async fn echo(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    let echo_app = app.clone();
    accept(app, peer, request, Transport::WebSocket, true, move |socket, permit, deflate| {
        super::echo::run(echo_app, socket, deflate, permit)
    })
    .unwrap_or_else(IntoResponse::into_response)
}

/// Checks the origin, admits the connection, checks the handshake, answers `101 Switching
/// Protocols` (agreeing permessage-deflate where `compression` allows, the config enables it
/// and the client offers it), and once hyper hands the socket over, runs `serve` on it (with
/// the admission, held as long as the connection, and what was agreed) in a tracked task of its
/// own: the task that waited for the upgrade ends, so its state does not stay in every
/// connection's.
pub(crate) fn accept<F, Fut>(
    app: AppState,
    peer: std::net::SocketAddr,
    mut request: Request,
    transport: Transport,
    compression: bool,
    serve: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Socket, ConnectionPermit, Option<Deflate>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    check_origin(&app.settings, request.headers())?;
    let permit = app.connections.admit(peer.ip(), transport)?;
    let accept_key = check_handshake(request.headers())?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down"));
    }
    let agreed = (compression && app.settings.websocket.compression)
        .then(|| super::deflate::negotiate(request.headers()))
        .flatten();
    let deflate = agreed.as_ref().map(|(deflate, _)| *deflate);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (shutdown, tasks) = (app.shutdown.clone(), app.tasks.clone());
    app.tasks.spawn(async move {
        let upgraded = tokio::select! {
            upgraded = on_upgrade => upgraded,
            () = shutdown.cancelled() => return,
        };
        match upgraded {
            Ok(upgraded) => {
                tasks.spawn(serve(WatchedIo::new(TokioIo::new(upgraded)), permit, deflate));
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
    if let Some((_, extensions)) = agreed {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    Ok(response)
}

/// The RFC 6455 opening handshake's checks; returns the `Sec-WebSocket-Accept` value.
fn check_handshake(headers: &HeaderMap) -> Result<HeaderValue, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_upgrade_required",
            "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|value| value.to_str().ok()) != Some("13") {
        // RFC 6455 4.4: say which version we speak.
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_version_unsupported",
            "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)",
        )
        .with_header(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| key.len() == 24)
        .ok_or_else(|| ApiError::bad_request("bad_handshake", "missing or malformed Sec-WebSocket-Key"))?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| ApiError::bad_request("bad_handshake", "malformed Sec-WebSocket-Key"))
}

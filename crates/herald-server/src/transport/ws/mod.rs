//! WebSocket transport: `GET /ws`, the native JSON protocol (see `docs/protocol.md`), and
//! `GET /ws/echo` for the conformance suite.
//!
//! The RFC 6455 handshake is answered here on hyper's upgrade, and frames are read and written
//! by Herald itself (with tungstenite's header parsing), so that Herald owns the socket: each
//! connection's task is tracked from the start (shutdown waits for it), an idle connection
//! holds no buffer, and a connection closed for bad input can linger on its raw socket until
//! the peer has read the close frame.
//!
//! - [`session`]: the per-connection loop, bounded writes, goodbyes;
//! - [`commands`]: the client commands;
//! - [`frames`]: client messages in, server frames out;
//! - [`echo`]: the echo route;
//! - [`watched`]: the socket, noting when it may have input.

pub mod commands;
mod echo;
pub mod frames;
mod session;
mod watched;

pub use watched::WatchedIo;

use std::future::Future;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::app::AppState;
use crate::error::ApiError;
use crate::transport::limits::{ConnectionKind, ConnectionPermit};
use crate::transport::origin::check_origin;

/// The socket type of every Herald WebSocket.
pub type Socket = WatchedIo<TokioIo<hyper::upgrade::Upgraded>>;

/// Close codes Herald uses (documented in `docs/protocol.md`).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client fell too far behind; reconnect and recover from the last position seen.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Nothing heard from the client within the ping interval plus the pong timeout.
    pub const NO_PONG: u16 = 4002;
    /// The client's token expired and was not refreshed: get a fresh one, then reconnect.
    pub const TOKEN_EXPIRED: u16 = 4003;
}

/// Publications per `history` reply at most.
const MAX_HISTORY_LIMIT: usize = 100;

pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    // A token may come with the upgrade (`?token=` or `Authorization`), or later in `connect`.
    let token =
        query_token(request.uri().query()).or_else(|| crate::auth::bearer(request.headers()).map(str::to_string));
    let identity = match crate::auth::identify(app.settings.auth.as_deref(), token.as_deref()) {
        Ok(identity) => identity,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let session_app = app.clone();
    accept(app, peer, request, move |socket, permit| session::run(session_app, socket, identity, permit))
        .unwrap_or_else(IntoResponse::into_response)
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == "token").map(|(_, value)| value.into_owned())
}

/// The echo route: same origin check, admission, handshake and limits as `/ws`.
pub async fn echo(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    let echo_app = app.clone();
    accept(app, peer, request, move |socket, permit| echo::run(echo_app, socket, permit))
        .unwrap_or_else(IntoResponse::into_response)
}

/// Checks the origin, admits the connection, checks the handshake, answers `101 Switching
/// Protocols`, and once hyper hands the socket over, runs `serve` on it (with the admission,
/// held as long as the connection) in a tracked task of its own: the task that waited for the
/// upgrade ends, so its state does not stay in every connection's.
fn accept<F, Fut>(
    app: AppState,
    peer: std::net::SocketAddr,
    mut request: Request,
    serve: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Socket, ConnectionPermit) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    check_origin(&app.settings, request.headers())?;
    let permit = app.connections.admit(peer.ip(), ConnectionKind::WebSocket)?;
    let accept_key = check_handshake(request.headers())?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down"));
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (shutdown, tasks) = (app.shutdown.clone(), app.tasks.clone());
    app.tasks.spawn(async move {
        let upgraded = tokio::select! {
            upgraded = on_upgrade => upgraded,
            () = shutdown.cancelled() => return,
        };
        match upgraded {
            Ok(upgraded) => {
                tasks.spawn(serve(WatchedIo::new(TokioIo::new(upgraded)), permit));
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
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

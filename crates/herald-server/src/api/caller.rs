//! Who is calling the server API (an API key and its scope, dev mode, or a client token that
//! may publish), and the JSON request body, checked for its content type.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use herald_core::ChannelName;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::auth::Identity;
use crate::config::KeyScope;
use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling the server API: a backend with an API key (or anyone in dev mode), or, for
/// publishing only, a client whose token grants it.
pub enum ApiCaller {
    /// `key` is the key's index (none in dev mode), for its publish rate.
    Server {
        key: Option<usize>,
        scope: KeyScope,
    },
    Client(Identity),
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers, app)
    }
}

/// The API key `presented` is (its index and scope), if it is one. Every key is compared, in
/// constant time, so timing tells nothing about which matched.
pub fn key_scope(app: &AppState, presented: &str) -> Option<(usize, KeyScope)> {
    let mut matched = None;
    for (index, (key, scope)) in app.settings.api_keys.iter().enumerate() {
        if bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
            matched = Some((index, *scope));
        }
    }
    matched
}

impl ApiCaller {
    fn from_headers(headers: &HeaderMap, app: &AppState) -> Result<Self, ApiError> {
        if app.settings.api_dev_mode() {
            return Ok(Self::Server { key: None, scope: KeyScope::Full });
        }
        let Some(presented) = crate::auth::bearer(headers) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the server API needs `Authorization: Bearer <api key>`",
            ));
        };
        if let Some((index, scope)) = key_scope(app, presented) {
            return Ok(Self::Server { key: Some(index), scope });
        }
        match app.settings.auth.as_deref() {
            Some(auth) if presented.matches('.').count() == 2 => {
                Ok(Self::Client(Identity::User(Box::new(auth.verify(presented)?))))
            }
            _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the API key is not valid")),
        }
    }

    /// Whoever may read `channel`'s history and presence: a backend whose key may read, or a
    /// client that may subscribe to it (with its token, or with none where the namespace is
    /// anonymous). What a client could read over WebSocket it may read here, so the SDK on
    /// SSE or long-polling has history and presence too.
    pub fn check_reader(headers: &HeaderMap, app: &AppState, channel: &ChannelName) -> Result<(), ApiError> {
        let identity = match Self::from_headers(headers, app) {
            Ok(Self::Server { scope, .. }) if scope.may_read() => return Ok(()),
            Ok(Self::Server { .. }) => return Err(only_publishes()),
            Ok(Self::Client(identity)) => identity,
            // No credentials at all: an anonymous client, where the namespace has them.
            Err(_) if crate::auth::bearer(headers).is_none() => Identity::Anonymous,
            Err(error) => return Err(error),
        };
        crate::auth::may_subscribe(&identity, app.hub.namespaces().options_for(channel), channel)?;
        Ok(())
    }

    /// May this caller publish to `channels`? Takes one publish per channel from its rate.
    pub fn check_publish(&self, app: &AppState, channels: &[ChannelName]) -> Result<(), ApiError> {
        match self {
            Self::Server { scope, .. } if !scope.may_publish() => Err(read_only()),
            Self::Server { key, .. } => key.map_or(Ok(()), |key| app.api_rates.take(key, channels.len())),
            Self::Client(identity) => {
                for channel in channels {
                    crate::auth::may_publish(identity, app.hub.namespaces().options_for(channel), channel)?;
                }
                let user = identity.user().unwrap_or_default().to_string();
                app.client_api_rates.take(user, channels.len())
            }
        }
    }
}

fn read_only() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "this API key may only read")
}

fn only_publishes() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "this API key may only publish")
}

/// Proof that the request may read through the server API: a key that may read, or dev mode.
pub struct ApiAccess;

impl FromRequestParts<AppState> for ApiAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        match ApiCaller::from_request_parts(parts, app).await? {
            ApiCaller::Server { scope, .. } if scope.may_read() => Ok(Self),
            ApiCaller::Server { .. } => Err(only_publishes()),
            ApiCaller::Client(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "a client token may only publish (POST /api/publish); this needs an API key",
            )),
        }
    }
}

/// Bodies must be declared JSON: a cross-site form or `text/plain` POST (which browsers send
/// without asking) is refused before it is read.
/// A JSON request body, parsed by the handler (so that the value may borrow from it). The
/// content type is checked on the request's own headers: a `HeaderMap` extractor would copy
/// them all on every publish.
pub(crate) struct JsonBody {
    json: bool,
    body: Result<Bytes, BytesRejection>,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let json =
            content_type.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        Ok(Self { json, body: Bytes::from_request(request, state).await })
    }
}

impl JsonBody {
    /// Whether the request came without a body (whatever its content type).
    pub(crate) fn is_empty(&self) -> bool {
        self.body.as_ref().is_ok_and(Bytes::is_empty)
    }

    /// The body as `T`: `415` unless sent as JSON, `413` over the body limit, `400` if invalid.
    pub(crate) fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        if !self.json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let body = self.body.as_ref().map_err(|rejection| {
            let code =
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_request" };
            ApiError::new(rejection.status(), code, rejection.body_text())
        })?;
        serde_json::from_slice(body)
            .map_err(|error| ApiError::bad_request("bad_request", format!("invalid body: {error}")))
    }
}

//! Long- and short-polling: `GET /poll?channel=..[&since=CURSOR][&timeout=S]`.
//!
//! A poll answers at once with what was missed after the cursor; otherwise it parks (an async
//! wait on its queue: no thread, no busy loop) until a publication (or a join or leave, in
//! `join_leave` namespaces: the answer's `events`) arrives or the timeout ends.
//! `timeout=0` is the short poll: it only reads, never subscribes (nor joins presence).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::{PresenceEvent, Publication, Push};

use crate::app::AppState;
use crate::error::ApiError;
use crate::presence::EncodedPresence;
use crate::transport::limits::ConnectionKind;
use crate::transport::origin::check_origin;
use crate::transport::subscription::{HttpSubscription, SubscriptionQuery, parse_timeout};
use crate::wire::publications_array;

pub const CURSOR_HEADER: HeaderName = HeaderName::from_static("herald-cursor");

pub async fn poll(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    answer(app, peer, headers, query).await.unwrap_or_else(IntoResponse::into_response)
}

async fn answer(
    app: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    query: Option<String>,
) -> Result<Response, ApiError> {
    check_origin(&app.settings, &headers)?;
    let query = SubscriptionQuery::parse(query.as_deref(), &headers, &app, true)?;
    let settings = &app.settings.poll;
    let wait = parse_timeout(query.timeout.as_deref(), settings.default_timeout, settings.max_timeout)?;
    let live = !wait.is_zero() && !app.shutdown.is_cancelled();
    let _permit = if live { Some(app.connections.admit(peer.ip(), ConnectionKind::ParkedPoll)?) } else { None };
    let max = settings.max_messages.get();
    // Room for a full answer plus what arrives while it is taken, so a prefix is never lost.
    let (mut subscription, mut inbox, opening) = HttpSubscription::open(&app, &query, live, max + 16).await?;

    let mut messages: Vec<Arc<Publication>> = Vec::new();
    let mut events: Vec<Arc<PresenceEvent>> = Vec::new();
    take(&mut subscription, &mut messages, opening.missed.iter().cloned(), max);
    if messages.is_empty() && opening.unrecovered.is_empty() && live {
        let deadline = tokio::time::Instant::now() + wait;
        let before_wait = subscription.positions.clone();
        let mut batch = Vec::with_capacity(16);
        while messages.is_empty() && events.is_empty() {
            tokio::select! {
                biased;
                () = app.shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                received = inbox.recv_many(&mut batch, max) => {
                    if received.is_err() {
                        // Lagged: answered from history below.
                        break;
                    }
                    let publications = batch.drain(..).filter_map(|push| match push {
                        Push::Publication(publication) => Some(publication),
                        Push::Presence(event) => {
                            events.push(event);
                            None
                        }
                    });
                    take(&mut subscription, &mut messages, publications, max);
                }
            }
        }
        if inbox.is_lagged() {
            // The queue overflowed while we were away, so what it holds may have a gap: take
            // the answer from history instead, which has everything in order.
            messages.clear();
            subscription.positions = before_wait.clone();
            for (channel, position) in before_wait.iter() {
                let caught_up = app.hub.catch_up(channel, Some(position)).await?;
                take(&mut subscription, &mut messages, caught_up.missed.into_iter(), max);
            }
        }
    }

    let cursor = subscription.cursor();
    let cursor_header = HeaderValue::from_str(&cursor).map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cursor is not a valid header value")
    })?;
    if messages.is_empty() && events.is_empty() && opening.unrecovered.is_empty() {
        return Ok((StatusCode::NO_CONTENT, [(CURSOR_HEADER, cursor_header)]).into_response());
    }
    let mut body = format!("{{\"messages\":{},\"cursor\":\"{cursor}\"", publications_array(&messages));
    if !events.is_empty() {
        body.push_str(",\"events\":[");
        for (index, event) in events.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            body.push_str(&String::from_utf8_lossy(&EncodedPresence::of(event).typed));
        }
        body.push(']');
    }
    if !opening.unrecovered.is_empty() {
        let notices: Vec<serde_json::Value> = opening.unrecovered.iter().map(|notice| notice.json()).collect();
        body.push_str(&format!(",\"recovery\":{}", serde_json::Value::from(notices)));
    }
    body.push('}');
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (CURSOR_HEADER, cursor_header)],
        body,
    )
        .into_response())
}

/// Moves publications new to the subscription into `messages`, in order, up to `max`.
fn take(
    subscription: &mut HttpSubscription,
    messages: &mut Vec<Arc<Publication>>,
    publications: impl Iterator<Item = Arc<Publication>>,
    max: usize,
) {
    for publication in publications {
        if messages.len() >= max {
            break;
        }
        if subscription.positions.advance(&publication) {
            messages.push(publication);
        }
    }
}

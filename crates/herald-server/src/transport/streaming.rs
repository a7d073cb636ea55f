//! HTTP streaming: `GET /sse` (Server-Sent Events) and `GET /stream` (NDJSON), one mechanism
//! with two encodings.
//!
//! Each stream runs in a tracked task that owns the subscription and feeds the response body
//! through a small bounded channel. The task `select!`s over shutdown, the client going away
//! (the body dropped), pushes (or the mark that it lagged), and the heartbeat; it ends the body itself on
//! shutdown, so an endless stream never stalls a graceful stop, and drops the subscription the
//! moment the client is gone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{Inbox, Push};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};

use crate::app::AppState;
use crate::error::ApiError;
use crate::presence::EncodedPresence;
use crate::transport::limits::{ConnectionKind, ConnectionPermit};
use crate::transport::origin::check_origin;
use crate::transport::subscription::{HttpSubscription, Opening, SubscriptionQuery, Unrecovered};
use crate::transport::ws::close_code;
use crate::wire::EncodedPublication;

/// Chunks buffered between the stream task and the response body.
const BODY_CHUNKS: usize = 16;
/// Pushes turned into one chunk at most.
const CHUNK_BATCH: usize = 256;

/// The two encodings of an HTTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// `text/event-stream`: `id:` is the cursor, `data:` the publication.
    Sse,
    /// `application/x-ndjson`: one JSON object per line; publications carry a `cursor` field.
    Ndjson,
}

impl StreamFormat {
    fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    /// The first thing sent: the reconnect hint and the cursor of the starting point, so a
    /// client that reconnects before any publication still resumes from here. (An SSE event
    /// with an `id:` and no `data:` sets the browser's last event id without firing a message.)
    fn open(self, out: &mut BytesMut, cursor: &str, retry: Duration) {
        match self {
            Self::Sse => {
                out.put_slice(format!("retry: {}\nid: {cursor}\n\n", retry.as_millis()).as_bytes());
            }
            Self::Ndjson => {
                out.put_slice(format!("{{\"type\":\"open\",\"cursor\":\"{cursor}\"}}\n").as_bytes());
            }
        }
    }

    fn publication(self, out: &mut BytesMut, publication: &EncodedPublication, cursor: &str) {
        let json = publication.json.as_bytes();
        match self {
            Self::Sse => {
                out.put_slice(b"id: ");
                out.put_slice(cursor.as_bytes());
                out.put_slice(b"\ndata: ");
                out.put_slice(json);
                out.put_slice(b"\n\n");
            }
            Self::Ndjson => {
                // The shared JSON with the cursor spliced in before its closing brace.
                out.put_slice(&json[..json.len() - 1]);
                out.put_slice(b",\"cursor\":\"");
                out.put_slice(cursor.as_bytes());
                out.put_slice(b"\"}\n");
            }
        }
    }

    /// A join or leave: a named SSE event (`join`/`leave`) without an id, so the cursor the
    /// browser resumes from stays the last publication's; a typed NDJSON line.
    fn presence(self, out: &mut BytesMut, event: &herald_core::PresenceEvent) {
        let encoded = EncodedPresence::of(event);
        match self {
            Self::Sse => {
                out.put_slice(b"event: ");
                out.put_slice(event.change.as_str().as_bytes());
                out.put_slice(b"\ndata: ");
                out.put_slice(encoded.json.as_bytes());
                out.put_slice(b"\n\n");
            }
            Self::Ndjson => {
                out.put_slice(&encoded.typed);
                out.put_slice(b"\n");
            }
        }
    }

    fn unrecovered(self, out: &mut BytesMut, notice: &Unrecovered, cursor: &str) {
        let mut json = notice.json();
        match self {
            Self::Sse => {
                out.put_slice(format!("event: recovery\nid: {cursor}\ndata: {json}\n\n").as_bytes());
            }
            Self::Ndjson => {
                json["type"] = "recovery".into();
                json["cursor"] = cursor.into();
                out.put_slice(format!("{json}\n").as_bytes());
            }
        }
    }

    fn heartbeat(self, out: &mut BytesMut) {
        match self {
            Self::Sse => out.put_slice(b": heartbeat\n\n"),
            Self::Ndjson => out.put_slice(b"{\"type\":\"heartbeat\"}\n"),
        }
    }

    fn disconnect(self, out: &mut BytesMut, code: u16, reason: &str, cursor: &str) {
        let mut json = serde_json::json!({ "code": code, "reason": reason, "reconnect": true, "cursor": cursor });
        match self {
            Self::Sse => out.put_slice(format!("event: disconnect\ndata: {json}\n\n").as_bytes()),
            Self::Ndjson => {
                json["type"] = "disconnect".into();
                out.put_slice(format!("{json}\n").as_bytes());
            }
        }
    }
}

pub async fn sse(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    open_stream(app, peer, headers, query, StreamFormat::Sse).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn ndjson(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    open_stream(app, peer, headers, query, StreamFormat::Ndjson).await.unwrap_or_else(IntoResponse::into_response)
}

async fn open_stream(
    app: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    query: Option<String>,
    format: StreamFormat,
) -> Result<Response, ApiError> {
    check_origin(&app.settings, &headers)?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down"));
    }
    let query = SubscriptionQuery::parse(query.as_deref(), &headers, &app, false)?;
    let permit = app.connections.admit(peer.ip(), ConnectionKind::Stream)?;
    let capacity = app.settings.websocket.outbox_capacity.get();
    let (subscription, inbox, opening) = HttpSubscription::open(&app, &query, true, capacity).await?;
    let (sender, receiver) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let expires_at = query.identity.expires_at();
    app.tasks.spawn(run_stream(app.clone(), subscription, inbox, opening, format, sender, permit, expires_at));
    let body = Body::from_stream(futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), receiver))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    app: AppState,
    mut subscription: HttpSubscription,
    mut inbox: Inbox,
    opening: Opening,
    format: StreamFormat,
    sender: mpsc::Sender<Bytes>,
    _permit: ConnectionPermit,
    expires_at: Option<u64>,
) {
    let write_timeout = app.settings.websocket.write_timeout;
    // A slow reader gets the write timeout, but never holds up a shutdown.
    let send = |chunk: BytesMut| {
        let (sender, shutdown) = (&sender, &app.shutdown);
        async move {
            tokio::select! {
                sent = timeout(write_timeout, sender.send(chunk.freeze())) => matches!(sent, Ok(Ok(()))),
                () = shutdown.cancelled() => false,
            }
        }
    };

    let mut chunk = BytesMut::with_capacity(256);
    format.open(&mut chunk, &subscription.cursor(), app.settings.streaming.retry);
    for notice in &opening.unrecovered {
        format.unrecovered(&mut chunk, notice, &subscription.cursor());
    }
    for publication in &opening.missed {
        if subscription.positions.advance(publication) {
            format.publication(&mut chunk, &EncodedPublication::of(publication), &subscription.cursor());
        }
    }
    if !send(chunk).await {
        return;
    }

    let interval = app.settings.streaming.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(16);
    // The stream ends when its token does; the client reconnects with a fresh one.
    let expiry = tokio::time::sleep(Duration::from_secs(
        expires_at.map_or(u64::MAX / 4, |exp| exp.saturating_sub(crate::auth::unix_seconds())),
    ));
    tokio::pin!(expiry);
    loop {
        let mut chunk = BytesMut::new();
        tokio::select! {
            biased;
            () = &mut expiry => {
                let reason = "token expired: get a fresh one and reconnect";
                format.disconnect(&mut chunk, close_code::TOKEN_EXPIRED, reason, &subscription.cursor());
                let _ = sender.try_send(chunk.freeze());
                return;
            }
            () = app.shutdown.cancelled() => {
                format.disconnect(&mut chunk, close_code::GOING_AWAY, "server shutting down", &subscription.cursor());
                // Only if there is room: a reader too slow to take it will not delay the stop.
                let _ = sender.try_send(chunk.freeze());
                return;
            }
            () = sender.closed() => return,
            received = inbox.recv_many(&mut batch, CHUNK_BATCH) => {
                if received.is_err() {
                    let reason = "slow consumer: reconnect and recover from your cursor";
                    format.disconnect(&mut chunk, close_code::SLOW_CONSUMER, reason, &subscription.cursor());
                    let _ = send(chunk).await;
                    return;
                }
                for push in batch.drain(..) {
                    match push {
                        Push::Publication(publication) => {
                            if subscription.positions.advance(&publication) {
                                let encoded = EncodedPublication::of(&publication);
                                format.publication(&mut chunk, &encoded, &subscription.cursor());
                            }
                        }
                        Push::Presence(event) => format.presence(&mut chunk, &event),
                    }
                }
            }
            _ = heartbeat.tick() => format.heartbeat(&mut chunk),
        }
        if !chunk.is_empty() && !send(chunk).await {
            return;
        }
    }
}

//! HTTP streaming: `GET /sse` (Server-Sent Events) and `GET /stream` (NDJSON), one mechanism
//! with two encodings.
//!
//! Each stream runs in a tracked task that owns the subscription and feeds the response body
//! through a small bounded channel. The task `select!`s over shutdown, the client going away
//! (the body dropped), pushes (or the mark that it lagged), and the heartbeat; it ends the body itself on
//! shutdown, so an endless stream never stalls a graceful stop, and drops the subscription the
//! moment the client is gone.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{Inbox, Push};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};

use crate::encode::EncodedPresence;
use crate::encode::{EncodedPublication, if_next};
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::state::AppState;
use crate::transport::handoff::Handoff;
use crate::transport::limits::ConnectionPermit;
use crate::transport::origin::check_origin;
use crate::transport::subscription::{HttpSubscription, Opening, SubscriptionQuery, Unrecovered};
use herald_wire::close_code;
use herald_wire::reply::Subscribed;

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
    fn transport(self) -> Transport {
        match self {
            Self::Sse => Transport::Sse,
            Self::Ndjson => Transport::Ndjson,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    /// The first thing sent: the reconnect hint and the cursor of the starting point, so a
    /// client that reconnects before any publication still resumes from here. On SSE its `id:`
    /// sets the browser's last event id, and as a named event (`cursor`, not a message) a page
    /// can read it too, to resume a stream it opens anew.
    fn open(self, out: &mut BytesMut, cursor: &str, subscribed: &[Subscribed], retry: Duration) {
        match self {
            Self::Sse => {
                let (event, data) =
                    (herald_wire::http::SSE_CURSOR_EVENT, herald_wire::http::stream_open(cursor, subscribed));
                let opening = format!("retry: {}\nid: {cursor}\nevent: {event}\ndata: {data}\n\n", retry.as_millis());
                out.put_slice(opening.as_bytes());
            }
            Self::Ndjson => {
                out.put_slice(herald_wire::http::stream_open(cursor, subscribed).as_bytes());
                out.put_slice(b"\n");
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
                for part in herald_wire::http::ndjson_publication(&publication.json, cursor) {
                    out.put_slice(part);
                }
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
        self.notice(out, "recovery", Some(cursor), |kind| {
            let mut notice = notice.wire();
            // The NDJSON line carries the cursor itself; on SSE it is the event's id.
            notice.cursor = kind.is_some().then(|| cursor.to_string());
            notice.kind = kind;
            serde_json::to_string(&notice).unwrap_or_default()
        });
    }

    fn heartbeat(self, out: &mut BytesMut) {
        match self {
            Self::Sse => out.put_slice(b": heartbeat\n\n"),
            Self::Ndjson => out.put_slice(herald_wire::http::NDJSON_HEARTBEAT),
        }
    }

    /// The server subscribed the stream to one more channel: a `subscribed` SSE event whose
    /// `id:` is the cursor that now names it, a typed NDJSON line with that cursor.
    fn subscribed(self, out: &mut BytesMut, subscribed: &Subscribed, cursor: &str) {
        self.notice(out, "subscribed", Some(cursor), |kind| {
            let notice = herald_wire::http::StreamSubscribed {
                kind,
                subscribed: subscribed.clone(),
                cursor: cursor.to_string(),
            };
            serde_json::to_string(&notice).unwrap_or_default()
        });
    }

    /// The server ended the subscription to one channel: an `unsubscribed` SSE event whose
    /// `id:` is the cursor without it, a typed NDJSON line with that cursor.
    fn unsubscribed(self, out: &mut BytesMut, channel: &herald_core::ChannelName, reason: &str, cursor: &str) {
        self.notice(out, "unsubscribed", Some(cursor), |kind| {
            let notice = herald_wire::http::StreamUnsubscribed {
                kind,
                channel: channel.to_string(),
                reason: reason.to_string(),
                cursor: cursor.to_string(),
            };
            serde_json::to_string(&notice).unwrap_or_default()
        });
    }

    fn disconnect(self, out: &mut BytesMut, code: u16, reason: &str, reconnect: bool, cursor: &str) {
        self.notice(out, "disconnect", None, |kind| {
            let notice = herald_wire::http::StreamDisconnect {
                kind,
                code,
                reason: reason.to_string(),
                reconnect,
                cursor: cursor.to_string(),
            };
            serde_json::to_string(&notice).unwrap_or_default()
        });
    }

    /// A named notice: on SSE an event of that type (with `id:` where given), on NDJSON a line
    /// whose `type` names it. `encode` makes its JSON, given the NDJSON type (`None` on SSE).
    fn notice(self, out: &mut BytesMut, event: &str, id: Option<&str>, encode: impl FnOnce(Option<String>) -> String) {
        match self {
            Self::Sse => {
                let json = encode(None);
                let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
                out.put_slice(format!("event: {event}\n{id}data: {json}\n\n").as_bytes());
            }
            Self::Ndjson => {
                let json = encode(Some(event.to_string()));
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
    direct: Option<Extension<Handoff<OpenStream>>>,
) -> Response {
    open_stream(app, peer, headers, query, StreamFormat::Sse, direct.map(|Extension(slot)| slot))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn ndjson(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    direct: Option<Extension<Handoff<OpenStream>>>,
) -> Response {
    open_stream(app, peer, headers, query, StreamFormat::Ndjson, direct.map(|Extension(slot)| slot))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Opens the subscription and answers the response head. On a connection Herald serves itself
/// the stream is left in `direct` and written straight to the socket once the head is sent;
/// otherwise it runs in a task of its own feeding the response body.
async fn open_stream(
    app: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    query: Option<String>,
    format: StreamFormat,
    direct: Option<Handoff<OpenStream>>,
) -> Result<Response, ApiError> {
    check_origin(&app.settings, &headers)?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down"));
    }
    let query = SubscriptionQuery::parse(query.as_deref(), &headers, &app, false)?;
    let permit = app.connections.admit(peer.ip(), format.transport())?;
    let capacity = app.settings.websocket.outbox_capacity.get();
    let (subscription, inbox, opening) = HttpSubscription::open(&app, &query, true, capacity).await?;
    subscription.register_controls(&query.identity);
    let expiry = crate::transport::expiry(&query.identity);
    let who = Box::new((query.identity.clone(), query.declared_info.clone()));
    let stream = OpenStream { app: app.clone(), subscription, inbox, opening, format, permit, expiry, who };
    let head = [
        (header::CONTENT_TYPE, format.content_type()),
        (header::CACHE_CONTROL, "no-cache"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    if let Some(slot) = direct {
        slot.put(stream);
        return Ok(head.into_response());
    }
    let (sender, receiver) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    app.tasks.spawn(async move { stream.run(&mut ChannelSink(sender)).await });
    let body = Body::from_stream(futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), receiver))
    }));
    Ok((head, body).into_response())
}

/// Where a stream's chunks go: a response body's channel, or the socket itself.
pub trait StreamSink {
    /// Delivers one chunk; fails if the client is gone or did not take it in time.
    fn send(&mut self, chunk: Bytes) -> impl Future<Output = bool>;
    /// Hands over a last chunk only if it can go at once (a reader too slow to take it does
    /// not hold up a stop).
    fn send_last(&mut self, chunk: Bytes);
    /// Resolves once the client is gone.
    fn gone(&mut self) -> impl Future<Output = ()>;
}

/// The body channel of a response hyper writes.
struct ChannelSink(mpsc::Sender<Bytes>);

impl StreamSink for ChannelSink {
    async fn send(&mut self, chunk: Bytes) -> bool {
        self.0.send(chunk).await.is_ok()
    }

    fn send_last(&mut self, chunk: Bytes) {
        let _ = self.0.try_send(chunk);
    }

    async fn gone(&mut self) {
        self.0.closed().await;
    }
}

/// A stream whose subscription is open and whose response head is answered.
pub struct OpenStream {
    app: AppState,
    subscription: HttpSubscription,
    inbox: Inbox,
    opening: Opening,
    format: StreamFormat,
    permit: ConnectionPermit,
    /// When the client's token expires, if it does: the stream ends then.
    expiry: crate::transport::Expiry,
    /// Who the client is, and the presence info it gave itself: for the channels the server
    /// subscribes it to (boxed: every open stream holds this struct).
    who: Box<(crate::auth::Identity, Option<Bytes>)>,
}

impl OpenStream {
    /// Writes what the opening found, then every push and heartbeat, until the client goes,
    /// lags, its token expires or the server shuts down.
    pub async fn run(mut self, sink: &mut impl StreamSink) {
        let app = self.app.clone();
        let format = self.format;
        let subscription = &mut self.subscription;
        let mut chunk = BytesMut::with_capacity(256);
        let subscribed = std::mem::take(&mut self.opening.subscribed);
        format.open(&mut chunk, &subscription.cursor(), &subscribed, app.settings.streaming.retry);
        for notice in std::mem::take(&mut self.opening.unrecovered) {
            format.unrecovered(&mut chunk, &notice, &subscription.cursor());
        }
        let transport = format.transport();
        let (mut delivered, mut oldest_ms) = (0, u64::MAX);
        for publication in std::mem::take(&mut self.opening.missed) {
            if let Some(encoded) = if_next(&mut subscription.positions, &publication) {
                format.publication(&mut chunk, &encoded, &subscription.cursor());
                (delivered, oldest_ms) = (delivered + 1, oldest_ms.min(publication.time_ms));
            }
        }
        crate::metrics::delivered(transport, delivered, oldest_ms);
        if !deliver(sink, chunk.freeze(), &app).await {
            self.permit.closed("write_failed");
            return;
        }

        let interval = app.settings.streaming.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let waiter = std::pin::pin!(app.shutdown.cancelled());
        let mut stop = crate::transport::stop_signal(&app.shutdown, waiter, app.settings.drain_period);
        let mut batch = Vec::new();
        loop {
            let mut chunk = BytesMut::new();
            // In a block of its own, so that only the code and metric outlive it: the rest is
            // not held across the writes' awaits, in every open stream's state.
            let ended = {
                let (ending, controls) = {
                    // What the server API told the stream (rare): acted on in order after the batch.
                    let mut controls = Vec::new();
                    let ending = tokio::select! {
                        biased;
                        () = &mut stop => Some(End::Server(close_code::GOING_AWAY, "server shutting down", "shutdown")),
                        () = crate::transport::until_expiry(&mut self.expiry) => {
                            let reason = "token expired: get a fresh one and reconnect";
                            Some(End::Server(close_code::TOKEN_EXPIRED, reason, "token_expired"))
                        }
                        () = sink.gone() => {
                            self.permit.closed("peer_gone");
                            return;
                        }
                        received = self.inbox.recv_many(&mut batch, CHUNK_BATCH) => match received {
                            Err(_) => Some(End::Server(
                                close_code::SLOW_CONSUMER,
                                "slow consumer: reconnect and recover from your cursor",
                                "slow_consumer",
                            )),
                            Ok(_) => {
                                // Locals of this branch only: nothing here is held across an await, which
                                // every open stream's state would carry.
                                let (mut delivered, mut oldest_ms) = (0, u64::MAX);
                                for push in batch.drain(..) {
                                    match push {
                                        Push::Publication(publication) => {
                                            if let Some(encoded) = if_next(&mut subscription.positions, &publication) {
                                                format.publication(&mut chunk, &encoded, &subscription.cursor());
                                                (delivered, oldest_ms) = (delivered + 1, oldest_ms.min(publication.time_ms));
                                            }
                                        }
                                        Push::Presence(event) => format.presence(&mut chunk, &event),
                                        // Herald's own protocol has no count event (it never asks).
                                        Push::Count(_) => {}
                                        Push::Control(control) => controls.push(control),
                                    }
                                }
                                crate::metrics::delivered(transport, delivered, oldest_ms);
                                None
                            }
                        },
                        _ = heartbeat.tick() => {
                            format.heartbeat(&mut chunk);
                            None
                        }
                    };
                    (ending, controls)
                };
                let ending = match ending {
                    None if !controls.is_empty() => {
                        Box::pin(apply_controls(subscription, &self.who, format, &mut chunk, controls)).await
                    }
                    ending => ending,
                };
                ending.map(|end| end.write(format, &mut chunk, &subscription.cursor()))
            };
            if let Some((code, metric)) = ended {
                self.permit.closed(metric);
                if code == close_code::SLOW_CONSUMER || metric == "disconnected" {
                    let _ = deliver(sink, chunk.freeze(), &app).await;
                } else {
                    // Only if it can go at once: a reader too slow to take it does not hold up
                    // a stop.
                    sink.send_last(chunk.freeze());
                }
                return;
            }
            if !chunk.is_empty() && !deliver(sink, chunk.freeze(), &app).await {
                self.permit.closed("write_failed");
                return;
            }
        }
    }
}

/// Acts, in order, on what the server API told the stream: a channel less (an `unsubscribed`
/// notice), a channel more (a `subscribed` notice, then what was missed since its position),
/// or the end (returned, as when the engine cannot take a subscription: the client reconnects
/// and its token's `subs` are made again).
async fn apply_controls(
    subscription: &mut HttpSubscription,
    who: &(crate::auth::Identity, Option<Bytes>),
    format: StreamFormat,
    chunk: &mut BytesMut,
    controls: Vec<Arc<herald_core::Control>>,
) -> Option<End> {
    for control in controls {
        match &*control {
            herald_core::Control::Disconnect { reason, reconnect } => {
                return Some(End::Told { reason: reason.clone(), reconnect: *reconnect });
            }
            herald_core::Control::Unsubscribe { channel, reason } => {
                if subscription.remove(channel) {
                    format.unsubscribed(chunk, channel, reason, &subscription.cursor());
                }
            }
            herald_core::Control::Subscribe { channel, since } => {
                if subscription.positions.is_tracked(channel) {
                    continue;
                }
                match subscription.follow(channel, since.as_ref(), &who.0, who.1.as_ref()).await {
                    Ok(followed) => {
                        format.subscribed(chunk, &followed.subscribed, &subscription.cursor());
                        for publication in &followed.missed {
                            if let Some(encoded) = if_next(&mut subscription.positions, publication) {
                                format.publication(chunk, &encoded, &subscription.cursor());
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%channel, code = %error.body.code, "a server-side subscription failed");
                        // Registered before the failure: not followed after all.
                        subscription.remove(channel);
                        let reason = "a server-side subscription failed: reconnect";
                        return Some(End::Server(close_code::SUBSCRIBE_FAILED, reason, "subscribe_failed"));
                    }
                }
            }
        }
    }
    None
}

/// Why a stream ends: for a reason of the server's, or told to by the server API.
enum End {
    Server(u16, &'static str, &'static str),
    Told { reason: String, reconnect: bool },
}

impl End {
    /// Writes the `disconnect` notice; the code and the metric's reason.
    fn write(self, format: StreamFormat, chunk: &mut BytesMut, cursor: &str) -> (u16, &'static str) {
        match self {
            Self::Server(code, reason, metric) => {
                format.disconnect(chunk, code, reason, true, cursor);
                (code, metric)
            }
            Self::Told { reason, reconnect } => {
                let code = if reconnect { close_code::DISCONNECTED } else { close_code::DISCONNECTED_FOR_GOOD };
                format.disconnect(chunk, code, &reason, reconnect, cursor);
                (code, "disconnected")
            }
        }
    }
}

/// Delivers a chunk. Most are taken at once and cost no timer; a slow reader gets the write
/// timeout (in a boxed future, kept out of every stream's state), but never holds up a shutdown.
async fn deliver(sink: &mut impl StreamSink, chunk: Bytes, app: &AppState) -> bool {
    let mut send = std::pin::pin!(sink.send(chunk));
    if let std::task::Poll::Ready(sent) = futures_util::poll!(send.as_mut()) {
        return sent;
    }
    Box::pin(async {
        tokio::select! {
            sent = timeout(app.settings.websocket.write_timeout, send) => matches!(sent, Ok(true)),
            () = app.shutdown.cancelled() => false,
        }
    })
    .await
}

//! WebSocket transport: `GET /ws`, the native JSON protocol (see `docs/protocol.md`).
//!
//! One task per connection runs one `select!` over: shutdown, the lagged signal, frames in,
//! pushes out, and the heartbeat tick. Pushes are written in batches with one flush. The task is
//! tracked, so shutdown waits for it to say goodbye.

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use herald_core::{
    ChannelName, HistoryQuery, Inbox, Position, PositionTracker, Publication, PublishRequest, Push, SubscriberHandle,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use crate::app::AppState;
use crate::error::ApiError;
use crate::transport::origin::check_origin;
use crate::wire::{EncodedPublication, ErrorBody, WirePosition, publications_array};

/// Close codes Herald uses besides the standard ones (documented in `docs/protocol.md`).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client fell too far behind; reconnect and recover from the last position seen.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Nothing heard from the client within the ping interval plus the pong timeout.
    pub const NO_PONG: u16 = 4002;
}

/// Publications per `history` reply at most.
const MAX_HISTORY_LIMIT: usize = 100;
/// Pushes written per flush at most.
const WRITE_BATCH: usize = 256;
/// How long a closing connection waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub async fn upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(rejection.status(), "websocket_upgrade_required", rejection.body_text())
                .into_response();
        }
    };
    if let Err(error) = check_origin(&app.settings, &headers) {
        return error.into_response();
    }
    if app.shutdown.is_cancelled() {
        return ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is shutting down")
            .into_response();
    }
    // axum runs the upgraded socket in a task of its own; this token makes shutdown wait for it.
    let tracked = app.tasks.token();
    configure(upgrade, &app).on_upgrade(move |socket| async move {
        let _tracked = tracked;
        run_session(app, socket).await;
    })
}

/// Buffer sizes and limits of every Herald WebSocket: small buffers for idle connections, a
/// bounded write buffer, and the configured message size limit.
pub fn configure(upgrade: WebSocketUpgrade, app: &AppState) -> WebSocketUpgrade {
    let max_message = app.settings.limits.max_message_size.get();
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(max_message.saturating_mul(MAX_HISTORY_LIMIT + 10).max(16 * 1024 * 1024))
        .max_message_size(max_message)
        .max_frame_size(max_message)
}

/// Why a session ended, which decides how it says goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    PeerClosed,
    PeerGone,
    Shutdown,
    Lagged,
    NoPong,
    WriteFailed,
    TooBig,
    InvalidUtf8,
    ProtocolError,
}

async fn run_session(app: AppState, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let (subscriber, inbox) = app.hub.connect(app.settings.websocket.outbox_capacity.get());
    let mut session = Session { app, subscriber, positions: PositionTracker::default(), sink };
    let ending = session.serve(stream, inbox).await;
    session.finish(ending).await;
}

struct Session<S> {
    app: AppState,
    subscriber: SubscriberHandle,
    positions: PositionTracker,
    sink: S,
}

impl<S> Session<S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    async fn serve<R>(&mut self, mut stream: R, mut inbox: Inbox) -> Ending
    where
        R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let settings = &self.app.settings.websocket;
        let (ping_interval, dead_after) = (settings.ping_interval, settings.ping_interval + settings.pong_timeout);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let shutdown = self.app.shutdown.clone();
        let mut batch = Vec::with_capacity(16);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ending::Shutdown,
                () = inbox.lagged.cancelled() => return Ending::Lagged,
                frame = stream.next() => {
                    last_heard = Instant::now();
                    let outcome = match frame {
                        None => return Ending::PeerGone,
                        Some(Err(error)) => return classify_read_error(error),
                        Some(Ok(Message::Close(_))) => return Ending::PeerClosed,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Binary(_))) => {
                            let error = ErrorBody::new("binary_not_supported", "send commands as JSON text frames");
                            self.send(vec![error_reply(None, error)]).await
                        }
                        Some(Ok(Message::Text(text))) => {
                            let replies = self.handle_command(&text).await;
                            self.send(replies).await
                        }
                    };
                    if let Err(ending) = outcome {
                        return ending;
                    }
                }
                received = inbox.queue.recv_many(&mut batch, WRITE_BATCH) => {
                    if received == 0 {
                        return Ending::Shutdown;
                    }
                    if let Err(ending) = self.write_pushes(&mut batch).await {
                        return ending;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= dead_after {
                        return Ending::NoPong;
                    }
                    if let Err(ending) = self.send(vec![Message::Ping(bytes::Bytes::new())]).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Writes a batch of pushes with one flush, within the write timeout. Each publication is
    /// written once, in order, as the bytes shared by every subscriber.
    async fn write_pushes(&mut self, batch: &mut Vec<Push>) -> Result<(), Ending> {
        let (positions, sink) = (&mut self.positions, &mut self.sink);
        let write = async move {
            let mut written = false;
            for push in batch.drain(..) {
                let Push::Publication(publication) = push;
                if positions.advance(&publication) {
                    sink.feed(Message::Text(EncodedPublication::of(&publication).json)).await?;
                    written = true;
                }
            }
            if written { sink.flush().await } else { Ok(()) }
        };
        match timeout(self.app.settings.websocket.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Ending::WriteFailed),
        }
    }

    fn publication_frame(&mut self, publication: &Publication) -> Option<Message> {
        self.positions.advance(publication).then(|| Message::Text(EncodedPublication::of(publication).json))
    }

    /// Writes frames with one flush, within the write timeout.
    async fn send(&mut self, frames: Vec<Message>) -> Result<(), Ending> {
        if frames.is_empty() {
            return Ok(());
        }
        let sink = &mut self.sink;
        let write = async move {
            for frame in frames {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        match timeout(self.app.settings.websocket.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Ending::WriteFailed),
        }
    }

    /// Handles one command; returns the frames to send: the reply, then any pushes it caused.
    async fn handle_command(&mut self, text: &str) -> Vec<Message> {
        let command = match serde_json::from_str::<CommandFrame<'_>>(text) {
            Ok(command) => command,
            Err(error) => {
                let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|frame| frame.id);
                return vec![error_reply(id, ErrorBody::new("bad_request", format!("invalid command: {error}")))];
            }
        };
        let Some(id) = command.id else {
            return vec![error_reply(None, ErrorBody::new("missing_id", "every command needs a numeric \"id\""))];
        };
        let outcome = match command.op.as_deref() {
            None => Err(ErrorBody::new("missing_field", "missing field \"op\"")),
            Some("ping") => Ok(vec![result_reply(id, "{}".to_string())]),
            Some("subscribe") => self.subscribe(id, &command).await,
            Some("unsubscribe") => self.unsubscribe(id, &command).await,
            Some("publish") => self.publish(id, &command).await,
            Some("history") => self.history(id, &command).await,
            Some("presence") => Err(ErrorBody::new("not_available", "presence is not available in this build yet")),
            Some(other) => Err(ErrorBody::new("unknown_op", format!("unknown op {other:?}"))),
        };
        outcome.unwrap_or_else(|error| vec![error_reply(Some(id), error)])
    }

    async fn subscribe(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Message>, ErrorBody> {
        let channel = command.channel()?;
        if self.positions.is_tracked(&channel) {
            return Err(ErrorBody::new("already_subscribed", format!("already subscribed to {channel}")));
        }
        let limit = self.app.settings.limits.max_channels_per_connection.get();
        if self.positions.len() >= limit {
            return Err(ErrorBody::new("too_many_channels", format!("at most {limit} channels per connection")));
        }
        let since = command.since.as_ref().map(Position::from);
        let subscribed = self
            .app
            .hub
            .subscribe(&self.subscriber, &channel, since.as_ref())
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?;
        let start = match (since, subscribed.recovered) {
            (Some(since), Some(true)) => since,
            _ => subscribed.position.clone(),
        };
        self.positions.track(channel.clone(), start);
        let mut result = serde_json::json!({
            "channel": channel.as_str(),
            "position": WirePosition::from(&subscribed.position),
        });
        if let Some(recovered) = subscribed.recovered {
            result["recovered"] = recovered.into();
        }
        let mut frames = vec![result_reply(id, result.to_string())];
        frames.extend(subscribed.missed.iter().filter_map(|publication| self.publication_frame(publication)));
        Ok(frames)
    }

    async fn unsubscribe(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Message>, ErrorBody> {
        let channel = command.channel()?;
        if self.positions.forget(&channel).is_none() {
            return Err(ErrorBody::new("not_subscribed", format!("not subscribed to {channel}")));
        }
        self.app.hub.unsubscribe(&self.subscriber, &channel).await;
        Ok(vec![result_reply(id, "{}".to_string())])
    }

    async fn publish(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Message>, ErrorBody> {
        let channel = command.channel()?;
        let data = command.data.ok_or_else(|| ErrorBody::new("missing_field", "missing field \"data\""))?;
        if !self.app.hub.namespaces().options_for(&channel).client_publish {
            return Err(ErrorBody::new("permission_denied", format!("clients may not publish to {channel}")));
        }
        let request = PublishRequest {
            channel,
            data: bytes::Bytes::copy_from_slice(data.get().as_bytes()),
            idempotency_key: command.idempotency_key.clone(),
        };
        let published = self
            .app
            .hub
            .publish(request)
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?;
        let result = serde_json::json!({
            "channel": published.channel.as_str(),
            "offset": published.position.offset,
            "epoch": published.position.epoch.as_str(),
        });
        Ok(vec![result_reply(id, result.to_string())])
    }

    async fn history(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Message>, ErrorBody> {
        let channel = command.channel()?;
        let limit = command.limit.unwrap_or(MAX_HISTORY_LIMIT).min(MAX_HISTORY_LIMIT);
        let query = HistoryQuery {
            since: command.since.as_ref().map(|since| since.offset),
            limit,
            reverse: command.reverse.unwrap_or(false),
        };
        let page = self
            .app
            .hub
            .history(&channel, query)
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?;
        if let Some(since) = &command.since
            && since.epoch != page.top.epoch.as_str()
        {
            return Err(ErrorBody::new(
                "epoch_mismatch",
                format!("history of {channel} is now epoch {}; the position's epoch is gone", page.top.epoch),
            ));
        }
        let position = serde_json::to_string(&WirePosition::from(&page.top)).unwrap_or_default();
        let result = format!(
            "{{\"channel\":{},\"publications\":{},\"position\":{position},\"oldest\":{}}}",
            serde_json::Value::from(channel.as_str()),
            publications_array(&page.publications),
            page.oldest,
        );
        Ok(vec![result_reply(id, result)])
    }

    /// Unsubscribes everywhere, then says goodbye the way the ending calls for.
    async fn finish(mut self, ending: Ending) {
        let channels: Vec<ChannelName> = self.positions.iter().map(|(channel, _)| channel.clone()).collect();
        for channel in &channels {
            self.app.hub.unsubscribe(&self.subscriber, channel).await;
        }
        let goodbye = match ending {
            Ending::PeerClosed | Ending::PeerGone | Ending::WriteFailed => None,
            Ending::Shutdown => Some((close_code::GOING_AWAY, "server shutting down", true)),
            Ending::Lagged => {
                Some((close_code::SLOW_CONSUMER, "slow consumer: reconnect and recover from your last position", true))
            }
            Ending::NoPong => Some((close_code::NO_PONG, "no pong within the timeout", true)),
            Ending::TooBig => Some((close_code::MESSAGE_TOO_BIG, "message too big", false)),
            Ending::InvalidUtf8 => Some((close_code::INVALID_DATA, "text frame is not valid UTF-8", false)),
            Ending::ProtocolError => Some((close_code::PROTOCOL_ERROR, "websocket protocol error", false)),
        };
        let mut frames = Vec::new();
        if let Some((code, reason, reconnect)) = goodbye {
            let positions: serde_json::Map<String, serde_json::Value> = self
                .positions
                .iter()
                .map(|(channel, position)| {
                    (channel.to_string(), serde_json::to_value(WirePosition::from(position)).unwrap_or_default())
                })
                .collect();
            let push = serde_json::json!({
                "disconnect": { "code": code, "reason": reason, "reconnect": reconnect, "positions": positions }
            });
            if ending != Ending::NoPong {
                frames.push(Message::Text(Utf8Bytes::from(push.to_string())));
            }
            frames.push(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) })));
        } else if ending == Ending::PeerClosed {
            // Our side of the close handshake; the library would answer on the next write.
            frames.push(Message::Close(None));
        }
        let write = async {
            for frame in frames {
                self.sink.feed(frame).await?;
            }
            self.sink.close().await
        };
        let _ = timeout(CLOSE_WAIT, write).await;
    }
}

fn classify_read_error(error: axum::Error) -> Ending {
    let Ok(error) = error.into_inner().downcast::<tungstenite::Error>() else {
        return Ending::PeerGone;
    };
    match *error {
        tungstenite::Error::Capacity(_) => Ending::TooBig,
        tungstenite::Error::Utf8(_) => Ending::InvalidUtf8,
        tungstenite::Error::Protocol(_) => Ending::ProtocolError,
        _ => Ending::PeerGone,
    }
}

fn result_reply(id: u64, result_json: String) -> Message {
    Message::Text(Utf8Bytes::from(format!("{{\"id\":{id},\"result\":{result_json}}}")))
}

fn error_reply(id: Option<u64>, error: ErrorBody) -> Message {
    let reply = match id {
        Some(id) => serde_json::json!({ "id": id, "error": error }),
        None => serde_json::json!({ "error": error }),
    };
    Message::Text(Utf8Bytes::from(reply.to_string()))
}

/// A client command: `{"id":N,"op":"...", ...}`. Fields are checked per op, so an error can
/// say exactly what is missing.
#[derive(Deserialize)]
struct CommandFrame<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    since: Option<WirePosition>,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    data: Option<&'a RawValue>,
    idempotency_key: Option<String>,
    limit: Option<usize>,
    reverse: Option<bool>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

impl CommandFrame<'_> {
    fn channel(&self) -> Result<ChannelName, ErrorBody> {
        let name =
            self.channel.as_deref().ok_or_else(|| ErrorBody::new("missing_field", "missing field \"channel\""))?;
        ChannelName::new(name).map_err(|error| ErrorBody::new("invalid_channel", error.to_string()))
    }
}

/// Keeps a JSON `null` as `Some(null)`: `null` is valid data, unlike a missing field.
pub fn present_raw_value<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// `GET /ws/echo`: echoes every message on the same WebSocket stack, limits and write path, for
/// the Autobahn conformance suite. Off unless `websocket.echo_route` is set.
pub async fn echo(State(app): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let tracked = app.tasks.token();
    configure(upgrade, &app).on_upgrade(move |mut socket| async move {
        let _tracked = tracked;
        loop {
            let frame = tokio::select! {
                () = app.shutdown.cancelled() => break,
                frame = socket.recv() => frame,
            };
            let reply = match frame {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    let code = match classify_read_error(error) {
                        Ending::TooBig => close_code::MESSAGE_TOO_BIG,
                        Ending::InvalidUtf8 => close_code::INVALID_DATA,
                        Ending::PeerGone => break,
                        _ => close_code::PROTOCOL_ERROR,
                    };
                    let close = CloseFrame { code, reason: Utf8Bytes::from_static("") };
                    let _ = timeout(CLOSE_WAIT, socket.send(Message::Close(Some(close)))).await;
                    break;
                }
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
        let _ = timeout(CLOSE_WAIT, socket.close()).await;
    })
}

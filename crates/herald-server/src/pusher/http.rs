//! The HTTP fallbacks pusher-js uses when WebSocket fails, under its `httpPath` (`/pusher` by
//! default), as pusher-js's `src/core/http/` speaks them:
//!
//! - `POST {path}/app/{key}/{server}/{session}/xhr_streaming`: one long response of frames;
//! - `POST …/xhr`: a long poll, one batch of frames per request;
//! - `POST …/xhr_send`: the client's events, a JSON array of JSON-encoded events.
//!
//! Frames are lines: `o` (open), `a[…]` (events, each a JSON string), `h` (heartbeat),
//! `c[code,"reason"]` (close). One task per session runs the same [`PusherSession`] as the
//! WebSocket route, and outlives its requests: a poll's gap, or a stream pusher-js reopens
//! once its buffer grows long, finds the session where it was. A session with no request for
//! [`DETACHED_LIMIT`] ends.
//!
//! pusher-js sends each event in a request of its own, several at once, so they may arrive
//! out of order; every request of a session carries `n=`, one counter in send order, and the
//! session acts on them in that order (see [`RequestOrder`]).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes as BodyBytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use herald_core::{Inbox, Push};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::session::{Close, Outgoing, PusherSession};
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::state::AppState;
use crate::transport::limits::ConnectionPermit;

/// How long a session lives with no receiving request (pusher-js polls again at once, and
/// reopens a stream within a second).
pub const DETACHED_LIMIT: Duration = Duration::from_secs(15);
/// How long a poll waits for events before answering a heartbeat; a stream's heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(25);
/// Client messages waiting for the session at most (`xhr_send` waits for room, then 429).
const INCOMING_CAPACITY: usize = 64;
/// How long `xhr_send` waits for room.
const SEND_WAIT: Duration = Duration::from_secs(2);
/// pusher-js reopens a stream once it has read this much of it (its `MAX_BUFFER_LENGTH`):
/// frames beyond wait for the next request.
const STREAM_LIMIT: usize = 256 * 1024;
/// Pushes per batch taken from the inbox.
const BATCH: usize = 256;

/// The HTTP sessions of this node, by `{key}/{server}/{session}`: open ones, and for a while
/// ended ones, so a poll that comes after the end still learns its close code.
#[derive(Default)]
pub struct HttpSessions(Mutex<HashMap<String, Entry>>);

enum Entry {
    Open(SessionHandle),
    Ended { close: Close, at: Instant, peer: std::net::IpAddr },
}

/// What a request finds under its session id.
enum Found {
    Open(SessionHandle),
    Ended(Close),
    Nothing,
}

#[derive(Clone)]
struct SessionHandle {
    incoming: mpsc::Sender<(Option<u64>, Vec<String>)>,
    receivers: mpsc::Sender<(Option<u64>, Receiver)>,
    /// The address that opened the session: a session id is only 40 random bits in pusher-js,
    /// so requests from elsewhere do not reach it (behind a proxy, every client shares one).
    peer: std::net::IpAddr,
}

impl HttpSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The session `id`, as `peer` may see it.
    fn get(&self, id: &str, peer: std::net::IpAddr) -> Found {
        match self.lock().get(id) {
            Some(Entry::Open(handle)) if handle.peer == peer => Found::Open(handle.clone()),
            Some(Entry::Ended { close, at, peer: opener }) if *opener == peer && at.elapsed() < DETACHED_LIMIT => {
                Found::Ended(*close)
            }
            _ => Found::Nothing,
        }
    }

    /// Registers a new session; false when the id is taken (by a client elsewhere).
    fn insert(&self, id: String, handle: SessionHandle) -> bool {
        let mut sessions = self.lock();
        sessions.retain(|_, entry| !matches!(entry, Entry::Ended { at, .. } if at.elapsed() >= DETACHED_LIMIT));
        if sessions.contains_key(&id) {
            return false;
        }
        sessions.insert(id, Entry::Open(handle));
        true
    }

    /// The session has ended: with a close, kept a while to tell the client.
    fn end(&self, id: &str, close: Option<Close>) {
        let mut sessions = self.lock();
        if let (Some(close), Some(Entry::Open(handle))) = (close, sessions.remove(id)) {
            sessions.insert(id.to_string(), Entry::Ended { close, at: Instant::now(), peer: handle.peer });
        }
    }
}

/// A request waiting for frames: a stream takes every frame until it goes; a poll takes one
/// batch.
enum Receiver {
    /// A stream, and how many bytes it has taken.
    Stream(mpsc::Sender<Bytes>, usize),
    Poll(oneshot::Sender<Bytes>),
}

/// Which fallback a request is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Streaming,
    Polling,
}

type SessionPath = Path<(String, String, String)>;

/// `…/xhr_streaming` and `…/xhr`: a request that receives the session's frames.
pub async fn receiving(
    State(app): State<AppState>,
    axum::Extension(sessions): axum::Extension<Arc<HttpSessions>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((key, server, session, receiver)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let kind = match receiver.as_str() {
        "xhr_streaming" => Kind::Streaming,
        "xhr" => Kind::Polling,
        _ => return ApiError::not_found().into_response(),
    };
    receive(app, sessions, peer, (key, server, session), query, kind).await
}

/// `xhr_send`: hands the client's events to its session, in order.
pub async fn xhr_send(
    axum::Extension(sessions): axum::Extension<Arc<HttpSessions>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((key, server, session)): SessionPath,
    RawQuery(query): RawQuery,
    body: BodyBytes,
) -> Response {
    let Found::Open(handle) = sessions.get(&format!("{key}/{server}/{session}"), peer.ip()) else {
        return ApiError::new(StatusCode::NOT_FOUND, "session_not_found", "no such session: open one first")
            .into_response();
    };
    let messages: Vec<String> = match serde_json::from_slice(&body) {
        Ok(messages) => messages,
        Err(error) => {
            return ApiError::bad_request("invalid_json", format!("xhr_send takes a JSON array of strings: {error}"))
                .into_response();
        }
    };
    // Even pusher-js's heartbeat (`[]`) goes in: its `n` is part of the order.
    // pusher-js does not resend what is refused: a full queue is waited on for a while.
    match handle.incoming.send_timeout((request_number(query.as_deref()), messages), SEND_WAIT).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many events waiting: slow down")
                .into_response()
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "session_not_found", "the session has ended").into_response()
        }
    }
}

async fn receive(
    app: AppState,
    sessions: Arc<HttpSessions>,
    peer: std::net::SocketAddr,
    (key, server, session): (String, String, String),
    query: Option<String>,
    kind: Kind,
) -> Response {
    let id = format!("{key}/{server}/{session}");
    let (receiver, response_body) = receiver(kind);
    let number = request_number(query.as_deref());
    match sessions.get(&id, peer.ip()) {
        Found::Open(handle) => {
            // A stream reopened, or the next poll: the session goes on.
            if handle.receivers.send((number, receiver)).await.is_err() {
                return frames_response(close_frame(Close { code: 1006, reason: "session ended" }));
            }
            return response(response_body);
        }
        // The session ended while no request was there to hear why.
        Found::Ended(close) => return frames_response(close_frame(close)),
        Found::Nothing => {}
    }
    if let Some(close) = super::socket::refusal(&app, &key, query.as_deref()) {
        return frames_response(close_frame(close));
    }
    let Some(pusher_app) = app.settings.pusher.by_key(&key).cloned() else {
        return frames_response(close_frame(Close { code: 4001, reason: "no app with this key on this server" }));
    };
    if app.shutdown.is_cancelled() {
        return frames_response(close_frame(Close { code: 4200, reason: "server shutting down: reconnect" }));
    }
    let permit = match app.connections.admit(peer.ip(), Transport::PusherHttp) {
        Ok(permit) => permit,
        Err(_) => return frames_response(close_frame(Close { code: 4100, reason: "over capacity" })),
    };
    let capacity = app.settings.websocket.outbox_capacity.get();
    let (pusher_session, inbox) = PusherSession::new(app.clone(), pusher_app, capacity);
    let (incoming_tx, incoming) = mpsc::channel(INCOMING_CAPACITY);
    let (receivers_tx, receivers) = mpsc::channel(4);
    let handle = SessionHandle { incoming: incoming_tx, receivers: receivers_tx, peer: peer.ip() };
    if !sessions.insert(id.clone(), handle) {
        return frames_response(close_frame(Close { code: 4200, reason: "session id in use: open another" }));
    }
    let task = SessionTask {
        session: pusher_session,
        inbox,
        incoming,
        receivers,
        receiver: Some(receiver),
        retired: None,
        order: RequestOrder::starting_after(number),
        queued: VecDeque::new(),
        queue_limit: capacity,
        permit,
    };
    let opening = task.session.greeting();
    app.tasks.spawn(async move {
        let close = task.run(opening).await;
        sessions.end(&id, close);
    });
    response(response_body)
}

/// A receiver and the body of its response.
fn receiver(kind: Kind) -> (Receiver, Body) {
    match kind {
        Kind::Streaming => {
            let (sender, receiver) = mpsc::channel::<Bytes>(64);
            let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), receiver))
            });
            (Receiver::Stream(sender, 0), Body::from_stream(stream))
        }
        Kind::Polling => {
            let (sender, receiver) = oneshot::channel::<Bytes>();
            let stream =
                futures_util::stream::once(async move { Ok::<_, Infallible>(receiver.await.unwrap_or_default()) });
            (Receiver::Poll(sender), Body::from_stream(stream))
        }
    }
}

fn response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/javascript; charset=UTF-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn frames_response(frames: Bytes) -> Response {
    response(Body::from(frames))
}

fn close_frame(close: Close) -> Bytes {
    Bytes::from(herald_wire::pusher::close_frame(close.code, close.reason))
}

const OPEN_FRAME: &[u8] = herald_wire::pusher::OPEN_FRAME.as_bytes();
const HEARTBEAT_FRAME: &[u8] = herald_wire::pusher::HEARTBEAT_FRAME.as_bytes();

/// One HTTP session's task: the Pusher session, the requests that receive its frames, and the
/// frames waiting for the next one.
struct SessionTask {
    session: PusherSession,
    inbox: Inbox,
    incoming: mpsc::Receiver<(Option<u64>, Vec<String>)>,
    receivers: mpsc::Receiver<(Option<u64>, Receiver)>,
    receiver: Option<Receiver>,
    /// A stream past [`STREAM_LIMIT`], kept open until the next request comes.
    retired: Option<mpsc::Sender<Bytes>>,
    order: RequestOrder,
    /// Event JSON waiting for a receiver.
    queued: VecDeque<Bytes>,
    queue_limit: usize,
    permit: ConnectionPermit,
}

/// Why a session ends.
enum End {
    Closed(Close),
    /// No receiving request for too long: the client is gone.
    Abandoned,
}

impl SessionTask {
    /// Runs the session; the close it ended with, if it was closed rather than abandoned.
    async fn run(mut self, greeting: String) -> Option<Close> {
        // The open frame first (a poll's whole first answer), then the handshake event.
        self.send_frame(Bytes::from_static(OPEN_FRAME));
        self.queued.push_back(Bytes::from(greeting));
        let end = self.serve().await;
        self.session.leave_all().await;
        let End::Closed(close) = end else {
            self.permit.closed("peer_gone");
            return None;
        };
        let reason = match close.code {
            4200 => "shutdown",
            4100 => "slow_consumer",
            4009 => "terminated",
            _ => "closed",
        };
        self.permit.closed(reason);
        // What is queued and the close in one frame: a poll takes a single answer.
        let mut last = BytesMut::new();
        if !self.queued.is_empty() {
            let events = self.queued.iter().map(|json| std::str::from_utf8(json).unwrap_or("null"));
            last.extend_from_slice(herald_wire::pusher::events_frame(events).as_bytes());
        }
        last.extend_from_slice(&close_frame(close));
        self.send_frame(last.freeze());
        Some(close)
    }

    async fn serve(&mut self) -> End {
        let app = self.session.app().clone();
        let mut batch = Vec::with_capacity(16);
        let mut detached_since = self.receiver.is_none().then(Instant::now);
        let mut heartbeat_at = Instant::now() + HEARTBEAT;
        let waiter = std::pin::pin!(app.shutdown.cancelled());
        let mut stop = crate::transport::stop_signal(&app.shutdown, waiter, app.settings.drain_period);
        loop {
            self.flush();
            if self.receiver.is_none() && detached_since.is_none() {
                detached_since = Some(Instant::now());
            }
            if self.queued.len() > self.queue_limit {
                return End::Closed(Close {
                    code: 4100,
                    reason: "over capacity: events waited too long for a request",
                });
            }
            let detached_deadline = detached_since.map(|since| since + DETACHED_LIMIT);
            tokio::select! {
                biased;
                () = &mut stop => return End::Closed(Close { code: 4200, reason: "server shutting down: reconnect" }),
                received = self.inbox.recv_many(&mut batch, BATCH) => {
                    if received.is_err() {
                        return End::Closed(Close { code: 4100, reason: "over capacity: too slow to take the channel's events" });
                    }
                    // Counted as queued for the client's requests.
                    let (mut delivered, mut oldest_ms) = (0, u64::MAX);
                    for push in batch.drain(..) {
                        let publication_ms = match &push {
                            Push::Publication(publication) => Some(publication.time_ms),
                            _ => None,
                        };
                        match self.session.on_push(push) {
                            Ok(Some(event)) => {
                                if let Some(time_ms) = publication_ms {
                                    (delivered, oldest_ms) = (delivered + 1, oldest_ms.min(time_ms));
                                }
                                self.queue(event);
                            }
                            Ok(None) => {}
                            Err(close) => return End::Closed(close),
                        }
                    }
                    crate::metrics::delivered(Transport::PusherHttp, delivered, oldest_ms);
                }
                Some((number, messages)) = self.incoming.recv() => {
                    self.order.arrived(number, messages);
                    if let Err(close) = self.act_in_order().await {
                        return End::Closed(close);
                    }
                }
                () = sleep_until(self.order.gap_deadline().unwrap_or_else(Instant::now)), if self.order.gap_deadline().is_some() => {
                    self.order.skip_gap();
                    if let Err(close) = self.act_in_order().await {
                        return End::Closed(close);
                    }
                }
                Some((number, receiver)) = self.receivers.recv() => {
                    self.order.arrived(number, Vec::new());
                    if let Err(close) = self.act_in_order().await {
                        return End::Closed(close);
                    }
                    // A newer request replaces an older one, which is answered now.
                    if let Some(Receiver::Poll(old)) = self.receiver.take() {
                        let _ = old.send(Bytes::from_static(HEARTBEAT_FRAME));
                    }
                    self.retired = None;
                    self.receiver = Some(receiver);
                    detached_since = None;
                    heartbeat_at = Instant::now() + HEARTBEAT;
                }
                () = receiver_gone(&self.receiver) => {
                    self.receiver = None;
                }
                () = sleep_until(heartbeat_at), if self.receiver.is_some() => {
                    self.send_frame(Bytes::from_static(HEARTBEAT_FRAME));
                    heartbeat_at = Instant::now() + HEARTBEAT;
                }
                () = sleep_until(detached_deadline.unwrap_or_else(Instant::now)), if detached_deadline.is_some() => {
                    return End::Abandoned;
                }
            }
        }
    }

    /// Acts on the client's messages that are next in order.
    async fn act_in_order(&mut self) -> Result<(), Close> {
        while let Some(messages) = self.order.next_ready() {
            for message in messages {
                let outgoing = self.session.on_message(&message).await?;
                outgoing.into_iter().for_each(|event| self.queue(event));
            }
        }
        Ok(())
    }

    fn queue(&mut self, outgoing: Outgoing) {
        self.queued.push_back(match outgoing {
            Outgoing::Own(json) => Bytes::from(json),
            Outgoing::Shared(form) => form.json,
        });
    }

    /// Sends what is queued to the receiver, as one `a[…]` frame.
    fn flush(&mut self) {
        if self.queued.is_empty() || self.receiver.is_none() {
            return;
        }
        let events = self.queued.iter().map(|json| std::str::from_utf8(json).unwrap_or("null"));
        if self.send_frame(Bytes::from(herald_wire::pusher::events_frame(events))) {
            self.queued.clear();
        }
    }

    /// Gives a frame to the receiver; false when there is none to take it.
    fn send_frame(&mut self, frame: Bytes) -> bool {
        match self.receiver.take() {
            Some(Receiver::Stream(sender, written)) if written > STREAM_LIMIT => {
                // pusher-js is opening the next stream; this one stays open until it arrives
                // (ending it now would read as a lost connection).
                self.retired = Some(sender);
                false
            }
            Some(Receiver::Stream(sender, written)) => {
                let length = frame.len();
                match sender.try_send(frame) {
                    Ok(()) => {
                        self.receiver = Some(Receiver::Stream(sender, written + length));
                        true
                    }
                    // A stream that cannot keep up is let go: pusher-js opens another.
                    Err(_) => false,
                }
            }
            Some(Receiver::Poll(sender)) => sender.send(frame).is_ok(),
            None => false,
        }
    }
}

/// `n=` of a request's query: pusher-js's counter of the requests it makes.
fn request_number(query: Option<&str>) -> Option<u64> {
    form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == "n").and_then(|(_, value)| value.parse().ok())
}

/// How long the session waits for a request missing from the order before going on without
/// it (another Pusher client on the page shares the counter; a request may be lost).
const GAP_WAIT: Duration = Duration::from_millis(500);
/// Requests held for their turn at most; beyond, the order goes on without the missing one.
const MAX_WAITING: usize = 64;

/// The client's requests put back in the order it made them, by their `n`. Requests without
/// one are acted on as they come.
#[derive(Default)]
struct RequestOrder {
    /// The `n` expected next; `None` until one is seen.
    expected: Option<u64>,
    /// Requests that came ahead of their turn, with their messages.
    waiting: std::collections::BTreeMap<u64, Vec<String>>,
    /// Messages ready to act on, in order.
    ready: VecDeque<Vec<String>>,
    /// Since when the order has waited for a missing request.
    gap_since: Option<Instant>,
}

impl RequestOrder {
    fn starting_after(number: Option<u64>) -> Self {
        Self { expected: number.map(|n| n.saturating_add(1)), ..Self::default() }
    }

    fn arrived(&mut self, number: Option<u64>, messages: Vec<String>) {
        let Some(number) = number else {
            self.ready.push_back(messages);
            return;
        };
        let expected = *self.expected.get_or_insert(number);
        if number < expected {
            // Behind the order (a request the gap wait gave up on): acted on now.
            self.ready.push_back(messages);
            return;
        }
        self.waiting.insert(number, messages);
        if self.waiting.len() > MAX_WAITING {
            self.skip_gap();
        } else {
            self.release();
        }
    }

    /// Moves what is now in turn to `ready`.
    fn release(&mut self) {
        while let Some(expected) = self.expected
            && let Some(messages) = self.waiting.remove(&expected)
        {
            self.ready.push_back(messages);
            self.expected = Some(expected.saturating_add(1));
        }
        self.gap_since = match (self.waiting.is_empty(), self.gap_since) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(Instant::now()),
        };
    }

    fn gap_deadline(&self) -> Option<Instant> {
        self.gap_since.map(|since| since + GAP_WAIT)
    }

    /// Gives up on the missing request: the order goes on from the next that came.
    fn skip_gap(&mut self) {
        self.expected = self.waiting.keys().next().copied().or(self.expected);
        self.gap_since = None;
        self.release();
    }

    fn next_ready(&mut self) -> Option<Vec<String>> {
        self.ready.pop_front()
    }
}

/// Resolves when the receiving request has gone (its client closed it).
async fn receiver_gone(receiver: &Option<Receiver>) {
    match receiver {
        Some(Receiver::Stream(sender, _)) => sender.closed().await,
        Some(Receiver::Poll(_)) | None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(order: &mut RequestOrder) -> Vec<String> {
        std::iter::from_fn(|| order.next_ready()).flatten().collect()
    }

    #[test]
    fn requests_are_acted_on_in_the_order_they_were_made() {
        let mut order = RequestOrder::starting_after(Some(10));
        order.arrived(Some(13), vec!["c".into()]);
        order.arrived(Some(12), vec!["b".into()]);
        assert!(drain(&mut order).is_empty(), "11 is missing");
        assert!(order.gap_deadline().is_some());
        order.arrived(Some(11), vec![]);
        assert_eq!(drain(&mut order), ["b", "c"]);
        assert!(order.gap_deadline().is_none());
        order.arrived(None, vec!["untagged".into()]);
        assert_eq!(drain(&mut order), ["untagged"]);
    }

    #[test]
    fn a_missing_request_is_given_up_on() {
        let mut order = RequestOrder::starting_after(Some(1));
        order.arrived(Some(4), vec!["d".into()]);
        order.skip_gap();
        assert_eq!(drain(&mut order), ["d"]);
        order.arrived(Some(3), vec!["late".into()]);
        assert_eq!(drain(&mut order), ["late"]);
    }
}

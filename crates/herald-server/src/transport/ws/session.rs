//! One WebSocket connection: a single task running one `select!` over shutdown, pushes out (or
//! the mark that the connection lagged), frames in, and the heartbeat; then a goodbye that fits
//! the ending. What the messages mean is the [`Protocol`]'s: Herald's own ([`Connection`]) or
//! the Pusher door's, over the same loop.
//!
//! Every open connection holds this task's state, so it is kept small: what only some wake-ups
//! need (commands, pings, blocked writes, the goodbye) runs in boxed futures.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Control, Inbox, PositionTracker, Push};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use super::commands::error_reply;
use super::connection::Connection;
use super::frames::{self, Incoming, MessageReader, ReadError};
use super::watched::WatchedIo;
use crate::auth::Identity;
use crate::encode::{EncodedPresence, wire_position};
use crate::presence::ClientId;
use crate::state::AppState;
use crate::transport::Expiry;
use crate::transport::limits::ConnectionPermit;
use herald_wire::ErrorBody;
use herald_wire::close_code;
use herald_wire::push::{Disconnect, DisconnectPush, Unsubscribed, UnsubscribedPush};

/// A ping with no payload: FIN + opcode 9, length 0.
const PING_FRAME: [u8; 2] = [0x89, 0x00];
/// Pushes written per flush at most.
const WRITE_BATCH: usize = 256;
/// How long a closing connection waits for its goodbye to be written and for the peer's close.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What a session speaks: how it answers the client's messages, which frame each push becomes,
/// and how it says goodbye. The session owns the socket, the inbox and the loop.
pub(crate) trait Protocol: Send + 'static {
    /// What the metrics call this protocol's connections.
    const TRANSPORT: crate::metrics::Transport;
    fn app(&self) -> &AppState;
    /// When the client's credentials run out, if they do.
    fn expiry(&mut self) -> &mut Expiry;
    /// Answers a text message: the frames to send, or the ending it calls for.
    fn on_text(&mut self, text: &str) -> impl Future<Output = Result<Vec<Bytes>, Ending>> + Send;
    /// Answers a binary message.
    fn on_binary(&mut self) -> Result<Vec<Bytes>, Ending>;
    /// Queues the frame of a push, if this client gets it; `Err`: the push ends the session.
    /// Controls go to [`Protocol::on_control`] instead.
    fn queue_push(&mut self, push: Push, pending: &mut VecDeque<Bytes>) -> Result<(), Ending>;
    /// Acts on what the server API tells the connection: the frames to send, or the ending it
    /// calls for.
    fn on_control(&mut self, control: Arc<Control>) -> impl Future<Output = Result<Vec<Bytes>, Ending>> + Send;
    /// Leaves every channel: the session is over.
    fn leave_all(&mut self) -> impl Future<Output = ()> + Send;
    /// How the session says goodbye after `ending`: the close code and reason, and a last
    /// frame before the close; `None`: no goodbye.
    fn goodbye(&self, ending: Ending) -> Option<Goodbye>;
    /// Whether the client may send compressed messages (permessage-deflate was agreed).
    fn inflates(&self) -> bool {
        false
    }
}

/// A session's last words: an optional frame, then a close frame.
pub(crate) struct Goodbye {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) last_frame: Option<Bytes>,
}

/// The connection's task. The session is built before the future: an `async fn` would keep its
/// arguments (the socket among them) in its state beside the session they were moved into.
pub(super) fn run<T>(
    app: AppState,
    socket: WatchedIo<T>,
    identity: Identity,
    positions: Vec<(herald_core::ChannelName, herald_core::Position)>,
    deflate: Option<super::deflate::Deflate>,
    permit: ConnectionPermit,
) -> impl Future<Output = ()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let capacity = app.settings.websocket.outbox_capacity.get();
    let (subscriber, inbox) = app.hub.connect(capacity);
    let publish_rate =
        app.settings.limits.client_publish_rate.map(|rate| Box::new(crate::transport::limits::TokenBucket::new(rate)));
    let mut connection = Connection {
        app,
        subscriber,
        positions: PositionTracker::default(),
        identity: Identity::Anonymous,
        client: ClientId::random(),
        declared_info: None,
        expiry: None,
        publish_rate,
        rare: None,
        deflate,
    };
    connection.set_identity(identity);
    connection.subscribe_token_subs(&positions);
    run_protocol(connection, inbox, socket, permit, Vec::new())
}

/// The task of a connection speaking `protocol`, whose pushes arrive in `inbox`; `greeting`
/// is written first.
pub(crate) fn run_protocol<T, P>(
    protocol: P,
    inbox: Inbox,
    socket: WatchedIo<T>,
    permit: ConnectionPermit,
    greeting: Vec<Bytes>,
) -> impl Future<Output = ()>
where
    T: AsyncRead + AsyncWrite + Unpin,
    P: Protocol,
{
    let reader = MessageReader::new(protocol.inflates());
    let mut session = Session {
        connection: protocol,
        inbox,
        socket,
        reader,
        pending: VecDeque::from(greeting),
        permit: Box::new(permit),
    };
    async move {
        let greeted = session.pending.is_empty() || Box::pin(session.send(Vec::new())).await.is_ok();
        let ending = if greeted { session.serve().await } else { Ending::WriteFailed };
        // Boxed: the goodbye is rare, and this keeps it out of every idle connection's state.
        Box::pin(session.finish(ending)).await;
    }
}

pub(super) struct Session<T, P> {
    /// Who the client is and what it follows: what its messages act on.
    connection: P,
    inbox: Inbox,
    socket: WatchedIo<T>,
    /// The client's messages, put together from the socket's input.
    reader: MessageReader,
    /// Frames not yet written, in order: pushes, replies, pongs, pings (see [`write_frames`]).
    pending: VecDeque<Bytes>,
    /// The connection's admission, given back when the session ends (boxed: see
    /// `an_idle_connection_s_task_state_stays_small`).
    permit: Box<ConnectionPermit>,
}

/// Why a session ended, which decides how it says goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    PeerClosed,
    PeerGone,
    Shutdown,
    Lagged,
    NoPong,
    TokenExpired,
    WriteFailed,
    TooBig,
    InvalidUtf8,
    /// A compressed message that does not decompress.
    InvalidCompressed,
    ProtocolError,
    /// A server-side subscription failed (the engine): the client reconnects, and it is made again.
    SubscribeFailed,
    /// The application ended the connection (the Pusher door's `terminate_connections`).
    Terminated,
    /// The server API's `disconnect` ended it.
    Disconnected,
}

impl Ending {
    pub(super) fn from_read_error(error: ReadError) -> Self {
        match error {
            ReadError::Gone => Self::PeerGone,
            ReadError::TooBig => Self::TooBig,
            ReadError::InvalidUtf8 => Self::InvalidUtf8,
            ReadError::InvalidData => Self::InvalidCompressed,
            ReadError::Protocol => Self::ProtocolError,
        }
    }

    /// The name of the ending in metrics.
    fn metric(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::PeerGone => "peer_gone",
            Self::Shutdown => "shutdown",
            Self::Lagged => "slow_consumer",
            Self::NoPong => "no_pong",
            Self::TokenExpired => "token_expired",
            Self::WriteFailed => "write_failed",
            Self::TooBig => "message_too_big",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidCompressed => "invalid_compressed_data",
            Self::ProtocolError => "protocol_error",
            Self::Terminated => "terminated",
            Self::Disconnected => "disconnected",
            Self::SubscribeFailed => "subscribe_failed",
        }
    }

    /// Herald's close code, reason, and whether the client should reconnect; `None`: no goodbye.
    pub(crate) fn goodbye(self) -> Option<(u16, &'static str, bool)> {
        match self {
            Self::PeerClosed | Self::PeerGone | Self::WriteFailed => None,
            Self::Shutdown => Some((close_code::GOING_AWAY, "server shutting down", true)),
            Self::Lagged => {
                Some((close_code::SLOW_CONSUMER, "slow consumer: reconnect and recover from your last position", true))
            }
            Self::NoPong => Some((close_code::NO_PONG, "no pong within the timeout", true)),
            Self::TokenExpired => Some((close_code::TOKEN_EXPIRED, "token expired: refresh it and reconnect", true)),
            Self::TooBig => Some((close_code::MESSAGE_TOO_BIG, "message too big", false)),
            Self::InvalidUtf8 => Some((close_code::INVALID_DATA, "text frame is not valid UTF-8", false)),
            Self::InvalidCompressed => {
                Some((close_code::INVALID_DATA, "compressed message does not decompress", false))
            }
            Self::ProtocolError => Some((close_code::PROTOCOL_ERROR, "websocket protocol error", false)),
            Self::Terminated => Some((close_code::GOING_AWAY, "disconnected by the application", false)),
            Self::SubscribeFailed => {
                Some((close_code::SUBSCRIBE_FAILED, "a server-side subscription failed: reconnect", true))
            }
            // The reason and whether to come back are the API caller's (see `Connection`).
            Self::Disconnected => Some((close_code::DISCONNECTED, "disconnected by the server", true)),
        }
    }

    /// The read side failed: the socket still holds input that will not be read as frames.
    fn read_failed(self) -> bool {
        matches!(self, Self::TooBig | Self::InvalidUtf8 | Self::InvalidCompressed | Self::ProtocolError)
    }
}

impl<T, P> Session<T, P>
where
    T: AsyncRead + AsyncWrite + Unpin,
    P: Protocol,
{
    async fn serve(&mut self) -> Ending {
        // The settings are read where used rather than kept: every open connection holds this
        // future's state.
        let mut heartbeat = Box::pin(tokio::time::sleep(self.connection.app().settings.websocket.ping_interval));
        let mut last_heard = Instant::now();
        let shutdown = self.connection.app().shutdown.clone();
        let waiter = pin!(shutdown.cancelled());
        let mut stop = crate::transport::stop_signal(&shutdown, waiter, self.connection.app().settings.drain_period);
        let mut batch = Vec::new();
        let mut check_socket_first = false;
        loop {
            // A full batch means pushes may keep coming: look at the client's side once first,
            // so its commands and pongs are never starved.
            if check_socket_first
                && let Poll::Ready(message) = futures_util::poll!(next_message(
                    &mut self.socket,
                    &mut self.reader,
                    self.connection.app().settings.limits.max_message_size.get()
                ))
            {
                last_heard = Instant::now();
                if let Err(ending) = Box::pin(self.handle_message(message)).await {
                    return ending;
                }
            }
            // Branch futures are dropped before a handler runs, so handlers may use the socket.
            // Pushes come before the socket: most wake-ups are pushes, and this way they do not
            // pay for a read attempt.
            tokio::select! {
                biased;
                () = &mut stop => return Ending::Shutdown,
                received = self.inbox.recv_many(&mut batch, WRITE_BATCH) => {
                    let Ok(received) = received else {
                        return Ending::Lagged;
                    };
                    check_socket_first = received == WRITE_BATCH;
                    if let Err(ending) = self.write_pushes(&mut batch).await {
                        return ending;
                    }
                }
                // Read only when input may have arrived: most wake-ups are pushes.
                message = next_message(&mut self.socket, &mut self.reader, self.connection.app().settings.limits.max_message_size.get()) => {
                    last_heard = Instant::now();
                    // Boxed, like every rare path: messages from the client are few next to pushes.
                    if let Err(ending) = Box::pin(self.handle_message(message)).await {
                        return ending;
                    }
                }
                () = crate::transport::until_expiry(self.connection.expiry()) => return Ending::TokenExpired,
                () = heartbeat.as_mut() => {
                    let settings = &self.connection.app().settings.websocket;
                    if last_heard.elapsed() >= settings.ping_interval + settings.pong_timeout {
                        return Ending::NoPong;
                    }
                    heartbeat.as_mut().reset(Instant::now() + settings.ping_interval);
                    if let Err(ending) = Box::pin(self.send(vec![Bytes::from_static(&PING_FRAME)])).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Handles one message from the client (or the end of its input).
    async fn handle_message(&mut self, message: Result<Incoming, ReadError>) -> Result<(), Ending> {
        match message {
            Err(error) => Err(Ending::from_read_error(error)),
            Ok(Incoming::Close(code)) => {
                // Answered once what is queued is written (see `finish`).
                self.pending.push_back(frames::close_reply(code));
                Err(Ending::PeerClosed)
            }
            Ok(Incoming::Ping(payload)) => self.send(vec![frames::frame(frames::OPCODE_PONG, &payload)]).await,
            Ok(Incoming::Pong) => Ok(()),
            Ok(Incoming::Binary(_)) => {
                let replies = self.connection.on_binary()?;
                self.send(replies).await
            }
            Ok(Incoming::Text(text)) => {
                let replies = self.connection.on_text(&text).await?;
                self.send(replies).await
            }
        }
    }

    /// Writes a batch of pushes: each new publication's shared frame, all in one vectored
    /// write where the socket takes them. A position moves when its frame is queued: queued
    /// frames are always written before anything else, so positions say what the client gets.
    async fn write_pushes(&mut self, batch: &mut Vec<Push>) -> Result<(), Ending> {
        // In a block: the list's storage ends before the write below, so it is not kept in
        // every idle connection's state.
        {
            let controls = self.queue_pushes(batch)?;
            if !controls.is_empty() {
                Box::pin(self.apply_controls(controls)).await?;
            }
        }
        self.write_pending().await
    }

    /// Queues the frames of a batch of pushes, and returns the controls among them (rare),
    /// to be acted on after the others.
    fn queue_pushes(&mut self, batch: &mut Vec<Push>) -> Result<Vec<Arc<Control>>, Ending> {
        let (mut delivered, mut oldest_ms) = (0, u64::MAX);
        let mut controls = Vec::new();
        for push in batch.drain(..) {
            let publication_ms = match &push {
                Push::Publication(publication) => Some(publication.time_ms),
                Push::Control(control) => {
                    controls.push(control.clone());
                    continue;
                }
                _ => None,
            };
            let queued = self.pending.len();
            self.connection.queue_push(push, &mut self.pending)?;
            if let Some(time_ms) = publication_ms
                && self.pending.len() > queued
            {
                delivered += 1;
                oldest_ms = oldest_ms.min(time_ms);
            }
        }
        // Counted as handed to the socket (not after the write: nothing more is held across
        // the await, which every idle connection's state would carry).
        crate::metrics::delivered(P::TRANSPORT, delivered, oldest_ms);
        Ok(controls)
    }

    async fn apply_controls(&mut self, controls: Vec<Arc<Control>>) -> Result<(), Ending> {
        for control in controls {
            let frames = self.connection.on_control(control).await?;
            self.pending.extend(frames);
        }
        Ok(())
    }

    /// Writes what is queued. Most writes complete at once, and keep nothing in the session's
    /// state; a blocked socket is waited for in a boxed future.
    async fn write_pending(&mut self) -> Result<(), Ending> {
        let attempt = std::future::poll_fn(|context| {
            Poll::Ready(poll_write_frames(&mut self.socket, &mut self.pending, context))
        })
        .await;
        match attempt {
            Poll::Ready(written) => written.map_err(|_| Ending::WriteFailed),
            Poll::Pending => Box::pin(self.write_blocked()).await,
        }
    }

    /// Waits for a blocked socket to take what is queued: it fails after the write timeout, and
    /// gives way at once when the connection lags or the server shuts down, so a blocked socket
    /// never hides either.
    async fn write_blocked(&mut self) -> Result<(), Ending> {
        let write = write_frames(&mut self.socket, &mut self.pending);
        tokio::select! {
            biased;
            () = self.connection.app().shutdown.cancelled() => Err(Ending::Shutdown),
            _ = self.inbox.lagged() => Err(Ending::Lagged),
            written = timeout(self.connection.app().settings.websocket.write_timeout, write) => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(Ending::WriteFailed),
            },
        }
    }

    /// Writes complete frames (replies, pongs, pings) after whatever is queued.
    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), Ending> {
        self.pending.extend(frames);
        self.write_pending().await?;
        if self.pending.is_empty() {
            // Replies and pings are rare: the queue's buffer is kept for pushes only, so a
            // connection that has only been answered holds none while idle.
            self.pending = VecDeque::new();
        }
        Ok(())
    }

    /// Unsubscribes everywhere, then says goodbye the way the ending calls for. On shutdown
    /// the pushes already queued go out first: in-flight work is finished.
    async fn finish(mut self, ending: Ending) {
        self.connection.leave_all().await;
        let ending = match ending {
            // A write that failed while the queue overflowed: the client is too slow.
            Ending::WriteFailed if self.connection.app().shutdown.is_cancelled() => Ending::Shutdown,
            Ending::WriteFailed if self.inbox.is_lagged() => Ending::Lagged,
            other => other,
        };
        self.permit.closed(ending.metric());
        if matches!(ending, Ending::Lagged | Ending::NoPong | Ending::TooBig | Ending::ProtocolError) {
            tracing::info!(ending = ending.metric(), "WebSocket connection closed by the server");
        }
        if ending == Ending::Shutdown {
            while let Some(push) = self.inbox.try_recv() {
                if self.connection.queue_push(push, &mut self.pending).is_err() {
                    break;
                }
            }
        }
        // Frames already queued (perhaps half written when the session ended) go first.
        let frames_complete =
            matches!(timeout(CLOSE_WAIT, write_frames(&mut self.socket, &mut self.pending)).await, Ok(Ok(())));
        if !frames_complete {
            // A frame is cut short: nothing more can be said on this socket.
            return;
        }
        // After the peer's close, the reply to it was among the queued frames.
        let Some(goodbye) = self.connection.goodbye(ending) else {
            return;
        };
        if let Some(frame) = goodbye.last_frame {
            self.pending.push_back(frame);
        }
        if !matches!(timeout(CLOSE_WAIT, write_frames(&mut self.socket, &mut self.pending)).await, Ok(Ok(()))) {
            // The push is cut short: a close frame now would land inside it.
            return;
        }
        let max_message = self.connection.app().settings.limits.max_message_size.get();
        let (code, reason) = (goodbye.code, goodbye.reason);
        close_and_linger(&mut self.socket, &mut self.reader, max_message, code, reason, ending.read_failed()).await;
    }
}

/// Herald's own protocol on the session.
impl Protocol for Connection {
    const TRANSPORT: crate::metrics::Transport = crate::metrics::Transport::WebSocket;

    fn app(&self) -> &AppState {
        &self.app
    }

    fn expiry(&mut self) -> &mut Expiry {
        &mut self.expiry
    }

    async fn on_text(&mut self, text: &str) -> Result<Vec<Bytes>, Ending> {
        Ok(self.handle_command(text).await)
    }

    fn on_binary(&mut self) -> Result<Vec<Bytes>, Ending> {
        let error = ErrorBody::new("binary_not_supported", "send commands as JSON text frames");
        Ok(vec![error_reply(None, error)])
    }

    /// A push's shared frame, unless it is a publication this connection has seen.
    fn queue_push(&mut self, push: Push, pending: &mut VecDeque<Bytes>) -> Result<(), Ending> {
        match push {
            Push::Publication(publication) => {
                if let Some(frame) = self.publication_frame(&publication) {
                    pending.push_back(frame);
                }
            }
            Push::Presence(event) => pending.push_back(EncodedPresence::of(&event).ws_frame),
            // Herald's own protocol has no count event (it never asks).
            Push::Count(_) | Push::Control(_) => {}
        }
        Ok(())
    }

    async fn on_control(&mut self, control: Arc<Control>) -> Result<Vec<Bytes>, Ending> {
        match &*control {
            Control::Disconnect { reason, reconnect } => {
                self.rare().told_to_go = Some((reason.clone(), *reconnect));
                Err(Ending::Disconnected)
            }
            Control::Unsubscribe { channel, reason } => {
                if !self.leave(channel).await {
                    return Ok(Vec::new());
                }
                let push = UnsubscribedPush {
                    unsubscribed: Unsubscribed { channel: channel.to_string(), reason: reason.clone() },
                };
                Ok(vec![frames::text_frame(serde_json::to_string(&push).unwrap_or_default()).1])
            }
            Control::Subscribe { channel, since } => {
                self.server_subscribe(channel, since.as_ref()).await.ok_or(Ending::SubscribeFailed)
            }
        }
    }

    async fn leave_all(&mut self) {
        let channels: Vec<herald_core::ChannelName> =
            self.positions.iter().map(|(channel, _)| channel.clone()).collect();
        let client = self.client.to_string();
        for channel in &channels {
            // Gone, unless the client is back within the grace period.
            self.app.hub.leave_presence(channel, &client, true);
            self.app.hub.unsubscribe(&self.subscriber, channel).await;
        }
        self.app.controls.remove(&self.subscriber);
    }

    fn inflates(&self) -> bool {
        self.deflate.is_some()
    }

    /// Herald's close code, after a `disconnect` push with the positions to recover from.
    fn goodbye(&self, ending: Ending) -> Option<Goodbye> {
        let (mut code, reason, mut reconnect) = ending.goodbye()?;
        let mut told = reason.to_string();
        if let (Ending::Disconnected, Some((reason, told_reconnect))) =
            (ending, self.rare.as_ref().and_then(|rare| rare.told_to_go.as_ref()))
        {
            (told, reconnect) = (reason.clone(), *told_reconnect);
            if !reconnect {
                code = close_code::DISCONNECTED_FOR_GOOD;
            }
        }
        let last_frame = (ending != Ending::NoPong).then(|| {
            let positions = self
                .positions
                .iter()
                .map(|(channel, position)| (channel.to_string(), wire_position(position)))
                .collect();
            let push = DisconnectPush { disconnect: Disconnect { code, reason: told, reconnect, positions } };
            frames::text_frame(serde_json::to_string(&push).unwrap_or_default()).1
        });
        Some(Goodbye { code, reason, last_frame })
    }
}

/// The client's next message, read only once the socket may have input: most wake-ups are
/// pushes, and this way they do not pay for a read attempt.
fn next_message<'a, T>(
    socket: &'a mut WatchedIo<T>,
    reader: &'a mut MessageReader,
    max_message: usize,
) -> impl Future<Output = Result<Incoming, ReadError>> + 'a
where
    T: AsyncRead + Unpin,
{
    std::future::poll_fn(move |context| {
        std::task::ready!(socket.poll_input(context));
        reader.poll_next(socket, context, max_message)
    })
}

/// Most frames handed to one vectored write.
const FRAMES_PER_WRITE: usize = 32;

/// Writes queued frames straight to the socket, several per system call, without copying
/// them, then flushes. Frames leave `pending` only once written, so a cancelled call resumes
/// exactly where it stopped, and nothing is ever written in the middle of a frame.
pub(super) async fn write_frames<T>(socket: &mut T, pending: &mut VecDeque<Bytes>) -> std::io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    // A poll function rather than an `async` body: no state of its own in the session's future.
    std::future::poll_fn(|context| poll_write_frames(socket, pending, context)).await
}

fn poll_write_frames<T>(
    raw: &mut T,
    pending: &mut VecDeque<Bytes>,
    context: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<()>>
where
    T: AsyncWrite + Unpin,
{
    while !pending.is_empty() {
        let mut written = if pending.len() == 1 {
            // The usual case at moderate rates: one frame, no slices to build.
            std::task::ready!(Pin::new(&mut *raw).poll_write(context, &pending[0]))?
        } else {
            let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
            let count = pending.len().min(FRAMES_PER_WRITE);
            for (slice, frame) in slices.iter_mut().zip(pending.iter()) {
                *slice = IoSlice::new(frame);
            }
            std::task::ready!(Pin::new(&mut *raw).poll_write_vectored(context, &slices[..count]))?
        };
        if written == 0 {
            return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero)));
        }
        while written > 0 {
            let front = pending.front_mut().expect("written bytes belong to queued frames");
            if written >= front.len() {
                written -= front.len();
                pending.pop_front();
            } else {
                bytes::Buf::advance(front, written);
                written = 0;
            }
        }
    }
    // Nothing on plain TCP; over TLS, what the session took may still wait in its buffer.
    Pin::new(raw).poll_flush(context)
}

/// Refuses a connection just opened: `frame` (saying why), then the close.
pub(crate) async fn refuse<T>(mut socket: WatchedIo<T>, frame: Bytes, code: u16, reason: &str, max_message: usize)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = VecDeque::from([frame]);
    if matches!(timeout(CLOSE_WAIT, write_frames(&mut socket, &mut pending)).await, Ok(Ok(()))) {
        close_and_linger(&mut socket, &mut MessageReader::default(), max_message, code, reason, false).await;
    }
}

/// After a read error on the echo route: the close code that fits it, then lingering.
pub(super) async fn goodbye_after_error<T>(
    socket: &mut T,
    reader: &mut MessageReader,
    max_message: usize,
    ending: Ending,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Some((code, reason, _)) = ending.goodbye() {
        close_and_linger(socket, reader, max_message, code, reason, ending.read_failed()).await;
    }
}

/// Sends the close frame, then reads on until the peer's close frame or the end of its input:
/// a socket closed with unread input is reset by the kernel, and the peer would lose our close
/// frame. When reading frames has failed, the raw socket is shut for writing and drained
/// instead.
pub(super) async fn close_and_linger<T>(
    socket: &mut T,
    reader: &mut MessageReader,
    max_message: usize,
    code: u16,
    reason: &str,
    read_failed: bool,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let linger = async {
        let mut close = VecDeque::from([frames::close_frame(code, reason)]);
        if write_frames(socket, &mut close).await.is_err() && !read_failed {
            return;
        }
        if !read_failed {
            while let Ok(message) = std::future::poll_fn(|context| reader.poll_next(socket, context, max_message)).await
            {
                if matches!(message, Incoming::Close(_)) {
                    return;
                }
            }
        }
        // Our side is done (FIN after the close frame), then what the peer still sends is
        // read and dropped until it closes too.
        let _ = socket.shutdown().await;
        let mut discard = [0u8; 4096];
        while let Ok(read) = socket.read(&mut discard).await {
            if read == 0 {
                return;
            }
        }
    };
    let _ = timeout(CLOSE_WAIT, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, Settings};
    use crate::metrics::Transport;
    use std::sync::Arc;

    /// Every open connection holds this future; what commands and goodbyes need is boxed
    /// elsewhere, so the idle state stays small. The bound is tight on purpose: tokio's task
    /// cells are 128-byte aligned, and the task of a connection (the future with the real
    /// socket type, about 32 bytes more than the test's, plus tokio's header and trailer) is a
    /// 768-byte allocation at 576 bytes here; a few dozen bytes more and it takes 896.
    #[tokio::test]
    async fn an_idle_connection_s_task_state_stays_small() {
        let data_dir = tempfile::tempdir().unwrap();
        let overrides = Overrides { data_dir: Some(data_dir.path().to_path_buf()), ..Default::default() };
        let settings = Arc::new(Settings::from_toml("", &overrides).unwrap());
        let (shutdown, tasks) = (tokio_util::sync::CancellationToken::new(), tokio_util::task::TaskTracker::new());
        let outbox = crate::wiring::outbox(&settings).await.unwrap();
        let webhooks =
            crate::webhooks::Webhooks::start(outbox, &settings, tasks.clone(), shutdown.clone()).await.unwrap();
        let hub = crate::wiring::hub(&settings, &tasks, &shutdown).await.unwrap();
        let app = AppState::new(hub, webhooks, settings, shutdown, tasks);
        let (io, _peer) = tokio::io::duplex(64);
        let socket = WatchedIo::new(io);
        let permit = app.connections.admit([127, 0, 0, 1].into(), Transport::WebSocket).unwrap();
        let session = run(app, socket, Identity::Anonymous, Vec::new(), None, permit);
        let size = std::mem::size_of_val(&session);
        eprintln!("session future: {size} bytes");
        assert!(size <= 600, "the per-connection future grew to {size} bytes");
    }
}

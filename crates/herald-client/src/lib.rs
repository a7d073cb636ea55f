//! A Rust client for Herald over its WebSocket protocol (`herald-wire`, the server's own
//! definition of it).
//!
//! A [`Client`] keeps one connection and makes it again when it is lost, with exponential
//! backoff and full jitter; each [`Subscription`] remembers the position it reached and
//! resubscribes from it on every reconnect, so it yields every publication of its channel once
//! and in order, whatever happens to the network. When the server can no longer fill a gap
//! (history lost, or the epoch changed) the subscription says so with
//! `Event::Subscribed { recovered: Some(false), .. }`: reload your state.
//!
//! `https://` URLs are spoken over TLS (rustls, trusting the web's usual roots and any in
//! [`Options::root_certificates`]). A token that expires can be renewed by the client itself:
//! give [`Options::get_token`] and it asks for a new one before each expiry and sends it on the
//! live connection, so the subscriptions go on.
//!
//! ```no_run
//! # async fn example() -> Result<(), herald_client::ClientError> {
//! use futures_util::StreamExt;
//! use herald_client::{Client, Event, Options};
//!
//! let client = Client::connect("http://127.0.0.1:8750", Options::default()).await?;
//! let mut lobby = client.subscribe("chat:lobby", None).await?;
//! client.publish("chat:lobby", serde_json::json!({"text": "hi"})).await?;
//! while let Some(event) = lobby.next().await {
//!     if let Event::Publication(publication) = event {
//!         println!("{} {}", publication.offset, publication.data);
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod connection;
mod tls;
mod token;

pub use backoff::Backoff;
pub use rustls_pki_types::CertificateDer;
pub use tls::pem_certificates;
pub use token::TokenSource;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use herald_wire::ErrorBody;
pub use herald_wire::Position;
pub use herald_wire::presence::{PresenceEntry, PresenceList};
pub use herald_wire::publication::{Publication, Published};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use connection::Request;

/// How a client connects.
#[derive(Clone)]
pub struct Options {
    /// A client JWT, sent with the WebSocket upgrade. Alone, it is used as long as it holds:
    /// once it has expired the subscriptions end with `token_expired`.
    pub token: Option<String>,
    /// Where new tokens come from: called for the first token (unless `token` is given), before
    /// each reconnect when the token held expires within 5 s, and ahead of each expiry (at 85%
    /// of the token's life, at least 3 s before it ends) to renew it on the live connection
    /// without dropping anything; a connection closed at expiry is made again at once with a
    /// new token.
    pub get_token: Option<TokenSource>,
    /// Root certificates trusted for `https://`/`wss://` besides the web's usual ones (Mozilla's,
    /// from `webpki-roots`): a private CA's, or a self-signed server's (see
    /// [`pem_certificates`] for reading them and what a self-signed one must be).
    pub root_certificates: Vec<CertificateDer<'static>>,
    /// The first reconnect waits up to this long (full jitter).
    pub min_reconnect_delay: Duration,
    /// No reconnect waits longer.
    pub max_reconnect_delay: Duration,
    /// How long a command waits for its reply, and a connection attempt for its answer.
    pub request_timeout: Duration,
    /// A connection on which nothing arrives for this long is taken for lost (the server pings
    /// every 25 s by default).
    pub idle_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: None,
            get_token: None,
            root_certificates: Vec::new(),
            min_reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(40),
        }
    }
}

impl std::fmt::Debug for Options {
    // By hand: the token is a secret, and a token source has nothing to show.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Options")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("get_token", &self.get_token)
            .field("root_certificates", &self.root_certificates.len())
            .field("min_reconnect_delay", &self.min_reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("request_timeout", &self.request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// The connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    /// Lost (a reconnect follows), or ended for good (the client was closed, or the server
    /// said not to reconnect).
    Disconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a Herald URL: use http://, https://, ws:// or wss://")]
    InvalidUrl(String),
    /// A root certificate that cannot be read or trusted.
    #[error("{0}")]
    Certificate(String),
    /// The token source failed (for the first connection, within `request_timeout`).
    #[error("the token source failed: {0}")]
    Token(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{}: {}", .0.code, .0.message)]
    Server(ErrorBody),
    #[error("not connected (the connection was lost; it is being made again)")]
    Disconnected,
    #[error("the client is closed")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("a reply Herald should not have sent: {0}")]
    Protocol(String),
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Event {
    /// Subscribed (again, after each reconnect): the channel's position now, and, when it
    /// resubscribed from a position, whether everything after it was recovered.
    Subscribed {
        position: Position,
        recovered: Option<bool>,
    },
    /// The next publication of the channel: each once, in order.
    Publication(Publication),
    Join(PresenceEntry),
    Leave(PresenceEntry),
    /// The subscription ends: the server refused to subscribe it again (a token that no longer
    /// grants it, say), or refused the connection (an expired token).
    Error(ErrorBody),
    /// The subscription ends: the server's API unsubscribed it, saying why. It is not made
    /// again on a reconnect.
    Unsubscribed {
        reason: String,
    },
}

/// A page of a channel's history.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryPage {
    pub channel: String,
    pub publications: Vec<Publication>,
    /// The channel's position now.
    pub position: Position,
    /// The oldest offset history still has.
    pub oldest: u64,
}

/// What `history` asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Publications after this position (its epoch must still be the channel's).
    pub since: Option<Position>,
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// A connection to Herald, made again whenever it is lost. Cheap to clone; the connection ends
/// when [`Client::close`] is called or every clone and subscription is dropped.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    state: watch::Receiver<State>,
    timeout: Duration,
}

impl Client {
    /// Connects to the Herald at `url` (`http://127.0.0.1:8750`, `https://…` for TLS, or a
    /// `ws://…/ws` or `wss://…/ws` URL). Waits for the first connection and fails if it cannot
    /// be made (a token source that fails is tried again for up to `request_timeout`); after
    /// that, lost connections are made again by themselves.
    pub async fn connect(url: &str, options: Options) -> Result<Self, ClientError> {
        let ws_url = connection::websocket_url(url)?;
        let connector = tls::connector(&options.root_certificates)?;
        let (requests, receiver) = mpsc::channel(256);
        let (state, state_receiver) = watch::channel(State::Connecting);
        let (first, connected) = oneshot::channel();
        let timeout = options.request_timeout;
        tokio::spawn(connection::Connection::new(ws_url, connector, options, receiver, state).run(first));
        connected.await.map_err(|_| ClientError::Closed)??;
        Ok(Self { requests, state: state_receiver, timeout })
    }

    /// The connection's state now and as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Subscribes to `channel`, from `since` if given (then what came after it is delivered
    /// first, or `recovered: Some(false)` says it could not be).
    pub async fn subscribe(&self, channel: &str, since: Option<Position>) -> Result<Subscription, ClientError> {
        let (events, receiver) = mpsc::channel(1024);
        let (reply, answer) = oneshot::channel();
        self.send(Request::Subscribe { channel: channel.to_string(), since, events, reply }).await?;
        let generation = self.wait(answer).await?;
        Ok(Subscription { channel: channel.to_string(), generation, events: receiver, client: self.clone() })
    }

    /// Publishes `data` to `channel` (the namespace must allow client publishing).
    pub async fn publish(&self, channel: &str, data: serde_json::Value) -> Result<Published, ClientError> {
        let data = serde_json::value::to_raw_value(&data).map_err(|error| ClientError::Protocol(error.to_string()))?;
        let result = self.command(herald_wire::Op::Publish, channel, |command| command.data = Some(&data)).await?;
        parse(&result)
    }

    /// A page of `channel`'s history.
    pub async fn history(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage, ClientError> {
        let result = self
            .command(herald_wire::Op::History, channel, |command| {
                command.since = query.since.clone();
                command.limit = query.limit;
                command.reverse = Some(query.reverse);
            })
            .await?;
        parse(&result)
    }

    /// Who is present in `channel` (the namespace must keep presence).
    pub async fn presence(&self, channel: &str) -> Result<PresenceList, ClientError> {
        parse(&self.command(herald_wire::Op::Presence, channel, |_| {}).await?)
    }

    /// Ends the connection; every subscription's stream ends.
    pub async fn close(&self) {
        let _ = self.requests.send(Request::Close).await;
    }

    async fn command<'a>(
        &self,
        op: herald_wire::Op,
        channel: &'a str,
        fields: impl FnOnce(&mut herald_wire::Command<'a>),
    ) -> Result<Box<serde_json::value::RawValue>, ClientError> {
        // The connection sets the id; the rest is the command as it goes on the wire.
        let mut command = herald_wire::Command::new(0, op);
        command.channel = Some(channel.into());
        fields(&mut command);
        let command = serde_json::to_value(&command).map_err(|error| ClientError::Protocol(error.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.send(Request::Command { command, reply }).await?;
        self.wait(answer).await
    }

    async fn send(&self, request: Request) -> Result<(), ClientError> {
        self.requests.send(request).await.map_err(|_| ClientError::Closed)
    }

    async fn wait<T>(&self, answer: oneshot::Receiver<Result<T, ClientError>>) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }
}

/// A result read from the reply's raw JSON (published data stays as it was sent).
fn parse<T: serde::de::DeserializeOwned>(result: &serde_json::value::RawValue) -> Result<T, ClientError> {
    serde_json::from_str(result.get()).map_err(|error| ClientError::Protocol(error.to_string()))
}

/// One channel's events, as a `Stream`; it ends when the client is closed, the server says not
/// to reconnect, or a resubscribe is refused (then its last event is an [`Event::Error`]).
/// Dropping it unsubscribes.
pub struct Subscription {
    channel: String,
    generation: u64,
    events: mpsc::Receiver<Event>,
    client: Client,
}

impl Subscription {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Stops the subscription, waiting for room to say so (dropping it says so if there is).
    pub async fn unsubscribe(mut self) {
        if let Some(request) = self.unsubscribe_request() {
            let _ = self.client.requests.send(request).await;
        }
    }

    /// The request that ends this subscription, once.
    fn unsubscribe_request(&mut self) -> Option<Request> {
        let channel = std::mem::take(&mut self.channel);
        (!channel.is_empty()).then(|| Request::Unsubscribe { channel, generation: self.generation })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // If the queue is full, the connection finds the stream gone at its next look.
        if let Some(request) = self.unsubscribe_request() {
            let _ = self.client.requests.try_send(request);
        }
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(context)
    }
}

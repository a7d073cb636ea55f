//! The client's one task: it makes the connection (again after each loss, with backoff),
//! resubscribes every subscription from the position it reached, sends commands and routes
//! their replies, and passes each subscription its channel's publications once and in order.
//!
//! Frames are read with their `data` kept as the server sent it (raw JSON), so what an app gets
//! is byte for byte what was published. A subscription whose app does not keep up is not waited
//! for: it stops taking publications, and once it has room again it is subscribed anew from its
//! position, so the server fills the gap from history and the other subscriptions never stall.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_wire::presence::PresenceEntry;
use herald_wire::publication::Publication;
use herald_wire::reply::Subscribed;
use herald_wire::{ErrorBody, Position};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep, Timeout};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::token::{self, TokenFuture, TokenSource};
use crate::{ClientError, Event, Options, State};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How often subscriptions that fell behind are looked at.
const LAG_CHECK: Duration = Duration::from_millis(100);

/// The shortest pause between two renewals of the token on one connection.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// What the API asks of the connection.
pub(crate) enum Request {
    Subscribe {
        channel: String,
        since: Option<Position>,
        events: mpsc::Sender<Event>,
        /// Answered when the server has answered the first subscribe.
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
    /// The subscription of this generation ends (a newer one of the same channel stays).
    Unsubscribe {
        channel: String,
        generation: u64,
    },
    /// A command (its `id` is set here) and where its result goes.
    Command {
        command: serde_json::Value,
        reply: oneshot::Sender<Result<Box<RawValue>, ClientError>>,
    },
    Close,
}

/// The WebSocket URL for a Herald URL: `http://host[:port][/prefix]` → `ws://host[:port][/prefix]/ws`,
/// `https://…` → `wss://…` (a `ws://` or `wss://` URL is taken as it is).
pub(crate) fn websocket_url(url: &str) -> Result<String, ClientError> {
    let invalid = || ClientError::InvalidUrl(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(host, path)| (host, path));
    if host.is_empty() || host.contains(['?', '#', ' ']) {
        return Err(invalid());
    }
    let path = path.trim_end_matches('/');
    let ws = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(invalid()),
    };
    Ok(match scheme {
        _ if path.is_empty() => format!("{ws}://{host}/ws"),
        "http" | "https" => format!("{ws}://{host}/{path}/ws"),
        _ => format!("{ws}://{host}/{path}"),
    })
}

/// `url` with the token as `?token=` (what the upgrade sends).
fn with_token(url: &str, token: Option<&str>) -> String {
    let mut url = url.to_string();
    if let Some(token) = token {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("token=");
        // A JWT is URL-safe base64 and dots; anything else is escaped.
        for byte in token.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                url.push(byte as char);
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    url
}

/// One subscription as the connection keeps it.
struct Subscription {
    generation: u64,
    events: mpsc::Sender<Event>,
    /// The last publication passed on; `None` until the first subscribe's reply.
    position: Option<Position>,
    /// Where the app asked to start, until the first reply.
    since: Option<Position>,
    /// The app's `subscribe`, answered with the first reply.
    reply: Option<oneshot::Sender<Result<u64, ClientError>>>,
    /// The app did not keep up: publications are not taken until it has room again.
    lagging: bool,
    /// A `Subscribed` the app had no room for, given to it before anything else once it has.
    notice: Option<Event>,
}

/// A command sent and waiting for its reply.
enum Pending {
    Subscribe {
        channel: String,
        generation: u64,
        since: Option<Position>,
    },
    Command(oneshot::Sender<Result<Box<RawValue>, ClientError>>),
    /// A `refresh` with a renewed token.
    Refresh,
    /// An unsubscribe: nobody waits for it.
    Ignored,
}

/// Why a connection ended.
enum Ending {
    /// Lost: make it again.
    Lost,
    /// The server closed it at the token's expiry (4003): make it again with a new token.
    TokenExpired,
    /// The client was closed, or the server said not to reconnect.
    Final,
}

/// How a connection attempt went.
enum Attempt {
    Open(Box<Socket>),
    /// Herald answered the upgrade with an error (a 4xx).
    Refused(ErrorBody),
    /// No connection (refused, unreachable, TLS, timed out), in words.
    Failed(String),
}

/// What follows an attempt that failed or a connection that ended.
enum Next {
    /// Try again after `delay`. While `connect` still waits for the first connection, only
    /// trouble getting a token is tried again (`first_may_retry`), within `request_timeout`;
    /// anything else fails `connect` with `error`.
    Retry { delay: Duration, error: ClientError, first_may_retry: bool },
    /// The end for good, with the reason the subscriptions are told.
    End(Option<ErrorBody>),
}

/// Renewing the token on a live connection: when the next renewal is due, the token source's
/// call under way, and the pause after failed ones.
struct Renewal {
    source: Option<TokenSource>,
    due: Option<Pin<Box<Sleep>>>,
    fetching: Option<Pin<Box<Timeout<TokenFuture>>>>,
    failures: Backoff,
    timeout: Duration,
}

impl Renewal {
    fn new(options: &Options) -> Self {
        Self {
            source: options.get_token.clone(),
            due: None,
            fetching: None,
            failures: Backoff::new(options.min_reconnect_delay, options.max_reconnect_delay),
            timeout: options.request_timeout,
        }
    }

    /// Due ahead of `token`'s expiry; never for a fixed token, or one without `exp`. After a
    /// renewal, not sooner than a second later: a source whose tokens hold for 3 s or less
    /// would otherwise be asked again and again without pause.
    fn schedule(&mut self, token: Option<&str>, renewed: bool) {
        self.failures.reset();
        let floor = if renewed { MIN_RENEWAL_INTERVAL } else { Duration::ZERO };
        let delay = self.source.as_ref().and(token).and_then(token::renewal_delay).map(|delay| delay.max(floor));
        self.due = delay.map(|delay| Box::pin(tokio::time::sleep(delay)));
    }

    /// After a failure: again after a backoff pause (the server closes the connection at
    /// expiry if none succeeds by then, and the reconnect gets a new token).
    fn retry_later(&mut self) {
        self.due = Some(Box::pin(tokio::time::sleep(self.failures.next_delay())));
    }

    fn start(&mut self) {
        self.due = None;
        if let Some(source) = &self.source {
            self.fetching = Some(Box::pin(tokio::time::timeout(self.timeout, source.get())));
        }
    }
}

/// The output of the future in `slot`, or never if there is none (a `select!` branch that is
/// there only sometimes).
async fn next_of<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Error codes of a refusal that a new token may cure.
fn is_token_trouble(error: &ErrorBody) -> bool {
    matches!(error.code.as_ref(), "token_expired" | "invalid_token" | "unauthorized")
}

/// Any frame from the server, with what tells its kind; its data stays raw.
#[derive(Deserialize)]
struct Frame<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<ErrorBody>,
    disconnect: Option<herald_wire::push::Disconnect>,
    unsubscribed: Option<herald_wire::push::Unsubscribed>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    offset: Option<u64>,
    join: Option<PresenceEntry>,
    leave: Option<PresenceEntry>,
}

pub(crate) struct Connection {
    /// The WebSocket URL, without the token.
    url: String,
    connector: Connector,
    options: Options,
    /// The token the next attempt sends: the fixed one, or the token source's latest.
    token: Option<String>,
    requests: mpsc::Receiver<Request>,
    state: watch::Sender<State>,
    subscriptions: BTreeMap<String, Subscription>,
    next_id: u64,
    next_generation: u64,
}

impl Connection {
    pub(crate) fn new(
        url: String,
        connector: Connector,
        options: Options,
        requests: mpsc::Receiver<Request>,
        state: watch::Sender<State>,
    ) -> Self {
        let token = options.token.clone();
        Self {
            url,
            connector,
            options,
            token,
            requests,
            state,
            subscriptions: BTreeMap::new(),
            next_id: 1,
            next_generation: 1,
        }
    }

    /// Connects, serves, and reconnects until the client is closed; `first` learns how the first
    /// connection went (the client's `connect` waits for it, and fails with it).
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let started = Instant::now();
        let mut backoff = Backoff::new(self.options.min_reconnect_delay, self.options.max_reconnect_delay);
        loop {
            self.state.send_replace(State::Connecting);
            let next = match self.prepare_token().await {
                None => return self.end(None),
                Some(Err(reason)) => {
                    tracing::warn!(%reason, "the token source failed; trying again");
                    Next::Retry {
                        delay: backoff.next_delay(),
                        error: ClientError::Token(reason),
                        first_may_retry: true,
                    }
                }
                Some(Ok(fetched)) => match self.attempt().await {
                    Attempt::Open(socket) => {
                        backoff.reset();
                        self.state.send_replace(State::Connected);
                        if let Some(first) = first.take() {
                            let _ = first.send(Ok(()));
                        }
                        let ending = self.serve(*socket).await;
                        self.state.send_replace(State::Disconnected);
                        match ending {
                            Ending::Final => return self.end(None),
                            // At once, with a new token (a fixed token is refused on the
                            // reconnect, which ends the subscriptions saying so).
                            Ending::TokenExpired if self.options.get_token.is_some() => {
                                self.token = None;
                                Next::Retry {
                                    delay: Duration::ZERO,
                                    error: ClientError::Disconnected,
                                    first_may_retry: false,
                                }
                            }
                            Ending::Lost | Ending::TokenExpired => {
                                let delay = backoff.next_delay();
                                Next::Retry { delay, error: ClientError::Disconnected, first_may_retry: false }
                            }
                        }
                    }
                    Attempt::Refused(error) => {
                        self.state.send_replace(State::Disconnected);
                        if self.options.get_token.is_some() && is_token_trouble(&error) {
                            tracing::debug!(code = %error.code, "Herald refused the token; getting a new one");
                            self.token = None;
                            // A held token that expired after all (clocks differ): a new one at
                            // once. One just given and refused: after a pause, so that a token
                            // source handing out bad tokens is not called in a tight loop.
                            let at_once = error.code == "token_expired" && !fetched;
                            let delay = if at_once { Duration::ZERO } else { backoff.next_delay() };
                            Next::Retry { delay, error: ClientError::Server(error), first_may_retry: at_once }
                        } else {
                            // Refused (an expired or invalid fixed token, a foreign origin):
                            // trying again would be refused again.
                            Next::End(Some(error))
                        }
                    }
                    Attempt::Failed(reason) => {
                        self.state.send_replace(State::Disconnected);
                        if first.is_none() {
                            tracing::debug!(url = %self.url, %reason, "cannot reconnect to Herald; retrying");
                        }
                        let error = ClientError::Connect { url: self.url.clone(), reason };
                        Next::Retry { delay: backoff.next_delay(), error, first_may_retry: false }
                    }
                },
            };
            let delay = match next {
                Next::End(error) => match first.take() {
                    Some(first) => {
                        let _ = first.send(Err(error.map_or(ClientError::Closed, ClientError::Server)));
                        return;
                    }
                    None => return self.end(error),
                },
                Next::Retry { delay, error, first_may_retry } => {
                    if let Some(waiting) = first.take() {
                        if !first_may_retry || started.elapsed() + delay >= self.options.request_timeout {
                            let _ = waiting.send(Err(error));
                            return; // the first connection failed: `connect` has its error
                        }
                        first = Some(waiting);
                    }
                    delay
                }
            };
            if !self.wait(delay).await {
                return self.end(None);
            }
        }
    }

    /// Makes sure the next attempt has the token it needs: the one held while it is fresh, else
    /// the token source's next. `Ok(true)` when the token was just fetched; `None` once closed.
    async fn prepare_token(&mut self) -> Option<Result<bool, String>> {
        let Some(source) = self.options.get_token.clone() else { return Some(Ok(false)) };
        if self.token.as_deref().is_some_and(token::is_fresh) {
            return Some(Ok(false));
        }
        let timeout = self.options.request_timeout;
        Some(match self.wait_for(tokio::time::timeout(timeout, source.get())).await? {
            Ok(Ok(token)) => {
                self.token = Some(token);
                Ok(true)
            }
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!("no token within {timeout:?}")),
        })
    }

    /// One connection attempt, with the token held.
    async fn attempt(&self) -> Attempt {
        let url = with_token(&self.url, self.token.as_deref());
        let connect = tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(self.connector.clone()));
        match tokio::time::timeout(self.options.request_timeout, connect).await {
            Ok(Ok((socket, _))) => Attempt::Open(Box::new(socket)),
            Ok(Err(tungstenite::Error::Http(response))) if response.status().is_client_error() => {
                let body = response.body().as_deref().unwrap_or_default();
                Attempt::Refused(serde_json::from_slice::<herald_wire::error::ErrorResponse>(body).map_or_else(
                    |_| ErrorBody::new("refused", format!("Herald answered {}", response.status())),
                    |response| response.error,
                ))
            }
            Ok(Err(error)) => Attempt::Failed(crate::tls::describe(&error)),
            Err(_) => Attempt::Failed(format!("no answer within {:?}", self.options.request_timeout)),
        }
    }

    /// The end for good: every subscription is told why (if there is a reason) and ends.
    fn end(&mut self, error: Option<ErrorBody>) {
        for (_, subscription) in std::mem::take(&mut self.subscriptions) {
            let error = error.clone().map(ClientError::Server).unwrap_or(ClientError::Closed);
            if let Some(reply) = subscription.reply {
                let _ = reply.send(Err(error));
            } else if let ClientError::Server(error) = error {
                let _ = subscription.events.try_send(Event::Error(error));
            }
        }
        self.requests.close();
    }

    /// Waits before the next attempt, taking requests meanwhile; `false` once closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        self.wait_for(tokio::time::sleep(delay)).await.is_some()
    }

    /// Waits for `future` while not connected, taking requests meanwhile; `None` once closed.
    async fn wait_for<F: Future>(&mut self, future: F) -> Option<F::Output> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Some(output),
                request = self.requests.recv() => match request {
                    None | Some(Request::Close) => return None,
                    // Sent once connected, and answered then.
                    Some(Request::Subscribe { channel, since, events, reply }) => {
                        self.add_subscription(channel, since, events, reply);
                    }
                    Some(Request::Unsubscribe { channel, generation }) => {
                        self.remove(&channel, generation);
                    }
                    Some(Request::Command { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::Disconnected));
                    }
                },
            }
        }
    }

    /// Registers a subscription; its generation and whether it replaced one the server may
    /// still hold, or `None` (the app told why) when the channel already has a live one.
    fn add_subscription(
        &mut self,
        channel: String,
        since: Option<Position>,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    ) -> Option<(u64, bool)> {
        // One whose app has gone (a dropped stream, a `subscribe` that timed out) makes room.
        let replaced = match self.subscriptions.get(&channel) {
            Some(existing) if !existing.events.is_closed() => {
                let error = ErrorBody::new("already_subscribed", format!("already subscribed to {channel}"));
                let _ = reply.send(Err(ClientError::Server(error)));
                return None;
            }
            Some(_) => true,
            None => false,
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let subscription = Subscription {
            generation,
            events,
            position: None,
            since,
            reply: Some(reply),
            lagging: false,
            notice: None,
        };
        self.subscriptions.insert(channel, subscription);
        Some((generation, replaced))
    }

    /// Forgets the subscription of `channel` if it is of `generation`; whether it was.
    fn remove(&mut self, channel: &str, generation: u64) -> bool {
        if self.subscriptions.get(channel).is_some_and(|subscription| subscription.generation == generation) {
            self.subscriptions.remove(channel);
            return true;
        }
        false
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn command(&mut self, op: herald_wire::Op, channel: &str, since: Option<Position>) -> (u64, String) {
        let id = self.id();
        let mut command = herald_wire::Command::new(id, op);
        command.channel = Some(channel.into());
        command.since = since;
        (id, serde_json::to_string(&command).unwrap_or_default())
    }

    async fn serve(&mut self, socket: Socket) -> Ending {
        let (mut sink, mut stream) = socket.split();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut outgoing: Vec<String> = Vec::new();
        // Every subscription again, from where it is; those whose app has gone are dropped.
        self.subscriptions.retain(|_, subscription| !subscription.events.is_closed());
        let again: Vec<(String, u64, Option<Position>)> = self
            .subscriptions
            .iter_mut()
            .map(|(channel, subscription)| {
                subscription.lagging = false;
                let since = subscription.position.clone().or(subscription.since.clone());
                (channel.clone(), subscription.generation, since)
            })
            .collect();
        for (channel, generation, since) in again {
            let (id, text) = self.command(herald_wire::Op::Subscribe, &channel, since.clone());
            pending.insert(id, Pending::Subscribe { channel, generation, since });
            outgoing.push(text);
        }
        let mut renewal = Renewal::new(&self.options);
        renewal.schedule(self.token.as_deref(), false);
        // Nothing heard for this long (the server pings every 25 s): the connection is gone.
        let idle = tokio::time::sleep(self.options.idle_timeout);
        tokio::pin!(idle);
        let mut lag_check = tokio::time::interval(LAG_CHECK);
        let ending = 'serve: loop {
            for text in outgoing.drain(..) {
                if sink.send(Message::text(text)).await.is_err() {
                    break 'serve Ending::Lost;
                }
            }
            tokio::select! {
                request = self.requests.recv() => match request {
                    None | Some(Request::Close) => {
                        let _ = sink.send(Message::Close(None)).await;
                        break Ending::Final;
                    }
                    Some(Request::Subscribe { channel, since, events, reply }) => {
                        if let Some((generation, replaced)) =
                            self.add_subscription(channel.clone(), since.clone(), events, reply)
                        {
                            if replaced {
                                let (id, text) = self.command(herald_wire::Op::Unsubscribe, &channel, None);
                                pending.insert(id, Pending::Ignored);
                                outgoing.push(text);
                            }
                            let (id, text) = self.command(herald_wire::Op::Subscribe, &channel, since.clone());
                            pending.insert(id, Pending::Subscribe { channel, generation, since });
                            outgoing.push(text);
                        }
                    }
                    Some(Request::Unsubscribe { channel, generation }) => {
                        if self.remove(&channel, generation) {
                            let (id, text) = self.command(herald_wire::Op::Unsubscribe, &channel, None);
                            pending.insert(id, Pending::Ignored);
                            outgoing.push(text);
                        }
                    }
                    Some(Request::Command { mut command, reply }) => {
                        let id = self.id();
                        command["id"] = id.into();
                        pending.insert(id, Pending::Command(reply));
                        outgoing.push(command.to_string());
                    }
                },
                message = stream.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + self.options.idle_timeout);
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(ending) = self.receive(&text, &mut pending, &mut renewal) {
                                break ending;
                            }
                        }
                        // A close at expiry without the disconnect push before it.
                        Some(Ok(Message::Close(Some(frame))))
                            if u16::from(frame.code) == herald_wire::close_code::TOKEN_EXPIRED =>
                        {
                            break Ending::TokenExpired;
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ending::Lost,
                        // Pings are answered by the library as it reads.
                        Some(Ok(_)) => {}
                    }
                }
                _ = lag_check.tick() => self.catch_up(&mut pending, &mut outgoing),
                () = &mut idle => break Ending::Lost,
                () = next_of(&mut renewal.due) => renewal.start(),
                fetched = next_of(&mut renewal.fetching) => {
                    renewal.fetching = None;
                    match fetched {
                        Ok(Ok(token)) => {
                            // Held at once: a reconnect before the reply uses it too.
                            self.token = Some(token.clone());
                            let id = self.id();
                            let mut command = herald_wire::Command::new(id, herald_wire::Op::Refresh);
                            command.token = Some(token);
                            pending.insert(id, Pending::Refresh);
                            outgoing.push(serde_json::to_string(&command).unwrap_or_default());
                        }
                        failed => {
                            let reason = match failed {
                                Ok(Err(reason)) => reason,
                                _ => format!("no token within {:?}", renewal.timeout),
                            };
                            tracing::warn!(%reason, "the token source failed; trying again");
                            renewal.retry_later();
                        }
                    }
                }
            }
        };
        for (_, waiting) in pending {
            if let Pending::Command(reply) = waiting {
                let _ = reply.send(Err(ClientError::Disconnected));
            }
        }
        ending
    }

    /// Subscriptions that fell behind and have room again are subscribed anew from their
    /// position (the server sends what they missed from history); those whose app has gone end.
    fn catch_up(&mut self, pending: &mut HashMap<u64, Pending>, outgoing: &mut Vec<String>) {
        let mut again = Vec::new();
        let mut gone = Vec::new();
        for (channel, subscription) in &mut self.subscriptions {
            if subscription.events.is_closed() {
                gone.push(channel.clone());
            } else if subscription.lagging && subscription.events.capacity() * 2 >= subscription.events.max_capacity() {
                subscription.lagging = false;
                if let Some(notice) = subscription.notice.take() {
                    let _ = subscription.events.try_send(notice);
                }
                subscription.generation = self.next_generation;
                self.next_generation += 1;
                again.push((channel.clone(), subscription.generation, subscription.position.clone()));
            }
        }
        for channel in gone {
            self.subscriptions.remove(&channel);
            let (id, text) = self.command(herald_wire::Op::Unsubscribe, &channel, None);
            pending.insert(id, Pending::Ignored);
            outgoing.push(text);
        }
        for (channel, generation, since) in again {
            let (id, unsubscribe) = self.command(herald_wire::Op::Unsubscribe, &channel, None);
            pending.insert(id, Pending::Ignored);
            outgoing.push(unsubscribe);
            let (id, subscribe) = self.command(herald_wire::Op::Subscribe, &channel, since.clone());
            pending.insert(id, Pending::Subscribe { channel, generation, since });
            outgoing.push(subscribe);
        }
    }

    /// Handles one text frame; `Some` when the connection ends because of it.
    fn receive(&mut self, text: &str, pending: &mut HashMap<u64, Pending>, renewal: &mut Renewal) -> Option<Ending> {
        let frame = match serde_json::from_str::<Frame<'_>>(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, frame = text, "Herald sent a frame this client cannot read");
                return None;
            }
        };
        if let Some(id) = frame.id {
            let outcome = match (frame.result, frame.error) {
                (Some(result), _) => Ok(result.to_owned()),
                (None, Some(error)) => Err(ClientError::Server(error)),
                (None, None) => Err(ClientError::Protocol(text.to_string())),
            };
            return match pending.remove(&id) {
                Some(Pending::Command(reply)) => {
                    let _ = reply.send(outcome);
                    None
                }
                Some(Pending::Subscribe { channel, generation, since }) => {
                    self.subscribed(&channel, generation, since, outcome)
                }
                Some(Pending::Refresh) => {
                    self.refreshed(outcome, renewal);
                    None
                }
                Some(Pending::Ignored) | None => None,
            };
        }
        if let Some(disconnect) = frame.disconnect {
            return Some(match disconnect {
                _ if disconnect.code == herald_wire::close_code::TOKEN_EXPIRED => Ending::TokenExpired,
                _ if disconnect.reconnect => Ending::Lost,
                _ => Ending::Final,
            });
        }
        if let Some(unsubscribed) = frame.unsubscribed {
            // The server ended it: not subscribed again on a reconnect.
            if let Some(subscription) = self.subscriptions.remove(unsubscribed.channel.as_str()) {
                let _ = subscription.events.try_send(Event::Unsubscribed { reason: unsubscribed.reason });
            }
            return None;
        }
        let channel = frame.channel.unwrap_or_default();
        let event = match (frame.join, frame.leave, frame.offset) {
            (Some(entry), _, _) => Event::Join(entry),
            (_, Some(entry), _) => Event::Leave(entry),
            (_, _, Some(_)) => match serde_json::from_str::<Publication>(text) {
                Ok(publication) => return self.deliver(publication),
                Err(error) => {
                    tracing::warn!(%error, frame = text, "Herald sent a publication this client cannot read");
                    return None;
                }
            },
            _ => {
                tracing::debug!(frame = text, "a push this client does not know");
                return None;
            }
        };
        if let Some(subscription) = self.subscriptions.get(channel.as_ref()) {
            // Presence is a courtesy: a subscription without room misses it (it reads
            // `presence` again if it cares).
            let _ = subscription.events.try_send(event);
        }
        None
    }

    /// A `refresh` reply: the renewed token holds, and the next renewal is due before it expires.
    fn refreshed(&mut self, outcome: Result<Box<RawValue>, ClientError>, renewal: &mut Renewal) {
        match outcome {
            Ok(_) => renewal.schedule(self.token.as_deref(), true),
            // The server checks no tokens: nothing to renew.
            Err(ClientError::Server(error)) if error.code == "auth_not_configured" => renewal.due = None,
            Err(error) => {
                // The current token holds until it expires; a new one is tried meanwhile, and
                // the refused one is not used to reconnect.
                tracing::warn!(%error, "Herald refused the renewed token; trying another");
                self.token = None;
                renewal.retry_later();
            }
        }
    }

    /// A subscribe's reply: where the subscription now starts from.
    fn subscribed(
        &mut self,
        channel: &str,
        generation: u64,
        since: Option<Position>,
        outcome: Result<Box<RawValue>, ClientError>,
    ) -> Option<Ending> {
        let Some(subscription) = self.subscriptions.get_mut(channel).filter(|s| s.generation == generation) else {
            return None; // a reply to a subscription since unsubscribed or made anew
        };
        let result = outcome.and_then(|result| {
            serde_json::from_str::<Subscribed>(result.get()).map_err(|error| ClientError::Protocol(error.to_string()))
        });
        match result {
            Ok(subscribed) => {
                // Recovered: what was missed follows, after `since`. Otherwise from now on.
                subscription.position = match (since, subscribed.recovered) {
                    (Some(since), Some(true)) => Some(since),
                    _ => Some(subscribed.position.clone()),
                };
                subscription.since = None;
                if let Some(reply) = subscription.reply.take() {
                    let _ = reply.send(Ok(generation));
                }
                let event = Event::Subscribed { position: subscribed.position, recovered: subscribed.recovered };
                if let Err(TrySendError::Full(event)) = subscription.events.try_send(event) {
                    subscription.lagging = true;
                    subscription.notice = Some(event);
                }
                None
            }
            // The engine is away: reconnect later, and subscribe again then.
            Err(ClientError::Server(error)) if error.code == "engine_unavailable" => Some(Ending::Lost),
            Err(error) => {
                // Refused (a token that no longer grants it, say): the subscription ends, saying why.
                tracing::warn!(%channel, %error, "Herald refused a subscribe");
                let subscription = self.subscriptions.remove(channel)?;
                match subscription.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(error));
                    }
                    None => {
                        if let ClientError::Server(body) = error {
                            let _ = subscription.events.try_send(Event::Error(body));
                        }
                    }
                }
                None
            }
        }
    }

    /// Passes a publication on if it is the next one of its subscription; one without room
    /// falls behind (see [`Connection::catch_up`]).
    fn deliver(&mut self, publication: Publication) -> Option<Ending> {
        let subscription = self.subscriptions.get_mut(&publication.channel)?;
        let position = subscription.position.as_mut()?;
        if subscription.lagging || position.epoch != publication.epoch || publication.offset <= position.offset {
            return None;
        }
        let offset = publication.offset;
        match subscription.events.try_send(Event::Publication(publication)) {
            Ok(()) => position.offset = offset,
            Err(TrySendError::Full(_)) => subscription.lagging = true,
            Err(TrySendError::Closed(_)) => {} // the app has gone: ended at the next check
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_urls_become_websocket_urls() {
        let ws = |url: &str, token: Option<&str>| {
            websocket_url(url).map(|url| with_token(&url, token)).map_err(|error| error.to_string())
        };
        assert_eq!(ws("http://127.0.0.1:8750", None).unwrap(), "ws://127.0.0.1:8750/ws");
        assert_eq!(ws("http://h.example/herald/", None).unwrap(), "ws://h.example/herald/ws");
        assert_eq!(ws("https://h.example", None).unwrap(), "wss://h.example/ws");
        assert_eq!(ws("https://h.example/herald", None).unwrap(), "wss://h.example/herald/ws");
        assert_eq!(ws("wss://h.example:8443/ws", None).unwrap(), "wss://h.example:8443/ws");
        assert_eq!(ws("ws://h:1/ws", Some("a.b-c_d")).unwrap(), "ws://h:1/ws?token=a.b-c_d");
        assert_eq!(ws("ws://h:1", Some("a+b")).unwrap(), "ws://h:1/ws?token=a%2Bb");
        assert_eq!(ws("ws://h:1/ws?x=1", Some("t")).unwrap(), "ws://h:1/ws?x=1&token=t");
        for bad in ["127.0.0.1:8750", "ftp://h", "http://", "http:// h", "https://", "wss://h?x"] {
            assert!(ws(bad, None).is_err(), "{bad}");
        }
    }
}

//! The client's one task: it makes the connection (again after each loss, with backoff),
//! resubscribes every subscription from the position it reached, sends commands and routes
//! their replies, and passes each subscription its channel's publications once and in order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_wire::publication::Publication;
use herald_wire::reply::Subscribed;
use herald_wire::{ErrorBody, Position};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::{ClientError, Event, Options, State};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the API asks of the connection.
pub(crate) enum Request {
    Subscribe {
        channel: String,
        since: Option<Position>,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Unsubscribe {
        channel: String,
    },
    /// A command (its `id` is set here) and where its result goes.
    Command {
        command: Value,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    Close,
}

/// The WebSocket URL for a Herald URL: `http(s)://host[:port][/…]` → `ws(s)://host[:port]/ws`
/// (a `ws(s)://` URL is taken as it is), with the token as `?token=`.
pub(crate) fn websocket_url(url: &str, token: Option<&str>) -> Result<String, ClientError> {
    let invalid = || ClientError::InvalidUrl(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(host, path)| (host, path));
    if host.is_empty() || host.contains(['?', '#', ' ']) {
        return Err(invalid());
    }
    let mut ws = match scheme {
        "http" | "https" => {
            let scheme = if scheme == "https" { "wss" } else { "ws" };
            format!("{scheme}://{host}/ws")
        }
        "ws" | "wss" if path.is_empty() => format!("{scheme}://{host}/ws"),
        "ws" | "wss" => format!("{scheme}://{host}/{path}"),
        _ => return Err(invalid()),
    };
    if let Some(token) = token {
        ws.push(if ws.contains('?') { '&' } else { '?' });
        ws.push_str("token=");
        // A JWT is URL-safe base64 and dots; anything else is escaped.
        for byte in token.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                ws.push(byte as char);
            } else {
                ws.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    Ok(ws)
}

/// One subscription as the connection keeps it.
struct Subscription {
    events: mpsc::Sender<Event>,
    /// The last publication passed on; `None` until the first subscribe's reply.
    position: Option<Position>,
    /// Where the app asked to start, until the first reply.
    since: Option<Position>,
}

/// A command sent and waiting for its reply.
enum Pending {
    /// A subscribe; `reply` is the app's, on the first subscribe only (not on resubscribes).
    Subscribe {
        channel: String,
        since: Option<Position>,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    },
    Command(oneshot::Sender<Result<Value, ClientError>>),
    /// An unsubscribe: nobody waits for it.
    Ignored,
}

/// Why a connection ended.
enum Ending {
    /// Lost: make it again.
    Lost,
    /// The client was closed, or the server said not to reconnect.
    Final,
}

pub(crate) struct Connection {
    url: String,
    options: Options,
    requests: mpsc::Receiver<Request>,
    state: watch::Sender<State>,
    subscriptions: BTreeMap<String, Subscription>,
    next_id: u64,
}

impl Connection {
    pub(crate) fn new(
        url: String,
        options: Options,
        requests: mpsc::Receiver<Request>,
        state: watch::Sender<State>,
    ) -> Self {
        Self { url, options, requests, state, subscriptions: BTreeMap::new(), next_id: 1 }
    }

    /// Connects, serves, and reconnects until the client is closed; `first` learns how the first
    /// connection went (the client's `connect` waits for it, and fails with it).
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let mut backoff = Backoff::new(self.options.min_reconnect_delay, self.options.max_reconnect_delay);
        loop {
            self.state.send_replace(State::Connecting);
            match tokio_tungstenite::connect_async(self.url.as_str()).await {
                Ok((socket, _)) => {
                    backoff.reset();
                    self.state.send_replace(State::Connected);
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    let ending = self.serve(socket).await;
                    self.state.send_replace(State::Disconnected);
                    if matches!(ending, Ending::Final) {
                        return;
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    if let Some(first) = first.take() {
                        self.state.send_replace(State::Disconnected);
                        let _ = first.send(Err(ClientError::Connect { url: self.url.clone(), reason }));
                        return;
                    }
                    tracing::debug!(url = %self.url, %reason, "cannot reconnect to Herald; retrying");
                    self.state.send_replace(State::Disconnected);
                }
            }
            if !self.wait(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Waits before the next attempt, taking requests meanwhile; `false` once closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                request = self.requests.recv() => match request {
                    None | Some(Request::Close) => return false,
                    Some(Request::Subscribe { channel, since, events, reply }) => {
                        // Sent once connected; the app hears of it then (`Event::Subscribed`).
                        let taken = self.add_subscription(channel, since, events);
                        let _ = reply.send(taken);
                    }
                    Some(Request::Unsubscribe { channel }) => {
                        self.subscriptions.remove(&channel);
                    }
                    Some(Request::Command { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::Disconnected));
                    }
                },
            }
        }
    }

    fn add_subscription(
        &mut self,
        channel: String,
        since: Option<Position>,
        events: mpsc::Sender<Event>,
    ) -> Result<(), ClientError> {
        if self.subscriptions.contains_key(&channel) {
            return Err(ClientError::Server(ErrorBody::new(
                "already_subscribed",
                format!("already subscribed to {channel}"),
            )));
        }
        self.subscriptions.insert(channel, Subscription { events, position: None, since });
        Ok(())
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn subscribe_command(&mut self, channel: &str, since: Option<Position>) -> (u64, String) {
        let id = self.id();
        let mut command = herald_wire::Command::new(id, herald_wire::Op::Subscribe);
        command.channel = Some(channel.into());
        command.since = since;
        (id, serde_json::to_string(&command).unwrap_or_default())
    }

    async fn serve(&mut self, socket: Socket) -> Ending {
        let (mut sink, mut stream) = socket.split();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        // Every subscription again, from where it is.
        let channels: Vec<(String, Option<Position>)> = self
            .subscriptions
            .iter()
            .map(|(channel, subscription)| {
                (channel.clone(), subscription.position.clone().or(subscription.since.clone()))
            })
            .collect();
        for (channel, since) in channels {
            let (id, text) = self.subscribe_command(&channel, since.clone());
            pending.insert(id, Pending::Subscribe { channel, since, reply: None });
            if sink.send(Message::text(text)).await.is_err() {
                return Ending::Lost;
            }
        }
        let ending = loop {
            tokio::select! {
                request = self.requests.recv() => {
                    let text = match request {
                        None | Some(Request::Close) => {
                            let _ = sink.send(Message::Close(None)).await;
                            break Ending::Final;
                        }
                        Some(Request::Subscribe { channel, since, events, reply }) => {
                            if let Err(error) = self.add_subscription(channel.clone(), since.clone(), events) {
                                let _ = reply.send(Err(error));
                                continue;
                            }
                            let (id, text) = self.subscribe_command(&channel, since.clone());
                            pending.insert(id, Pending::Subscribe { channel, since, reply: Some(reply) });
                            text
                        }
                        Some(Request::Unsubscribe { channel }) => {
                            if self.subscriptions.remove(&channel).is_none() {
                                continue;
                            }
                            let id = self.id();
                            pending.insert(id, Pending::Ignored);
                            let mut command = herald_wire::Command::new(id, herald_wire::Op::Unsubscribe);
                            command.channel = Some(channel.as_str().into());
                            serde_json::to_string(&command).unwrap_or_default()
                        }
                        Some(Request::Command { mut command, reply }) => {
                            let id = self.id();
                            command["id"] = id.into();
                            pending.insert(id, Pending::Command(reply));
                            command.to_string()
                        }
                    };
                    if sink.send(Message::text(text)).await.is_err() {
                        break Ending::Lost;
                    }
                }
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(ending) = self.receive(&text, &mut pending).await {
                            break ending;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ending::Lost,
                    // Pings are answered by the library; nothing else is sent.
                    Some(Ok(_)) => {}
                },
            }
        };
        for (_, waiting) in pending {
            match waiting {
                Pending::Command(reply) => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                // Registered already: it is sent again on the next connection.
                Pending::Subscribe { reply: Some(reply), .. } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
        if matches!(ending, Ending::Final) {
            self.subscriptions.clear();
        }
        ending
    }

    /// Handles one text frame; `Some` when the connection ends because of it.
    async fn receive(&mut self, text: &str, pending: &mut HashMap<u64, Pending>) -> Option<Ending> {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            tracing::warn!(frame = text, "Herald sent a frame that is not JSON");
            return None;
        };
        if let Some(id) = value.get("id").and_then(Value::as_u64) {
            let outcome = match (value.get("result"), value.get("error")) {
                (Some(result), _) => Ok(result.clone()),
                (None, Some(error)) => Err(serde_json::from_value::<ErrorBody>(error.clone())
                    .map_or_else(|error| ClientError::Protocol(error.to_string()), ClientError::Server)),
                (None, None) => Err(ClientError::Protocol(text.to_string())),
            };
            match pending.remove(&id) {
                Some(Pending::Command(reply)) => {
                    let _ = reply.send(outcome);
                }
                Some(Pending::Subscribe { channel, since, reply }) => {
                    self.subscribed(channel, since, outcome, reply).await;
                }
                Some(Pending::Ignored) | None => {}
            }
            return None;
        }
        if let Some(disconnect) = value.get("disconnect") {
            let reconnect = disconnect.get("reconnect").and_then(Value::as_bool).unwrap_or(true);
            return Some(if reconnect { Ending::Lost } else { Ending::Final });
        }
        let channel = value.get("channel").and_then(Value::as_str).unwrap_or_default().to_string();
        for (kind, join) in [("join", true), ("leave", false)] {
            if let Some(entry) = value.get(kind) {
                if let (Some(subscription), Ok(entry)) =
                    (self.subscriptions.get(&channel), serde_json::from_value(entry.clone()))
                {
                    let event = if join { Event::Join(entry) } else { Event::Leave(entry) };
                    let _ = subscription.events.send(event).await;
                }
                return None;
            }
        }
        match serde_json::from_value::<Publication>(value) {
            Ok(publication) => self.deliver(publication).await,
            Err(error) => tracing::warn!(%error, frame = text, "Herald sent a push this client does not know"),
        }
        None
    }

    /// A subscribe's reply: where the subscription now starts from.
    async fn subscribed(
        &mut self,
        channel: String,
        since: Option<Position>,
        outcome: Result<Value, ClientError>,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) {
        let result = outcome.and_then(|result| {
            serde_json::from_value::<Subscribed>(result).map_err(|error| ClientError::Protocol(error.to_string()))
        });
        match result {
            Ok(subscribed) => {
                let Some(subscription) = self.subscriptions.get_mut(&channel) else { return };
                // Recovered: what was missed follows, after `since`. Otherwise from now on.
                subscription.position = match (since, subscribed.recovered) {
                    (Some(since), Some(true)) => Some(since),
                    _ => Some(subscribed.position.clone()),
                };
                subscription.since = None;
                let event = Event::Subscribed { position: subscribed.position, recovered: subscribed.recovered };
                let _ = subscription.events.send(event).await;
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) => {
                // Refused (a token that no longer grants it, say): the subscription ends.
                tracing::warn!(%channel, %error, "Herald refused a subscribe");
                self.subscriptions.remove(&channel);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    /// Passes a publication on if it is the next one of its subscription.
    async fn deliver(&mut self, publication: Publication) {
        let Some(subscription) = self.subscriptions.get_mut(&publication.channel) else { return };
        let Some(position) = &mut subscription.position else { return };
        if position.epoch != publication.epoch || publication.offset <= position.offset {
            return;
        }
        position.offset = publication.offset;
        let _ = subscription.events.send(Event::Publication(publication)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_urls_become_websocket_urls() {
        let ws = |url: &str, token: Option<&str>| websocket_url(url, token).map_err(|error| error.to_string());
        assert_eq!(ws("http://127.0.0.1:8750", None).unwrap(), "ws://127.0.0.1:8750/ws");
        assert_eq!(ws("https://h.example/", None).unwrap(), "wss://h.example/ws");
        assert_eq!(ws("ws://h:1/ws", Some("a.b-c_d")).unwrap(), "ws://h:1/ws?token=a.b-c_d");
        assert_eq!(ws("ws://h:1", Some("a+b")).unwrap(), "ws://h:1/ws?token=a%2Bb");
        for bad in ["127.0.0.1:8750", "ftp://h", "http://", "http:// h"] {
            assert!(ws(bad, None).is_err(), "{bad}");
        }
    }
}

//! `GET /app/{key}?protocol=7`: the Pusher protocol over WebSocket, on the same session loop,
//! admission, limits and heartbeat as Herald's own `/ws`.
//!
//! An unknown key or protocol version is answered the Pusher way: the upgrade succeeds, then a
//! `pusher:error` and a close code in the 4000-4099 range, which pusher-js does not retry
//! (a browser cannot read an HTTP refusal of a WebSocket).

use std::collections::VecDeque;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::Push;

use super::session::{Close, Outgoing, PusherSession};
use crate::metrics::Transport;
use crate::state::AppState;
use crate::transport::Expiry;
use crate::transport::ws::frames::text_frame;
use crate::transport::ws::{Ending, Goodbye, Protocol};
use herald_wire::pusher as events;

/// The protocol versions pusher-js has spoken (7 since 2015); others are refused with 4007.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(key): Path<String>,
    request: Request,
) -> Response {
    let refusal = refusal(&app, &key, request.uri().query());
    let pusher_app = app.settings.pusher.by_key(&key).cloned();
    let session_app = app.clone();
    // pusher-js negotiates no compression.
    crate::transport::ws::accept(
        app,
        peer,
        request,
        Transport::PusherWebSocket,
        false,
        move |socket, permit, _| async move {
            match (refusal, pusher_app) {
                (None, Some(pusher_app)) => {
                    let capacity = session_app.settings.websocket.outbox_capacity.get();
                    let (session, inbox) = PusherSession::new(session_app, pusher_app, capacity);
                    let greeting = vec![text_frame(session.greeting()).1];
                    let protocol = PusherSocket { session, expiry: None, terminated: None };
                    crate::transport::ws::run_protocol(protocol, inbox, socket, permit, greeting).await;
                }
                (refusal, _) => {
                    let Close { code, reason } = refusal.unwrap_or(Close { code: 4001, reason: "unknown app key" });
                    let frame = text_frame(events::error(Some(code), reason)).1;
                    let max_message = session_app.settings.limits.max_message_size.get();
                    crate::transport::ws::refuse(socket, frame, code, reason, max_message).await;
                    drop(permit);
                }
            }
        },
    )
    .unwrap_or_else(IntoResponse::into_response)
}

/// Why a connection is refused once open: an unknown key, or a protocol version not spoken.
pub(super) fn refusal(app: &AppState, key: &str, query: Option<&str>) -> Option<Close> {
    if app.settings.pusher.by_key(key).is_none() {
        return Some(Close { code: 4001, reason: "no app with this key on this server" });
    }
    let protocol = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "protocol")
        .map(|(_, value)| value.into_owned());
    match protocol.map(|text| text.parse::<u32>()) {
        None => Some(Close { code: 4008, reason: "no protocol version given: add ?protocol=7" }),
        Some(Ok(version)) if PROTOCOLS.contains(&version) => None,
        Some(Ok(_)) => Some(Close { code: 4007, reason: "unsupported protocol version: this server speaks 7" }),
        Some(Err(_)) => Some(Close { code: 4006, reason: "invalid version string format" }),
    }
}

/// The Pusher session on a WebSocket.
struct PusherSocket {
    session: PusherSession,
    /// Pusher connections have no token to run out; the session loop asks all protocols.
    expiry: Expiry,
    /// Why the app ended the connection, once it has.
    terminated: Option<Close>,
}

fn frame(outgoing: Outgoing) -> Bytes {
    match outgoing {
        Outgoing::Own(json) => text_frame(json).1,
        Outgoing::Shared(form) => form.ws_frame,
    }
}

impl Protocol for PusherSocket {
    const TRANSPORT: Transport = Transport::PusherWebSocket;

    fn app(&self) -> &AppState {
        self.session.app()
    }

    fn expiry(&mut self) -> &mut Expiry {
        &mut self.expiry
    }

    async fn on_text(&mut self, text: &str) -> Result<Vec<Bytes>, Ending> {
        match self.session.on_message(text).await {
            Ok(outgoing) => Ok(outgoing.into_iter().map(frame).collect()),
            Err(_) => Err(Ending::ProtocolError),
        }
    }

    fn on_binary(&mut self) -> Result<Vec<Bytes>, Ending> {
        Ok(vec![text_frame(events::error(None, "the Pusher protocol is JSON text frames")).1])
    }

    fn queue_push(&mut self, push: Push, pending: &mut VecDeque<Bytes>) -> Result<(), Ending> {
        match self.session.on_push(push) {
            Ok(outgoing) => {
                pending.extend(outgoing.map(frame));
                Ok(())
            }
            Err(close) => {
                self.terminated = Some(close);
                Err(Ending::Terminated)
            }
        }
    }

    /// The Pusher door's connections are not in the control registry: the app ends them with
    /// its own `terminate_connections`.
    async fn on_control(&mut self, _control: std::sync::Arc<herald_core::Control>) -> Result<Vec<Bytes>, Ending> {
        Ok(Vec::new())
    }

    async fn leave_all(&mut self) {
        self.session.leave_all().await;
    }

    /// Pusher's close codes where pusher-js acts on them: reconnect now on shutdown and after
    /// a missed pong, back off when too slow; the frame-level errors keep WebSocket's own.
    fn goodbye(&self, ending: Ending) -> Option<Goodbye> {
        let (code, reason) = match ending {
            Ending::Shutdown => (4200, "server shutting down: reconnect"),
            Ending::Lagged => (4100, "over capacity: too slow to take the channel's events"),
            Ending::NoPong => (4201, "pong reply not received"),
            Ending::Terminated => {
                let close = self.terminated.unwrap_or(Close { code: 4009, reason: "connection terminated by the app" });
                (close.code, close.reason)
            }
            other => {
                let (code, reason, _) = other.goodbye()?;
                (code, reason)
            }
        };
        Some(Goodbye { code, reason, last_frame: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, Settings};
    use crate::transport::ws::WatchedIo;
    use std::sync::Arc;

    /// Every open Pusher connection holds this future, as a Herald one holds its own (see the
    /// session's `an_idle_connection_s_task_state_stays_small`).
    #[tokio::test]
    async fn an_idle_pusher_connection_s_task_state_stays_small() {
        let data_dir = tempfile::tempdir().unwrap();
        let overrides = Overrides { data_dir: Some(data_dir.path().to_path_buf()), ..Default::default() };
        let toml = "[[pusher.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n";
        let settings = Arc::new(Settings::from_toml(toml, &overrides).unwrap());
        let (shutdown, tasks) = (tokio_util::sync::CancellationToken::new(), tokio_util::task::TaskTracker::new());
        let outbox = crate::wiring::outbox(&settings).await.unwrap();
        let webhooks =
            crate::webhooks::Webhooks::start(outbox, &settings, tasks.clone(), shutdown.clone()).await.unwrap();
        let hub = crate::wiring::hub(&settings, &tasks, &shutdown).await.unwrap();
        let app = AppState::new(hub, webhooks, settings.clone(), shutdown, tasks);
        let (io, _peer) = tokio::io::duplex(64);
        let permit = app.connections.admit([127, 0, 0, 1].into(), Transport::PusherWebSocket).unwrap();
        let pusher_app = settings.pusher.by_key("k").unwrap().clone();
        let (session, inbox) = PusherSession::new(app, pusher_app, 16);
        let protocol = PusherSocket { session, expiry: None, terminated: None };
        let task = crate::transport::ws::run_protocol(protocol, inbox, WatchedIo::new(io), permit, Vec::new());
        let size = std::mem::size_of_val(&task);
        eprintln!("Pusher session future: {size} bytes");
        assert!(size <= 700, "the per-connection future grew to {size} bytes");
    }
}

//! The server telling connections what to do, on every node: `POST /api/disconnect
//! {user|client}`, `POST /api/subscribe` and `POST /api/unsubscribe {user|client, channel}`
//! publish a control message
//! on the reserved channel `#herald:control`, which every node follows through the engine; each
//! node finds its matching connections in its [`Registry`] and pushes them a [`Control`], which
//! their transport acts on (a WebSocket gets its `disconnect` push and close, its `subscribed`
//! or `unsubscribed` push; a stream the matching event). A token's server-side subscriptions
//! (`subs`) reach a connection the same way, pushed to it alone as it connects.
//!
//! The `#herald` namespace is the server's: no client may subscribe or publish there, whatever
//! its token grants ([`reserved`]).

pub mod reserved;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use herald_core::{ChannelName, Control, Hub, Push, SubscriberHandle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use reserved::{CONTROL_CHANNEL, RESERVED_NAMESPACE};

use crate::presence::ClientId;

/// Which connections a control is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every connection of the user (a token's `sub`).
    User(String),
    /// The one connection (or stream) with this client id.
    Client(String),
}

/// A control message as it travels between nodes:
/// `{"target":{"user":"alice"},"disconnect":{"reason","reconnect"}}` and the like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlMessage {
    pub target: Target,
    #[serde(flatten)]
    pub order: Order,
}

/// What the target's connections are to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// End the connections, saying why and whether to come back.
    Disconnect { reason: String, reconnect: bool },
    /// Stop delivering one channel; the connections stay.
    Unsubscribe { channel: String, reason: String },
    /// Subscribe the connections to a channel, from now on.
    Subscribe { channel: String },
}

impl Order {
    /// What each connection is pushed; `None` for an order no connection can follow.
    fn control(&self) -> Option<Control> {
        Some(match self {
            Self::Disconnect { reason, reconnect } => {
                Control::Disconnect { reason: reason.clone(), reconnect: *reconnect }
            }
            Self::Unsubscribe { channel, reason } => {
                Control::Unsubscribe { channel: ChannelName::new(channel).ok()?, reason: reason.clone() }
            }
            Self::Subscribe { channel } => Control::Subscribe { channel: ChannelName::new(channel).ok()?, since: None },
        })
    }
}

/// This node's connections that controls can reach, with who they are.
pub struct Registry {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    hasher: RandomState,
}

struct Entry {
    handle: SubscriberHandle,
    user: Option<Box<str>>,
    client: ClientId,
}

const SHARDS: usize = 16;

impl Default for Registry {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }
}

impl Registry {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        let shard = &self.shards[self.hasher.hash_one(id) as usize % SHARDS];
        shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection, or records who it is now (after a `connect` changed it).
    pub fn set(&self, handle: &SubscriberHandle, user: Option<&str>, client: ClientId) {
        let entry = Entry { handle: handle.clone(), user: user.map(Into::into), client };
        self.shard(handle.id()).insert(handle.id(), entry);
    }

    pub fn remove(&self, handle: &SubscriberHandle) {
        self.shard(handle.id()).remove(&handle.id());
    }

    /// The connections a target names. A scan: controls are rare, connections many, and an
    /// index by user and client would cost every connection memory.
    pub fn matching(&self, target: &Target) -> Vec<SubscriberHandle> {
        let client = match target {
            Target::Client(text) => match ClientId::parse(text) {
                Ok(client) => Some(client),
                Err(_) => return Vec::new(),
            },
            Target::User(_) => None,
        };
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            found.extend(
                shard
                    .values()
                    .filter(|entry| match target {
                        Target::User(user) => entry.user.as_deref() == Some(user.as_str()),
                        Target::Client(_) => Some(entry.client) == client,
                    })
                    .map(|entry| entry.handle.clone()),
            );
        }
        found
    }
}

/// Acts on one control message on this node; returns how many connections it reached.
pub fn apply(hub: &Hub, registry: &Registry, message: &ControlMessage) -> usize {
    let Some(control) = message.order.control() else { return 0 };
    let control = Arc::new(control);
    let connections = registry.matching(&message.target);
    for connection in &connections {
        hub.control(connection, control.clone());
    }
    connections.len()
}

/// Follows the control channel until `shutdown`, acting on every message (from any node, this
/// one included).
pub async fn follow(hub: Arc<Hub>, registry: Arc<Registry>, shutdown: CancellationToken) {
    let channel = ChannelName::new(CONTROL_CHANNEL).expect("the control channel's name is valid");
    let (mut listener, mut inbox) = hub.connect(4096);
    let mut batch = Vec::new();
    loop {
        // Subscribed again after an engine failure or a lag (a control missed then is lost:
        // the caller can repeat it).
        while let Err(error) = hub.subscribe(&listener, &channel, None).await {
            tracing::warn!(%error, "cannot follow the control channel; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = inbox.recv_many(&mut batch, 64) => {
                    if received.is_err() {
                        tracing::warn!("the control channel's listener fell behind; following it again");
                        break;
                    }
                    for push in batch.drain(..) {
                        let Push::Publication(publication) = push else { continue };
                        match serde_json::from_slice::<ControlMessage>(&publication.data) {
                            Ok(message) => {
                                let reached = apply(&hub, &registry, &message);
                                tracing::info!(target = ?message.target, order = ?message.order, reached, "server control");
                            }
                            Err(error) => tracing::warn!(%error, "a control message that is not one"),
                        }
                    }
                }
            }
        }
        hub.unsubscribe(&listener, &channel).await;
        (listener, inbox) = hub.connect(4096);
    }
}

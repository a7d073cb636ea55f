//! What one WebSocket client is to Herald, apart from its socket: who it is (its identity and
//! presence client id), the positions it has reached in each channel, its token's expiry and its
//! publish rate. The client's commands act on it; the session owns it beside the socket.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{ChannelName, Control, Position, PositionTracker, Publication, SubscriberHandle};

use crate::auth::Identity;
use crate::encode;
use crate::presence::ClientId;
use crate::state::AppState;
use crate::transport::limits::TokenBucket;

pub(super) struct Connection {
    pub(super) app: AppState,
    pub(super) subscriber: SubscriberHandle,
    /// What this connection has been sent, per channel: the positions it recovers from.
    pub(super) positions: PositionTracker,
    /// Who the client is: anonymous until a token says otherwise.
    pub(super) identity: Identity,
    /// The client's id in presence (one per connection, unless `connect` takes back an old one).
    pub(super) client: ClientId,
    /// The presence info a client without a token gave for itself on `connect` (boxed: rare,
    /// and every idle connection holds this struct).
    pub(super) declared_info: Option<Box<Bytes>>,
    /// When the token expires (boxed: most connections have none, or never reach it).
    pub(super) expiry: crate::transport::Expiry,
    /// The client's publish rate, when limited (boxed: most servers do not limit it).
    pub(super) publish_rate: Option<Box<TokenBucket>>,
    /// What few connections need (boxed: every idle connection holds this struct).
    pub(super) rare: Option<Box<Rare>>,
    /// permessage-deflate, when agreed: publications go compressed.
    pub(super) deflate: Option<super::deflate::Deflate>,
}

/// The state of a connection that only some connections have.
#[derive(Default)]
pub(super) struct Rare {
    /// Why the server API disconnected it, once it did, and whether it should come back.
    pub(super) told_to_go: Option<(String, bool)>,
    /// Channels the server subscribed it to (a token's `subs`, the API's `subscribe`): they
    /// need no grant of the token's, and a refreshed token need not grant them.
    pub(super) server_channels: Vec<ChannelName>,
}

impl Connection {
    /// Takes on who the client now is, and when that runs out.
    pub(super) fn set_identity(&mut self, identity: Identity) {
        self.expiry = crate::transport::expiry(&identity);
        self.identity = identity;
        self.register();
    }

    /// Has the token's server-side subscriptions made (from `positions`, where they name
    /// them), as controls pushed to itself: when the client connects, not on a refresh, so a
    /// channel it or the server API unsubscribed stays so.
    pub(super) fn subscribe_token_subs(&mut self, positions: &[(ChannelName, Position)]) {
        for channel in self.identity.server_subscriptions() {
            let since = positions.iter().find(|(named, _)| *named == channel).map(|(_, position)| position.clone());
            self.app.hub.control(&self.subscriber, Arc::new(Control::Subscribe { channel, since }));
        }
    }

    pub(super) fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// Whether the server subscribed this connection to `channel`.
    pub(super) fn is_server_channel(&self, channel: &ChannelName) -> bool {
        self.rare.as_ref().is_some_and(|rare| rare.server_channels.contains(channel))
    }

    /// Tells the control registry who this connection is now (its user and client id).
    pub(super) fn register(&self) {
        self.app.controls.set(&self.subscriber, self.identity.user(), self.client);
    }

    /// The (shared) frame of a publication this connection has not seen yet, moving its position.
    pub(super) fn presence_entry(&self, channel: &herald_core::ChannelName) -> herald_core::PresenceEntry {
        let options = self.app.hub.namespaces().options_for(channel);
        crate::presence::entry(&self.identity, self.declared_info.as_deref(), options, self.client)
    }

    pub(super) fn publication_frame(&mut self, publication: &Publication) -> Option<Bytes> {
        let encoded = encode::if_next(&mut self.positions, publication)?;
        Some(match self.deflate {
            None => encoded.ws_frame,
            Some(deflate) => {
                let threshold = self.app.settings.websocket.compression_threshold;
                encode::deflated_frame(publication, &encoded, deflate.server_window_bits, threshold)
            }
        })
    }
}

//! What one WebSocket client is to Herald, apart from its socket: who it is (its identity and
//! presence client id), the positions it has reached in each channel, its token's expiry and its
//! publish rate. The client's commands act on it; the session owns it beside the socket.

use bytes::Bytes;
use herald_core::{PositionTracker, Publication, SubscriberHandle};

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
    /// Why the server API disconnected it, once it did (boxed: rare).
    pub(super) told_to_go: Option<Box<(String, bool)>>,
}

impl Connection {
    /// Takes on who the client now is, and when that runs out.
    pub(super) fn set_identity(&mut self, identity: Identity) {
        self.expiry = crate::transport::expiry(&identity);
        self.identity = identity;
        self.register();
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
        encode::if_next(&mut self.positions, publication).map(|encoded| encoded.ws_frame)
    }
}

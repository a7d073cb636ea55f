//! What the server sends a WebSocket client unasked (pushes have no `id`): publications (see
//! [`crate::publication`]), joins and leaves (see [`crate::presence`]), and the disconnect
//! notice sent before the server closes a connection, and the notice that the server ended one
//! subscription.

use serde::{Deserialize, Serialize};

use crate::reply::Positions;

/// `{"disconnect":{"code","reason","reconnect","positions"}}`: why the server closes, whether
/// to reconnect, and the positions the client reached (to resubscribe from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectPush {
    pub disconnect: Disconnect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: u16,
    pub reason: String,
    pub reconnect: bool,
    #[serde(default)]
    pub positions: Positions,
}

/// `{"subscribed":{"channel","position","recovered"?}}`: the server subscribed the client to a
/// channel (a token's `subs`, the server API's `subscribe`), as a `subscribe` answers; the
/// publications missed since the position follow, when it resumed from one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedPush {
    pub subscribed: crate::reply::Subscribed,
}

/// `{"unsubscribed":{"channel","reason"}}`: the server (its API's `unsubscribe`) ended the
/// client's subscription to a channel; the connection and its other subscriptions stay. The
/// client should not subscribe again on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribedPush {
    pub unsubscribed: Unsubscribed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    pub channel: String,
    pub reason: String,
}

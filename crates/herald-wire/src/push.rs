//! What the server sends a WebSocket client unasked (pushes have no `id`): publications (see
//! [`crate::publication`]), joins and leaves (see [`crate::presence`]), and the disconnect
//! notice sent before the server closes a connection.

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

//! Presence on the wire: one present client, the list of a channel's clients and users (the
//! `presence` result and `GET /api/channels/{channel}/presence`), and the join/leave pushes.

use serde::{Deserialize, Serialize};

/// `{"client","user","info","since"}`; an anonymous client's user is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub client: String,
    pub user: Option<String>,
    /// The token's `info` claim, or `null`.
    pub info: serde_json::Value,
    /// Milliseconds since the Unix epoch when the client joined.
    pub since: u64,
}

/// `{"clients":[..],"users":[{"user","clients"}]}`: users in order of first appearance, with
/// how many clients each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceList {
    pub clients: Vec<PresenceEntry>,
    pub users: Vec<UserClients>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClients {
    pub user: String,
    pub clients: usize,
}

/// Whether a client joined or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// `{"channel":..,"join":{entry}}` (or `"leave"`): the WebSocket push and the SSE event's data.
pub fn change_push(channel: &str, change: Change, entry: &PresenceEntry) -> String {
    let entry = serde_json::to_string(entry).unwrap_or_default();
    format!("{{\"channel\":{},\"{}\":{entry}}}", crate::json_string(channel), change.as_str())
}

/// `{"type":"join","channel":..,"join":{entry}}`: an NDJSON line or a poll answer's event.
pub fn typed_change(channel: &str, change: Change, entry: &PresenceEntry) -> String {
    let change = change.as_str();
    let entry = serde_json::to_string(entry).unwrap_or_default();
    format!("{{\"type\":\"{change}\",\"channel\":{},\"{change}\":{entry}}}", crate::json_string(channel))
}

//! Presence at the edge: client ids, the presence entry a client's identity makes, and the
//! JSON forms of presence (join/leave pushes, the presence list).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use herald_core::{PresenceEntry, PresenceEvent, PresenceSnapshot};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Identity;
use crate::wire::ErrorBody;

/// A client's id: 128 random bits, shown as 22 base64url characters. A WebSocket connection
/// gets one (and may take back its previous one on `connect`); an HTTP client keeps one in its
/// cursor, so its requests, and an `EventSource`'s reconnects, are the same client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(u128);

impl ClientId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // Not a secret: unguessable ids are a courtesy, unique ones are what matters.
            bytes = fastrand::u128(..).to_be_bytes();
        }
        Self(u128::from_be_bytes(bytes))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads an id a client sends back.
    pub fn parse(text: &str) -> Result<Self, ErrorBody> {
        let invalid = || ErrorBody::new("invalid_client", "a client id is the 22 characters a connect reply gave");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self::from_bytes(bytes))
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }
}

/// The error for a presence read in a namespace that keeps none.
pub fn not_kept(channel: &herald_core::ChannelName) -> ErrorBody {
    ErrorBody::new(
        "presence_disabled",
        format!("channel {channel} keeps no presence: set presence = true in its namespace"),
    )
}

/// The presence entry of `client` with `identity`, joining now.
pub fn entry(identity: &Identity, client: ClientId) -> PresenceEntry {
    let (user, info) = match identity {
        Identity::Anonymous => (String::new(), None),
        Identity::User(claims) => {
            (claims.sub.clone().unwrap_or_default(), claims.info.as_ref().map(|info| Bytes::from(info.to_string())))
        }
    };
    PresenceEntry { client: client.to_string(), user, info, since_ms: unix_millis() }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// `{"client":..,"user":..,"info":..,"since":..}`; an anonymous client's user is `null`.
pub fn entry_json(entry: &PresenceEntry) -> Value {
    let info = entry.info.as_ref().and_then(|info| serde_json::from_slice::<Value>(info).ok()).unwrap_or(Value::Null);
    let user = if entry.user.is_empty() { Value::Null } else { Value::from(entry.user.as_str()) };
    serde_json::json!({ "client": entry.client, "user": user, "info": info, "since": entry.since_ms })
}

/// `{"clients":[..],"users":[{"user":..,"clients":N}]}`.
pub fn snapshot_json(snapshot: &PresenceSnapshot) -> Value {
    let clients: Vec<Value> = snapshot.clients.iter().map(entry_json).collect();
    let users: Vec<Value> = snapshot
        .users()
        .into_iter()
        .map(|(user, clients)| serde_json::json!({ "user": user, "clients": clients }))
        .collect();
    serde_json::json!({ "clients": clients, "users": users })
}

/// The encoded forms of one join or leave, cached inside it and shared by every subscriber.
#[derive(Clone)]
pub struct EncodedPresence {
    /// `{"channel":..,"join":{..}}` (or `"leave"`): the WebSocket push, and the SSE event's data.
    pub json: Utf8Bytes,
    /// The same JSON as a complete WebSocket text frame.
    pub ws_frame: Bytes,
    /// `{"type":"join","channel":..,"join":{..}}`: an NDJSON line or a poll answer's event.
    pub typed: Bytes,
}

impl EncodedPresence {
    pub fn of(event: &PresenceEvent) -> Self {
        event.encoded(|event| {
            let change = event.change.as_str();
            let channel = Value::from(event.channel.as_str());
            let entry = entry_json(&event.entry);
            let (json, ws_frame) = crate::wire::text_frame(format!("{{\"channel\":{channel},\"{change}\":{entry}}}"));
            Self {
                json,
                ws_frame,
                typed: Bytes::from(format!("{{\"type\":\"{change}\",\"channel\":{channel},\"{change}\":{entry}}}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{ChannelName, PresenceChange};

    #[test]
    fn client_ids_round_trip_and_bad_ones_are_refused() {
        let id = ClientId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 22);
        assert_eq!(ClientId::parse(&text).unwrap(), id);
        assert_ne!(ClientId::random(), id);
        for bad in ["", "short", "!!!!!!!!!!!!!!!!!!!!!!", &format!("{text}AA")] {
            assert_eq!(ClientId::parse(bad).unwrap_err().code, "invalid_client", "{bad:?}");
        }
    }

    #[test]
    fn a_join_has_the_contract_shapes() {
        let entry = PresenceEntry {
            client: "c1".into(),
            user: "alice".into(),
            info: Some(Bytes::from_static(br#"{"name":"Alice"}"#)),
            since_ms: 7,
        };
        let event = PresenceEvent::new(ChannelName::new("chat:a").unwrap(), PresenceChange::Join, entry);
        let encoded = EncodedPresence::of(&event);
        let json: Value = serde_json::from_str(&encoded.json).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"channel":"chat:a","join":{"client":"c1","user":"alice","info":{"name":"Alice"},"since":7}})
        );
        let typed: Value = serde_json::from_slice(&encoded.typed).unwrap();
        assert_eq!(typed["type"], "join");
        assert_eq!(typed["join"], json["join"]);
    }
}

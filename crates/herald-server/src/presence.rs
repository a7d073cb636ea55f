//! Presence at the edge: client ids, and the presence entry a client's identity makes (its
//! wire forms are in [`crate::encode`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use herald_core::PresenceEntry;

use crate::auth::Identity;
use herald_wire::ErrorBody;

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

/// The most an anonymous client's own presence info may hold, in bytes of JSON.
pub const MAX_DECLARED_INFO: usize = 1024;

/// Checks presence info a client gives for itself (WebSocket `connect {info}`, `info=` on the
/// HTTP transports): JSON of at most [`MAX_DECLARED_INFO`] bytes, kept on one line.
pub fn declared_info(info: &serde_json::value::RawValue) -> Result<Bytes, ErrorBody> {
    let text = herald_wire::publication::one_line_data(info);
    if text.len() > MAX_DECLARED_INFO {
        return Err(ErrorBody::new(
            "invalid_info",
            format!("info is {} bytes of JSON; at most {MAX_DECLARED_INFO}", text.len()),
        ));
    }
    Ok(Bytes::from(text.into_owned()))
}

/// The refusal of presence info from a client with a token: its info is the token's.
pub fn info_with_token() -> ErrorBody {
    ErrorBody::new("invalid_info", "info is for clients without a token; a token's presence info is its `info` claim")
}

/// The presence entry of `client` with `identity`, joining now in a namespace with `options`.
/// A client without a token shows the info it gave for itself where the namespace takes it.
pub fn entry(
    identity: &Identity,
    declared: Option<&Bytes>,
    options: &herald_core::NamespaceOptions,
    client: ClientId,
) -> PresenceEntry {
    let (user, info) = match identity {
        Identity::Anonymous => (String::new(), declared.filter(|_| options.anonymous_info).cloned()),
        Identity::User(claims) => {
            (claims.sub.clone().unwrap_or_default(), claims.info.as_ref().map(|info| Bytes::from(info.to_string())))
        }
    };
    PresenceEntry { client: client.to_string(), user, info, since_ms: herald_core::unix_millis() }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

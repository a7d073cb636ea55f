//! What the engines share: the messages they send between nodes (a publication as
//! `P <offset> <epoch> <time> <data>`, a join or leave as `J <entry JSON>` / `L <entry JSON>`),
//! and presence entries as JSON.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{ChannelName, Epoch, Position, PresenceEntry, Publication};

/// `{"client","user","info","since"}`: a presence entry as the brokers keep it.
pub fn encode_entry(entry: &PresenceEntry) -> String {
    let info = entry
        .info
        .as_ref()
        .and_then(|info| serde_json::from_slice::<serde_json::Value>(info).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({"client": entry.client, "user": entry.user, "info": info, "since": entry.since_ms}).to_string()
}

pub fn decode_entry(json: &[u8]) -> Option<PresenceEntry> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    Some(PresenceEntry {
        client: value["client"].as_str()?.to_string(),
        user: value["user"].as_str().unwrap_or_default().to_string(),
        info: (!value["info"].is_null()).then(|| Bytes::from(value["info"].to_string())),
        since_ms: value["since"].as_u64().unwrap_or(0),
    })
}

/// The message announcing a publication to the other nodes.
pub fn publication_message(position: &Position, time_ms: u64, data: &[u8]) -> Bytes {
    let head = format!("P {} {} {time_ms} ", position.offset, position.epoch);
    let mut message = Vec::with_capacity(head.len() + data.len());
    message.extend_from_slice(head.as_bytes());
    message.extend_from_slice(data);
    Bytes::from(message)
}

/// `<offset> <epoch> <time> <data>`: what follows the `P ` of a publication message.
pub fn parse_publication(channel: &ChannelName, bytes: &[u8]) -> Option<Arc<Publication>> {
    let mut parts = bytes.splitn(4, |byte| *byte == b' ');
    let offset: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let time: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let data = Bytes::copy_from_slice(parts.next()?);
    Some(Arc::new(Publication::new(channel.clone(), Position { epoch: Epoch::new(epoch), offset }, data, time)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_messages_round_trip() {
        let channel = ChannelName::new("a").unwrap();
        let position = Position { epoch: Epoch::new("ep"), offset: 42 };
        let message = publication_message(&position, 1700, b"{\"x\": \"a b\"}");
        let publication = parse_publication(&channel, &message[2..]).unwrap();
        assert_eq!((publication.position.clone(), publication.time_ms), (position, 1700));
        assert_eq!(&publication.data[..], b"{\"x\": \"a b\"}");
        assert!(parse_publication(&channel, b"x ep 1 d").is_none());
    }

    #[test]
    fn entries_round_trip() {
        let entry = PresenceEntry {
            client: "c".into(),
            user: "u".into(),
            info: Some(Bytes::from_static(b"{\"n\":1}")),
            since_ms: 5,
        };
        assert_eq!(decode_entry(encode_entry(&entry).as_bytes()), Some(entry));
    }
}

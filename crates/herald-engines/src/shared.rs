//! What the engines share: the messages they send between nodes (a publication as
//! `P <offset> <epoch> <time> <data>`, a join or leave as `J <entry JSON>` / `L <entry JSON>`),
//! presence entries as JSON, the batch operations made of per-channel ones, and the hash that
//! spreads channels over shards.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{
    ChannelName, EngineError, Epoch, Position, PresenceEntry, Publication, PublishError, PublishRequest, Published,
};

/// What a broker engine does for one publication or one channel; [`publish_each`],
/// [`subscribe_each`] and [`unsubscribe_each`] make the `Engine` trait's batch operations of
/// them.
#[async_trait]
pub trait PerChannel: Sync {
    async fn publish_one(&self, request: PublishRequest) -> Result<Published, PublishError>;
    async fn subscribe_one(&self, channel: &ChannelName) -> Result<(), EngineError>;
    async fn unsubscribe_one(&self, channel: &ChannelName) -> Result<(), EngineError>;
}

/// Publishes in order: a batch may publish to one channel several times.
pub async fn publish_each(
    engine: &impl PerChannel,
    batch: Vec<PublishRequest>,
) -> Vec<Result<Published, PublishError>> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        outcomes.push(engine.publish_one(request).await);
    }
    outcomes
}

/// Subscribes every channel, or none: a failure takes back those already subscribed.
pub async fn subscribe_each(engine: &impl PerChannel, channels: &[ChannelName]) -> Result<(), EngineError> {
    for (index, channel) in channels.iter().enumerate() {
        if let Err(error) = engine.subscribe_one(channel).await {
            let _ = unsubscribe_each(engine, &channels[..index]).await;
            return Err(error);
        }
    }
    Ok(())
}

/// Unsubscribes every channel, whatever fails; the last failure is returned.
pub async fn unsubscribe_each(engine: &impl PerChannel, channels: &[ChannelName]) -> Result<(), EngineError> {
    let mut result = Ok(());
    for channel in channels {
        if let Err(error) = engine.unsubscribe_one(channel).await {
            result = Err(error);
        }
    }
    result
}

/// FNV-1a, 64 bits: a channel name's stable hash (the same on every node and every run).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

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
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

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

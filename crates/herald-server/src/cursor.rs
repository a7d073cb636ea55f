//! Cursors: the opaque, URL-safe strings that SSE ids, NDJSON lines and poll responses carry,
//! encoding the position of every channel of one subscription.
//!
//! Layout (version 2), then base64url without padding:
//! `[2] [client id: 16 bytes] [count: varint] count × ([channel: crc32 of name, 4 bytes]
//! [epoch length: 1 byte] [epoch] [offset: varint]) [crc32 of all before: 4 bytes]`.
//! Version 1 (the same without the client id) is still read.
//!
//! The client id makes an HTTP client's requests one client in presence: each poll, and an
//! `EventSource` reconnecting with `Last-Event-ID`, carries it.
//!
//! The checksum makes garbage and truncated cursors a clear error. A hand-made cursor that
//! passes it cannot produce wrong data either: each position is checked against the channel's
//! real epoch and history like any other (`recovered: false` when it does not fit).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::{ChannelName, Epoch, Position, PositionTracker};

use crate::presence::ClientId;

const VERSION: u8 = 2;
const VERSION_WITHOUT_CLIENT: u8 = 1;
/// Longer cursors are refused before decoding.
pub const MAX_CURSOR_LEN: usize = 16 * 1024;

/// Why a cursor string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is not base64url")]
    NotBase64,
    #[error("cursor is damaged (checksum mismatch)")]
    Checksum,
    #[error("cursor version {0} is not supported")]
    Version(u8),
    #[error("cursor is malformed: {0}")]
    Malformed(&'static str),
    #[error("cursor is longer than {MAX_CURSOR_LEN} characters")]
    TooLong,
}

/// A decoded cursor: a position per channel (channels identified by a hash of their name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    entries: Vec<(u32, Position)>,
    /// The client it was given to (absent in version 1 cursors).
    pub client: Option<ClientId>,
}

fn channel_hash(channel: &ChannelName) -> u32 {
    crc32fast::hash(channel.as_str().as_bytes())
}

impl Cursor {
    /// The cursor of `client` for the positions `tracker` holds on `channels`, in that order.
    pub fn encode(tracker: &PositionTracker, channels: &[ChannelName], client: ClientId) -> String {
        let mut bytes = Vec::with_capacity(24 + channels.len() * 20);
        bytes.push(VERSION);
        bytes.extend_from_slice(&client.to_bytes());
        let tracked: Vec<(&ChannelName, &Position)> =
            channels.iter().filter_map(|channel| tracker.get(channel).map(|position| (channel, position))).collect();
        write_varint(&mut bytes, tracked.len() as u64);
        for (channel, position) in tracked {
            bytes.extend_from_slice(&channel_hash(channel).to_be_bytes());
            let epoch = position.epoch.as_str().as_bytes();
            let epoch = &epoch[..epoch.len().min(255)];
            bytes.push(epoch.len() as u8);
            bytes.extend_from_slice(epoch);
            write_varint(&mut bytes, position.offset);
        }
        let checksum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&checksum.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Self, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| CursorError::NotBase64)?;
        if bytes.len() < 6 {
            return Err(CursorError::Malformed("too short"));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != checksum {
            return Err(CursorError::Checksum);
        }
        let mut reader = Reader { bytes: body };
        let version = reader.byte()?;
        let client = match version {
            VERSION => Some(ClientId::from_bytes(
                reader.take(16)?.try_into().map_err(|_| CursorError::Malformed("client id"))?,
            )),
            VERSION_WITHOUT_CLIENT => None,
            other => return Err(CursorError::Version(other)),
        };
        let count = reader.varint()?;
        if count > 10_000 {
            return Err(CursorError::Malformed("too many channels"));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash = u32::from_be_bytes(reader.take(4)?.try_into().map_err(|_| CursorError::Malformed("hash"))?);
            let epoch_len = reader.byte()? as usize;
            let epoch = std::str::from_utf8(reader.take(epoch_len)?).map_err(|_| CursorError::Malformed("epoch"))?;
            let offset = reader.varint()?;
            entries.push((hash, Position { epoch: Epoch::new(epoch), offset }));
        }
        if !reader.bytes.is_empty() {
            return Err(CursorError::Malformed("trailing bytes"));
        }
        Ok(Self { entries, client })
    }

    /// The position this cursor holds for `channel`, if any.
    pub fn position_for(&self, channel: &ChannelName) -> Option<&Position> {
        let hash = channel_hash(channel);
        self.entries.iter().find(|(entry, _)| *entry == hash).map(|(_, position)| position)
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CursorError> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], CursorError> {
        if self.bytes.len() < count {
            return Err(CursorError::Malformed("truncated"));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, CursorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError::Malformed("varint too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    fn tracker(entries: &[(&str, &str, u64)]) -> PositionTracker {
        let mut tracker = PositionTracker::default();
        for (name, epoch, offset) in entries {
            tracker.track(channel(name), Position { epoch: Epoch::new(epoch), offset: *offset });
        }
        tracker
    }

    #[test]
    fn round_trips_positions_and_is_url_safe() {
        let channels = [channel("a"), channel("chat:lobby")];
        let client = ClientId::random();
        let text = Cursor::encode(&tracker(&[("a", "e1", 0), ("chat:lobby", "xyz", 300_000)]), &channels, client);
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{text}");
        let cursor = Cursor::decode(&text).unwrap();
        assert_eq!(cursor.position_for(&channels[1]), Some(&Position { epoch: Epoch::new("xyz"), offset: 300_000 }));
        assert_eq!(cursor.position_for(&channels[0]).unwrap().offset, 0);
        assert_eq!(cursor.position_for(&channel("b")), None);
        assert_eq!(cursor.client, Some(client));
    }

    #[test]
    fn version_1_cursors_are_still_read() {
        // [1] [1 channel] [crc32("a")] [2] "e1" [5] [checksum]
        let mut bytes = vec![1, 1];
        bytes.extend_from_slice(&crc32fast::hash(b"a").to_be_bytes());
        bytes.extend_from_slice(&[2, b'e', b'1', 5]);
        let checksum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&checksum.to_be_bytes());
        let cursor = Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes)).unwrap();
        assert_eq!(cursor.position_for(&channel("a")), Some(&Position { epoch: Epoch::new("e1"), offset: 5 }));
        assert_eq!(cursor.client, None);
    }

    #[test]
    fn garbage_and_tampering_are_refused() {
        let text = Cursor::encode(&tracker(&[("a", "e1", 5)]), &[channel("a")], ClientId::random());
        assert_eq!(Cursor::decode("not a cursor!"), Err(CursorError::NotBase64));
        assert!(Cursor::decode("").is_err());
        assert!(Cursor::decode(&text[..text.len() - 2]).is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        let last_offset_byte = bytes.len() - 5;
        bytes[last_offset_byte] ^= 1;
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes)), Err(CursorError::Checksum));
        assert_eq!(Cursor::decode(&"A".repeat(MAX_CURSOR_LEN + 1)), Err(CursorError::TooLong));
        for _ in 0..2000 {
            let random: Vec<u8> = (0..fastrand::usize(..40)).map(|_| fastrand::u8(..)).collect();
            let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(&random));
        }
    }
}

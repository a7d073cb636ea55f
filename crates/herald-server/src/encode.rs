//! The hub's values in their wire forms (`herald_wire`), encoded once and shared: a
//! publication's JSON and WebSocket frame are made on first need and cached inside it, a join's
//! or leave's likewise, so fan-out copies no bytes per subscriber. Also the small translations
//! between the hub's types and the wire's (positions, publish outcomes, presence entries).

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{Epoch, PositionTracker, PresenceEntry, PresenceEvent, PresenceSnapshot, Publication};
use herald_wire::presence::Change;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::transport::ws::frames::{self, text_frame};

/// The encoded forms of one publication, cached inside it: one allocation holding a complete
/// WebSocket text frame, whose payload is the publication JSON every transport uses.
#[derive(Clone)]
pub struct EncodedPublication {
    /// `{"channel":..,"offset":..,"epoch":..,"data":..,"time":..}`.
    pub json: Utf8Bytes,
    /// The same JSON as an unmasked, final WebSocket text frame (header + payload): a server's
    /// frame is the same bytes for every connection, so it is written as is.
    pub ws_frame: Bytes,
}

impl EncodedPublication {
    pub fn of(publication: &Publication) -> Self {
        publication.encoded(|publication| {
            let (json, ws_frame) = text_frame(herald_wire::publication::encode(fields(publication)));
            Self { json, ws_frame }
        })
    }
}

/// A publication's WebSocket frame compressed (permessage-deflate): with the default window
/// made once and shared like the plain frame, with a smaller one (a client's choice) made for
/// the caller; the plain frame when it is under `threshold` or does not compress.
pub fn deflated_frame(
    publication: &Publication,
    encoded: &EncodedPublication,
    window_bits: u8,
    threshold: usize,
) -> Bytes {
    use crate::transport::ws::deflate;
    let deflated = if window_bits == deflate::DEFAULT_WINDOW_BITS {
        publication
            .encoded(|_| {
                DeflatedFrame(frames::compressed_frame(
                    frames::OPCODE_TEXT,
                    encoded.json.as_bytes(),
                    window_bits,
                    threshold,
                ))
            })
            .0
    } else {
        frames::compressed_frame(frames::OPCODE_TEXT, encoded.json.as_bytes(), window_bits, threshold)
    };
    deflated.unwrap_or_else(|| encoded.ws_frame.clone())
}

/// The cached compressed frame of a publication (`None`: it goes plain).
#[derive(Clone)]
struct DeflatedFrame(Option<Bytes>);

/// The shared encoding of `publication` if it is the next one for a subscription whose
/// positions are `positions` (which then move to it); `None` for one it has seen or does not
/// follow. Every transport delivers through this.
pub fn if_next(positions: &mut PositionTracker, publication: &Publication) -> Option<EncodedPublication> {
    positions.advance(publication).then(|| EncodedPublication::of(publication))
}

fn fields(publication: &Publication) -> herald_wire::publication::PublicationFields<'_> {
    herald_wire::publication::PublicationFields {
        channel: publication.channel.as_str(),
        offset: publication.position.offset,
        epoch: publication.position.epoch.as_str(),
        data: std::str::from_utf8(&publication.data).unwrap_or("null"),
        time: publication.time_ms,
    }
}

/// A JSON array of publications, each in its shared encoding.
pub fn publications_array<'a>(publications: impl IntoIterator<Item = &'a Arc<Publication>>) -> String {
    herald_wire::publication::array(
        publications.into_iter().map(|publication| EncodedPublication::of(publication).json),
    )
}

/// Published JSON data as the hub keeps it: on one line (see
/// [`herald_wire::publication::one_line_data`]).
pub fn payload(data: &RawValue) -> Bytes {
    match herald_wire::publication::one_line_data(data) {
        std::borrow::Cow::Borrowed(text) => Bytes::copy_from_slice(text.as_bytes()),
        std::borrow::Cow::Owned(text) => Bytes::from(text),
    }
}

pub fn wire_position(position: &herald_core::Position) -> herald_wire::Position {
    herald_wire::Position { epoch: position.epoch.to_string(), offset: position.offset }
}

pub fn hub_position(position: &herald_wire::Position) -> herald_core::Position {
    herald_core::Position { epoch: Epoch::new(&position.epoch), offset: position.offset }
}

/// A `positions` object (channel → position, as `positions=` and `connect` carry it) in the
/// hub's types; the error names a key that is not a channel.
pub fn hub_positions<'a>(
    positions: impl IntoIterator<Item = (&'a String, &'a herald_wire::Position)>,
) -> Result<Vec<(herald_core::ChannelName, herald_core::Position)>, String> {
    positions
        .into_iter()
        .map(|(name, position)| match herald_core::ChannelName::new(name) {
            Ok(channel) => Ok((channel, hub_position(position))),
            Err(error) => Err(format!("positions: {name:?}: {error}")),
        })
        .collect()
}

/// A publish's outcome as the publisher is answered.
pub fn published(published: &herald_core::Published) -> herald_wire::publication::Published {
    herald_wire::publication::Published {
        channel: published.channel.to_string(),
        offset: published.position.offset,
        epoch: published.position.epoch.to_string(),
        duplicate: published.duplicate,
    }
}

/// A present client on the wire; its info is the token's `info` claim (JSON), or `null`.
pub fn presence_entry(entry: &PresenceEntry) -> herald_wire::presence::PresenceEntry {
    herald_wire::presence::PresenceEntry {
        client: entry.client.clone(),
        user: (!entry.user.is_empty()).then(|| entry.user.clone()),
        info: entry.info.as_ref().and_then(|info| serde_json::from_slice(info).ok()).unwrap_or_default(),
        since: entry.since_ms,
    }
}

/// A channel's presence list on the wire.
pub fn presence_list(snapshot: &PresenceSnapshot) -> herald_wire::presence::PresenceList {
    herald_wire::presence::PresenceList {
        clients: snapshot.clients.iter().map(presence_entry).collect(),
        users: snapshot
            .users()
            .into_iter()
            .map(|(user, clients)| herald_wire::presence::UserClients { user: user.to_string(), clients })
            .collect(),
    }
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
            let change = match event.change {
                herald_core::PresenceChange::Join => Change::Join,
                herald_core::PresenceChange::Leave => Change::Leave,
            };
            let channel = event.channel.as_str();
            let entry = presence_entry(&event.entry);
            let (json, ws_frame) = text_frame(herald_wire::presence::change_push(channel, change, &entry));
            Self { json, ws_frame, typed: Bytes::from(herald_wire::presence::typed_change(channel, change, &entry)) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{ChannelName, Position, PresenceChange};

    #[test]
    fn the_websocket_frame_is_a_text_frame_around_the_json() {
        for size in [10, 200, 70_000] {
            let publication = Publication::new(
                ChannelName::new("c").unwrap(),
                Position { epoch: Epoch::new("e"), offset: 1 },
                Bytes::from(format!("\"{}\"", "x".repeat(size))),
                1,
            );
            let encoded = EncodedPublication::of(&publication);
            let frame = &encoded.ws_frame;
            let json_len = encoded.json.len();
            assert_eq!(frame[0], 0x81);
            let (len, header) = match frame[1] {
                126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
                127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
                len => (len as usize, 2),
            };
            assert_eq!((len, frame.len() - header), (json_len, json_len));
            assert_eq!(&frame[header..], encoded.json.as_bytes());
        }
    }

    #[test]
    fn publication_json_has_the_contract_shape() {
        let publication = Publication::new(
            ChannelName::new("chat:lobby").unwrap(),
            Position { epoch: Epoch::new("b7x1"), offset: 42 },
            Bytes::from_static(br#"{"text":"hi"}"#),
            1764355200123,
        );
        assert_eq!(
            EncodedPublication::of(&publication).json.as_str(),
            r#"{"channel":"chat:lobby","offset":42,"epoch":"b7x1","data":{"text":"hi"},"time":1764355200123}"#
        );
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
        let json: serde_json::Value = serde_json::from_str(&encoded.json).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"channel":"chat:a","join":{"client":"c1","user":"alice","info":{"name":"Alice"},"since":7}})
        );
        let typed: serde_json::Value = serde_json::from_slice(&encoded.typed).unwrap();
        assert_eq!(typed["type"], "join");
        assert_eq!(typed["join"], json["join"]);
    }
}

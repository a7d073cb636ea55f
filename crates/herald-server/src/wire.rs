//! The JSON wire forms shared by every transport: publications, positions and errors.
//!
//! A publication is encoded once, on first need, and the same bytes go to every subscriber.

use bytes::Bytes;
use herald_core::{Epoch, Position, Publication};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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
            let (json, ws_frame) = text_frame(publication_json(publication));
            Self { json, ws_frame }
        })
    }
}

/// `json` as an unmasked, final WebSocket text frame (header + payload), and the JSON itself as
/// a view into the same allocation: a server's frame is the same bytes for every connection.
pub fn text_frame(json: String) -> (Utf8Bytes, Bytes) {
    use crate::transport::ws::frames;
    let ws_frame = frames::frame(frames::OPCODE_TEXT, json.as_bytes());
    let header_len = ws_frame.len() - json.len();
    let json = Utf8Bytes::try_from(ws_frame.slice(header_len..)).unwrap_or_else(|_| Utf8Bytes::from(json));
    (json, ws_frame)
}

fn publication_json(publication: &Publication) -> String {
    let data = std::str::from_utf8(&publication.data).unwrap_or("null");
    let mut json = String::with_capacity(64 + publication.channel.as_str().len() + data.len());
    json.push_str("{\"channel\":");
    push_json_string(&mut json, publication.channel.as_str());
    json.push_str(",\"offset\":");
    json.push_str(&publication.position.offset.to_string());
    json.push_str(",\"epoch\":");
    push_json_string(&mut json, publication.position.epoch.as_str());
    json.push_str(",\"data\":");
    json.push_str(data);
    json.push_str(",\"time\":");
    json.push_str(&publication.time_ms.to_string());
    json.push('}');
    json
}

fn push_json_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string()));
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The bytes of published JSON data, made safe for every framing: raw CR and LF can only be
/// insignificant whitespace in valid JSON (inside strings they must be escaped), so they are
/// dropped, and the data fits on one NDJSON line or SSE `data:` line.
pub fn json_payload(data: &RawValue) -> Bytes {
    let text = data.get();
    // A byte scan: `str::contains` with a set of chars decodes every character.
    if text.bytes().any(|byte| byte == b'\n' || byte == b'\r') {
        Bytes::from(text.replace(['\n', '\r'], ""))
    } else {
        Bytes::copy_from_slice(text.as_bytes())
    }
}

/// Checks an optional idempotency key.
pub fn idempotency_key(key: Option<String>) -> Result<Option<String>, ErrorBody> {
    match key {
        Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.chars().any(char::is_control) => {
            Err(ErrorBody::new(
                "invalid_idempotency_key",
                format!("an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, without control characters"),
            ))
        }
        key => Ok(key),
    }
}

/// The answer to a publish: `{"channel","offset","epoch"}`, plus `"duplicate":true` when an
/// idempotency key made it a repeat.
pub fn published_json(published: &herald_core::Published) -> serde_json::Value {
    let mut json = serde_json::json!({
        "channel": published.channel.as_str(),
        "offset": published.position.offset,
        "epoch": published.position.epoch.as_str(),
    });
    if published.duplicate {
        json["duplicate"] = true.into();
    }
    json
}

/// Keeps a JSON `null` as `Some(null)`: `null` is valid data, unlike a missing field.
pub fn present_raw_value<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A position on the wire: `{"epoch":"…","offset":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WirePosition {
    pub epoch: String,
    pub offset: u64,
}

impl From<&Position> for WirePosition {
    fn from(position: &Position) -> Self {
        Self { epoch: position.epoch.to_string(), offset: position.offset }
    }
}

impl From<&WirePosition> for Position {
    fn from(position: &WirePosition) -> Self {
        Position { epoch: Epoch::new(&position.epoch), offset: position.offset }
    }
}

/// `{"code":"snake_case","message":"human words"}`, the inside of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A JSON array of encoded publications, written without re-encoding any of them.
pub fn publications_array<'a>(publications: impl IntoIterator<Item = &'a std::sync::Arc<Publication>>) -> String {
    let mut array = String::from("[");
    for (index, publication) in publications.into_iter().enumerate() {
        if index > 0 {
            array.push(',');
        }
        array.push_str(&EncodedPublication::of(publication).json);
    }
    array.push(']');
    array
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::ChannelName;

    #[test]
    fn payloads_lose_raw_line_breaks_and_keep_escaped_ones() {
        let raw: Box<RawValue> = serde_json::from_str("{\n  \"a\": \"x\\ny\"\r\n}").unwrap();
        let payload = json_payload(&raw);
        assert_eq!(&payload[..], br#"{  "a": "x\ny"}"#);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["a"], "x\ny");
    }

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
        let encoded = EncodedPublication::of(&publication);
        assert_eq!(
            encoded.json.as_str(),
            r#"{"channel":"chat:lobby","offset":42,"epoch":"b7x1","data":{"text":"hi"},"time":1764355200123}"#
        );
        let value: serde_json::Value = serde_json::from_str(&encoded.json).unwrap();
        assert_eq!(value["data"]["text"], "hi");
    }
}

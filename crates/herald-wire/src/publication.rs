//! A publication as every transport delivers it:
//! `{"channel":"chat:lobby","offset":42,"epoch":"b7x1","data":{..},"time":1764355200123}`.
//!
//! The server writes it once per publication ([`encode`]) and shares the bytes with every
//! subscriber; a client reads it as [`Publication`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ErrorBody;
use crate::json_string;

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// A publication as a client reads it. `cursor` is there on NDJSON lines (the cursor after it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    pub data: Box<RawValue>,
    /// Milliseconds since the Unix epoch when Herald accepted it.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The fields of one publication, as the server holds them; `data` is JSON text.
#[derive(Debug, Clone, Copy)]
pub struct PublicationFields<'a> {
    pub channel: &'a str,
    pub offset: u64,
    pub epoch: &'a str,
    pub data: &'a str,
    pub time: u64,
}

/// The publication's JSON, written field by field (no intermediate value): this runs once per
/// publication on the hot path.
pub fn encode(publication: PublicationFields<'_>) -> String {
    let mut json = String::with_capacity(64 + publication.channel.len() + publication.data.len());
    json.push_str("{\"channel\":");
    json.push_str(&json_string(publication.channel));
    json.push_str(",\"offset\":");
    json.push_str(&publication.offset.to_string());
    json.push_str(",\"epoch\":");
    json.push_str(&json_string(publication.epoch));
    json.push_str(",\"data\":");
    json.push_str(publication.data);
    json.push_str(",\"time\":");
    json.push_str(&publication.time.to_string());
    json.push('}');
    json
}

/// A JSON array of already encoded publications (or any JSON values), without re-encoding them.
pub fn array(encoded: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let mut array = String::from("[");
    for (index, json) in encoded.into_iter().enumerate() {
        if index > 0 {
            array.push(',');
        }
        array.push_str(json.as_ref());
    }
    array.push(']');
    array
}

/// The bytes of published JSON data, made safe for every framing: raw CR and LF can only be
/// insignificant whitespace in valid JSON (inside strings they must be escaped), so they are
/// dropped, and the data fits on one NDJSON line or SSE `data:` line.
pub fn one_line_data(data: &RawValue) -> std::borrow::Cow<'_, str> {
    let text = data.get();
    // A byte scan: `str::contains` with a set of chars decodes every character.
    if text.bytes().any(|byte| byte == b'\n' || byte == b'\r') {
        std::borrow::Cow::Owned(text.replace(['\n', '\r'], ""))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Checks an optional idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes, no control
/// characters.
pub fn check_idempotency_key(key: Option<String>) -> Result<Option<String>, ErrorBody> {
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

/// Keeps a JSON `null` as `Some(null)`: `null` is valid data, unlike a missing field. For
/// `#[serde(borrow, default, deserialize_with = "present_raw_value")]` on a `data` field.
pub fn present_raw_value<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// The answer to a publish: `{"channel","offset","epoch"}`, plus `"duplicate":true` when an
/// idempotency key made it a repeat of an earlier publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_lose_raw_line_breaks_and_keep_escaped_ones() {
        let raw: Box<RawValue> = serde_json::from_str("{\n  \"a\": \"x\\ny\"\r\n}").unwrap();
        let payload = one_line_data(&raw);
        assert_eq!(payload, r#"{  "a": "x\ny"}"#);
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(value["a"], "x\ny");
    }

    #[test]
    fn publication_json_has_the_contract_shape_and_reads_back() {
        let json = encode(PublicationFields {
            channel: "chat:lobby",
            offset: 42,
            epoch: "b7x1",
            data: r#"{"text":"hi"}"#,
            time: 1764355200123,
        });
        assert_eq!(
            json,
            r#"{"channel":"chat:lobby","offset":42,"epoch":"b7x1","data":{"text":"hi"},"time":1764355200123}"#
        );
        let read: Publication = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (read.channel.as_str(), read.offset, read.epoch.as_str(), read.time),
            ("chat:lobby", 42, "b7x1", 1764355200123)
        );
        assert_eq!(read.data.get(), r#"{"text":"hi"}"#);
    }

    #[test]
    fn a_duplicate_is_said_only_when_it_is_one() {
        let published = Published { channel: "a".into(), offset: 1, epoch: "e".into(), duplicate: false };
        assert_eq!(serde_json::to_string(&published).unwrap(), r#"{"channel":"a","offset":1,"epoch":"e"}"#);
        let again = Published { duplicate: true, ..published };
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            r#"{"channel":"a","offset":1,"epoch":"e","duplicate":true}"#
        );
    }
}

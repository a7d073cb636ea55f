//! The JSON pieces of the HTTP transports (SSE, NDJSON, polling) beside the publications they
//! carry, and the server API's request and answer bodies.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ErrorBody;
use crate::position::Position;
use crate::publication::{Published, present_raw_value};

/// A channel whose position could not be recovered: `{"channel","recovered":false,"position"}`
/// (an SSE event of type `recovery`, an entry of a poll answer's `recovery`); as an NDJSON line
/// it also has `"type":"recovery"` and the `cursor` after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unrecovered {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub channel: String,
    pub recovered: bool,
    pub position: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `{"type":"open","cursor":"..","subscribed":[..]}`: the cursor of a stream's starting point
/// and each channel's subscribe result (as a WebSocket `subscribe` answers: the position now,
/// and `recovered` where a position was given), its first NDJSON line and the data of its first
/// SSE event (named `cursor`: `open` is the name EventSource gives its own connection event).
pub fn stream_open(cursor: &str, subscribed: &[crate::reply::Subscribed]) -> String {
    format!(
        "{{\"type\":\"open\",\"cursor\":{},\"subscribed\":{}}}",
        crate::json_string(cursor),
        serde_json::to_string(subscribed).unwrap_or_else(|_| "[]".to_string())
    )
}

/// The SSE event type of a stream's opening cursor.
pub const SSE_CURSOR_EVENT: &str = "cursor";

/// An NDJSON publication line: the publication's shared JSON with `"cursor"` added before its
/// closing brace, as the pieces to write one after the other (no copy of the JSON). A cursor is
/// URL-safe, so it needs no escaping.
pub fn ndjson_publication<'a>(publication_json: &'a str, cursor: &'a str) -> [&'a [u8]; 4] {
    debug_assert!(publication_json.ends_with('}'));
    debug_assert!(!cursor.contains(['"', '\\']));
    let open = &publication_json.as_bytes()[..publication_json.len().saturating_sub(1)];
    [open, b",\"cursor\":\"", cursor.as_bytes(), b"\"}\n"]
}

/// An NDJSON heartbeat line.
pub const NDJSON_HEARTBEAT: &[u8] = b"{\"type\":\"heartbeat\"}\n";

/// Why a stream ends and where to resume: `{"code","reason","reconnect","cursor"}` (with
/// `"type":"disconnect"` on NDJSON; SSE says it in the event type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDisconnect {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub code: u16,
    pub reason: String,
    pub reconnect: bool,
    pub cursor: String,
}

/// The server subscribed a stream to one more channel (the API's `subscribe`):
/// `{"channel","position","recovered"?,"cursor"}` (an SSE event of type `subscribed`; on NDJSON
/// with `"type":"subscribed"`), the cursor now naming the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSubscribed {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub subscribed: crate::reply::Subscribed,
    pub cursor: String,
}

/// The server ended a stream's subscription to one channel: `{"channel","reason","cursor"}`
/// (an SSE event of type `unsubscribed`; on NDJSON with `"type":"unsubscribed"`), the cursor
/// no longer naming the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamUnsubscribed {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub channel: String,
    pub reason: String,
    pub cursor: String,
}

/// A poll's answer: `{"messages":[..],"cursor":"..","events":[..]?,"recovery":[..]?}`, the
/// messages and events being encoded already.
pub fn poll_answer(messages_json: &str, cursor: &str, events_json: Option<&str>, recovery: &[Unrecovered]) -> String {
    let mut body = format!("{{\"messages\":{messages_json},\"cursor\":{}", crate::json_string(cursor));
    if let Some(events) = events_json {
        body.push_str(",\"events\":");
        body.push_str(events);
    }
    if !recovery.is_empty() {
        body.push_str(",\"recovery\":");
        body.push_str(&serde_json::to_string(recovery).unwrap_or_else(|_| "[]".to_string()));
    }
    body.push('}');
    body
}

/// `POST /api/publish`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody<'a> {
    pub channel: String,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    pub data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `POST /api/broadcast`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody<'a> {
    pub channels: Vec<String>,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    pub data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The answer to a broadcast: one outcome per channel, in request order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BroadcastResults {
    pub results: Vec<BroadcastOutcome>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BroadcastOutcome {
    Published(Published),
    Failed { channel: String, error: ErrorBody },
}

/// `GET /api/channels`: channels with subscribers on the node answering.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelSummary {
    pub channel: String,
    pub subscribers: usize,
    /// Present clients (cluster-wide), where the namespace keeps presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<usize>,
}

/// `{"status":..}`: `GET /healthz` and `GET /readyz` when all is well.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_answer_is_valid_json_with_what_it_has() {
        let recovery = [Unrecovered {
            kind: None,
            channel: "a".into(),
            recovered: false,
            position: Position { epoch: "e".into(), offset: 3 },
            cursor: None,
        }];
        let value: serde_json::Value = serde_json::from_str(&poll_answer("[]", "c1", Some("[{}]"), &recovery)).unwrap();
        assert_eq!(value["cursor"], "c1");
        assert_eq!(value["events"][0], serde_json::json!({}));
        assert_eq!(value["recovery"][0]["position"]["offset"], 3);
        let bare: serde_json::Value = serde_json::from_str(&poll_answer("[1]", "c2", None, &[])).unwrap();
        assert_eq!(bare, serde_json::json!({ "messages": [1], "cursor": "c2" }));
    }

    #[test]
    fn an_ndjson_publication_line_is_the_publication_with_its_cursor() {
        let line: Vec<u8> = ndjson_publication(r#"{"channel":"a","offset":1}"#, "c1").concat();
        assert_eq!(line, b"{\"channel\":\"a\",\"offset\":1,\"cursor\":\"c1\"}\n");
    }

    #[test]
    fn broadcast_outcomes_read_back_either_way() {
        let text = r#"{"results":[{"channel":"a","offset":1,"epoch":"e"},{"channel":"b","error":{"code":"x","message":"y"}}]}"#;
        let results: BroadcastResults = serde_json::from_str(text).unwrap();
        assert!(matches!(&results.results[0], BroadcastOutcome::Published(p) if p.offset == 1));
        assert!(matches!(&results.results[1], BroadcastOutcome::Failed { error, .. } if error.code == "x"));
        assert_eq!(serde_json::to_string(&results).unwrap(), text);
    }
}

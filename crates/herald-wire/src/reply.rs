//! Replies to commands: `{"id":N,"result":{..}}` or `{"id":N,"error":{"code","message"}}`, and
//! the results they carry.
//!
//! Results are written as text around parts already encoded (publications are encoded once
//! per publication), so the builders take JSON text where a part may be pre-encoded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::position::Position;

/// `{"id":N,"result":RESULT}`, `result_json` being the result's JSON text.
pub fn result(id: u64, result_json: &str) -> String {
    format!("{{\"id\":{id},\"result\":{result_json}}}")
}

/// `{"id":N,"error":{..}}`, or `{"error":{..}}` when the command's id could not be read.
pub fn error(id: Option<u64>, error: &ErrorBody) -> String {
    let body = serde_json::to_string(error).unwrap_or_else(|_| "{}".to_string());
    match id {
        Some(id) => format!("{{\"id\":{id},\"error\":{body}}}"),
        None => format!("{{\"error\":{body}}}"),
    }
}

/// The empty result: `{}` (ping, unsubscribe).
pub const EMPTY: &str = "{}";

/// The result of `connect` and `refresh`: who the connection is, and until when its token
/// holds: `expires` (Unix seconds) is there when a token was given (`Some`), `null` for a token
/// without `exp` (`Some(None)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    pub client: String,
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Option<u64>>,
}

/// The result of `subscribe`: the channel's position now, and, when `since` was given, whether
/// everything after it was recovered (`false`: reload your state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub channel: String,
    pub position: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// A page of history, the result of `history` and the body of
/// `GET /api/channels/{channel}/history`: `{"channel","publications":[..],"position","oldest"}`,
/// `publications_json` being an array of encoded publications.
pub fn history_page(channel: &str, publications_json: &str, position: &Position, oldest: u64) -> String {
    format!(
        "{{\"channel\":{},\"publications\":{publications_json},\"position\":{},\"oldest\":{oldest}}}",
        crate::json_string(channel),
        serde_json::to_string(position).unwrap_or_default(),
    )
}

/// The positions a client reached, per channel (in a disconnect push).
pub type Positions = BTreeMap<String, Position>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_id() {
        assert_eq!(result(3, EMPTY), r#"{"id":3,"result":{}}"#);
        let text = error(Some(4), &ErrorBody::new("not_subscribed", "not subscribed to a"));
        assert_eq!(text, r#"{"id":4,"error":{"code":"not_subscribed","message":"not subscribed to a"}}"#);
        assert_eq!(error(None, &ErrorBody::new("missing_id", "m")), r#"{"error":{"code":"missing_id","message":"m"}}"#);
    }

    #[test]
    fn expires_is_there_exactly_when_a_token_was_given() {
        let anonymous = Connected { client: "c".into(), user: None, expires: None };
        assert_eq!(serde_json::to_string(&anonymous).unwrap(), r#"{"client":"c","user":null}"#);
        let without_exp = Connected { client: "c".into(), user: Some("u".into()), expires: Some(None) };
        assert_eq!(serde_json::to_string(&without_exp).unwrap(), r#"{"client":"c","user":"u","expires":null}"#);
        let with_exp = Connected { expires: Some(Some(7)), ..without_exp };
        assert_eq!(serde_json::to_string(&with_exp).unwrap(), r#"{"client":"c","user":"u","expires":7}"#);
    }

    #[test]
    fn a_history_page_is_valid_json() {
        let position = Position { epoch: "e".into(), offset: 2 };
        let page = history_page("a\"b", "[1,2]", &position, 1);
        let value: serde_json::Value = serde_json::from_str(&page).unwrap();
        assert_eq!(value["channel"], "a\"b");
        assert_eq!(value["position"]["offset"], 2);
        assert_eq!(value["oldest"], 1);
    }
}

//! Client commands on the WebSocket: `{"id":N,"op":"...", ...}`, each answered by a reply with
//! the same id ([`crate::reply`]).
//!
//! The server decodes them with [`decode`]; a client builds a [`Command`] and serializes it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ErrorBody;
use crate::position::Position;
use crate::publication::present_raw_value;

/// The operations of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ping,
    Connect,
    Refresh,
    Subscribe,
    Unsubscribe,
    Publish,
    History,
    Presence,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Connect => "connect",
            Self::Refresh => "refresh",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::History => "history",
            Self::Presence => "presence",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Self::Ping,
            Self::Connect,
            Self::Refresh,
            Self::Subscribe,
            Self::Unsubscribe,
            Self::Publish,
            Self::History,
            Self::Presence,
        ]
        .into_iter()
        .find(|op| op.name() == name)
    }

    /// Whether the op names a channel.
    pub fn has_channel(self) -> bool {
        matches!(self, Self::Subscribe | Self::Unsubscribe | Self::Publish | Self::History | Self::Presence)
    }
}

/// A client command. Every field but `id` and `op` belongs to some ops only; the server checks
/// them per op, so an error can say exactly what is missing.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Command<'a> {
    pub id: Option<u64>,
    #[serde(borrow)]
    pub op: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Cow<'a, str>>,
    /// `subscribe`: recover from here; `history`: publications after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    #[serde(borrow, default, deserialize_with = "present_raw_value", skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<bool>,
    /// `connect`, `refresh`: a client JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `connect`: the client id of an earlier connection, taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `subscribe` without `since`: an HTTP transport's cursor to resume the channel from (a
    /// client moving from SSE or polling to WebSocket before it knew the channel's position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// `connect` without a token: what this client's presence entries show, where the
    /// namespace takes it (`anonymous_info`).
    #[serde(borrow, default, deserialize_with = "present_raw_value", skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
    /// `connect`: where the token's server-side subscriptions (`subs`) resume, by channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<std::collections::BTreeMap<String, Position>>,
}

impl<'a> Command<'a> {
    /// A command with an id and an op; set the op's fields, then serialize it.
    pub fn new(id: u64, op: Op) -> Self {
        Self { id: Some(id), op: Some(Cow::Borrowed(op.name())), ..Self::default() }
    }

    /// The channel it names, or the error for a missing one.
    pub fn channel(&self) -> Result<&str, ErrorBody> {
        self.channel.as_deref().ok_or_else(|| ErrorBody::new("missing_field", "missing field \"channel\""))
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

/// Decodes a client text frame: its id, its op and its fields, or the error reply's id (when
/// one could be read) and error. Pure, and never panics, whatever the input (fuzzed).
pub fn decode(text: &str) -> Result<(u64, Op, Command<'_>), (Option<u64>, ErrorBody)> {
    let command = serde_json::from_str::<Command<'_>>(text).map_err(|error| {
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|frame| frame.id);
        (id, ErrorBody::new("bad_request", format!("invalid command: {error}")))
    })?;
    let Some(id) = command.id else {
        return Err((None, ErrorBody::new("missing_id", "every command needs a numeric \"id\"")));
    };
    let op = match command.op.as_deref() {
        None => return Err((Some(id), ErrorBody::new("missing_field", "missing field \"op\""))),
        Some(name) => Op::from_name(name)
            .ok_or_else(|| (Some(id), ErrorBody::new("unknown_op", format!("unknown op {name:?}"))))?,
    };
    if op.has_channel() {
        command.channel().map_err(|error| (Some(id), error))?;
    }
    Ok((id, op, command))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property: no input panics the decoder, and every error has a code and a message.
    #[test]
    fn no_input_panics_the_decoder() {
        let valid = [
            r#"{"id":1,"op":"subscribe","channel":"a:b","since":{"epoch":"x","offset":3}}"#,
            r#"{"id":2,"op":"publish","channel":"a","data":{"k":[1,2,{"z":null}]},"idempotency_key":"k"}"#,
            r#"{"id":3,"op":"history","channel":"a","limit":5,"reverse":true}"#,
            r#"{"id":4,"op":"connect","token":"a.b.c"}"#,
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..100_000 {
            let text: String = if round % 3 == 0 {
                (0..rng.usize(..64)).map(|_| rng.char(..)).collect()
            } else {
                let mut chars: Vec<char> = valid[rng.usize(..valid.len())].chars().collect();
                for _ in 0..rng.usize(1..8) {
                    let at = rng.usize(..chars.len());
                    match rng.u8(..3) {
                        0 => {
                            chars.remove(at);
                        }
                        1 => chars.insert(at, rng.char(..)),
                        _ => chars[at] = ['{', '}', '"', ':', ',', '[', ']', '\\', '0', '-'][rng.usize(..10)],
                    }
                    if chars.is_empty() {
                        break;
                    }
                }
                chars.into_iter().collect()
            };
            if let Err((_, error)) = decode(&text) {
                assert!(!error.code.is_empty() && !error.message.is_empty(), "{text:?}");
            }
        }
        assert_eq!(decode(valid[0]).map(|(id, op, _)| (id, op)).ok(), Some((1, Op::Subscribe)));
        assert_eq!(
            decode(r#"{"id":9,"op":"subscribe"}"#).err().map(|(id, e)| (id, e.code.into_owned())),
            Some((Some(9), "missing_field".to_string()))
        );
    }

    #[test]
    fn a_command_built_by_a_client_decodes_to_the_same_fields() {
        let data = RawValue::from_string("{\"text\":\"hi\"}".to_string()).unwrap();
        let mut command = Command::new(7, Op::Publish);
        command.channel = Some("chat:lobby".into());
        command.data = Some(&data);
        let text = serde_json::to_string(&command).unwrap();
        assert_eq!(text, r#"{"id":7,"op":"publish","channel":"chat:lobby","data":{"text":"hi"}}"#);
        let (id, op, decoded) = decode(&text).unwrap();
        assert_eq!((id, op, decoded.channel().unwrap()), (7, Op::Publish, "chat:lobby"));
        assert_eq!(decoded.data.map(RawValue::get), Some("{\"text\":\"hi\"}"));
    }
}

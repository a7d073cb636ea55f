//! Webhooks on the wire: the body of every call Herald makes (`{"type","timestamp","data"}`)
//! and the management API under `/api/webhooks` (endpoints, their delivery log, replays).

use serde::{Deserialize, Serialize};

use crate::presence::PresenceEntry;

/// `{"type":..,"timestamp":..,"data":DATA}`, the body of every call; `timestamp` is RFC 3339
/// and `data_json` already encoded (for `publication`, the publication as every transport
/// delivers it).
pub fn envelope(event_type: &str, timestamp: &str, data_json: &str) -> String {
    format!(
        "{{\"type\":{},\"timestamp\":{},\"data\":{data_json}}}",
        crate::json_string(event_type),
        crate::json_string(timestamp)
    )
}

/// The data of `channel.occupied` and `channel.vacated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEventData {
    pub channel: String,
}

/// The data of `presence.join` and `presence.leave`: the entry, with its channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEventData {
    pub channel: String,
    #[serde(flatten)]
    pub entry: PresenceEntry,
}

/// `POST /api/webhooks`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    pub channels: Vec<String>,
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PATCH /api/webhooks/{id}`: what is given changes.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `false` also re-enables an endpoint Herald disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// A new secret; the old one keeps signing for the rotation grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Generate the new secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_secret: Option<bool>,
}

/// `POST /api/webhooks/{id}/replay`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Milliseconds since the Unix epoch: re-send everything created since then, not only the
    /// dead deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// The answer to a replay.
#[derive(Debug, Serialize, Deserialize)]
pub struct Replayed {
    pub requeued: u64,
}

/// An endpoint as the API shows it; the secret only where asked (create, show, rotation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub channels: Vec<String>,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub paused: bool,
    pub active: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<u64>,
    pub created_at: u64,
    pub from_config: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<u64>,
}

/// `GET /api/webhooks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointList {
    pub webhooks: Vec<Endpoint>,
}

/// One delivery in an endpoint's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// `msg_N`, also the `webhook-id` of its calls.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub channel: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub created_at: u64,
    pub next_attempt_at: Option<u64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub finished_at: Option<u64>,
}

/// `GET /api/webhooks/{id}/deliveries`: newest first; `next_before` pages on.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliveryLog {
    pub deliveries: Vec<Delivery>,
    pub next_before: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_event_is_the_entry_with_its_channel() {
        let data = PresenceEventData {
            channel: "chat:a".into(),
            entry: PresenceEntry { client: "c".into(), user: None, info: serde_json::Value::Null, since: 5 },
        };
        let value = serde_json::to_value(&data).unwrap();
        assert_eq!(value, serde_json::json!({"channel":"chat:a","client":"c","user":null,"info":null,"since":5}));
        let body = envelope("presence.join", "2026-01-01T00:00:00.000Z", &value.to_string());
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["type"], "presence.join");
        assert_eq!(body["data"]["client"], "c");
    }
}

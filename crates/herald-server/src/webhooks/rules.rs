//! What an endpoint may ask for: its channel patterns, event types and description, checked
//! the same way for endpoints from the configuration and from the API.

use herald_wire::ErrorBody;

/// The event types an endpoint may ask for.
pub const EVENT_TYPES: [&str; 5] =
    ["publication", "channel.occupied", "channel.vacated", "presence.join", "presence.leave"];
/// Event types only the Pusher door's endpoints take (`[[pusher.apps.webhooks]]`).
pub const PUSHER_EVENT_TYPES: [&str; 1] = ["pusher.cache_miss"];

/// The bit of `event_type` in a set of event types (0 for an unknown one).
pub fn event_bit(event_type: &str) -> u8 {
    EVENT_TYPES.iter().chain(&PUSHER_EVENT_TYPES).position(|known| *known == event_type).map_or(0, |index| 1 << index)
}

/// Channel patterns of an endpoint: 1 to 64, each a channel name in which `*` matches any run
/// within a `:`-separated segment (as in client tokens).
pub fn check_patterns(patterns: &[String]) -> Result<(), ErrorBody> {
    if patterns.is_empty() || patterns.len() > 64 {
        return Err(ErrorBody::new("invalid_channels", "give 1 to 64 channel patterns, like \"chat:*\""));
    }
    for pattern in patterns {
        let valid = !pattern.is_empty()
            && pattern.len() <= 255
            && pattern.chars().all(|c| c == '*' || c.is_ascii_alphanumeric() || "_-:./@=,;#".contains(c));
        if !valid {
            return Err(ErrorBody::new(
                "invalid_channels",
                format!("{pattern:?} is not a channel pattern (channel-name characters and *)"),
            ));
        }
    }
    Ok(())
}

/// Event types of an endpoint: at least one, each known.
pub fn check_events(events: &[String]) -> Result<(), ErrorBody> {
    if events.is_empty() {
        return Err(ErrorBody::new("invalid_events", format!("give at least one event type of {EVENT_TYPES:?}")));
    }
    match events.iter().find(|event| !EVENT_TYPES.contains(&event.as_str())) {
        Some(unknown) => {
            Err(ErrorBody::new("invalid_events", format!("{unknown:?} is not an event type; known: {EVENT_TYPES:?}")))
        }
        None => Ok(()),
    }
}

pub fn check_description(description: Option<&str>) -> Result<(), ErrorBody> {
    match description {
        Some(text) if text.len() > 1024 => {
            Err(ErrorBody::new("invalid_description", "a description is at most 1024 bytes"))
        }
        _ => Ok(()),
    }
}

//! Channel names: validation and the namespace a channel belongs to.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes (all allowed characters are ASCII).
pub const MAX_CHANNEL_NAME_LEN: usize = 255;

/// A validated channel name: 1–255 characters from `[A-Za-z0-9_\-:./@=,;#]` (`;` and `#` for
/// the Pusher door: its channel names allow `;`, and its user channels are `#server-to-user-…`).
///
/// Cheap to clone (shared string), because the same name is stored in the hub, the engine and
/// every publication of the channel.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannelName {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} characters long; at most {MAX_CHANNEL_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("channel name contains {0:?}; allowed are letters, digits and _ - : . / @ = , ; #")]
    ForbiddenCharacter(char),
}

impl ChannelName {
    pub fn new(name: &str) -> Result<Self, InvalidChannelName> {
        if name.is_empty() {
            return Err(InvalidChannelName::Empty);
        }
        if let Some(bad) = name.chars().find(|c| !is_allowed(*c)) {
            return Err(InvalidChannelName::ForbiddenCharacter(bad));
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(InvalidChannelName::TooLong(name.len()));
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, or `None` for the default namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(namespace, _)| namespace)
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/' | '@' | '=' | ',' | ';' | '#')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl TryFrom<&str> for ChannelName {
    type Error = InvalidChannelName;
    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let name = "Az09_-:./@=,;#";
        assert_eq!(ChannelName::new(name).unwrap().as_str(), name);
    }

    #[test]
    fn rejects_empty_long_and_forbidden() {
        assert_eq!(ChannelName::new(""), Err(InvalidChannelName::Empty));
        assert_eq!(ChannelName::new(&"a".repeat(256)), Err(InvalidChannelName::TooLong(256)));
        assert!(ChannelName::new(&"a".repeat(255)).is_ok());
        assert_eq!(ChannelName::new("a b"), Err(InvalidChannelName::ForbiddenCharacter(' ')));
        assert_eq!(ChannelName::new("é"), Err(InvalidChannelName::ForbiddenCharacter('é')));
        assert_eq!(ChannelName::new("a*"), Err(InvalidChannelName::ForbiddenCharacter('*')));
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(ChannelName::new("chat:lobby:1").unwrap().namespace(), Some("chat"));
        assert_eq!(ChannelName::new("lobby").unwrap().namespace(), None);
        assert_eq!(ChannelName::new(":x").unwrap().namespace(), Some(""));
    }
}

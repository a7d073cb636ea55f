//! Positions in a channel's stream: `(epoch, offset)`, and the epoch that names one history.

use std::fmt;
use std::sync::Arc;

/// Names one continuous history of a channel. It changes only when history was lost, which
/// tells clients holding an old position that a gap may exist.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    pub fn new(epoch: &str) -> Self {
        Self(Arc::from(epoch))
    }

    /// A fresh random epoch: 8 characters of `[0-9a-z]`, URL-safe.
    pub fn random() -> Self {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let epoch: String = (0..8).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
        Self(Arc::from(epoch))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A place in one channel's stream: the offset of the last publication covered (0 = before the
/// first) within one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_epochs_are_url_safe_and_differ() {
        let a = Epoch::random();
        assert_eq!(a.as_str().len(), 8);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, Epoch::random());
    }
}

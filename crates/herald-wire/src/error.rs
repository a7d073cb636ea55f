//! `{"code":"snake_case","message":"human words"}`, the inside of every error: in a reply to a
//! command, and in an HTTP error body `{"error":{..}}`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, `snake_case`: what programs look at.
    pub code: Cow<'static, str>,
    /// For people.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

/// An HTTP error body: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

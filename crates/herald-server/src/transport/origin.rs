//! The Origin allow-list shared by the browser transports: a foreign `Origin` gets `403`, a
//! request without one (not a browser's) is not refused for that.

use axum::http::{HeaderMap, StatusCode, header};

use crate::config::Settings;
use crate::error::ApiError;

pub fn check_origin(settings: &Settings, headers: &HeaderMap) -> Result<(), ApiError> {
    let (Some(allowed), Some(origin)) = (&settings.allowed_origins, headers.get(header::ORIGIN)) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", format!("origin {origin:?} is not allowed")))
}

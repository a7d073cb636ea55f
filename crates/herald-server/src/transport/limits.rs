//! Per-IP admission of long-lived HTTP subscriptions (SSE and NDJSON streams, parked polls).
//! Off unless `limits.max_streams_per_ip` is set: behind a proxy every client shares one IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::error::ApiError;

#[derive(Debug)]
pub struct StreamLimiter {
    per_ip: Option<NonZeroUsize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted stream; dropping it frees the place.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    ip: Option<IpAddr>,
}

impl StreamLimiter {
    pub fn new(per_ip: Option<NonZeroUsize>) -> Arc<Self> {
        Arc::new(Self { per_ip, open: Mutex::new(HashMap::new()) })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamPermit, ApiError> {
        let Some(limit) = self.per_ip else {
            return Ok(StreamPermit { limiter: self.clone(), ip: None });
        };
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= limit.get() {
            tracing::info!(%ip, limit = limit.get(), "stream refused: too many streams from one IP");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!("at most {limit} concurrent streams and long-polls per client address"),
            ));
        }
        *count += 1;
        Ok(StreamPermit { limiter: self.clone(), ip: Some(ip) })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.limiter.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_per_ip_and_frees_on_drop() {
        let limiter = StreamLimiter::new(NonZeroUsize::new(2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert_eq!(limiter.admit(a).unwrap_err().body.code, "too_many_streams");
        let _other = limiter.admit(b).unwrap();
        drop(first);
        assert!(limiter.admit(a).is_ok());
    }

    #[test]
    fn without_a_limit_everything_is_admitted() {
        let limiter = StreamLimiter::new(None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let permits: Vec<_> = (0..1000).map(|_| limiter.admit(ip).unwrap()).collect();
        assert_eq!(permits.len(), 1000);
    }
}

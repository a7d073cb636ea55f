//! Admission and rate limits: open connections (WebSockets, SSE/NDJSON streams, parked polls)
//! in total and per client IP, parked long-polls in total, and token buckets for publishing.
//!
//! All are off until configured: behind a proxy every client shares one IP (unless
//! `trusted_proxies` names the proxy, see [`crate::proxy`]). Once set they apply
//! to every client, loopback included. A refusal is a clear error and a log line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};

use crate::error::ApiError;
use crate::metrics::Transport;

#[derive(Debug)]
pub struct ConnectionLimiter {
    total_limit: Option<NonZeroUsize>,
    per_ip_limit: Option<NonZeroUsize>,
    parked_poll_limit: Option<NonZeroUsize>,
    total: AtomicUsize,
    parked_polls: AtomicUsize,
    /// Open connections of each transport, in the order of [`Transport`].
    by_transport: [AtomicUsize; Transport::ALL.len()],
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place. It knows who the connection is and
/// since when, for the one log line and the metric of its end ([`ConnectionPermit::closed`]).
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    peer: IpAddr,
    /// Counted against the per-address limit (there is one).
    per_ip: bool,
    opened: Instant,
    parked_poll: bool,
    transport: Transport,
}

impl ConnectionPermit {
    /// The connection ended for `reason`: counted, and logged at debug with how long it lasted.
    pub fn closed(&self, reason: &'static str) {
        crate::metrics::disconnected(self.transport, reason);
        tracing::debug!(
            transport = self.transport.label(),
            peer = %self.peer,
            reason,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}

fn refused(status: StatusCode, code: &'static str, message: String) -> ApiError {
    tracing::info!(code, %message, "connection refused by a limit");
    crate::metrics::refused(code);
    ApiError::new(status, code, message).with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
}

impl ConnectionLimiter {
    pub fn new(
        total_limit: Option<NonZeroUsize>,
        per_ip_limit: Option<NonZeroUsize>,
        parked_poll_limit: Option<NonZeroUsize>,
    ) -> Arc<Self> {
        Arc::new(Self {
            total_limit,
            per_ip_limit,
            parked_poll_limit,
            total: AtomicUsize::new(0),
            parked_polls: AtomicUsize::new(0),
            by_transport: Default::default(),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn open_connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Open connections by transport (parked long-polls among them).
    pub fn open_by_transport(&self) -> [(Transport, usize); Transport::ALL.len()] {
        Transport::ALL.map(|transport| (transport, self.by_transport[transport as usize].load(Ordering::Relaxed)))
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr, transport: Transport) -> Result<ConnectionPermit, ApiError> {
        // Each counter is taken first and given back if a later check refuses.
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        self.by_transport[transport as usize].fetch_add(1, Ordering::AcqRel);
        let mut permit = ConnectionPermit {
            limiter: self.clone(),
            peer: ip,
            per_ip: false,
            opened: Instant::now(),
            parked_poll: false,
            transport,
        };
        if let Some(limit) = self.total_limit
            && total > limit.get()
        {
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!("the server holds its maximum of {limit} connections"),
            ));
        }
        if transport == Transport::LongPoll {
            let parked = self.parked_polls.fetch_add(1, Ordering::AcqRel) + 1;
            permit.parked_poll = true;
            if let Some(limit) = self.parked_poll_limit
                && parked > limit.get()
            {
                return Err(refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_polls",
                    format!("at most {limit} long-polls wait at once; poll again shortly"),
                ));
            }
        }
        if let Some(limit) = self.per_ip_limit {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = per_ip.entry(ip).or_default();
            if *count >= limit.get() {
                return Err(refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections_from_ip",
                    format!("at most {limit} concurrent connections per client address"),
                ));
            }
            *count += 1;
            permit.per_ip = true;
        }
        tracing::debug!(transport = transport.label(), peer = %ip, "connection opened");
        Ok(permit)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        self.limiter.by_transport[self.transport as usize].fetch_sub(1, Ordering::AcqRel);
        if self.parked_poll {
            self.limiter.parked_polls.fetch_sub(1, Ordering::AcqRel);
        }
        if !self.per_ip {
            return;
        }
        let ip = self.peer;
        let mut per_ip = self.limiter.per_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `rate` (one second of burst).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(rate: NonZeroUsize) -> Self {
        let rate = rate.get() as f64;
        Self { rate, tokens: rate, refilled: Instant::now() }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_many(1)
    }

    /// Takes `count` tokens if there are that many (all or nothing).
    pub fn try_take_many(&mut self, count: usize) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= count as f64 {
            self.tokens -= count as f64;
            true
        } else {
            false
        }
    }

    /// How long until the next token.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

/// Token buckets per caller: API keys (by index) or client tokens (by user) publishing through
/// the server API.
#[derive(Debug)]
pub struct KeyRates<K> {
    rate: Option<NonZeroUsize>,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: std::hash::Hash + Eq + std::fmt::Debug> KeyRates<K> {
    pub fn new(rate: Option<NonZeroUsize>) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `count` publishes from the caller's bucket (all or nothing), or says when to retry.
    pub fn take(&self, key: K, count: usize) -> Result<(), ApiError> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > 100_000 {
            // Callers that come and go (users) must not grow this without bound.
            buckets.clear();
        }
        let bucket = buckets.entry(key).or_insert_with(|| TokenBucket::new(rate));
        if count <= rate.get() && bucket.try_take_many(count) {
            return Ok(());
        }
        let retry = bucket.retry_after().as_secs().max(1).to_string();
        tracing::info!(count, "publish refused: over the caller's publish rate");
        crate::metrics::refused("rate_limited");
        Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("at most {rate} publishes a second"))
            .with_header(header::RETRY_AFTER, HeaderValue::from_str(&retry).unwrap_or(HeaderValue::from_static("1"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_each_limit_and_frees_on_drop() {
        let limiter = ConnectionLimiter::new(NonZeroUsize::new(3), NonZeroUsize::new(2), NonZeroUsize::new(1));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limiter.admit(a, Transport::WebSocket).unwrap();
        let _second = limiter.admit(a, Transport::Sse).unwrap();
        assert_eq!(limiter.admit(a, Transport::WebSocket).unwrap_err().body.code, "too_many_connections_from_ip");
        let poll = limiter.admit(b, Transport::LongPoll).unwrap();
        assert_eq!(limiter.admit(b, Transport::WebSocket).unwrap_err().body.code, "too_many_connections");
        drop(poll);
        assert_eq!(limiter.open_connections(), 2);
        let _poll = limiter.admit(b, Transport::LongPoll).unwrap();
        drop(first);
        assert_eq!(limiter.admit(b, Transport::LongPoll).unwrap_err().body.code, "too_many_polls");
        assert_eq!(limiter.open_connections(), 2, "refusals give their places back");
    }

    #[test]
    fn without_limits_everything_is_admitted() {
        let limiter = ConnectionLimiter::new(None, None, None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let permits: Vec<_> = (0..1000).map(|_| limiter.admit(ip, Transport::WebSocket).unwrap()).collect();
        assert_eq!(limiter.open_connections(), permits.len());
    }

    #[test]
    fn a_bucket_allows_its_rate_then_refills() {
        let mut bucket = TokenBucket::new(NonZeroUsize::new(5).unwrap());
        assert_eq!((0..10).filter(|_| bucket.try_take()).count(), 5);
        bucket.refilled -= Duration::from_millis(400);
        assert_eq!((0..10).filter(|_| bucket.try_take()).count(), 2);
    }
}

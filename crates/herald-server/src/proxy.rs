//! Behind a reverse proxy: the client's address from `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`, believed only when the connection comes from one of `trusted_proxies`.
//! The address then stands for the client everywhere the peer address is used (per-address
//! limits, logs, the Pusher fallbacks' session binding): a layer puts it in the request's
//! `ConnectInfo` before any handler runs.
//!
//! Each proxy appends the address it received from; the chain is read from the right, skipping
//! trusted proxies, and the first address that is not one is the client. Anything to its left
//! was written by the client itself and is not believed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// From CIDRs (`10.0.0.0/8`) or single addresses (`127.0.0.1`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let nets = entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an address or a CIDR like 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(nets.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy that says whom it
    /// forwards for.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        chain.into_iter().rev().find(|ip| !self.trusts(*ip)).unwrap_or(peer)
    }
}

/// The addresses a request passed through, oldest first: `Forwarded: for=` if present, else
/// `X-Forwarded-For`. An entry that is not an address (`unknown`, an obfuscated name) ends the
/// chain there: nothing left of it can be told apart from the client's own words.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let forwarded: Vec<&str> = headers.get_all("forwarded").iter().filter_map(|value| value.to_str().ok()).collect();
    let entries: Vec<String> = if forwarded.is_empty() {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|entry| entry.trim().to_string())
            .collect()
    } else {
        forwarded
            .iter()
            .flat_map(|value| value.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"').to_string())
                })
            })
            .collect()
    };
    let mut chain = Vec::with_capacity(entries.len());
    for entry in entries.iter().rev() {
        match parse_node(entry) {
            Some(ip) => chain.push(ip),
            None => break,
        }
    }
    chain.reverse();
    chain
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address.ip());
    }
    text.strip_prefix('[')?.split_once(']')?.0.parse().ok()
}

/// The IPv4 address inside an IPv4-mapped IPv6 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The layer: the request's `ConnectInfo` becomes the client's address (the port stays the
/// peer's; it means nothing past a proxy).
pub async fn client_address(State(proxies): State<TrustedProxies>, mut request: Request) -> Request {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let client = proxies.client(peer.ip(), request.headers());
        if client != peer.ip() {
            request.extensions_mut().insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &xff), ip("203.0.113.7"), "the client's own claim is skipped");
        assert_eq!(proxies.client(ip("192.0.2.9"), &xff), ip("192.0.2.9"), "an untrusted peer's headers are ignored");
        assert_eq!(proxies.client(ip("::ffff:127.0.0.1"), &xff), ip("203.0.113.7"), "IPv4-mapped peers count");
        let forwarded = headers(&[
            ("forwarded", "for=198.51.100.17;proto=https, for=\"[2001:db8:cafe::17]:4711\""),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &forwarded), ip("2001:db8:cafe::17"), "Forwarded wins");
        let split = headers(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.0.0.5")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &split), ip("198.51.100.1"), "several header lines are one list");
        let unknown = headers(&[("forwarded", "for=198.51.100.1, for=unknown, for=10.0.0.3")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &unknown), ip("10.0.0.2"), "nothing believable: the peer");
        assert_eq!(proxies.client(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
        assert!(TrustedProxies::parse(&["not-a-net".into()]).is_err());
    }
}

//! Where webhooks may go: `http(s)` URLs whose addresses are public, unless the configuration
//! says otherwise (`allow_private_webhook_targets = true`; dev mode allows loopback). Checked
//! when an endpoint is registered and again at every delivery, through the HTTP client's own
//! resolver, so a name that later resolves to an internal address is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use herald_wire::ErrorBody;

/// Which addresses webhooks may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_private: bool,
    pub allow_loopback: bool,
}

impl TargetPolicy {
    pub fn allows(self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || (self.allow_loopback && canonical(ip).is_loopback())
    }

    /// Checks a URL at registration: its form, and that its host resolves to at least one
    /// address webhooks may reach.
    pub async fn check_url(self, text: &str) -> Result<Url, ErrorBody> {
        let url = parse_url(text)?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|error| ErrorBody::new("invalid_url", format!("cannot resolve {host}: {error}")))?
                .collect(),
        };
        if !addresses.iter().any(|address| self.allows(address.ip())) {
            return Err(refused(&host));
        }
        Ok(url)
    }
}

/// A URL a webhook may be sent to, in form: `http` or `https`, a host, no credentials.
pub fn parse_url(text: &str) -> Result<Url, ErrorBody> {
    if text.len() > 2048 {
        return Err(ErrorBody::new("invalid_url", "a webhook URL is at most 2048 characters"));
    }
    let url = Url::parse(text).map_err(|error| ErrorBody::new("invalid_url", format!("{text:?}: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ErrorBody::new("invalid_url", format!("{text:?}: only http and https URLs")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ErrorBody::new("invalid_url", format!("{text:?} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ErrorBody::new("invalid_url", "credentials in a webhook URL are not supported"));
    }
    Ok(url)
}

fn refused(host: &str) -> ErrorBody {
    ErrorBody::new(
        "webhook_target_not_allowed",
        format!(
            "{host} is a loopback, private, link-local or otherwise internal address; \
             set allow_private_webhook_targets = true to allow it"
        ),
    )
}

/// The IPv4 address inside an IPv4-mapped IPv6 address, so it gets the IPv4 rules.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast, reserved or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded_v4 =
        || Ipv4Addr::new((segments[6] >> 8) as u8, segments[6] as u8, (segments[7] >> 8) as u8, segments[7] as u8);
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4()); // NAT64
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 metadata included)
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// The HTTP client's resolver: system resolution, keeping only addresses the policy allows.
pub struct GuardedResolver(pub TargetPolicy);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|address| policy.allows(address.ip())).collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = refused(&host).message.into();
                return Err(error);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            assert!(!is_public(ip(internal)), "{internal}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn the_policy_opens_loopback_or_everything() {
        let strict = TargetPolicy { allow_private: false, allow_loopback: false };
        let dev = TargetPolicy { allow_private: false, allow_loopback: true };
        let open = TargetPolicy { allow_private: true, allow_loopback: false };
        assert!(!strict.allows(ip("127.0.0.1")));
        assert!(dev.allows(ip("127.0.0.1")) && dev.allows(ip("::ffff:127.0.0.1")) && !dev.allows(ip("10.0.0.1")));
        assert!(open.allows(ip("10.0.0.1")) && open.allows(ip("169.254.169.254")));
    }

    #[tokio::test]
    async fn urls_are_checked_in_form_and_address() {
        let strict = TargetPolicy { allow_private: false, allow_loopback: false };
        for (url, code) in [
            ("not a url", "invalid_url"),
            ("ftp://example.com/x", "invalid_url"),
            ("http://user:pw@example.com/", "invalid_url"),
            ("http://127.0.0.1:9/hook", "webhook_target_not_allowed"),
            ("http://[::1]/hook", "webhook_target_not_allowed"),
            ("http://169.254.169.254/latest/meta-data", "webhook_target_not_allowed"),
            ("http://localhost:9/hook", "webhook_target_not_allowed"),
        ] {
            assert_eq!(strict.check_url(url).await.unwrap_err().code, code, "{url}");
        }
        let dev = TargetPolicy { allow_private: false, allow_loopback: true };
        assert!(dev.check_url("http://127.0.0.1:9/hook").await.is_ok());
    }
}

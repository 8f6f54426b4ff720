//! Which addresses a tenant's URLs (tools, webhooks) may reach: public ones, and those in
//! the operator's `allowed_private_networks`. Checked on the addresses a host name
//! resolves to (by the HTTP client's resolver, so the address checked is the address
//! connected to) and on literal addresses in a URL ([`check_target`]), for the first
//! request and every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address was refused; found in a failed request's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The refusal somewhere in a failed request's error chain, if an address was refused.
pub fn refusal<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// Whether `ip` may be reached: public, or in an allowed network.
pub fn permitted(ip: IpAddr, allowed: &[IpNet]) -> bool {
    allowed.iter().any(|n| n.contains(&ip)) || is_public(ip)
}

/// Not loopback, private, link-local (cloud metadata included), CGNAT, unspecified,
/// multicast, broadcast or reserved; IPv6 forms that embed an IPv4 address are judged by
/// that address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // CGNAT (100.64.0.0/10; Alibaba's metadata address is in it)
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, benchmarking, reserved
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // unique local (fc00::/7, AWS's metadata fd00:ec2::254 among them)
        || (segments[0] & 0xfe00) == 0xfc00
        // link-local (fe80::/10)
        || (segments[0] & 0xffc0) == 0xfe80
        // IPv4-compatible (deprecated), documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]
        || (segments[0] == 0x2001 && segments[1] == 0x0db8))
}

/// Refuses a URL whose scheme is not allowed (`https`, and `http` when `allow_http`) or
/// whose host is a literal address that may not be reached (names are checked by
/// [`GuardedResolver`] when connecting); the reason otherwise.
pub fn check_target(url: &reqwest::Url, allow_http: bool, allowed: &[IpNet]) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        other => return Err(format!("{other}:// URLs are not allowed")),
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match literal {
        Some(ip) if !permitted(ip, allowed) => Err(format!("{ip} is not a public address")),
        _ => Ok(()),
    }
}

/// The HTTP client's resolver for tenants' URLs: resolves as the system does and keeps only the
/// permitted addresses; none left is a [`Refused`] error.
#[derive(Debug)]
pub struct GuardedResolver {
    pub allowed: Arc<Vec<IpNet>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| permitted(a.ip(), &allowed));
            if ok.is_empty() {
                let ip = refused
                    .first()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                return Err(Box::new(Refused(format!(
                    "{host} resolves to {ip}, which is not a public address"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn private_and_special_addresses_are_refused_unless_allowed() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(!permitted(ip(refused), &[]), "{refused} was permitted");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(permitted(ip(public), &[]), "{public} was refused");
        }
        let loopback: IpNet = "127.0.0.0/8".parse().expect("a network");
        assert!(permitted(ip("127.0.0.1"), &[loopback]));
        assert!(!permitted(ip("10.0.0.1"), &[loopback]));
    }
}

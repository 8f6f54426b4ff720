//! Limits at the edge for callers nobody vouches for. The widget's `Origin` header and
//! the mobile app's key are public (a script can send both), so opening sessions is
//! limited per client address (`edge.sessions_per_ip_per_minute`) and per tenant
//! (`plans.<plan>.sessions_per_minute`), and each session's sends per minute
//! (`edge.sends_per_session_per_minute`), across every replica (Redis buckets). Over a
//! limit: 429 `rate_limited` with `Retry-After`, before anything is stored. When Redis
//! cannot answer, the request goes through (logged, counted): an outage of the limiter
//! must not refuse every user.
//!
//! The client's address is the socket's peer, or — only when that peer is one of
//! `http.trusted_proxies` — the right-most `X-Forwarded-For` address that is not a
//! trusted proxy itself (the left-most entries are whatever the client wrote).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use ipnet::IpNet;
use shared::metric;
use shared::settings::EdgeSettings;

use crate::error::{ApiError, Result};

/// The edge's settings, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub limits: EdgeSettings,
    trusted_proxies: Vec<IpNet>,
}

impl Edge {
    /// From validated settings (entries that are a bare address become a /32 or /128).
    pub(crate) fn new(limits: EdgeSettings, trusted_proxies: &[String]) -> Self {
        let trusted_proxies = trusted_proxies
            .iter()
            .filter_map(|p| {
                p.parse::<IpNet>()
                    .ok()
                    .or_else(|| p.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect();
        Self {
            limits,
            trusted_proxies,
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address, when the request came over a socket.
    pub(crate) fn client_ip(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Option<IpAddr> {
        let peer = peer?.ip();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .iter()
                .rev()
                .find(|ip| !self.trusted(**ip))
                .or(forwarded.first())
                .copied()
                .unwrap_or(peer),
        )
    }
}

/// What a limit's bucket said: `Ok(None)` under the limit, `Ok(Some(wait))` over it.
pub(crate) fn enforce(limit: &'static str, taken: shared::Result<Option<Duration>>) -> Result<()> {
    match taken {
        Ok(None) => Ok(()),
        Ok(Some(wait)) => {
            metrics::counter!(metric::EDGE_LIMITED, "limit" => limit).increment(1);
            Err(ApiError::rate_limited(
                format!("too many requests ({limit}); retry after the Retry-After seconds"),
                wait.as_secs().max(1),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, limit, "edge limit unavailable; letting the request through");
            metrics::counter!(metric::EDGE_LIMIT_UNAVAILABLE, "limit" => limit).increment(1);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(trusted: &[&str]) -> Edge {
        let trusted: Vec<String> = trusted.iter().map(|s| (*s).to_owned()).collect();
        Edge::new(
            EdgeSettings {
                sessions_per_ip_per_minute: 1,
                sends_per_session_per_minute: 1,
            },
            &trusted,
        )
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().expect("header"));
        h
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let peer: SocketAddr = "203.0.113.7:4000".parse().expect("addr");
        let spoofed = forwarded("198.51.100.1");
        let ip = |e: &Edge, h: &HeaderMap| e.client_ip(Some(peer), h).map(|i| i.to_string());
        assert_eq!(
            ip(&edge(&[]), &spoofed).as_deref(),
            Some("203.0.113.7"),
            "an untrusted peer's X-Forwarded-For is ignored"
        );
        let behind = edge(&["203.0.113.0/24", "10.0.0.1"]);
        assert_eq!(
            ip(&behind, &forwarded("198.51.100.9, 192.0.2.5, 10.0.0.1")).as_deref(),
            Some("192.0.2.5"),
            "the right-most address no trusted proxy added"
        );
        assert_eq!(
            ip(&behind, &HeaderMap::new()).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(edge(&[]).client_ip(None, &spoofed), None);
    }
}

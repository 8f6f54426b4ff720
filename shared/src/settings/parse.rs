//! Settings values parsed into what they mean as they are read: durations as
//! [`Duration`] (from the seconds the keys are named in), the environment as an
//! [`Environment`]. A value that does not parse fails the load with a message naming its
//! key (the `config` crate adds the key to a deserialiser's error).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Which deployment this is (`$CHATFLEET_ENV`); selects `deploy/config/<env>.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine (the default).
    Local,
    /// Test runs: throw-away databases, queues and keys.
    Test,
    Staging,
    /// Development secrets are refused.
    Production,
}

/// A whole number of seconds, at least one.
pub(super) fn positive_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "must be a positive number of seconds",
        )),
        s => Ok(Duration::from_secs(s)),
    }
}

/// A positive number of days (fractions allowed: tests hold for seconds), at most ten
/// years.
pub(super) fn positive_days<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let days = f64::deserialize(d)?;
    if !(days > 0.0 && days <= 3650.0) {
        return Err(serde::de::Error::custom(
            "must be a positive number of days, at most 3650",
        ));
    }
    Ok(Duration::from_secs_f64(days * 86_400.0).max(Duration::from_secs(1)))
}

/// A socket address, or the empty string for none.
pub(super) fn optional_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is not an address like 127.0.0.1:8081"))
    })
}

/// A whole number of milliseconds, 1 to 10,000.
pub(super) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match u64::deserialize(d)? {
        ms @ 1..=10_000 => Ok(Duration::from_millis(ms)),
        _ => Err(serde::de::Error::custom("must be 1 to 10000 milliseconds")),
    }
}

/// A non-empty list of positive whole numbers of seconds.
pub(super) fn positive_seconds_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<Duration>, D::Error> {
    let list = Vec::<u64>::deserialize(d)?;
    if list.is_empty() || list.contains(&0) {
        return Err(serde::de::Error::custom(
            "must be a non-empty list of positive numbers of seconds",
        ));
    }
    Ok(list.into_iter().map(Duration::from_secs).collect())
}

/// A non-empty list of whole numbers of seconds (zeros allowed), at most a day each.
pub(super) fn seconds_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let list = Vec::<u64>::deserialize(d)?;
    if list.is_empty() || list.iter().any(|s| *s > 86_400) {
        return Err(serde::de::Error::custom(
            "must be a non-empty list of seconds, each at most 86400",
        ));
    }
    Ok(list.into_iter().map(Duration::from_secs).collect())
}

/// The networks of a list that parse (lists are validated at load).
pub(super) fn networks(list: &[String]) -> Vec<ipnet::IpNet> {
    list.iter().filter_map(|n| network(n)).collect()
}

/// A network given as a CIDR block or a single address (a /32 or /128).
pub(super) fn network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

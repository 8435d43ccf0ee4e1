//! Optional source check: deliveries are accepted only from GitHub's webhook address ranges
//! (the `hooks` list of `GET /meta`, refreshed periodically). Off by default, because behind a
//! proxy every request seems to come from the proxy: then the client address is read from a
//! forwarded-for header, but only when the request comes from a configured trusted proxy, and
//! the header is read from the right, skipping trusted proxies, so a client cannot forge it.

use std::net::IpAddr;
use std::sync::RwLock;

use ipnet::IpNet;

use crate::config::SourceCheckSettings;

/// Why a delivery's source was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceRefusal {
    #[error(
        "deliveries are accepted only from GitHub's webhook addresses (GET /meta), and {0} is not one; if hookdock is behind a proxy, set source_check.forwarded_header and source_check.trusted_proxies"
    )]
    NotGithub(IpAddr),
    #[error(
        "GitHub's webhook address ranges have not been loaded yet (GET /meta failed); the delivery can be redelivered once they are"
    )]
    RangesUnknown,
}

impl SourceRefusal {
    /// The error code answered (and counted) for it.
    pub fn code(&self) -> &'static str {
        match self {
            SourceRefusal::NotGithub(_) => "source_not_allowed",
            SourceRefusal::RangesUnknown => "source_ranges_unknown",
        }
    }
}

pub struct SourceGuard {
    enabled: bool,
    forwarded_header: Option<String>,
    trusted_proxies: Vec<IpNet>,
    ranges: RwLock<Option<Vec<IpNet>>>,
}

impl SourceGuard {
    pub fn new(settings: &SourceCheckSettings) -> SourceGuard {
        SourceGuard {
            enabled: settings.enabled,
            forwarded_header: settings
                .forwarded_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
            // Validated with the settings; an entry that does not parse is skipped.
            trusted_proxies: settings
                .trusted_proxies
                .iter()
                .filter_map(|p| parse_net(p))
                .collect(),
            ranges: RwLock::new(None),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The header holding the client address behind a trusted proxy (lowercase).
    pub fn forwarded_header(&self) -> Option<&str> {
        self.forwarded_header.as_deref()
    }

    /// Replaces GitHub's ranges; entries that do not parse are skipped. Returns how many apply.
    pub fn set_ranges<S: AsRef<str>>(&self, cidrs: &[S]) -> usize {
        let nets: Vec<IpNet> = cidrs.iter().filter_map(|c| parse_net(c.as_ref())).collect();
        let count = nets.len();
        match self.ranges.write() {
            Ok(mut guard) => *guard = Some(nets),
            Err(poisoned) => *poisoned.into_inner() = Some(nets),
        }
        count
    }

    /// The address a request comes from: the peer, or, when the peer is a trusted proxy, the
    /// rightmost address of the forwarded-for header that is not a trusted proxy.
    pub fn client_address(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        if self.forwarded_header.is_none() || !self.is_trusted(peer) {
            return peer;
        }
        let Some(forwarded) = forwarded else {
            return peer;
        };
        let mut client = peer;
        for hop in forwarded.rsplit(',') {
            match hop.trim().parse::<IpAddr>().map(canonical) {
                Ok(ip) if self.is_trusted(ip) => client = ip,
                Ok(ip) => return ip,
                // A malformed entry: stop at the last address we could trust.
                Err(_) => return client,
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Whether a request from `peer` (with the forwarded-for header's value, if any) may
    /// deliver.
    pub fn admit(&self, peer: IpAddr, forwarded: Option<&str>) -> Result<(), SourceRefusal> {
        if !self.enabled {
            return Ok(());
        }
        self.check(self.client_address(peer, forwarded))
    }

    /// Whether a delivery from `client` is accepted.
    pub fn check(&self, client: IpAddr) -> Result<(), SourceRefusal> {
        if !self.enabled {
            return Ok(());
        }
        let guard = match self.ranges.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let ranges = guard.as_ref().ok_or(SourceRefusal::RangesUnknown)?;
        let client = canonical(client);
        if ranges.iter().any(|n| n.contains(&client)) {
            Ok(())
        } else {
            Err(SourceRefusal::NotGithub(client))
        }
    }
}

/// `a.b.c.d/n`, or a single address.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(enabled: bool, header: Option<&str>, proxies: &[&str]) -> SourceGuard {
        SourceGuard::new(&SourceCheckSettings {
            enabled,
            refresh_hours: 24,
            forwarded_header: header.map(str::to_owned),
            trusted_proxies: proxies.iter().map(|p| p.to_string()).collect(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_github_ranges_pass_once_loaded() {
        let g = guard(true, None, &[]);
        assert_eq!(
            g.check(ip("140.82.115.1")),
            Err(SourceRefusal::RangesUnknown)
        );
        assert_eq!(
            g.set_ranges(&["140.82.112.0/20", "2a0a:a440::/29", "nonsense"]),
            2
        );
        assert_eq!(g.check(ip("140.82.115.1")), Ok(()));
        assert_eq!(g.check(ip("::ffff:140.82.115.1")), Ok(()));
        assert_eq!(g.check(ip("2a0a:a440::1")), Ok(()));
        assert_eq!(
            g.check(ip("203.0.113.9")),
            Err(SourceRefusal::NotGithub(ip("203.0.113.9")))
        );
        assert_eq!(guard(false, None, &[]).check(ip("203.0.113.9")), Ok(()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let g = guard(true, Some("X-Forwarded-For"), &["10.0.0.0/8", "127.0.0.1"]);
        // From the proxy: the rightmost untrusted hop is the client.
        assert_eq!(
            g.client_address(ip("10.1.2.3"), Some("6.6.6.6, 140.82.115.1, 10.9.9.9")),
            ip("140.82.115.1")
        );
        assert_eq!(g.client_address(ip("127.0.0.1"), None), ip("127.0.0.1"));
        assert_eq!(
            g.client_address(ip("10.1.2.3"), Some("10.2.2.2")),
            ip("10.2.2.2")
        );
        assert_eq!(
            g.client_address(ip("10.1.2.3"), Some("garbage, 10.2.2.2")),
            ip("10.2.2.2")
        );
        // From anyone else the header is ignored: it could be forged.
        assert_eq!(
            g.client_address(ip("203.0.113.9"), Some("140.82.115.1")),
            ip("203.0.113.9")
        );
        // Without a configured header it is never read.
        let plain = guard(true, None, &["10.0.0.0/8"]);
        assert_eq!(
            plain.client_address(ip("10.1.2.3"), Some("140.82.115.1")),
            ip("10.1.2.3")
        );
    }
}

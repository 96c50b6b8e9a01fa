//! The client's address, for callers without a token: the connection's
//! peer, or, when that peer is one of our own proxies
//! (`NWS_TRUSTED_PROXIES`), the address the proxies say they forwarded
//! for. Headers from anyone else are ignored: a client could write any
//! address there and get a fresh bucket with every request.

use std::net::IpAddr;

use http::HeaderMap;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(value: &str) -> Result<Self, String> {
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{value:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{value:?}: the prefix length must be 0–{max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:10.0.0.1` is `10.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `NWS_TRUSTED_PROXIES`: networks separated by commas.
pub fn parse_networks(value: &str) -> Result<Vec<Network>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(Network::parse)
        .collect()
}

/// The client's address: from the right of the forwarding chain, the
/// first hop that is not one of ours.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let chain = forwarded_for(headers);
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        client = canonical(hop);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The addresses in `Forwarded` (RFC 7239) if present, else in
/// `X-Forwarded-For`, nearest last. Unparsable entries (`unknown`,
/// obfuscated identifiers) end the chain there.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let forwarded = values(http::header::FORWARDED);
    let addresses: Vec<Option<IpAddr>> = if forwarded.is_empty() {
        values(http::header::HeaderName::from_static("x-forwarded-for"))
            .into_iter()
            .map(parse_node)
            .collect()
    } else {
        forwarded
            .into_iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(name, _)| name.eq_ignore_ascii_case("for"))
                    .and_then(|(_, node)| parse_node(node))
            })
            .collect()
    };
    // Keep only the trustworthy tail: what follows the last bad entry.
    let start = addresses.iter().rposition(Option::is_none).map_or(0, |i| i + 1);
    addresses[start..].iter().flatten().copied().collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted = parse_networks("10.0.0.0/8, ::1").unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(outsider, &spoofed, &trusted), outsider);

        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        // The client wrote the first entry itself; our proxies appended the rest.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            client_ip(proxy, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );

        let rfc = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, for=\"[2001:db8::7]:4711\"",
        )]);
        assert_eq!(
            client_ip(proxy, &rfc, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );

        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &headers(&[]), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        let unknown = headers(&[("x-forwarded-for", "7.7.7.7, unknown")]);
        assert_eq!(client_ip(proxy, &unknown, &trusted), proxy);
    }

    #[test]
    fn networks_parse_or_explain() {
        assert!(
            Network::parse("10.0.0.0/8")
                .unwrap()
                .contains("10.200.0.1".parse().unwrap())
        );
        assert!(
            !Network::parse("10.0.0.0/8")
                .unwrap()
                .contains("11.0.0.1".parse().unwrap())
        );
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").unwrap_err().contains("prefix"));
        assert!(Network::parse("proxy.local").is_err());
    }
}

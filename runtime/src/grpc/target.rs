//! Where an upstream is, as its `NWS_*_URL` setting says: one URL, or a DNS
//! name whose every address gets a connection of its own and a share of
//! the calls ([`super::balance`]).

use std::{fmt, net::SocketAddr, time::Duration};

use http::Uri;

use super::balance::Routing;

/// How often a DNS name is resolved again when NWS_RESOLVE_INTERVAL does
/// not say: Kubernetes' CoreDNS answers with a 5 s TTL by default.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// An upstream gRPC service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `http://host:port` or `https://host:port`: one connection, to the
    /// first address the name resolves to, kept while it works. Behind a
    /// Kubernetes ClusterIP that is one pod for the connection's life.
    Url(Uri),
    /// `dns:///host:port` or `dns://server:port/host:port` (gRPC's naming):
    /// every address the name resolves to, resolved again periodically.
    Dns(DnsTarget),
}

/// A name resolved to several endpoints, and how calls are spread over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    /// The DNS server to ask; `None`: the system's resolver (`getaddrinfo`:
    /// `/etc/hosts`, `resolv.conf` search domains), as every other name.
    pub server: Option<SocketAddr>,
    pub host: String,
    pub port: u16,
    pub routing: Routing,
    pub resolve_interval: Duration,
}

impl UpstreamTarget {
    /// With `interval` between resolutions, for a DNS target.
    #[must_use]
    pub fn resolved_every(mut self, interval: Duration) -> Self {
        if let UpstreamTarget::Dns(target) = &mut self {
            target.resolve_interval = interval;
        }
        self
    }

    /// With calls spread by `routing`, for a DNS target (a URL has one
    /// endpoint).
    #[must_use]
    pub fn routed_by(mut self, routing: Routing) -> Self {
        if let UpstreamTarget::Dns(target) = &mut self {
            target.routing = routing;
        }
        self
    }

    pub(crate) fn is_https(&self) -> bool {
        matches!(self, UpstreamTarget::Url(uri) if uri.scheme_str() == Some("https"))
    }
}

impl std::str::FromStr for UpstreamTarget {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        parse_upstream_url(value)
    }
}

impl From<Uri> for UpstreamTarget {
    fn from(uri: Uri) -> Self {
        UpstreamTarget::Url(uri)
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamTarget::Url(uri) => uri.fmt(f),
            UpstreamTarget::Dns(target) => target.fmt(f),
        }
    }
}

impl fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = self.server.map(|server| server.to_string()).unwrap_or_default();
        write!(f, "dns://{server}/{}:{}", self.host, self.port)
    }
}

const EXPECTED: &str =
    "expected http://host:port, https://host:port, dns:///host:port or dns://dns-server-ip:port/host:port";

/// The URL of a gRPC service this process calls: `http://storage:50052`,
/// `https://…`, or a name to balance over, `dns:///optimizer-headless:50051`.
pub fn parse_upstream_url(value: &str) -> Result<UpstreamTarget, String> {
    if let Some(rest) = value.strip_prefix("dns:") {
        return parse_dns(rest).map(UpstreamTarget::Dns);
    }
    let uri: Uri = value
        .parse()
        .map_err(|e| format!("not a URL ({e}); {EXPECTED}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(UpstreamTarget::Url(uri)),
        _ => Err(EXPECTED.to_owned()),
    }
}

/// What follows `dns:`: `///host:port`, `//server[:port]/host:port`, or
/// `host:port`.
fn parse_dns(rest: &str) -> Result<DnsTarget, String> {
    let (server, name) = match rest.strip_prefix("//") {
        Some(rest) => {
            let (authority, name) = rest
                .split_once('/')
                .ok_or_else(|| format!("no name after the DNS server; {EXPECTED}"))?;
            let server = match authority {
                "" => None,
                authority => Some(parse_dns_server(authority)?),
            };
            (server, name)
        }
        None => (None, rest),
    };
    let (host, port) = name
        .rsplit_once(':')
        .ok_or_else(|| format!("{name:?} has no port; {EXPECTED}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number; {EXPECTED}"))?;
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(format!("{host:?} is not a host name; {EXPECTED}"));
    }
    Ok(DnsTarget {
        server,
        host: host.to_owned(),
        port,
        routing: Routing::default(),
        resolve_interval: DEFAULT_RESOLVE_INTERVAL,
    })
}

/// A DNS server given by address (port 53 unless said): a name here would
/// need a resolver to find the resolver.
fn parse_dns_server(authority: &str) -> Result<SocketAddr, String> {
    authority
        .parse::<SocketAddr>()
        .or_else(|_| authority.parse().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            format!("the DNS server {authority:?} is not an IP address with an optional port; {EXPECTED}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(value: &str) -> DnsTarget {
        match parse_upstream_url(value).unwrap() {
            UpstreamTarget::Dns(target) => target,
            other => panic!("{value}: not a DNS target: {other}"),
        }
    }

    #[test]
    fn urls_need_a_scheme_and_host() {
        assert!(parse_upstream_url("http://127.0.0.1:50051").is_ok());
        assert!(parse_upstream_url("https://optimizer.svc:443").is_ok());
        assert!(parse_upstream_url("127.0.0.1:50051").is_err());
        assert!(parse_upstream_url("ftp://x").is_err());
        assert!(parse_upstream_url("not a url").is_err());
    }

    #[test]
    fn dns_names_follow_grpc_naming() {
        let system = dns("dns:///optimizer-headless:50051");
        assert_eq!(
            (system.server, system.host.as_str(), system.port),
            (None, "optimizer-headless", 50051)
        );
        assert_eq!(system.routing, Routing::Least);
        assert_eq!(system.to_string(), "dns:///optimizer-headless:50051");

        let short = dns("dns:optimizer:50051");
        assert_eq!((short.server, short.host.as_str()), (None, "optimizer"));

        let given = dns("dns://127.0.0.1:5353/optimizer.test:50051");
        assert_eq!(given.server, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(given.to_string(), "dns://127.0.0.1:5353/optimizer.test:50051");
        assert_eq!(
            dns("dns://10.0.0.10/x:1").server,
            Some("10.0.0.10:53".parse().unwrap())
        );

        for bad in [
            "dns:///optimizer",
            "dns:///:50051",
            "dns:///optimizer:http",
            "dns://kube-dns/optimizer:50051",
            "dns://127.0.0.1:5353",
        ] {
            let error = parse_upstream_url(bad).unwrap_err();
            assert!(error.contains("dns:///host:port"), "{bad}: {error}");
        }
    }

    #[test]
    fn routing_and_interval_apply_to_dns_targets_only() {
        let target = parse_upstream_url("dns:///optimizer:50051")
            .unwrap()
            .routed_by(Routing::Hash)
            .resolved_every(Duration::from_millis(200));
        let UpstreamTarget::Dns(target) = target else {
            unreachable!()
        };
        assert_eq!(
            (target.routing, target.resolve_interval),
            (Routing::Hash, Duration::from_millis(200))
        );
        let url = parse_upstream_url("http://optimizer:50051").unwrap();
        assert_eq!(url.clone().routed_by(Routing::Hash), url);
    }
}

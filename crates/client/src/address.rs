//! Broker and access-point addresses: `host:port` text and the protocol's
//! `Endpoints`.

use std::net::IpAddr;

use sofamq_proto::v2;

/// Splits `"host:port"` (or `"[v6]:port"`).
pub(crate) fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Joins a host and a port, bracketing an IPv6 host.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` as protocol endpoints, with the scheme its host reads as.
pub(crate) fn endpoints_of(ap: &str) -> v2::Endpoints {
    let (host, port) = parse_host_port(ap).unwrap_or_default();
    let scheme = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => v2::AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => v2::AddressScheme::IPv6,
        Err(_) => v2::AddressScheme::DomainName,
    };
    v2::Endpoints {
        scheme: scheme as i32,
        addresses: vec![v2::Address {
            host,
            port: i32::from(port),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            parse_host_port("localhost:8081"),
            Some(("localhost".into(), 8081))
        );
        assert_eq!(parse_host_port("[::1]:9"), Some(("::1".into(), 9)));
        assert_eq!(parse_host_port("x"), None);
        assert_eq!(parse_host_port(":80"), None);
        assert_eq!(parse_host_port("h:99999"), None);
        assert_eq!(join_host_port("::1", 9), "[::1]:9");
        let e = endpoints_of("10.1.2.3:8081");
        assert_eq!(e.scheme, v2::AddressScheme::IPv4 as i32);
        assert_eq!(e.addresses[0].port, 8081);
        assert_eq!(
            endpoints_of("ns.example:1").scheme,
            v2::AddressScheme::DomainName as i32
        );
    }
}

//! Conversions between `"host:port"` strings and the RocketMQ `Endpoints`
//! message, shared by the name server, the broker and the client.
//!
//! Accepted forms: `1.2.3.4:80`, `[::1]:80`, `example.org:80`. An access
//! point string may list several addresses separated by `;` or `,`.

use std::net::IpAddr;

use sofamq_proto::v2::{Address, AddressScheme, Endpoints};

/// Maximum number of addresses accepted in one `Endpoints`.
pub const MAX_ADDRESSES: usize = 64;

/// Why an address string could not be turned into `Endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No address was given.
    #[error("no address given")]
    Empty,
    /// More than [`MAX_ADDRESSES`] addresses.
    #[error("too many addresses ({0} > {MAX_ADDRESSES})")]
    TooMany(usize),
    /// The address has no `:port` part or a malformed host.
    #[error("address '{0}' is not host:port")]
    Malformed(String),
    /// The port is not a number in 1..=65535.
    #[error("address '{0}' has an invalid port")]
    BadPort(String),
}

/// Splits `"host:port"` (or `"[v6]:port"`) into host and port.
pub fn parse_host_port(addr: &str) -> Result<(String, u16), EndpointError> {
    let addr = addr.trim();
    let malformed = || EndpointError::Malformed(addr.to_string());
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(malformed)?;
        let port = after.strip_prefix(':').ok_or_else(malformed)?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| malformed())?;
        (host, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(malformed)?;
        if host.contains(':') {
            // A bare IPv6 address without brackets is ambiguous.
            return Err(malformed());
        }
        (host, port)
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err(malformed());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| EndpointError::BadPort(addr.to_string()))?;
    Ok((host.to_string(), port))
}

fn scheme_of(host: &str) -> AddressScheme {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => AddressScheme::IPv6,
        Err(_) => AddressScheme::DomainName,
    }
}

/// Builds `Endpoints` from `"host:port"` strings.
///
/// The scheme is IPv4 or IPv6 when every host is such an IP literal, and
/// DOMAIN_NAME otherwise.
pub fn to_endpoints<S: AsRef<str>>(addrs: &[S]) -> Result<Endpoints, EndpointError> {
    if addrs.is_empty() {
        return Err(EndpointError::Empty);
    }
    if addrs.len() > MAX_ADDRESSES {
        return Err(EndpointError::TooMany(addrs.len()));
    }
    let mut scheme = None;
    let mut addresses = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let (host, port) = parse_host_port(addr.as_ref())?;
        let this = scheme_of(&host);
        scheme = match scheme {
            None => Some(this),
            Some(s) if s == this => Some(s),
            Some(_) => Some(AddressScheme::DomainName),
        };
        addresses.push(Address {
            host,
            port: i32::from(port),
        });
    }
    Ok(Endpoints {
        scheme: scheme.unwrap_or(AddressScheme::DomainName) as i32,
        addresses,
    })
}

/// Builds `Endpoints` from an access point string such as
/// `"10.0.0.1:8081;10.0.0.2:8081"` (separators `;` or `,`).
pub fn parse_endpoints(access_point: &str) -> Result<Endpoints, EndpointError> {
    let parts: Vec<&str> = access_point
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(MAX_ADDRESSES + 1)
        .collect();
    to_endpoints(&parts)
}

/// Renders `Endpoints` back into `"host:port"` strings (IPv6 hosts in
/// brackets). Addresses with an out-of-range port are skipped.
pub fn from_endpoints(endpoints: &Endpoints) -> Vec<String> {
    endpoints
        .addresses
        .iter()
        .filter_map(|a| {
            let port = u16::try_from(a.port).ok().filter(|p| *p != 0)?;
            if a.host.contains(':') && !a.host.starts_with('[') {
                Some(format!("[{}]:{port}", a.host))
            } else {
                Some(format!("{}:{port}", a.host))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_round_trip() {
        let ep = to_endpoints(&["127.0.0.1:8081"]).unwrap();
        assert_eq!(ep.scheme, AddressScheme::IPv4 as i32);
        assert_eq!(ep.addresses[0].host, "127.0.0.1");
        assert_eq!(ep.addresses[0].port, 8081);
        assert_eq!(from_endpoints(&ep), vec!["127.0.0.1:8081"]);
    }

    #[test]
    fn ipv6_and_domain() {
        let ep = to_endpoints(&["[::1]:9876"]).unwrap();
        assert_eq!(ep.scheme, AddressScheme::IPv6 as i32);
        assert_eq!(ep.addresses[0].host, "::1");
        assert_eq!(from_endpoints(&ep), vec!["[::1]:9876"]);

        let ep = to_endpoints(&["broker-a.local:8081"]).unwrap();
        assert_eq!(ep.scheme, AddressScheme::DomainName as i32);

        let mixed = to_endpoints(&["10.0.0.1:1", "host:2"]).unwrap();
        assert_eq!(mixed.scheme, AddressScheme::DomainName as i32);
    }

    #[test]
    fn access_point_lists() {
        let ep = parse_endpoints("10.0.0.1:8081; 10.0.0.2:8082").unwrap();
        assert_eq!(from_endpoints(&ep), vec!["10.0.0.1:8081", "10.0.0.2:8082"]);
        assert_eq!(parse_endpoints(" ; "), Err(EndpointError::Empty));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            to_endpoints(&["nohost"]),
            Err(EndpointError::Malformed(_))
        ));
        assert!(matches!(
            to_endpoints(&[":80"]),
            Err(EndpointError::Malformed(_))
        ));
        assert!(matches!(
            to_endpoints(&["::1:80"]),
            Err(EndpointError::Malformed(_))
        ));
        assert!(matches!(
            to_endpoints(&["h:0"]),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            to_endpoints(&["h:70000"]),
            Err(EndpointError::BadPort(_))
        ));
        assert_eq!(to_endpoints::<&str>(&[]), Err(EndpointError::Empty));
        let many: Vec<String> = (0..=MAX_ADDRESSES)
            .map(|i| format!("h:{}", i + 1))
            .collect();
        assert!(matches!(
            to_endpoints(&many),
            Err(EndpointError::TooMany(_))
        ));
    }

    #[test]
    fn from_endpoints_skips_bad_ports() {
        let ep = Endpoints {
            scheme: AddressScheme::IPv4 as i32,
            addresses: vec![
                Address {
                    host: "1.2.3.4".into(),
                    port: -1,
                },
                Address {
                    host: "1.2.3.4".into(),
                    port: 5,
                },
            ],
        };
        assert_eq!(from_endpoints(&ep), vec!["1.2.3.4:5"]);
    }
}

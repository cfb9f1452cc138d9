//! Parsing of client ranges the way Python's `ipaddress.ip_network(item)` (strict) reads
//! them: `a.b.c.d`, `a.b.c.d/len`, `a.b.c.d/netmask`, `a.b.c.d/hostmask`, `x::y`, `x::y/len`;
//! host bits set or any stray character (a space after a comma) make the item malformed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A network: address with host bits clear, and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net<A> {
    /// First address of the network.
    pub addr: A,
    /// Prefix length.
    pub len: u8,
}

/// Why an item is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("not an {family} address")]
    Address { family: &'static str },
    #[error("bad prefix length or mask {0:?}")]
    Prefix(String),
    #[error("host bits set (did you mean {0}?)")]
    HostBits(String),
}

/// Parses an IPv4 network.
pub fn parse_v4(item: &str) -> Result<Net<Ipv4Addr>, NetError> {
    let (addr, prefix) = split(item);
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| NetError::Address { family: "IPv4" })?;
    let len = match prefix {
        None => 32,
        Some(p) => v4_prefix(p)?,
    };
    let bits = u32::from(addr);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if bits & !mask != 0 {
        let net = Ipv4Addr::from(bits & mask);
        return Err(NetError::HostBits(format!("{net}/{len}")));
    }
    Ok(Net { addr, len })
}

/// Parses an IPv6 network.
pub fn parse_v6(item: &str) -> Result<Net<Ipv6Addr>, NetError> {
    let (addr, prefix) = split(item);
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| NetError::Address { family: "IPv6" })?;
    let len = match prefix {
        None => 128,
        Some(p) => decimal_prefix(p, 128)?,
    };
    let bits = u128::from(addr);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    if bits & !mask != 0 {
        let net = Ipv6Addr::from(bits & mask);
        return Err(NetError::HostBits(format!("{net}/{len}")));
    }
    Ok(Net { addr, len })
}

/// Parses a network of either family (used for the trusted proxy list).
pub fn parse_any(item: &str) -> Result<Net<IpAddr>, NetError> {
    if item.contains(':') {
        parse_v6(item).map(|n| Net {
            addr: IpAddr::V6(n.addr),
            len: n.len,
        })
    } else {
        parse_v4(item).map(|n| Net {
            addr: IpAddr::V4(n.addr),
            len: n.len,
        })
    }
}

/// Whether `net` contains `ip` (families must agree).
pub fn contains(net: &Net<IpAddr>, ip: IpAddr) -> bool {
    match (net.addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if net.len == 0 {
                0
            } else {
                u32::MAX << (32 - net.len)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if net.len == 0 {
                0
            } else {
                u128::MAX << (128 - net.len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fn split(item: &str) -> (&str, Option<&str>) {
    match item.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (item, None),
    }
}

fn decimal_prefix(p: &str, max: u8) -> Result<u8, NetError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NetError::Prefix(p.to_string()));
    }
    match p.parse::<u32>() {
        Ok(n) if n <= u32::from(max) => Ok(n as u8),
        _ => Err(NetError::Prefix(p.to_string())),
    }
}

/// `/24`, `/255.255.255.0` (netmask) or `/0.0.0.255` (hostmask), as Python accepts them.
fn v4_prefix(p: &str) -> Result<u8, NetError> {
    if !p.contains('.') {
        return decimal_prefix(p, 32);
    }
    let mask: Ipv4Addr = p.parse().map_err(|_| NetError::Prefix(p.to_string()))?;
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() == 32 {
        return Ok(bits.leading_ones() as u8);
    }
    let host = !bits;
    if host.leading_ones() + host.trailing_zeros() == 32 {
        return Ok(host.leading_ones() as u8);
    }
    Err(NetError::Prefix(p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_address_is_a_host_network() {
        assert_eq!(parse_v4("1.2.3.4").unwrap().len, 32);
        assert_eq!(parse_v6("2600::1").unwrap().len, 128);
    }

    #[test]
    fn masks_in_both_forms_are_read() {
        assert_eq!(parse_v4("10.0.0.0/255.0.0.0").unwrap().len, 8);
        assert_eq!(parse_v4("10.0.0.0/0.255.255.255").unwrap().len, 8);
        assert_eq!(parse_v4("10.0.0.0/024").unwrap().len, 24);
        assert!(parse_v4("10.0.0.0/255.0.255.0").is_err());
    }

    #[test]
    fn host_bits_set_is_malformed_and_suggests_the_network() {
        assert_eq!(
            parse_v4("3.81.0.0/12").unwrap_err().to_string(),
            "host bits set (did you mean 3.80.0.0/12?)"
        );
        assert!(parse_v6("2600:1f18::1/36").is_err());
    }

    #[test]
    fn stray_characters_are_malformed() {
        for bad in [
            " 1.2.3.0/24",
            "1.2.3.0/24 ",
            "1.2.3.0/",
            "1.2.3.0/33",
            "1.2.3",
            "",
            "1.2.3.0/+8",
        ] {
            assert!(parse_v4(bad).is_err(), "{bad:?}");
        }
        for bad in ["2600::/129", " 2600::/32", "1.2.3.4", "2600::/"] {
            assert!(parse_v6(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains_checks_family_and_prefix() {
        let net = parse_any("10.0.0.0/8").unwrap();
        assert!(contains(&net, "10.1.2.3".parse().unwrap()));
        assert!(!contains(&net, "11.1.2.3".parse().unwrap()));
        assert!(!contains(&net, "::1".parse().unwrap()));
        let all = parse_any("::/0").unwrap();
        assert!(contains(&all, "::1".parse().unwrap()));
    }
}

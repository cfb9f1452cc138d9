//! Who is asking: the client address used for the prefix lookup, and the `regionHint`.
//!
//! The client is the TCP peer, with IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`, what a
//! dual-stack socket reports for IPv4 clients) turned back into IPv4. Only when the peer is in
//! an operator-configured trusted proxy network are `Forwarded` (RFC 7239, preferred) or else
//! `X-Forwarded-For` read: the chain is walked from the nearest hop outwards, skipping trusted
//! proxies, and the first untrusted hop is the client. A hop that cannot be read (`unknown`,
//! an obfuscated name, garbage) ends the walk and the peer is used, so a client can never pick
//! its region by forging a header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;

use crate::net::{self, Net};

/// The address to look up for a request from `peer` carrying `headers`.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[Net<IpAddr>],
) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let hops = forwarded_chain(headers);
    let Some(hops) = hops else {
        return Some(peer);
    };
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip, trusted) => continue,
            Some(ip) => return Some(*ip),
            None => return Some(peer),
        }
    }
    // Every hop is a trusted proxy: the outermost one is the best we know.
    hops.first().copied().flatten().or(Some(peer))
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[Net<IpAddr>]) -> bool {
    trusted.iter().any(|n| net::contains(n, ip))
}

/// The hops of `Forwarded` (all `for=` in order) or else of `X-Forwarded-For`; `None` inside
/// marks a hop that cannot be read. `None` overall: neither header is present.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let forwarded: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect();
    if !forwarded.is_empty() {
        let hops = forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(forwarded_for)
            .collect();
        return Some(hops);
    }
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect();
    if xff.is_empty() {
        return None;
    }
    Some(xff.iter().flat_map(|v| v.split(',')).map(node).collect())
}

/// The `for=` of one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        node(value.trim().trim_matches('"'))
    })
}

/// A node: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| canonical(IpAddr::V6(ip)));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The first `regionHint` in `query`, decoded as `application/x-www-form-urlencoded` (`+` is
/// a space, `%XX` a byte, a bad escape stays as written, bytes that are not UTF-8 become
/// U+FFFD: what Werkzeug does) and lower-cased; an empty value counts as absent. The name is
/// case-sensitive.
pub fn region_hint(query: Option<&str>) -> Option<String> {
    let (_, value) =
        form_urlencoded::parse(query?.as_bytes()).find(|(name, _)| name == "regionHint")?;
    (!value.is_empty()).then(|| value.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn trusted(list: &[&str]) -> Vec<Net<IpAddr>> {
        list.iter().map(|s| net::parse_any(s).unwrap()).collect()
    }

    #[test]
    fn v4_mapped_peer_is_canonicalised() {
        let got = client_ip(Some(ip("::ffff:3.80.1.2")), &HeaderMap::new(), &[]);
        assert_eq!(got, Some(ip("3.80.1.2")));
        assert_eq!(canonical(ip("2600::1")), ip("2600::1"));
    }

    #[test]
    fn forwarded_headers_are_ignored_from_untrusted_peers() {
        let h = headers(&[
            ("x-forwarded-for", "3.80.1.2"),
            ("forwarded", "for=3.80.1.2"),
        ]);
        assert_eq!(client_ip(Some(ip("9.9.9.9")), &h, &[]), Some(ip("9.9.9.9")));
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(Some(ip("9.9.9.9")), &h, &t), Some(ip("9.9.9.9")));
    }

    #[test]
    fn trusted_peer_forwards_the_first_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 3.80.1.2, 10.1.1.1")]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &t),
            Some(ip("3.80.1.2"))
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_reads_ports_and_brackets() {
        let t = trusted(&["::1"]);
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=\"[2600:1f18::7]:443\";proto=https"),
        ]);
        assert_eq!(client_ip(Some(ip("::1")), &h, &t), Some(ip("2600:1f18::7")));
        let h = headers(&[("forwarded", "for=3.80.1.2:5000, for=10.0.0.1")]);
        let t = trusted(&["::1", "10.0.0.0/8"]);
        assert_eq!(client_ip(Some(ip("::1")), &h, &t), Some(ip("3.80.1.2")));
    }

    #[test]
    fn unreadable_hop_falls_back_to_the_peer() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &t),
            Some(ip("10.0.0.5"))
        );
        let h = headers(&[("x-forwarded-for", "not an ip")]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &t),
            Some(ip("10.0.0.5"))
        );
    }

    #[test]
    fn no_peer_means_no_address() {
        assert_eq!(client_ip(None, &HeaderMap::new(), &[]), None);
    }

    #[test]
    fn hint_is_first_value_decoded_and_lower_cased_not_trimmed() {
        assert_eq!(
            region_hint(Some("regionHint=US-East-1")),
            Some("us-east-1".into())
        );
        assert_eq!(
            region_hint(Some("regionHint=a&regionHint=b")),
            Some("a".into())
        );
        assert_eq!(region_hint(Some("regionHint=+x%20")), Some(" x ".into()));
        assert_eq!(region_hint(Some("region%48int=abc")), Some("abc".into()));
        assert_eq!(region_hint(Some("regionHint=%zz")), Some("%zz".into()));
    }

    #[test]
    fn hint_escapes_decode_as_utf8_and_bad_bytes_become_replacement_characters() {
        assert_eq!(region_hint(Some("regionHint=%C3%89u")), Some("éu".into()));
        assert_eq!(
            region_hint(Some("regionHint=a%FFb")),
            Some("a\u{fffd}b".into())
        );
        assert_eq!(region_hint(Some("regionHint=x%4")), Some("x%4".into()));
        assert_eq!(region_hint(Some("regionHint=%%41")), Some("%a".into()));
        assert_eq!(region_hint(Some("&&regionHint=a=b")), Some("a=b".into()));
        assert_eq!(
            region_hint(Some("region+Hint=x&regionHint=y")),
            Some("y".into())
        );
    }

    #[test]
    fn empty_or_misnamed_hint_is_absent() {
        assert_eq!(region_hint(Some("regionHint=")), None);
        assert_eq!(region_hint(Some("regionHint")), None);
        assert_eq!(region_hint(Some("regionhint=us-east-1")), None);
        assert_eq!(region_hint(None), None);
        // An empty first value wins over a later non-empty one (first value wins, then empty
        // counts as absent).
        assert_eq!(region_hint(Some("regionHint=&regionHint=b")), None);
    }
}

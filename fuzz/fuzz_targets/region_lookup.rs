//! The request path on untrusted input: query string (regionHint), forwarding headers from a
//! trusted peer, client address canonicalisation and the longest-prefix lookup, checked
//! against a linear scan over the same prefixes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use region::prefix::PrefixTable;
use region::{client, net};

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() < 17 {
        return;
    }
    let (peer, rest) = bytes.split_at(16);
    let peer = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(peer).unwrap_or([0; 16])));
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\n');
    let query = parts.next().unwrap_or("");
    let _ = client::region_hint(Some(query));
    let mut headers = http::HeaderMap::new();
    for (name, value) in ["x-forwarded-for", "forwarded"].into_iter().zip(parts) {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    let everyone = [net::parse_any("0.0.0.0/0").ok(), net::parse_any("::/0").ok()];
    let trusted: Vec<_> = everyone.into_iter().flatten().collect();
    let _ = client::client_ip(Some(peer), &headers, &trusted);

    // Prefixes: 5 bytes each (4 address bytes + length), the last 4 bytes the address.
    let mut table = PrefixTable::new();
    let mut list = Vec::new();
    for (i, chunk) in rest.chunks_exact(5).enumerate() {
        let addr = Ipv4Addr::new(chunk[0], chunk[1], chunk[2], chunk[3]);
        let len = chunk[4] % 33;
        table.insert(addr, len, i as u32);
        list.push((u32::from(addr), len, i as u32));
    }
    let probe = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mask = |bits: u32, len: u8| if len == 0 { 0 } else { bits & (u32::MAX << (32 - len)) };
    let mut best: Option<(u8, u32)> = None;
    for &(net, len, value) in &list {
        if mask(net, len) == mask(probe, len) && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, value));
        }
    }
    assert_eq!(table.longest_match(Ipv4Addr::from(probe)), best.map(|(_, v)| v));
});

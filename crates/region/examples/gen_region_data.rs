//! Writes a large, deterministic `regionData.cfg` for the benchmark (`bench/region/run.sh`):
//!
//! ```text
//! cargo run --release -p region --example gen_region_data -- OUT [REGIONS] [V4] [V6]
//! ```
//!
//! Defaults: 1,000 regions, 100,000 IPv4 and 20,000 IPv6 client prefixes (distinct), two
//! dual-stack servers per region. `127.0.0.0/8` and `::1` belong to `region-0000` so that a
//! load generator on loopback is found by address.

use std::collections::HashSet;
use std::fmt::Write as _;

use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or("usage: gen_region_data OUT [REGIONS] [V4] [V6]")?;
    let number = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(match args.get(i) {
            Some(text) => text.parse()?,
            None => default,
        })
    };
    let regions = number(1, 1_000)?.max(1);
    let v4 = number(2, 100_000)?;
    let v6 = number(3, 20_000)?;
    let text = generate(regions, v4, v6);
    std::fs::write(out, text)?;
    eprintln!("wrote {out}: {regions} regions, {v4} IPv4 and {v6} IPv6 prefixes");
    Ok(())
}

fn generate(regions: usize, v4: usize, v6: usize) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7fca_3eed);
    let v4_prefixes = distinct(v4, || {
        let len = rng.gen_range(12..=28u32);
        let bits = rng.gen::<u32>() & (u32::MAX << (32 - len));
        // Keep clear of 127/8 so loopback clients always land in region-0000.
        (bits >> 24 != 127).then(|| format!("{}/{len}", std::net::Ipv4Addr::from(bits)))
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0000_d014);
    let v6_prefixes = distinct(v6, || {
        let len = rng.gen_range(29..=64u32);
        let bits = (rng.gen::<u128>() | (0x2u128 << 124)) & (u128::MAX << (128 - len));
        Some(format!("{}/{len}", std::net::Ipv6Addr::from(bits)))
    });
    let mut out = String::with_capacity(v4 * 20 + v6 * 30 + regions * 400);
    for r in 0..regions {
        let mine = |list: &[String]| -> Vec<String> {
            list.iter().skip(r).step_by(regions).cloned().collect()
        };
        let mut ips = mine(&v4_prefixes);
        let mut ips6 = mine(&v6_prefixes);
        if r == 0 {
            ips.push("127.0.0.0/8".into());
            ips6.push("::1".into());
        }
        section(&mut out, r, &ips, &ips6);
    }
    out
}

fn distinct(n: usize, mut next: impl FnMut() -> Option<String>) -> Vec<String> {
    let mut seen = HashSet::with_capacity(n);
    let mut list = Vec::with_capacity(n);
    while list.len() < n {
        if let Some(prefix) = next() {
            if seen.insert(prefix.clone()) {
                list.push(prefix);
            }
        }
    }
    list
}

fn section(out: &mut String, r: usize, ips: &[String], ips6: &[String]) {
    let a = r / 256;
    let b = r % 256;
    let _ = writeln!(out, "[region-{r:04}]");
    let _ = writeln!(out, "public-ips = {}", ips.join(","));
    if !ips6.is_empty() {
        let _ = writeln!(out, "public-ipsv6 = {}", ips6.join(","));
    }
    let _ = writeln!(out, "smt-server-ip = 198.18.{a}.{b},198.19.{a}.{b}");
    let _ = writeln!(out, "smt-server-ipv6 = 2001:db8:{r:x}::1,2001:db8:{r:x}::2");
    let _ = writeln!(out, "smt-server-name = smt-{r:04}.example.net");
    let _ = writeln!(out, "smt-registry-name = registry-{r:04}.example.net");
    let _ = writeln!(
        out,
        "smt-fingerprint = {:02X}:{:02X}:{:02X}:{:02X}\n",
        a,
        b,
        r % 7,
        r % 13
    );
}

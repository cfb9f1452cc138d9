//! The regionData.cfg path on untrusted bytes: INI parser, then the region model. Must never
//! panic; a file that parses must render and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use region::{ini, BuildOptions, RegionData};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(parsed) = ini::parse_bytes(bytes) {
        for problem in RegionData::from_ini(&parsed, BuildOptions::default())
            .err()
            .unwrap_or_default()
        {
            let _ = problem.to_string();
        }
    }
    let _ = RegionData::from_bytes(bytes, BuildOptions { ipv6_only_server_ip_none: true });
});

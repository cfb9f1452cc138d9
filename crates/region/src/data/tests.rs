use super::*;

/// The spec's example file.
pub const EXAMPLE: &str = "\
[us-east-1]
public-ips = 3.80.0.0/12,52.0.0.0/15
public-ipsv6 = 2600:1f18::/36
smt-server-ip = 52.1.2.3,54.4.5.6
smt-server-ipv6 = 2600:1f18:aaaa::1,2600:1f18:aaaa::2
smt-server-name = smt-ec2.example.net
smt-registry-name = registry-ec2.example.net
smt-fingerprint = A1:B2:C3

[v6only]
public-ipsv6 = 2a05:d014::/32
smt-server-ipv6 = 2a05:d014::10
smt-server-name = smt-ec2.example.net
smt-fingerprint = AA:BB
";

fn build(text: &str) -> Result<RegionData, Vec<DataProblem>> {
    RegionData::from_bytes(text.as_bytes(), BuildOptions::default())
}

fn errors(text: &str) -> Vec<String> {
    build(text)
        .expect_err("should not build")
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn example_builds_with_paired_servers() {
    let data = build(EXAMPLE).unwrap();
    assert!(data.warnings.is_empty());
    let r = data.by_name("us-east-1").unwrap();
    assert_eq!(r.servers.len(), 2);
    assert_eq!(r.servers[1].ipv4.as_deref(), Some("54.4.5.6"));
    assert_eq!(r.servers[1].ipv6.as_deref(), Some("2600:1f18:aaaa::2"));
    assert_eq!(r.servers[1].name, "smt-ec2.example.net");
    assert_eq!(
        r.servers[1].registry.as_deref(),
        Some("registry-ec2.example.net")
    );
    let v6 = data.by_name("v6only").unwrap();
    assert_eq!(v6.servers[0].ipv4, None);
    assert_eq!(v6.servers[0].registry, None);
    assert_eq!(data.prefix_counts(), (2, 2));
}

#[test]
fn client_lookup_by_both_families() {
    let data = build(EXAMPLE).unwrap();
    assert_eq!(data.by_ip(ip("3.95.255.255")).unwrap().name, "us-east-1");
    assert_eq!(data.by_ip(ip("52.1.0.1")).unwrap().name, "us-east-1");
    assert_eq!(data.by_ip(ip("2a05:d014:1::5")).unwrap().name, "v6only");
    assert!(data.by_ip(ip("3.96.0.0")).is_none());
    assert!(data.by_ip(ip("2a05:d015::1")).is_none());
}

#[test]
fn region_names_are_lower_cased() {
    let data =
        build("[US-West]\nsmt-server-ip = 1.1.1.1\nsmt-server-name = n\nsmt-fingerprint = f\n")
            .unwrap();
    assert!(data.by_name("us-west").is_some());
    assert!(data.by_name("US-West").is_none());
}

#[test]
fn sections_equal_but_for_case_are_an_error() {
    let text = "[a]\nsmt-server-ip = 1.1.1.1\nsmt-server-name = n\nsmt-fingerprint = f\n\
                [A]\nsmt-server-ip = 1.1.1.2\nsmt-server-name = n\nsmt-fingerprint = f\n";
    assert_eq!(
        errors(text),
        vec![
            "line 5, section [A]: region name \"a\" is already used by section [a] on line 1 \
              (region names are compared lower-cased)"
        ]
    );
}

#[test]
fn longest_prefix_across_regions_and_later_section_wins_on_same_prefix() {
    let text = "\
[wide]
public-ips = 10.0.0.0/8
smt-server-ip = 1.1.1.1
smt-server-name = n
smt-fingerprint = f
[narrow]
public-ips = 10.1.0.0/16,10.2.0.0/16
smt-server-ip = 1.1.1.2
smt-server-name = n
smt-fingerprint = f
[later]
public-ips = 10.2.0.0/16
smt-server-ip = 1.1.1.3
smt-server-name = n
smt-fingerprint = f
";
    let data = build(text).unwrap();
    assert_eq!(data.by_ip(ip("10.9.0.1")).unwrap().name, "wide");
    assert_eq!(data.by_ip(ip("10.1.0.1")).unwrap().name, "narrow");
    assert_eq!(data.by_ip(ip("10.2.0.1")).unwrap().name, "later");
}

#[test]
fn malformed_ranges_are_skipped_with_a_warning_naming_the_item() {
    let text = "[r]\npublic-ips = 3.80.0.0/12, 52.0.0.0/15,3.81.0.0/12,bogus,10.0.0.0/8\n\
                public-ipsv6 = 2600::/16,3.0.0.0/8\n\
                smt-server-ip = 1.1.1.1\nsmt-server-name = n\nsmt-fingerprint = f\n";
    let data = build(text).unwrap();
    let warnings: Vec<String> = data.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    assert!(
        warnings[0].contains("client range \" 52.0.0.0/15\" skipped"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].starts_with("line 2, section [r], key public-ips"));
    assert!(warnings[1].contains("host bits set (did you mean 3.80.0.0/12?)"));
    assert!(warnings[2].contains("\"bogus\""));
    assert!(warnings[3].contains("key public-ipsv6") && warnings[3].contains("3.0.0.0/8"));
    assert_eq!(data.by_ip(ip("10.1.1.1")).unwrap().name, "r");
    assert_eq!(data.prefix_counts(), (2, 1));
}

#[test]
fn no_server_address_is_an_error() {
    assert_eq!(
        errors("[r]\nsmt-server-name = n\nsmt-fingerprint = f\n"),
        vec![
            "line 1, section [r], key smt-server-ip: no update server address: set \
              smt-server-ip or smt-server-ipv6 (or both)"
        ]
    );
    // Empty values count as absent.
    assert_eq!(
        errors("[r]\nsmt-server-ip =\nsmt-server-name = n\nsmt-fingerprint = f\n").len(),
        1
    );
}

#[test]
fn missing_name_and_fingerprint_are_both_reported() {
    assert_eq!(
        errors("[r]\nsmt-server-ip = 1.1.1.1\n"),
        vec![
            "line 1, section [r], key smt-server-name: missing (required)",
            "line 1, section [r], key smt-fingerprint: missing (required)",
        ]
    );
}

#[test]
fn count_mismatches_are_errors() {
    let base = "smt-server-ip = 1.1.1.1,1.1.1.2\n";
    assert_eq!(
        errors(&format!(
            "[r]\n{base}smt-server-ipv6 = ::1\nsmt-server-name = n\nsmt-fingerprint = f\n"
        )),
        vec![
            "line 3, section [r], key smt-server-ipv6: 1 IPv6 addresses but smt-server-ip has 2 \
              (they are paired by position)"
        ]
    );
    assert_eq!(
        errors(&format!(
            "[r]\n{base}smt-server-name = a,b,c\nsmt-fingerprint = f\n"
        )),
        vec![
            "line 3, section [r], key smt-server-name: 3 values for 2 servers (give 1 for all, \
              or exactly 2)"
        ]
    );
    assert_eq!(
        errors(&format!(
            "[r]\n{base}smt-server-name = a\nsmt-fingerprint = f,g,h\n"
        ))
        .len(),
        1
    );
    assert_eq!(
        errors(&format!(
            "[r]\n{base}smt-server-name = a\nsmt-fingerprint = f\nsmt-registry-name = a,b,c\n"
        )),
        vec![
            "line 5, section [r], key smt-registry-name: 3 values for 2 servers (give 1 for all, \
              or exactly 2)"
        ]
    );
}

#[test]
fn per_server_values_pair_by_position() {
    let data = build(
        "[r]\nsmt-server-ip = 1.1.1.1, 1.1.1.2\nsmt-server-name = a,b\nsmt-fingerprint = f\n\
         smt-registry-name = ra,rb\n",
    )
    .unwrap();
    let s = &data.by_name("r").unwrap().servers;
    assert_eq!(
        (s[0].ipv4.as_deref(), s[0].name.as_str()),
        (Some("1.1.1.1"), "a")
    );
    assert_eq!(
        (s[1].ipv4.as_deref(), s[1].name.as_str()),
        (Some("1.1.1.2"), "b")
    );
    assert_eq!(s[1].registry.as_deref(), Some("rb"));
    assert_eq!(s[1].fingerprint, "f");
}

#[test]
fn ipv6_only_region_counts_its_ipv6_servers() {
    let data =
        build("[r]\nsmt-server-ipv6 = ::1,::2\nsmt-server-name = a,b\nsmt-fingerprint = f,g\n")
            .unwrap();
    assert_eq!(data.by_name("r").unwrap().servers.len(), 2);
}

#[test]
fn missing_registry_name_is_neither_a_crash_nor_inherited_from_the_previous_section() {
    // 8.4.0 crashed on the first and reused the previous section's registry on the second.
    let data = build(
        "[a]\nsmt-server-ip = 1.1.1.1\nsmt-server-name = n\nsmt-fingerprint = f\n\
         [b]\nsmt-server-ip = 1.1.1.2\nsmt-server-name = n\nsmt-fingerprint = f\n\
         smt-registry-name = reg\n\
         [c]\nsmt-server-ip = 1.1.1.3\nsmt-server-name = n\nsmt-fingerprint = f\n",
    )
    .unwrap();
    assert_eq!(data.by_name("a").unwrap().servers[0].registry, None);
    assert_eq!(
        data.by_name("b").unwrap().servers[0].registry.as_deref(),
        Some("reg")
    );
    assert_eq!(data.by_name("c").unwrap().servers[0].registry, None);
}

#[test]
fn bad_server_address_and_empty_item_are_errors() {
    let e = errors("[r]\nsmt-server-ip = 1.1.1.1,x\nsmt-server-name = n\nsmt-fingerprint = f\n");
    assert_eq!(
        e,
        vec!["line 2, section [r], key smt-server-ip: \"x\" is not an IPv4 address"]
    );
    let e = errors("[r]\nsmt-server-ip = 1.1.1.1\nsmt-server-name = n,,\nsmt-fingerprint = f\n");
    assert_eq!(
        e,
        vec!["line 3, section [r], key smt-server-name: empty item in \"n,,\""]
    );
}

#[test]
fn every_section_problem_is_reported_not_just_the_first() {
    let e = errors("[a]\nsmt-server-name = n\nsmt-fingerprint = f\n[b]\nsmt-server-ip = 1.1.1.1\n");
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn defaults_are_inherited_and_not_a_region() {
    let data = build(
        "[DEFAULT]\nsmt-server-name = shared\nsmt-fingerprint = F\n\
         [a]\nsmt-server-ip = 1.1.1.1\n[b]\nsmt-server-ip = 1.1.1.2\nsmt-fingerprint = G\n",
    )
    .unwrap();
    assert_eq!(data.regions().len(), 2);
    assert!(data.by_name("default").is_none());
    assert_eq!(data.by_name("a").unwrap().servers[0].name, "shared");
    assert_eq!(data.by_name("b").unwrap().servers[0].fingerprint, "G");
}

#[test]
fn syntax_errors_become_data_problems() {
    let e = errors("[a]\nsmt-server-ip = 1\nsmt-server-ip = 2\n");
    assert_eq!(
        e,
        vec!["line 3, section [a], key smt-server-ip: option already set on line 2"]
    );
}

#[test]
fn unknown_keys_are_warned_about() {
    let data = build("[a]\nsmt-server-ips = 1.1.1.1\nsmt-server-ip = 1.1.1.1\nsmt-server-name = n\nsmt-fingerprint = f\n")
        .unwrap();
    assert_eq!(
        data.warnings[0].to_string(),
        "line 2, section [a], key smt-server-ips: unknown key ignored"
    );
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionData.cfg");
    std::fs::write(&path, "[r]\n").unwrap();
    let message = RegionData::load(&path, BuildOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.starts_with(&format!(
        "region data {} is not valid:\n  line 1",
        path.display()
    )));
    let gone = dir.path().join("gone.cfg");
    let message = RegionData::load(&gone, BuildOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.starts_with(&format!("cannot read region data {}", gone.display())));
    // The cause is in the message itself (log lines print `error = %err`).
    assert!(
        message.ends_with("No such file or directory (os error 2)"),
        "{message}"
    );
}

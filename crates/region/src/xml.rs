//! The XML answer, byte for byte as the original writes it (and as the real client parses it
//! with lxml from a Python str): no declaration, no comment, a line break after
//! `<regionSMTdata>` and after each `<smtInfo .../>`, none after `</regionSMTdata>`.
//!
//! Attribute order: `SMTserverIP`, `SMTserverIPv6` (when configured), `SMTserverName`,
//! `SMTregistryName` (when configured), `fingerprint`, `region`.

use rand::seq::SliceRandom;

use crate::data::{BuildOptions, Server};

const OPEN: &str = "<regionSMTdata>\n";
const CLOSE: &str = "</regionSMTdata>";

/// The `<smtInfo .../>` line of one server (with its line break), rendered once at load time.
pub fn server_line(server: &Server, region: &str, options: BuildOptions) -> String {
    let mut line = String::with_capacity(200);
    line.push_str("<smtInfo");
    match (&server.ipv4, options.ipv6_only_server_ip_none) {
        (Some(ip), _) => attribute(&mut line, "SMTserverIP", ip),
        (None, true) => attribute(&mut line, "SMTserverIP", "None"),
        (None, false) => {}
    }
    if let Some(ip) = &server.ipv6 {
        attribute(&mut line, "SMTserverIPv6", ip);
    }
    attribute(&mut line, "SMTserverName", &server.name);
    if let Some(registry) = &server.registry {
        attribute(&mut line, "SMTregistryName", registry);
    }
    attribute(&mut line, "fingerprint", &server.fingerprint);
    attribute(&mut line, "region", region);
    line.push_str("/>\n");
    line
}

/// The whole answer: the server lines in a new random order.
pub fn document(lines: &[String]) -> String {
    let mut order: Vec<&String> = lines.iter().collect();
    order.shuffle(&mut rand::thread_rng());
    let size = OPEN.len() + CLOSE.len() + lines.iter().map(String::len).sum::<usize>();
    let mut out = String::with_capacity(size);
    out.push_str(OPEN);
    for line in order {
        out.push_str(line);
    }
    out.push_str(CLOSE);
    out
}

fn attribute(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value);
    out.push('"');
}

/// Escapes `& < > "` (the value sits in double quotes). Line breaks inside a value (a
/// continuation line) would be normalised to spaces by an XML parser, so they become `&#10;`.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(ipv4: Option<&str>, ipv6: Option<&str>, registry: Option<&str>) -> Server {
        Server {
            ipv4: ipv4.map(String::from),
            ipv6: ipv6.map(String::from),
            name: "smt-ec2.example.net".into(),
            registry: registry.map(String::from),
            fingerprint: "A1:B2:C3".into(),
        }
    }

    #[test]
    fn dual_stack_line_has_every_attribute_in_order() {
        let s = server(
            Some("52.1.2.3"),
            Some("2600:1f18:aaaa::1"),
            Some("registry-ec2.example.net"),
        );
        assert_eq!(
            server_line(&s, "us-east-1", BuildOptions::default()),
            "<smtInfo SMTserverIP=\"52.1.2.3\" SMTserverIPv6=\"2600:1f18:aaaa::1\" \
             SMTserverName=\"smt-ec2.example.net\" SMTregistryName=\"registry-ec2.example.net\" \
             fingerprint=\"A1:B2:C3\" region=\"us-east-1\"/>\n"
        );
    }

    #[test]
    fn ipv6_only_server_omits_ipv4_unless_none_switch() {
        let s = server(None, Some("2a05:d014::10"), None);
        let plain = server_line(&s, "v6only", BuildOptions::default());
        assert_eq!(
            plain,
            "<smtInfo SMTserverIPv6=\"2a05:d014::10\" SMTserverName=\"smt-ec2.example.net\" \
             fingerprint=\"A1:B2:C3\" region=\"v6only\"/>\n"
        );
        let compat = server_line(
            &s,
            "v6only",
            BuildOptions {
                ipv6_only_server_ip_none: true,
            },
        );
        assert!(compat.starts_with("<smtInfo SMTserverIP=\"None\" SMTserverIPv6="));
    }

    #[test]
    fn values_are_escaped() {
        let mut s = server(Some("1.2.3.4"), None, None);
        s.name = "a&b<c>\"d'".into();
        let line = server_line(&s, "r", BuildOptions::default());
        assert!(line.contains("SMTserverName=\"a&amp;b&lt;c&gt;&quot;d'\""));
    }

    #[test]
    fn document_has_no_trailing_newline_and_all_lines() {
        let lines = vec!["<a/>\n".to_string(), "<b/>\n".to_string()];
        let doc = document(&lines);
        assert!(doc.starts_with("<regionSMTdata>\n<"));
        assert!(doc.ends_with("/>\n</regionSMTdata>"));
        assert_eq!(
            doc.len(),
            "<regionSMTdata>\n<a/>\n<b/>\n</regionSMTdata>".len()
        );
    }

    #[test]
    fn order_is_shuffled_across_requests() {
        let lines: Vec<String> = (0..6).map(|i| format!("<s{i}/>\n")).collect();
        let first = document(&lines);
        // 720 orders: 50 identical draws in a row would be a broken shuffle.
        assert!((0..50).any(|_| document(&lines) != first));
    }
}

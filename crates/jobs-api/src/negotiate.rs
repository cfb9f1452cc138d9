//! Content negotiation as the original did it (werkzeug's `best_match` over the `Accept`
//! header), with each route's default:
//!
//! - status answers: JSON, or XML when the client prefers `application/xml`;
//! - error answers: JSON, or HTML when the client prefers `text/html` (a browser), or XML;
//! - CANARIE pages (info, stats): HTML, or JSON when the client prefers `application/json`
//!   (CANARIE's registry reads HTML by default).
//!
//! `best_match` picks the offer with the highest quality in the header; at equal quality the
//! more specific header entry wins (`text/html` over `*/*`), then the offer listed first.
//! A missing `Accept` header counts as `*/*`.

/// What a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Html,
    Xml,
}

impl Format {
    fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Html => "text/html",
            Format::Xml => "application/xml",
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Html => "text/html; charset=utf-8",
            Format::Xml => "application/xml",
        }
    }
}

/// The format of a status answer: JSON unless XML is preferred.
pub fn for_status(accept: Option<&str>) -> Format {
    match best_match(accept, &[Format::Json, Format::Html, Format::Xml]) {
        Some(Format::Xml) => Format::Xml,
        _ => Format::Json,
    }
}

/// The format of an error answer: JSON unless HTML or XML is preferred.
pub fn for_error(accept: Option<&str>) -> Format {
    best_match(accept, &[Format::Json, Format::Html, Format::Xml]).unwrap_or(Format::Json)
}

/// The format of a CANARIE page: HTML unless JSON is preferred.
pub fn for_page(accept: Option<&str>) -> Format {
    match best_match(accept, &[Format::Html, Format::Json]) {
        Some(Format::Json) => Format::Json,
        _ => Format::Html,
    }
}

/// One entry of an `Accept` header.
struct Entry<'a> {
    kind: &'a str,
    subtype: &'a str,
    quality: f32,
}

impl Entry<'_> {
    /// werkzeug's specificity: how many of type and subtype are not wildcards.
    fn specificity(&self) -> u8 {
        u8::from(self.kind != "*") + u8::from(self.subtype != "*")
    }

    fn matches(&self, mime: &str) -> bool {
        let (kind, subtype) = mime.split_once('/').expect("offers are type/subtype");
        let kind_matches = self.kind == "*" || self.kind.eq_ignore_ascii_case(kind);
        let subtype_matches = self.subtype == "*" || self.subtype.eq_ignore_ascii_case(subtype);
        kind_matches && subtype_matches
    }
}

fn parse(accept: &str) -> Vec<Entry<'_>> {
    accept.split(',').filter_map(parse_entry).collect()
}

fn parse_entry(item: &str) -> Option<Entry<'_>> {
    let mut parts = item.split(';');
    let mime = parts.next()?.trim();
    let (kind, subtype) = match mime {
        "*" => ("*", "*"),
        _ => mime.split_once('/')?,
    };
    let (kind, subtype) = (kind.trim(), subtype.trim());
    if kind.is_empty() || subtype.is_empty() {
        return None;
    }
    let mut quality = 1.0f32;
    for parameter in parts {
        if let Some((name, value)) = parameter.split_once('=') {
            if name.trim().eq_ignore_ascii_case("q") {
                quality = value.trim().parse::<f32>().ok()?.clamp(0.0, 1.0);
            }
        }
    }
    Some(Entry {
        kind,
        subtype,
        quality,
    })
}

/// The offer the client prefers, `None` when it accepts none of them.
pub fn best_match(accept: Option<&str>, offers: &[Format]) -> Option<Format> {
    let accept = match accept.map(str::trim) {
        None | Some("") => "*/*",
        Some(text) => text,
    };
    let entries = parse(accept);
    let mut best: Option<(Format, f32, u8)> = None;
    for offer in offers {
        for entry in &entries {
            if entry.quality <= 0.0 || !entry.matches(offer.mime()) {
                continue;
            }
            let better = match best {
                None => true,
                Some((_, quality, specificity)) => {
                    entry.quality > quality
                        || (entry.quality == quality && entry.specificity() > specificity)
                }
            };
            if better {
                best = Some((*offer, entry.quality, entry.specificity()));
            }
        }
    }
    best.map(|(format, _, _)| format)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";

    #[test]
    fn status_is_json_unless_xml_is_preferred() {
        assert_eq!(for_status(None), Format::Json);
        assert_eq!(for_status(Some("*/*")), Format::Json);
        assert_eq!(for_status(Some("application/xml")), Format::Xml);
        assert_eq!(for_status(Some("text/xml, application/xml")), Format::Xml);
        assert_eq!(
            for_status(Some("application/json;q=0.5, application/xml")),
            Format::Xml
        );
        assert_eq!(
            for_status(Some("application/xml;q=0.5, application/json")),
            Format::Json
        );
        assert_eq!(
            for_status(Some(BROWSER)),
            Format::Json,
            "a browser prefers HTML, not XML"
        );
        assert_eq!(for_status(Some("image/png")), Format::Json);
    }

    #[test]
    fn pages_are_html_unless_json_is_preferred() {
        assert_eq!(for_page(None), Format::Html);
        assert_eq!(for_page(Some("*/*")), Format::Html);
        assert_eq!(for_page(Some(BROWSER)), Format::Html);
        assert_eq!(for_page(Some("application/json")), Format::Json);
        assert_eq!(
            for_page(Some("text/html;q=0.1, application/json")),
            Format::Json
        );
        assert_eq!(
            for_page(Some("application/json, text/html")),
            Format::Html,
            "equal quality: HTML first"
        );
    }

    #[test]
    fn errors_are_json_unless_a_browser_or_xml_client_asks() {
        assert_eq!(for_error(None), Format::Json);
        assert_eq!(for_error(Some("*/*")), Format::Json);
        assert_eq!(for_error(Some(BROWSER)), Format::Html);
        assert_eq!(for_error(Some("application/xml")), Format::Xml);
        assert_eq!(for_error(Some("image/png")), Format::Json);
    }

    #[test]
    fn malformed_entries_and_zero_quality_are_ignored() {
        assert_eq!(
            best_match(Some("garbage, application/json;q=0"), &[Format::Json]),
            None
        );
        assert_eq!(
            best_match(Some("application/json;q=abc"), &[Format::Json]),
            None
        );
        assert_eq!(
            best_match(Some("APPLICATION/JSON"), &[Format::Json]),
            Some(Format::Json)
        );
        assert_eq!(best_match(Some("*"), &[Format::Html]), Some(Format::Html));
    }
}

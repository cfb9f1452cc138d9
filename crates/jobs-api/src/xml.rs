//! Status answers in XML, laid out as the original's `dicttoxml(state, attr_type=False,
//! custom_root="process_status")` laid them out:
//!
//! ```text
//! <?xml version="1.0" encoding="UTF-8" ?><process_status><status>SUCCESS</status>
//! <uuid>...</uuid><result>...</result></process_status>
//! ```
//!
//! (on one line). Objects become nested elements (keys sorted: the original's order was that
//! of a Python 2 dict, which no client could rely on), lists become `<item>` elements, null
//! an empty element, booleans `true`/`false`, numbers as Python prints them. A key that is
//! not an XML name becomes `n<digits>` when numeric, `_` for its spaces when that makes it
//! one, and `<key name="...">` otherwise.

use serde_json::Value;

const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>";

/// The status document: `status`, `uuid`, `result` under `<process_status>`.
pub fn process_status(status: &str, uuid: &str, result: &Value) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(HEADER);
    out.push_str("<process_status>");
    element(&mut out, "status", &Value::String(status.to_string()));
    element(&mut out, "uuid", &Value::String(uuid.to_string()));
    element(&mut out, "result", result);
    out.push_str("</process_status>");
    out
}

/// Any value under the root element `root` (errors use `<error>`).
pub fn document(root: &str, value: &Value) -> String {
    let mut out = String::from(HEADER);
    element(&mut out, root, value);
    out
}

fn element(out: &mut String, key: &str, value: &Value) {
    let (name, attribute) = xml_name(key);
    out.push('<');
    out.push_str(&name);
    if let Some(original) = &attribute {
        out.push_str(" name=\"");
        out.push_str(&escape(original));
        out.push('"');
    }
    out.push('>');
    content(out, value);
    out.push_str("</");
    out.push_str(&name);
    out.push('>');
}

fn content(out: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(_) => out.push_str(&crate::pyjson::compact(value)),
        Value::String(text) => out.push_str(&escape(text)),
        Value::Array(items) => {
            for item in items {
                element(out, "item", item);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            for key in keys {
                element(out, key, &map[key]);
            }
        }
    }
}

/// dicttoxml's escaping of text and attribute values; characters XML cannot carry become
/// U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Not allowed in XML 1.0 at all, escaped or not (dicttoxml wrote them and made
            // documents no parser reads).
            '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{c}'
            | '\u{e}'..='\u{1f}'
            | '\u{fffe}'
            | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The element name for `key`, and the original key as a `name` attribute when the key
/// cannot be a name.
fn xml_name(key: &str) -> (String, Option<String>) {
    if is_xml_name(key) {
        return (key.to_string(), None);
    }
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
        return (format!("n{key}"), None);
    }
    let underscored = key.replace(' ', "_");
    if is_xml_name(&underscored) {
        return (underscored, None);
    }
    ("key".to_string(), Some(key.to_string()))
}

/// An XML 1.0 (fifth edition) name, without `:` since namespaces are not declared, and not
/// starting with `xml`. The productions are the standard's character ranges, not Unicode's
/// letter classes: `ª` is alphabetic to Unicode but no XML name character.
fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if !is_name_start_char(first) {
        return false;
    }
    if name
        .get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("xml"))
    {
        return false;
    }
    chars.all(is_name_char)
}

/// `NameStartChar` of XML 1.0 (fifth edition), minus `:`.
fn is_name_start_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// `NameChar` of XML 1.0 (fifth edition), minus `:`.
fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_meta_becomes_nested_elements_in_status_uuid_result_order() {
        let meta = json!({"current": 40, "total": 100, "host": "w1", "start_time": null});
        assert_eq!(
            process_status("PROGRESS", "abc", &meta),
            "<?xml version=\"1.0\" encoding=\"UTF-8\" ?><process_status><status>PROGRESS</status>\
             <uuid>abc</uuid><result><current>40</current><host>w1</host><start_time></start_time>\
             <total>100</total></result></process_status>"
        );
    }

    #[test]
    fn lists_are_items_and_scalars_are_written_as_python_does() {
        let result = json!({"tags": ["a", 1.0, true, null, {"k": "<&>"}]});
        assert_eq!(
            process_status("SUCCESS", "u", &result),
            "<?xml version=\"1.0\" encoding=\"UTF-8\" ?><process_status><status>SUCCESS</status>\
             <uuid>u</uuid><result><tags><item>a</item><item>1.0</item><item>true</item>\
             <item></item><item><k>&lt;&amp;&gt;</k></item></tags></result></process_status>"
        );
    }

    #[test]
    fn letters_outside_the_xml_name_ranges_are_not_names() {
        // Found by `any_json_gives_well_formed_xml`: Unicode calls U+00AA a letter, XML does not.
        assert!(!is_xml_name("ª"));
        assert!(!is_xml_name("aº"));
        assert!(is_xml_name("é"));
        assert!(is_xml_name("a·b"));
        assert_eq!(xml_name("ª"), ("key".to_string(), Some("ª".to_string())));
    }

    #[test]
    fn keys_that_are_not_names_are_made_valid() {
        let result = json!({"2019": 1, "start time": 2, "a<b": 3});
        let text = process_status("SUCCESS", "u", &result);
        assert!(text.contains("<n2019>1</n2019>"), "{text}");
        assert!(text.contains("<start_time>2</start_time>"), "{text}");
        assert!(text.contains("<key name=\"a&lt;b\">3</key>"), "{text}");
        roxmltree::Document::parse(&text).expect("well-formed");
    }

    proptest::proptest! {
        #[test]
        fn any_json_gives_well_formed_xml(value in crate::testutil::json_value()) {
            let text = process_status("SUCCESS", "u", &value);
            proptest::prop_assert!(roxmltree::Document::parse(&text).is_ok(), "{}", text);
        }
    }
}

//! The small HTML pages of the job API (CANARIE info and stats, error pages for browsers):
//! a title and a table of fields, every text escaped.

/// A page titled `title` listing `rows` as name / value pairs.
pub fn page(title: &str, rows: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
    out.push_str(&escape(title));
    out.push_str("</title></head>\n<body><h1>");
    out.push_str(&escape(title));
    out.push_str("</h1>\n<table>\n");
    for (name, value) in rows {
        out.push_str("<tr><th>");
        out.push_str(&escape(name));
        out.push_str("</th><td>");
        out.push_str(&escape(value));
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

/// `text` with `& < > " '` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let text = page("Info <x>", &[("name", "a & b")]);
        assert!(text.contains("<title>Info &lt;x&gt;</title>"));
        assert!(text.contains("<tr><th>name</th><td>a &amp; b</td></tr>"));
    }
}

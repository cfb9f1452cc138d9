//! The region probe of `portico check`: `GET /regionInfo?regionHint=<hint>` must answer 200
//! with a well-formed `<regionSMTdata>` holding at least one server, each with a server
//! address, a name, a fingerprint and the asked region. Without `--region-hint` the probe
//! only checks that the service answers as it should for an unknown client (a region or
//! `404 Not found`).

use crate::{send_text, unexpected, url, CheckError, Target};

const WHAT: &str = "region";

/// Checks the region service end to end; pushes one line per step to `done`.
pub async fn probe(target: &Target, done: &mut Vec<String>) -> Result<(), CheckError> {
    let url = probe_url(&url(target, "/regionInfo"), target.region_hint.as_deref())?;
    let (status, body) = send_text(WHAT, &url, target.client.get(&url)).await?;
    match (&target.region_hint, status.as_u16()) {
        (None, 404) if body == "Not found" => {
            done.push(format!(
                "{url} answered 404 Not found (no --region-hint given)"
            ));
            Ok(())
        }
        (_, 200) => {
            let servers = servers(&body, target.region_hint.as_deref())
                .map_err(|problem| unexpected(WHAT, format!("{url}: {problem}")))?;
            done.push(format!("{url} answered {servers} server(s)"));
            Ok(())
        }
        _ => Err(unexpected(WHAT, format!("{url} answered {status}: {body}"))),
    }
}

/// `base`, with the hint as the `regionHint` query parameter (percent-encoded) when given.
fn probe_url(base: &str, hint: Option<&str>) -> Result<String, CheckError> {
    let Some(hint) = hint else {
        return Ok(base.to_owned());
    };
    reqwest::Url::parse_with_params(base, [("regionHint", hint)])
        .map(String::from)
        .map_err(|error| unexpected(WHAT, format!("{base}: {error}")))
}

/// Checks the answer's shape (what the real client's parser needs) and counts its servers.
fn servers(body: &str, region: Option<&str>) -> Result<usize, String> {
    let inner = body
        .strip_prefix("<regionSMTdata>\n")
        .and_then(|b| b.strip_suffix("</regionSMTdata>"))
        .ok_or_else(|| format!("not a <regionSMTdata> document: {body:?}"))?;
    let mut count = 0;
    for line in inner.lines() {
        let attributes = server_attributes(line)?;
        let get = |name: &str| attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if get("SMTserverIP").is_none() && get("SMTserverIPv6").is_none() {
            return Err(format!("server without an address: {line:?}"));
        }
        for required in ["SMTserverName", "fingerprint", "region"] {
            if get(required).is_none_or(|v| v.is_empty()) {
                return Err(format!("server without {required}: {line:?}"));
            }
        }
        if let (Some(wanted), Some(got)) = (region, get("region")) {
            if !got.eq_ignore_ascii_case(wanted) {
                return Err(format!("asked for region {wanted:?}, got {got:?}"));
            }
        }
        count += 1;
    }
    if count == 0 {
        return Err("200 without any server".into());
    }
    Ok(count)
}

/// `<smtInfo a="x" b="y"/>` -> `[(a, x), (b, y)]`.
fn server_attributes(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut rest = line
        .strip_prefix("<smtInfo")
        .and_then(|l| l.strip_suffix("/>"))
        .ok_or_else(|| format!("not an <smtInfo/> element: {line:?}"))?;
    let mut attributes = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Ok(attributes);
        }
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad attribute in {line:?}"))?;
        let (value, after) = after
            .split_once('"')
            .ok_or_else(|| format!("unterminated attribute in {line:?}"))?;
        if name.is_empty() || name.contains(|c: char| !c.is_ascii_alphanumeric()) {
            return Err(format!("bad attribute name {name:?} in {line:?}"));
        }
        attributes.push((name.to_string(), value.to_string()));
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "<regionSMTdata>\n<smtInfo SMTserverIP=\"52.1.2.3\" \
        SMTserverName=\"smt\" fingerprint=\"A1\" region=\"us-east-1\"/>\n\
        <smtInfo SMTserverIPv6=\"2600::1\" SMTserverName=\"smt\" fingerprint=\"A1\" \
        region=\"us-east-1\"/>\n</regionSMTdata>";

    #[test]
    fn well_formed_answer_counts_servers() {
        assert_eq!(servers(ANSWER, Some("US-EAST-1")), Ok(2));
        assert_eq!(servers(ANSWER, None), Ok(2));
    }

    #[test]
    fn wrong_region_or_shape_is_refused() {
        assert!(servers(ANSWER, Some("eu-west-1")).is_err());
        assert!(servers("<regionSMTdata>\n</regionSMTdata>", None).is_err());
        assert!(servers("<?xml version=\"1.0\"?><regionSMTdata/>", None).is_err());
        let no_fp = "<regionSMTdata>\n<smtInfo SMTserverIP=\"1.1.1.1\" SMTserverName=\"s\" \
                     region=\"r\"/>\n</regionSMTdata>";
        assert!(servers(no_fp, None).unwrap_err().contains("fingerprint"));
    }

    #[test]
    fn hint_is_encoded() {
        let url = probe_url("https://h:1/regionInfo", Some("us east/1")).unwrap();
        assert_eq!(url, "https://h:1/regionInfo?regionHint=us+east%2F1");
    }
}

//! The region model built from `regionData.cfg`: regions with their paired update servers,
//! the name index for `regionHint`, and the IPv4/IPv6 prefix tables for client addresses.
//!
//! Building checks everything the spec makes a start-up error and collects every such problem
//! (each naming section, key and line); malformed client ranges are warnings: logged by the
//! caller with the offending item, and skipped.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::ini::{self, Entry, Ini, Section};
use crate::net;
use crate::prefix::PrefixTable;
use crate::xml;

/// Options that change how the data is rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Print `SMTserverIP="None"` for IPv6-only servers, as the original does.
    pub ipv6_only_server_ip_none: bool,
}

/// One update server of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// IPv4 address as written in `smt-server-ip`.
    pub ipv4: Option<String>,
    /// IPv6 address as written in `smt-server-ipv6`.
    pub ipv6: Option<String>,
    /// `smt-server-name`.
    pub name: String,
    /// `smt-registry-name`.
    pub registry: Option<String>,
    /// `smt-fingerprint`.
    pub fingerprint: String,
}

/// One region (one section of the file).
#[derive(Debug, Clone)]
pub struct Region {
    /// Lower-cased section name: what `regionHint` matches and the `region` attribute.
    pub name: String,
    /// Its servers, in file order.
    pub servers: Vec<Server>,
    /// The `<smtInfo .../>` line of each server, rendered once.
    lines: Vec<String>,
}

impl Region {
    /// The XML answer with the servers in a new random order.
    pub fn answer(&self) -> String {
        xml::document(&self.lines)
    }
}

/// A problem of the data file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataProblem {
    /// 1-based line.
    pub line: usize,
    /// Section concerned.
    pub section: Option<String>,
    /// Key concerned.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DataProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(section) = &self.section {
            write!(f, ", section [{section}]")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl From<ini::Problem> for DataProblem {
    fn from(p: ini::Problem) -> Self {
        DataProblem {
            line: p.line,
            message: p.message(),
            section: p.section,
            key: p.key,
        }
    }
}

/// Why the data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read region data {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("region data {path} is not valid:\n{}", list(.problems))]
    Invalid {
        path: String,
        problems: Vec<DataProblem>,
    },
}

fn list(problems: &[DataProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    lines.join("\n")
}

/// The whole region data, ready to answer.
#[derive(Debug, Clone, Default)]
pub struct RegionData {
    regions: Vec<Region>,
    by_name: HashMap<String, u32>,
    v4: PrefixTable<Ipv4Addr>,
    v6: PrefixTable<Ipv6Addr>,
    /// Malformed client ranges and ignored keys: skipped, to be logged.
    pub warnings: Vec<DataProblem>,
}

impl RegionData {
    /// Reads and builds the file at `path`.
    pub fn load(path: &Path, options: BuildOptions) -> Result<RegionData, DataError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| DataError::Read {
            path: shown.clone(),
            error,
        })?;
        Self::from_bytes(&bytes, options).map_err(|problems| DataError::Invalid {
            path: shown,
            problems,
        })
    }

    /// Parses and builds a whole file.
    pub fn from_bytes(bytes: &[u8], options: BuildOptions) -> Result<RegionData, Vec<DataProblem>> {
        let ini = ini::parse_bytes(bytes).map_err(|problems| {
            problems
                .into_iter()
                .map(DataProblem::from)
                .collect::<Vec<_>>()
        })?;
        Self::from_ini(&ini, options)
    }

    /// Builds from a parsed file; every start-up problem is returned.
    pub fn from_ini(ini: &Ini, options: BuildOptions) -> Result<RegionData, Vec<DataProblem>> {
        let mut builder = Builder::default();
        for section in &ini.sections {
            builder.section(ini, section, options);
        }
        builder.finish()
    }

    /// The region named `hint` (already lower-cased).
    pub fn by_name(&self, hint: &str) -> Option<&Region> {
        self.by_name.get(hint).map(|&i| &self.regions[i as usize])
    }

    /// The region whose client ranges hold the longest prefix containing `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Region> {
        let index = match ip {
            IpAddr::V4(a) => self.v4.longest_match(a),
            IpAddr::V6(a) => self.v6.longest_match(a),
        };
        index.map(|i| &self.regions[i as usize])
    }

    /// Every region, in file order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Number of IPv4 and IPv6 client prefixes.
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }
}

const KNOWN_KEYS: [&str; 7] = [
    "public-ips",
    "public-ipsv6",
    "smt-server-ip",
    "smt-server-ipv6",
    "smt-server-name",
    "smt-registry-name",
    "smt-fingerprint",
];

/// Collects regions and problems section by section.
#[derive(Default)]
struct Builder {
    data: RegionData,
    /// Lower-cased name -> (section as written, header line).
    seen: HashMap<String, (String, usize)>,
    errors: Vec<DataProblem>,
}

/// The view of one section used while building it.
struct Ctx<'a> {
    ini: &'a Ini,
    section: &'a Section,
}

impl<'a> Ctx<'a> {
    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.section.get(self.ini, key)
    }

    /// Non-empty value of `key`.
    fn value(&self, key: &str) -> Option<&'a Entry> {
        self.entry(key).filter(|e| !e.value.trim().is_empty())
    }

    fn problem(&self, entry: Option<&Entry>, key: Option<&str>, message: String) -> DataProblem {
        DataProblem {
            line: entry.map_or(self.section.line, |e| e.line),
            section: Some(self.section.name.clone()),
            key: key.map(String::from),
            message,
        }
    }
}

impl Builder {
    fn section(&mut self, ini: &Ini, section: &Section, options: BuildOptions) {
        let ctx = Ctx { ini, section };
        let name = section.name.to_lowercase();
        if let Some((first, line)) = self.seen.get(&name) {
            self.errors.push(ctx.problem(
                None,
                None,
                format!(
                    "region name {name:?} is already used by section [{first}] on line {line} \
                     (region names are compared lower-cased)"
                ),
            ));
            return;
        }
        self.seen
            .insert(name.clone(), (section.name.clone(), section.line));
        self.warn_unknown_keys(&ctx);
        let servers = match servers(&ctx) {
            Ok(servers) => servers,
            Err(mut problems) => {
                self.errors.append(&mut problems);
                return;
            }
        };
        let index = self.data.regions.len() as u32;
        self.client_ranges(&ctx, index);
        let lines = servers
            .iter()
            .map(|s| xml::server_line(s, &name, options))
            .collect();
        self.data.by_name.insert(name.clone(), index);
        self.data.regions.push(Region {
            name,
            servers,
            lines,
        });
    }

    fn warn_unknown_keys(&mut self, ctx: &Ctx<'_>) {
        for entry in &ctx.section.entries {
            if !KNOWN_KEYS.contains(&entry.key.as_str()) {
                let message = "unknown key ignored".to_string();
                let problem = ctx.problem(Some(entry), Some(&entry.key), message);
                self.data.warnings.push(problem);
            }
        }
    }

    fn client_ranges(&mut self, ctx: &Ctx<'_>, index: u32) {
        if let Some(entry) = ctx.value("public-ips") {
            for item in entry.value.split(',') {
                match net::parse_v4(item) {
                    Ok(n) => self.data.v4.insert(n.addr, n.len, index),
                    Err(e) => self.malformed(ctx, entry, item, e),
                }
            }
        }
        if let Some(entry) = ctx.value("public-ipsv6") {
            for item in entry.value.split(',') {
                match net::parse_v6(item) {
                    Ok(n) => self.data.v6.insert(n.addr, n.len, index),
                    Err(e) => self.malformed(ctx, entry, item, e),
                }
            }
        }
    }

    fn malformed(&mut self, ctx: &Ctx<'_>, entry: &Entry, item: &str, e: net::NetError) {
        let message = format!("client range {item:?} skipped: {e}");
        let problem = ctx.problem(Some(entry), Some(&entry.key), message);
        self.data.warnings.push(problem);
    }

    fn finish(mut self) -> Result<RegionData, Vec<DataProblem>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        self.data.v4.shrink_to_fit();
        self.data.v6.shrink_to_fit();
        Ok(self.data)
    }
}

/// Splits a comma-separated list into trimmed items; an empty item is a problem.
fn items<'a>(ctx: &Ctx<'_>, entry: &'a Entry) -> Result<Vec<&'a str>, DataProblem> {
    let items: Vec<&str> = entry.value.split(',').map(str::trim).collect();
    if items.iter().any(|i| i.is_empty()) {
        let message = format!("empty item in {:?}", entry.value);
        return Err(ctx.problem(Some(entry), Some(&entry.key), message));
    }
    Ok(items)
}

/// The servers of a section, paired by position, or every problem of the section.
fn servers(ctx: &Ctx<'_>) -> Result<Vec<Server>, Vec<DataProblem>> {
    let mut problems = Vec::new();
    let v4 = server_addresses(ctx, "smt-server-ip", false, &mut problems);
    let v6 = server_addresses(ctx, "smt-server-ipv6", true, &mut problems);
    if v4.is_none() && v6.is_none() && problems.is_empty() {
        problems.push(ctx.problem(
            None,
            Some("smt-server-ip"),
            "no update server address: set smt-server-ip or smt-server-ipv6 (or both)".into(),
        ));
    }
    let n = v4.as_ref().or(v6.as_ref()).map_or(0, Vec::len);
    if let (Some(a), Some(b)) = (&v4, &v6) {
        if a.len() != b.len() {
            let entry = ctx.entry("smt-server-ipv6");
            let message = format!(
                "{} IPv6 addresses but smt-server-ip has {} (they are paired by position)",
                b.len(),
                a.len()
            );
            problems.push(ctx.problem(entry, Some("smt-server-ipv6"), message));
        }
    }
    let names = per_server(ctx, "smt-server-name", true, n, &mut problems);
    let registries = per_server(ctx, "smt-registry-name", false, n, &mut problems);
    let fingerprints = per_server(ctx, "smt-fingerprint", true, n, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let pick = |list: &Option<Vec<String>>, i: usize| list.as_ref().map(|l| l[i].clone());
    Ok((0..n)
        .map(|i| Server {
            ipv4: pick(&v4, i),
            ipv6: pick(&v6, i),
            name: pick(&names, i).unwrap_or_default(),
            registry: pick(&registries, i),
            fingerprint: pick(&fingerprints, i).unwrap_or_default(),
        })
        .collect())
}

/// `smt-server-ip` / `smt-server-ipv6`: absent or empty is `None`.
fn server_addresses(
    ctx: &Ctx<'_>,
    key: &str,
    v6: bool,
    problems: &mut Vec<DataProblem>,
) -> Option<Vec<String>> {
    let entry = ctx.value(key)?;
    let list = match items(ctx, entry) {
        Ok(list) => list,
        Err(p) => {
            problems.push(p);
            return None;
        }
    };
    for item in &list {
        let ok = if v6 {
            item.parse::<Ipv6Addr>().is_ok()
        } else {
            item.parse::<Ipv4Addr>().is_ok()
        };
        if !ok {
            let family = if v6 { "IPv6" } else { "IPv4" };
            let message = format!("{item:?} is not an {family} address");
            problems.push(ctx.problem(Some(entry), Some(key), message));
        }
    }
    Some(list.into_iter().map(String::from).collect())
}

/// A value given once for all servers or once per server, expanded to one per server.
fn per_server(
    ctx: &Ctx<'_>,
    key: &str,
    required: bool,
    n: usize,
    problems: &mut Vec<DataProblem>,
) -> Option<Vec<String>> {
    let Some(entry) = ctx.value(key) else {
        if required {
            problems.push(ctx.problem(ctx.entry(key), Some(key), "missing (required)".into()));
        }
        return None;
    };
    let list = match items(ctx, entry) {
        Ok(list) => list,
        Err(p) => {
            problems.push(p);
            return None;
        }
    };
    if list.len() == 1 {
        return Some(vec![list[0].to_string(); n]);
    }
    if list.len() != n {
        let message = format!(
            "{} values for {n} servers (give 1 for all, or exactly {n})",
            list.len()
        );
        problems.push(ctx.problem(Some(entry), Some(key), message));
        return None;
    }
    Some(list.into_iter().map(String::from).collect())
}

#[cfg(test)]
pub(crate) mod tests;

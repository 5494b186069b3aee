//! User-data named on the kernel command line (PXE installs): `nodeboot.config=URL` with
//! `${mac}`, `${uuid}` and `${hostname}` substituted, or cloud-init's NoCloud line
//! configuration `ds=nocloud;s=URL` / `ds=nocloud-net;s=URL` (reference §3.3, §3.6).
//!
//! The command line is world-readable: it carries a URL, never a secret.

use std::path::{Path, PathBuf};

use super::decode::{read_file_limited, MAX_RAW_USER_DATA};
use super::http::{self, HttpError};
use super::{Net, Source, SourceError, SourceMeta};

const NAME: &str = "cmdline";

/// The `nodeboot.config=` parameter.
pub const CONFIG_PARAM: &str = "nodeboot.config";

/// Reads the kernel command line file and fetches what it points to.
#[derive(Debug)]
pub struct Cmdline {
    cmdline_path: PathBuf,
    root: PathBuf,
    net: Net,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineRequest {
    /// `nodeboot.config=URL`, variables not yet substituted.
    Config { url: String },
    /// `ds=nocloud[-net];s=SEED[;h=HOST][;i=ID]`: fetch `SEED/user-data`.
    NoCloud { seed: String, meta: SourceMeta },
}

impl Cmdline {
    pub(crate) fn new(cmdline_path: PathBuf, root: PathBuf, net: Net) -> Self {
        Cmdline {
            cmdline_path,
            root,
            net,
        }
    }

    fn request(&self) -> Result<CmdlineRequest, SourceError> {
        let text = std::fs::read_to_string(&self.cmdline_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                absent(format!("{} does not exist", self.cmdline_path.display()))
            } else {
                failed(format!("reading {}: {e}", self.cmdline_path.display()))
            }
        })?;
        parse_request(&text).ok_or_else(|| {
            absent(format!(
                "no {CONFIG_PARAM}= or ds=nocloud;s= in {}",
                self.cmdline_path.display()
            ))
        })
    }

    fn fetch_url(&self, url: &str) -> Result<Vec<u8>, SourceError> {
        fetch_url(url, &self.net).map_err(failed)
    }
}

/// The bytes behind a config URL (`file`, `http`, `https`), at most [`MAX_RAW_USER_DATA`];
/// anything but `200` is an error: an explicitly configured URL that does not answer is not a
/// reason to fall back to another source. Shared with the installer's config fetch.
pub(crate) fn fetch_url(url: &str, net: &Net) -> Result<Vec<u8>, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| format!("`{url}` is not a local file URL"))?;
            read_file_limited(&path, MAX_RAW_USER_DATA)
                .map_err(|e| format!("reading {}: {e}", path.display()))
        }
        "http" | "https" => {
            // A PXE environment may need a proxy to reach the config server; metadata
            // services never do.
            let client = http::client(net.timeout, true)?;
            let reply = http::send(url, &net.retry, MAX_RAW_USER_DATA, || {
                client.get(parsed.clone())
            })
            .map_err(|e| match e {
                HttpError::TooLarge { .. } => format!("{url}: {e}"),
                HttpError::Transport(m) => m,
            })?;
            if reply.status != 200 {
                return Err(format!("{url}: HTTP {}", reply.status));
            }
            Ok(reply.body)
        }
        other => Err(format!(
            "`{url}`: unsupported scheme `{other}` (use http, https or file)"
        )),
    }
}

impl Source for Cmdline {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        self.fetch_with_meta().map(|(b, _)| b)
    }

    fn fetch_with_meta(&self) -> Result<(Vec<u8>, SourceMeta), SourceError> {
        match self.request()? {
            CmdlineRequest::Config { url } => {
                let vars = HostVars {
                    root: &self.root,
                    cmdline_path: &self.cmdline_path,
                };
                let url = substitute(&url, &vars)?;
                tracing::info!(%url, "fetching user-data named on the kernel command line");
                Ok((self.fetch_url(&url)?, SourceMeta::default()))
            }
            CmdlineRequest::NoCloud { seed, meta } => {
                let url = seed_file_url(&seed, "user-data");
                tracing::info!(%url, "fetching NoCloud user-data from the seed URL");
                Ok((self.fetch_url(&url)?, meta))
            }
        }
    }
}

/// Split a kernel command line into parameters: whitespace-separated, double quotes group
/// (`key="a b"`, as the kernel's own parser allows), the first `=` separates key and value.
pub fn parse_params(line: &str) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut push = |cur: &mut String| {
        if !cur.is_empty() {
            let token = std::mem::take(cur);
            match token.split_once('=') {
                Some((k, v)) => params.push((k.to_owned(), Some(v.to_owned()))),
                None => params.push((token, None)),
            }
        }
    };
    for c in line.chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => push(&mut cur),
            c => cur.push(c),
        }
    }
    push(&mut cur);
    params
}

/// The request on a command line, if any. `nodeboot.config=` wins over `ds=`; the last
/// occurrence of a parameter counts, as with the kernel's own parameters.
pub fn parse_request(line: &str) -> Option<CmdlineRequest> {
    let params = parse_params(line);
    let last = |key: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    if let Some(url) = last(CONFIG_PARAM).filter(|u| !u.is_empty()) {
        return Some(CmdlineRequest::Config { url });
    }
    let ds = last("ds")?;
    let mut parts = ds.split(';');
    let kind = parts.next()?;
    if kind != "nocloud" && kind != "nocloud-net" {
        return None;
    }
    let mut seed = None;
    let mut meta = SourceMeta::default();
    for part in parts {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "s" | "seedfrom" => seed = Some(v.to_owned()),
            "h" | "local-hostname" => meta.hostname = Some(v.to_owned()),
            "i" | "instance-id" => meta.instance_id = Some(v.to_owned()),
            _ => {}
        }
    }
    // `ds=nocloud` without a seed means "look for the cidata volume": not ours to fetch.
    let seed = seed.filter(|s| !s.is_empty())?;
    Some(CmdlineRequest::NoCloud { seed, meta })
}

/// `SEED` + `file`, adding the `/` cloud-init adds when the seed has none and no query.
pub fn seed_file_url(seed: &str, file: &str) -> String {
    if seed.ends_with('/') || seed.contains('?') {
        format!("{seed}{file}")
    } else {
        format!("{seed}/{file}")
    }
}

/// Where `${mac}`, `${uuid}` and `${hostname}` come from.
#[derive(Debug)]
pub struct HostVars<'a> {
    pub root: &'a Path,
    pub cmdline_path: &'a Path,
}

impl HostVars<'_> {
    fn value(&self, name: &str) -> Result<String, SourceError> {
        match name {
            "mac" => self.mac(),
            "uuid" => read_trimmed(&self.root.join("sys/class/dmi/id/product_uuid"))
                .map(|u| u.to_ascii_lowercase()),
            "hostname" => read_trimmed(&self.root.join("proc/sys/kernel/hostname")),
            other => Err(failed(format!(
                "unknown variable ${{{other}}} in {CONFIG_PARAM}= (known: ${{mac}}, ${{uuid}}, ${{hostname}})"
            ))),
        }
    }

    /// The boot interface's MAC: pxelinux's `BOOTIF=01-aa-bb-…` names it exactly; without
    /// it, the first (by name) non-loopback interface that has a device behind it.
    fn mac(&self) -> Result<String, SourceError> {
        let line = std::fs::read_to_string(self.cmdline_path).unwrap_or_default();
        if let Some(Some(bootif)) = parse_params(&line)
            .into_iter()
            .rev()
            .find(|(k, _)| k == "BOOTIF")
            .map(|(_, v)| v)
        {
            return parse_bootif(&bootif)
                .ok_or_else(|| failed(format!("BOOTIF=`{bootif}` is not a hardware address")));
        }
        let net = self.root.join("sys/class/net");
        let mut names: Vec<String> = std::fs::read_dir(&net)
            .map_err(|e| failed(format!("listing {}: {e}", net.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        // Physical interfaces first (they have a `device` link); virtual ones only as a
        // fallback so a bridge created early does not win.
        let (physical, virtual_): (Vec<_>, Vec<_>) = names
            .into_iter()
            .partition(|n| net.join(n).join("device").exists());
        for name in physical.iter().chain(virtual_.iter()) {
            if let Ok(addr) = read_trimmed(&net.join(name).join("address")) {
                let addr = addr.to_ascii_lowercase();
                if is_mac(&addr) && addr != "00:00:00:00:00:00" {
                    return Ok(addr);
                }
            }
        }
        Err(failed(format!(
            "${{mac}}: no BOOTIF= on the command line and no network interface with a hardware address under {}",
            net.display()
        )))
    }
}

/// `01-aa-bb-cc-dd-ee-ff` (ARP type 1 = Ethernet, then the address) → `aa:bb:cc:dd:ee:ff`.
pub fn parse_bootif(v: &str) -> Option<String> {
    let rest = v.strip_prefix("01-").unwrap_or(v);
    let mac = rest.replace('-', ":").to_ascii_lowercase();
    is_mac(&mac).then_some(mac)
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Replace every `${name}`; an unknown name or an unterminated `${` is an error.
pub fn substitute(template: &str, vars: &HostVars<'_>) -> Result<String, SourceError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| failed(format!("unterminated ${{ in `{template}`")))?;
        out.push_str(&vars.value(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn read_trimmed(path: &Path) -> Result<String, SourceError> {
    let v = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
    let v = v.trim().to_owned();
    if v.is_empty() {
        return Err(failed(format!("{} is empty", path.display())));
    }
    Ok(v)
}

fn absent(detail: String) -> SourceError {
    SourceError::Absent {
        source_name: NAME,
        detail,
    }
}

fn failed(detail: String) -> SourceError {
    SourceError::Failed {
        source_name: NAME,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_split_like_the_kernel() {
        let p = parse_params("BOOT_IMAGE=/vmlinuz ro quiet nodeboot.config=\"http://x/a b\" x=1=2");
        assert_eq!(p[0], ("BOOT_IMAGE".into(), Some("/vmlinuz".into())));
        assert_eq!(p[1], ("ro".into(), None));
        assert_eq!(
            p[3],
            ("nodeboot.config".into(), Some("http://x/a b".into()))
        );
        assert_eq!(p[4], ("x".into(), Some("1=2".into())));
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_request("ro nodeboot.config=http://a/${mac} ds=nocloud;s=http://b/"),
            Some(CmdlineRequest::Config {
                url: "http://a/${mac}".into()
            })
        );
        assert_eq!(
            parse_request("ds=nocloud-net;s=http://10.0.0.1/seed;h=node-7;i=iid-7"),
            Some(CmdlineRequest::NoCloud {
                seed: "http://10.0.0.1/seed".into(),
                meta: SourceMeta {
                    instance_id: Some("iid-7".into()),
                    hostname: Some("node-7".into())
                }
            })
        );
        assert_eq!(parse_request("ds=nocloud"), None);
        assert_eq!(parse_request("ds=ec2;s=http://x/"), None);
        assert_eq!(parse_request("root=/dev/sda1 ro"), None);
    }

    #[test]
    fn seed_urls() {
        assert_eq!(
            seed_file_url("http://h/s/", "user-data"),
            "http://h/s/user-data"
        );
        assert_eq!(
            seed_file_url("http://h/s", "user-data"),
            "http://h/s/user-data"
        );
        assert_eq!(
            seed_file_url("http://h/s?x=", "user-data"),
            "http://h/s?x=user-data"
        );
    }

    #[test]
    fn bootif() {
        assert_eq!(
            parse_bootif("01-52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(parse_bootif("01-52-54"), None);
    }
}

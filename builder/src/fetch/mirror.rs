//! Where an artifact may come from: the ordered list of sources tried for one artifact, with
//! the `--artifact-mirror` rewrite applied. The lookup order is part of the user-facing
//! contract (docs/fetch.md); `candidate_sources` is the one place that defines it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use url::Url;

/// An alternative place artifacts are fetched from (`--artifact-mirror URL|DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// An HTTP(S) server laid out as `<base>/<upstream host>/<upstream path>`.
    Url(Url),
    /// A local directory: `<dir>/<upstream host>/<upstream path>`, or flat `<dir>/<sha256>`,
    /// or flat `<dir>/<basename>`.
    Dir(PathBuf),
}

impl FromStr for Mirror {
    type Err = String;

    /// `http://…` and `https://…` are a mirror server, `file:///x` and anything else a
    /// directory. Whether the directory exists is checked when fetching, so that the error
    /// can say which artifacts needed it.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an artifact mirror must be an http(s):// URL or a directory".into());
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = Url::parse(s).map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
            if !url.has_host() {
                return Err(format!("mirror URL `{s}` has no host"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!(
                    "mirror URL `{s}` must not have a query or fragment: artifact paths are appended to it"
                ));
            }
            return Ok(Mirror::Url(url));
        }
        if lower.starts_with("file://") {
            let url = Url::parse(s).map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
            let dir = url
                .to_file_path()
                .map_err(|()| format!("`{s}` is not a local file URL"))?;
            return Ok(Mirror::Dir(dir));
        }
        if s.contains("://") {
            return Err(format!(
                "mirror `{s}`: only http://, https:// and file:// URLs or a directory are supported"
            ));
        }
        Ok(Mirror::Dir(PathBuf::from(s)))
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mirror::Url(u) => f.write_str(u.as_str()),
            Mirror::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

impl Mirror {
    /// Fail early, naming the option, when a mirror directory is missing.
    pub(super) fn check(&self) -> Result<()> {
        if let Mirror::Dir(d) = self {
            let meta = std::fs::metadata(d)
                .with_context(|| format!("--artifact-mirror directory {}", d.display()))?;
            if !meta.is_dir() {
                bail!("--artifact-mirror {} is not a directory", d.display());
            }
        }
        Ok(())
    }
}

/// One place an artifact may be read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Http(Url),
    File(PathBuf),
}

impl Source {
    pub(super) fn is_network(&self) -> bool {
        matches!(self, Source::Http(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Http(u) => f.write_str(u.as_str()),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The sources to try for an artifact, in order:
/// 1. `file://` upstream URL: only that file (mirrors do not apply to local files);
/// 2. `Mirror::Url(base)`: `<base>/<host>/<path>`;
///    `Mirror::Dir(d)`: `<d>/<host>/<path>`, then `<d>/<sha256>`, then `<d>/<basename>`;
/// 3. the upstream URL itself.
///
/// Every source is verified against the sha256, so falling through to the next one after a
/// miss or a mismatch (a flat `<basename>` of another version, say) is safe.
pub(super) fn candidate_sources(
    url: &str,
    sha256: &Sha256Hex,
    mirror: Option<&Mirror>,
) -> Result<Vec<Source>> {
    let upstream = Url::parse(url).with_context(|| format!("parsing artifact URL `{url}`"))?;
    if upstream.scheme() == "file" {
        let path = upstream
            .to_file_path()
            .map_err(|()| anyhow::anyhow!("`{url}` is not a local file URL"))?;
        return Ok(vec![Source::File(path)]);
    }
    let mut out = Vec::new();
    match mirror {
        None => {}
        Some(Mirror::Url(base)) => out.push(Source::Http(rewrite_url(base, &upstream)?)),
        Some(Mirror::Dir(dir)) => {
            if let Some(rel) = relative_path(&upstream) {
                out.push(Source::File(dir.join(rel)));
            }
            out.push(Source::File(dir.join(sha256.as_str())));
            if let Some(base) = basename(&upstream) {
                out.push(Source::File(dir.join(base)));
            }
        }
    }
    out.push(Source::Http(upstream));
    Ok(out)
}

/// `https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet` with base
/// `http://mirror/k8s/` → `http://mirror/k8s/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet`.
/// The upstream port, query and fragment are not part of the mirror layout.
fn rewrite_url(base: &Url, upstream: &Url) -> Result<Url> {
    let host = upstream
        .host_str()
        .with_context(|| format!("artifact URL `{upstream}` has no host"))?;
    let joined = format!(
        "{}/{}{}",
        base.as_str().trim_end_matches('/'),
        host,
        upstream.path()
    );
    Url::parse(&joined).with_context(|| format!("building mirror URL `{joined}`"))
}

/// `<host>/<decoded path segments>` as a relative path, or `None` when a segment could not be
/// a plain file name (`..`, an encoded `/`, a NUL), which would let a URL point outside the
/// mirror directory.
fn relative_path(upstream: &Url) -> Option<PathBuf> {
    let host = upstream.host_str()?;
    if !is_plain_name(host) {
        return None;
    }
    let mut rel = PathBuf::from(host);
    for seg in upstream.path_segments()? {
        if seg.is_empty() {
            continue;
        }
        let seg = percent_decode(seg)?;
        if !is_plain_name(&seg) {
            return None;
        }
        rel.push(seg);
    }
    Some(rel)
}

fn basename(upstream: &Url) -> Option<String> {
    let last = upstream.path_segments()?.rev().find(|s| !s.is_empty())?;
    let name = percent_decode(last)?;
    is_plain_name(&name).then_some(name)
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The artifact's upstream host, for hints about restricted networks.
pub(super) fn host_of(url: &str) -> Option<String> {
    Url::parse(url).ok()?.host_str().map(str::to_owned)
}

/// True when `p` names a file that exists (following symlinks, as the mirror admin intends).
pub(super) fn exists_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet";

    fn sha() -> Sha256Hex {
        Sha256Hex::of_bytes(b"kubelet")
    }

    #[test]
    fn parses_urls_and_dirs() {
        assert!(matches!(
            "https://m.example/k8s".parse::<Mirror>().unwrap(),
            Mirror::Url(_)
        ));
        assert_eq!(
            "/srv/mirror".parse::<Mirror>().unwrap(),
            Mirror::Dir(PathBuf::from("/srv/mirror"))
        );
        assert_eq!(
            "file:///srv/mirror".parse::<Mirror>().unwrap(),
            Mirror::Dir(PathBuf::from("/srv/mirror"))
        );
        assert_eq!(
            "relative/dir".parse::<Mirror>().unwrap(),
            Mirror::Dir(PathBuf::from("relative/dir"))
        );
        assert!("ftp://x/y".parse::<Mirror>().is_err());
        assert!("".parse::<Mirror>().is_err());
        assert!("https://m/?a=b".parse::<Mirror>().is_err());
    }

    #[test]
    fn url_mirror_appends_host_and_path() {
        for base in [
            "http://127.0.0.1:8080/cache",
            "http://127.0.0.1:8080/cache/",
        ] {
            let m: Mirror = base.parse().unwrap();
            let c = candidate_sources(KUBELET, &sha(), Some(&m)).unwrap();
            assert_eq!(
                c,
                vec![
                    Source::Http(
                        Url::parse(
                            "http://127.0.0.1:8080/cache/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"
                        )
                        .unwrap()
                    ),
                    Source::Http(Url::parse(KUBELET).unwrap()),
                ]
            );
        }
    }

    #[test]
    fn dir_mirror_order() {
        let m = Mirror::Dir(PathBuf::from("/m"));
        let c = candidate_sources(KUBELET, &sha(), Some(&m)).unwrap();
        assert_eq!(
            c,
            vec![
                Source::File(PathBuf::from(
                    "/m/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"
                )),
                Source::File(PathBuf::from(format!("/m/{}", sha()))),
                Source::File(PathBuf::from("/m/kubelet")),
                Source::Http(Url::parse(KUBELET).unwrap()),
            ]
        );
    }

    #[test]
    fn encoded_traversal_never_leaves_the_mirror_dir() {
        let m = Mirror::Dir(PathBuf::from("/m"));
        let c = candidate_sources("https://h.example/a/%2e%2e/%2F/x", &sha(), Some(&m)).unwrap();
        for s in &c {
            if let Source::File(p) = s {
                assert!(p.starts_with("/m"), "{p:?}");
                assert!(!p.components().any(|c| c.as_os_str() == ".."), "{p:?}");
            }
        }
        // The host/path form is dropped, the flat forms stay.
        assert_eq!(c.len(), 3, "{c:?}");
    }

    #[test]
    fn file_urls_ignore_mirrors() {
        let m = Mirror::Dir(PathBuf::from("/m"));
        let c = candidate_sources("file:///srv/a%20b/kubelet", &sha(), Some(&m)).unwrap();
        assert_eq!(c, vec![Source::File(PathBuf::from("/srv/a b/kubelet"))]);
    }
}

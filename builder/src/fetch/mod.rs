//! Stage `fetch`: artifacts downloaded by URL, verified by sha256, kept in a content-addressed
//! cache.
//!
//! Cache layout: `<cache_dir>/artifacts/sha256/<hex>`, one read-only file per digest. An entry
//! is created only by renaming a temporary file from the same directory after its digest
//! matched, so an interrupted or wrong download never looks like a cache hit. Each hit is
//! re-hashed once per [`fetch_all`] call; a corrupted entry is removed and fetched again.
//!
//! Lookup order for one artifact (first source whose content matches the sha256 wins; a
//! source that is missing, unreachable or sends other bytes is skipped and reported only when
//! no source succeeds):
//! 1. the cache;
//! 2. a `file://` artifact URL: that file only (mirrors do not apply);
//! 3. with `--artifact-mirror URL`: `<URL>/<upstream host>/<upstream path>`;
//!    with `--artifact-mirror DIR`: `<DIR>/<upstream host>/<upstream path>`, then
//!    `<DIR>/<sha256>`, then `<DIR>/<basename of the URL>`;
//! 4. the upstream URL.
//!
//! `--offline` skips every network source (mirror URL and upstream) but still reads the cache,
//! `file://` URLs and a mirror directory; anything still missing fails with one error listing
//! all of them. docs/fetch.md is the user-facing version of this.

mod http;
mod install;
mod mirror;
mod store;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nodeimg_common::digest::Sha256Hex;
use serde::Serialize;

use crate::progress::{self, Step};
use crate::recipe::schema::Artifact;
use http::{human_bytes, DownloadError, Http};
use mirror::{candidate_sources, exists_file, host_of, Source};
use store::{Entry, IngestError, Store};

pub use install::install_artifact;
pub use mirror::Mirror;

/// How [`fetch_all`] finds and downloads artifacts.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Root of the build cache; artifacts live under `artifacts/sha256/`.
    pub cache_dir: PathBuf,
    pub mirror: Option<Mirror>,
    /// Never use the network.
    pub offline: bool,
    /// Extra attempts after a transient failure (connection error, timeout, 408, 429, 5xx).
    pub retries: u32,
    /// Connect timeout, and the longest a download may stall without receiving a byte.
    pub timeout: Duration,
    /// Wait before the first retry; doubles with each further one, capped at 30 s.
    pub backoff: Duration,
}

impl FetchOptions {
    /// Defaults for interactive and CI use: 4 retries starting at 1 s, 30 s timeout.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        FetchOptions {
            cache_dir: cache_dir.into(),
            mirror: None,
            offline: false,
            retries: 4,
            timeout: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
        }
    }
}

/// A verified artifact in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fetched {
    pub name: String,
    pub sha256: Sha256Hex,
    /// The verified file in the cache.
    pub path: PathBuf,
    pub size: u64,
    pub from_cache: bool,
    /// URL or path actually used (the cache entry itself for a cache hit).
    pub source: String,
}

/// Make every artifact available in the cache, verified; results in input order.
pub fn fetch_all(artifacts: &[Artifact], opts: &FetchOptions) -> Result<Vec<Fetched>> {
    if let Some(m) = &opts.mirror {
        m.check()?;
    }
    let store = Store::new(&opts.cache_dir);
    let step = progress::step(format!(
        "fetch {} artifact{}",
        artifacts.len(),
        if artifacts.len() == 1 { "" } else { "s" }
    ));
    let mut fetcher = Fetcher {
        opts,
        store: &store,
        step: &step,
        http: None,
        seen: HashMap::new(),
    };
    let mut out = Vec::with_capacity(artifacts.len());
    let mut missing = Vec::new();
    for a in artifacts {
        match fetcher.fetch_one(a)? {
            Ok(f) => out.push(f),
            Err(tried) => missing.push((a, tried)),
        }
    }
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(offline_report(
            &missing,
            artifacts.len(),
            &store
        )));
    }
    let cached = out.iter().filter(|f| f.from_cache).count();
    step.done_with(&format!("{cached} cached, {} fetched", out.len() - cached));
    Ok(out)
}

struct Fetcher<'a> {
    opts: &'a FetchOptions,
    store: &'a Store,
    step: &'a Step,
    http: Option<Http>,
    /// Entries already verified in this call: a digest listed twice is hashed once.
    seen: HashMap<Sha256Hex, Entry>,
}

/// What was tried for an artifact that could not be fetched: (source, why not).
type Tried = Vec<(String, String)>;

impl Fetcher<'_> {
    /// `Ok(Err(tried))` only in offline mode, where missing artifacts are collected into one
    /// report; online, a failure is an error right away.
    fn fetch_one(&mut self, a: &Artifact) -> Result<Result<Fetched, Tried>> {
        let name = a.name.as_str();
        let sha = &a.sha256;
        let hit = match self.seen.get(sha) {
            Some(e) => Some(e.clone()),
            None => self
                .store
                .verified(sha)
                .with_context(|| format!("checking the cache for artifact `{name}`"))?,
        };
        if let Some(entry) = hit {
            self.step.note(format!(
                "{name}: cached ({}, sha256 {})",
                human_bytes(entry.size),
                sha.short(12)
            ));
            self.seen.insert(sha.clone(), entry.clone());
            return Ok(Ok(fetched(
                a,
                &entry,
                true,
                entry.path.display().to_string(),
            )));
        }

        let sources = candidate_sources(a.url.as_str(), sha, self.opts.mirror.as_ref())
            .with_context(|| format!("artifact `{name}`"))?;
        let mut tried: Tried = Vec::new();
        let mut unreachable = false;
        for src in sources {
            if self.opts.offline && src.is_network() {
                continue;
            }
            let shown = src.to_string();
            let result = match &src {
                Source::File(p) => self.copy_local(name, sha, p),
                Source::Http(u) => {
                    if self.http.is_none() {
                        let o = self.opts;
                        self.http = Some(Http::new(o.timeout, o.retries, o.backoff)?);
                    }
                    let http = self.http.as_ref().expect("client just created");
                    http.download(name, u, sha, self.store, self.step)
                }
            };
            match result {
                Ok(entry) => {
                    self.seen.insert(sha.clone(), entry.clone());
                    return Ok(Ok(fetched(a, &entry, false, shown)));
                }
                Err(DownloadError::Local(e)) => {
                    return Err(e.context(format!("storing artifact `{name}` in the cache")))
                }
                Err(DownloadError::Mismatch { actual, size }) => tried.push((
                    shown,
                    format!(
                        "sha256 mismatch: expected {sha}, got {actual} ({size} bytes); \
                         nothing was kept"
                    ),
                )),
                Err(DownloadError::Unreachable(e)) => {
                    unreachable = true;
                    tried.push((shown, format!("{e:#}")));
                }
                Err(DownloadError::Refused(e)) => tried.push((shown, format!("{e:#}"))),
            }
        }
        if self.opts.offline {
            return Ok(Err(tried));
        }
        Err(anyhow::anyhow!(online_report(a, &tried, unreachable)))
    }

    /// Copy a local file (a `file://` URL or a mirror directory entry) into the cache.
    fn copy_local(
        &self,
        name: &str,
        sha: &Sha256Hex,
        path: &std::path::Path,
    ) -> Result<Entry, DownloadError> {
        if !exists_file(path) {
            return Err(DownloadError::Refused(anyhow::anyhow!("not found")));
        }
        let mut f = File::open(path)
            .with_context(|| format!("opening {}", path.display()))
            .map_err(DownloadError::Refused)?;
        match self.store.ingest(sha, &mut f, &mut |_| {}) {
            Ok(entry) => {
                self.step.note(format!(
                    "{name}: copied from {} ({}), sha256 verified",
                    path.display(),
                    human_bytes(entry.size)
                ));
                Ok(entry)
            }
            Err(IngestError::Mismatch { actual, size }) => {
                Err(DownloadError::Mismatch { actual, size })
            }
            Err(IngestError::Read(e)) => Err(DownloadError::Refused(
                anyhow::Error::new(e).context(format!("reading {}", path.display())),
            )),
            Err(IngestError::Write(e)) => Err(DownloadError::Local(e)),
        }
    }
}

fn fetched(a: &Artifact, entry: &Entry, from_cache: bool, source: String) -> Fetched {
    Fetched {
        name: a.name.to_string(),
        sha256: a.sha256.clone(),
        path: entry.path.clone(),
        size: entry.size,
        from_cache,
        source,
    }
}

fn online_report(a: &Artifact, tried: &Tried, unreachable: bool) -> String {
    let mut msg = if let [(src, why)] = tried.as_slice() {
        format!("artifact `{}` from {src}: {why}", a.name)
    } else {
        let mut m = format!(
            "could not fetch artifact `{}` (sha256 {}) from any source:",
            a.name, a.sha256
        );
        for (src, why) in tried {
            let _ = write!(m, "\n  - {src}: {why}");
        }
        m
    };
    if unreachable {
        let host = host_of(a.url.as_str()).unwrap_or_else(|| "the artifact host".into());
        let _ = write!(
            msg,
            "\nhint: {host} could not be reached. On a restricted network, provide the \
             artifacts with --artifact-mirror URL|DIR (layout in docs/fetch.md), or fill the \
             cache once on a connected machine and build with --offline."
        );
    }
    msg
}

fn offline_report(missing: &[(&Artifact, Tried)], total: usize, store: &Store) -> String {
    let mut m = format!(
        "--offline: {} of {total} artifact{} not in the cache ({}):",
        missing.len(),
        if total == 1 { " is" } else { "s are" },
        store.dir().display()
    );
    for (a, tried) in missing {
        let _ = write!(m, "\n  - {}  {}  sha256:{}", a.name, a.url, a.sha256);
        for (src, why) in tried {
            let _ = write!(m, "\n      tried {src}: {why}");
        }
    }
    m.push_str("\nhint: run once online, or use --artifact-mirror DIR");
    m
}

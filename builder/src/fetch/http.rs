//! Downloading one URL into the cache: retries with bounded exponential backoff, and a few
//! progress lines per artifact. Retried: connection errors, timeouts, a connection dropped
//! mid-body, HTTP 408, 429 and 5xx. Not retried: other 4xx (the file is not there, asking again
//! will not help) and a digest mismatch (the server sent complete but different bytes).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use url::Url;

use super::store::{Entry, IngestError, Store};
use crate::progress::Step;

/// No single wait between attempts is longer than this, whatever the backoff or a server's
/// `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How one download ended when it did not produce an entry.
#[derive(Debug)]
pub(super) enum DownloadError {
    /// The host could not be reached or kept failing (connect errors, timeouts, 5xx) after
    /// every attempt: the case where a mirror is the way out.
    Unreachable(anyhow::Error),
    /// A definite answer that retrying cannot change (404, 403, ...).
    Refused(anyhow::Error),
    Mismatch {
        actual: Sha256Hex,
        size: u64,
    },
    /// Local trouble (cache directory not writable, ...): not the source's fault.
    Local(anyhow::Error),
}

#[derive(Debug)]
pub(super) struct Http {
    client: Client,
    retries: u32,
    backoff: Duration,
}

impl Http {
    pub(super) fn new(timeout: Duration, retries: u32, backoff: Duration) -> Result<Self> {
        // The blocking client applies `timeout` to connecting, to waiting for the response
        // head, and to each read of the body: a slow but moving download never times out, a
        // stalled one does.
        let client = Client::builder()
            .user_agent(concat!("nodeimg/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .context("creating the HTTP client")?;
        Ok(Http {
            client,
            retries,
            backoff,
        })
    }

    /// Download `url` into `store` as `sha256`, retrying transient failures.
    pub(super) fn download(
        &self,
        name: &str,
        url: &Url,
        sha256: &Sha256Hex,
        store: &Store,
        step: &Step,
    ) -> Result<Entry, DownloadError> {
        let attempts = self.retries.saturating_add(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match self.try_once(name, url, sha256, store, step) {
                Ok(entry) => return Ok(entry),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Transient { error, retry_after }) => (error, retry_after),
            };
            let (error, retry_after) = failure;
            if attempt >= attempts {
                return Err(DownloadError::Unreachable(error.context(format!(
                    "gave up after {attempts} attempt{}",
                    if attempts == 1 { "" } else { "s" }
                ))));
            }
            let delay = self.delay(attempt, retry_after);
            // The progress line below already tells the user; keep the structured record for
            // NODEIMG_LOG=debug without printing every retry twice.
            tracing::debug!(artifact = name, %url, attempt, error = %format!("{error:#}"), ?delay, "download failed; retrying");
            step.note(format!(
                "{name}: attempt {attempt}/{attempts} failed ({error:#}); retrying in {}",
                human_duration(delay)
            ));
            std::thread::sleep(delay);
        }
    }

    /// `backoff * 2^(attempt-1)`, at least what `Retry-After` asks, at most [`MAX_BACKOFF`].
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let factor = 1u32 << (attempt - 1).min(16);
        let exp = self.backoff.saturating_mul(factor);
        exp.max(retry_after.unwrap_or_default()).min(MAX_BACKOFF)
    }

    fn try_once(
        &self,
        name: &str,
        url: &Url,
        sha256: &Sha256Hex,
        store: &Store,
        step: &Step,
    ) -> Result<Entry, Attempt> {
        tracing::debug!(artifact = name, %url, "GET");
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .map_err(classify_transport)?;
        let status = resp.status();
        if !status.is_success() {
            let error = anyhow!("HTTP {status}");
            return Err(if is_retryable_status(status) {
                Attempt::Transient {
                    error,
                    retry_after: retry_after(&resp),
                }
            } else {
                Attempt::Final(DownloadError::Refused(error))
            });
        }
        let total = resp.content_length();
        let mut progress = Progress::start(step, name, url, total);
        match store.ingest(sha256, &mut resp, &mut |n| progress.update(n)) {
            Ok(entry) => {
                progress.finish(entry.size);
                Ok(entry)
            }
            Err(IngestError::Mismatch { actual, size }) => {
                Err(Attempt::Final(DownloadError::Mismatch { actual, size }))
            }
            Err(IngestError::Read(e)) => Err(Attempt::Transient {
                error: anyhow!(e).context(format!(
                    "connection lost after {}",
                    human_bytes(progress.bytes)
                )),
                retry_after: None,
            }),
            Err(IngestError::Write(e)) => Err(Attempt::Final(DownloadError::Local(e))),
        }
    }
}

enum Attempt {
    Transient {
        error: anyhow::Error,
        retry_after: Option<Duration>,
    },
    Final(DownloadError),
}

fn is_retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS
}

fn classify_transport(e: reqwest::Error) -> Attempt {
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        // A redirect loop does not fix itself.
        return Attempt::Final(DownloadError::Refused(
            anyhow!(e).context("too many redirects"),
        ));
    } else {
        "request failed"
    };
    Attempt::Transient {
        error: anyhow!(e).context(what),
        retry_after: None,
    }
}

/// `Retry-After` in its delay-seconds form; the HTTP-date form is rare for downloads and
/// falls back to our own backoff.
fn retry_after(resp: &reqwest::blocking::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Progress of one download: a line when it starts, at most one line per quarter of the
/// known size (and none sooner than [`Progress::MIN_INTERVAL`] after the previous line, so
/// quick downloads print two lines), every [`Progress::UNKNOWN_INTERVAL`] when the size is
/// unknown, and a final line. Lines, never `\r` redraws: logs in CI stay readable.
struct Progress<'a> {
    step: &'a Step,
    name: &'a str,
    total: Option<u64>,
    started: Instant,
    last_line: Instant,
    next_quarter: u64,
    bytes: u64,
}

impl<'a> Progress<'a> {
    const MIN_INTERVAL: Duration = Duration::from_secs(2);
    const UNKNOWN_INTERVAL: Duration = Duration::from_secs(15);

    fn start(step: &'a Step, name: &'a str, url: &Url, total: Option<u64>) -> Self {
        let size = total
            .map(|t| format!(" ({})", human_bytes(t)))
            .unwrap_or_default();
        step.note(format!("{name}: downloading {url}{size}"));
        tracing::info!(artifact = name, %url, total, "downloading");
        let now = Instant::now();
        Progress {
            step,
            name,
            total,
            started: now,
            last_line: now,
            next_quarter: 1,
            bytes: 0,
        }
    }

    fn update(&mut self, bytes: u64) {
        self.bytes = bytes;
        let due = match self.total {
            Some(total) if total > 0 => {
                let mut crossed = false;
                while self.next_quarter < 4 && bytes * 4 >= total * self.next_quarter {
                    self.next_quarter += 1;
                    crossed = true;
                }
                crossed && self.last_line.elapsed() >= Self::MIN_INTERVAL
            }
            _ => self.last_line.elapsed() >= Self::UNKNOWN_INTERVAL,
        };
        if due {
            self.last_line = Instant::now();
            let of = self
                .total
                .map(|t| format!(" / {}", human_bytes(t)))
                .unwrap_or_default();
            self.step
                .note(format!("{}: {}{of}", self.name, human_bytes(bytes)));
        }
    }

    fn finish(&self, size: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            format!(", {}/s", human_bytes((size as f64 / secs) as u64))
        } else {
            String::new()
        };
        self.step.note(format!(
            "{}: {} in {secs:.1}s{rate}, sha256 verified",
            self.name,
            human_bytes(size)
        ));
        tracing::info!(artifact = self.name, size, secs, "downloaded");
    }
}

fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let h = Http::new(Duration::from_secs(1), 10, Duration::from_millis(500)).unwrap();
        assert_eq!(h.delay(1, None), Duration::from_millis(500));
        assert_eq!(h.delay(2, None), Duration::from_secs(1));
        assert_eq!(h.delay(3, None), Duration::from_secs(2));
        assert_eq!(h.delay(9, None), MAX_BACKOFF);
        assert_eq!(h.delay(40, None), MAX_BACKOFF);
        assert_eq!(
            h.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(h.delay(1, Some(Duration::from_secs(3600))), MAX_BACKOFF);
    }

    #[test]
    fn retryable_statuses() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 410] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(56 * 1024 * 1024), "56.0 MiB");
    }
}

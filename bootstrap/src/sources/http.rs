//! The one HTTP path of the sources and secret stores: blocking reqwest (rustls), per-request
//! timeout, bounded exponential backoff, and bodies read only up to a limit so a huge or
//! endless answer is refused after `limit + 1` bytes instead of being buffered.

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};

/// Retry policy: `retries` extra attempts after the first, waiting `base`, `2·base`, … capped
/// at `cap` between them. Bounded on purpose: first boot must fail with a message rather than
/// hang when a service is down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    pub retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Retry {
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// A client for link-local metadata services and secret stores. `proxies: false` ignores
/// `http_proxy`/`https_proxy`: a proxy cannot reach 169.254.169.254 on the node's behalf, and
/// IMDS refuses forwarded requests anyway.
pub(crate) fn client(timeout: Duration, proxies: bool) -> Result<Client, String> {
    let mut b = Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(5));
    if !proxies {
        b = b.no_proxy();
    }
    b.build()
        .map_err(|e| format!("building the HTTP client: {}", chain(&e)))
}

/// One answer, body bounded.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why an exchange failed after all retries.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Transport(String),
    #[error("the answer is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
}

/// Send the request `build` makes, retrying transport errors, timeouts, 429 and 5xx with
/// backoff. Any other status (including 4xx) is returned to the caller, which knows what it
/// means for its protocol. `what` names the request in messages.
pub(crate) fn send(
    what: &str,
    retry: &Retry,
    limit: usize,
    build: impl Fn() -> RequestBuilder,
) -> Result<Reply, HttpError> {
    let resp = send_streaming(what, retry, build)?;
    let status = resp.status().as_u16();
    let body = read_limited(resp, limit)?;
    Ok(Reply { status, body })
}

/// [`send`] without reading the body: the answer as it arrives, for downloads too large to
/// hold in memory (the installer's image stream). Same retries and statuses.
pub(crate) fn send_streaming(
    what: &str,
    retry: &Retry,
    build: impl Fn() -> RequestBuilder,
) -> Result<Response, HttpError> {
    let mut attempt = 0;
    loop {
        let msg = match build().send() {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if (status == 429 || status >= 500) && attempt < retry.retries {
                    format!("{what}: HTTP {status}")
                } else {
                    return Ok(resp);
                }
            }
            Err(e) => format!("{what}: {}", chain(&e)),
        };
        if attempt >= retry.retries {
            let tries = attempt + 1;
            return Err(HttpError::Transport(format!(
                "{msg} (gave up after {tries} attempt{})",
                if tries == 1 { "" } else { "s" }
            )));
        }
        let delay = retry.delay(attempt);
        tracing::debug!(%msg, attempt, delay_ms = delay.as_millis() as u64, "retrying");
        std::thread::sleep(delay);
        attempt += 1;
    }
}

/// Read at most `limit` bytes of the body; more is an error. A declared Content-Length above
/// the limit is refused before reading anything.
pub(crate) fn read_limited(resp: Response, limit: usize) -> Result<Vec<u8>, HttpError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpError::TooLarge { limit });
    }
    read_bounded(resp, limit).map_err(|e| match e {
        BoundedError::TooLarge => HttpError::TooLarge { limit },
        BoundedError::Io(e) => HttpError::Transport(format!("reading the answer: {e}")),
    })
}

#[derive(Debug)]
pub(crate) enum BoundedError {
    TooLarge,
    Io(std::io::Error),
}

/// Read up to `limit` bytes from `r`; reading one byte more than that is `TooLarge`.
pub(crate) fn read_bounded(r: impl Read, limit: usize) -> Result<Vec<u8>, BoundedError> {
    let mut buf = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(BoundedError::Io)?;
    if buf.len() > limit {
        return Err(BoundedError::TooLarge);
    }
    Ok(buf)
}

/// An error with its causes, e.g. "error sending request for url (…): operation timed out".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let r = Retry {
            retries: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(r.delay(0), Duration::from_millis(100));
        assert_eq!(r.delay(3), Duration::from_millis(800));
        assert_eq!(r.delay(5), Duration::from_secs(2));
        assert_eq!(r.delay(40), Duration::from_secs(2));
    }

    #[test]
    fn bounded_read_stops_after_limit() {
        // An endless reader: read_bounded must return instead of looping forever.
        let endless = std::io::repeat(b'x');
        assert!(matches!(
            read_bounded(endless, 1024),
            Err(BoundedError::TooLarge)
        ));
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), b"abc");
    }
}

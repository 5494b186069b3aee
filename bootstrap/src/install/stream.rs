//! Getting the raw image onto the target: open the URL (http, https, file), decompress zstd
//! on the fly, hash the uncompressed bytes and write them with large positioned writes.
//!
//! The first [`HEAD_HOLD`] bytes (protective MBR, primary GPT, GRUB's boot code) and the last
//! [`TAIL_HOLD`] bytes (backup GPT) are kept in memory instead of being written: the caller
//! writes them only after the digest matched, so an interrupted or corrupt download leaves
//! a disk without a partition table.

use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use sha2::{Digest, Sha256};

use super::request::ImageUrl;
use super::target::Target;
use crate::sources::http;
use crate::sources::Net;

/// Bytes at the start of the image held back until the digest is verified.
pub const HEAD_HOLD: usize = 1 << 20;
/// Bytes at the end of the image held back until the digest is verified.
pub const TAIL_HOLD: usize = 1 << 20;
/// Size of one positioned write.
const CHUNK: usize = 4 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// An open image stream: the (possibly compressed) transfer, its size when known, and a
/// counter of transferred bytes for progress.
pub struct ImageStream {
    reader: Box<dyn Read>,
    pub transfer_size: Option<u64>,
    pub transferred: Rc<Cell<u64>>,
    pub compressed: bool,
}

impl std::fmt::Debug for ImageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStream")
            .field("transfer_size", &self.transfer_size)
            .field("compressed", &self.compressed)
            .finish_non_exhaustive()
    }
}

/// Counts bytes as they pass, for progress over the compressed transfer.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Open `url`. An HTTP answer other than 200 is an error here, before anything is written.
pub fn open(url: &ImageUrl, net: &Net) -> Result<ImageStream> {
    let (raw, size): (Box<dyn Read>, Option<u64>) = match url.url().scheme() {
        "file" => {
            let path = url
                .url()
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("`{url}` is not a local file URL"))?;
            let f = std::fs::File::open(&path)
                .with_context(|| format!("opening the image {}", path.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        _ => {
            let resp = http_get(url, net)?;
            let len = resp.content_length();
            (Box::new(resp), len)
        }
    };
    let transferred = Rc::new(Cell::new(0));
    let mut counting = Counting {
        inner: raw,
        count: transferred.clone(),
    };
    // Peek at the first bytes: the zstd magic decides, whatever the name says.
    let mut magic = Vec::with_capacity(4);
    (&mut counting)
        .take(4)
        .read_to_end(&mut magic)
        .with_context(|| format!("reading the start of {url}"))?;
    let compressed = magic == ZSTD_MAGIC;
    if url.names_zstd() && !compressed {
        bail!("{url} ends in .zst but does not start with the zstd magic number");
    }
    let rejoined = std::io::Cursor::new(magic).chain(counting);
    let reader: Box<dyn Read> = if compressed {
        Box::new(
            zstd::stream::read::Decoder::new(rejoined)
                .with_context(|| format!("starting zstd decompression of {url}"))?,
        )
    } else {
        Box::new(rejoined)
    };
    Ok(ImageStream {
        reader,
        transfer_size: size,
        transferred,
        compressed,
    })
}

/// GET with retries for connection errors and 5xx/429 (nothing was written yet, so retrying
/// is free); any other non-200 status fails at once. The per-read timeout (not a total one)
/// lets a multi-GiB download take as long as it needs while a stalled server is noticed.
fn http_get(url: &ImageUrl, net: &Net) -> Result<reqwest::blocking::Response> {
    let client = http::client(net.timeout, true).map_err(|e| anyhow::anyhow!(e))?;
    let what = format!("GET {url}");
    let resp = http::send_streaming(&what, &net.retry, || client.get(url.url().clone()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = resp.status();
    if status.as_u16() != 200 {
        bail!("{what}: HTTP {status}");
    }
    Ok(resp)
}

/// What was streamed: the held-back regions, the image length and its digest.
#[derive(Debug)]
pub struct Streamed {
    /// The image's first `min(len, HEAD_HOLD)` bytes, not yet on the target.
    pub head: Vec<u8>,
    /// The image's last bytes (up to [`TAIL_HOLD`]) from `tail_offset` on, not yet written.
    pub tail: Vec<u8>,
    pub tail_offset: u64,
    /// Uncompressed image size.
    pub len: u64,
    pub sha256: Sha256Hex,
}

/// Copy the image to the target, holding back head and tail; returns them and the digest.
pub fn stream_to(
    stream: &mut ImageStream,
    target: &Target,
    progress: &mut Progress<'_>,
) -> Result<Streamed> {
    let mut hasher = Sha256::new();
    let mut head: Vec<u8> = Vec::with_capacity(HEAD_HOLD);
    // Image bytes after the head that are not written yet; `pending_offset` is where
    // pending[0] belongs on the target.
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK + TAIL_HOLD);
    let mut pending_offset = HEAD_HOLD as u64;
    let mut buf = vec![0u8; CHUNK];
    let mut len: u64 = 0;
    loop {
        let n = read_full(&mut stream.reader, &mut buf).context("reading the image stream")?;
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        hasher.update(data);
        len += n as u64;
        if head.len() < HEAD_HOLD {
            let take = (HEAD_HOLD - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        pending.extend_from_slice(data);
        if pending.len() >= CHUNK + TAIL_HOLD {
            let write = pending.len() - TAIL_HOLD;
            target.write_data_at(pending_offset, &pending[..write])?;
            pending.drain(..write);
            pending_offset += write as u64;
        }
        progress.update(stream.transferred.get(), len);
    }
    progress.finish(stream.transferred.get(), len);
    if let Some(expected) = stream.transfer_size {
        let got = stream.transferred.get();
        if got != expected {
            bail!("the image stream ended after {got} of {expected} bytes");
        }
    }
    Ok(Streamed {
        head,
        tail: pending,
        tail_offset: pending_offset,
        len,
        sha256: Sha256Hex::from_hasher(hasher),
    })
}

/// Fill `buf` unless the stream ends first (large writes even when the network delivers
/// small reads).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Console progress: a line every 5 % of the transfer when its size is known, else every
/// 256 MiB of image.
pub struct Progress<'a> {
    out: &'a mut dyn Write,
    total: Option<u64>,
    next: u64,
    started: Instant,
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

const MIB: f64 = 1024.0 * 1024.0;

impl<'a> Progress<'a> {
    pub fn new(out: &'a mut dyn Write, total: Option<u64>) -> Self {
        Progress {
            out,
            total,
            next: 0,
            started: Instant::now(),
        }
    }

    fn update(&mut self, transferred: u64, image: u64) {
        match self.total {
            Some(total) if total > 0 => {
                let pct = transferred.saturating_mul(100) / total;
                if pct >= self.next {
                    self.line(transferred, image);
                    self.next = (pct / 5 + 1) * 5;
                }
            }
            _ => {
                if image >= self.next {
                    self.line(transferred, image);
                    self.next = image + (256 << 20);
                }
            }
        }
    }

    fn finish(&mut self, transferred: u64, image: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        let _ = writeln!(
            self.out,
            "nodeboot install: received {:.1} MiB ({:.1} MiB of image) in {secs:.1} s",
            transferred as f64 / MIB,
            image as f64 / MIB
        );
    }

    fn line(&mut self, transferred: u64, image: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = transferred as f64 / MIB / secs;
        let _ = match self.total {
            Some(total) => writeln!(
                self.out,
                "nodeboot install: {:>3}% ({:.1} of {:.1} MiB, {:.1} MiB of image written, {rate:.1} MiB/s)",
                transferred.saturating_mul(100) / total.max(1),
                transferred as f64 / MIB,
                total as f64 / MIB,
                image as f64 / MIB
            ),
            None => writeln!(
                self.out,
                "nodeboot install: {:.1} MiB received, {:.1} MiB of image written ({rate:.1} MiB/s)",
                transferred as f64 / MIB,
                image as f64 / MIB
            ),
        };
    }
}

//! Stage `export`: the raw disk image into the formats platforms take (raw, qcow2, fixed and
//! dynamic vhd).
//!
//! Every writer reads the raw image sequentially (skipping holes with `SEEK_DATA`/`SEEK_HOLE`),
//! writes through [`AtomicFile`] (nothing left at `out` after a failure) and is deterministic:
//! no timestamps from the clock, identifiers derived from content. No `qemu-img` involved.
//! Raw, VHD and uncompressed qcow2 are written front to back and hashed on a second thread
//! while being written (`stream`); only compressed qcow2 is read back for its hash.

pub mod qcow2;
pub mod raw;
pub mod sparse;
mod stream;
pub mod vhd;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use serde::Serialize;

use crate::progress;
use crate::recipe::schema::Format;

/// Compression of qcow2 data clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    #[default]
    None,
    /// Deflate (qcow2 compression type 0), readable by every qemu.
    Zlib,
    /// zstd (compression type 1, incompatible feature bit 3; qemu ≥ 5.1).
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "zlib" => Ok(Compression::Zlib),
            "zstd" => Ok(Compression::Zstd),
            other => bail!("unknown compression `{other}` (expected one of: none, zlib, zstd)"),
        }
    }
}

/// Options shared by the writers.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// qcow2 only.
    pub compression: Compression,
    /// Seconds since the Unix epoch written where a format wants a creation time (VHD footer).
    /// `None`: [`crate::commit::DEFAULT_TIMESTAMP`], the commit stage's default.
    pub timestamp: Option<i64>,
    /// Identifies the disk's content where a format stores an id (the VHD unique id). The
    /// build derives it from the disk stage key, which digests every input of the raw image;
    /// `None`: the writers derive it from the content (a dynamic VHD then reads its data
    /// twice).
    pub disk_id: Option<[u8; 16]>,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub format: Format,
    /// Of the output file's bytes.
    pub sha256: Sha256Hex,
    /// Output file size in bytes.
    pub size: u64,
    /// The disk size a VM sees.
    pub virtual_size: u64,
}

/// Write `raw` as `format` to `out`.
pub fn write(format: Format, raw: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    if format == Format::Pxe {
        bail!("`pxe` is not a disk image format (PXE material comes from the kickstart stage)");
    }
    if opts.compression != Compression::None && format != Format::Qcow2 {
        bail!("compression is only supported for qcow2, not {format}");
    }
    let step = progress::step(format!("export {format} {}", out.display()));
    let report = match format {
        Format::Raw => raw::write(raw, out, &step),
        Format::Qcow2 => qcow2::write(raw, out, opts.compression, &step),
        Format::Vhd => vhd::write_fixed(
            raw,
            out,
            opts.timestamp
                .unwrap_or(crate::commit::DEFAULT_TIMESTAMP as i64),
            opts.disk_id,
            &step,
        ),
        Format::VhdDynamic => vhd::write_dynamic(
            raw,
            out,
            opts.timestamp
                .unwrap_or(crate::commit::DEFAULT_TIMESTAMP as i64),
            opts.disk_id,
            &step,
        ),
        Format::Pxe => unreachable!("rejected above"),
    }
    .with_context(|| {
        format!(
            "exporting {} as {format} to {}",
            raw.display(),
            out.display()
        )
    })?;
    step.done_with(&format!(
        "{} MiB, sha256 {}",
        report.size >> 20,
        report.sha256.short(12)
    ));
    Ok(report)
}

/// Progress notes every 10 % for inputs above 256 MiB.
#[derive(Debug)]
pub(crate) struct Meter<'a> {
    step: &'a progress::Step,
    total: u64,
    next: u64,
}

impl<'a> Meter<'a> {
    pub(crate) fn new(step: &'a progress::Step, total: u64) -> Self {
        Meter {
            step,
            total,
            next: if total > 256 << 20 {
                total / 10
            } else {
                u64::MAX
            },
        }
    }

    pub(crate) fn at(&mut self, pos: u64) {
        if pos >= self.next {
            self.step
                .note(format!("{}% ({} MiB)", pos * 100 / self.total, pos >> 20));
            self.next = (pos / (self.total / 10) + 1) * (self.total / 10);
        }
    }
}

/// The raw image's length, with a clear error when it is missing.
pub(crate) fn input_len(raw: &Path) -> Result<(std::fs::File, u64)> {
    let f = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("inspecting {}", raw.display()))?
        .len();
    if len == 0 || len % 512 != 0 {
        bail!(
            "{} is {len} bytes: a disk image is a non-empty multiple of 512 bytes",
            raw.display()
        );
    }
    Ok((f, len))
}

//! Raw export: a sparse copy of the disk image (holes and all-zero blocks stay unallocated).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;

use super::sparse;
use super::stream::{self, HashPipe, Writeback, BUF_SIZE};
use super::{input_len, ExportReport, Meter};
use crate::progress::Step;
use crate::recipe::schema::Format;

pub fn write(raw: &Path, out: &Path, step: &Step) -> Result<ExportReport> {
    let (src, len) = input_len(raw)?;
    let mut dst = AtomicFile::create(out)?;
    dst.file()
        .set_len(len)
        .with_context(|| format!("sizing {}", dst.temp_path().display()))?;
    let mut pipe = HashPipe::new()?;
    let mut meter = Meter::new(step, len);
    copy_hashed(&src, len, dst.file(), &mut pipe, &mut meter)
        .with_context(|| format!("copying {}", raw.display()))?;
    let hasher = pipe.finish()?;
    dst.commit()?;
    Ok(ExportReport {
        path: out.to_owned(),
        format: Format::Raw,
        sha256: Sha256Hex::from_hasher(hasher),
        size: len,
        virtual_size: len,
    })
}

/// Copy the `len` bytes of `src` to the start of `dst` (which must read as zeros: fresh and
/// sized), leaving holes and all-zero 4 KiB blocks unallocated, and feed every byte of that
/// range to `pipe` in order. Reading and copying happen on this thread while the pipe hashes
/// the previous buffer on its own. The hash needs the bytes in memory, so they are read; the
/// copy is still made in the kernel ([`sparse::copy_range`]), which measured cheaper than
/// writing them from the buffer.
pub(super) fn copy_hashed(
    src: &File,
    len: u64,
    dst: &File,
    pipe: &mut HashPipe,
    meter: &mut Meter<'_>,
) -> Result<()> {
    stream::sequential(src);
    let mut writeback = Writeback::new(dst)?;
    let mut pos = 0;
    for r in sparse::aligned_extents(src, len, 4096)? {
        pipe.zeros(r.start - pos)?;
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(BUF_SIZE as u64) as usize;
            let mut buf = pipe.buffer()?;
            src.read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading at offset {at}"))?;
            sparse::copy_nonzero(src, dst, at, &buf[..n])?;
            pipe.bytes(buf, n)?;
            at += n as u64;
            writeback.written_to(at);
            meter.at(at);
        }
        pos = r.end;
    }
    pipe.zeros(len - pos)
}

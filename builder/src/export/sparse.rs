//! Sparse-aware reading: the data extents of a file (`SEEK_DATA`/`SEEK_HOLE`), so copies and
//! converters never read the gigabytes of holes a fresh disk image has, and never allocate
//! blocks for zeros in their output.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// A byte range `[start, end)` of a file that may hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
}

/// The data extents of `file` (length `len`), in order. Filesystems without `SEEK_DATA`
/// support report the whole file as one extent.
pub fn data_extents(file: &File, len: u64) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let start = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            // No data after `pos`.
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) if pos == 0 => {
                out.push(Extent { start: 0, end: len });
                return Ok(out);
            }
            Err(e) => return Err(e).context("seeking to the next data extent (SEEK_DATA)"),
        };
        if start >= len {
            break;
        }
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(len),
            Err(e) => return Err(e).context("seeking to the next hole (SEEK_HOLE)"),
        };
        out.push(Extent { start, end });
        pos = end;
    }
    Ok(out)
}

/// One step of [`walk`]: bytes that may hold data, or a run of zeros known from a hole.
#[derive(Debug)]
pub enum Piece<'a> {
    Data { offset: u64, bytes: &'a [u8] },
    Hole { offset: u64, len: u64 },
}

/// Visit all `len` bytes of `file` in order: data extents (widened to multiples of `align`)
/// read in pieces of at most `read_size` bytes (a multiple of `align`), holes as one
/// [`Piece::Hole`] each. Every `Data` piece starts at a multiple of `align`.
pub fn walk(
    file: &File,
    len: u64,
    align: u64,
    read_size: usize,
    mut f: impl FnMut(Piece<'_>) -> Result<()>,
) -> Result<()> {
    assert!(read_size as u64 % align == 0 && align > 0);
    let mut ranges: Vec<Extent> = Vec::new();
    for e in data_extents(file, len)? {
        let start = e.start / align * align;
        let end = e.end.div_ceil(align).saturating_mul(align).min(len);
        match ranges.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => ranges.push(Extent { start, end }),
        }
    }
    let mut buf = vec![0u8; read_size];
    let mut pos = 0;
    for r in ranges {
        if r.start > pos {
            f(Piece::Hole {
                offset: pos,
                len: r.start - pos,
            })?;
        }
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(read_size as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading at offset {at}"))?;
            f(Piece::Data {
                offset: at,
                bytes: &buf[..n],
            })?;
            at += n as u64;
        }
        pos = r.end;
    }
    if pos < len {
        f(Piece::Hole {
            offset: pos,
            len: len - pos,
        })?;
    }
    Ok(())
}

/// Feed `len` zero bytes to `h` (the content of a hole).
pub fn hash_zeros(h: &mut sha2::Sha256, mut len: u64) {
    use sha2::Digest;
    static ZEROS: [u8; 1 << 16] = [0u8; 1 << 16];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// Write the non-zero 4 KiB blocks of `bytes` to `dst` at `offset` (the destination reads
/// as zeros elsewhere, so zeros are left as holes).
pub fn write_nonzero(dst: &File, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut i = 0;
    while i < bytes.len() {
        // Coalesce runs of non-zero blocks into one write.
        let block = |j: usize| &bytes[j..(j + 4096).min(bytes.len())];
        if is_zero(block(i)) {
            i += 4096;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_zero(block(i)) {
            i += 4096;
        }
        let end = i.min(bytes.len());
        let at = offset + start as u64;
        dst.write_all_at(&bytes[start..end], at)
            .with_context(|| format!("writing at offset {at}"))?;
    }
    Ok(())
}

/// True when every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // Compare in 8-byte words; the tail bytewise.
    let (chunks, tail) = buf.split_at(buf.len() / 8 * 8);
    chunks
        .chunks_exact(8)
        .all(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")) == 0)
        && tail.iter().all(|b| *b == 0)
}

/// Copy the file `src` into `dst` at `dst_offset`, skipping holes and all-zero blocks (the
/// destination range must already read as zeros, e.g. a fresh sparse file). Returns the bytes
/// written.
pub fn copy_into(src: &Path, dst: &File, dst_offset: u64) -> Result<u64> {
    let f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("inspecting {}", src.display()))?
        .len();
    let mut written = 0;
    walk(&f, len, 4096, 1 << 20, |piece| {
        if let Piece::Data { offset, bytes } = piece {
            write_nonzero(dst, dst_offset + offset, bytes)?;
            written += bytes
                .chunks(4096)
                .filter(|b| !is_zero(b))
                .map(|b| b.len() as u64)
                .sum::<u64>();
        }
        Ok(())
    })
    .with_context(|| format!("copying {}", src.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_data_between_holes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 4096], 8 << 20).unwrap();
        f.write_all_at(&[9u8; 4096], 40 << 20).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&p).unwrap();
        let ext = data_extents(&f, 64 << 20).unwrap();
        // Filesystems may round extents out to their block size; the data must be covered
        // and the holes between skipped.
        assert_eq!(ext.len(), 2, "{ext:?}");
        assert!(ext[0].start <= 8 << 20 && ext[0].end >= (8 << 20) + 4096);
        assert!(ext[0].end < 40 << 20);
        assert!(ext[1].start <= 40 << 20 && ext[1].end >= (40 << 20) + 4096);

        let out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("copy"))
            .unwrap();
        out.set_len(64 << 20).unwrap();
        let written = copy_into(&p, &out, 0).unwrap();
        assert_eq!(written, 8192);
        let mut b = [0u8; 4096];
        out.read_exact_at(&mut b, 40 << 20).unwrap();
        assert_eq!(b, [9u8; 4096]);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 13]));
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}

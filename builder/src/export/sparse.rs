//! Sparse-aware reading: the data extents of a file (`SEEK_DATA`/`SEEK_HOLE`), so copies and
//! converters never read the gigabytes of holes a fresh disk image has, and never allocate
//! blocks for zeros in their output.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
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

/// [`data_extents`] widened to multiples of `align` (the end capped at `len`) and merged
/// where they then touch or overlap.
pub fn aligned_extents(file: &File, len: u64, align: u64) -> Result<Vec<Extent>> {
    let mut ranges: Vec<Extent> = Vec::new();
    for e in data_extents(file, len)? {
        let start = e.start / align * align;
        let end = e.end.div_ceil(align).saturating_mul(align).min(len);
        match ranges.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => ranges.push(Extent { start, end }),
        }
    }
    Ok(ranges)
}

/// Consecutive clusters `[first, first + count)` (indices, not bytes) that hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub count: u64,
}

/// Bytes read first from each cluster by [`nonzero_clusters`]: almost every cluster with
/// data has a non-zero byte here, so a full read is needed only for the (few) others.
const PROBE: u64 = 4096;

/// The clusters of `file` (`len` bytes in clusters of `cluster` bytes, the last one possibly
/// short) holding at least one non-zero byte, as runs in order. Holes are skipped with
/// `SEEK_DATA`; data clusters are probed at their start and read whole only when that is all
/// zeros, so the scan costs about one small read per cluster rather than a copy of the image.
pub fn nonzero_clusters(file: &File, len: u64, cluster: u64) -> Result<Vec<Run>> {
    assert!(cluster > 0 && cluster % PROBE == 0);
    let mut runs: Vec<Run> = Vec::new();
    let mut buf = vec![0u8; cluster as usize];
    for r in aligned_extents(file, len, cluster)? {
        for c in r.start / cluster..r.end.div_ceil(cluster) {
            let at = c * cluster;
            let n = cluster.min(len - at) as usize;
            let probe = (PROBE as usize).min(n);
            file.read_exact_at(&mut buf[..probe], at)
                .with_context(|| format!("reading at offset {at}"))?;
            let mut data = !is_zero(&buf[..probe]);
            if !data && n > probe {
                file.read_exact_at(&mut buf[probe..n], at + probe as u64)
                    .with_context(|| format!("reading at offset {}", at + probe as u64))?;
                data = !is_zero(&buf[probe..n]);
            }
            if !data {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.first + last.count == c => last.count += 1,
                _ => runs.push(Run { first: c, count: 1 }),
            }
        }
    }
    Ok(runs)
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
    let ranges = aligned_extents(file, len, align)?;
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

/// Write the non-zero 4 KiB blocks of `bytes` to `dst` at `offset` (the destination reads
/// as zeros elsewhere, so zeros are left as holes).
pub fn write_nonzero(dst: &File, offset: u64, bytes: &[u8]) -> Result<()> {
    for (start, end) in nonzero_blocks(bytes) {
        let at = offset + start as u64;
        dst.write_all_at(&bytes[start..end], at)
            .with_context(|| format!("writing at offset {at}"))?;
    }
    Ok(())
}

/// Copy `len` bytes of `src` at `from` to `dst` at `to` inside the kernel: std's
/// file-to-file `io::copy` uses `copy_file_range` (and falls back to read/write where that is
/// unsupported). Measured on ext4 it costs clearly less CPU than `pwrite` of the same bytes
/// from a buffer. Moves both files' offsets; callers use positioned reads and writes only.
pub fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> Result<()> {
    let (mut s, mut d) = (src, dst);
    s.seek(SeekFrom::Start(from))
        .with_context(|| format!("seeking to offset {from}"))?;
    d.seek(SeekFrom::Start(to))
        .with_context(|| format!("seeking to offset {to}"))?;
    let n = std::io::copy(&mut s.take(len), &mut d)
        .with_context(|| format!("copying {len} bytes from offset {from} to offset {to}"))?;
    if n != len {
        bail!("copied only {n} of {len} bytes from offset {from}: the input shrank");
    }
    Ok(())
}

/// Copy the non-zero 4 KiB blocks of `bytes`, which were read from `src` at `offset`, from
/// `src` to the same offset of `dst` with [`copy_range`] (the destination reads as zeros
/// elsewhere, so zeros are left as holes). `bytes` decides what is copied and stays the
/// caller's to hash.
pub fn copy_nonzero(src: &File, dst: &File, offset: u64, bytes: &[u8]) -> Result<()> {
    for (start, end) in nonzero_blocks(bytes) {
        let at = offset + start as u64;
        copy_range(src, at, dst, at, (end - start) as u64)?;
    }
    Ok(())
}

/// Byte ranges of the runs of non-zero 4 KiB blocks of `bytes` (the last block may be short).
fn nonzero_blocks(bytes: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let block = move |j: usize| &bytes[j..(j + 4096).min(bytes.len())];
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() && is_zero(block(i)) {
            i += 4096;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && !is_zero(block(i)) {
            i += 4096;
        }
        Some((start, i.min(bytes.len())))
    })
}

/// True when every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // OR-fold 64-byte blocks (the compiler vectorises the fold) and stop at the first
    // non-zero block; the tail bytewise.
    let (blocks, tail) = buf.split_at(buf.len() / 64 * 64);
    blocks
        .chunks_exact(64)
        .all(|b| b.iter().fold(0u8, |acc, x| acc | x) == 0)
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
    fn nonzero_clusters_skip_holes_and_zero_clusters() {
        const C: u64 = 1 << 16;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let f = File::create(&p).unwrap();
        let len = 40 * C + 512; // a short last cluster
        f.set_len(len).unwrap();
        f.write_all_at(&[1u8; 10], 2 * C).unwrap();
        // Allocated but all zeros: not data.
        f.write_all_at(&vec![0u8; 3 * C as usize], 5 * C).unwrap();
        // Non-zero only past the probe: found by the full read.
        f.write_all_at(&[2u8], 9 * C + 60_000).unwrap();
        // Adjacent to cluster 9: the same run.
        f.write_all_at(&[3u8], 10 * C).unwrap();
        f.write_all_at(&[4u8], len - 1).unwrap();
        f.sync_all().unwrap();
        let runs = nonzero_clusters(&File::open(&p).unwrap(), len, C).unwrap();
        assert_eq!(
            runs,
            vec![
                Run { first: 2, count: 1 },
                Run { first: 9, count: 2 },
                Run {
                    first: 40,
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn copy_nonzero_copies_data_blocks_and_leaves_zero_blocks_as_holes() {
        const AT: u64 = 1 << 16;
        let d = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 5 * 4096 + 100];
        bytes[..4096].fill(1);
        bytes[2 * 4096 + 7] = 2; // blocks 2 and 3 form one run
        bytes[3 * 4096..4 * 4096].fill(3);
        bytes[5 * 4096 + 99] = 4; // the short last block
        assert_eq!(
            nonzero_blocks(&bytes).collect::<Vec<_>>(),
            vec![(0, 4096), (2 * 4096, 4 * 4096), (5 * 4096, 5 * 4096 + 100)]
        );
        let src_path = d.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.set_len(1 << 20).unwrap();
        src.write_all_at(&bytes, AT).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("dst"))
            .unwrap();
        dst.set_len(1 << 20).unwrap();

        copy_nonzero(&src, &dst, AT, &bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        dst.read_exact_at(&mut back, AT).unwrap();
        assert_eq!(back, bytes);
        dst.sync_all().unwrap();
        let ext = data_extents(&dst, 1 << 20).unwrap();
        for zero_block in [1, 4] {
            let (start, end) = (AT + zero_block * 4096, AT + (zero_block + 1) * 4096);
            assert!(
                !ext.iter().any(|e| e.start < end && e.end > start),
                "block {zero_block} must stay a hole: {ext:?}"
            );
        }

        let err = copy_range(&src, 0, &dst, 0, 2 << 20).unwrap_err();
        assert!(format!("{err:#}").contains("shrank"), "{err:#}");
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
        v[3] = 0;
        v[64 * 20 + 63] = 9; // the last byte of a 64-byte block
        assert!(!is_zero(&v));
    }
}

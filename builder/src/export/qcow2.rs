//! qcow2 (version 3) writer for a fresh, write-once image (qemu `docs/interop/qcow2.txt`).
//!
//! Layout, in file order:
//! `[header cluster][data clusters in virtual order][L2 tables][L1 table][refcount blocks]
//! [refcount table]`; qemu does not care where metadata lives.
//!
//! Uncompressed, the data clusters are known before anything is written: a cheap scan
//! (`SEEK_DATA` plus a probe of each data cluster, [`sparse::nonzero_clusters`]) finds the
//! non-zero clusters, which fixes every offset, so the header and metadata are computed first
//! and the file is written strictly front to back while its SHA-256 is computed alongside
//! ([`HashPipe`]). All-zero clusters are left unallocated (they read as zeros).
//!
//! Compressed, a cluster's place depends on the sizes of the compressed clusters before it,
//! so the data is appended as it is compressed (byte-tight), the metadata after it, the header
//! last, and the file is hashed once complete.
//!
//! Fixed choices: 64 KiB clusters, 16-bit refcounts, no extensions, no snapshots, no backing
//! file. Compressed clusters are raw deflate with a 4 KiB window (what qemu's inflate expects)
//! or a zstd frame (compression type 1, incompatible feature bit 3).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;

use super::sparse::{self, Piece, Run};
use super::stream::{self, HashPipe, Writeback, BUF_SIZE};
use super::{input_len, Compression, ExportReport, Meter};
use crate::progress::Step;
use crate::recipe::schema::Format;

pub const CLUSTER_BITS: u32 = 16;
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
/// refcount_order 4: 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const REFS_PER_BLOCK: u64 = CLUSTER * 8 / (1 << REFCOUNT_ORDER);
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Compressed descriptor: host offset in bits 0..x-1, additional sectors in bits x..61.
const CSIZE_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);
const CSIZE_MASK: u64 = (1 << (CLUSTER_BITS - 8)) - 1;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Clusters read and compressed per batch.
const READ_SIZE: usize = 64 * CLUSTER as usize;
/// zstd level: the library default, what qemu uses.
const ZSTD_LEVEL: i32 = 3;

/// Where the clusters went.
struct Layout {
    /// L1 index → L2 table (8192 entries).
    l2: BTreeMap<u64, Vec<u64>>,
    /// Refcount per host cluster.
    refs: Vec<u16>,
    /// Write cursor (bytes) in the data area.
    pos: u64,
}

impl Layout {
    fn add_ref(&mut self, cluster: u64) -> Result<()> {
        let i = cluster as usize;
        if self.refs.len() <= i {
            self.refs.resize(i + 1, 0);
        }
        self.refs[i] = self.refs[i]
            .checked_add(1)
            .context("a host cluster would need a refcount above 65535")?;
        Ok(())
    }

    fn set_l2(&mut self, vcluster: u64, entry: u64) {
        self.l2
            .entry(vcluster / L2_ENTRIES)
            .or_insert_with(|| vec![0; L2_ENTRIES as usize])[(vcluster % L2_ENTRIES) as usize] =
            entry;
    }
}

pub fn write(
    raw: &Path,
    out: &Path,
    compression: Compression,
    step: &Step,
) -> Result<ExportReport> {
    let (src, len) = input_len(raw)?;
    stream::sequential(&src);
    let (size, sha256) = match compression {
        Compression::None => write_plain(&src, raw, len, out, step)?,
        c => write_compressed(&src, raw, len, out, c, step)?,
    };
    Ok(ExportReport {
        path: out.to_owned(),
        format: Format::Qcow2,
        sha256,
        size,
        virtual_size: len,
    })
}

/// Scan, lay out, then write and hash front to back. Returns the file size and digest.
fn write_plain(
    src: &File,
    raw: &Path,
    len: u64,
    out: &Path,
    step: &Step,
) -> Result<(u64, Sha256Hex)> {
    let runs = sparse::nonzero_clusters(src, len, CLUSTER)
        .with_context(|| format!("scanning {}", raw.display()))?;
    let mut lay = Layout {
        l2: BTreeMap::new(),
        refs: vec![1], // the header cluster
        pos: CLUSTER,
    };
    for v in runs.iter().flat_map(|r: &Run| r.first..r.first + r.count) {
        let host = lay.pos;
        lay.set_l2(v, host | OFLAG_COPIED);
        lay.add_ref(host / CLUSTER)?;
        lay.pos += CLUSTER;
    }
    let data_end = lay.pos;
    let meta = metadata(&mut lay, len, Compression::None)?;

    let mut dst = AtomicFile::create(out)?;
    let file: &File = dst.file();
    let mut pipe = HashPipe::new()?;
    let mut writeback = Writeback::new(file)?;
    let mut meter = Meter::new(step, len);
    let mut first = meta.header;
    first.resize(CLUSTER as usize, 0);
    file.write_all_at(&first, 0)
        .context("writing the qcow2 header")?;
    pipe.owned(first)?;
    // Runs are contiguous in both files: one read and one copy per buffer.
    let mut host = CLUSTER;
    for r in &runs {
        let (mut at, end) = (r.first * CLUSTER, (r.first + r.count) * CLUSTER);
        while at < end {
            let n = (end - at).min(BUF_SIZE as u64) as usize;
            // Only the image's last cluster can be short; it is padded with zeros.
            let avail = (len - at).min(n as u64) as usize;
            // Read for the hash; copied in the kernel (cheaper than writing from `buf`).
            // The zero padding of a short last cluster is a hole in the output.
            let mut buf = pipe.buffer()?;
            src.read_exact_at(&mut buf[..avail], at)
                .with_context(|| format!("reading {} at offset {at}", raw.display()))?;
            buf[avail..n].fill(0);
            sparse::copy_range(src, at, file, host, avail as u64)
                .with_context(|| format!("copying data clusters from {}", raw.display()))?;
            pipe.bytes(buf, n)?;
            at += n as u64;
            host += n as u64;
            writeback.written_to(host);
            meter.at(at);
        }
    }
    debug_assert_eq!(host, data_end);
    file.write_all_at(&meta.tail, host)
        .context("writing the qcow2 metadata")?;
    pipe.owned(meta.tail)?;
    drop(writeback);
    let sha256 = Sha256Hex::from_hasher(pipe.finish()?);
    dst.commit()?;
    Ok((lay.pos, sha256))
}

/// Compress and append in one pass, metadata after, header last; hash the finished file.
fn write_compressed(
    src: &File,
    raw: &Path,
    len: u64,
    out: &Path,
    compression: Compression,
    step: &Step,
) -> Result<(u64, Sha256Hex)> {
    let mut dst = AtomicFile::create(out)?;
    let path = dst.temp_path().to_owned();
    let file: &File = dst.file();
    let mut writeback = Writeback::new(file)?;
    let mut w = BufWriter::with_capacity(BUF_SIZE, file);
    let mut lay = Layout {
        l2: BTreeMap::new(),
        refs: vec![1], // the header cluster
        pos: CLUSTER,
    };
    // Header cluster placeholder; the real header is written last.
    w.write_all(&[0u8; CLUSTER as usize])
        .context("writing the header placeholder")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut meter = Meter::new(step, len);

    sparse::walk(src, len, CLUSTER, READ_SIZE, |piece| {
        let Piece::Data { offset, bytes } = piece else {
            return Ok(());
        };
        let clusters: Vec<(u64, &[u8])> = bytes
            .chunks(CLUSTER as usize)
            .enumerate()
            .filter(|(_, c)| !sparse::is_zero(c))
            .map(|(i, c)| (offset / CLUSTER + i as u64, c))
            .collect();
        let packed = compress_parallel(&clusters, compression, threads)?;
        for ((vcluster, data), packed) in clusters.iter().zip(packed) {
            match packed {
                Some(c) => {
                    let host = lay.pos;
                    let last = host + c.len() as u64 - 1;
                    let extra_sectors = last / 512 - host / 512;
                    debug_assert!(extra_sectors <= CSIZE_MASK);
                    lay.set_l2(
                        *vcluster,
                        host | (extra_sectors << CSIZE_SHIFT) | OFLAG_COMPRESSED,
                    );
                    for hc in host / CLUSTER..=last / CLUSTER {
                        lay.add_ref(hc)?;
                    }
                    w.write_all(&c).context("writing a compressed cluster")?;
                    lay.pos += c.len() as u64;
                }
                None => {
                    pad_to_cluster(&mut w, &mut lay.pos)?;
                    let host = lay.pos;
                    lay.set_l2(*vcluster, host | OFLAG_COPIED);
                    lay.add_ref(host / CLUSTER)?;
                    w.write_all(data).context("writing a data cluster")?;
                    // A short last cluster (size not a multiple of 64 KiB) is padded.
                    w.write_all(&vec![0u8; CLUSTER as usize - data.len()])
                        .context("writing a data cluster")?;
                    lay.pos += CLUSTER;
                }
            }
        }
        // What is still in `w`'s buffer has not reached the file yet.
        writeback.written_to(lay.pos.saturating_sub(BUF_SIZE as u64));
        meter.at(offset + bytes.len() as u64);
        Ok(())
    })
    .with_context(|| format!("reading {}", raw.display()))?;
    pad_to_cluster(&mut w, &mut lay.pos)?;

    let meta = metadata(&mut lay, len, compression)?;
    w.write_all(&meta.tail)
        .context("writing the qcow2 metadata")?;
    w.flush().context("flushing the qcow2 image")?;
    drop(w);
    file.write_all_at(&meta.header, 0)
        .context("writing the qcow2 header")?;
    drop(writeback);
    // Hash the finished file (from the page cache) while its tail is written out, so the
    // fsync in `commit` finds little left to do.
    let sha256 = std::thread::scope(|s| {
        let hashing = s.spawn(|| Sha256Hex::of_file(&path));
        let synced =
            nix::unistd::fdatasync(file).with_context(|| format!("syncing {}", path.display()));
        let digest = hashing
            .join()
            .map_err(|_| anyhow!("the hashing thread panicked"))??;
        synced.map(|()| digest)
    })?;
    dst.commit()?;
    Ok((lay.pos, sha256))
}

fn pad_to_cluster(w: &mut impl Write, pos: &mut u64) -> Result<()> {
    let pad = pos.next_multiple_of(CLUSTER) - *pos;
    if pad > 0 {
        w.write_all(&vec![0u8; pad as usize])
            .context("padding to a cluster boundary")?;
        *pos += pad;
    }
    Ok(())
}

/// The header and what follows the data.
struct Metadata {
    /// The header and its extension-list terminator (the rest of cluster 0 is zeros).
    header: Vec<u8>,
    /// L2 tables, L1 table, refcount blocks and refcount table, to be written at the data's
    /// end (`lay.pos` when [`metadata`] is called).
    tail: Vec<u8>,
}

/// Lay out the metadata after the data (`lay.pos`, cluster aligned), count its clusters and
/// advance `lay.pos` to the end of the file.
fn metadata(lay: &mut Layout, virtual_size: u64, compression: Compression) -> Result<Metadata> {
    let clusters = virtual_size.div_ceil(CLUSTER);
    let l1_size = clusters.div_ceil(L2_ENTRIES);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
    let data_end = lay.pos / CLUSTER;
    let l2_count = lay.l2.len() as u64;

    // Refcount structures count themselves: iterate to the fixed point.
    let fixed = data_end + l2_count + l1_clusters;
    let (mut refblocks, mut reftable) = (1u64, 1u64);
    loop {
        let total = fixed + refblocks + reftable;
        let rb = total.div_ceil(REFS_PER_BLOCK);
        let rt = (rb * 8).div_ceil(CLUSTER);
        if rb == refblocks && rt == reftable {
            break;
        }
        (refblocks, reftable) = (rb, rt);
    }
    let l2_start = data_end;
    let l1_start = l2_start + l2_count;
    let rb_start = l1_start + l1_clusters;
    let rt_start = rb_start + refblocks;
    let total = rt_start + reftable;
    for c in l2_start..total {
        lay.add_ref(c)?;
    }

    let mut tail = Vec::with_capacity(((total - l2_start) * CLUSTER) as usize);
    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for (i, (l1_index, table)) in lay.l2.iter().enumerate() {
        let at = (l2_start + i as u64) * CLUSTER;
        let slot = *l1_index as usize * 8;
        l1[slot..slot + 8].copy_from_slice(&(at | OFLAG_COPIED).to_be_bytes());
        for e in table {
            tail.extend_from_slice(&e.to_be_bytes());
        }
    }
    tail.extend_from_slice(&l1);

    let mut blocks = vec![0u8; (refblocks * CLUSTER) as usize];
    for (i, r) in lay.refs.iter().enumerate() {
        blocks[i * 2..i * 2 + 2].copy_from_slice(&r.to_be_bytes());
    }
    tail.extend_from_slice(&blocks);
    let mut table = vec![0u8; (reftable * CLUSTER) as usize];
    for b in 0..refblocks {
        let at = (rb_start + b) * CLUSTER;
        table[b as usize * 8..b as usize * 8 + 8].copy_from_slice(&at.to_be_bytes());
    }
    tail.extend_from_slice(&table);
    lay.pos = total * CLUSTER;
    debug_assert_eq!(tail.len() as u64, (total - l2_start) * CLUSTER);

    let header = header(HeaderFields {
        virtual_size,
        l1_size: u32::try_from(l1_size).context("disk too large for one L1 table")?,
        l1_offset: l1_start * CLUSTER,
        reftable_offset: rt_start * CLUSTER,
        reftable_clusters: reftable as u32,
        compression,
    });
    Ok(Metadata { header, tail })
}

struct HeaderFields {
    virtual_size: u64,
    l1_size: u32,
    l1_offset: u64,
    reftable_offset: u64,
    reftable_clusters: u32,
    compression: Compression,
}

/// The header, padded with the zero bytes that end the (empty) extension list.
fn header(h: HeaderFields) -> Vec<u8> {
    let zstd = h.compression == Compression::Zstd;
    // The compression type byte exists only in headers longer than 104 bytes; lengths are
    // multiples of 8.
    let header_len: u32 = if zstd { 112 } else { 104 };
    let mut b = Vec::with_capacity(header_len as usize + 8);
    b.extend_from_slice(b"QFI\xfb");
    b.extend_from_slice(&3u32.to_be_bytes()); // version
    b.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    b.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    b.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    b.extend_from_slice(&h.virtual_size.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // crypt method
    b.extend_from_slice(&h.l1_size.to_be_bytes());
    b.extend_from_slice(&h.l1_offset.to_be_bytes());
    b.extend_from_slice(&h.reftable_offset.to_be_bytes());
    b.extend_from_slice(&h.reftable_clusters.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    b.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    let incompat = if zstd { INCOMPAT_COMPRESSION_TYPE } else { 0 };
    b.extend_from_slice(&incompat.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    b.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    b.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    b.extend_from_slice(&header_len.to_be_bytes());
    if zstd {
        b.push(1); // compression type zstd
        b.extend_from_slice(&[0u8; 7]);
    }
    debug_assert_eq!(b.len(), header_len as usize);
    b.extend_from_slice(&[0u8; 8]); // end of header extensions
    b
}

/// Compress `clusters` on `threads` threads; `None` for a cluster that does not shrink (it is
/// stored uncompressed, as qemu does).
fn compress_parallel(
    clusters: &[(u64, &[u8])],
    compression: Compression,
    threads: usize,
) -> Result<Vec<Option<Vec<u8>>>> {
    if clusters.is_empty() {
        return Ok(Vec::new());
    }
    let per = clusters.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = clusters
            .chunks(per)
            .map(|chunk| s.spawn(move || compress_chunk(chunk, compression)))
            .collect();
        let mut out = Vec::with_capacity(clusters.len());
        for h in handles {
            match h.join() {
                Ok(r) => out.extend(r?),
                Err(_) => bail!("a compression thread panicked"),
            }
        }
        Ok(out)
    })
}

fn compress_chunk(
    chunk: &[(u64, &[u8])],
    compression: Compression,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut full = vec![0u8; CLUSTER as usize];
    let mut out = Vec::with_capacity(chunk.len());
    match compression {
        Compression::None => out.resize(chunk.len(), None),
        Compression::Zlib => {
            // qemu inflates with a 4 KiB window (windowBits -12): deflate must not refer
            // further back.
            let mut z =
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
            for (_, data) in chunk {
                let input = padded(data, &mut full);
                z.reset();
                let mut buf = Vec::with_capacity(CLUSTER as usize - 1);
                let status = z
                    .compress_vec(input, &mut buf, flate2::FlushCompress::Finish)
                    .context("deflate")?;
                let done = status == flate2::Status::StreamEnd && z.total_in() == CLUSTER;
                out.push(done.then_some(buf));
            }
        }
        Compression::Zstd => {
            let mut z =
                zstd::bulk::Compressor::new(ZSTD_LEVEL).context("creating a zstd context")?;
            for (_, data) in chunk {
                let input = padded(data, &mut full);
                let mut buf = Vec::with_capacity(CLUSTER as usize - 1);
                // An error here means the frame would not fit in less than a cluster.
                out.push(z.compress_to_buffer(input, &mut buf).ok().map(|_| buf));
            }
        }
    }
    Ok(out)
}

/// `data` as a whole cluster (a short last cluster padded with zeros).
fn padded<'a>(data: &'a [u8], full: &'a mut [u8]) -> &'a [u8] {
    if data.len() == CLUSTER as usize {
        data
    } else {
        full.fill(0);
        full[..data.len()].copy_from_slice(data);
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = header(HeaderFields {
            virtual_size: 1 << 30,
            l1_size: 2,
            l1_offset: 5 * CLUSTER,
            reftable_offset: 7 * CLUSTER,
            reftable_clusters: 1,
            compression: Compression::Zstd,
        });
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!(u32::from_be_bytes(h[4..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(h[20..24].try_into().unwrap()), 16);
        assert_eq!(u64::from_be_bytes(h[24..32].try_into().unwrap()), 1 << 30);
        assert_eq!(u64::from_be_bytes(h[72..80].try_into().unwrap()), 8);
        assert_eq!(u32::from_be_bytes(h[100..104].try_into().unwrap()), 112);
        assert_eq!(h[104], 1);
        assert_eq!(h.len(), 120);
        let plain = header(HeaderFields {
            compression: Compression::Zlib,
            virtual_size: 1 << 30,
            l1_size: 2,
            l1_offset: 5 * CLUSTER,
            reftable_offset: 7 * CLUSTER,
            reftable_clusters: 1,
        });
        assert_eq!(u32::from_be_bytes(plain[100..104].try_into().unwrap()), 104);
        assert_eq!(u64::from_be_bytes(plain[72..80].try_into().unwrap()), 0);
    }

    #[test]
    fn zlib_clusters_inflate_with_a_4k_window() {
        let mut data = vec![0u8; CLUSTER as usize];
        for (i, b) in data.iter_mut().enumerate() {
            *b = ((i * 7) % 251) as u8 ^ ((i / 9000) as u8);
        }
        let packed = compress_chunk(&[(0, &data)], Compression::Zlib).unwrap();
        let c = packed[0].as_ref().expect("compressible");
        assert!(c.len() < CLUSTER as usize);
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut back = Vec::with_capacity(CLUSTER as usize);
        d.decompress_vec(c, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn incompressible_cluster_stays_raw() {
        // xorshift noise does not compress below a cluster.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..CLUSTER)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for c in [Compression::Zlib, Compression::Zstd] {
            assert_eq!(compress_chunk(&[(0, &data)], c).unwrap(), vec![None]);
        }
    }
}

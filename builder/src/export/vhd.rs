//! VHD export (Microsoft "Virtual Hard Disk Image Format Specification"), two subformats:
//! - fixed (what Azure takes): the raw disk, its size rounded up to 1 MiB, followed by a
//!   512-byte big-endian footer;
//! - dynamic (Hyper-V, and smaller to ship): a footer copy, the dynamic disk header, the block
//!   allocation table (BAT), then only the 2 MiB blocks that hold data, each behind its sector
//!   bitmap, and the footer. Written front to back; the BAT is known before any block because
//!   the allocated blocks are found first with a cheap scan ([`sparse::nonzero_clusters`]).
//!
//! The creator application is `win `: qemu (and Hyper-V) then take the disk size from the
//! footer's current-size field instead of the CHS geometry, which cannot express most sizes
//! exactly. The unique id is the caller's ([`super::ExportOptions::disk_id`]; the build derives
//! it from the disk stage key) or else derived from the disk content, and the timestamp is the
//! caller's (the commit's), so the same raw image always gives the same file.

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;
use sha2::Digest;

use super::raw;
use super::sparse;
use super::stream::{HashPipe, Writeback};
use super::{input_len, ExportReport, Meter};
use crate::progress::Step;
use crate::recipe::schema::Format;

pub const FOOTER_LEN: usize = 512;
const MIB: u64 = 1 << 20;
/// Azure's limits for a fixed VHD's virtual size.
pub const AZURE_MIN: u64 = 20 * MIB;
pub const AZURE_MAX: u64 = 32 << 40;
/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01T00:00:00Z.
const VHD_EPOCH: i64 = 946_684_800;
const CREATOR_APP: &[u8; 4] = b"win ";
/// Hyper-V's creator version (10.0).
const CREATOR_VERSION: u32 = 0x000A_0000;
const CREATOR_OS: &[u8; 4] = b"Wi2k";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed = 2,
    Dynamic = 3,
}

/// Cylinders, heads, sectors per track for `size` bytes: the algorithm of the VHD
/// specification's appendix, which rounds down to what CHS can express.
pub fn chs(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024);
        if h < 4 {
            h = 4;
        }
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// One's complement of the byte sum (the footer's checksum field must be zero when summed).
pub fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)))
}

/// The 512-byte footer for a disk of `size` bytes. `data_offset` is `u64::MAX` for fixed
/// disks and the dynamic header's offset for dynamic ones.
pub fn footer(
    size: u64,
    disk_type: DiskType,
    data_offset: u64,
    timestamp: u32,
    unique_id: [u8; 16],
) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: "reserved", always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    f[24..28].copy_from_slice(&timestamp.to_be_bytes());
    f[28..32].copy_from_slice(CREATOR_APP);
    f[32..36].copy_from_slice(&CREATOR_VERSION.to_be_bytes());
    f[36..40].copy_from_slice(CREATOR_OS);
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = chs(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&(disk_type as u32).to_be_bytes());
    f[68..84].copy_from_slice(&unique_id);
    // f[84]: saved state 0; the rest is reserved zeros.
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Seconds since the VHD epoch for a Unix timestamp, clamped to the field's range.
pub fn vhd_timestamp(unix: i64) -> u32 {
    (unix - VHD_EPOCH).clamp(0, i64::from(u32::MAX)) as u32
}

/// Write a fixed VHD of `raw` to `out`. Virtual size: the raw size rounded up to 1 MiB.
/// Unique id: `disk_id`, else the first 16 bytes of the content digest ([`fixed_id`]).
pub fn write_fixed(
    raw: &Path,
    out: &Path,
    timestamp: i64,
    disk_id: Option<[u8; 16]>,
    step: &Step,
) -> Result<ExportReport> {
    let (src, len) = input_len(raw)?;
    let size = len.div_ceil(MIB) * MIB;
    if !(AZURE_MIN..=AZURE_MAX).contains(&size) {
        bail!(
            "a fixed VHD must be between 20 MiB and 32 TiB (Azure's limits); {} is {len} bytes",
            raw.display()
        );
    }
    let mut dst = AtomicFile::create(out)?;
    dst.file()
        .set_len(size + FOOTER_LEN as u64)
        .with_context(|| format!("sizing {}", dst.temp_path().display()))?;
    let mut pipe = HashPipe::new()?;
    let mut meter = Meter::new(step, len);
    raw::copy_hashed(&src, len, dst.file(), &mut pipe, &mut meter)
        .with_context(|| format!("copying {}", raw.display()))?;
    pipe.zeros(size - len)?;
    let mut hasher = pipe.finish()?;
    let id = disk_id.unwrap_or_else(|| fixed_id(&hasher));
    let foot = footer(
        size,
        DiskType::Fixed,
        u64::MAX,
        vhd_timestamp(timestamp),
        id,
    );
    dst.file()
        .write_all_at(&foot, size)
        .context("writing the VHD footer")?;
    hasher.update(foot);
    dst.commit()?;
    Ok(ExportReport {
        path: out.to_owned(),
        format: Format::Vhd,
        sha256: Sha256Hex::from_hasher(hasher),
        size: size + FOOTER_LEN as u64,
        virtual_size: size,
    })
}

/// The content digest so far (the whole virtual disk) identifies the disk: same content, same
/// id.
fn fixed_id(content: &sha2::Sha256) -> [u8; 16] {
    let digest = content.clone().finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Block size of dynamic VHDs: the specification's default, what Hyper-V and qemu write.
pub const DYNAMIC_BLOCK: u64 = 2 * MIB;
/// The largest dynamic VHD the specification allows (2040 GiB).
pub const DYNAMIC_MAX: u64 = 2040 << 30;
const DYNAMIC_HEADER_OFFSET: u64 = FOOTER_LEN as u64;
pub const DYNAMIC_HEADER_LEN: usize = 1024;
const BAT_OFFSET: u64 = DYNAMIC_HEADER_OFFSET + DYNAMIC_HEADER_LEN as u64;
/// One bit per 512-byte sector of a block (2 MiB → 512 bytes), a whole sector.
const BITMAP_LEN: usize = (DYNAMIC_BLOCK / 512 / 8) as usize;

/// The dynamic disk header (`cxsparse`) for a BAT of `entries` blocks at [`BAT_OFFSET`].
pub fn dynamic_header(entries: u32) -> [u8; DYNAMIC_HEADER_LEN] {
    let mut h = [0u8; DYNAMIC_HEADER_LEN];
    h[0..8].copy_from_slice(b"cxsparse");
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: unused
    h[16..24].copy_from_slice(&BAT_OFFSET.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&entries.to_be_bytes());
    h[32..36].copy_from_slice(&(DYNAMIC_BLOCK as u32).to_be_bytes());
    // Parent id, time stamp, name and locators: zero (no parent, not a differencing disk).
    let sum = checksum(&h);
    h[36..40].copy_from_slice(&sum.to_be_bytes());
    h
}

/// Write a dynamic VHD of `raw` to `out`. Virtual size: the raw size rounded up to 1 MiB, as
/// for fixed VHDs, so both subformats describe the same disk.
///
/// The footer (and its copy at the start) carries the disk's unique id, so the id must be
/// known before the first byte: `disk_id` when the caller has one (the build passes one
/// derived from the disk stage key), else the content digest [`fixed_id`] gives the fixed VHD,
/// from a first pass over the data blocks. Then the file is written front to back and hashed
/// alongside.
pub fn write_dynamic(
    raw: &Path,
    out: &Path,
    timestamp: i64,
    disk_id: Option<[u8; 16]>,
    step: &Step,
) -> Result<ExportReport> {
    let (src, len) = input_len(raw)?;
    let size = len.div_ceil(MIB) * MIB;
    if size > DYNAMIC_MAX {
        bail!(
            "a dynamic VHD holds at most 2040 GiB; {} is {len} bytes",
            raw.display()
        );
    }
    let blocks = size.div_ceil(DYNAMIC_BLOCK);
    let allocated: Vec<u64> = sparse::nonzero_clusters(&src, len, DYNAMIC_BLOCK)
        .with_context(|| format!("scanning {} for data", raw.display()))?
        .iter()
        .flat_map(|r| r.first..r.first + r.count)
        .collect();
    let bat_len = (blocks * 4).div_ceil(512) * 512;
    let data_start = BAT_OFFSET + bat_len;
    let stride = BITMAP_LEN + DYNAMIC_BLOCK as usize;
    // 0xFFFFFFFF marks an unallocated block; the padding to a whole sector is 0xFF too.
    let mut bat = vec![0xFFu8; bat_len as usize];
    for (k, b) in allocated.iter().enumerate() {
        let sector = u32::try_from((data_start + k as u64 * stride as u64) / 512)
            .context("a BAT entry would overflow")?;
        bat[(b * 4) as usize..(b * 4 + 4) as usize].copy_from_slice(&sector.to_be_bytes());
    }
    let end = data_start + allocated.len() as u64 * stride as u64;
    let id = match disk_id {
        Some(id) => id,
        None => content_id(&src, len, size, &allocated)
            .with_context(|| format!("hashing {}", raw.display()))?,
    };
    let foot = footer(
        size,
        DiskType::Dynamic,
        DYNAMIC_HEADER_OFFSET,
        vhd_timestamp(timestamp),
        id,
    );
    let header = dynamic_header(u32::try_from(blocks).context("too many blocks")?);

    let mut dst = AtomicFile::create(out)?;
    let file = dst
        .file()
        .try_clone()
        .context("duplicating the output handle")?;
    let written = |r: std::io::Result<()>, dst: &AtomicFile| {
        r.with_context(|| format!("writing {}", dst.temp_path().display()))
    };
    let mut writeback = Writeback::new(&file)?;
    let mut pipe = HashPipe::new()?;
    let mut head = Vec::with_capacity(data_start as usize);
    head.extend_from_slice(&foot);
    head.extend_from_slice(&header);
    head.extend_from_slice(&bat);
    written(file.write_all_at(&head, 0), &dst)?;
    pipe.owned(head)?;
    let mut meter = Meter::new(step, len);
    let mut at = data_start;
    for &b in &allocated {
        let start = b * DYNAMIC_BLOCK;
        let in_raw = DYNAMIC_BLOCK.min(len - start) as usize;
        // Each block: its sector bitmap (every sector present), then the data.
        let mut buf = pipe.buffer()?;
        buf[..BITMAP_LEN].fill(0xFF);
        buf[BITMAP_LEN + in_raw..stride].fill(0);
        src.read_exact_at(&mut buf[BITMAP_LEN..BITMAP_LEN + in_raw], start)
            .with_context(|| format!("reading {} at offset {start}", raw.display()))?;
        written(file.write_all_at(&buf[..stride], at), &dst)?;
        pipe.bytes(buf, stride)?;
        at += stride as u64;
        writeback.written_to(at);
        meter.at(start + in_raw as u64);
    }
    written(file.write_all_at(&foot, end), &dst)?;
    pipe.owned(foot.to_vec())?;
    drop(writeback);
    let sha256 = Sha256Hex::from_hasher(pipe.finish()?);
    dst.commit()?;
    Ok(ExportReport {
        path: out.to_owned(),
        format: Format::VhdDynamic,
        sha256,
        size: end + FOOTER_LEN as u64,
        virtual_size: size,
    })
}

/// The unique id [`write_fixed`] derives from the content: the first 16 bytes of the SHA-256
/// of the virtual disk (the raw image padded with zeros to `size`), here from the data blocks
/// alone (the rest is zeros).
fn content_id(src: &std::fs::File, len: u64, size: u64, allocated: &[u64]) -> Result<[u8; 16]> {
    let mut pipe = HashPipe::new()?;
    let mut pos = 0u64;
    for &b in allocated {
        let start = b * DYNAMIC_BLOCK;
        pipe.zeros(start - pos)?;
        let in_raw = DYNAMIC_BLOCK.min(len - start) as usize;
        let in_disk = DYNAMIC_BLOCK.min(size - start) as usize;
        let mut buf = pipe.buffer()?;
        buf[in_raw..in_disk].fill(0);
        src.read_exact_at(&mut buf[..in_raw], start)
            .with_context(|| format!("reading at offset {start}"))?;
        pipe.bytes(buf, in_disk)?;
        pos = start + in_disk as u64;
    }
    pipe.zeros(size - pos)?;
    let digest = pipe.finish()?.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_header_fields_and_checksum() {
        let h = dynamic_header(1300);
        assert_eq!(&h[0..8], b"cxsparse");
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), u64::MAX);
        assert_eq!(u64::from_be_bytes(h[16..24].try_into().unwrap()), 1536);
        assert_eq!(
            u32::from_be_bytes(h[24..28].try_into().unwrap()),
            0x0001_0000
        );
        assert_eq!(u32::from_be_bytes(h[28..32].try_into().unwrap()), 1300);
        assert_eq!(u32::from_be_bytes(h[32..36].try_into().unwrap()), 2 << 20);
        let stored = u32::from_be_bytes(h[36..40].try_into().unwrap());
        let mut zeroed = h;
        zeroed[36..40].fill(0);
        assert_eq!(checksum(&zeroed), stored);
        assert!(h[40..].iter().all(|b| *b == 0));
    }

    #[test]
    fn chs_matches_the_specification_algorithm() {
        // Worked by hand through the appendix algorithm.
        // 20 MiB = 40960 sectors: 17 spt, 2409 cyl×heads, heads 4.
        assert_eq!(chs(20 * MIB), (602, 4, 17));
        // 2 GiB = 4194304 sectors: 17 → heads 241 > 16 → 31 spt → 135300 ≥ 16384 → 63 spt.
        assert_eq!(chs(2 << 30), (4161, 16, 63));
        // 127 GiB+ caps at 65535×16×255.
        assert_eq!(chs(1 << 40), (65535, 16, 255));
        // 100 MiB = 204800 sectors: 17 → 12047 → heads 12; 12047 < 12288 → stays 17 spt.
        assert_eq!(chs(100 * MIB), (1003, 12, 17));
    }

    #[test]
    fn footer_fields_and_checksum() {
        let id = [0x11u8; 16];
        let f = footer(
            2 << 30,
            DiskType::Fixed,
            u64::MAX,
            vhd_timestamp(1_700_000_000),
            id,
        );
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(&f[28..32], b"win ");
        assert_eq!(&f[36..40], b"Wi2k");
        assert_eq!(u64::from_be_bytes(f[40..48].try_into().unwrap()), 2 << 30);
        assert_eq!(u64::from_be_bytes(f[16..24].try_into().unwrap()), u64::MAX);
        assert_eq!(
            u32::from_be_bytes(f[24..28].try_into().unwrap()),
            753_315_200
        );
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        assert_eq!(&f[56..60], &[0x10, 0x41, 16, 63]);
        // Re-summing with the stored checksum zeroed gives the stored value back.
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        assert_eq!(checksum(&zeroed), stored);
        // Known value, computed independently (Python: one's complement of the byte sum of
        // this footer with the checksum field zero).
        assert_eq!(stored, 0xFFFF_ECE1);
    }

    #[test]
    fn checksum_known_value() {
        assert_eq!(checksum(&[]), 0xFFFF_FFFF);
        assert_eq!(checksum(&[1, 2, 3]), 0xFFFF_FFF9);
    }

    #[test]
    fn timestamps_clamp() {
        assert_eq!(vhd_timestamp(0), 0);
        assert_eq!(vhd_timestamp(VHD_EPOCH + 5), 5);
    }
}

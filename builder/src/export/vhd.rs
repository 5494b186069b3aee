//! VHD export, fixed subformat (what Azure takes): the raw disk, its size rounded up to 1 MiB,
//! followed by a 512-byte big-endian footer (Microsoft "Virtual Hard Disk Image Format
//! Specification", footer and CHS appendix).
//!
//! The creator application is `win `: qemu (and Hyper-V) then take the disk size from the
//! footer's current-size field instead of the CHS geometry, which cannot express most sizes
//! exactly. The unique id is derived from the disk content and the timestamp is fixed, so the
//! same raw image always gives the same file.

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;
use sha2::Digest;

use super::raw;
use super::stream::HashPipe;
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
pub fn write_fixed(raw: &Path, out: &Path, timestamp: i64, step: &Step) -> Result<ExportReport> {
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
    // The content digest so far identifies the disk: same content, same id.
    let content = hasher.clone().finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&content[..16]);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Known value: the byte sum of this footer with checksum zero.
        let sum: u32 = zeroed.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(stored, !sum);
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

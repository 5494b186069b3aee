//! The partition table of the installed disk, computed in memory before it is written: the
//! image's GPT with the root partition (number 4, the last one) grown to the last whole MiB
//! of the target, the backup GPT moved to the target's last sectors and the protective MBR resized.
//!
//! The `gpt` crate does the table work on a [`StagedDisk`]: a sparse in-memory view of the
//! target that holds the image's held-back head and tail and records every write, so the
//! new tables exist completely before a single table byte reaches the disk.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::{PartRecord, ProtectiveMBR};

use super::stream::{Streamed, HEAD_HOLD};
use super::target::SECTOR;

/// The partition that grows: nodeimg's layout puts the root file system last, as number 4.
pub const ROOT_PARTITION: u32 = 4;

const S: usize = SECTOR as usize;
/// Partition ends are aligned to 1 MiB.
const ALIGN_LBAS: u64 = (1 << 20) / SECTOR;

/// A sparse, sector-granular in-memory disk of a given size. Unstaged sectors read as zeros.
#[derive(Debug)]
pub struct StagedDisk {
    len: u64,
    pos: u64,
    sectors: BTreeMap<u64, Box<[u8; S]>>,
}

impl StagedDisk {
    pub fn new(len: u64) -> Self {
        StagedDisk {
            len,
            pos: 0,
            sectors: BTreeMap::new(),
        }
    }

    /// Stage `data` (a whole number of sectors) at the sector-aligned `offset`.
    pub fn load(&mut self, offset: u64, data: &[u8]) {
        debug_assert!(offset % SECTOR == 0 && data.len() % S == 0);
        for (i, chunk) in data.chunks_exact(S).enumerate() {
            let mut s = Box::new([0u8; S]);
            s.copy_from_slice(chunk);
            self.sectors.insert(offset / SECTOR + i as u64, s);
        }
    }

    /// Stage zeros over sectors `first..=last`.
    pub fn zero_sectors(&mut self, first: u64, last: u64) {
        for lba in first..=last {
            self.sectors.insert(lba, Box::new([0u8; S]));
        }
    }

    /// Contiguous runs of staged sectors within `[first, end)` (sector numbers), as
    /// `(byte offset, bytes)`, for large writes.
    pub fn runs(&self, first: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next_lba = None;
        for (&lba, data) in self.sectors.range(first..end) {
            match out.last_mut() {
                Some((_, buf)) if next_lba == Some(lba) => buf.extend_from_slice(&data[..]),
                _ => out.push((lba * SECTOR, data.to_vec())),
            }
            next_lba = Some(lba + 1);
        }
        out
    }

    fn sector(&self, lba: u64) -> [u8; S] {
        self.sectors.get(&lba).map_or([0u8; S], |s| **s)
    }
}

impl Read for StagedDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let mut done = 0;
        while done < n {
            let at = self.pos + done as u64;
            let within = (at % SECTOR) as usize;
            let take = (S - within).min(n - done);
            let sector = self.sector(at / SECTOR);
            buf[done..done + take].copy_from_slice(&sector[within..within + take]);
            done += take;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for StagedDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(std::io::Error::other(
                "write past the end of the staged disk",
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let at = self.pos + done as u64;
            let within = (at % SECTOR) as usize;
            let take = (S - within).min(buf.len() - done);
            let mut sector = self.sector(at / SECTOR);
            sector[within..within + take].copy_from_slice(&buf[done..done + take]);
            self.sectors.insert(at / SECTOR, Box::new(sector));
            done += take;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for StagedDisk {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// The finished plan: every byte still to be written, and where the root file system is.
#[derive(Debug)]
pub struct Plan {
    pub staged: StagedDisk,
    /// Root partition, bytes from the start of the disk; `root_len` after growing.
    pub root_offset: u64,
    pub root_len: u64,
    /// Root partition size in the image.
    pub root_len_in_image: u64,
    /// First sector of the backup GPT (partition entries, then the header in the last one).
    pub backup_first_lba: u64,
    pub device_lbas: u64,
}

impl Plan {
    /// Image data after the head, up to the backup GPT: written first.
    pub fn data_runs(&self) -> Vec<(u64, Vec<u8>)> {
        self.staged
            .runs(HEAD_HOLD as u64 / SECTOR, self.backup_first_lba)
    }

    /// The backup GPT at the end of the target.
    pub fn backup_runs(&self) -> Vec<(u64, Vec<u8>)> {
        self.staged.runs(self.backup_first_lba, self.device_lbas)
    }

    /// Protective MBR, boot code, primary GPT: written last, they make the disk bootable.
    pub fn head_runs(&self) -> Vec<(u64, Vec<u8>)> {
        self.staged.runs(0, HEAD_HOLD as u64 / SECTOR)
    }
}

/// Build the final partition table for a target of `device_size` bytes.
pub fn plan(streamed: &Streamed, device_size: u64) -> Result<Plan> {
    let len = streamed.len;
    if len % SECTOR != 0 {
        bail!("the image is {len} bytes, not a whole number of {SECTOR}-byte sectors");
    }
    if len < HEAD_HOLD as u64 + 34 * SECTOR {
        bail!("the image is only {len} bytes: too small to be a GPT disk image");
    }
    if len > device_size {
        bail!("the image does not fit on the target: it is {len} bytes, the target {device_size}");
    }
    let device_lbas = device_size / SECTOR;
    let mut staged = StagedDisk::new(device_size);
    staged.load(0, &streamed.head);
    staged.load(streamed.tail_offset, &streamed.tail);

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(staged)
        .context("reading the image's partition table")?;
    let old = disk
        .primary_header()
        .map_err(|e| anyhow::anyhow!("the image has no valid primary GPT header: {e}"))?
        .clone();
    let mut parts = disk.partitions().clone();
    let numbers: Vec<u32> = parts.keys().copied().collect();
    if numbers != (1..=numbers.len() as u32).collect::<Vec<_>>() {
        bail!("the image's partitions are numbered {numbers:?}; expected 1, 2, ... without gaps");
    }
    let root = parts
        .get(&ROOT_PARTITION)
        .with_context(|| format!("the image has no partition {ROOT_PARTITION} (root)"))?
        .clone();
    if let Some((n, _)) = parts
        .iter()
        .find(|(n, p)| **n != ROOT_PARTITION && p.last_lba >= root.first_lba)
    {
        bail!("partition {n} lies after the root partition {ROOT_PARTITION}; only the last partition can grow");
    }
    let entry_lbas = (u64::from(old.num_parts) * u64::from(old.part_size)).div_ceil(SECTOR);
    let backup_lba = device_lbas - 1;
    let last_usable = backup_lba - entry_lbas - 1;
    // End on a MiB boundary, as the image builder does: on a disk of the image's own size
    // the table stays byte-identical, and the size is a whole number of 4 KiB fs blocks.
    let aligned_end = ((last_usable + 1) / ALIGN_LBAS * ALIGN_LBAS).saturating_sub(1);
    let new_last = aligned_end.max(root.last_lba);
    if last_usable < root.last_lba {
        bail!("the target is too small for the image's partition {ROOT_PARTITION}");
    }
    let grown = gpt::partition::Partition {
        last_lba: new_last,
        ..root.clone()
    };
    parts.insert(ROOT_PARTITION, grown);
    disk.update_partitions(parts)
        .context("growing the root partition")?;
    disk.write_inplace()
        .context("writing the grown partition table (in memory)")?;
    let mut staged = disk.take_device();

    // The image's own backup GPT now lies inside the root partition: clear it so nothing
    // mistakes it for a table.
    if old.backup_lba != backup_lba {
        staged.zero_sectors(old.last_usable + 1, old.backup_lba);
    }

    let mut lba0 = [0u8; S];
    staged.seek(SeekFrom::Start(0))?;
    staged.read_exact(&mut lba0)?;
    let mut pmbr = ProtectiveMBR::from_bytes(&lba0, LogicalBlockSize::Lb512)
        .map_err(|e| anyhow::anyhow!("the image's protective MBR: {e:?}"))?;
    if pmbr.partition(0).map(|p| p.os_type) != Some(0xEE) {
        bail!("the image's MBR is not a protective MBR (first entry is not of type 0xEE)");
    }
    let covered = u32::try_from(device_lbas - 1).unwrap_or(u32::MAX);
    pmbr.set_partition(0, PartRecord::new_protective(Some(covered)));
    // Only the partition records and the signature: GRUB's boot code in front stays.
    pmbr.update_conservative(&mut staged)
        .map_err(|e| anyhow::anyhow!("updating the protective MBR (in memory): {e:?}"))?;

    Ok(Plan {
        staged,
        root_offset: root.first_lba * SECTOR,
        root_len: (new_last - root.first_lba + 1) * SECTOR,
        root_len_in_image: (root.last_lba - root.first_lba + 1) * SECTOR,
        backup_first_lba: backup_lba - entry_lbas,
        device_lbas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_disk_reads_back_writes_and_zeros() {
        let mut d = StagedDisk::new(8 * SECTOR);
        d.load(SECTOR, &[1u8; S]);
        d.seek(SeekFrom::Start(SECTOR + 500)).unwrap();
        d.write_all(&[2u8; 20]).unwrap();
        d.seek(SeekFrom::Start(0)).unwrap();
        let mut all = vec![0u8; 8 * S];
        d.read_exact(&mut all).unwrap();
        assert!(all[..S].iter().all(|&b| b == 0));
        assert!(all[S..S + 500].iter().all(|&b| b == 1));
        assert!(all[S + 500..S + 520].iter().all(|&b| b == 2));
        assert!(all[S + 520..].iter().all(|&b| b == 0));
        let runs = d.runs(0, 8);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, SECTOR);
        assert_eq!(runs[0].1.len(), S * 2);
        d.seek(SeekFrom::End(-1)).unwrap();
        assert!(d.write_all(&[0u8; 2]).is_err());
    }
}

//! The disk the image is written to: opening it, its size, whether it is safe to overwrite
//! (partition table and file system signatures, read from its first and last sectors), and
//! positioned writes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The only logical sector size the images are built for: their GPT sits at byte 512.
pub const SECTOR: u64 = 512;

/// An open target disk.
#[derive(Debug)]
pub struct Target {
    path: PathBuf,
    file: File,
    size: u64,
    /// Unwritten parts read back as zeros: a regular file with no allocated block (a fresh
    /// `truncate`d file). Block devices never count: after a previous install they hold old
    /// data, and discarding is not guaranteed to zero on every disk.
    reads_zeros: bool,
}

impl Target {
    /// Open `path` for writing. `sys_root` is where `/sys` is looked up (tests pass a fake
    /// one) to check the logical sector size of a block device.
    pub fn open(path: &Path, sys_root: &Path) -> Result<Target> {
        let meta = std::fs::metadata(path).with_context(|| format!("target {}", path.display()))?;
        let ft = meta.file_type();
        if !ft.is_block_device() && !ft.is_file() {
            bail!(
                "target {} is neither a block device nor a regular file",
                path.display()
            );
        }
        if ft.is_block_device() {
            // O_EXCL on a block device fails with EBUSY while it (or one of its partitions)
            // is mounted or held by md/LVM: never write under a live file system. Only a
            // probe: kept open, the claim would also lock out resize2fs and debugfs.
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(path)
                .map_err(|e| {
                    let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                        " (it is in use: a partition is mounted or held by md/LVM)"
                    } else {
                        ""
                    };
                    anyhow::anyhow!("opening target {}: {e}{hint}", path.display())
                })?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening target {} for writing", path.display()))?;
        // Works for both: a block device's size is where SEEK_END lands.
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("finding the size of {}", path.display()))?;
        if ft.is_block_device() {
            check_sector_size(path, sys_root)?;
        }
        if size == 0 {
            bail!("target {} has a size of 0 bytes", path.display());
        }
        if size % SECTOR != 0 {
            bail!(
                "target {} is {size} bytes, not a whole number of {SECTOR}-byte sectors",
                path.display()
            );
        }
        Ok(Target {
            path: path.to_path_buf(),
            file,
            size,
            reads_zeros: ft.is_file() && meta.blocks() == 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn reads_zeros(&self) -> bool {
        self.reads_zeros
    }

    /// Write `data` at `offset`; never past the end (a regular file would silently grow).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if end > self.size {
            bail!(
                "the image does not fit on {}: it needs at least {end} bytes, the target has {}",
                self.path.display(),
                self.size
            );
        }
        self.file.write_all_at(data, offset).with_context(|| {
            format!(
                "writing {} bytes at offset {offset} of {}",
                data.len(),
                self.path.display()
            )
        })
    }

    /// Like [`Target::write_at`], but all-zero 64 KiB blocks are skipped when the target is
    /// known to read zeros there (keeps a file target sparse; never used on a disk).
    pub fn write_data_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.reads_zeros {
            return self.write_at(offset, data);
        }
        const BLOCK: usize = 64 * 1024;
        let mut start = 0;
        while start < data.len() {
            let end = (start + BLOCK).min(data.len());
            if data[start..end].iter().any(|&b| b != 0) {
                // Extend over following non-zero blocks: one write per run.
                let mut run_end = end;
                while run_end < data.len() {
                    let next = (run_end + BLOCK).min(data.len());
                    if data[run_end..next].iter().all(|&b| b == 0) {
                        break;
                    }
                    run_end = next;
                }
                self.write_at(offset + start as u64, &data[start..run_end])?;
                start = run_end;
            } else {
                start = end;
            }
        }
        Ok(())
    }

    /// Write zeros over `[offset, offset + len)`, clamped to the target.
    pub fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let end = (offset + len).min(self.size);
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset.min(end);
        while at < end {
            let n = ((end - at) as usize).min(zeros.len());
            self.write_at(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self
                .file
                .read_at(&mut buf[done..], offset + done as u64)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Flush everything written so far to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("flushing writes to {}", self.path.display()))
    }

    /// The signatures found in the first 68 KiB and the last sector.
    pub fn signatures(&self) -> Result<Vec<Signature>> {
        let head = self.read_at(0, 68 * 1024)?;
        let last = self.read_at(self.size.saturating_sub(SECTOR), SECTOR as usize)?;
        Ok(find_signatures(&head, &last))
    }
}

/// A block device must use 512-byte logical sectors: a 4Kn disk would look for the GPT at
/// byte 4096 and never find the image's table.
fn check_sector_size(dev: &Path, sys_root: &Path) -> Result<()> {
    let Some(name) = std::fs::canonicalize(dev)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return Ok(());
    };
    let file = sys_root.join(format!("sys/class/block/{name}/queue/logical_block_size"));
    let Ok(text) = std::fs::read_to_string(&file) else {
        // A partition or an unusual device without the attribute: nothing to check.
        return Ok(());
    };
    match text.trim().parse::<u64>() {
        Ok(SECTOR) => Ok(()),
        Ok(other) => bail!(
            "{} has {other}-byte logical sectors; nodeimg images are built for {SECTOR}-byte sectors",
            dev.display()
        ),
        Err(_) => Ok(()),
    }
}

/// Something on the target that says it is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub what: &'static str,
    pub offset: u64,
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.what, self.offset)
    }
}

/// Partition table and file system magic numbers, at the offsets their formats define.
/// `head` is the start of the disk, `last` its last sector.
pub fn find_signatures(head: &[u8], last: &[u8]) -> Vec<Signature> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let mut found = Vec::new();
    let mut push = |what, offset: usize| {
        found.push(Signature {
            what,
            offset: offset as u64,
        })
    };
    let boot_sig = at(510, &[0x55, 0xAA]);
    if at(512, b"EFI PART") {
        push("a GPT partition table", 512);
    } else if boot_sig && (at(54, b"FAT1") || at(82, b"FAT32   ")) {
        push("a FAT file system", 0);
    } else if boot_sig && at(3, b"NTFS    ") {
        push("an NTFS file system", 3);
    } else if boot_sig
        && head
            .get(446..510)
            .is_some_and(|t| t.iter().any(|&b| b != 0))
    {
        push("an MBR (DOS) partition table", 446);
    }
    if at(1080, &[0x53, 0xEF]) {
        push("an ext2/3/4 file system", 1080);
    }
    if at(0, b"XFSB") {
        push("an XFS file system", 0);
    }
    if at(65536 + 64, b"_BHRfS_M") {
        push("a Btrfs file system", 65536 + 64);
    }
    if at(0, b"LUKS\xba\xbe") {
        push("a LUKS encrypted volume", 0);
    }
    for sector in 0..4 {
        if at(sector * 512, b"LABELONE") {
            push("an LVM physical volume", sector * 512);
        }
    }
    if at(4096 - 10, b"SWAPSPACE2") || at(4096 - 10, b"SWAP-SPACE") {
        push("a swap area", 4096 - 10);
    }
    if at(4096, &[0xfc, 0x4e, 0x2b, 0xa9]) || at(0, &[0xfc, 0x4e, 0x2b, 0xa9]) {
        push("a Linux RAID (md) member", 4096);
    }
    if at(32769, b"CD001") {
        push("an ISO 9660 file system", 32769);
    }
    if at(0, b"hsqs") {
        push("a SquashFS file system", 0);
    }
    // The backup GPT header alone still lets tools (and firmware) recover the old table.
    if !at(512, b"EFI PART") && last.get(..8) == Some(b"EFI PART") {
        found.push(Signature {
            what: "a backup GPT header",
            offset: u64::MAX,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> (Vec<u8>, Vec<u8>) {
        (vec![0u8; 68 * 1024], vec![0u8; 512])
    }

    #[test]
    fn blank_disk_has_no_signature() {
        let (h, l) = blank();
        assert!(find_signatures(&h, &l).is_empty());
        // A tiny target yields short reads: no signature, no panic.
        let mut tiny = vec![0u8; 512];
        tiny[510] = 0x55;
        tiny[511] = 0xAA;
        assert!(find_signatures(&tiny[..500], &[]).is_empty());
        assert!(find_signatures(&tiny, &[]).is_empty());
    }

    #[test]
    fn recognises_tables_and_file_systems() {
        let (mut h, l) = blank();
        h[510] = 0x55;
        h[511] = 0xAA;
        h[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(find_signatures(&h, &l)[0].what, "a GPT partition table");

        let (mut h, l) = blank();
        h[510] = 0x55;
        h[511] = 0xAA;
        h[446 + 4] = 0x83;
        assert_eq!(
            find_signatures(&h, &l)[0].what,
            "an MBR (DOS) partition table"
        );

        let (mut h, l) = blank();
        h[1080] = 0x53;
        h[1081] = 0xEF;
        assert_eq!(find_signatures(&h, &l)[0].what, "an ext2/3/4 file system");

        let (h, mut l) = blank();
        l[..8].copy_from_slice(b"EFI PART");
        assert_eq!(find_signatures(&h, &l)[0].what, "a backup GPT header");

        let (mut h, l) = blank();
        h[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(find_signatures(&h, &l)[0].what, "a swap area");
    }

    #[test]
    fn sparse_writes_skip_zero_blocks_only_on_fresh_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let t = Target::open(&path, dir.path()).unwrap();
        assert!(t.reads_zeros());
        let mut data = vec![0u8; 4 << 20];
        data[3 << 20] = 7;
        t.write_data_at(1 << 20, &data).unwrap();
        t.sync().unwrap();
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 256 * 1024, "allocated {allocated}");
        assert_eq!(t.read_at((4 << 20) as u64, 1).unwrap(), vec![7]);
        // Now the file has data: a new open must write everything.
        let t = Target::open(&path, dir.path()).unwrap();
        assert!(!t.reads_zeros());
        let err = t.write_at((8 << 20) - 10, &[1u8; 20]).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}

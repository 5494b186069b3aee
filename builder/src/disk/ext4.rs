//! ext4 filesystems made by `mkfs.ext4 -d TREE` straight into the disk image at the
//! partition's offset: no loop device, no mount, ownership/modes/xattrs/hardlinks preserved.

use std::path::Path;

use anyhow::{Context, Result};
use nodeimg_common::Cmd;

use super::plan::{PartitionPlan, MIB};

/// Features GRUB 2.06 cannot read, which e2fsprogs 1.47 enables by default.
const DISABLED_FEATURES: &str = "^metadata_csum_seed,^orphan_file";

/// Populate the partition described by `part` in `image` (an existing file of the full disk
/// size whose partition range is still all zeros) with an ext4 filesystem holding `tree`.
///
/// Reproducible: the UUID and directory hash seed come from the plan; `SOURCE_DATE_EPOCH`
/// clamps inode times and `E2FSPROGS_FAKE_TIME` fixes the superblock times (e2fsprogs ≥
/// 1.47.2). Pinned so that `/etc/mke2fs.conf` size classes do not change the result: 4 KiB
/// blocks (also what rEFInd's ext4 driver needs on `/boot`), 256-byte inodes, usage type
/// `default`.
pub fn make(image: &Path, part: &PartitionPlan, tree: &Path, epoch: i64) -> Result<()> {
    let label = part.role.label().expect("ext4 partitions have labels");
    let uuid = part
        .fs_uuid
        .with_context(|| format!("partition {} has no filesystem UUID", part.number()))?
        .to_string();
    let extended = format!(
        // The image is a fresh sparse file: its partition range reads as zeros, so mke2fs need
        // not zero inode tables or the journal, and must not punch holes outside its range.
        "offset={},hash_seed={uuid},nodiscard,assume_storage_prezeroed=1,root_owner=0:0",
        part.offset()
    );
    Cmd::new("mkfs.ext4")
        .args([
            "-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096", "-I", "256",
        ])
        .args([
            "-O",
            DISABLED_FEATURES,
            "-E",
            &extended,
            "-U",
            &uuid,
            "-L",
            label,
        ])
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", part.size() / 1024))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("LC_ALL", "C")
        .env_remove("MKE2FS_CONFIG")
        .run()
        .with_context(|| {
            format!(
                "creating the ext4 filesystem `{label}` ({} MiB) from {}",
                part.size() / MIB,
                tree.display()
            )
        })
}

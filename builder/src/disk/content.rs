//! How much space a directory tree takes once it is in an ext4 filesystem with 4 KiB blocks.
//! Used to size partitions before `mkfs.ext4 -d` is asked to fit the tree.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};

const BLOCK: u64 = 4096;
/// Bytes of filesystem per inode at mke2fs' default inode ratio.
const INODE_RATIO: u64 = 16384;
/// Symlink targets shorter than this live inside the inode ("fast symlinks").
const FAST_SYMLINK_MAX: u64 = 60;

/// What a tree needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Data and directory blocks, hardlinked files counted once.
    pub data_bytes: u64,
    /// Distinct inodes (files, directories, symlinks, devices).
    pub inodes: u64,
}

impl TreeUsage {
    /// Filesystem bytes the tree needs: its blocks, or as many bytes as it takes for mke2fs'
    /// default inode ratio to provide enough inodes (plus 10 %), whichever is larger. An OSTree
    /// repository holds many small objects, so the inode bound can dominate.
    pub fn fs_bytes(&self) -> u64 {
        self.data_bytes
            .max(self.inodes * INODE_RATIO + self.inodes * INODE_RATIO / 10)
    }
}

/// Walk `root` (not following symlinks) and add up what it needs.
pub fn measure(root: &Path) -> Result<TreeUsage> {
    let mut usage = TreeUsage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        usage.inodes += 1;
        usage.data_bytes += BLOCK;
        let entries =
            fs::read_dir(&dir).with_context(|| format!("reading directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading directory {}", dir.display()))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("inspecting {}", path.display()))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.inodes += 1;
            if ft.is_file() {
                // Allocated blocks, not the apparent size: sparse files stay sparse in mke2fs -d.
                let allocated = meta.blocks() * 512;
                usage.data_bytes += allocated.min(meta.len()).div_ceil(BLOCK) * BLOCK;
            } else if ft.is_symlink() && meta.len() >= FAST_SYMLINK_MAX {
                usage.data_bytes += BLOCK;
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hardlinks_once_and_rounds_to_blocks() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(d.path().join("a"), d.path().join("sub/a-link")).unwrap();
        fs::write(d.path().join("b"), b"x").unwrap();
        std::os::unix::fs::symlink("short", d.path().join("s")).unwrap();
        std::os::unix::fs::symlink("l".repeat(100), d.path().join("long")).unwrap();
        let u = measure(d.path()).unwrap();
        // two dirs, a (2 blocks), b (1 block), long symlink (1 block)
        assert_eq!(u.data_bytes, (2 + 2 + 1 + 1) * BLOCK);
        // two dirs + a + b + two symlinks
        assert_eq!(u.inodes, 6);
        assert_eq!(u.fs_bytes(), 6 * INODE_RATIO + 6 * INODE_RATIO / 10);
    }

    #[test]
    fn missing_tree_is_an_error_naming_it() {
        let err = measure(Path::new("/nonexistent/tree")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/tree"));
    }
}

//! The build cache: where each stage keeps its outputs, keyed by the digest of its inputs.
//!
//! Layout under the cache directory (`--cache-dir`, default `$XDG_CACHE_HOME/nodeimg` or
//! `~/.cache/nodeimg`):
//!
//! ```text
//! debs/                    .deb files kept across mmdebstrap runs (sync-in / sync-out)
//! artifacts/               downloads, content-addressed (owned by the fetch stage)
//! rootfs/<key>/tree/       a finished rootfs; <key> = rootfs stage key
//! rootfs/<key>/rootfs.json its package manifest and how it was made
//! index/commit/<key>.json  commit stage key -> the commit (and its root tree) in the repo
//! repo/                    bare-mode OSTree stage repository: the latest tree of each ref,
//!                          uncompressed (commits go through it; deploys pull from it)
//! disk/<key>.raw           a raw disk image; <key> = disk stage key (commit, kernel args,
//!                          layout, nodeimg version); the exports are made from it
//! installer/<key>.img      PXE installer initramfs; <key> = commit, kernel, nodeboot binary
//! tmp/                     work trees of a running build; removed on success and failure
//! ```
//!
//! Entries appear by rename only, so a crash leaves either a complete entry or none (and
//! maybe a stale directory under `tmp/` that the next build removes).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::atomic_write;
use serde::{Deserialize, Serialize};

/// Rootfs trees kept by [`Cache::gc_rootfs`]: the current one and the one before it, so
/// switching between two recipes does not rebuild each time.
pub const KEEP_ROOTFS: usize = 2;

/// Raw disk images kept by [`Cache::gc_disks`] (each is GiBs, sparse).
pub const KEEP_DISKS: usize = 2;

/// The cache directory and its layout.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What the index remembers about a commit made for a commit stage key: enough to skip
/// customize/ostreeify/commit entirely, or to re-commit the same tree on a moved ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CommitIndexEntry {
    pub commit: String,
    /// Root `dirtree` checksum of the commit.
    pub root_contents: String,
    /// Root `dirmeta` checksum of the commit.
    pub root_metadata: String,
    pub ostree_ref: String,
}

impl Cache {
    /// The default cache directory: `$XDG_CACHE_HOME/nodeimg`, else `$HOME/.cache/nodeimg`.
    pub fn default_dir() -> Result<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(x).join("nodeimg"));
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .context("neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir")?;
        Ok(PathBuf::from(home).join(".cache").join("nodeimg"))
    }

    /// Open (creating) the cache at `root` and remove work trees left by interrupted builds.
    pub fn open(root: impl AsRef<Path>) -> Result<Cache> {
        let root = root.as_ref().to_path_buf();
        for sub in [
            "debs",
            "artifacts",
            "rootfs",
            "index/commit",
            "disk",
            "installer",
            "tmp",
        ] {
            let d = root.join(sub);
            fs::create_dir_all(&d)
                .with_context(|| format!("creating cache directory {}", d.display()))?;
        }
        let cache = Cache { root };
        cache.clean_tmp()?;
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where mmdebstrap keeps .deb files between runs.
    pub fn debs_dir(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// The fetch stage's content-addressed download store.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// The bare-mode stage repository commits are written into first (see
    /// [`crate::commit::CommitSpec::stage_repo`]).
    pub fn stage_repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    /// The raw disk image of a disk stage key (present when that image was built before).
    pub fn disk_image(&self, key: &Sha256Hex) -> PathBuf {
        self.root.join("disk").join(format!("{}.raw", key.as_str()))
    }

    /// Keep the `keep` most recently used raw images (`current` always); delete the rest.
    pub fn gc_disks(&self, keep: usize, current: &Sha256Hex) -> Result<Vec<PathBuf>> {
        gc_by_mtime(&self.root.join("disk"), keep, &self.disk_image(current))
    }

    /// The PXE installer initramfs of an installer key.
    pub fn installer_image(&self, key: &Sha256Hex) -> PathBuf {
        self.root
            .join("installer")
            .join(format!("{}.img", key.as_str()))
    }

    /// Keep the `keep` most recently used installer images (`current` always).
    pub fn gc_installers(&self, keep: usize, current: &Sha256Hex) -> Result<Vec<PathBuf>> {
        gc_by_mtime(
            &self.root.join("installer"),
            keep,
            &self.installer_image(current),
        )
    }

    /// The directory of one cached rootfs (it holds `tree/` and `rootfs.json`).
    pub fn rootfs_entry(&self, key: &Sha256Hex) -> PathBuf {
        self.root.join("rootfs").join(key.as_str())
    }

    /// A fresh temporary directory under `tmp/`, removed when the handle drops. Work trees
    /// live here so they are on the same filesystem as the cache (cheap renames) and a
    /// failed build cleans up after itself.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{prefix}."))
            .tempdir_in(&tmp)
            .with_context(|| format!("creating a work directory under {}", tmp.display()))
    }

    /// Move a finished rootfs (a directory holding `tree/` and `rootfs.json`) into place.
    /// Another build that finished the same key first wins; ours is then discarded.
    pub fn install_rootfs(&self, key: &Sha256Hex, staged: &Path) -> Result<PathBuf> {
        let target = self.rootfs_entry(key);
        if target.exists() {
            remove_tree(staged)?;
            return Ok(target);
        }
        fs::rename(staged, &target).with_context(|| {
            format!(
                "moving the finished rootfs {} to {}",
                staged.display(),
                target.display()
            )
        })?;
        Ok(target)
    }

    fn index_path(&self, key: &Sha256Hex) -> PathBuf {
        self.root
            .join("index/commit")
            .join(format!("{}.json", key.as_str()))
    }

    /// The commit recorded for `key`, if any. A corrupt entry reads as a miss.
    pub fn lookup_commit(&self, key: &Sha256Hex) -> Result<Option<CommitIndexEntry>> {
        let path = self.index_path(key);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match serde_json::from_str(&text) {
            Ok(entry) => Ok(Some(entry)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt cache index entry");
                Ok(None)
            }
        }
    }

    pub fn record_commit(&self, key: &Sha256Hex, entry: &CommitIndexEntry) -> Result<()> {
        let path = self.index_path(key);
        let text = serde_json::to_string_pretty(entry).context("serialising a cache entry")?;
        atomic_write(&path, text + "\n")
    }

    /// Keep the `keep` most recently used rootfs trees (by the mtime of their entry, which
    /// [`Cache::touch`] bumps on use) and always `current`; delete the rest.
    pub fn gc_rootfs(&self, keep: usize, current: &Sha256Hex) -> Result<Vec<PathBuf>> {
        gc_by_mtime(&self.root.join("rootfs"), keep, &self.rootfs_entry(current))
    }

    /// Mark a cache entry as used now (for [`Cache::gc_rootfs`]).
    pub fn touch(&self, path: &Path) -> Result<()> {
        let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.set_modified(SystemTime::now())
            .with_context(|| format!("updating the mtime of {}", path.display()))
    }

    fn clean_tmp(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
            let e = e.with_context(|| format!("listing {}", tmp.display()))?;
            // Only entries of builds that are gone: a concurrent build's tree carries its
            // pid in a lock file we cannot see here, so age decides (an hour untouched).
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if stale {
                remove_tree(&e.path())?;
            }
        }
        Ok(())
    }
}

/// In `dir`, keep `current` and the `keep - 1` newest other entries (by mtime); names
/// starting with `.` (in-progress atomic writes) are left alone.
fn gc_by_mtime(dir: &Path, keep: usize, current: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<(SystemTime, PathBuf)> = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let mtime = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        entries.push((mtime, e.path()));
    }
    // Newest first; ties broken by name for a stable order.
    entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut others_kept = 0usize;
    let mut removed = Vec::new();
    for (_, path) in entries {
        if path == current {
            continue;
        }
        if others_kept < keep.saturating_sub(1) {
            others_kept += 1;
            continue;
        }
        if path.is_dir() {
            remove_tree(&path)?;
        } else {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        removed.push(path);
    }
    Ok(removed)
}

/// Remove a directory tree that may contain read-only directories (rootfs trees do).
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Sha256Hex {
        Sha256Hex::of_bytes(s)
    }

    #[test]
    fn index_round_trip_and_corrupt_entry_is_a_miss() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        assert_eq!(c.lookup_commit(&key("a")).unwrap(), None);
        let e = CommitIndexEntry {
            commit: "c".repeat(64),
            root_contents: "d".repeat(64),
            root_metadata: "e".repeat(64),
            ostree_ref: "nodeimg/x/x86_64".into(),
        };
        c.record_commit(&key("a"), &e).unwrap();
        assert_eq!(c.lookup_commit(&key("a")).unwrap(), Some(e));
        fs::write(c.index_path(&key("b")), "{not json").unwrap();
        assert_eq!(c.lookup_commit(&key("b")).unwrap(), None);
    }

    #[test]
    fn gc_keeps_current_and_newest() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let keys: Vec<_> = ["k1", "k2", "k3", "k4"].iter().map(|k| key(k)).collect();
        for (i, k) in keys.iter().enumerate() {
            let p = c.rootfs_entry(k);
            fs::create_dir_all(p.join("tree")).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            fs::File::open(&p).unwrap().set_modified(t).unwrap();
        }
        // Current is the oldest one: it stays, plus the newest other (k4).
        let removed = c.gc_rootfs(2, &keys[0]).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(c.rootfs_entry(&keys[0]).exists());
        assert!(c.rootfs_entry(&keys[3]).exists());
        assert!(!c.rootfs_entry(&keys[1]).exists());
        assert!(!c.rootfs_entry(&keys[2]).exists());
    }

    #[test]
    fn gc_disks_keeps_current_and_newest_and_skips_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let keys: Vec<_> = ["d1", "d2", "d3"].iter().map(|k| key(k)).collect();
        for (i, k) in keys.iter().enumerate() {
            let p = c.disk_image(k);
            fs::write(&p, b"raw").unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let tmp = d.path().join("disk/.tmp-in-progress");
        fs::write(&tmp, b"partial").unwrap();
        let removed = c.gc_disks(2, &keys[0]).unwrap();
        assert_eq!(removed, vec![c.disk_image(&keys[1])]);
        assert!(c.disk_image(&keys[0]).exists() && c.disk_image(&keys[2]).exists());
        assert!(tmp.exists());
    }

    #[test]
    fn default_dir_follows_xdg() {
        // Only checks the shape; the environment is shared with other tests, so do not set it.
        let d = Cache::default_dir().unwrap();
        assert!(d.ends_with("nodeimg"));
    }
}

//! The one way final outputs reach the filesystem: written to a temporary sibling, synced,
//! then renamed over the target. A crash or error at any point leaves either the old file or
//! the new one, never a half-written one.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Write `contents` to `path` atomically with the default mode 0644.
pub fn atomic_write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<()> {
    atomic_write_mode(path, contents, 0o644)
}

/// Write `contents` to `path` atomically with `mode` (set before any byte is written, so a
/// 0600 file is never readable by others, not even while it is being written).
pub fn atomic_write_mode(
    path: impl AsRef<Path>,
    contents: impl AsRef<[u8]>,
    mode: u32,
) -> Result<()> {
    let path = path.as_ref();
    let mut f = AtomicFile::create_mode(path, mode)?;
    f.write_all(contents.as_ref())
        .with_context(|| format!("writing {}", path.display()))?;
    f.commit()
}

/// A file that appears at its final path only on [`AtomicFile::commit`]. Dropping it without
/// committing removes the temporary file. For large outputs (disk images) written as a stream.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: Option<tempfile::NamedTempFile>,
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        Self::create_mode(target, 0o644)
    }

    pub fn create_mode(target: impl AsRef<Path>, mode: u32) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let (dir, prefix) = sibling_of(&target)?;
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(mode))
            .tempfile_in(&dir)
            .with_context(|| format!("creating a temporary file next to {}", target.display()))?;
        // tempfile applies the umask; enforce the exact mode we were asked for.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode of {}", tmp.path().display()))?;
        Ok(AtomicFile {
            target,
            tmp: Some(tmp),
        })
    }

    /// The open temporary file, for seeking or `set_len` (sparse outputs).
    pub fn file(&mut self) -> &mut File {
        self.tmp
            .as_mut()
            .map(|t| t.as_file_mut())
            .expect("AtomicFile used after commit")
    }

    /// The temporary path (for tools that write into the file by name before commit).
    pub fn temp_path(&self) -> &Path {
        self.tmp
            .as_ref()
            .map(|t| t.path())
            .expect("AtomicFile used after commit")
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Sync and rename into place, then sync the directory so the rename is durable.
    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("AtomicFile committed twice");
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", tmp.path().display()))?;
        tmp.persist(&self.target)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming into place: {}", self.target.display()))?;
        sync_dir(&parent_dir(&self.target));
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file().flush()
    }
}

/// A directory built under a temporary name next to its target and renamed into place on
/// [`AtomicDir::commit`]; an existing target is replaced only then. Dropped uncommitted, the
/// temporary directory is removed: a failed build leaves no partial output directory.
#[derive(Debug)]
pub struct AtomicDir {
    target: PathBuf,
    tmp: Option<tempfile::TempDir>,
}

impl AtomicDir {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let (parent, prefix) = sibling_of(&target)?;
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .tempdir_in(&parent)
            .with_context(|| {
                format!(
                    "creating a temporary directory next to {}",
                    target.display()
                )
            })?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting mode of {}", tmp.path().display()))?;
        Ok(AtomicDir {
            target,
            tmp: Some(tmp),
        })
    }

    /// Where to write the contents before commit.
    pub fn path(&self) -> &Path {
        self.tmp
            .as_ref()
            .map(|t| t.path())
            .expect("AtomicDir used after commit")
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Move into place. An existing target is first renamed aside and deleted after the swap,
    /// so there is no moment without a complete directory at `target` except between two
    /// renames.
    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("AtomicDir committed twice").keep();
        let old = if self.target.exists() {
            let aside = self
                .target
                .with_extension(format!("old-{}", std::process::id()));
            fs::rename(&self.target, &aside)
                .with_context(|| format!("moving aside {}", self.target.display()))?;
            Some(aside)
        } else {
            None
        };
        if let Err(e) = fs::rename(&tmp, &self.target) {
            if let Some(old) = &old {
                let _ = fs::rename(old, &self.target);
            }
            let _ = fs::remove_dir_all(&tmp);
            return Err(e)
                .with_context(|| format!("renaming into place: {}", self.target.display()));
        }
        if let Some(old) = old {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        sync_dir(&parent_dir(&self.target));
        Ok(())
    }
}

/// The directory a target lives in (created if missing) and the temp-name prefix used for
/// siblings of the target: `.<name>.`, hidden so a listing never shows half-written output.
fn sibling_of(target: &Path) -> Result<(PathBuf, String)> {
    let dir = parent_dir(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating directory {}", dir.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((dir, format!(".{name}.")))
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) {
    // Best effort: some filesystems refuse fsync on directories; the data itself is synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        atomic_write(&p, "one").unwrap();
        atomic_write(&p, "two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn mode_is_exact() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret.yaml");
        atomic_write_mode(&p, "x", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("image.raw");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!p.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn atomic_dir_replaces_whole() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("k8s-node-1.0.0");
        let a = AtomicDir::create(&target).unwrap();
        fs::write(a.path().join("old-only"), "1").unwrap();
        a.commit().unwrap();
        let b = AtomicDir::create(&target).unwrap();
        fs::write(b.path().join("new"), "2").unwrap();
        b.commit().unwrap();
        assert!(target.join("new").exists());
        assert!(!target.join("old-only").exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        {
            let c = AtomicDir::create(&target).unwrap();
            fs::write(c.path().join("abandoned"), "3").unwrap();
        }
        assert!(target.join("new").exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}

//! A directory as a secret store: one file per key (mode 0600, directories 0700).
//!
//! `create` writes the value to a temporary file in the key's directory and then moves it to
//! the key with `renameat2(RENAME_NOREPLACE)` (or `link()` where that flag is unsupported):
//! the key appears complete or not at all, and when several nodes or threads race, the kernel
//! lets exactly one of them claim the name. The losers' temporary files are removed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nodeimg_common::fsutil::atomic_write_mode;
use nodeimg_common::Secret;

use super::{check_key, CreateOutcome, SecretStore, StoreError};

#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        FileStore {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(self, key)?;
        Ok(self.dir.join(key))
    }

    fn other(&self, detail: String) -> StoreError {
        StoreError::Other {
            store: self.describe(),
            detail,
        }
    }

    fn ensure_parent(&self, path: &Path) -> Result<PathBuf, StoreError> {
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| self.other(format!("creating directory {}: {e}", parent.display())))?;
        Ok(parent)
    }
}

impl SecretStore for FileStore {
    fn describe(&self) -> String {
        format!("file store {}", self.dir.display())
    }

    fn get(&self, key: &str) -> Result<Secret, StoreError> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Secret::new)
                .map_err(|_| self.other(format!("{} is not UTF-8 text", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound {
                store: self.describe(),
                key: key.to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(StoreError::Denied {
                store: self.describe(),
                key: key.to_owned(),
                detail: format!("reading {}: {e}", path.display()),
            }),
            Err(e) => Err(self.other(format!("reading {}: {e}", path.display()))),
        }
    }

    fn create(&self, key: &str, value: &Secret) -> Result<CreateOutcome, StoreError> {
        let path = self.path(key)?;
        let parent = self.ensure_parent(&path)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".nodeboot-create.")
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&parent)
            .map_err(|e| {
                self.other(format!(
                    "creating a temporary file in {}: {e}",
                    parent.display()
                ))
            })?;
        // The umask may have widened nothing but could have narrowed; make the mode exact.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))
            .map_err(|e| self.other(format!("setting mode of {}: {e}", tmp.path().display())))?;
        tmp.write_all(value.expose().as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| self.other(format!("writing {}: {e}", tmp.path().display())))?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => {
                if let Ok(d) = fs::File::open(&parent) {
                    let _ = d.sync_all();
                }
                Ok(CreateOutcome::Created)
            }
            // The loser's temporary file is deleted when `e.file` drops.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(CreateOutcome::AlreadyExists)
            }
            Err(e) => Err(self.other(format!("creating {}: {}", path.display(), e.error))),
        }
    }

    fn update(&self, key: &str, value: &Secret) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if !path.exists() {
            return Err(StoreError::NotFound {
                store: self.describe(),
                key: key.to_owned(),
            });
        }
        atomic_write_mode(&path, value.expose(), 0o600)
            .map_err(|e| self.other(format!("replacing {}: {e:#}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn create_get_update() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(d.path());
        assert!(matches!(s.get("c/join"), Err(StoreError::NotFound { .. })));
        assert!(matches!(
            s.update("c/join", &Secret::new("x")),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(
            s.create("c/join", &Secret::new("one")).unwrap(),
            CreateOutcome::Created
        );
        assert_eq!(
            s.create("c/join", &Secret::new("two")).unwrap(),
            CreateOutcome::AlreadyExists
        );
        assert_eq!(s.get("c/join").unwrap().expose(), "one");
        s.update("c/join", &Secret::new("three")).unwrap();
        assert_eq!(s.get("c/join").unwrap().expose(), "three");
        let meta = fs::metadata(d.path().join("c/join")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(d.path().join("c")).unwrap().mode() & 0o777,
            0o700
        );
        let leftovers: Vec<_> = fs::read_dir(d.path().join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("join")]);
    }

    #[test]
    fn bad_key_is_refused_before_touching_disk() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(d.path().join("store"));
        let err = s.create("../escape", &Secret::new("v")).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        assert!(!d.path().join("escape").exists());
        assert!(!d.path().join("store").exists());
    }
}

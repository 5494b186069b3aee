//! The content-addressed artifact cache: `<cache_dir>/artifacts/sha256/<hex>`. An entry is
//! only ever created by renaming a fully written and verified temporary file from the same
//! directory, so its name is a promise about its content; `verified` still re-hashes it once
//! per run because a cache directory outlives any promise (disk errors, hand edits).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;
use sha2::{Digest, Sha256};

/// Cache entries are read-only: nothing is meant to modify them in place.
const ENTRY_MODE: u32 = 0o444;
const BUF_SIZE: usize = 1 << 20;

#[derive(Debug)]
pub(super) struct Store {
    dir: PathBuf,
}

/// A verified entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub path: PathBuf,
    pub size: u64,
}

/// Why writing a new entry failed. The fetch loop retries `Read` (a dropped connection) and
/// moves on to the next source after `Mismatch`.
#[derive(Debug)]
pub(super) enum IngestError {
    Read(io::Error),
    Write(anyhow::Error),
    Mismatch { actual: Sha256Hex, size: u64 },
}

impl Store {
    pub(super) fn new(cache_dir: &Path) -> Self {
        Store {
            dir: cache_dir.join("artifacts").join("sha256"),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn entry_path(&self, sha256: &Sha256Hex) -> PathBuf {
        self.dir.join(sha256.as_str())
    }

    /// The entry for `sha256` if present and its content hashes to its name. A corrupted
    /// entry is removed (and reported) so that the caller fetches it again.
    pub(super) fn verified(&self, sha256: &Sha256Hex) -> Result<Option<Entry>> {
        let path = self.entry_path(sha256);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        };
        let actual = if meta.is_file() {
            Some(
                Sha256Hex::of_file(&path)
                    .with_context(|| format!("verifying cache entry {}", path.display()))?,
            )
        } else {
            None
        };
        if actual.as_ref() == Some(sha256) {
            return Ok(Some(Entry {
                path,
                size: meta.len(),
            }));
        }
        tracing::warn!(
            path = %path.display(),
            expected = %sha256,
            actual = actual.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "not a regular file".into()),
            "corrupted artifact cache entry; removing it and fetching again"
        );
        remove_entry(&path, meta.is_dir())?;
        Ok(None)
    }

    /// Stream `reader` into a new entry, hashing as it goes; the entry appears only when the
    /// digest matches. `progress` is called with the running byte count.
    pub(super) fn ingest(
        &self,
        sha256: &Sha256Hex,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Entry, IngestError> {
        let path = self.entry_path(sha256);
        let mut out = AtomicFile::create_mode(&path, ENTRY_MODE).map_err(IngestError::Write)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF_SIZE];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(IngestError::Read(e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", out.temp_path().display()))
                .map_err(IngestError::Write)?;
            size += n as u64;
            progress(size);
        }
        let actual = Sha256Hex::from_hasher(hasher);
        if &actual != sha256 {
            // Dropping `out` removes the temporary file: a mismatch keeps nothing.
            return Err(IngestError::Mismatch { actual, size });
        }
        out.commit().map_err(IngestError::Write)?;
        Ok(Entry { path, size })
    }
}

fn remove_entry(path: &Path, is_dir: bool) -> Result<()> {
    let r = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.with_context(|| format!("removing corrupted cache entry {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_then_verify_then_detect_corruption() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let data = b"hello artifact".to_vec();
        let sha = Sha256Hex::of_bytes(&data);
        let mut seen = 0;
        let e = store
            .ingest(&sha, &mut data.as_slice(), &mut |n| seen = n)
            .unwrap();
        assert_eq!(seen, data.len() as u64);
        assert_eq!(e.path, d.path().join("artifacts/sha256").join(sha.as_str()));
        assert_eq!(fs::read(&e.path).unwrap(), data);
        assert!(store.verified(&sha).unwrap().is_some());

        // Same length, different bytes: caught by the hash, not by the size.
        fs::remove_file(&e.path).unwrap();
        fs::write(&e.path, b"hello artifacT").unwrap();
        assert!(store.verified(&sha).unwrap().is_none());
        assert!(!e.path.exists(), "corrupted entry removed");
    }

    #[test]
    fn mismatch_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let sha = Sha256Hex::of_bytes(b"expected");
        let err = store
            .ingest(&sha, &mut &b"something else"[..], &mut |_| {})
            .unwrap_err();
        match err {
            IngestError::Mismatch { actual, size } => {
                assert_eq!(actual, Sha256Hex::of_bytes(b"something else"));
                assert_eq!(size, 14);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 0);
    }
}

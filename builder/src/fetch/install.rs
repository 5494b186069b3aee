//! Placing a fetched artifact into a root filesystem tree: a plain file copied to `dest` with
//! its mode, or a `tar`/`tar.gz` archive unpacked into the `dest` directory.
//!
//! Archives come from the internet, so nothing in one may write outside `dest`: absolute
//! entry paths, `..` components, hard links to outside, and writes through a symlink (one
//! from the archive or one already in the tree) are refused. The whole archive is checked
//! before the first byte is written, so a refused archive leaves the tree untouched.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use nodeimg_common::fsutil::AtomicFile;
use tar::EntryType;

use super::Fetched;
use crate::recipe::schema::{ArchiveKind, Artifact};

/// Install `fetched` (the verified cache file of `artifact`) under `root` at `artifact.dest`.
pub fn install_artifact(fetched: &Fetched, artifact: &Artifact, root: &Path) -> Result<()> {
    let name = artifact.name.as_str();
    ensure!(
        fetched.sha256 == artifact.sha256,
        "artifact `{name}`: the fetched file has sha256 {}, the recipe says {}",
        fetched.sha256,
        artifact.sha256
    );
    let rel = Path::new(artifact.dest.as_str().trim_start_matches('/'));
    let target = root.join(rel);
    match artifact.unpack {
        None => {
            ensure!(
                artifact.strip_components == 0,
                "artifact `{name}`: strip-components applies only to unpacked archives (set `unpack`)"
            );
            ensure!(
                rel.file_name().is_some(),
                "artifact `{name}`: dest `{}` is not a file path",
                artifact.dest
            );
            let parent = rel.parent().unwrap_or(Path::new(""));
            ensure_within(root, parent)
                .with_context(|| format!("artifact `{name}`: dest {}", artifact.dest))?;
            copy_file(&fetched.path, &target, artifact.mode.0)
                .with_context(|| format!("installing artifact `{name}` at {}", artifact.dest))
        }
        Some(kind) => {
            ensure_within(root, rel)
                .with_context(|| format!("artifact `{name}`: dest {}", artifact.dest))?;
            let archive = Archive {
                path: &fetched.path,
                kind,
                strip: artifact.strip_components as usize,
            };
            let plan = archive.plan(&target).with_context(|| {
                format!(
                    "artifact `{name}`: refusing to unpack {} into {}",
                    fetched.path.display(),
                    artifact.dest
                )
            })?;
            archive.extract(&target, &plan).with_context(|| {
                format!(
                    "unpacking artifact `{name}` ({}) into {}",
                    fetched.path.display(),
                    artifact.dest
                )
            })
        }
    }
}

fn copy_file(src: &Path, target: &Path, mode: u32) -> Result<()> {
    let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut out = AtomicFile::create_mode(target, mode)?;
    io::copy(&mut input, &mut out)
        .with_context(|| format!("copying {} to {}", src.display(), target.display()))?;
    out.commit()
}

/// Check that `root/rel` stays inside `root` when followed: every component that already
/// exists and is a symlink must resolve to a place under `root`. (Relative links such as a
/// merged-/usr `bin -> usr/bin` do; an absolute link would point into the build host.)
fn ensure_within(root: &Path, rel: &Path) -> Result<()> {
    let root_real = root
        .canonicalize()
        .with_context(|| format!("resolving root {}", root.display()))?;
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(n) => cur.push(n),
            Component::CurDir => continue,
            other => bail!("unexpected path component {other:?}"),
        }
        let meta = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", cur.display())),
        };
        if meta.file_type().is_symlink() {
            let real = cur
                .canonicalize()
                .with_context(|| format!("{} is a symlink that does not resolve", cur.display()))?;
            ensure!(
                real.starts_with(&root_real),
                "{} is a symlink to {}, outside the root {}",
                cur.display(),
                real.display(),
                root.display()
            );
        }
    }
    Ok(())
}

struct Archive<'a> {
    path: &'a Path,
    kind: ArchiveKind,
    strip: usize,
}

/// What to do with one archive entry, by position in the archive.
#[derive(Debug)]
enum Action {
    /// Stripped away entirely (a leading directory), or metadata only.
    Skip,
    /// Regular file, directory or symlink: unpacked by the `tar` crate at `dest/rel`.
    Unpack(PathBuf),
    /// Hard link at `dest/rel` to the earlier entry at `dest/target`.
    HardLink { rel: PathBuf, target: PathBuf },
}

impl Archive<'_> {
    fn open(&self) -> Result<tar::Archive<Box<dyn Read + '_>>> {
        let f =
            File::open(self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let reader: Box<dyn Read> = match self.kind {
            ArchiveKind::Tar => Box::new(io::BufReader::new(f)),
            ArchiveKind::TarGz => {
                Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f)))
            }
        };
        Ok(tar::Archive::new(reader))
    }

    /// Read the whole archive and decide, for every entry, where it goes, refusing anything
    /// that would land outside `dest`.
    fn plan(&self, dest: &Path) -> Result<Vec<Action>> {
        let mut archive = self.open()?;
        let mut plan = Vec::new();
        let mut symlinks: HashSet<PathBuf> = HashSet::new();
        let mut files: HashSet<PathBuf> = HashSet::new();
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for entry in archive.entries().context("reading the archive")? {
            let entry = entry.context("reading an archive entry")?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let Some(rel) = self.strip_path(&raw)? else {
                plan.push(Action::Skip);
                continue;
            };
            if let Some(link) = ancestor_in(&rel, &symlinks) {
                bail!(
                    "entry `{raw}` would be written through the symlink `{}` from the same archive",
                    link.display()
                );
            }
            check_existing(dest, &rel, kind == EntryType::Directory)
                .with_context(|| format!("entry `{raw}`"))?;
            let action = match kind {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    files.insert(rel.clone());
                    symlinks.remove(&rel);
                    Action::Unpack(rel)
                }
                EntryType::Directory => {
                    ensure!(
                        !symlinks.contains(&rel),
                        "directory entry `{raw}` replaces a symlink from the same archive"
                    );
                    dirs.insert(rel.clone());
                    Action::Unpack(rel)
                }
                EntryType::Symlink => {
                    ensure!(
                        !dirs.contains(&rel),
                        "symlink entry `{raw}` replaces a directory from the same archive"
                    );
                    files.remove(&rel);
                    symlinks.insert(rel.clone());
                    Action::Unpack(rel)
                }
                EntryType::Link => {
                    let link = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .with_context(|| format!("hard link `{raw}` has no target"))?;
                    let target = self
                        .strip_path(&link)
                        .with_context(|| format!("hard link `{raw}` -> `{link}`"))?
                        .with_context(|| {
                            format!("hard link `{raw}` points at `{link}`, which is stripped away")
                        })?;
                    ensure!(
                        files.contains(&target),
                        "hard link `{raw}` points at `{link}`, which is not an earlier regular file \
                         in the archive"
                    );
                    files.insert(rel.clone());
                    Action::HardLink { rel, target }
                }
                EntryType::XGlobalHeader | EntryType::XHeader => Action::Skip,
                other => bail!("entry `{raw}` has unsupported type {other:?} (devices and fifos are not installed from artifacts)"),
            };
            plan.push(action);
        }
        Ok(plan)
    }

    /// The entry path with `.` components dropped and `strip` leading components removed;
    /// `None` when nothing is left. Absolute paths and `..` are errors.
    fn strip_path(&self, raw: &str) -> Result<Option<PathBuf>> {
        let mut parts = Vec::new();
        for c in Path::new(raw).components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    bail!("entry `{raw}` has an absolute path")
                }
                Component::ParentDir => bail!("entry `{raw}` contains `..`"),
            }
        }
        if parts.len() <= self.strip {
            return Ok(None);
        }
        Ok(Some(parts[self.strip..].iter().collect()))
    }

    fn extract(&self, dest: &Path, plan: &[Action]) -> Result<()> {
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut archive = self.open()?;
        for (i, entry) in archive
            .entries()
            .context("reading the archive")?
            .enumerate()
        {
            let mut entry = entry.context("reading an archive entry")?;
            let action = plan
                .get(i)
                .context("the archive changed between checking and unpacking")?;
            match action {
                Action::Skip => {}
                Action::Unpack(rel) => {
                    let dst = dest.join(rel);
                    // The tree may have changed by earlier entries of this archive (their
                    // symlinks were checked in `plan`); check the real state once more.
                    check_existing(dest, rel, entry.header().entry_type().is_dir())?;
                    create_parent(&dst)?;
                    entry
                        .unpack(&dst)
                        .with_context(|| format!("unpacking {}", dst.display()))?;
                }
                Action::HardLink { rel, target } => {
                    let dst = dest.join(rel);
                    check_existing(dest, rel, false)?;
                    create_parent(&dst)?;
                    if fs::symlink_metadata(&dst).is_ok() {
                        fs::remove_file(&dst)
                            .with_context(|| format!("replacing {}", dst.display()))?;
                    }
                    let src = dest.join(target);
                    fs::hard_link(&src, &dst).with_context(|| {
                        format!("hard linking {} to {}", dst.display(), src.display())
                    })?;
                }
            }
        }
        Ok(())
    }
}

fn create_parent(dst: &Path) -> Result<()> {
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    Ok(())
}

/// The first proper ancestor of `rel` that is in `links`.
fn ancestor_in<'a>(rel: &Path, links: &'a HashSet<PathBuf>) -> Option<&'a PathBuf> {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| links.get(a))
}

/// No existing proper ancestor of `dest/rel` (below `dest`) may be a symlink. A symlink at
/// `dest/rel` itself may be replaced by a file or link (the `tar` crate unlinks before it
/// creates), never by a directory: that would mean following it.
fn check_existing(dest: &Path, rel: &Path, is_dir: bool) -> Result<()> {
    let mut cur = dest.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        let last = i + 1 == n;
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() && (!last || is_dir) => {
                bail!(
                    "{} is a symlink; refusing to write through it",
                    cur.display()
                )
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", cur.display())),
        }
    }
    Ok(())
}

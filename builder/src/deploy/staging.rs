//! The temporary directory a staged sysroot lives in, and its removal.
//!
//! libostree sets the immutable attribute (`chattr +i`) on every deployment root
//! (`ostree/deploy/<os>/deploy/<csum>.<serial>`), so a plain recursive delete fails with
//! "Operation not permitted". The guard clears the attribute first, and does so on every
//! exit path (success after the disk stage is done, or a failed deploy half way).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimg_common::Cmd;

/// Owns `<workdir>/.deploy-XXXXXX/`; removes it on drop unless [`StagingDir::keep`] was called.
#[derive(Debug)]
pub struct StagingDir {
    path: Option<PathBuf>,
}

impl StagingDir {
    pub fn create(workdir: &Path) -> Result<Self> {
        fs::create_dir_all(workdir)
            .with_context(|| format!("creating work directory {}", workdir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".deploy-")
            .tempdir_in(workdir)
            .with_context(|| format!("creating a staging directory in {}", workdir.display()))?;
        Ok(StagingDir {
            path: Some(tmp.keep()),
        })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("StagingDir used after keep")
    }

    /// Leave the directory on disk (debugging); returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().expect("StagingDir kept twice")
    }

    /// Remove the directory now, reporting failures (drop only logs them).
    pub fn remove(mut self) -> Result<()> {
        match self.path.take() {
            Some(p) => remove_staged_tree(&p),
            None => Ok(()),
        }
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = remove_staged_tree(&p) {
                tracing::warn!(path = %p.display(), "could not remove staged sysroot: {e:#}");
            }
        }
    }
}

/// Deployment roots below `sysroot` (depth 3 under `ostree/deploy`), the directories libostree
/// marks immutable.
pub fn deployment_roots(sysroot: &Path) -> Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    let deploy = sysroot.join("ostree/deploy");
    if !deploy.is_dir() {
        return Ok(roots);
    }
    for os in read_dirs(&deploy)? {
        let dir = os.join("deploy");
        if !dir.is_dir() {
            continue;
        }
        roots.extend(read_dirs(&dir)?);
    }
    roots.sort();
    Ok(roots)
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let item = item.with_context(|| format!("listing {}", dir.display()))?;
        let ft = item
            .file_type()
            .with_context(|| format!("inspecting {}", item.path().display()))?;
        if ft.is_dir() {
            out.push(item.path());
        }
    }
    Ok(out)
}

/// `chattr -i` every deployment root under any sysroot found in `dir`, then delete `dir`.
fn remove_staged_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut immutable = Vec::new();
    // The sysroot sits at `<dir>/sysroot`; look there and at `dir` itself so a guard over a
    // bare sysroot works too.
    for candidate in [dir.join("sysroot"), dir.to_path_buf()] {
        immutable.extend(deployment_roots(&candidate)?);
    }
    if !immutable.is_empty() {
        Cmd::new("chattr")
            .arg("-i")
            .args(&immutable)
            .run()
            .with_context(|| format!("clearing the immutable attribute in {}", dir.display()))?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Move the contents of `sysroot/boot` to `boot_tree` (a new directory on the same file
/// system: one rename, no copy) and leave an empty `boot/` mount point in the sysroot, since
/// `mke2fs -d` has no exclude option and the root file system must not carry `/boot` content.
pub fn split_boot(sysroot: &Path, boot_tree: &Path) -> Result<()> {
    let boot = sysroot.join("boot");
    let mode = fs::metadata(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .permissions();
    fs::rename(&boot, boot_tree)
        .with_context(|| format!("moving {} aside to {}", boot.display(), boot_tree.display()))?;
    fs::create_dir(&boot)
        .with_context(|| format!("creating the empty mount point {}", boot.display()))?;
    fs::set_permissions(&boot, mode)
        .with_context(|| format!("setting mode of {}", boot.display()))?;
    Ok(())
}

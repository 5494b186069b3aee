//! Stage `ostreeify`: a customized rootfs rearranged into the layout libostree deploys
//! (boot-pipeline reference §4), with plain file operations:
//!
//! 1. boot hooks injected while `/etc` is still `/etc` ([`crate::deploy::install_boot_hooks`]);
//! 2. kernel to `/usr/lib/modules/$KVER/vmlinuz` next to the initramfs, `/boot` emptied;
//! 3. the dpkg database kept read-only under `/usr/lib/sysimage/dpkg`;
//! 4. empty `/etc/machine-id` (first-boot semantics), `/etc` → `/usr/etc`;
//! 5. `/home`, `/root`, `/opt`, `/srv`, `/mnt`, `/usr/local` moved under `/var`;
//! 6. `/var` turned into `tmpfiles.d` lines, its files into `/usr/share/factory/var`, then
//!    emptied: `/var` is per-node state that libostree never touches after the first deploy;
//! 7. top-level symlinks into `/var` (Fedora CoreOS layout), `/sysroot`, `/efi`, `/ostree`;
//! 8. `/tmp` 1777 and empty `/proc`, `/sys`, `/dev`, `/run`;
//! 9. `/usr/lib/nodeimg/version`, so a booted node (and tests) can tell what it runs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::fsutil::atomic_write;
use serde::{Deserialize, Serialize};

use super::kernel_version;
use super::node_users::read_accounts;

/// Where the dpkg database is kept in the committed tree.
pub const DPKG_DB: &str = "usr/lib/sysimage/dpkg";
/// The generated tmpfiles.d file.
pub const TMPFILES_CONF: &str = "usr/lib/tmpfiles.d/nodeimg.conf";
/// Where `/var` files are kept and copied from at first boot.
pub const FACTORY_VAR: &str = "usr/share/factory/var";
/// The version file.
pub const VERSION_FILE: &str = "usr/lib/nodeimg/version";

/// Package-manager state under `/var` that has no place on a node (prefixes, as paths).
const SKIP_VAR: [&str; 7] = [
    "/var/cache/apt",
    "/var/lib/apt",
    "/var/log/apt",
    "/var/lib/dpkg",
    "/var/cache/debconf",
    "/var/lib/systemd/deb-systemd-",
    "/var/cache/ldconfig",
];

/// Top-level directories that become symlinks: (directory, link target, where the content
/// goes, mode of a created target).
const TOPLEVEL: [(&str, &str, &str, u32); 7] = [
    ("home", "var/home", "var/home", 0o755),
    ("root", "var/roothome", "var/roothome", 0o700),
    ("opt", "var/opt", "var/opt", 0o755),
    ("srv", "var/srv", "var/srv", 0o755),
    ("mnt", "var/mnt", "var/mnt", 0o755),
    ("media", "run/media", "", 0o755),
    ("usr/local", "../var/usrlocal", "var/usrlocal", 0o755),
];

/// Contents of `/usr/lib/nodeimg/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VersionInfo {
    pub image: String,
    pub version: String,
    pub recipe_digest: String,
}

/// What ostreeify did, for the manifest and progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kernel_version: String,
    pub tmpfiles_lines: usize,
    pub factory_files: usize,
}

/// Rearrange `tree` in place.
pub fn ostreeify(tree: &Path, version: &VersionInfo) -> Result<Report> {
    crate::deploy::install_boot_hooks(tree).context("installing the boot hooks into the tree")?;
    let kver = move_kernel(tree)?;
    keep_dpkg_db(tree)?;
    move_etc(tree)?;
    let accounts = read_accounts(&tree.join("usr"))?;
    let names = IdNames::new(&accounts.passwd, &accounts.group);
    for (dir, _, dest, mode) in TOPLEVEL {
        relocate_toplevel(tree, dir, dest, mode)?;
    }
    let (lines, factory_files) = var_to_tmpfiles(tree, &names)?;
    let tmpfiles_lines = lines.len();
    write_tmpfiles(tree, &lines)?;
    toplevel_links(tree)?;
    api_dirs(tree)?;
    let json = serde_json::to_string_pretty(version).context("serialising the version file")?;
    atomic_write(tree.join(VERSION_FILE), json + "\n")?;
    Ok(Report {
        kernel_version: kver,
        tmpfiles_lines,
        factory_files,
    })
}

fn move_kernel(tree: &Path) -> Result<String> {
    if fs::symlink_metadata(tree.join("lib")).is_ok_and(|m| m.is_dir()) {
        bail!("the rootfs does not have a merged /usr (/lib is a directory, not a link to usr/lib); OSTree needs everything under /usr");
    }
    let kver = kernel_version(tree)?;
    let moddir = tree.join("usr/lib/modules").join(&kver);
    let initramfs = moddir.join("initramfs.img");
    if !initramfs.is_file() {
        bail!(
            "no initramfs at /usr/lib/modules/{kver}/initramfs.img: the rootfs stage builds it \
             with dracut (is dracut in [base] packages?)"
        );
    }
    let src = tree.join("boot").join(format!("vmlinuz-{kver}"));
    let dest = moddir.join("vmlinuz");
    if src.is_file() {
        fs::rename(&src, &dest)
            .with_context(|| format!("moving {} to {}", src.display(), dest.display()))?;
    } else if !dest.is_file() {
        bail!("no kernel image for {kver}: neither /boot/vmlinuz-{kver} nor /usr/lib/modules/{kver}/vmlinuz exists");
    }
    empty_dir(&tree.join("boot"))?;
    Ok(kver)
}

fn keep_dpkg_db(tree: &Path) -> Result<()> {
    let src = tree.join("var/lib/dpkg");
    if !src.is_dir() {
        return Ok(());
    }
    let dest = tree.join(DPKG_DB);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::rename(&src, &dest).with_context(|| format!("moving the dpkg database to /{DPKG_DB}"))
}

fn move_etc(tree: &Path) -> Result<()> {
    let etc = tree.join("etc");
    if !etc.is_dir() {
        bail!("the rootfs has no /etc");
    }
    // Empty, not absent: systemd treats an empty machine-id as "first boot" and makes one.
    atomic_write(etc.join("machine-id"), "")?;
    remove_if_exists(&tree.join("var/lib/dbus/machine-id"))?;
    let usr_etc = tree.join("usr/etc");
    if fs::symlink_metadata(&usr_etc).is_ok() {
        bail!("the rootfs already has /usr/etc; ostreeify moves /etc there and would merge two configurations");
    }
    fs::rename(&etc, &usr_etc).context("moving /etc to /usr/etc")
}

fn relocate_toplevel(tree: &Path, dir: &str, dest: &str, mode: u32) -> Result<()> {
    let src = tree.join(dir);
    let meta = fs::symlink_metadata(&src).ok();
    if dest.is_empty() {
        // /media lives on /run (tmpfs): anything in it would be lost anyway.
        if let Some(m) = meta {
            if m.is_dir()
                && fs::read_dir(&src)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            {
                tracing::warn!(dir = %src.display(), "dropping the content of /{dir}: it becomes a link to /run/media");
            }
            remove_any(&src)?;
        }
        return Ok(());
    }
    let target = tree.join(dest);
    match meta {
        Some(m) if m.is_dir() => {
            if fs::symlink_metadata(&target).is_ok() {
                move_children(&src, &target)?;
                fs::remove_dir(&src).with_context(|| format!("removing {}", src.display()))?;
            } else {
                fs::rename(&src, &target).with_context(|| format!("moving /{dir} to /{dest}"))?;
            }
        }
        Some(_) => remove_any(&src)?,
        None => {}
    }
    if fs::symlink_metadata(&target).is_err() {
        fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", target.display()))?;
    }
    Ok(())
}

fn move_children(src: &Path, dest: &Path) -> Result<()> {
    for e in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e.with_context(|| format!("listing {}", src.display()))?;
        let to = dest.join(e.file_name());
        if fs::symlink_metadata(&to).is_ok() {
            bail!(
                "cannot move {} to {}: it exists in both places",
                e.path().display(),
                to.display()
            );
        }
        fs::rename(e.path(), &to)
            .with_context(|| format!("moving {} to {}", e.path().display(), to.display()))?;
    }
    Ok(())
}

/// uid/gid to names, from the tree's own account databases (never the build host's).
#[derive(Debug)]
struct IdNames {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl IdNames {
    fn new(passwd: &str, group: &str) -> Self {
        let parse = |text: &str| {
            text.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
                })
                .collect::<HashMap<u32, String>>()
        };
        IdNames {
            users: parse(passwd),
            groups: parse(group),
        }
    }
    fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
    fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// A path or argument for tmpfiles.d: `%` starts a specifier, whitespace separates fields.
fn tmpfiles_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '\\' => out.push_str("\\\\"),
            c if c.is_whitespace() || c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Walk `var/` depth-first in name order: one tmpfiles.d line per entry, regular files moved
/// to the factory directory. Then `var/` is emptied. Returns the lines and the file count.
fn var_to_tmpfiles(tree: &Path, names: &IdNames) -> Result<(Vec<String>, usize)> {
    let var = tree.join("var");
    let factory = tree.join(FACTORY_VAR);
    let mut lines = Vec::new();
    let mut files = 0usize;
    if var.is_dir() {
        walk_var(&var, Path::new(""), &factory, names, &mut lines, &mut files)?;
        fs::remove_dir_all(&var).with_context(|| format!("emptying {}", var.display()))?;
    }
    fs::create_dir_all(&var).with_context(|| format!("creating {}", var.display()))?;
    fs::set_permissions(&var, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", var.display()))?;
    Ok((lines, files))
}

fn walk_var(
    var: &Path,
    rel: &Path,
    factory: &Path,
    names: &IdNames,
    lines: &mut Vec<String>,
    files: &mut usize,
) -> Result<()> {
    let dir = var.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    for name in entries {
        let r = rel.join(&name);
        let image_path = format!("/var/{}", r.display());
        if SKIP_VAR.iter().any(|p| image_path.starts_with(p)) {
            continue;
        }
        let full = var.join(&r);
        let m =
            fs::symlink_metadata(&full).with_context(|| format!("reading {}", full.display()))?;
        let p = tmpfiles_escape(&image_path);
        let ft = m.file_type();
        if ft.is_dir() {
            lines.push(format!(
                "d {p} {:04o} {} {} -",
                m.mode() & 0o7777,
                names.user(m.uid()),
                names.group(m.gid())
            ));
            walk_var(var, &r, factory, names, lines, files)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&full).with_context(|| format!("reading {}", full.display()))?;
            lines.push(format!(
                "L {p} - - - - {}",
                tmpfiles_escape(&target.to_string_lossy())
            ));
        } else if ft.is_file() {
            let dest = factory.join(&r);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            // A rename keeps owner, mode and xattrs; `C` copies them back at first boot.
            fs::rename(&full, &dest)
                .with_context(|| format!("moving {} to {}", full.display(), dest.display()))?;
            let src = format!("/{FACTORY_VAR}/{}", r.display());
            lines.push(format!("C {p} - - - - {}", tmpfiles_escape(&src)));
            *files += 1;
        } else {
            tracing::warn!(path = %image_path, "skipping a special file under /var (not representable in an OSTree commit)");
        }
    }
    Ok(())
}

fn write_tmpfiles(tree: &Path, lines: &[String]) -> Result<()> {
    let mut text = String::from(
        "# Written by nodeimg: the image's /var, recreated at boot. Directories and links are\n\
         # created if missing; files are copied from /usr/share/factory/var if missing.\n",
    );
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("d /run/media 0755 root root -\n");
    atomic_write(tree.join(TMPFILES_CONF), text)
}

fn toplevel_links(tree: &Path) -> Result<()> {
    for (dir, target, _, _) in TOPLEVEL {
        let link = tree.join(dir);
        if fs::symlink_metadata(&link).is_ok() {
            remove_any(&link)?;
        }
        symlink(target, &link).with_context(|| format!("creating the link /{dir} -> {target}"))?;
    }
    for d in ["sysroot", "efi"] {
        ensure_empty_dir(&tree.join(d), 0o755)?;
    }
    let ostree = tree.join("ostree");
    if fs::symlink_metadata(&ostree).is_ok() {
        remove_any(&ostree)?;
    }
    symlink("sysroot/ostree", &ostree).context("creating the link /ostree -> sysroot/ostree")
}

fn api_dirs(tree: &Path) -> Result<()> {
    ensure_empty_dir(&tree.join("tmp"), 0o1777)?;
    for d in ["proc", "sys", "dev", "run", "boot"] {
        ensure_empty_dir(&tree.join(d), 0o755)?;
    }
    Ok(())
}

fn ensure_empty_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => empty_dir(path)?,
        Ok(_) => remove_any(path)?,
        Err(_) => {}
    }
    if !path.is_dir() {
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn empty_dir(path: &Path) -> Result<()> {
    if !path.is_dir() {
        return Ok(());
    }
    for e in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let e = e.with_context(|| format!("listing {}", path.display()))?;
        remove_any(&e.path())?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    let m = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if m.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Paths of `tree` relative to it, sorted, with a type letter: for tests and debugging.
pub fn listing(tree: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = tree.join(&rel);
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let r = rel.join(e.file_name());
            let ft = e
                .file_type()
                .with_context(|| format!("reading {}", r.display()))?;
            if ft.is_symlink() {
                let t =
                    fs::read_link(e.path()).with_context(|| format!("reading {}", r.display()))?;
                out.push(format!("{} -> {}", r.display(), t.display()));
            } else if ft.is_dir() {
                out.push(format!("{}/", r.display()));
                stack.push(r);
            } else {
                out.push(r.display().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
#[path = "ostreeify_tests.rs"]
mod tests;

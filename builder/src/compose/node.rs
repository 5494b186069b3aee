//! Stage `customize`: the Kubernetes node configuration written into a work copy of the
//! rootfs, while `/etc` is still `/etc`:
//! rendered configuration ([`super::render_node_files`]: modules, sysctls, fstab without swap,
//! containerd with systemd cgroups, crictl, kubelet unit and kubeadm drop-in, journald,
//! timesyncd, SSH), users, the recipe's extra files, artifacts (kubelet, kubeadm, ...),
//! nodeboot, and unit enable/disable/mask links.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::fsutil::AtomicFile;

use super::node_render::{RenderContext, NODEBOOT_PATH};
use super::node_units::{self, unit_exists};
use super::node_users::{read_accounts, Accounts};
use super::{in_tree, render_node_files};
use crate::fetch::{install_artifact, Fetched};
use crate::recipe::schema::{Recipe, TimeSyncService};

/// What the customize stage needs besides the tree.
#[derive(Debug, Clone)]
pub struct NodeInput<'a> {
    pub recipe: &'a Recipe,
    /// Directory relative paths in the recipe are resolved against.
    pub recipe_dir: &'a Path,
    /// The recipe's artifacts, fetched and verified (any order).
    pub fetched: &'a [Fetched],
    /// The nodeboot binary to install when `[nodeboot] enabled`.
    pub nodeboot_binary: Option<&'a Path>,
}

/// The nodeboot binary a recipe asks for: `[nodeboot] binary`, else `nodeboot` next to the
/// running `nodeimg` (where `cargo build` and the packages put it).
pub fn nodeboot_binary(recipe: &Recipe, recipe_dir: &Path) -> Result<Option<PathBuf>> {
    if !recipe.nodeboot.enabled {
        return Ok(None);
    }
    let path = match &recipe.nodeboot.binary {
        Some(p) => recipe_dir.join(p),
        None => std::env::current_exe()
            .context("locating the running nodeimg binary")?
            .parent()
            .map(|d| d.join("nodeboot"))
            .context("the running nodeimg binary has no parent directory")?,
    };
    if !path.is_file() {
        bail!(
            "the nodeboot binary {} does not exist: build it (`cargo build -p nodeboot`), \
             set [nodeboot] binary, or set [nodeboot] enabled = false",
            path.display()
        );
    }
    Ok(Some(path))
}

/// Write `content` to `path` (absolute in the image) in `tree` with mode and owner, atomically.
pub fn write_tree_file(
    tree: &Path,
    path: &str,
    content: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<()> {
    let target = in_tree(tree, path);
    if let Ok(m) = fs::symlink_metadata(&target) {
        if m.file_type().is_symlink() || m.is_dir() {
            // Never write through a link that may point outside the tree.
            if m.is_dir() {
                bail!("{path} is a directory in the image");
            }
            fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))?;
        }
    }
    let mut f = AtomicFile::create_mode(&target, mode)?;
    f.write_all(content)
        .with_context(|| format!("writing {}", target.display()))?;
    chown(f.temp_path(), Some(owner.0), Some(owner.1))
        .with_context(|| format!("setting the owner of {}", target.display()))?;
    f.commit()
}

/// Apply the node configuration to `tree`.
pub fn customize(tree: &Path, input: &NodeInput<'_>) -> Result<()> {
    let recipe = input.recipe;
    remove_build_host_leftovers(tree, recipe)?;

    let kubelet_path = recipe
        .artifacts
        .iter()
        .find(|a| a.name.as_str() == "kubelet")
        .map(|a| a.dest.as_str().to_owned())
        .unwrap_or_else(|| "/usr/bin/kubelet".to_owned());
    let cni_bin_dir = recipe
        .artifacts
        .iter()
        .find(|a| a.name.as_str() == "cni-plugins")
        .map(|a| a.dest.as_str().to_owned())
        .unwrap_or_else(|| "/opt/cni/bin".to_owned());
    let ctx = RenderContext {
        kubelet_path,
        has_sshd: unit_exists(tree, "ssh.service"),
        cni_bin_dir,
    };
    for f in render_node_files(recipe, &ctx) {
        write_tree_file(tree, &f.path, f.content.as_bytes(), f.mode, (0, 0))
            .with_context(|| format!("writing {} into the image", f.path))?;
    }

    apply_users(tree, recipe)?;

    for a in &recipe.artifacts {
        let fetched = input
            .fetched
            .iter()
            .find(|f| f.name == a.name.as_str())
            .with_context(|| format!("artifact `{}` was not fetched", a.name))?;
        install_artifact(fetched, a, tree)?;
    }

    if let Some(bin) = input.nodeboot_binary {
        let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        write_tree_file(tree, NODEBOOT_PATH, &data, 0o755, (0, 0))?;
        if let Some(cfg) = &recipe.nodeboot.config {
            let p = input.recipe_dir.join(cfg);
            let data = fs::read(&p)
                .with_context(|| format!("reading the nodeboot config {}", p.display()))?;
            write_tree_file(tree, "/etc/nodeboot/config.toml", &data, 0o600, (0, 0))?;
        }
    }

    // Extra files last among the files, so the recipe can replace anything rendered above.
    let accounts = read_accounts(tree)?;
    for f in &recipe.os.files {
        let content = match (&f.content, &f.source) {
            (Some(c), None) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let p = input.recipe_dir.join(src);
                fs::read(&p)
                    .with_context(|| format!("reading {} for os.file {}", p.display(), f.path))?
            }
            _ => bail!(
                "os.file {}: set exactly one of `content` and `source`",
                f.path
            ),
        };
        let uid = Accounts::lookup(&accounts.passwd, &f.owner).with_context(|| {
            format!(
                "os.file {}: user `{}` does not exist in the image",
                f.path, f.owner
            )
        })?;
        let gid = Accounts::lookup(&accounts.group, &f.group).with_context(|| {
            format!(
                "os.file {}: group `{}` does not exist in the image",
                f.path, f.group
            )
        })?;
        write_tree_file(tree, f.path.as_str(), &content, f.mode.0, (uid, gid))
            .with_context(|| format!("writing os.file {}", f.path))?;
    }

    apply_units(tree, recipe, input.nodeboot_binary.is_some())
}

/// mmdebstrap copies the build host's hostname and resolver; package scripts generate SSH
/// host keys. None of that may reach every node of a fleet.
fn remove_build_host_leftovers(tree: &Path, recipe: &Recipe) -> Result<()> {
    let mut remove: Vec<PathBuf> = Vec::new();
    if recipe.os.hostname.is_none() {
        remove.push(tree.join("etc/hostname"));
    }
    let ssh = tree.join("etc/ssh");
    if let Ok(entries) = fs::read_dir(&ssh) {
        for e in entries {
            let e = e.with_context(|| format!("listing {}", ssh.display()))?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                remove.push(e.path());
            }
        }
    }
    for p in remove {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

fn apply_users(tree: &Path, recipe: &Recipe) -> Result<()> {
    let mut accounts = read_accounts(tree)?;
    if accounts.passwd.is_empty() {
        bail!("the image has no /etc/passwd");
    }
    accounts.set_root_password(recipe.os.root_password_hash.as_deref())?;
    let mut homes = Vec::new();
    for u in &recipe.os.users {
        homes.push(accounts.add_user(u)?);
    }
    for (name, text) in [
        ("passwd", &accounts.passwd),
        ("shadow", &accounts.shadow),
        ("group", &accounts.group),
        ("gshadow", &accounts.gshadow),
    ] {
        let p = tree.join("etc").join(name);
        // Keep each database's mode and group (shadow is root:shadow 0640 on Debian).
        let (mode, uid, gid) = match fs::metadata(&p) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                (m.mode() & 0o7777, m.uid(), m.gid())
            }
            Err(_) if name.ends_with("shadow") => (0o640, 0, 0),
            Err(_) => (0o644, 0, 0),
        };
        write_tree_file(
            tree,
            &format!("/etc/{name}"),
            text.as_bytes(),
            mode,
            (uid, gid),
        )?;
    }
    for h in homes {
        // Created under /home now; ostreeify moves it to /var/home and turns it into a
        // tmpfiles.d line, so the node creates it at first boot.
        let dir = in_tree(tree, &h.home);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
        chown(&dir, Some(h.uid), Some(h.gid))
            .with_context(|| format!("setting the owner of {}", dir.display()))?;
    }
    Ok(())
}

fn apply_units(tree: &Path, recipe: &Recipe, nodeboot: bool) -> Result<()> {
    let mut enable = vec!["kubelet.service".to_owned()];
    let mut mask = vec!["swap.target".to_owned()];
    if nodeboot {
        enable.push("nodeboot.service".to_owned());
        // The health gate after upgrades and rollbacks; it runs only while a change is in
        // flight (ConditionPathExists= in the unit).
        enable.push("nodeboot-health.service".to_owned());
    }
    match recipe.os.time_sync.service {
        TimeSyncService::SystemdTimesyncd => {
            if !unit_exists(tree, "systemd-timesyncd.service") {
                bail!(
                    "os.time-sync.service is systemd-timesyncd, but the image has no \
                     systemd-timesyncd.service: add the package `systemd-timesyncd` to [base] \
                     packages, or set os.time-sync.service = \"none\""
                );
            }
            enable.push("systemd-timesyncd.service".to_owned());
        }
        TimeSyncService::None => mask.push("systemd-timesyncd.service".to_owned()),
    }
    enable.extend(recipe.os.units.enable.iter().cloned());
    mask.extend(recipe.os.units.mask.iter().cloned());
    for u in &enable {
        node_units::enable(tree, u).with_context(|| format!("enabling {u}"))?;
    }
    for u in &recipe.os.units.disable {
        node_units::disable(tree, u).with_context(|| format!("disabling {u}"))?;
    }
    for u in &mask {
        node_units::mask(tree, u).with_context(|| format!("masking {u}"))?;
    }
    Ok(())
}

//! Stage `deploy`: a staged sysroot with the commit deployed and the boot menu generated.
//!
//! The sysroot is built in a temporary directory exactly as the disk will hold it
//! (`ostree admin init-fs --modern` layout, one deployment, BLS entries, GRUB menu), then its
//! `boot/` content is moved aside so the disk stage can put it on the separate ext4 `/boot`
//! partition and the rest on the root partition. No mounts, no loop devices.

pub mod bls;
pub mod grub_menu;
pub mod staging;
pub mod sysroot;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::fsutil::{atomic_write, atomic_write_mode};

use crate::progress;
use staging::StagingDir;

/// Kernel arguments every image gets first: the root file system is found by label (the disk
/// stage labels it `root`) and mounted read-write (the deployment's `/usr` is read-only
/// anyway; `/etc` and `/var` must be writable).
pub const BASE_KERNEL_ARGS: [&str; 2] = ["root=LABEL=root", "rw"];

/// Input of the deploy stage.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The build's repository holding `ref_name` (archive or bare mode).
    pub repo: PathBuf,
    pub ref_name: String,
    /// OSTree stateroot name, e.g. `debian`.
    pub osname: String,
    /// Recipe `os.kernel-args`, appended after [`BASE_KERNEL_ARGS`].
    pub kernel_args: Vec<String>,
    /// Remote (name, URL) the booted system follows with `ostree admin upgrade`; without one
    /// the deployment's origin is the plain ref.
    pub remote: Option<(String, String)>,
    /// Public key (armored or binary) the commit is GPG-signed with: the remote then gets
    /// `gpg-verify=true` and this key. `None`: an unsigned commit, `gpg-verify=false`.
    pub gpg_key: Option<PathBuf>,
    /// Where the temporary sysroot is created (same file system as the disk stage's work
    /// files; it holds a full deployment).
    pub workdir: PathBuf,
}

/// Output of the deploy stage. The staged tree is deleted when this is dropped (after the
/// disk stage has copied it), including the immutable deployment directories.
#[derive(Debug)]
pub struct Deployed {
    /// The staged sysroot. After the split its `boot/` is the empty mount point, so this is
    /// the same directory as `root_tree`.
    pub sysroot: PathBuf,
    /// Contents of the ext4 `/boot` partition: `loader -> loader.N`, `loader.N/entries`,
    /// `loader.N/grub.cfg`, `grub/grub.cfg`, `ostree/<os>-<bootcsum>/`, `boot -> .`.
    pub boot_tree: PathBuf,
    /// Contents of the root partition: the sysroot with an empty `boot/`.
    pub root_tree: PathBuf,
    /// The deployed commit checksum.
    pub commit: String,
    /// Relative to the sysroot, e.g. `ostree/deploy/debian/deploy/<commit>.0`.
    pub deployment_path: String,
    /// libostree's checksum over kernel + initramfs (names `/boot/ostree/<os>-<bootcsum>`).
    pub bootcsum: String,
    staging: StagingDir,
}

impl Deployed {
    /// Delete the staged tree now and report a failure (dropping only logs it).
    pub fn remove(self) -> Result<()> {
        self.staging.remove()
    }

    /// Keep the staged tree on disk (for debugging); returns the staging directory.
    pub fn keep(self) -> PathBuf {
        self.staging.keep()
    }
}

/// Deploy `req.ref_name` from `req.repo` into a fresh staged sysroot and write its boot menu.
pub fn deploy(req: &DeployRequest) -> Result<Deployed> {
    let kernel_args = validate(req)?;
    let _libostree = crate::commit::libostree_lock();
    let step = progress::step(format!("deploy {} ({})", req.ref_name, req.osname));
    let staging = StagingDir::create(&req.workdir)?;
    let sysroot = staging.path().join("sysroot");
    fs::create_dir(&sysroot).with_context(|| format!("creating {}", sysroot.display()))?;

    let ostree_req = sysroot::OstreeDeploy {
        sysroot: sysroot.clone(),
        source_repo: req.repo.clone(),
        ref_name: req.ref_name.clone(),
        osname: req.osname.clone(),
        kernel_args,
        remote: req.remote.clone(),
        gpg_key: req.gpg_key.clone(),
    };
    let done = sysroot::run_on_ostree_thread(|| sysroot::init_and_deploy(&ostree_req))?;
    step.note(format!("deployed {}", done.deployment_path));

    write_boot_menu(&sysroot, &req.osname, &done.bootcsum)?;
    sysroot::run_on_ostree_thread(|| sysroot::set_image_bootloader(&sysroot))?;

    let boot_tree = staging.path().join("boot");
    staging::split_boot(&sysroot, &boot_tree)?;
    step.done_with(&done.commit);
    Ok(Deployed {
        root_tree: sysroot.clone(),
        sysroot,
        boot_tree,
        commit: done.commit,
        deployment_path: done.deployment_path,
        bootcsum: done.bootcsum,
        staging,
    })
}

/// Check the request and return the full kernel argument list.
fn validate(req: &DeployRequest) -> Result<Vec<String>> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !name_ok(&req.osname) {
        bail!(
            "deploy: osname `{}` must be non-empty ASCII letters, digits, `-`, `_`, `.`",
            req.osname
        );
    }
    if req.ref_name.is_empty() || req.ref_name.chars().any(char::is_whitespace) {
        bail!(
            "deploy: ref `{}` is empty or contains whitespace",
            req.ref_name
        );
    }
    if let Some((name, url)) = &req.remote {
        if !name_ok(name) {
            bail!("deploy: remote name `{name}` must be ASCII letters, digits, `-`, `_`, `.`");
        }
        if url.is_empty() || url.chars().any(char::is_whitespace) {
            bail!("deploy: remote URL `{url}` is empty or contains whitespace");
        }
    }
    let mut args: Vec<String> = BASE_KERNEL_ARGS.iter().map(|s| s.to_string()).collect();
    for arg in &req.kernel_args {
        if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("deploy: kernel argument `{arg}` is empty or contains whitespace");
        }
        // `root=` is fixed by the disk layout and `ostree=` is written by libostree; a second
        // one on the command line would silently win or break boot.
        if arg.starts_with("root=") || arg.starts_with("ostree=") {
            bail!("deploy: kernel argument `{arg}` is set by nodeimg and cannot be overridden");
        }
        args.push(arg.clone());
    }
    Ok(args)
}

/// Write `boot/loader.N/grub.cfg` from the BLS entries and the static `boot/grub/grub.cfg`,
/// after checking the entries point at what libostree deployed.
fn write_boot_menu(sysroot: &Path, osname: &str, bootcsum: &str) -> Result<()> {
    let boot = sysroot.join("boot");
    let loader_link = boot.join("loader");
    let loader_dir = fs::read_link(&loader_link)
        .with_context(|| format!("reading the symlink {}", loader_link.display()))?;
    let loader = boot.join(&loader_dir);
    let entries = bls::read_entries(&loader.join("entries"))?;
    let Some(default) = entries.first() else {
        bail!("libostree wrote no BLS entries in {}", loader.display());
    };
    let expected = format!("/ostree/{osname}-{bootcsum}/");
    if !default.linux.as_str().starts_with(&expected) {
        bail!(
            "{}: kernel {} is not in {expected}",
            default.source.display(),
            default.linux
        );
    }
    for path in std::iter::once(&default.linux).chain(&default.initrd) {
        let on_disk = boot.join(path.as_str().trim_start_matches('/'));
        if !on_disk.is_file() {
            bail!(
                "{}: {} does not exist on the boot partition",
                default.source.display(),
                path
            );
        }
    }
    atomic_write(
        loader.join("grub.cfg"),
        grub_menu::render_loader_menu(&entries),
    )?;
    atomic_write(
        boot.join("grub/grub.cfg"),
        grub_menu::render_static_grub_cfg(),
    )?;
    Ok(())
}

/// Put into the OS tree (while `/etc` is still `/etc`) what the booted system needs to keep
/// its boot menu right on later deploys (the `grub-mkconfig` replacement libostree calls).
/// Called by `compose::ostreeify` before `/etc` moves to `/usr/etc`.
///
/// A `grub-mkconfig` already in the tree (grub-common installed by a recipe) is moved to
/// `grub-mkconfig.distrib`, as `dpkg-divert --rename` would, so it stays usable by hand.
pub fn install_boot_hooks(tree: &Path) -> Result<()> {
    let shim = tree.join(grub_menu::MKCONFIG_SHIM_PATH);
    let text = grub_menu::render_mkconfig_shim();
    match fs::symlink_metadata(&shim) {
        Ok(_) if fs::read_to_string(&shim).ok().as_deref() == Some(text.as_str()) => {}
        Ok(_) => {
            let diverted = shim.with_file_name("grub-mkconfig.distrib");
            tracing::warn!(path = %shim.display(), "replacing an existing grub-mkconfig with the nodeimg shim; the original is kept as grub-mkconfig.distrib");
            fs::rename(&shim, &diverted)
                .with_context(|| format!("moving {} to {}", shim.display(), diverted.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", shim.display())),
    }
    atomic_write_mode(&shim, text, 0o755)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kargs: &[&str]) -> DeployRequest {
        DeployRequest {
            repo: "/nonexistent".into(),
            ref_name: "debian/bookworm/x86_64".into(),
            osname: "debian".into(),
            kernel_args: kargs.iter().map(|s| s.to_string()).collect(),
            remote: None,
            gpg_key: None,
            workdir: "/nonexistent".into(),
        }
    }

    #[test]
    fn base_kernel_args_come_first() {
        let args = validate(&req(&["console=ttyS0,115200", "quiet"])).unwrap();
        assert_eq!(
            args,
            ["root=LABEL=root", "rw", "console=ttyS0,115200", "quiet"]
        );
    }

    #[test]
    fn rejects_bad_kernel_args_and_names() {
        assert!(validate(&req(&["root=/dev/sda"])).is_err());
        assert!(validate(&req(&["ostree=/x"])).is_err());
        assert!(validate(&req(&["a b"])).is_err());
        assert!(validate(&req(&[""])).is_err());
        let mut r = req(&[]);
        r.osname = "../x".into();
        assert!(validate(&r).is_err());
        let mut r = req(&[]);
        r.remote = Some(("origin".into(), "http://h/repo x".into()));
        assert!(validate(&r).is_err());
    }

    #[test]
    fn boot_hooks_install_executable_shim_and_divert_existing() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let sbin = d.path().join("usr/sbin");
        fs::create_dir_all(&sbin).unwrap();
        fs::write(sbin.join("grub-mkconfig"), "#!/bin/sh\n# the real one\n").unwrap();
        install_boot_hooks(d.path()).unwrap();
        let shim = sbin.join("grub-mkconfig");
        assert_eq!(
            fs::read_to_string(&shim).unwrap(),
            grub_menu::render_mkconfig_shim()
        );
        assert_eq!(
            fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_to_string(sbin.join("grub-mkconfig.distrib")).unwrap(),
            "#!/bin/sh\n# the real one\n"
        );
        // Idempotent: a second run keeps the diverted original.
        install_boot_hooks(d.path()).unwrap();
        assert!(sbin.join("grub-mkconfig.distrib").exists());
        assert_eq!(fs::read_dir(&sbin).unwrap().count(), 2);
    }
}

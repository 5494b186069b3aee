//! The initramfs of nodeboot's network installer (`pxe/installer.img`, booted by the
//! `nodeimg` entry of the iPXE/GRUB/pxelinux configs): the composed OS tree's own kernel
//! modules and dracut, plus the dracut module `90nodeboot-install` (sources in
//! `kickstart/dracut/`), which brings up DHCP and runs `nodeboot install` instead of
//! switching root.
//!
//! dracut runs chrooted in an overlay of the tree (the tree itself is never modified) inside
//! a private mount namespace, so the host's mount table is untouched whatever happens.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimg_common::fsutil::AtomicFile;
use nodeimg_common::Cmd;

const MODULE: &str = "90nodeboot-install";
const MODULE_SETUP: &str = include_str!("dracut/90nodeboot-install/module-setup.sh.in");
const SERVICE: &str = include_str!("dracut/90nodeboot-install/nodeboot-install.service.in");
const NETWORK: &str = include_str!("dracut/90nodeboot-install/80-nodeboot-install.network");
const RESOLV: &str = include_str!("dracut/90nodeboot-install/nodeboot-install-resolv.sh");

/// Tools `nodeboot install` runs: resize2fs grows the root file system, debugfs places the
/// node config.
const TOOLS: &str = "resize2fs debugfs";
/// NIC drivers: every wired Ethernet driver of the kernel, plus virtio for VMs.
const NET_DRIVERS: &str = "=drivers/net/ethernet virtio_net af_packet";
/// How long the installer waits for a DHCP lease before it gives up.
const DHCP_TIMEOUT_SECS: u32 = 180;
/// Modules that have no business in an installer (and the node's own ostree root mounting).
const OMIT: &str =
    "ostree plymouth crypt dm dmraid lvm mdraid multipath nvdimm resume btrfs overlay-root";
/// Block and file system drivers the installer needs for the target disk.
const DRIVERS: &str = "virtio_blk virtio_pci virtio_scsi sd_mod ahci nvme ext4";
/// Files the installer initramfs must contain (checked with lsinitrd).
const REQUIRED: &[&str] = &[
    "usr/bin/nodeboot",
    "nodeboot-install.service",
    "systemd-networkd",
    "80-nodeboot-install.network",
    "resize2fs",
    "debugfs",
];

/// One file of the dracut module.
#[derive(Debug, Clone)]
pub struct ModuleFile {
    pub name: &'static str,
    pub content: String,
    pub mode: u32,
}

/// The files of the dracut module, rendered. Pure; golden-tested.
pub fn render_module() -> Vec<ModuleFile> {
    let fill = |t: &str| {
        t.replace("{{nodeimg_version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{tools}}", TOOLS)
            .replace("{{net_drivers}}", NET_DRIVERS)
            .replace(
                "{{wait_online}}",
                "/lib/systemd/systemd-networkd-wait-online",
            )
            .replace("{{dhcp_timeout}}", &DHCP_TIMEOUT_SECS.to_string())
    };
    vec![
        ModuleFile {
            name: "module-setup.sh",
            content: fill(MODULE_SETUP),
            mode: 0o755,
        },
        ModuleFile {
            name: "nodeboot-install.service",
            content: fill(SERVICE),
            mode: 0o644,
        },
        ModuleFile {
            name: "80-nodeboot-install.network",
            content: NETWORK.to_owned(),
            mode: 0o644,
        },
        ModuleFile {
            name: "nodeboot-install-resolv.sh",
            content: RESOLV.to_owned(),
            mode: 0o755,
        },
    ]
}

/// dracut's arguments for the installer image, written to `output` inside the chroot.
pub fn dracut_args(kver: &str, output: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--force",
        "--quiet",
        "--no-hostonly",
        "--no-hostonly-cmdline",
        "--no-early-microcode",
        "--compress",
        "zstd",
        "--add",
        "nodeboot-install",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [
        ("--omit", OMIT),
        ("--drivers", DRIVERS),
        ("--filesystems", "ext4 vfat"),
        ("--kver", kver),
    ] {
        args.push(flag.to_owned());
        args.push(value.to_owned());
    }
    args.push(output.to_owned());
    args
}

/// The namespace script: overlay the tree, give the chroot /dev, /proc and /sys, run dracut,
/// list the result. Positional: tree, upper, work, merged, then dracut's arguments.
const SCRIPT: &str = r#"set -e
tree=$1 upper=$2 work=$3 merged=$4
shift 4
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$tree,upperdir=$upper,workdir=$work" "$merged"
mount --rbind /dev "$merged/dev"
mount -t proc proc "$merged/proc"
mount -t sysfs sysfs "$merged/sys"
chroot "$merged" dracut "$@"
chroot "$merged" lsinitrd /installer.img > "$merged/installer.list"
"#;

/// Build `out` (the installer initramfs) from the composed OS `tree` with kernel `kver`,
/// embedding the `nodeboot` binary. `out` appears only when the image is complete.
pub fn build_installer_initramfs(
    tree: &Path,
    kver: &str,
    nodeboot: &Path,
    out: &Path,
) -> Result<()> {
    let step = crate::progress::step(format!("installer initramfs {}", out.display()));
    let modules = tree.join("usr/lib/modules").join(kver);
    if !modules.is_dir() {
        bail!(
            "{} does not exist: the tree has no kernel {kver}",
            modules.display()
        );
    }
    if !tree.join("usr/bin/dracut").exists() && !tree.join("usr/sbin/dracut").exists() {
        bail!(
            "the tree {} has no dracut (add it to the recipe's packages)",
            tree.display()
        );
    }
    if !nodeboot.is_file() {
        bail!("the nodeboot binary {} does not exist", nodeboot.display());
    }
    let tree_str = tree.to_str().unwrap_or_default();
    if tree_str.is_empty() || tree_str.contains([',', ':']) {
        bail!(
            "the tree path {} cannot be an overlay lower directory (it contains ',' or ':')",
            tree.display()
        );
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".installer-initramfs.")
        .tempdir_in(parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))?;
    let (upper, work, merged) = (
        scratch.path().join("upper"),
        scratch.path().join("work"),
        scratch.path().join("merged"),
    );
    for d in [&work, &merged] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    stage_upper(tree, &upper, nodeboot)?;

    Cmd::new("unshare")
        .args(["--mount", "--fork", "--", "sh", "-c", SCRIPT, "sh"])
        .arg(tree)
        .arg(&upper)
        .arg(&work)
        .arg(&merged)
        .args(dracut_args(kver, "/installer.img"))
        .forward_stderr()
        .run()
        .with_context(|| {
            format!(
                "running dracut for the installer initramfs in an overlay of {}",
                tree.display()
            )
        })?;

    let listing_path = upper.join("installer.list");
    let listing = fs::read_to_string(&listing_path)
        .with_context(|| format!("reading {}", listing_path.display()))?;
    for needle in REQUIRED {
        if !listing.lines().any(|l| l.contains(needle)) {
            bail!(
                "the installer initramfs lacks {needle} (lsinitrd listing in {})",
                listing_path.display()
            );
        }
    }
    let built = upper.join("installer.img");
    let mut src = fs::File::open(&built).with_context(|| format!("opening {}", built.display()))?;
    let mut dst = AtomicFile::create(out)?;
    std::io::copy(&mut src, dst.file()).with_context(|| format!("writing {}", out.display()))?;
    dst.file()
        .flush()
        .with_context(|| format!("writing {}", out.display()))?;
    dst.commit()?;
    let size = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    step.done_with(&format!("{:.1} MiB", size as f64 / (1024.0 * 1024.0)));
    Ok(())
}

/// The overlay's upper layer: the dracut module with the nodeboot binary, and what dracut
/// needs in a tree that went through ostreeify (`/etc` under `/usr/etc`, an empty `/var`).
fn stage_upper(tree: &Path, upper: &Path, nodeboot: &Path) -> Result<()> {
    let moddir = upper.join("usr/lib/dracut/modules.d").join(MODULE);
    fs::create_dir_all(&moddir).with_context(|| format!("creating {}", moddir.display()))?;
    for f in render_module() {
        let path = moddir.join(f.name);
        fs::write(&path, &f.content).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    let bin = moddir.join("nodeboot");
    fs::copy(nodeboot, &bin)
        .with_context(|| format!("copying {} to {}", nodeboot.display(), bin.display()))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", bin.display()))?;
    if !tree.join("etc").exists() && tree.join("usr/etc").is_dir() {
        std::os::unix::fs::symlink("usr/etc", upper.join("etc"))
            .context("linking /etc to /usr/etc in the overlay")?;
    }
    let vartmp = upper.join("var/tmp");
    fs::create_dir_all(&vartmp).with_context(|| format!("creating {}", vartmp.display()))?;
    fs::set_permissions(&vartmp, fs::Permissions::from_mode(0o1777))
        .with_context(|| format!("setting the mode of {}", vartmp.display()))?;
    for d in ["dev", "proc", "sys", "tmp"] {
        fs::create_dir_all(upper.join(d))
            .with_context(|| format!("creating {}", upper.join(d).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeimg_common::golden::assert_golden;

    fn golden_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kickstart/installer")
    }

    #[test]
    fn module_files_match_golden() {
        for f in render_module() {
            assert!(
                !f.content.contains("{{"),
                "{}: unfilled placeholder",
                f.name
            );
            assert_golden(golden_dir().join(f.name), &f.content);
        }
    }

    #[test]
    fn shell_scripts_parse() {
        for f in render_module().iter().filter(|f| f.name.ends_with(".sh")) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(f.name);
            fs::write(&p, &f.content).unwrap();
            let shell = if f.content.starts_with("#!/bin/bash") {
                "bash"
            } else {
                "sh"
            };
            Cmd::new(shell).arg("-n").arg(&p).run().unwrap();
        }
    }

    #[test]
    fn resolv_script_turns_leases_into_resolv_conf() {
        // Run the real script against a fake root by rewriting its two absolute paths.
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        fs::create_dir_all(&leases).unwrap();
        fs::write(
            leases.join("2"),
            "# This is private data. Do not parse.\nADDRESS=10.0.2.15\nDNS=10.0.2.3 10.0.2.4\nDOMAINNAME=lab.example\n",
        )
        .unwrap();
        let script = RESOLV
            .replace("/run/systemd/netif/leases", &leases.display().to_string())
            .replace(
                "/etc/resolv.conf",
                &dir.path().join("resolv.conf").display().to_string(),
            );
        Cmd::new("sh").arg("-c").arg(script).run().unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\nnameserver 10.0.2.4\nsearch lab.example\n"
        );
    }

    #[test]
    fn dracut_args_name_the_module_and_the_kernel() {
        let a = dracut_args("6.1.0-50-amd64", "/installer.img");
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[pos("--add") + 1], "nodeboot-install");
        assert_eq!(a[pos("--kver") + 1], "6.1.0-50-amd64");
        assert!(a[pos("--omit") + 1].split(' ').any(|m| m == "ostree"));
        assert_eq!(a.last().unwrap(), "/installer.img");
    }

    #[test]
    fn refuses_a_tree_without_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_installer_initramfs(
            dir.path(),
            "6.1.0-50-amd64",
            Path::new("/bin/true"),
            &dir.path().join("installer.img"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no kernel 6.1.0-50-amd64"),
            "{err}"
        );
        assert!(!dir.path().join("installer.img").exists());
    }

    /// The real thing, when a composed tree is at hand (takes 1-2 minutes):
    /// `NODEIMG_INSTALLER_TREE=/path/to/tree NODEIMG_INSTALLER_NODEBOOT=target/debug/nodeboot
    /// cargo test -p nodeimg-builder installer -- --ignored`
    #[test]
    #[ignore = "needs a composed OS tree (NODEIMG_INSTALLER_TREE) and root"]
    fn builds_from_a_real_tree() {
        let tree = std::path::PathBuf::from(std::env::var("NODEIMG_INSTALLER_TREE").unwrap());
        let nodeboot =
            std::path::PathBuf::from(std::env::var("NODEIMG_INSTALLER_NODEBOOT").unwrap());
        let kver = fs::read_dir(tree.join("usr/lib/modules"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        let out = std::env::var("NODEIMG_INSTALLER_OUT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join("nodeimg-installer-test.img"));
        build_installer_initramfs(&tree, kver.to_str().unwrap(), &nodeboot, &out).unwrap();
        assert!(fs::metadata(&out).unwrap().len() > 1 << 20);
    }
}

//! The deploy stage against real libostree: a small commit made with the `ostree` CLI from a
//! fake tree (fake kernel and initramfs, `/usr/etc`), deployed into a staged sysroot.
//! Checks the sysroot layout, the BLS entry, both grub.cfg files, the boot/root split, that
//! the image's grub-mkconfig shim renders the same menu as the build host, and cleanup of the
//! immutable deployment directories.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nodeimg_builder::deploy::{self, bls, grub_menu, DeployRequest};
use nodeimg_common::Cmd;

const KVER: &str = "6.1.0-99-amd64";
const REF: &str = "debian/bookworm/x86_64";

/// A fake OS tree the way ostreeify leaves it, committed to an archive repo.
fn make_commit(dir: &Path) -> (PathBuf, String) {
    let tree = dir.join("tree");
    let modules = tree.join("usr/lib/modules").join(KVER);
    fs::create_dir_all(&modules).unwrap();
    fs::write(modules.join("vmlinuz"), b"fake kernel\n").unwrap();
    fs::write(modules.join("initramfs.img"), b"fake initramfs\n").unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "node\n").unwrap();
    fs::write(
        tree.join("usr/lib/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
    )
    .unwrap();
    // As compose::ostreeify does: hooks first, then /etc -> /usr/etc.
    deploy::install_boot_hooks(&tree).unwrap();
    fs::rename(tree.join("etc"), tree.join("usr/etc")).unwrap();
    fs::create_dir_all(tree.join("var")).unwrap();
    fs::create_dir_all(tree.join("sysroot")).unwrap();

    let repo = dir.join("repo");
    Cmd::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["init", "--mode=archive"])
        .run()
        .unwrap();
    let commit = Cmd::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["commit", "--branch", REF, "--subject", "test"])
        .args([
            "--add-metadata-string=version=1",
            "--timestamp=2024-01-01T00:00:00Z",
        ])
        .arg(format!("--tree=dir={}", tree.display()))
        .stdout_string()
        .unwrap();
    (repo, commit)
}

fn request(dir: &Path, repo: &Path) -> DeployRequest {
    DeployRequest {
        repo: repo.to_owned(),
        ref_name: REF.into(),
        osname: "debian".into(),
        kernel_args: vec!["console=ttyS0,115200".into(), "quiet".into()],
        remote: Some(("nodeimg".into(), "http://127.0.0.1:8080/repo".into())),
        gpg_key: None,
        workdir: dir.join("work"),
    }
}

fn is_immutable(path: &Path) -> bool {
    let out = Cmd::new("lsattr")
        .arg("-d")
        .arg(path)
        .stdout_string()
        .unwrap();
    out.split_whitespace().next().unwrap().contains('i')
}

#[test]
fn deploys_fake_commit_and_cleans_up() {
    let d = tempfile::tempdir().unwrap();
    let (repo, commit) = make_commit(d.path());
    let req = request(d.path(), &repo);
    let deployed = deploy::deploy(&req).unwrap();

    assert_eq!(deployed.commit, commit);
    assert_eq!(deployed.sysroot, deployed.root_tree);
    assert_eq!(
        deployed.deployment_path,
        format!("ostree/deploy/debian/deploy/{commit}.0")
    );
    let root = &deployed.root_tree;
    let boot = &deployed.boot_tree;

    // The deployment: /etc merged from /usr/etc, /usr read-only content, immutable root.
    let dep = root.join(&deployed.deployment_path);
    assert_eq!(
        fs::read_to_string(dep.join("etc/hostname")).unwrap(),
        "node\n"
    );
    assert!(dep.join("usr/sbin/grub-mkconfig").is_file());
    assert!(is_immutable(&dep), "libostree marks the deployment root +i");
    assert!(root.join("ostree/deploy/debian/var").is_dir());

    // Origin follows the remote's ref; the remote and bootloader are configured for the VM.
    let origin =
        fs::read_to_string(root.join(format!("{}.origin", deployed.deployment_path))).unwrap();
    assert!(
        origin.contains(&format!("refspec=nodeimg:{REF}")),
        "{origin}"
    );
    let config = fs::read_to_string(root.join("ostree/repo/config")).unwrap();
    assert!(config.contains("bootloader=grub2"), "{config}");
    assert!(config.contains("[remote \"nodeimg\"]"), "{config}");
    assert!(
        config.contains("url=http://127.0.0.1:8080/repo"),
        "{config}"
    );
    let remote_ref = root.join("ostree/repo/refs/remotes/nodeimg").join(REF);
    assert_eq!(fs::read_to_string(remote_ref).unwrap().trim(), commit);

    // The split: boot content only in boot_tree, an empty mount point in the root.
    assert!(fs::read_dir(root.join("boot")).unwrap().next().is_none());
    assert_eq!(fs::read_link(boot.join("boot")).unwrap(), Path::new("."));
    let loader = fs::read_link(boot.join("loader")).unwrap();
    let loader = loader.to_str().unwrap().to_owned();
    assert!(loader == "loader.0" || loader == "loader.1", "{loader}");
    let bootversion = loader.trim_start_matches("loader.").to_owned();
    assert_eq!(
        fs::metadata(root).unwrap().dev(),
        fs::metadata(boot).unwrap().dev(),
        "split by rename, same file system"
    );

    // The BLS entry.
    let entries = bls::read_entries(&boot.join("loader/entries")).unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    let kdir = format!("/ostree/debian-{}", deployed.bootcsum);
    assert_eq!(e.linux.as_str(), format!("{kdir}/vmlinuz-{KVER}"));
    assert_eq!(e.initrd[0].as_str(), format!("{kdir}/initramfs-{KVER}.img"));
    assert_eq!(
        e.options.as_deref().unwrap(),
        format!(
            "root=LABEL=root rw console=ttyS0,115200 quiet ostree=/ostree/boot.{bootversion}/debian/{}/0",
            deployed.bootcsum
        )
    );
    assert_eq!(
        e.title.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm) (ostree:0)")
    );
    assert_eq!(
        fs::read(boot.join(e.linux.as_str().trim_start_matches('/'))).unwrap(),
        b"fake kernel\n"
    );

    // Both GRUB files.
    let menu = fs::read_to_string(boot.join("loader/grub.cfg")).unwrap();
    assert_eq!(menu, grub_menu::render_loader_menu(&entries));
    assert!(menu.contains(&format!(
        "linux {kdir}/vmlinuz-{KVER} root=LABEL=root rw console=ttyS0,115200 quiet ostree=/ostree/boot.{bootversion}/debian/"
    )), "{menu}");
    assert!(
        menu.contains(&format!("\ninitrd {kdir}/initramfs-{KVER}.img\n")),
        "{menu}"
    );
    assert_eq!(
        fs::read_to_string(boot.join("grub/grub.cfg")).unwrap(),
        grub_menu::render_static_grub_cfg()
    );

    // The image's shim, run on the host against this sysroot, renders the identical menu.
    let shim_menu = run_shim_on(&deployed, &bootversion);
    assert_eq!(shim_menu, menu);

    // Cleanup clears +i and removes everything.
    let staging = root.parent().unwrap().to_owned();
    deployed.remove().unwrap();
    assert!(!staging.exists());
    assert_eq!(fs::read_dir(&req.workdir).unwrap().count(), 0);
}

/// Put boot content back into the sysroot for a moment, run the deployed tree's
/// `/usr/sbin/grub-mkconfig` as libostree would, and restore the split.
fn run_shim_on(deployed: &deploy::Deployed, bootversion: &str) -> String {
    let root = &deployed.root_tree;
    let shim = root
        .join(&deployed.deployment_path)
        .join("usr/sbin/grub-mkconfig");
    fs::remove_dir(root.join("boot")).unwrap();
    fs::rename(&deployed.boot_tree, root.join("boot")).unwrap();
    let out = root.parent().unwrap().join("shim-grub.cfg");
    let result = Cmd::new(&shim)
        .arg("-o")
        .arg(&out)
        .env("_OSTREE_GRUB2_BOOTVERSION", bootversion)
        .env("NODEIMG_SYSROOT", root)
        .run();
    fs::rename(root.join("boot"), &deployed.boot_tree).unwrap();
    fs::create_dir(root.join("boot")).unwrap();
    result.unwrap();
    let text = fs::read_to_string(&out).unwrap();
    fs::remove_file(&out).unwrap();
    text
}

#[test]
fn two_deployments_render_like_the_shim() {
    // A second deployment made with the ostree CLI (the way the booted system adds one)
    // gives two BLS entries; the native renderer and the shim must agree, newest first.
    let d = tempfile::tempdir().unwrap();
    let (repo, _) = make_commit(d.path());
    let deployed = deploy::deploy(&request(d.path(), &repo)).unwrap();
    let root = deployed.root_tree.clone();
    fs::remove_dir(root.join("boot")).unwrap();
    fs::rename(&deployed.boot_tree, root.join("boot")).unwrap();
    let sysroot_arg = format!("--sysroot={}", root.display());
    // Keep the host's own grub-mkconfig out of this host-side deploy.
    Cmd::new("ostree")
        .arg(format!("--repo={}/ostree/repo", root.display()))
        .args(["config", "set", "sysroot.bootloader", "none"])
        .run()
        .unwrap();
    Cmd::new("ostree")
        .args([
            "admin",
            "deploy",
            &sysroot_arg,
            "--os=debian",
            "--karg-append=second",
        ])
        .arg(format!("nodeimg:{REF}"))
        .run()
        .unwrap();
    let loader = fs::read_link(root.join("boot/loader")).unwrap();
    let bootversion = loader
        .to_str()
        .unwrap()
        .trim_start_matches("loader.")
        .to_owned();
    let entries = bls::read_entries(&root.join("boot/loader/entries")).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries[0].options.as_deref().unwrap().ends_with(" second"));
    assert!(entries[0].title.as_deref().unwrap().ends_with("(ostree:0)"));
    assert!(entries[1].title.as_deref().unwrap().ends_with("(ostree:1)"));
    let native = grub_menu::render_loader_menu(&entries);
    fs::rename(root.join("boot"), &deployed.boot_tree).unwrap();
    fs::create_dir(root.join("boot")).unwrap();
    let shim = run_shim_on(&deployed, &bootversion);
    assert_eq!(shim, native);
    assert_eq!(shim.matches("menuentry ").count(), 2);
    deployed.remove().unwrap();
}

#[test]
fn failed_deploy_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (repo, _) = make_commit(d.path());
    let mut req = request(d.path(), &repo);
    req.ref_name = "no/such/ref".into();
    let err = deploy::deploy(&req).unwrap_err();
    assert!(format!("{err:#}").contains("no/such/ref"), "{err:#}");
    assert_eq!(fs::read_dir(&req.workdir).unwrap().count(), 0);
}

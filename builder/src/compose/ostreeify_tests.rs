//! ostreeify on a small fake tree: exact layout, tmpfiles.d lines, factory files, links.

use super::*;
use std::os::unix::fs::chown;

const KVER: &str = "6.1.0-test-amd64";

fn mkdir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn file(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn fake_tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let t = d.path();
    for dir in [
        "usr/bin",
        "usr/lib",
        "usr/local/bin",
        "home",
        "opt",
        "srv",
        "mnt",
        "media",
        "proc",
        "sys",
        "run/lock",
        "dev",
        "var/opt",
        "var/lib/systemd/deb-systemd-helper-enabled",
        "var/cache/apt/archives",
    ] {
        mkdir(t, dir, 0o755);
    }
    mkdir(t, "root", 0o700);
    mkdir(t, "tmp", 0o755);
    mkdir(t, "var/tmp", 0o1777);
    symlink("usr/lib", t.join("lib")).unwrap();
    symlink("usr/bin", t.join("bin")).unwrap();
    file(
        t,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nops:x:1001:1001::/home/ops:/bin/bash\n",
    );
    file(t, "etc/group", "root:x:0:\nadm:x:4:\nops:x:1001:\n");
    file(t, "etc/os-release", "ID=debian\n");
    file(t, &format!("boot/vmlinuz-{KVER}"), "kernel");
    file(t, &format!("boot/config-{KVER}"), "config");
    file(
        t,
        &format!("usr/lib/modules/{KVER}/initramfs.img"),
        "initramfs",
    );
    file(t, "var/lib/dpkg/status", "Package: x\n");
    file(
        t,
        "var/lib/dbus/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    file(t, "var/log/apt/history.log", "apt");
    file(t, "var/cache/apt/archives/x.deb", "deb");
    file(
        t,
        "var/lib/systemd/deb-systemd-helper-enabled/x.service.dsh-also",
        "",
    );
    file(t, "var/lib/app/state db", "state");
    file(t, "var/lib/app/100%", "pct");
    mkdir(t, "var/log", 0o755);
    chown(t.join("var/log"), Some(0), Some(4)).unwrap();
    symlink("/run", t.join("var/run")).unwrap();
    file(t, "root/.bashrc", "# bashrc\n");
    mkdir(t, "home/ops", 0o700);
    chown(t.join("home/ops"), Some(1001), Some(1001)).unwrap();
    file(t, "opt/vendor/tool", "tool");
    file(t, "tmp/junk", "junk");
    file(t, "run/lock/x", "x");
    file(t, "dev/null-ish", "not a device");
    file(t, "media/cdrom-note", "gone");
    d
}

fn version() -> VersionInfo {
    VersionInfo {
        image: "k8s-node".into(),
        version: "1.4.0".into(),
        recipe_digest: "ab".repeat(32),
    }
}

#[test]
fn fake_tree_gets_the_ostree_layout() {
    let d = fake_tree();
    let t = d.path();
    let report = ostreeify(t, &version()).unwrap();
    assert_eq!(report.kernel_version, KVER);
    assert_eq!(report.factory_files, 4);

    let tmpfiles = fs::read_to_string(t.join(TMPFILES_CONF)).unwrap();
    let expected = "\
# Written by nodeimg: the image's /var, recreated at boot. Directories and links are
# created if missing; files are copied from /usr/share/factory/var if missing.
d /var/cache 0755 root root -
d /var/home 0755 root root -
d /var/home/ops 0700 ops ops -
d /var/lib 0755 root root -
d /var/lib/app 0755 root root -
C /var/lib/app/100%% - - - - /usr/share/factory/var/lib/app/100%%
C /var/lib/app/state\\x20db - - - - /usr/share/factory/var/lib/app/state\\x20db
d /var/lib/dbus 0755 root root -
d /var/lib/systemd 0755 root root -
d /var/log 0755 root adm -
d /var/mnt 0755 root root -
d /var/opt 0755 root root -
d /var/opt/vendor 0755 root root -
C /var/opt/vendor/tool - - - - /usr/share/factory/var/opt/vendor/tool
d /var/roothome 0700 root root -
C /var/roothome/.bashrc - - - - /usr/share/factory/var/roothome/.bashrc
L /var/run - - - - /run
d /var/srv 0755 root root -
d /var/tmp 1777 root root -
d /var/usrlocal 0755 root root -
d /var/usrlocal/bin 0755 root root -
d /run/media 0755 root root -
";
    assert_eq!(tmpfiles, expected);
    assert_eq!(report.tmpfiles_lines, expected.lines().count() - 3);

    let listing = listing(t).unwrap();
    let expected_top: Vec<&str> = vec![
        "bin -> usr/bin",
        "boot/",
        "dev/",
        "efi/",
        "home -> var/home",
        "lib -> usr/lib",
        "media -> run/media",
        "mnt -> var/mnt",
        "opt -> var/opt",
        "ostree -> sysroot/ostree",
        "proc/",
        "root -> var/roothome",
        "run/",
        "srv -> var/srv",
        "sys/",
        "sysroot/",
        "tmp/",
        "usr/",
        "var/",
    ];
    let mut top: Vec<String> = fs::read_dir(t)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_symlink() {
                format!("{n} -> {}", fs::read_link(e.path()).unwrap().display())
            } else {
                format!("{n}/")
            }
        })
        .collect();
    top.sort();
    assert_eq!(top, expected_top);
    for must in [
        format!("usr/lib/modules/{KVER}/vmlinuz"),
        format!("usr/lib/modules/{KVER}/initramfs.img"),
        "usr/lib/sysimage/dpkg/status".to_owned(),
        "usr/etc/machine-id".to_owned(),
        "usr/etc/os-release".to_owned(),
        "usr/local -> ../var/usrlocal".to_owned(),
        "usr/share/factory/var/lib/app/state db".to_owned(),
        "usr/share/factory/var/roothome/.bashrc".to_owned(),
        "usr/lib/nodeimg/version".to_owned(),
    ] {
        assert!(listing.contains(&must), "missing {must}");
    }
    // Package-manager state is dropped, not made into factory files.
    assert!(!listing.iter().any(|l| l.contains("factory/var/cache/apt")
        || l.contains("factory/var/log/apt")
        || l.contains("deb-systemd")));
    // Emptied or recreated.
    for dir in [
        "var", "boot", "tmp", "run", "dev", "proc", "sys", "sysroot", "efi",
    ] {
        assert_eq!(
            fs::read_dir(t.join(dir)).unwrap().count(),
            0,
            "{dir} not empty"
        );
    }
    assert_eq!(fs::metadata(t.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(
        fs::read_to_string(t.join("usr/etc/machine-id")).unwrap(),
        ""
    );
    assert!(!t.join("etc").exists());
    assert!(!t.join("usr/share/factory/var/lib/dbus/machine-id").exists());
    let v: VersionInfo =
        serde_json::from_str(&fs::read_to_string(t.join(VERSION_FILE)).unwrap()).unwrap();
    assert_eq!(v, version());
    // Factory files keep their owner and mode.
    let home = fs::metadata(t.join("usr/share/factory/var/roothome/.bashrc")).unwrap();
    assert_eq!(home.uid(), 0);
}

#[test]
fn missing_kernel_or_initramfs_is_a_clear_error() {
    let d = fake_tree();
    fs::remove_file(
        d.path()
            .join(format!("usr/lib/modules/{KVER}/initramfs.img")),
    )
    .unwrap();
    let e = format!("{:#}", ostreeify(d.path(), &version()).unwrap_err());
    assert!(
        e.contains("no initramfs at /usr/lib/modules/6.1.0-test-amd64/initramfs.img"),
        "{e}"
    );

    let d = fake_tree();
    fs::remove_file(d.path().join(format!("boot/vmlinuz-{KVER}"))).unwrap();
    let e = format!("{:#}", ostreeify(d.path(), &version()).unwrap_err());
    assert!(e.contains("no kernel image for 6.1.0-test-amd64"), "{e}");

    let d = fake_tree();
    fs::remove_dir_all(d.path().join("usr/lib/modules")).unwrap();
    let e = format!("{:#}", ostreeify(d.path(), &version()).unwrap_err());
    assert!(e.contains("no kernel in"), "{e}");
}

#[test]
fn existing_usr_etc_is_refused() {
    let d = fake_tree();
    mkdir(d.path(), "usr/etc", 0o755);
    let e = format!("{:#}", ostreeify(d.path(), &version()).unwrap_err());
    assert!(e.contains("already has /usr/etc"), "{e}");
}

#[test]
fn escaping() {
    assert_eq!(
        tmpfiles_escape("/var/a b\tc%d\\"),
        "/var/a\\x20b\\x09c%%d\\\\"
    );
}

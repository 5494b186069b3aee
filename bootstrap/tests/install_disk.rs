//! `nodeboot install` against a regular file standing in for the disk and a real HTTP server
//! on 127.0.0.1: successful installs (raw and zstd), the partition table afterwards, the
//! node config inside the installed ext4, and every failure leaving the disk unbootable.

mod install_support;

use std::path::Path;
use std::process::Command;

use install_support::*;
use nodeboot::install::request::{ImageUrl, InstallRequest, TargetDevice};
use nodeboot::install::{self, Installed};
use nodeimg_common::digest::Sha256Hex;

const TARGET_MIB: u64 = 64;

fn request(device: &Path, url: &str, sha: &Sha256Hex) -> InstallRequest {
    InstallRequest {
        device: device.to_str().unwrap().parse::<TargetDevice>().unwrap(),
        image_url: url.parse::<ImageUrl>().unwrap(),
        sha256: sha.clone(),
        config_url: None,
        wipe: false,
    }
}

fn install(dir: &Path, req: &InstallRequest) -> (anyhow::Result<Installed>, String) {
    let cmdline = dir.join("cmdline");
    if !cmdline.exists() {
        std::fs::write(&cmdline, "console=ttyS0\n").unwrap();
    }
    let mut console = Vec::new();
    let r = install::run(req, &host(dir, &cmdline), &mut console);
    (r, String::from_utf8_lossy(&console).into_owned())
}

/// Checks shared by every successful install onto a `TARGET_MIB` target.
fn assert_installed(target: &Path) {
    let img = image();
    let disk = std::fs::read(target).unwrap();
    // MBR boot code and everything before the root partition arrive byte for byte.
    assert_eq!(&disk[..440], &img.bytes[..440], "MBR boot code");
    let root_off = (img.root_start * 512) as usize;
    assert!(
        disk[MIB as usize..root_off] == img.bytes[MIB as usize..root_off],
        "partitions 1-3 differ from the image"
    );
    let v = sgdisk_verify(target);
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");

    // Same partitions, GUIDs, types and names; only the root partition is longer, up to the
    // last usable sector of the larger disk.
    let before = sfdisk_json(&img.raw)["partitiontable"].clone();
    let after = sfdisk_json(target)["partitiontable"].clone();
    assert_eq!(before["id"], after["id"], "disk GUID kept");
    let (b, a) = (
        before["partitions"].as_array().unwrap(),
        after["partitions"].as_array().unwrap(),
    );
    assert_eq!(b.len(), 4);
    assert_eq!(a.len(), 4);
    for i in 0..4 {
        for key in ["start", "type", "uuid", "name"] {
            assert_eq!(b[i][key], a[i][key], "partition {} {key}", i + 1);
        }
    }
    for i in 0..3 {
        assert_eq!(b[i]["size"], a[i]["size"]);
    }
    let lbas = TARGET_MIB * MIB / 512;
    let root_size = a[3]["size"].as_u64().unwrap();
    assert_eq!(after["lastlba"].as_u64().unwrap(), lbas - 34);
    // Grown to the last whole MiB before the backup GPT.
    let last_usable = lbas - 34;
    assert_eq!(
        img.root_start + root_size,
        (last_usable + 1) / 2048 * 2048,
        "root must end at the last MiB boundary"
    );
    assert!(root_size > img.root_sectors);

    // The ext4 file system was grown to the partition and is clean.
    let mut spec = target.as_os_str().to_owned();
    spec.push(format!("?offset={}", img.root_start * 512));
    run(Command::new("e2fsck").arg("-fn").arg(&spec));
    // (dumpe2fs does not accept the ?offset= spelling; debugfs does.)
    let dump = run(Command::new("debugfs").arg("-R").arg("stats").arg(&spec));
    let field = |name: &str| -> u64 {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let fs_bytes = field("Block count:") * field("Block size:");
    assert!(
        fs_bytes == root_size * 512,
        "file system {fs_bytes} bytes, partition {} bytes",
        root_size * 512
    );
    assert!(
        fs_bytes > img.root_sectors * 512,
        "file system was not grown"
    );
    // The payload inside the root fs survived.
    let payload = debugfs_bytes(
        target,
        img.root_start,
        &format!("cat /ostree/deploy/debian/deploy/{DEPLOYMENT}/usr/bin/payload"),
    );
    assert!(
        payload == noise(6 << 20, 4),
        "payload in the root fs changed"
    );
}

#[test]
fn raw_image_with_config_installs_grows_root_and_places_config() {
    let img = image();
    let server = Server::start(vec![
        ("/k8s-node.raw", img.bytes.clone()),
        ("/nodes/52:54:00:12:34:56.toml", CONFIG.as_bytes().to_vec()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), TARGET_MIB);
    // `${mac}` comes from BOOTIF= exactly as on a PXE-booted machine.
    std::fs::write(
        dir.path().join("cmdline"),
        "BOOTIF=01-52-54-00-12-34-56 console=ttyS0\n",
    )
    .unwrap();
    let mut req = request(&target, &server.url("/k8s-node.raw"), &img.sha256);
    req.config_url = Some(server.url("/nodes/${mac}.toml"));
    let (r, console) = install(dir.path(), &req);
    let done = r.unwrap_or_else(|e| panic!("{e:#}\n{console}"));
    assert_eq!(done.image_len, IMAGE_MIB * MIB);
    assert_eq!(done.sha256, img.sha256);
    assert!(
        console.contains("sha256") && console.contains("verified"),
        "{console}"
    );
    assert!(
        console.contains("100%"),
        "progress must reach 100%: {console}"
    );
    assert_installed(&target);

    let path = format!("/ostree/deploy/debian/deploy/{DEPLOYMENT}/etc/nodeboot/config.toml");
    assert_eq!(done.config_path.as_deref(), Some(path.as_str()));
    assert_eq!(
        debugfs(&target, img.root_start, &format!("cat {path}")),
        CONFIG
    );
    let stat = debugfs(&target, img.root_start, &format!("stat {path}"));
    assert!(stat.contains("Mode:  0600"), "{stat}");
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    // The sparse target stayed sparse: holes in the image were not written.
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&target).unwrap()) * 512;
    assert!(allocated < 32 * MIB, "allocated {allocated} bytes");
}

#[test]
fn zstd_image_is_decompressed_by_name_and_by_magic() {
    let img = image();
    let server = Server::start(vec![
        ("/k8s-node.raw.zst", img.zst.clone()),
        ("/k8s-node.img", img.zst.clone()),
    ]);
    for path in ["/k8s-node.raw.zst", "/k8s-node.img"] {
        let dir = tempfile::tempdir().unwrap();
        let target = sparse_target(dir.path(), TARGET_MIB);
        let req = request(&target, &server.url(path), &img.sha256);
        let (r, console) = install(dir.path(), &req);
        r.unwrap_or_else(|e| panic!("{path}: {e:#}\n{console}"));
        assert!(console.contains("(zstd)"), "{console}");
        assert_installed(&target);
    }
}

#[test]
fn file_url_on_a_full_size_non_sparse_target() {
    // Target exactly as large as the image and full of old bytes: nothing is skipped and
    // the backup GPT lands where the image had it.
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk");
    std::fs::write(&target, noise((IMAGE_MIB * MIB) as usize, 9)).unwrap();
    let url = format!("file://{}", img.raw.display());
    let (r, console) = install(dir.path(), &request(&target, &url, &img.sha256));
    r.unwrap_or_else(|e| panic!("{e:#}\n{console}"));
    let disk = std::fs::read(&target).unwrap();
    let diff: Vec<usize> = (0..disk.len())
        .filter(|&i| disk[i] != img.bytes[i])
        .take(20)
        .collect();
    assert!(
        diff.is_empty(),
        "same-size install must reproduce the image exactly; differs at {diff:?}"
    );
    let v = sgdisk_verify(&target);
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn http_404_writes_nothing() {
    let img = image();
    let server = Server::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), TARGET_MIB);
    let (r, _) = install(
        dir.path(),
        &request(&target, &server.url("/missing.raw"), &img.sha256),
    );
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert!(msg.contains("nothing was written"), "{msg}");
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::blocks(&meta), 0);
    assert_unbootable(&target);
}

#[test]
fn wrong_expected_digest_leaves_disk_unbootable() {
    let img = image();
    let server = Server::start(vec![("/k8s-node.raw", img.bytes.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), TARGET_MIB);
    let wrong = Sha256Hex::of_bytes(b"another image");
    let (r, _) = install(
        dir.path(),
        &request(&target, &server.url("/k8s-node.raw"), &wrong),
    );
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(msg.contains("not bootable"), "{msg}");
    // The image body was written (the test is not vacuous), only the tables are missing.
    let disk = std::fs::read(&target).unwrap();
    let boot = (partitions(&img.raw)[2].0 * 512) as usize;
    assert!(disk[boot..boot + 4 * MIB as usize] == img.bytes[boot..boot + 4 * MIB as usize]);
    assert_unbootable(&target);
}

#[test]
fn corrupted_byte_mid_stream_leaves_disk_unbootable() {
    let img = image();
    let mut bad = img.bytes.clone();
    bad[(20 * MIB) as usize] ^= 0x40;
    let server = Server::start(vec![("/k8s-node.raw", bad)]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), TARGET_MIB);
    let (r, _) = install(
        dir.path(),
        &request(&target, &server.url("/k8s-node.raw"), &img.sha256),
    );
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert_unbootable(&target);
}

#[test]
fn short_stream_leaves_disk_unbootable() {
    let img = image();
    for (name, body) in [("raw", img.bytes.clone()), ("zst", img.zst.clone())] {
        let url = short_server(body.clone(), body.len() * 3 / 4);
        let url = if name == "zst" {
            url.replace(".raw", ".raw.zst")
        } else {
            url
        };
        let dir = tempfile::tempdir().unwrap();
        let target = sparse_target(dir.path(), TARGET_MIB);
        let (r, _) = install(dir.path(), &request(&target, &url, &img.sha256));
        let msg = format!("{:#}", r.unwrap_err());
        assert!(msg.contains("not bootable"), "{name}: {msg}");
        assert_unbootable(&target);
    }
}

#[test]
fn corrupt_zstd_stream_leaves_disk_unbootable() {
    let img = image();
    let mut bad = img.zst.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0xff;
    }
    let server = Server::start(vec![("/k8s-node.raw.zst", bad)]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), TARGET_MIB);
    let (r, _) = install(
        dir.path(),
        &request(&target, &server.url("/k8s-node.raw.zst"), &img.sha256),
    );
    assert!(r.is_err());
    assert_unbootable(&target);
}

#[test]
fn image_larger_than_target_fails_unbootable() {
    let img = image();
    let server = Server::start(vec![("/k8s-node.raw", img.bytes.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), IMAGE_MIB - 8);
    let (r, _) = install(
        dir.path(),
        &request(&target, &server.url("/k8s-node.raw"), &img.sha256),
    );
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("does not fit"), "{msg}");
    assert_eq!(
        std::fs::metadata(&target).unwrap().len(),
        (IMAGE_MIB - 8) * MIB,
        "a file target must not grow"
    );
    assert_unbootable(&target);
}

fn partitioned_target(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("used.disk");
    std::fs::write(&target, noise((TARGET_MIB * MIB) as usize, 5)).unwrap();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+8M", "-t", "1:8300"])
        .arg(&target));
    target
}

#[test]
fn existing_partition_table_is_refused_without_wipe_and_replaced_with_it() {
    let img = image();
    let server = Server::start(vec![("/k8s-node.raw", img.bytes.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let target = partitioned_target(dir.path());
    let before = Sha256Hex::of_file(&target).unwrap();
    let mut req = request(&target, &server.url("/k8s-node.raw"), &img.sha256);
    let (r, _) = install(dir.path(), &req);
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("a GPT partition table"), "{msg}");
    assert!(msg.contains("nodeboot.install.wipe=1"), "{msg}");
    assert_eq!(
        Sha256Hex::of_file(&target).unwrap(),
        before,
        "target changed"
    );
    assert_eq!(
        server.hits("/k8s-node.raw"),
        0,
        "image fetched before the refusal"
    );

    req.wipe = true;
    let (r, console) = install(dir.path(), &req);
    r.unwrap_or_else(|e| panic!("{e:#}\n{console}"));
    assert!(console.contains("wiping"), "{console}");
    assert_installed(&target);
}

#[test]
fn ext4_on_the_whole_disk_is_refused() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), TARGET_MIB);
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&target));
    let url = format!("file://{}", img.raw.display());
    let (r, _) = install(dir.path(), &request(&target, &url, &img.sha256));
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("an ext2/3/4 file system"), "{msg}");
}

#[test]
fn failed_wipe_install_leaves_no_trace_of_the_old_table() {
    let img = image();
    let server = Server::start(vec![("/k8s-node.raw", img.bytes.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let target = partitioned_target(dir.path());
    let mut req = request(
        &target,
        &server.url("/k8s-node.raw"),
        &Sha256Hex::of_bytes(b"x"),
    );
    req.wipe = true;
    let (r, _) = install(dir.path(), &req);
    assert!(r.is_err());
    assert_unbootable(&target);
}

#[test]
fn invalid_config_is_refused_before_anything_is_written() {
    let img = image();
    let bad = CONFIG.replace("[node]\n", "[node]\nflavour = \"x\"\n");
    let server = Server::start(vec![
        ("/k8s-node.raw", img.bytes.clone()),
        ("/node.toml", bad.into_bytes()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let target = partitioned_target(dir.path());
    let before = Sha256Hex::of_file(&target).unwrap();
    let mut req = request(&target, &server.url("/k8s-node.raw"), &img.sha256);
    req.config_url = Some(server.url("/node.toml"));
    req.wipe = true;
    let (r, _) = install(dir.path(), &req);
    let err = r.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("flavour"), "{msg}");
    assert!(msg.contains("nothing was written"), "{msg}");
    assert!(
        err.downcast_ref::<nodeboot::config::ConfigError>()
            .is_some(),
        "schema errors keep their type (exit code 2)"
    );
    assert_eq!(
        Sha256Hex::of_file(&target).unwrap(),
        before,
        "target changed"
    );
    assert_eq!(server.hits("/k8s-node.raw"), 0);
}

#[test]
fn reboot_command_runs_only_after_success() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("rebooted");
    let target = sparse_target(dir.path(), TARGET_MIB);
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0\n").unwrap();
    let mut h = host(dir.path(), &cmdline);
    h.reboot = Some(
        nodeimg_common::Cmd::new("sh")
            .arg("-c")
            .arg(format!("echo reboot > {}", marker.display())),
    );
    let url = format!("file://{}", img.raw.display());
    let bad = request(&target, &url, &Sha256Hex::of_bytes(b"x"));
    assert!(install::run(&bad, &h, &mut Vec::new()).is_err());
    assert!(!marker.exists(), "rebooted after a failure");
    let good = request(&target, &url, &img.sha256);
    install::run(&good, &h, &mut Vec::new()).unwrap();
    assert!(marker.exists(), "no reboot after success");
}

//! Auto-detection order (cmdline > NoCloud/config-drive > platform from DMI > file) over a
//! fake root directory, the volume sources (NoCloud, config drive) and the local file.

use std::fs;
use std::path::Path;
use std::time::Duration;

use nodeboot::sources::{
    detect_platform, fetch_user_data, fetch_user_data_and_meta, Platform, SourceKind, SourceOptions,
};
use nodeimg_tests::fakes::azure::FakeAzure;
use nodeimg_tests::fakes::imds::FakeImds;

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn opts(root: &Path) -> SourceOptions {
    SourceOptions {
        kind: SourceKind::Auto,
        cmdline_path: root.join("proc/cmdline"),
        root: root.to_path_buf(),
        local_file: root.join("etc/nodeboot/config.toml"),
        timeout: Duration::from_secs(2),
        retries: 1,
        backoff: Duration::from_millis(10),
        // Never the real link-local services from a test.
        ec2_base: "http://127.0.0.1:9".to_owned(),
        gce_base: "http://127.0.0.1:9".to_owned(),
        azure_base: "http://127.0.0.1:9".to_owned(),
        ..SourceOptions::default()
    }
}

fn ec2_dmi(root: &Path) {
    write(root, "sys/class/dmi/id/sys_vendor", b"Amazon EC2\n");
    write(root, "sys/class/dmi/id/product_name", b"t3.medium\n");
}

#[test]
fn platform_from_dmi() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    assert_eq!(detect_platform(r), None);
    write(r, "sys/class/dmi/id/sys_vendor", b"Microsoft Corporation\n");
    assert_eq!(detect_platform(r), None, "Hyper-V on premises is not Azure");
    write(
        r,
        "sys/class/dmi/id/chassis_asset_tag",
        b"7783-7084-3265-9085-8269-3286-77\n",
    );
    assert_eq!(detect_platform(r), Some(Platform::Azure));
    write(r, "sys/class/dmi/id/sys_vendor", b"Google\n");
    write(
        r,
        "sys/class/dmi/id/product_name",
        b"Google Compute Engine\n",
    );
    assert_eq!(detect_platform(r), Some(Platform::Gce));
    write(r, "sys/class/dmi/id/sys_vendor", b"Xen\n");
    write(r, "sys/class/dmi/id/product_name", b"HVM domU\n");
    write(
        r,
        "sys/class/dmi/id/product_uuid",
        b"EC2E1916-9099-7CAF-FD21-012345ABCDEF\n",
    );
    assert_eq!(detect_platform(r), Some(Platform::Ec2));
}

#[test]
fn order_cmdline_then_nocloud_then_platform_then_file() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let imds = FakeImds::start();
    imds.set_user_data(Some(b"from = \"ec2\"\n"));
    let mut o = opts(r);
    o.ec2_base = imds.url();

    write(r, "etc/nodeboot/config.toml", b"from = \"file\"\n");
    write(r, "proc/cmdline", b"ro quiet\n");
    assert_eq!(
        fetch_user_data(&o).unwrap().source,
        "file",
        "no DMI: IMDS is not asked"
    );
    assert_eq!(imds.token_puts(), 0);

    ec2_dmi(r);
    assert_eq!(fetch_user_data(&o).unwrap().source, "ec2");

    write(
        r,
        "seed/config-drive/openstack/latest/user_data",
        b"from = \"config-drive\"\n",
    );
    o.config_drive_dir = Some(r.join("seed/config-drive"));
    assert_eq!(fetch_user_data(&o).unwrap().source, "config-drive");

    write(r, "seed/nocloud/user-data", b"from = \"nocloud\"\n");
    write(
        r,
        "seed/nocloud/meta-data",
        b"instance-id: iid-1\nlocal-hostname: w-1\n",
    );
    o.nocloud_dir = Some(r.join("seed/nocloud"));
    let (ud, meta) = fetch_user_data_and_meta(&o).unwrap();
    assert_eq!(
        (ud.source, ud.bytes.as_slice()),
        ("nocloud", &b"from = \"nocloud\"\n"[..])
    );
    assert_eq!(meta.instance_id.as_deref(), Some("iid-1"));
    assert_eq!(meta.hostname.as_deref(), Some("w-1"));

    let url = url::Url::from_file_path(r.join("etc/nodeboot/config.toml")).unwrap();
    write(
        r,
        "proc/cmdline",
        format!("ro nodeboot.config={url}\n").as_bytes(),
    );
    assert_eq!(fetch_user_data(&o).unwrap().source, "cmdline");

    // Forcing a kind skips detection.
    o.kind = SourceKind::Ec2;
    assert_eq!(fetch_user_data(&o).unwrap().source, "ec2");
}

#[test]
fn absent_sources_fall_through_failed_ones_stop() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let imds = FakeImds::start();
    let mut o = opts(r);
    o.ec2_base = imds.url();
    ec2_dmi(r);
    write(r, "etc/nodeboot/config.toml", b"from = \"file\"\n");
    // IMDS 404 (no user-data) is absent: the local file is used.
    assert_eq!(fetch_user_data(&o).unwrap().source, "file");
    assert_eq!(imds.token_puts(), 1, "IMDS was asked");

    // A NoCloud seed with broken gzip fails, and does not fall back to the file.
    write(r, "seed/user-data", &[0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad]);
    o.nocloud_dir = Some(r.join("seed"));
    let msg = format!("{:#}", fetch_user_data(&o).unwrap_err());
    assert!(
        msg.contains("nocloud") && msg.contains("not valid gzip"),
        "{msg}"
    );
}

#[test]
fn nothing_anywhere_lists_what_was_tried() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "proc/cmdline", b"ro\n");
    let msg = format!("{:#}", fetch_user_data(&opts(d.path())).unwrap_err());
    for part in [
        "cmdline",
        "nocloud",
        "config-drive",
        "file",
        "cidata",
        "config-2",
    ] {
        assert!(msg.contains(part), "{part} missing in: {msg}");
    }
}

#[test]
fn azure_platform_is_detected_and_asked() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "sys/class/dmi/id/sys_vendor", b"Microsoft Corporation\n");
    write(
        r,
        "sys/class/dmi/id/chassis_asset_tag",
        b"7783-7084-3265-9085-8269-3286-77\n",
    );
    let fake = FakeAzure::start();
    fake.set_user_data(Some(b"from = \"azure\"\n"));
    let mut o = opts(r);
    o.azure_base = fake.url();
    assert_eq!(fetch_user_data(&o).unwrap().source, "azure");
}

#[test]
fn labelled_volume_is_mounted_and_mount_failure_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // A `cidata` label pointing at something that is no filesystem: the source applies
    // (the label exists) and fails with mount's own message, naming the device.
    write(r, "images/garbage.img", &[0u8; 4096]);
    fs::create_dir_all(r.join("dev/disk/by-label")).unwrap();
    std::os::unix::fs::symlink(
        r.join("images/garbage.img"),
        r.join("dev/disk/by-label/CIDATA"),
    )
    .unwrap();
    write(r, "etc/nodeboot/config.toml", b"from = \"file\"\n");
    let msg = format!("{:#}", fetch_user_data(&opts(r)).unwrap_err());
    assert!(
        msg.contains("mounting") && msg.contains("by-label/CIDATA"),
        "{msg}"
    );
}

/// A real iso9660 seed built with genisoimage and mounted through the `mount` command. Needs
/// root and a kernel with iso9660 support; skipped with a reason otherwise.
#[test]
fn real_cidata_iso_is_mounted_read_only() {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    // The effective uid from /proc: the workspace denies unsafe code, so no geteuid().
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root_user = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !root_user
        || !filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("iso9660"))
    {
        eprintln!("SKIP real_cidata_iso_is_mounted_read_only: needs root and iso9660 in /proc/filesystems (root: {root_user})");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "src/user-data", b"from = \"iso\"\n");
    write(r, "src/meta-data", b"instance-id: iid-iso\n");
    nodeimg_common::Cmd::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(r.join("seed.iso"))
        .arg(r.join("src/user-data"))
        .arg(r.join("src/meta-data"))
        .run()
        .unwrap();
    fs::create_dir_all(r.join("dev/disk/by-label")).unwrap();
    std::os::unix::fs::symlink(r.join("seed.iso"), r.join("dev/disk/by-label/cidata")).unwrap();
    let (ud, meta) = fetch_user_data_and_meta(&opts(r)).unwrap();
    assert_eq!(
        (ud.source, ud.bytes.as_slice()),
        ("nocloud", &b"from = \"iso\"\n"[..])
    );
    assert_eq!(meta.instance_id.as_deref(), Some("iid-iso"));
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains("nodeboot-seed."), "unmounted afterwards");
}

#[test]
fn config_drive_and_seed_without_user_data() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "cd/openstack/latest/user_data", b"from = \"cd\"\n");
    write(
        r,
        "cd/openstack/latest/meta_data.json",
        br#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "w-2"}"#,
    );
    let mut o = opts(r);
    o.kind = SourceKind::ConfigDrive;
    o.config_drive_dir = Some(r.join("cd"));
    let (ud, meta) = fetch_user_data_and_meta(&o).unwrap();
    assert_eq!(ud.bytes, b"from = \"cd\"\n");
    assert_eq!(meta.hostname.as_deref(), Some("w-2"));
    // A seed with meta-data only has nothing for nodeboot: absent, not an error, in auto mode.
    write(r, "nc/meta-data", b"instance-id: x\n");
    o.kind = SourceKind::Auto;
    o.config_drive_dir = None;
    o.nocloud_dir = Some(r.join("nc"));
    write(r, "etc/nodeboot/config.toml", b"from = \"file\"\n");
    assert_eq!(fetch_user_data(&o).unwrap().source, "file");
    // Malformed meta-data is an error naming the file.
    write(r, "nc/user-data", b"x = 1\n");
    write(r, "nc/meta-data", b"instance-id: [unclosed\n");
    let msg = format!("{:#}", fetch_user_data(&o).unwrap_err());
    assert!(
        msg.contains("meta-data") && msg.contains("malformed"),
        "{msg}"
    );
}

//! `disk::build` against the real tools: a disk made from small trees is checked with
//! `sgdisk -v`, `e2fsck -fn`, `fsck.vfat -n`, `debugfs`, `mdir` and `blkid`, the GRUB BIOS
//! embedding is checked byte by byte, and two builds are compared for bit-identity.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nodeimg_builder::disk::{self, DiskInput, DiskReport, PartitionRole};
use nodeimg_builder::export::{self, Compression, ExportOptions};
use nodeimg_builder::recipe::schema::{Firmware, Format};
use nodeimg_common::digest::Sha256Hex;

const MIB: u64 = 1 << 20;

/// A `/boot` tree shaped like the deploy stage's output, and a sysroot with a hardlinked
/// object, a symlink, an xattr and an empty `boot/` mount point.
fn fixture_trees(dir: &Path) -> (PathBuf, PathBuf) {
    let boot = dir.join("boot_tree");
    let root = dir.join("root_tree");
    let kdir = boot.join("ostree/test-0123abcd");
    fs::create_dir_all(&kdir).unwrap();
    fs::write(kdir.join("vmlinuz-6.1.0-test-amd64"), vec![0x4bu8; 300_000]).unwrap();
    fs::write(
        kdir.join("initramfs-6.1.0-test-amd64.img"),
        vec![0x1du8; 500_000],
    )
    .unwrap();
    fs::create_dir_all(boot.join("loader.1/entries")).unwrap();
    fs::write(
        boot.join("loader.1/entries/ostree-1-test.conf"),
        "title test\nlinux /ostree/test-0123abcd/vmlinuz-6.1.0-test-amd64\n",
    )
    .unwrap();
    fs::write(boot.join("loader.1/grub.cfg"), "set default=0\n").unwrap();
    symlink("loader.1", boot.join("loader")).unwrap();
    symlink(".", boot.join("boot")).unwrap();
    fs::create_dir_all(boot.join("grub")).unwrap();
    fs::write(
        boot.join("grub/grub.cfg"),
        "search --no-floppy --label --set=root boot\nconfigfile ($root)/loader/grub.cfg\n",
    )
    .unwrap();

    let objects = root.join("ostree/repo/objects/ab");
    fs::create_dir_all(&objects).unwrap();
    let deploy = root.join("ostree/deploy/test/deploy/0123.0/usr/bin");
    fs::create_dir_all(&deploy).unwrap();
    fs::write(objects.join("cdef.file"), b"#!/bin/sh\necho hello\n").unwrap();
    fs::hard_link(objects.join("cdef.file"), deploy.join("hello")).unwrap();
    fs::create_dir_all(root.join("boot")).unwrap();
    symlink("sysroot/ostree", root.join("ostree-link")).unwrap();
    let status = Command::new("setfattr")
        .args(["-n", "user.nodeimg", "-v", "kept"])
        .arg(objects.join("cdef.file"))
        .status()
        .unwrap();
    assert!(status.success(), "setfattr (package attr) must work here");
    (root, boot)
}

fn seed(c: char) -> Sha256Hex {
    c.to_string().repeat(64).parse().unwrap()
}

fn input(root: &Path, boot: &Path) -> DiskInput {
    DiskInput {
        root_tree: root.to_owned(),
        boot_tree: boot.to_owned(),
        size: None,
        boot_size: 64 * MIB,
        esp_size: 40 * MIB,
        firmware: vec![Firmware::Bios, Firmware::Uefi],
        seed: seed('c'),
        grub_modules_dir: None,
        source_date_epoch: 1_700_000_000,
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn offset_of(report: &DiskReport, number: u32) -> u64 {
    report.partitions[number as usize - 1].start_lba * 512
}

#[test]
fn built_disk_passes_the_real_checkers() {
    let d = tempfile::tempdir().unwrap();
    let (root, boot) = fixture_trees(d.path());
    let out = d.path().join("out/disk.raw");
    let report = disk::build(&input(&root, &boot), &out).unwrap();

    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), report.size);
    assert_eq!(report.size % MIB, 0);
    assert!(
        meta.blocks() * 512 < report.size / 4,
        "image must stay sparse: {} of {} bytes allocated",
        meta.blocks() * 512,
        report.size
    );

    // Partition table.
    let v = run(Command::new("sgdisk").arg("-v").arg(&out));
    assert!(v.contains("No problems found"), "{v}");
    let table = run(Command::new("sgdisk").arg("-p").arg(&out));
    assert!(
        table.contains(&format!(
            "Disk identifier (GUID): {}",
            report.disk_guid.to_string().to_uppercase()
        )),
        "{table}"
    );
    for p in &report.partitions {
        let info = run(Command::new("sgdisk")
            .arg(format!("--info={}", p.number))
            .arg(&out))
        .to_uppercase();
        assert!(
            info.contains(&format!("PARTITION UNIQUE GUID: {}", p.partition_guid).to_uppercase()),
            "{info}"
        );
        assert!(
            info.contains(&p.type_guid.to_string().to_uppercase()),
            "{info}"
        );
        assert!(
            info.contains(&format!("FIRST SECTOR: {} ", p.start_lba)),
            "{info}"
        );
    }
    assert_eq!(report.partitions[0].start_lba, 2048);
    assert_eq!(report.partitions[1].start_lba, 4096);

    // ext4 partitions: clean fsck, label and UUID from the plan, expected files.
    for (number, label) in [(3u32, "boot"), (4, "root")] {
        let spec = format!("{}?offset={}", out.display(), offset_of(&report, number));
        run(Command::new("e2fsck").arg("-fn").arg(&spec));
        let blkid = run(Command::new("blkid")
            .args(["-p", "-o", "export", "-O"])
            .arg(offset_of(&report, number).to_string())
            .arg(&out));
        assert!(blkid.contains(&format!("LABEL={label}")), "{blkid}");
        let uuid = report.partitions[number as usize - 1].fs_uuid.unwrap();
        assert!(blkid.contains(&format!("UUID={uuid}")), "{blkid}");
        let features = run(Command::new("debugfs").args(["-R", "features"]).arg(&spec));
        assert!(
            !features.contains("metadata_csum_seed") && !features.contains("orphan_file"),
            "{features}"
        );
        let stats = run(Command::new("debugfs").args(["-R", "stats"]).arg(&spec));
        assert!(stats.contains("Block size:               4096"), "{stats}");
    }
    let boot_spec = format!("{}?offset={}", out.display(), offset_of(&report, 3));
    let ls = run(Command::new("debugfs")
        .args(["-R", "ls -l /ostree/test-0123abcd"])
        .arg(&boot_spec));
    assert!(
        ls.contains("vmlinuz-6.1.0-test-amd64") && ls.contains("300000"),
        "{ls}"
    );
    let link = run(Command::new("debugfs")
        .args(["-R", "stat /loader"])
        .arg(&boot_spec));
    assert!(
        link.contains("Type: symlink") && link.contains("loader.1"),
        "{link}"
    );
    let cat = run(Command::new("debugfs")
        .args(["-R", "cat /grub/grub.cfg"])
        .arg(&boot_spec));
    assert!(cat.contains("configfile ($root)/loader/grub.cfg"), "{cat}");

    let root_spec = format!("{}?offset={}", out.display(), offset_of(&report, 4));
    let hl = run(Command::new("debugfs")
        .args(["-R", "stat /ostree/deploy/test/deploy/0123.0/usr/bin/hello"])
        .arg(&root_spec));
    assert!(hl.contains("Links: 2"), "hardlink kept: {hl}");
    let xattr = run(Command::new("debugfs")
        .args([
            "-R",
            "ea_get /ostree/repo/objects/ab/cdef.file user.nodeimg",
        ])
        .arg(&root_spec));
    assert!(xattr.contains("kept"), "{xattr}");
    let bootdir = run(Command::new("debugfs")
        .args(["-R", "ls /boot"])
        .arg(&root_spec));
    assert!(
        !bootdir.contains("loader"),
        "root must not hold /boot content: {bootdir}"
    );

    // ESP: extract (sparse) and check with fsck.vfat and mtools.
    let esp = &report.partitions[1];
    let esp_file = d.path().join("esp.img");
    run(Command::new("dd")
        .arg(format!("if={}", out.display()))
        .arg(format!("of={}", esp_file.display()))
        .args(["bs=512", "conv=sparse", "status=none"])
        .arg(format!("skip={}", esp.start_lba))
        .arg(format!("count={}", esp.sectors)));
    run(Command::new("fsck.vfat").arg("-n").arg(&esp_file));
    let dir = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp_file)
        .arg("::/EFI/BOOT"));
    assert!(dir.contains("BOOTX64  EFI"), "{dir}");
    assert!(
        dir.contains("2023-11-14"),
        "ESP dates come from SOURCE_DATE_EPOCH: {dir}"
    );
    let blkid = run(Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&esp_file));
    assert!(
        blkid.contains("LABEL=ESP") && blkid.contains("TYPE=vfat"),
        "{blkid}"
    );

    // GRUB BIOS embedding (reference boot-pipeline.md §10, expected bytes).
    let bytes = fs::read(&out).unwrap();
    assert_eq!(&bytes[0x5c..0x64], &2048u64.to_le_bytes());
    assert_eq!(&bytes[0x66..0x68], &[0x90, 0x90]);
    assert_eq!(bytes[0x1c2], 0xee, "protective MBR entry kept");
    assert_eq!(&bytes[0x1fe..0x200], &[0x55, 0xaa]);
    let core = 2048 * 512;
    assert_eq!(&bytes[core + 0x1f4..core + 0x1fc], &2049u64.to_le_bytes());
    assert_eq!(&bytes[core + 0x1fe..core + 0x200], &[0x20, 0x08]);
    let core_sectors = u16::from_le_bytes([bytes[core + 0x1fc], bytes[core + 0x1fd]]);
    assert!(core_sectors > 100 && core_sectors < 2047, "{core_sectors}");
    // The GRUB UEFI image is an x86_64 PE file on the ESP.
    let esp_bytes = fs::read(&esp_file).unwrap();
    assert!(esp_bytes.windows(4).any(|w| w == b"PE\0\0"));
}

#[test]
fn builds_are_bit_identical_and_seeded() {
    let d = tempfile::tempdir().unwrap();
    let (root, boot) = fixture_trees(d.path());
    let a = d.path().join("a.raw");
    let b = d.path().join("b.raw");
    let c = d.path().join("c.raw");
    let inp = input(&root, &boot);
    disk::build(&inp, &a).unwrap();
    // Different wall-clock time, same input.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    disk::build(&inp, &b).unwrap();
    let ha = Sha256Hex::of_file(&a).unwrap();
    assert_eq!(ha, Sha256Hex::of_file(&b).unwrap());
    // Exports of the two builds are identical too.
    for (format, compression) in [
        (Format::Raw, Compression::None),
        (Format::Qcow2, Compression::None),
        (Format::Qcow2, Compression::Zstd),
        (Format::Vhd, Compression::None),
    ] {
        let opts = ExportOptions {
            compression,
            timestamp: None,
            disk_id: None,
        };
        let ea = export::write(format, &a, &d.path().join("a.out"), &opts).unwrap();
        let eb = export::write(format, &b, &d.path().join("b.out"), &opts).unwrap();
        assert_eq!(ea.sha256, eb.sha256, "{format} {compression:?}");
        assert_eq!(
            eb.sha256,
            Sha256Hex::of_file(&d.path().join("b.out")).unwrap()
        );
    }
    let mut other = inp.clone();
    other.seed = seed('d');
    let rc = disk::build(&other, &c).unwrap();
    assert_ne!(ha, Sha256Hex::of_file(&c).unwrap());
    let blkid = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(offset_of(&rc, 4).to_string())
        .arg(&c));
    assert!(
        blkid.contains(&rc.partitions[3].fs_uuid.unwrap().to_string()),
        "{blkid}"
    );
}

#[test]
fn given_size_is_used_and_too_small_fails_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let (root, boot) = fixture_trees(d.path());
    let outdir = d.path().join("out");
    fs::create_dir(&outdir).unwrap();

    let mut inp = input(&root, &boot);
    inp.size = Some(200 * MIB);
    inp.firmware = vec![Firmware::Uefi];
    let ok = disk::build(&inp, &outdir.join("given.raw")).unwrap();
    assert_eq!(ok.size, 200 * MIB);
    assert_eq!(
        ok.partitions[3].sectors * 512,
        (200 - 2 - 1 - 40 - 64) * MIB
    );
    // UEFI only: no GRUB in the MBR, the BIOS boot partition stays empty.
    let bytes = fs::read(outdir.join("given.raw")).unwrap();
    assert!(bytes[..440].iter().all(|b| *b == 0));
    fs::remove_file(outdir.join("given.raw")).unwrap();

    inp.size = Some(150 * MIB);
    let err = disk::build(&inp, &outdir.join("small.raw")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("too small") && msg.contains("150 MiB") && msg.contains("needs at least"),
        "{msg}"
    );
    assert_eq!(
        fs::read_dir(&outdir).unwrap().count(),
        0,
        "nothing left behind"
    );

    inp.size = None;
    inp.firmware.clear();
    let err = disk::build(&inp, &outdir.join("nofw.raw")).unwrap_err();
    assert!(format!("{err:#}").contains("no firmware"), "{err:#}");

    inp.firmware = vec![Firmware::Bios];
    inp.root_tree = d.path().join("missing");
    let err = disk::build(&inp, &outdir.join("missing.raw")).unwrap_err();
    assert!(format!("{err:#}").contains("missing"), "{err:#}");
    assert_eq!(
        fs::read_dir(&outdir).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn plan_only_is_exposed_and_matches_build_layout() {
    let d = tempfile::tempdir().unwrap();
    let (root, boot) = fixture_trees(d.path());
    let (plan, usage, _) = disk::plan(&input(&root, &boot)).unwrap();
    assert!(usage.inodes >= 10);
    assert_eq!(plan.partition(PartitionRole::Esp).size(), 40 * MIB);
    assert_eq!(plan.partition(PartitionRole::Boot).size(), 64 * MIB);
}

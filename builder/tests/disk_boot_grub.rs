//! The bootloader part of `disk::build`, proven in qemu (TCG): SeaBIOS runs the embedded
//! boot.img → core.img chain, OVMF runs `EFI/BOOT/BOOTX64.EFI` from the ESP; both GRUB cores
//! must find the ext4 filesystem labelled `boot` and execute its `grub/grub.cfg`, which
//! prints a marker with GRUB's platform and root device. No kernel is needed for that; the
//! full OS boot is the deploy stage's end-to-end test.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use nodeimg_builder::boot::{boot_to_marker, AccelChoice, Firmware as VmFirmware, VmConfig};
use nodeimg_builder::disk::{self, DiskInput};
use nodeimg_builder::export::{self, Compression, ExportOptions};
use nodeimg_builder::recipe::schema::{Firmware, Format};
use regex::Regex;

const MIB: u64 = 1 << 20;

fn build_disk(dir: &Path) -> std::path::PathBuf {
    let boot = dir.join("boot_tree");
    let root = dir.join("root_tree");
    fs::create_dir_all(boot.join("grub")).unwrap();
    fs::create_dir_all(boot.join("loader.0")).unwrap();
    symlink("loader.0", boot.join("loader")).unwrap();
    fs::write(
        boot.join("grub/grub.cfg"),
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         echo \"NODEIMG-GRUB platform=${grub_platform} root=${root}\"\n\
         halt\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::create_dir_all(root.join("ostree/repo")).unwrap();
    let out = dir.join("grub-test.raw");
    disk::build(
        &DiskInput {
            root_tree: root,
            boot_tree: boot,
            size: None,
            boot_size: 64 * MIB,
            esp_size: 40 * MIB,
            firmware: vec![Firmware::Bios, Firmware::Uefi],
            seed: "e".repeat(64).parse().unwrap(),
            grub_modules_dir: None,
            source_date_epoch: 1_700_000_000,
        },
        &out,
    )
    .unwrap();
    out
}

#[test]
fn grub_finds_boot_partition_on_bios_and_uefi() {
    let d = tempfile::tempdir().unwrap();
    let disk = build_disk(d.path());
    let marker = Regex::new(r"NODEIMG-GRUB platform=(\w+) root=(hd\d+,gpt\d+)").unwrap();
    for (firmware, platform) in [(VmFirmware::Bios, "pc"), (VmFirmware::Uefi, "efi")] {
        let mut cfg = VmConfig::new(&disk);
        cfg.firmware = firmware;
        cfg.accel = AccelChoice::Tcg;
        cfg.memory_mib = 512;
        cfg.cpus = 1;
        let (_vm, report) = boot_to_marker(&cfg, &marker, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{firmware}: {e:#}"));
        let caps = marker.captures(&report.marker_line).unwrap();
        assert_eq!(&caps[1], platform, "{}", report.marker_line);
        // Partition 3 is /boot: GRUB found it by its label.
        assert!(caps[2].ends_with(",gpt3"), "{}", report.marker_line);
        eprintln!(
            "{firmware}: GRUB read /boot/grub/grub.cfg after {:.1}s",
            report.to_marker.as_secs_f64()
        );
    }
}

/// qemu boots the exported images: our zstd-compressed qcow2 and our fixed VHD read back
/// correctly as a guest's boot disk.
#[test]
fn exported_qcow2_and_vhd_boot_grub() {
    let d = tempfile::tempdir().unwrap();
    let raw = build_disk(d.path());
    let marker = Regex::new(r"NODEIMG-GRUB platform=pc root=(hd\d+,gpt3)").unwrap();
    for (format, compression, name) in [
        (Format::Qcow2, Compression::Zstd, "disk.qcow2"),
        (Format::Qcow2, Compression::Zlib, "disk-zlib.qcow2"),
        (Format::Vhd, Compression::None, "disk.vhd"),
    ] {
        let out = d.path().join(name);
        export::write(
            format,
            &raw,
            &out,
            &ExportOptions {
                compression,
                timestamp: None,
                disk_id: None,
            },
        )
        .unwrap();
        let mut cfg = VmConfig::new(&out);
        cfg.accel = AccelChoice::Tcg;
        cfg.memory_mib = 512;
        cfg.cpus = 1;
        boot_to_marker(&cfg, &marker, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

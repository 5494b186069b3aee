//! End to end (run by `ci/e2e`, ignored by `cargo test`): the images `nodeimg build` made
//! from `tests/recipes/e2e.toml`, booted under qemu — by default the qcow2 with SeaBIOS and
//! with OVMF, the raw image with SeaBIOS, the fixed VHD with OVMF and the dynamic VHD with
//! SeaBIOS, so every format and both firmwares boot the whole OS —, each on a fresh overlay (so each boot is a first boot), with
//! the NoCloud seed carrying `tests/recipes/e2e/user-data.toml`.
//!
//! The image's report unit (`tests/recipes/e2e/report.sh`) prints `E2E-*` lines on the serial
//! console after nodeboot has run, then powers off. Asserted: the booted deployment is the
//! built commit, the kernel command line is the recipe's, no unit failed, the seed was found,
//! and nodeboot completed first boot (`kubeadm init` through the kubeadm double, join material
//! published to the file store).
//!
//! Inputs from the environment:
//! - `NODEIMG_E2E_MANIFEST` (required): the build's `manifest.json`;
//! - `NODEIMG_E2E_WORKDIR` (default `/var/tmp/nodeimg-e2e-work`): seed, serial logs;
//! - `NODEIMG_E2E_BOOTS` (default `qcow2:bios,qcow2:uefi,raw:bios,vhd:uefi,vhd-dynamic:bios`):
//!   which image boots under which firmware, in order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeimg_builder::boot::serial::report_values as values;
use nodeimg_builder::boot::{self, seed, AccelChoice, Firmware, VmConfig};
use nodeimg_builder::build::pxe::copy_from_commit;
use nodeimg_builder::manifest::Manifest;
use regex::Regex;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[test]
#[ignore = "boots real images for minutes; run by ci/e2e"]
fn built_images_boot_bios_and_uefi_and_run_nodeboot() {
    let manifest_path =
        PathBuf::from(std::env::var("NODEIMG_E2E_MANIFEST").expect("NODEIMG_E2E_MANIFEST"));
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let out_dir = manifest_path.parent().unwrap();
    let commit = manifest.commit.checksum.clone();
    let work = PathBuf::from(env_or("NODEIMG_E2E_WORKDIR", "/var/tmp/nodeimg-e2e-work"));
    std::fs::create_dir_all(&work).unwrap();
    let boots: Vec<(String, Firmware)> = env_or(
        "NODEIMG_E2E_BOOTS",
        "qcow2:bios,qcow2:uefi,raw:bios,vhd:uefi,vhd-dynamic:bios",
    )
    .split(',')
    .map(|b| {
        let (format, firmware) = b
            .trim()
            .split_once(':')
            .unwrap_or_else(|| panic!("NODEIMG_E2E_BOOTS: `{b}` is not FORMAT:FIRMWARE"));
        let firmware = match firmware {
            "bios" => Firmware::Bios,
            "uefi" => Firmware::Uefi,
            other => panic!("NODEIMG_E2E_BOOTS: unknown firmware {other}"),
        };
        (format.to_owned(), firmware)
    })
    .collect();

    // Probe KVM with the image's own kernel (the only proof that counts, see boot::kvm).
    let kernel = work.join("probe-vmlinuz");
    copy_from_commit(
        Path::new(&manifest.commit.repo),
        &commit,
        &format!(
            "/usr/lib/modules/{}/vmlinuz",
            manifest.inputs.kernel_version
        ),
        &kernel,
    )
    .unwrap();
    let accel = if boot::kvm::probe(Some(&kernel)) {
        AccelChoice::Kvm
    } else {
        AccelChoice::Tcg
    };

    let user_data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/recipes/e2e/user-data.toml");
    let seed_iso = work.join("seed.iso");
    seed::from_user_data(&user_data, &seed_iso).unwrap();

    let marker = Regex::new(r"E2E-MARKER: reached multi-user\.target").unwrap();
    let done = Regex::new(r"E2E-DONE$").unwrap();
    for (format, firmware) in boots {
        let output = manifest
            .outputs
            .iter()
            .find(|o| o.format == format)
            .unwrap_or_else(|| panic!("the build produced no {format} image"));
        let image = out_dir.join(&output.name);
        let mut cfg = VmConfig::new(&image);
        cfg.firmware = firmware;
        cfg.accel = accel;
        cfg.seed_iso = Some(seed_iso.clone());
        cfg.serial_log = Some(work.join(format!("serial-{format}-{firmware}.log")));
        let (mut vm, report) =
            boot::boot_to_marker(&cfg, &marker, Duration::from_secs(900)).unwrap();
        vm.wait_for(&done, Duration::from_secs(180)).unwrap();
        let text = vm.serial_text().unwrap();
        let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
        eprintln!(
            "BOOT-TIME image={format} firmware={firmware} accel={} to_marker={:.1}s poweroff_at={:.1}s ({status}) guest: {}",
            report.accel,
            report.to_marker.as_secs_f64(),
            vm.elapsed().as_secs_f64(),
            report.marker_line
        );
        for line in text.lines().filter(|l| l.contains("E2E-")) {
            eprintln!("  {line}");
        }
        assert_eq!(values(&text, "E2E-BOOTED"), [commit.as_str()], "{text}");
        assert_eq!(values(&text, "E2E-FAILED-COUNT"), ["0"], "{text}");
        let cmdline = values(&text, "E2E-CMDLINE");
        assert_eq!(cmdline.len(), 1, "{text}");
        assert!(
            cmdline[0].contains("root=LABEL=root rw console=ttyS0,115200 systemd.show_status=1"),
            "{}",
            cmdline[0]
        );
        assert!(
            cmdline[0].contains(" ostree=/ostree/boot."),
            "{}",
            cmdline[0]
        );
        assert!(
            values(&text, "E2E-CIDATA")
                .first()
                .is_some_and(|v| v.starts_with("found on /dev/vdb")),
            "{text}"
        );
        assert_eq!(values(&text, "E2E-NODEBOOT"), ["success 0"], "{text}");
        assert_eq!(values(&text, "E2E-NODEBOOT-DONE"), ["yes"], "{text}");
    }
}

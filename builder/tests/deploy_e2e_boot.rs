//! End to end (run by `ci/e2e`, ignored by `cargo test`): a real commit → deploy → disk →
//! boot under qemu with SeaBIOS and with OVMF to `multi-user.target`.
//!
//! The commit must contain a report unit that prints, on the serial console,
//! `E2E-MARKER:`, `E2E-CMDLINE:`, `E2E-BOOTED: <commit>`, `E2E-FAILED-COUNT: <n>`,
//! `E2E-CIDATA: ...` and `E2E-DONE`, then powers off (`ci/e2e` layers it onto the commit under
//! test). Inputs from the environment:
//! - `NODEIMG_E2E_REPO` (required): repository holding the commit;
//! - `NODEIMG_E2E_REF` (default `debian/bookworm/x86_64`);
//! - `NODEIMG_E2E_WORKDIR` (default `/var/tmp/nodeimg-e2e-work`): sysroot and disk image;
//! - `NODEIMG_E2E_FIRMWARE` (default `bios,uefi`).

use std::path::PathBuf;
use std::time::Duration;

use nodeimg_builder::boot::serial::report_values as values;
use nodeimg_builder::boot::{self, seed, AccelChoice, Firmware, VmConfig};
use nodeimg_builder::deploy::{self, bls, DeployRequest};
use nodeimg_builder::disk::{self, DiskInput};
use nodeimg_builder::recipe::schema::{self, Disk};
use nodeimg_common::digest::Sha256Hex;
use regex::Regex;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[test]
#[ignore = "boots real images for minutes; run by ci/e2e"]
fn deploy_disk_boot_bios_and_uefi() {
    let repo = PathBuf::from(std::env::var("NODEIMG_E2E_REPO").expect("NODEIMG_E2E_REPO"));
    let ref_name = env_or("NODEIMG_E2E_REF", "debian/bookworm/x86_64");
    let work = PathBuf::from(env_or("NODEIMG_E2E_WORKDIR", "/var/tmp/nodeimg-e2e-work"));
    let firmwares: Vec<Firmware> = env_or("NODEIMG_E2E_FIRMWARE", "bios,uefi")
        .split(',')
        .map(|f| match f.trim() {
            "bios" => Firmware::Bios,
            "uefi" => Firmware::Uefi,
            other => panic!("NODEIMG_E2E_FIRMWARE: unknown firmware {other}"),
        })
        .collect();
    std::fs::create_dir_all(&work).unwrap();

    let deployed = deploy::deploy(&DeployRequest {
        repo,
        ref_name: ref_name.clone(),
        osname: "debian".into(),
        kernel_args: vec![
            "console=ttyS0,115200".into(),
            "quiet".into(),
            "systemd.show_status=1".into(),
        ],
        remote: Some(("nodeimg".into(), "http://127.0.0.1:8080/repo".into())),
        gpg_key: None,
        workdir: work.clone(),
    })
    .unwrap();
    let commit = deployed.commit.clone();

    let image = work.join("e2e.img");
    let mut input = DiskInput::from_recipe(
        &Disk::default(),
        &deployed.root_tree,
        &deployed.boot_tree,
        commit.parse::<Sha256Hex>().unwrap(),
    );
    input.firmware = vec![schema::Firmware::Bios, schema::Firmware::Uefi];
    let report = disk::build(&input, &image).unwrap();
    eprintln!(
        "disk: {} MiB virtual, {} MiB allocated",
        report.size >> 20,
        report.allocated >> 20
    );
    // Probe KVM with the image's own kernel (the only proof that counts, see boot::kvm).
    let entries = bls::read_entries(&deployed.boot_tree.join("loader/entries")).unwrap();
    let kernel = work.join("probe-vmlinuz");
    std::fs::copy(
        deployed
            .boot_tree
            .join(entries[0].linux.as_str().trim_start_matches('/')),
        &kernel,
    )
    .unwrap();
    let accel = if boot::kvm::probe(Some(&kernel)) {
        AccelChoice::Kvm
    } else {
        AccelChoice::Tcg
    };
    deployed.remove().unwrap();

    let user_data = work.join("user-data");
    std::fs::write(&user_data, "#!/bin/sh\necho e2e user-data\n").unwrap();
    let seed_iso = work.join("seed.iso");
    seed::from_user_data(&user_data, &seed_iso).unwrap();

    let marker = Regex::new(r"E2E-MARKER: reached multi-user\.target").unwrap();
    let done = Regex::new(r"E2E-DONE$").unwrap();
    for firmware in firmwares {
        let mut cfg = VmConfig::new(&image);
        cfg.firmware = firmware;
        cfg.accel = accel;
        cfg.seed_iso = Some(seed_iso.clone());
        cfg.serial_log = Some(work.join(format!("serial-{firmware}.log")));
        let (mut vm, report) =
            boot::boot_to_marker(&cfg, &marker, Duration::from_secs(600)).unwrap();
        vm.wait_for(&done, Duration::from_secs(120)).unwrap();
        let text = vm.serial_text().unwrap();
        let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
        eprintln!(
            "BOOT-TIME firmware={firmware} accel={} to_marker={:.1}s poweroff_at={:.1}s ({status}) guest: {}",
            report.accel,
            report.to_marker.as_secs_f64(),
            vm.elapsed().as_secs_f64(),
            report.marker_line
        );
        assert_eq!(values(&text, "E2E-BOOTED"), [commit.as_str()], "{text}");
        assert_eq!(values(&text, "E2E-FAILED-COUNT"), ["0"], "{text}");
        let cmdline = values(&text, "E2E-CMDLINE");
        assert_eq!(cmdline.len(), 1, "{text}");
        assert!(
            cmdline[0].contains("root=LABEL=root rw console=ttyS0,115200"),
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
    }
}

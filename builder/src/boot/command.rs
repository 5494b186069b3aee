//! `nodeimg boot IMAGE`: boot a disk image headless in qemu and report the time to a marker
//! line on the serial console.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use regex::Regex;

use super::qemu::{AccelChoice, Firmware, VmConfig};
use crate::progress;

/// Default marker: the serial getty's login prompt, or systemd reaching multi-user.target.
pub const DEFAULT_MARKER: &str = r"login: |Reached target .*Multi-User System";

/// Accelerator selection on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM if a short probe boot proves it works, else TCG.
    Auto,
    Tcg,
    Kvm,
}

/// Boot a disk image in qemu (never modified: writes go to a temporary overlay).
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Disk image: raw, qcow2 or vhd.
    pub image: PathBuf,
    #[arg(long, value_enum, default_value = "bios")]
    pub firmware: Firmware,
    /// Directory with `user-data` (and optionally `meta-data`) for a NoCloud seed.
    #[arg(long, conflicts_with = "user_data")]
    pub seed: Option<PathBuf>,
    /// A user-data file for a NoCloud seed (meta-data is generated).
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// Seconds to wait for the marker.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Regular expression matched against each serial console line.
    #[arg(long, default_value = DEFAULT_MARKER)]
    pub marker: String,
    /// Keep the serial console in this file (default: a temporary file).
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// After the marker, wait (up to --timeout) for the guest to power off.
    #[arg(long)]
    pub wait_poweroff: bool,
}

pub fn run(args: &BootArgs) -> Result<()> {
    let marker = Regex::new(&args.marker).with_context(|| {
        format!(
            "--marker `{}` is not a valid regular expression",
            args.marker
        )
    })?;
    let timeout = Duration::from_secs(args.timeout);
    let seed_dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut cfg = VmConfig::new(&args.image);
    cfg.firmware = args.firmware;
    cfg.accel = match args.accel {
        AccelArg::Auto => AccelChoice::Auto,
        AccelArg::Tcg => AccelChoice::Tcg,
        AccelArg::Kvm => AccelChoice::Kvm,
    };
    cfg.serial_log = args.serial_log.clone();
    if let Some(dir) = &args.seed {
        let iso = seed_dir.path().join("seed.iso");
        super::seed::from_dir(dir, &iso)?;
        cfg.seed_iso = Some(iso);
    } else if let Some(ud) = &args.user_data {
        let iso = seed_dir.path().join("seed.iso");
        super::seed::from_user_data(ud, &iso)?;
        cfg.seed_iso = Some(iso);
    }

    let step = progress::step(format!("boot {} ({})", args.image.display(), args.firmware));
    let (mut vm, report) = super::boot_to_marker(&cfg, &marker, timeout)?;
    step.note(format!("serial log: {}", vm.serial_log().display()));
    println!(
        "boot time: {:.1}s to marker (firmware {}, accel {})",
        report.to_marker.as_secs_f64(),
        report.firmware,
        report.accel
    );
    println!("marker: {}", report.marker_line);
    if args.wait_poweroff {
        let status = vm.wait_exit(timeout)?;
        println!(
            "powered off after {:.1}s ({status})",
            vm.elapsed().as_secs_f64()
        );
    }
    step.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_subcommand_boots_with_a_seed_and_keeps_the_serial_log() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("tiny.img");
        std::fs::write(
            &disk,
            super::super::test_disk::boot_sector_disk("CLI-BOOT-OK").unwrap(),
        )
        .unwrap();
        let user_data = d.path().join("user-data");
        std::fs::write(&user_data, "#!/bin/sh\n").unwrap();
        let log = d.path().join("serial.log");
        let args: Vec<std::ffi::OsString> = [
            "nodeimg",
            "boot",
            disk.to_str().unwrap(),
            "--accel",
            "tcg",
            "--marker",
            "^CLI-BOOT-OK$",
            "--timeout",
            "60",
            "--user-data",
            user_data.to_str().unwrap(),
            "--serial-log",
            log.to_str().unwrap(),
        ]
        .iter()
        .map(Into::into)
        .collect();
        crate::cli::run(args).unwrap();
        assert!(std::fs::read_to_string(&log)
            .unwrap()
            .contains("CLI-BOOT-OK"));
    }

    #[test]
    fn bad_marker_is_a_clear_error() {
        let args = ["nodeimg", "boot", "/nonexistent.img", "--marker", "("]
            .iter()
            .map(Into::into)
            .collect();
        let err = crate::cli::run(args).unwrap_err();
        assert!(format!("{err:#}").contains("--marker `(`"), "{err:#}");
    }
}

//! The EFI system partition: FAT32 made by `mkfs.vfat` into a file of the partition's size,
//! filled with mtools (no mount), later copied into the disk image.
//!
//! Reproducible: `--invariant` plus a volume id from the plan fix everything mkfs.vfat would
//! take from the clock or randomness; mtools stamps files and directories with
//! `SOURCE_DATE_EPOCH` instead of the current time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimg_common::Cmd;

use super::plan::{PartitionPlan, LABEL_ESP};

/// A file to put on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    pub source: PathBuf,
    /// Path on the ESP, `/`-separated, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub dest: String,
}

/// Create the FAT32 filesystem image `out` (must not exist) for `part` holding `files`.
pub fn make(out: &Path, part: &PartitionPlan, files: &[EspFile], epoch: i64) -> Result<()> {
    let volume_id = part
        .vfat_volume_id()
        .context("the ESP has no volume id in the plan")?;
    Cmd::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-S", "512", "--invariant"])
        .args(["-i", &format!("{volume_id:08x}"), "-n", LABEL_ESP])
        // Hidden sectors = where the partition starts, as on any partitioned disk.
        .args(["-h", &part.start_lba.to_string()])
        .arg(out)
        .arg((part.size() / 1024).to_string())
        .env("LC_ALL", "C")
        .run()
        .with_context(|| format!("creating the FAT32 ESP image {}", out.display()))?;

    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let mut prefix = String::new();
        for comp in f
            .dest
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .iter()
            .rev()
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if !dirs.contains(&prefix) {
                dirs.push(prefix.clone());
            }
        }
    }
    if !dirs.is_empty() {
        mtools("mmd", out, epoch)
            .args(dirs.iter().map(|d| format!("::/{d}")))
            .run()
            .with_context(|| format!("creating directories on the ESP image {}", out.display()))?;
    }
    for f in files {
        mtools("mcopy", out, epoch)
            .arg(&f.source)
            .arg(format!("::/{}", f.dest))
            .run()
            .with_context(|| {
                format!(
                    "copying {} to {} on the ESP image {}",
                    f.source.display(),
                    f.dest,
                    out.display()
                )
            })?;
    }
    Ok(())
}

fn mtools(program: &str, image: &Path, epoch: i64) -> Cmd {
    Cmd::new(program)
        .arg("-i")
        .arg(image)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        // The image is a bare filesystem, not a floppy: skip mtools' geometry sanity check.
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
}

//! NoCloud seed images: an ISO 9660 volume labelled `cidata` holding `user-data` and
//! `meta-data` (cloud-init's NoCloud data source; nodeboot reads the same layout).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::Cmd;

/// Volume label NoCloud looks for.
pub const SEED_LABEL: &str = "cidata";

/// Build `out` from the files in `dir` (which must contain `user-data`; `meta-data` is
/// created with an instance id derived from the user-data when missing).
pub fn from_dir(dir: &Path, out: &Path) -> Result<()> {
    let user_data = dir.join("user-data");
    if !user_data.is_file() {
        bail!("seed directory {} has no user-data file", dir.display());
    }
    if dir.join("meta-data").is_file() {
        return genisoimage(dir, out);
    }
    // Do not write into the caller's directory: stage a copy with the generated meta-data.
    let stage = tempfile::tempdir().context("creating a seed staging directory")?;
    for item in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let item = item.with_context(|| format!("listing {}", dir.display()))?;
        if item.file_type().map(|t| t.is_file()).unwrap_or(false) {
            fs::copy(item.path(), stage.path().join(item.file_name()))
                .with_context(|| format!("copying {}", item.path().display()))?;
        }
    }
    write_meta_data(&user_data, &stage.path().join("meta-data"))?;
    genisoimage(stage.path(), out)
}

/// Build `out` from a single user-data file plus generated meta-data.
pub fn from_user_data(user_data: &Path, out: &Path) -> Result<()> {
    let stage = tempfile::tempdir().context("creating a seed staging directory")?;
    fs::copy(user_data, stage.path().join("user-data"))
        .with_context(|| format!("copying {}", user_data.display()))?;
    write_meta_data(user_data, &stage.path().join("meta-data"))?;
    genisoimage(stage.path(), out)
}

fn write_meta_data(user_data: &Path, out: &Path) -> Result<()> {
    let bytes = fs::read(user_data).with_context(|| format!("reading {}", user_data.display()))?;
    // Same user-data, same instance id: a rebooted VM is the same instance.
    let id = Sha256Hex::of_bytes(&bytes);
    let text = format!("instance-id: iid-{}\nlocal-hostname: node\n", id.short(16));
    fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

fn genisoimage(dir: &Path, out: &Path) -> Result<()> {
    let files: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    };
    let iso = nodeimg_common::fsutil::AtomicFile::create(out)?;
    Cmd::new("genisoimage")
        .args([
            "-quiet", "-volid", SEED_LABEL, "-joliet", "-rock", "-output",
        ])
        .arg(iso.temp_path())
        .args(&files)
        .run()
        .with_context(|| format!("building the NoCloud seed {}", out.display()))?;
    iso.commit()
}

/// The ISO 9660 volume identifier of `iso` (primary volume descriptor, sector 16).
pub fn volume_id(iso: &Path) -> Result<String> {
    let bytes = fs::read(iso).with_context(|| format!("reading {}", iso.display()))?;
    let pvd = bytes
        .get(16 * 2048..16 * 2048 + 72)
        .with_context(|| format!("{} is too small for an ISO 9660 image", iso.display()))?;
    if &pvd[1..6] != b"CD001" {
        bail!("{} is not an ISO 9660 image", iso.display());
    }
    Ok(String::from_utf8_lossy(&pvd[40..72]).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_from_user_data_is_labelled_cidata() {
        let d = tempfile::tempdir().unwrap();
        let ud = d.path().join("ud.sh");
        fs::write(&ud, "#!/bin/sh\necho hi\n").unwrap();
        let iso = d.path().join("seed.iso");
        from_user_data(&ud, &iso).unwrap();
        assert_eq!(volume_id(&iso).unwrap(), "cidata");
        let bytes = fs::read(&iso).unwrap();
        let needle = b"#!/bin/sh\necho hi\n";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        assert!(bytes.windows(13).any(|w| w == b"instance-id: "));
    }

    #[test]
    fn seed_dir_needs_user_data() {
        let d = tempfile::tempdir().unwrap();
        let err = from_dir(d.path(), &d.path().join("x.iso")).unwrap_err();
        assert!(err.to_string().contains("no user-data"), "{err}");
        assert!(!d.path().join("x.iso").exists());
    }
}

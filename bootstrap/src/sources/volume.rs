//! User-data on an attached volume: a NoCloud seed (label `cidata`/`CIDATA`, files
//! `user-data` + `meta-data`) or an OpenStack config drive (label `config-2`/`CONFIG-2`, files
//! `openstack/latest/user_data` + `meta_data.json`), reference §3.2/§3.3. The volume is
//! mounted read-only into a temporary directory and unmounted afterwards; tests hand in an
//! already-populated directory instead. Also the local file source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeimg_common::Cmd;

use super::decode::{read_file_limited, MAX_RAW_USER_DATA};
use super::{Source, SourceError, SourceMeta};

/// Filesystems a seed volume may carry; mount refuses anything else (no ext4 from a
/// hypervisor-provided disk).
const SEED_FS_TYPES: &str = "iso9660,vfat";
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which kind of seed volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    NoCloud,
    ConfigDrive,
}

impl VolumeKind {
    fn name(self) -> &'static str {
        match self {
            VolumeKind::NoCloud => "nocloud",
            VolumeKind::ConfigDrive => "config-drive",
        }
    }

    /// Labels cloud-init accepts for this kind.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            VolumeKind::NoCloud => &["cidata", "CIDATA"],
            VolumeKind::ConfigDrive => &["config-2", "CONFIG-2"],
        }
    }

    fn user_data_path(self) -> &'static str {
        match self {
            VolumeKind::NoCloud => "user-data",
            VolumeKind::ConfigDrive => "openstack/latest/user_data",
        }
    }

    fn meta_path(self) -> &'static str {
        match self {
            VolumeKind::NoCloud => "meta-data",
            VolumeKind::ConfigDrive => "openstack/latest/meta_data.json",
        }
    }
}

/// A NoCloud or config-drive seed.
#[derive(Debug)]
pub struct SeedVolume {
    kind: VolumeKind,
    root: PathBuf,
    /// An already-mounted (or unpacked) seed; skips the label lookup and the mount.
    dir: Option<PathBuf>,
}

impl SeedVolume {
    pub(crate) fn new(kind: VolumeKind, root: PathBuf, dir: Option<PathBuf>) -> Self {
        SeedVolume { kind, root, dir }
    }

    /// The device node of the first matching label under `<root>/dev/disk/by-label/`.
    pub fn find_device(&self) -> Option<PathBuf> {
        find_label(&self.root, self.kind.labels())
    }

    fn read_seed(&self, dir: &Path, origin: &str) -> Result<(Vec<u8>, SourceMeta), SourceError> {
        let ud = dir.join(self.kind.user_data_path());
        let bytes = match read_file_limited(&ud, MAX_RAW_USER_DATA) {
            Ok(b) => b,
            // A seed with only meta-data is valid for cloud-init; it simply has nothing for us.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.absent(format!("{origin} has no {}", self.kind.user_data_path())))
            }
            Err(e) => {
                return Err(self.failed(format!(
                    "reading {} on {origin}: {e}",
                    self.kind.user_data_path()
                )))
            }
        };
        let meta_file = dir.join(self.kind.meta_path());
        let meta = match read_file_limited(&meta_file, MAX_RAW_USER_DATA) {
            Ok(m) => parse_meta(self.kind, &m).map_err(|e| {
                self.failed(format!(
                    "{} on {origin} is malformed: {e}",
                    self.kind.meta_path()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SourceMeta::default(),
            Err(e) => {
                return Err(self.failed(format!(
                    "reading {} on {origin}: {e}",
                    self.kind.meta_path()
                )))
            }
        };
        Ok((bytes, meta))
    }

    fn absent(&self, detail: String) -> SourceError {
        SourceError::Absent {
            source_name: self.kind.name(),
            detail,
        }
    }

    fn failed(&self, detail: String) -> SourceError {
        SourceError::Failed {
            source_name: self.kind.name(),
            detail,
        }
    }
}

impl Source for SeedVolume {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        self.fetch_with_meta().map(|(b, _)| b)
    }

    fn fetch_with_meta(&self) -> Result<(Vec<u8>, SourceMeta), SourceError> {
        if let Some(dir) = &self.dir {
            return self.read_seed(dir, &dir.display().to_string());
        }
        let dev = self.find_device().ok_or_else(|| {
            self.absent(format!(
                "no volume labelled {} under {}",
                self.kind.labels().join(" or "),
                self.root.join("dev/disk/by-label").display()
            ))
        })?;
        let mounted = ReadOnlyMount::new(&dev).map_err(|e| self.failed(e))?;
        self.read_seed(mounted.path(), &dev.display().to_string())
    }
}

/// `<root>/dev/disk/by-label/<label>` for the first label that exists (udev's symlinks).
pub fn find_label(root: &Path, labels: &[&str]) -> Option<PathBuf> {
    labels
        .iter()
        .map(|l| root.join("dev/disk/by-label").join(l))
        .find(|p| p.exists())
}

/// A device mounted read-only in a temporary directory for as long as this value lives.
#[derive(Debug)]
struct ReadOnlyMount {
    dir: tempfile::TempDir,
}

impl ReadOnlyMount {
    fn new(dev: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("nodeboot-seed.")
            .tempdir()
            .map_err(|e| format!("creating a mount point for {}: {e}", dev.display()))?;
        Cmd::new("mount")
            .args(["-o", "ro,nodev,nosuid,noexec", "-t", SEED_FS_TYPES])
            .arg(dev)
            .arg(dir.path())
            .timeout(MOUNT_TIMEOUT)
            .run()
            .map_err(|e| format!("mounting {} read-only: {e}", dev.display()))?;
        Ok(ReadOnlyMount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("umount")
            .arg(self.dir.path())
            .timeout(MOUNT_TIMEOUT)
            .run()
        {
            // The temporary directory cannot be removed while mounted; say so once.
            tracing::warn!(error = %e, "unmounting the seed volume failed");
        }
    }
}

/// The fields of cloud-init's meta-data nodeboot cares about. These are foreign formats
/// (YAML for NoCloud, JSON for OpenStack) with many keys we ignore, hence no strict parsing.
fn parse_meta(kind: VolumeKind, raw: &[u8]) -> Result<SourceMeta, String> {
    let text = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
    let get = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    match kind {
        VolumeKind::NoCloud => {
            if text.trim().is_empty() {
                return Ok(SourceMeta::default());
            }
            let v: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
            let s = |k: &str| {
                v.get(k).and_then(|x| match x {
                    serde_yaml::Value::String(s) => Some(s.clone()),
                    serde_yaml::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            if !v.is_mapping() {
                return Err("expected a YAML mapping".to_owned());
            }
            Ok(SourceMeta {
                instance_id: s("instance-id"),
                hostname: s("local-hostname"),
            })
        }
        VolumeKind::ConfigDrive => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            Ok(SourceMeta {
                instance_id: get(&v, "uuid"),
                hostname: get(&v, "hostname"),
            })
        }
    }
}

/// `/etc/nodeboot/config.toml` (or wherever the options point): provisioned into the image
/// or by an installer.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
}

impl LocalFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        LocalFile { path }
    }
}

impl Source for LocalFile {
    fn name(&self) -> &'static str {
        "file"
    }

    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        read_file_limited(&self.path, MAX_RAW_USER_DATA).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SourceError::Absent {
                    source_name: "file",
                    detail: format!("{} does not exist", self.path.display()),
                }
            } else {
                SourceError::Failed {
                    source_name: "file",
                    detail: format!("reading {}: {e}", self.path.display()),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nocloud_meta() {
        let m = parse_meta(
            VolumeKind::NoCloud,
            b"instance-id: iid-local01\nlocal-hostname: cp-0\npublic-keys: []\n",
        )
        .unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("iid-local01"));
        assert_eq!(m.hostname.as_deref(), Some("cp-0"));
        assert!(parse_meta(VolumeKind::NoCloud, b"- a list\n").is_err());
        assert!(parse_meta(VolumeKind::NoCloud, b"a: [unclosed").is_err());
    }

    #[test]
    fn config_drive_meta() {
        let m = parse_meta(
            VolumeKind::ConfigDrive,
            br#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "w-1.novalocal", "name": "w-1"}"#,
        )
        .unwrap();
        assert_eq!(
            m.instance_id.as_deref(),
            Some("83679162-1378-4288-a2d4-70e13ec132aa")
        );
        assert_eq!(m.hostname.as_deref(), Some("w-1.novalocal"));
    }
}

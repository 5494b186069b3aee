//! Recipe schema, version 1: the typed form of a fully resolved recipe (after `extends` and
//! `include` are merged). Every table rejects unknown keys; closed sets are enums; values that
//! have a format (versions, digests, URLs, modes, sizes) are newtypes that validate while
//! parsing, so a `Recipe` that exists is well-formed.
//!
//! Field names are kebab-case in TOML. docs/recipe.md documents every field; a test keeps the
//! two in sync.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use nodeimg_common::digest::Sha256Hex;
use serde::{Deserialize, Serialize};

pub use super::values::{AbsPath, ArtifactUrl, GpgKeyId, HttpUrl, Mode, Name, Size, SysctlValue};

/// The only recipe format version this build understands.
pub const RECIPE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Recipe {
    /// Format version; must be 1.
    pub version: u32,
    pub image: Image,
    pub base: Base,
    pub kubernetes: Kubernetes,
    #[serde(default, rename = "artifact", skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub os: Os,
    #[serde(default)]
    pub nodeboot: Nodeboot,
    #[serde(default)]
    pub disk: Disk,
    #[serde(default)]
    pub commit: Commit,
}

/// What the image is called and where its commits go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Image {
    /// Image name: `[a-z0-9][a-z0-9-]*`, used in the ref and the output directory.
    pub name: Name,
    /// The platform's own version (semver), independent of the Kubernetes version.
    pub version: semver::Version,
    /// OSTree osname (stateroot); default `nodeimg`.
    #[serde(default = "default_osname")]
    pub osname: Name,
    /// OSTree ref; default `<osname>/<name>/<arch>`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ostree_ref: Option<String>,
    #[serde(default)]
    pub arch: Arch,
    /// Human description, stored in the commit subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Disk formats `nodeimg build` writes when `--format` is not given.
    #[serde(default = "default_formats")]
    pub formats: Vec<Format>,
}

fn default_osname() -> Name {
    Name("nodeimg".to_owned())
}

fn default_formats() -> Vec<Format> {
    vec![Format::Qcow2]
}

impl Image {
    /// The OSTree ref commits of this recipe go to.
    pub fn ref_name(&self) -> String {
        self.ostree_ref
            .clone()
            .unwrap_or_else(|| format!("{}/{}/{}", self.osname, self.name, self.arch))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
}

impl Arch {
    /// Debian's name for the architecture.
    pub fn debian(&self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
        })
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Raw,
    Qcow2,
    /// Fixed VHD (Azure).
    Vhd,
    /// Dynamic VHD (Hyper-V): only the blocks that hold data.
    VhdDynamic,
    Pxe,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vhd" => Ok(Format::Vhd),
            "vhd-dynamic" => Ok(Format::VhdDynamic),
            "pxe" => Ok(Format::Pxe),
            other => Err(format!(
                "unknown format `{other}` (expected one of: raw, qcow2, vhd, vhd-dynamic, pxe)"
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::VhdDynamic => "vhd-dynamic",
            Format::Pxe => "pxe",
        })
    }
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Base {
    #[serde(default)]
    pub kind: BaseKind,
    /// Distribution; only `debian` is supported.
    #[serde(default)]
    pub distro: Distro,
    /// Suite (release codename), e.g. `bookworm`.
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Package mirrors, tried in order.
    #[serde(default = "default_mirrors")]
    pub mirrors: Vec<HttpUrl>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Packages installed on top of the essential set. In a resolved recipe this is the full
    /// list: `extra-packages` of every layer are appended to it while resolving.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Packages added by a layer without restating `packages`. Unlike every other list, these
    /// accumulate across `extends`/`include` layers; always empty in a resolved recipe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_packages: Vec<String>,
    /// Packages that must not end up in the image (passed to apt as `pkg-`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// For `kind = "tar"` (a tarball) or `kind = "dir"` (a directory): the existing rootfs,
    /// relative to the recipe file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

fn default_suite() -> String {
    "bookworm".to_owned()
}

fn default_mirrors() -> Vec<HttpUrl> {
    vec![HttpUrl("http://deb.debian.org/debian".to_owned())]
}

fn default_components() -> Vec<String> {
    vec!["main".to_owned()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseKind {
    /// Packages installed by `mmdebstrap --mode=unshare`.
    #[default]
    Apt,
    /// An existing rootfs as a tarball (`.tar`, `.tar.gz`, `.tar.zst`).
    Tar,
    /// An existing rootfs directory.
    Dir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distro {
    #[default]
    Debian,
}

/// The Kubernetes part of the node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kubernetes {
    /// Kubernetes version of kubelet/kubeadm, e.g. `1.34.2`.
    pub version: semver::Version,
    #[serde(default)]
    pub runtime: Runtime,
    /// Cgroup driver for containerd and the kubelet; only `systemd` is supported.
    #[serde(default)]
    pub cgroup_driver: CgroupDriver,
    /// Pause (sandbox) image containerd uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// containerd (with runc) from the distribution, configured with `SystemdCgroup = true`.
    #[default]
    Containerd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupDriver {
    #[default]
    Systemd,
}

/// A file downloaded by URL, verified by sha256 and placed into the image.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    /// Unique name (`kubelet`, `cni-plugins`, ...); later layers replace an artifact of the
    /// same name.
    pub name: Name,
    /// `http://`, `https://` or `file://` URL.
    pub url: ArtifactUrl,
    pub sha256: Sha256Hex,
    /// Absolute destination in the image: the file path, or the directory an archive is
    /// unpacked into.
    pub dest: AbsPath,
    /// File mode of a plain file (octal string), default `0755`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Unpack the download as an archive into `dest` instead of copying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<ArchiveKind>,
    /// Leading path components to strip when unpacking.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub strip_components: u32,
}

fn default_mode() -> Mode {
    Mode(0o755)
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveKind {
    #[serde(rename = "tar.gz")]
    TarGz,
    Tar,
}

/// Node OS configuration applied on top of the packages.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Os {
    /// Hostname baked into the image (nodeboot may set the real one at first boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Kernel modules loaded at boot (`/etc/modules-load.d/nodeimg.conf`).
    #[serde(default)]
    pub kernel_modules: Vec<String>,
    /// sysctl settings (`/etc/sysctl.d/90-nodeimg.conf`), key to value. Keys may be quoted or
    /// dotted; both mean the same sysctl.
    #[serde(default, deserialize_with = "super::values::deserialize_sysctls")]
    pub sysctls: BTreeMap<String, SysctlValue>,
    /// Swap must be off for the kubelet; `off` masks swap units and sets no swap in fstab.
    #[serde(default)]
    pub swap: Swap,
    /// Extra kernel command line arguments (after `root=LABEL=root rw`).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Root password hash (crypt format). Unset: root login by password is locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_hash: Option<String>,
    #[serde(default)]
    pub time_sync: TimeSync,
    #[serde(default)]
    pub journald: Journald,
    #[serde(default)]
    pub container_logs: ContainerLogs,
    #[serde(default, rename = "file", skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(default)]
    pub units: Units,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Swap {
    #[default]
    Off,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TimeSync {
    /// `systemd-timesyncd` (default) or `none`.
    #[serde(default)]
    pub service: TimeSyncService,
    /// NTP servers; empty keeps the distribution's defaults.
    #[serde(default)]
    pub servers: Vec<String>,
}

impl Default for TimeSync {
    fn default() -> Self {
        TimeSync {
            service: TimeSyncService::SystemdTimesyncd,
            servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSyncService {
    #[default]
    SystemdTimesyncd,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Journald {
    /// `SystemMaxUse=`: disk space the journal may take.
    #[serde(default = "default_journal_max")]
    pub system_max_use: Size,
    /// `Storage=`: `persistent` (default) or `volatile`.
    #[serde(default)]
    pub storage: JournalStorage,
}

fn default_journal_max() -> Size {
    Size(512 * 1024 * 1024)
}

impl Default for Journald {
    fn default() -> Self {
        Journald {
            system_max_use: default_journal_max(),
            storage: JournalStorage::Persistent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalStorage {
    #[default]
    Persistent,
    Volatile,
}

/// Kubelet container log rotation (`containerLogMaxSize`, `containerLogMaxFiles`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerLogs {
    #[serde(default = "default_log_size")]
    pub max_size: Size,
    #[serde(default = "default_log_files")]
    pub max_files: u32,
}

fn default_log_size() -> Size {
    Size(10 * 1024 * 1024)
}

fn default_log_files() -> u32 {
    5
}

impl Default for ContainerLogs {
    fn default() -> Self {
        ContainerLogs {
            max_size: default_log_size(),
            max_files: default_log_files(),
        }
    }
}

/// An extra file placed into the image.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    /// Absolute path in the image (`/etc/...` ends up in `/usr/etc` and is merged at deploy).
    pub path: AbsPath,
    /// Inline content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Or a file next to the recipe, relative to the recipe that names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(default = "default_file_mode")]
    pub mode: Mode,
    #[serde(default = "default_owner")]
    pub owner: String,
    #[serde(default = "default_owner")]
    pub group: String,
}

fn default_file_mode() -> Mode {
    Mode(0o644)
}

fn default_owner() -> String {
    "root".to_owned()
}

/// A local user created in the image.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_shell")]
    pub shell: AbsPath,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Password-less sudo (writes `/etc/sudoers.d/<name>`; the recipe must install `sudo`).
    #[serde(default)]
    pub sudo: bool,
}

fn default_shell() -> AbsPath {
    AbsPath("/bin/bash".to_owned())
}

/// systemd units to enable, disable or mask in the image.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Units {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

/// The first-boot agent baked into the image.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Nodeboot {
    /// Install nodeboot and enable `nodeboot.service`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The nodeboot binary to install; default: the one next to the running `nodeimg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    /// A node config (nodeboot schema) baked in as `/etc/nodeboot/config.toml`; validated at
    /// build time. Must not contain inline secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for Nodeboot {
    fn default() -> Self {
        Nodeboot {
            enabled: true,
            binary: None,
            config: None,
        }
    }
}

/// Disk image layout.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    /// Total size (`"4GiB"`); unset: fitted to the content plus room for one upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Size of the ext4 `/boot` partition.
    #[serde(default = "default_boot_size")]
    pub boot_size: Size,
    /// Size of the EFI system partition.
    #[serde(default = "default_esp_size")]
    pub esp_size: Size,
    /// Firmware the image boots on.
    #[serde(default = "default_firmware")]
    pub firmware: Vec<Firmware>,
}

fn default_boot_size() -> Size {
    Size(384 * 1024 * 1024)
}

fn default_esp_size() -> Size {
    Size(127 * 1024 * 1024)
}

fn default_firmware() -> Vec<Firmware> {
    vec![Firmware::Bios, Firmware::Uefi]
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            size: None,
            boot_size: default_boot_size(),
            esp_size: default_esp_size(),
            firmware: default_firmware(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// How the OSTree commit is made.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Commit {
    /// Commit timestamp (seconds since the epoch). `SOURCE_DATE_EPOCH` overrides it; unset
    /// and no `SOURCE_DATE_EPOCH`: 0 would make every build look ancient, so the default is
    /// the fixed value 1700000000 (2023-11-14), keeping builds reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Sign the commit with this ed25519 secret key file (base64, as `ostree sign` takes).
    /// Needs a libostree with ed25519 support, which Debian 12's has not; use `gpg-key-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_key: Option<PathBuf>,
    /// Sign the commit with this GPG key (id or fingerprint; its secret key must be in
    /// `gpg-homedir`). The public key is published next to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_key_id: Option<GpgKeyId>,
    /// GnuPG home directory holding the signing key; unset: `GNUPGHOME` or `~/.gnupg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_homedir: Option<PathBuf>,
    /// Also generate a static delta from the previous commit on the ref.
    #[serde(default)]
    pub static_delta: bool,
}

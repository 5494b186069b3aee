//! Semantic checks of a resolved recipe: rules that relate several fields or the local
//! filesystem, which no single file can check on its own. Each issue names the field it is
//! about, so the loader can point at the file, line and column that set it.

use std::collections::BTreeMap;

use super::location::{At, FieldPath};
use super::schema::{BaseKind, Recipe, TimeSyncService};

/// One problem with a resolved recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: FieldPath,
    pub at: At,
    pub message: String,
}

fn issue(path: FieldPath, message: impl Into<String>) -> Issue {
    Issue {
        path,
        at: At::Value,
        message: message.into(),
    }
}

const MIB: u64 = 1 << 20;
/// FAT32 needs at least 65525 clusters; at 512-byte clusters that is ~32 MiB.
const MIN_ESP: u64 = 32 * MIB;
/// Two deployments' kernel and initramfs (~8 MiB + ~32 MiB each) must fit in `/boot`.
const MIN_BOOT: u64 = 128 * MIB;
/// BIOS boot partition plus GPT headers and alignment at both ends.
const DISK_OVERHEAD: u64 = 3 * MIB;

/// Every issue found; empty when the recipe is good.
pub fn check(r: &Recipe) -> Vec<Issue> {
    let mut out = Vec::new();
    check_image(r, &mut out);
    check_base(r, &mut out);
    check_artifacts(r, &mut out);
    check_os(r, &mut out);
    check_nodeboot(r, &mut out);
    check_disk(r, &mut out);
    out
}

fn check_image(r: &Recipe, out: &mut Vec<Issue>) {
    let mut formats = r.image.formats.clone();
    formats.sort();
    if formats.is_empty() || formats.windows(2).any(|w| w[0] == w[1]) {
        out.push(issue(
            FieldPath::parse("image.formats"),
            "list each format at most once, and at least one",
        ));
    }
    if r.commit.timestamp.is_some_and(|t| t < 0) {
        out.push(issue(
            FieldPath::parse("commit.timestamp"),
            "must not be before 1970",
        ));
    }
    if r.commit.gpg_homedir.is_some() && r.commit.gpg_key_id.is_none() {
        out.push(issue(
            FieldPath::parse("commit.gpg-homedir"),
            "commit.gpg-homedir is only used with commit.gpg-key-id (the key to sign with)",
        ));
    }
    if r.kubernetes.version.major != 1 {
        out.push(issue(
            FieldPath::parse("kubernetes.version"),
            format!("Kubernetes {} is not a 1.x release", r.kubernetes.version),
        ));
    }
}

fn check_base(r: &Recipe, out: &mut Vec<Issue>) {
    let base = &r.base;
    match (base.kind, &base.path) {
        (BaseKind::Apt, Some(_)) => out.push(issue(
            FieldPath::parse("base.path"),
            "base.path is only used with kind = \"tar\" or \"dir\"",
        )),
        (BaseKind::Tar | BaseKind::Dir, None) => out.push(issue(
            FieldPath::parse("base.kind"),
            "kind = \"tar\" and kind = \"dir\" need base.path (the existing rootfs)",
        )),
        (BaseKind::Tar, Some(p)) if !p.is_file() => out.push(issue(
            FieldPath::parse("base.path"),
            format!("{} is not a file", p.display()),
        )),
        (BaseKind::Dir, Some(p)) if !p.is_dir() => out.push(issue(
            FieldPath::parse("base.path"),
            format!("{} is not a directory", p.display()),
        )),
        _ => {}
    }
    if base.kind == BaseKind::Apt && base.mirrors.is_empty() {
        out.push(issue(
            FieldPath::parse("base.mirrors"),
            "kind = \"apt\" needs at least one mirror",
        ));
    }
    for (i, ex) in base.exclude.iter().enumerate() {
        let named = |p: &String| p.split(['=', '/']).next() == Some(ex.as_str());
        if base.packages.iter().any(named) {
            out.push(issue(
                FieldPath::parse("base.exclude").index(i),
                format!("`{ex}` is both in the package list and excluded"),
            ));
        }
    }
}

/// On an OSTree system only `/usr` and `/etc` are part of the image: `/var` is state created
/// at boot, and `/opt`, `/home`, `/usr/local`, ... are symlinks into it.
fn image_location(p: &str) -> Result<(), String> {
    let under = |dir: &str| {
        p.strip_prefix(dir)
            .is_some_and(|r| r.starts_with('/') && r.len() > 1)
    };
    if under("/usr/local") {
        return Err(format!(
            "{p}: /usr/local is a symlink to /var/usrlocal on an OSTree system, not part of the \
             image; use /usr/bin, /usr/lib, ..."
        ));
    }
    if under("/usr/etc") {
        return Err(format!(
            "{p}: write /etc/...; nodeimg moves /etc to /usr/etc itself"
        ));
    }
    if under("/usr") || under("/etc") {
        Ok(())
    } else {
        Err(format!(
            "{p}: only /usr and /etc are part of an OSTree image (/var, /opt, /home, ... are \
             created at boot and not updated by upgrades)"
        ))
    }
}

fn check_artifacts(r: &Recipe, out: &mut Vec<Issue>) {
    let mut dests: BTreeMap<&str, &str> = BTreeMap::new();
    let k8s = format!("v{}", r.kubernetes.version);
    for a in &r.artifacts {
        let at = |field: &str| {
            FieldPath::default()
                .key("artifact")
                .keyed("name", a.name.as_str())
                .key(field)
        };
        if let Some(first) = dests.insert(a.dest.as_str(), a.name.as_str()) {
            out.push(issue(
                at("dest"),
                format!("{} is also the destination of artifact `{first}`", a.dest),
            ));
        }
        if let Err(e) = image_location(a.dest.as_str()) {
            out.push(issue(at("dest"), e));
        }
        if a.unpack.is_none() && a.strip_components > 0 {
            out.push(issue(
                at("strip-components"),
                "strip-components only applies with unpack",
            ));
        }
        // A bumped kubernetes.version with stale binaries would build a node whose kubelet
        // disagrees with the kubeadm config nodeboot writes.
        if matches!(a.name.as_str(), "kubelet" | "kubeadm" | "kubectl") {
            let versions: Vec<&str> = a
                .url
                .as_str()
                .split('/')
                .filter(|seg| {
                    seg.strip_prefix('v')
                        .is_some_and(|v| semver::Version::parse(v).is_ok())
                })
                .collect();
            if versions.iter().any(|v| *v != k8s) {
                out.push(issue(
                    at("url"),
                    format!(
                        "the URL names {} but kubernetes.version is {}",
                        versions.join(", "),
                        r.kubernetes.version
                    ),
                ));
            }
        }
    }
}

fn check_os(r: &Recipe, out: &mut Vec<Issue>) {
    let os = &r.os;
    let artifact_dests: Vec<&str> = r.artifacts.iter().map(|a| a.dest.as_str()).collect();
    for f in &os.files {
        let at = |field: &str| {
            FieldPath::default()
                .key("os")
                .key("file")
                .keyed("path", f.path.as_str())
                .key(field)
        };
        let whole = FieldPath::default()
            .key("os")
            .key("file")
            .keyed("path", f.path.as_str());
        match (&f.content, &f.source) {
            (Some(_), Some(_)) => out.push(issue(whole, "set either content or source, not both")),
            (None, None) => out.push(issue(whole, "needs content or source")),
            (None, Some(src)) if !src.is_file() => out.push(issue(
                at("source"),
                format!("{} does not exist or is not a file", src.display()),
            )),
            _ => {}
        }
        if let Err(e) = image_location(f.path.as_str()) {
            out.push(issue(at("path"), e));
        }
        if artifact_dests.contains(&f.path.as_str()) {
            out.push(issue(
                at("path"),
                format!("{} is also the destination of an artifact", f.path),
            ));
        }
    }

    let mut uids: BTreeMap<u32, &str> = BTreeMap::new();
    for u in &os.users {
        let at = |field: &str| {
            FieldPath::default()
                .key("os")
                .key("user")
                .keyed("name", u.name.as_str())
                .key(field)
        };
        if u.name.as_str() == "root" {
            out.push(issue(
                at("name"),
                "root exists in every image; set os.root-password-hash instead",
            ));
        }
        if let Some(uid) = u.uid {
            if let Some(first) = uids.insert(uid, u.name.as_str()) {
                out.push(issue(
                    at("uid"),
                    format!("uid {uid} is also used by `{first}`"),
                ));
            }
            if uid == 0 {
                out.push(issue(at("uid"), "uid 0 is root"));
            }
        }
        let has_sudo = r
            .base
            .packages
            .iter()
            .any(|p| p.split(['=', '/']).next() == Some("sudo"));
        if u.sudo && r.base.kind == BaseKind::Apt && !has_sudo {
            out.push(issue(
                at("sudo"),
                "sudo = true needs the `sudo` package (add it to base.extra-packages)",
            ));
        }
    }

    if os.time_sync.service == TimeSyncService::None && !os.time_sync.servers.is_empty() {
        out.push(issue(
            FieldPath::parse("os.time-sync.servers"),
            "servers are set but service = \"none\"",
        ));
    }
    if os.container_logs.max_files < 2 {
        out.push(issue(
            FieldPath::parse("os.container-logs.max-files"),
            "the kubelet requires containerLogMaxFiles >= 2",
        ));
    }
    if os.container_logs.max_size.bytes() == 0 {
        out.push(issue(
            FieldPath::parse("os.container-logs.max-size"),
            "must be greater than 0",
        ));
    }
    for (list, name) in [(&os.units.disable, "disable"), (&os.units.mask, "mask")] {
        for (i, unit) in list.iter().enumerate() {
            if os.units.enable.contains(unit) {
                out.push(issue(
                    FieldPath::parse("os.units").key(name).index(i),
                    format!("{unit} is also in os.units.enable"),
                ));
            }
        }
    }
}

fn check_nodeboot(r: &Recipe, out: &mut Vec<Issue>) {
    let nb = &r.nodeboot;
    if let Some(config) = &nb.config {
        if !nb.enabled {
            out.push(issue(
                FieldPath::parse("nodeboot.config"),
                "a config is set but nodeboot.enabled = false",
            ));
        }
        if !config.is_file() {
            out.push(issue(
                FieldPath::parse("nodeboot.config"),
                format!("{} does not exist or is not a file", config.display()),
            ));
        }
    }
}

fn check_disk(r: &Recipe, out: &mut Vec<Issue>) {
    let d = &r.disk;
    if d.esp_size.bytes() < MIN_ESP {
        out.push(issue(
            FieldPath::parse("disk.esp-size"),
            format!("{} is too small for FAT32 (minimum 32MiB)", d.esp_size),
        ));
    }
    if d.boot_size.bytes() < MIN_BOOT {
        out.push(issue(
            FieldPath::parse("disk.boot-size"),
            format!(
                "{} is too small for two deployments' kernel and initramfs (minimum 128MiB)",
                d.boot_size
            ),
        ));
    }
    if let Some(size) = d.size {
        let fixed = d.esp_size.bytes() + d.boot_size.bytes() + DISK_OVERHEAD;
        if size.bytes() <= fixed {
            out.push(issue(
                FieldPath::parse("disk.size"),
                format!(
                    "{size} leaves no room for the root partition (ESP + /boot + 3MiB = {})",
                    super::values::Size(fixed)
                ),
            ));
        }
    }
    let mut fw = d.firmware.clone();
    fw.sort_by_key(|f| *f as u8);
    fw.dedup();
    if d.firmware.is_empty() || fw.len() != d.firmware.len() {
        out.push(issue(
            FieldPath::parse("disk.firmware"),
            "list each firmware (bios, uefi) at most once, and at least one",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_locations() {
        assert!(image_location("/usr/bin/kubelet").is_ok());
        assert!(image_location("/etc/containerd/config.toml").is_ok());
        assert!(image_location("/usr/local/bin/x")
            .unwrap_err()
            .contains("/var/usrlocal"));
        assert!(image_location("/opt/cni/bin").is_err());
        assert!(image_location("/var/lib/x").is_err());
        assert!(image_location("/usr").is_err());
        assert!(image_location("/usrx/y").is_err());
        assert!(image_location("/usr/etc/x").is_err());
    }
}

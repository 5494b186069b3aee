//! Stage `rootfs`: Debian packages into a directory tree, cached by a key over everything
//! that decides its content.
//!
//! `kind = "apt"` runs `mmdebstrap --mode=unshare --variant=apt` with hook scripts rendered
//! here (see [`render_hooks`]):
//! - the .deb files persist across runs under `<cache>/debs` (`--skip=essential/unlink` with
//!   `sync-in`/`sync-out`), so a rebuild downloads nothing that did not change;
//! - the essential hook stops the kernel from creating `/vmlinuz` symlinks and diverts
//!   Debian's `/etc/kernel/postinst.d/dracut` to a no-op, because the kernel postinst and
//!   dracut's own trigger would otherwise build an initramfs (~30 s each) that is thrown away;
//! - the customize hook restores the diverted hook, writes the dracut configuration with the
//!   `ostree` and `systemd` modules and builds the one initramfs at
//!   `/usr/lib/modules/$KVER/initramfs.img`, the first place libostree looks.
//!
//! `kind = "tar"` and `kind = "dir"` take an existing rootfs (fast tests, other build
//! systems). Every kind ends with the same checks: one kernel, an initramfs, and (unless
//! switched off for fixtures with a fake initramfs) `lsinitrd` run inside the tree showing
//! `usr/lib/ostree/ostree-prepare-root`.

use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::{KeyBuilder, Sha256Hex};
use nodeimg_common::fsutil::atomic_write;
use nodeimg_common::Cmd;
use serde::{Deserialize, Serialize};

use super::{kernel_version, Package};
use crate::cache::Cache;
use crate::recipe::schema::{Arch, Base, BaseKind};

/// Bump when the same inputs would now give a different tree (hooks, dracut config).
const STAGE_VERSION: &str = "rootfs/v1";

/// The file in every initramfs that proves the ostree dracut module is in it.
const PREPARE_ROOT: &str = "usr/lib/ostree/ostree-prepare-root";

/// How the rootfs stage checks its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitramfsCheck {
    /// Run `lsinitrd` inside the tree and require `usr/lib/ostree/ostree-prepare-root`.
    Lsinitrd,
    /// Only require that the initramfs file exists. For test fixtures whose initramfs is a
    /// placeholder; never for an image that is meant to boot.
    ExistsOnly,
}

/// What the stage produced.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub key: Sha256Hex,
    /// The tree. Shared by every build with the same key: read it, never modify it.
    pub tree: PathBuf,
    pub kernel_version: String,
    pub packages: Vec<Package>,
    /// The tree came from the cache (no packages were installed).
    pub from_cache: bool,
}

/// `rootfs.json` next to a cached tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RootfsRecord {
    key: Sha256Hex,
    kind: BaseKind,
    kernel_version: String,
    initramfs_verified: bool,
    packages: Vec<Package>,
}

/// The cache key: base kind and source, distribution, suite, mirrors, components, package
/// set, architecture and the stage version. Package order does not matter.
pub fn rootfs_key(base: &Base, arch: Arch, source: Option<&Path>) -> Result<Sha256Hex> {
    let mut packages = base.packages.clone();
    packages.sort();
    packages.dedup();
    let mut exclude = base.exclude.clone();
    exclude.sort();
    exclude.dedup();
    let mut k = KeyBuilder::new(STAGE_VERSION)
        .field("kind", format!("{:?}", base.kind))
        .field("distro", format!("{:?}", base.distro))
        .field("suite", &base.suite)
        .field("arch", arch.debian());
    for m in &base.mirrors {
        k = k.field("mirror", m.as_str());
    }
    for c in &base.components {
        k = k.field("component", c);
    }
    for p in &packages {
        k = k.field("package", p);
    }
    for p in &exclude {
        k = k.field("exclude", p);
    }
    match (base.kind, source) {
        (BaseKind::Apt, _) => {}
        (BaseKind::Tar, Some(p)) => {
            k = k.field("tar-sha256", Sha256Hex::of_file(p)?.as_str());
        }
        (BaseKind::Dir, Some(p)) => {
            k = k.field("dir-listing", dir_listing_digest(p)?.as_str());
        }
        (kind, None) => bail!("base kind {kind:?} needs `path` in [base]"),
    }
    Ok(k.finish())
}

/// Build the rootfs, or take it from the cache when the key matches.
/// `recipe_dir` resolves a relative `[base] path`.
pub fn build_rootfs(
    base: &Base,
    arch: Arch,
    recipe_dir: &Path,
    cache: &Cache,
    check: InitramfsCheck,
) -> Result<Rootfs> {
    let source = base.path.as_ref().map(|p| recipe_dir.join(p));
    if base.kind != BaseKind::Apt {
        let p = source
            .as_ref()
            .with_context(|| format!("[base] kind = {:?} needs `path`", base.kind))?;
        if !p.exists() {
            bail!("[base] path {} does not exist", p.display());
        }
    }
    let key = rootfs_key(base, arch, source.as_deref())?;
    let entry = cache.rootfs_entry(&key);
    if let Some(record) = read_record(&entry)? {
        if check == InitramfsCheck::Lsinitrd && !record.initramfs_verified {
            verify_initramfs(&entry.join("tree"), &record.kernel_version, check)?;
            write_record(
                &entry,
                &RootfsRecord {
                    initramfs_verified: true,
                    ..record.clone()
                },
            )?;
        }
        cache.touch(&entry)?;
        return Ok(Rootfs {
            key,
            tree: entry.join("tree"),
            kernel_version: record.kernel_version,
            packages: record.packages,
            from_cache: true,
        });
    }

    let staging = cache.temp_dir("rootfs")?;
    let tree = staging.path().join("tree");
    match base.kind {
        BaseKind::Apt => run_mmdebstrap(base, arch, cache, staging.path(), &tree)?,
        BaseKind::Tar => {
            extract_tar(source.as_deref().expect("checked above"), &tree)?;
        }
        BaseKind::Dir => copy_tree(source.as_deref().expect("checked above"), &tree)?,
    }
    let kver = kernel_version(&tree)?;
    verify_initramfs(&tree, &kver, check)?;
    let packages = read_packages(&tree)?;
    let record = RootfsRecord {
        key: key.clone(),
        kind: base.kind,
        kernel_version: kver.clone(),
        initramfs_verified: check == InitramfsCheck::Lsinitrd,
        packages: packages.clone(),
    };
    write_record(staging.path(), &record)?;
    let staged = staging.keep();
    let entry = cache.install_rootfs(&key, &staged)?;
    Ok(Rootfs {
        key,
        tree: entry.join("tree"),
        kernel_version: kver,
        packages,
        from_cache: false,
    })
}

fn read_record(entry: &Path) -> Result<Option<RootfsRecord>> {
    let path = entry.join("rootfs.json");
    if !entry.join("tree").is_dir() {
        return Ok(None);
    }
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(serde_json::from_str(&text).ok())
}

fn write_record(entry: &Path, record: &RootfsRecord) -> Result<()> {
    let text = serde_json::to_string_pretty(record).context("serialising rootfs.json")?;
    atomic_write(entry.join("rootfs.json"), text + "\n")
}

/// The hook scripts given to mmdebstrap, as (file name, content). Pure, so golden tests
/// pin them.
pub fn render_hooks() -> Vec<(&'static str, String)> {
    let essential = r#"#!/bin/sh
# nodeimg rootfs: mmdebstrap essential hook. $1 is the rootfs being built.
# Runs after the essential packages and before the --include ones (the kernel among them).
set -eu
root="$1"

# No /vmlinuz and /initrd.img symlinks in the root: ostreeify moves the kernel to
# /usr/lib/modules/$KVER/ and /boot becomes a separate partition.
echo "do_symlinks = no" > "$root/etc/kernel-img.conf"

# The kernel postinst and dracut's own trigger both run this hook, each building an
# initramfs (~30 s) that is thrown away. Divert the real hook and leave a no-op under its
# name (dracut's trigger calls the path directly, so it has to exist); the customize hook
# restores the real one and builds the initramfs once.
mkdir -p "$root/etc/kernel/postinst.d"
chroot "$root" dpkg-divert --quiet --local --rename \
    --divert /etc/kernel/postinst.d/dracut.nodeimg-disabled \
    --add /etc/kernel/postinst.d/dracut
printf '#!/bin/sh\nexit 0\n' > "$root/etc/kernel/postinst.d/dracut"
chmod 0755 "$root/etc/kernel/postinst.d/dracut"
"#
    .to_owned();

    let customize = r#"#!/bin/sh
# nodeimg rootfs: mmdebstrap customize hook. $1 is the finished rootfs.
set -eu
root="$1"

# The .debs were synced out to the cache already; keep them out of the image.
rm -f "$root"/var/cache/apt/archives/*.deb

# Undo the essential hook's diversion so the image carries dracut's real hook.
rm -f "$root/etc/kernel/postinst.d/dracut"
chroot "$root" dpkg-divert --quiet --local --rename --remove /etc/kernel/postinst.d/dracut

# Debian's ostree-boot ships the dracut module 98ostree, but dracut only includes it when
# named. hostonly=no: the image boots on any machine, not the build host.
mkdir -p "$root/etc/dracut.conf.d"
cat > "$root/etc/dracut.conf.d/90-nodeimg-ostree.conf" <<'EOF'
add_dracutmodules+=" ostree systemd "
hostonly="no"
compress="zstd"
EOF

set -- "$root"/usr/lib/modules/*
if [ "$#" -ne 1 ] || [ ! -d "$1" ]; then
    echo "nodeimg: expected exactly one kernel under /usr/lib/modules, found: $*" >&2
    exit 1
fi
kver="${1##*/}"
chroot "$root" dracut --quiet --force --no-hostonly --kver "$kver" "/usr/lib/modules/$kver/initramfs.img"
"#
    .to_owned();
    vec![("essential.sh", essential), ("customize.sh", customize)]
}

/// The mmdebstrap command line for `base`, with the hook scripts in `hooks_dir`.
pub fn mmdebstrap_command(
    base: &Base,
    arch: Arch,
    debs: &Path,
    hooks_dir: &Path,
    target: &Path,
) -> Result<Cmd> {
    // Special hooks split their arguments on whitespace: a path with a space would break.
    let debs_str = debs.to_str().filter(|s| !s.contains(char::is_whitespace));
    let debs_str = debs_str.with_context(|| {
        format!(
            "the cache directory {} contains whitespace or is not UTF-8; mmdebstrap's \
             sync-in/sync-out cannot take it: choose another --cache-dir",
            debs.display()
        )
    })?;
    let mut include: Vec<String> = base.packages.clone();
    include.extend(base.exclude.iter().map(|p| format!("{p}-")));
    let mut cmd = Cmd::new("mmdebstrap")
        .arg("--mode=unshare")
        .arg("--variant=apt")
        .arg("--format=directory")
        .arg(format!("--architectures={}", arch.debian()))
        .arg(format!("--components={}", base.components.join(",")));
    if !include.is_empty() {
        cmd = cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd = cmd
        .arg("--skip=essential/unlink")
        .arg(r#"--setup-hook=mkdir -p "$1"/var/cache/apt/archives/"#)
        .arg(format!(
            "--setup-hook=sync-in {debs_str} /var/cache/apt/archives/"
        ))
        .arg(format!(
            "--essential-hook={}",
            hooks_dir.join("essential.sh").display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {debs_str}"
        ))
        .arg(format!(
            "--customize-hook={}",
            hooks_dir.join("customize.sh").display()
        ))
        .arg(&base.suite)
        .arg(target);
    for m in &base.mirrors {
        cmd = cmd.arg(m.as_str());
    }
    Ok(cmd.env("LC_ALL", "C.UTF-8"))
}

fn run_mmdebstrap(
    base: &Base,
    arch: Arch,
    cache: &Cache,
    staging: &Path,
    tree: &Path,
) -> Result<()> {
    let hooks = staging.join("hooks");
    fs::create_dir_all(&hooks).with_context(|| format!("creating {}", hooks.display()))?;
    for (name, text) in render_hooks() {
        nodeimg_common::fsutil::atomic_write_mode(hooks.join(name), text, 0o755)?;
    }
    let cmd = mmdebstrap_command(base, arch, &cache.debs_dir(), &hooks, tree)?;
    cmd.forward_stderr().run().map_err(|e| {
        let mirrors: Vec<&str> = base.mirrors.iter().map(|m| m.as_str()).collect();
        let text = e.to_string();
        let hint = if text.contains("Failed to fetch")
            || text.contains("Could not resolve")
            || text.contains("Temporary failure resolving")
            || text.contains("Unable to connect")
            || text.contains("does not have a Release file")
        {
            format!(
                "; hint: a package mirror is unreachable or wrong, check [base] mirrors ({})",
                mirrors.join(", ")
            )
        } else {
            String::new()
        };
        anyhow::Error::new(e).context(format!(
            "installing packages with mmdebstrap ({} {}){hint}",
            base.suite,
            arch.debian()
        ))
    })?;
    fs::remove_dir_all(&hooks).with_context(|| format!("removing {}", hooks.display()))
}

/// Unpack a rootfs tarball (plain, gzip or zstd, detected by magic) keeping ownership,
/// modes and extended attributes.
pub fn extract_tar(tarball: &Path, dest: &Path) -> Result<()> {
    let mut f =
        fs::File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("reading {}", tarball.display()))?;
    let f = fs::File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(BufReader::new(f))),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            zstd::stream::read::Decoder::new(f)
                .with_context(|| format!("reading {}", tarball.display()))?,
        ),
        _ => Box::new(BufReader::new(f)),
    };
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive
        .unpack(dest)
        .with_context(|| format!("unpacking {} into {}", tarball.display(), dest.display()))
}

/// Copy a directory tree with everything ostree commits: ownership, modes, xattrs,
/// hardlinks, symlinks. `cp -a` does all of that; std has no xattr or hardlink-preserving
/// copy.
pub fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    Cmd::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--")
        .arg(src)
        .arg(dest)
        .run()
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))
}

/// A digest over the listing of a directory (path, type, mode, owner, size, mtime): cheap,
/// and changes whenever a file does in practice.
fn dir_listing_digest(root: &Path) -> Result<Sha256Hex> {
    let mut k = KeyBuilder::new("dir-listing/v1");
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        names.sort();
        for name in names.into_iter().rev() {
            let r = rel.join(&name);
            let md = fs::symlink_metadata(root.join(&r))
                .with_context(|| format!("reading {}", root.join(&r).display()))?;
            k = k.field(
                "entry",
                format!(
                    "{} {:o} {}:{} {} {}.{}",
                    r.display(),
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.size(),
                    md.mtime(),
                    md.mtime_nsec()
                ),
            );
            if md.is_dir() {
                stack.push(r);
            }
        }
    }
    Ok(k.finish())
}

/// The installed packages of a tree, from its dpkg database. A tree without one (a
/// hand-made fixture) has no packages.
pub fn read_packages(tree: &Path) -> Result<Vec<Package>> {
    let status = tree.join("var/lib/dpkg/status");
    match fs::read_to_string(&status) {
        Ok(text) => Ok(parse_dpkg_status(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", status.display())),
    }
}

/// Parse `/var/lib/dpkg/status`: the packages whose status is `install ok installed`,
/// sorted by name.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, None, None, false);
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "Package" => name = Some(v.to_owned()),
                "Version" => version = Some(v.to_owned()),
                "Architecture" => arch = Some(v.to_owned()),
                "Status" => installed = v.ends_with(" installed") && v.starts_with("install "),
                _ => {}
            }
        }
        if let (Some(name), Some(version), Some(arch), true) = (name, version, arch, installed) {
            out.push(Package {
                name,
                version,
                arch,
            });
        }
    }
    out.sort();
    out
}

/// Check that the tree has an initramfs for `kver` and, with [`InitramfsCheck::Lsinitrd`],
/// that it contains ostree's prepare-root (without it the image cannot find its deployment).
pub fn verify_initramfs(tree: &Path, kver: &str, check: InitramfsCheck) -> Result<()> {
    let rel = format!("usr/lib/modules/{kver}/initramfs.img");
    let img = tree.join(&rel);
    if !img.is_file() {
        bail!(
            "no initramfs at /{rel} in the rootfs: the image cannot boot (for kind = \"apt\" \
             the recipe must install dracut; a tar/dir base must ship it at that path)"
        );
    }
    if check == InitramfsCheck::ExistsOnly {
        tracing::warn!(initramfs = %img.display(), "initramfs content not verified (switched off)");
        return Ok(());
    }
    // lsinitrd needs /dev and /proc: give it both in a private mount namespace so the host
    // sees no mounts, whatever happens. The listing is captured first and searched here
    // (a pipe into grep -q would die of SIGPIPE under pipefail).
    let script = r#"set -e
mount --make-rprivate /
mount --rbind /dev "$1/dev"
mount -t proc proc "$1/proc"
exec chroot "$1" lsinitrd "$2""#;
    for d in ["dev", "proc"] {
        fs::create_dir_all(tree.join(d))
            .with_context(|| format!("creating {}", tree.join(d).display()))?;
    }
    let listing = Cmd::new("unshare")
        .args(["--mount", "--fork", "--", "sh", "-c", script, "sh"])
        .arg(tree)
        .arg(format!("/{rel}"))
        .stdout_string()
        .with_context(|| format!("listing the initramfs /{rel} with lsinitrd inside the rootfs"))?;
    if !listing
        .lines()
        .any(|l| l.trim_end().ends_with(PREPARE_ROOT))
    {
        bail!(
            "the initramfs /{rel} does not contain {PREPARE_ROOT}: it cannot mount the OSTree \
             deployment (install ostree-boot and make dracut include the `ostree` module)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: base-files\nStatus: install ok installed\nPriority: required\nArchitecture: amd64\nVersion: 12.4+deb12u7\nDescription: Debian base system miscellaneous files\n This package contains the basic filesystem hierarchy.\n\nPackage: adduser\nStatus: install ok installed\nArchitecture: all\nVersion: 3.134\n\nPackage: removed-one\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n";

    #[test]
    fn dpkg_status_keeps_installed_sorted() {
        let p = parse_dpkg_status(STATUS);
        assert_eq!(
            p,
            vec![
                Package {
                    name: "adduser".into(),
                    version: "3.134".into(),
                    arch: "all".into()
                },
                Package {
                    name: "base-files".into(),
                    version: "12.4+deb12u7".into(),
                    arch: "amd64".into()
                },
            ]
        );
    }

    fn base(toml_text: &str) -> Base {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn key_ignores_package_order_and_tracks_content() {
        let a = base("packages = [\"a\", \"b\"]");
        let b = base("packages = [\"b\", \"a\", \"a\"]");
        let c = base("packages = [\"a\", \"b\", \"c\"]");
        let d = base("packages = [\"a\", \"b\"]\nmirrors = [\"http://127.0.0.1/debian\"]");
        let k = |b: &Base| rootfs_key(b, Arch::X86_64, None).unwrap();
        assert_eq!(k(&a), k(&b));
        assert_ne!(k(&a), k(&c));
        assert_ne!(k(&a), k(&d));
    }

    #[test]
    fn mmdebstrap_command_line() {
        let b = base(
            "packages = [\"systemd\", \"dracut\"]\nexclude = [\"nano\"]\nmirrors = [\"http://127.0.0.1:3142/debian\"]",
        );
        let cmd = mmdebstrap_command(
            &b,
            Arch::X86_64,
            Path::new("/c/debs"),
            Path::new("/c/tmp/h"),
            Path::new("/c/tmp/t"),
        )
        .unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--mode=unshare",
                "--variant=apt",
                "--format=directory",
                "--architectures=amd64",
                "--components=main",
                "--include=systemd,dracut,nano-",
                "--skip=essential/unlink",
                r#"--setup-hook=mkdir -p "$1"/var/cache/apt/archives/"#,
                "--setup-hook=sync-in /c/debs /var/cache/apt/archives/",
                "--essential-hook=/c/tmp/h/essential.sh",
                "--customize-hook=sync-out /var/cache/apt/archives /c/debs",
                "--customize-hook=/c/tmp/h/customize.sh",
                "bookworm",
                "/c/tmp/t",
                "http://127.0.0.1:3142/debian",
            ]
        );
        assert!(mmdebstrap_command(
            &b,
            Arch::X86_64,
            Path::new("/my cache/debs"),
            Path::new("/h"),
            Path::new("/t")
        )
        .is_err());
    }

    #[test]
    fn hooks_match_golden() {
        for (name, text) in render_hooks() {
            crate::compose::node_render::check_golden(&format!("rootfs-hooks/{name}"), &text);
        }
    }

    #[test]
    fn tar_kinds_unpack() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        let plain = b.into_inner().unwrap();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &plain).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        for (i, data) in [plain, gz, zst].iter().enumerate() {
            let t = d.path().join(format!("r{i}.tar"));
            fs::write(&t, data).unwrap();
            let out = d.path().join(format!("out{i}"));
            extract_tar(&t, &out).unwrap();
            assert_eq!(fs::read_to_string(out.join("etc/hello")).unwrap(), "hello");
            let mode = fs::metadata(out.join("etc/hello")).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o640);
        }
    }
}

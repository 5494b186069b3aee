//! The `pxe` format: kickstart, per-machine kickstarts and network boot configs (rendered by
//! [`crate::kickstart`]) plus the image's kernel, under `pxe/` in the output directory.
//!
//! Served layout: `--http-base` is the URL the output directory `<name>-<version>/` is served
//! at. The boot configs load `pxe/vmlinuz` and `pxe/installer.img` from there, the built-in
//! installer streams `<name>-<version>.raw` from there, and the kickstart pulls the commit
//! from `<http-base>/repo` (publish the archive repository, or a link to it, there).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::{KeyBuilder, Sha256Hex};
use nodeimg_common::fsutil::AtomicFile;
use nodeimg_common::Cmd;
use ostree::gio;
use ostree::prelude::*;

use crate::cache::Cache;
use crate::commit;
use crate::kickstart::{self, inventory::Inventory, PxeRequest};
use crate::manifest::OutputDir;
use crate::progress;
use crate::recipe::schema::Recipe;

/// The `pxe` flags of `nodeimg build`.
#[derive(Debug, Clone, Default)]
pub struct PxeOptions {
    /// URL the output directory is served at (required for `pxe`).
    pub http_base: Option<String>,
    /// nodeboot config embedded in the generic kickstart.
    pub user_data: Option<PathBuf>,
    /// Per-machine hostnames, roles and user-data.
    pub inventory: Option<PathBuf>,
    /// Disk the built-in installer writes (default `/dev/sda`).
    pub install_device: Option<String>,
    /// Node config URL: `nodeboot.config=` for the built-in installer (which places the
    /// config on the disk) and on the kickstart-installed system's kernel line.
    pub config_url: Option<String>,
}

/// The PXE inputs, read and validated before the build starts (a bad user-data file must
/// not cost a rootfs build).
#[derive(Debug, Clone)]
pub struct PxeInputs {
    pub http_base: String,
    pub user_data: Option<String>,
    pub inventory: Option<Inventory>,
    pub install_device: Option<String>,
    pub config_url: Option<String>,
}

/// The URL the booted system upgrades from when the build knows one: the repository under
/// `--http-base`.
pub fn remote_for(opts: &PxeOptions, osname: &str) -> Option<(String, String)> {
    opts.http_base.as_ref().map(|b| {
        (
            osname.to_owned(),
            format!("{}/repo", b.trim_end_matches('/')),
        )
    })
}

/// Check the HTTP base URL and read the user-data and inventory files.
pub fn check(opts: &PxeOptions) -> Result<PxeInputs> {
    let Some(base) = &opts.http_base else {
        bail!(
            "--format pxe needs --http-base URL: the URL the output directory is served at \
             (the boot configs and kickstart refer to files under it)"
        );
    };
    let url = url::Url::parse(base).with_context(|| format!("--http-base `{base}`"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--http-base `{base}` must be an http:// or https:// URL with a host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--http-base `{base}` must not have a query or fragment: paths are appended to it");
    }
    let user_data = match &opts.user_data {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading --userdata {}", p.display()))?;
            kickstart::validate_user_data(&text, p)?;
            Some(text)
        }
        None => None,
    };
    let inventory = match &opts.inventory {
        Some(p) => Some(Inventory::load(p)?),
        None => None,
    };
    if let Some(dev) = &opts.install_device {
        if !dev.starts_with("/dev/") || dev.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--install-device `{dev}` must be a /dev/ path without spaces");
        }
    }
    if let Some(u) = &opts.config_url {
        check_config_url(u)?;
    }
    Ok(PxeInputs {
        http_base: base.trim_end_matches('/').to_owned(),
        user_data,
        inventory,
        install_device: opts.install_device.clone(),
        config_url: opts.config_url.clone(),
    })
}

/// The schemes nodeboot fetches a config from; no spaces (it is one kernel argument).
fn check_config_url(u: &str) -> Result<()> {
    let scheme_ok = ["http://", "https://", "file://"]
        .iter()
        .any(|s| u.starts_with(s) && u.len() > s.len());
    if !scheme_ok
        || u.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        bail!(
            "--config-url `{u}` must be an http://, https:// or file:// URL without spaces or quotes \
             (it becomes `nodeboot.config=URL` on a kernel command line)"
        );
    }
    Ok(())
}

/// What the PXE stage gets from the build.
#[derive(Debug)]
pub struct PxeBuild<'a> {
    pub recipe: &'a Recipe,
    pub repo: &'a Path,
    pub checksum: &'a str,
    pub kernel_version: &'a str,
    /// The raw image's file name in the output directory and its sha256, when built.
    pub raw_image: Option<(String, Sha256Hex)>,
    /// The nodeboot binary baked into the image (`None`: nodeboot disabled).
    pub nodeboot: Option<&'a Path>,
    pub cache: &'a Cache,
}

/// Bump when the installer initramfs changes for the same inputs.
const INSTALLER_VERSION: &str = "installer/v1";
/// Installer images kept in the cache.
const KEEP_INSTALLERS: usize = 2;

/// Render and write `pxe/` into the output directory, register every file, and return the
/// notes for what could not be produced.
pub fn write(b: &PxeBuild<'_>, inputs: &PxeInputs, out: &mut OutputDir) -> Result<Vec<String>> {
    let step = progress::step("pxe");
    let mut req = PxeRequest::from_recipe(b.recipe, b.checksum, &inputs.http_base);
    req.user_data = inputs.user_data.clone();
    if let Some(key) = crate::build::gpg_key(b.recipe) {
        // Embedded in the kickstart rather than fetched at install time: trust must not come
        // from the server that also serves the commits.
        req.gpg_key = Some(crate::commit::public_key_binary(&key)?);
    }
    if let Some(dev) = &inputs.install_device {
        req.install_device = dev.clone();
    }
    req.config_url = inputs.config_url.clone();
    req.raw_image = b
        .raw_image
        .as_ref()
        .map(|(name, sha)| (name.clone(), sha.to_string()));
    let files = kickstart::render_all(&req, inputs.inventory.as_ref())?;
    let dir = out.path().join("pxe");
    kickstart::write_all(&dir, &files)?;
    for f in &files {
        out.register(&format!("pxe/{}", f.path.display()), "pxe")?;
    }

    let kernel = format!("/usr/lib/modules/{}/vmlinuz", b.kernel_version);
    copy_from_commit(b.repo, b.checksum, &kernel, &dir.join("vmlinuz"))?;
    out.register("pxe/vmlinuz", "pxe")?;

    let mut written = files.len() + 1;
    let mut notes = Vec::new();
    match installer(b, &dir.join("installer.img"))? {
        None => {
            out.register("pxe/installer.img", "pxe")?;
            written += 1;
        }
        Some(why) => notes.push(format!(
            "pxe/installer.img was not produced: {why}; the boot menus' `nodeimg` entry \
             (built-in installer) needs it, the Anaconda entry does not"
        )),
    }
    if b.raw_image.is_none() {
        notes.push(
            "the built-in installer entry has no image URL: build the `raw` format together \
             with `pxe` to complete it"
                .to_owned(),
        );
    }
    for n in &notes {
        step.note(n);
    }
    step.done_with(&format!("{written} files"));
    Ok(notes)
}

/// Write the installer initramfs to `dest` (from the cache when this commit, kernel and
/// nodeboot binary made one before). `Some(reason)` when the image cannot have one.
fn installer(b: &PxeBuild<'_>, dest: &Path) -> Result<Option<String>> {
    let Some(nodeboot) = b.nodeboot else {
        return Ok(Some("nodeboot is disabled in the recipe".to_owned()));
    };
    let has_dracut = commit_has_path(b.repo, b.checksum, "/usr/bin/dracut")?
        || commit_has_path(b.repo, b.checksum, "/usr/sbin/dracut")?;
    if !has_dracut {
        return Ok(Some(
            "the image has no dracut (the installer initramfs is made with the image's own \
             dracut and kernel modules)"
                .to_owned(),
        ));
    }
    let key = KeyBuilder::new(INSTALLER_VERSION)
        .field("nodeimg", env!("CARGO_PKG_VERSION"))
        .field("commit", b.checksum)
        .field("kernel", b.kernel_version)
        .field("nodeboot", Sha256Hex::of_file(nodeboot)?.as_str())
        .finish();
    let cached = b.cache.installer_image(&key);
    if cached.is_file() {
        b.cache.touch(&cached)?;
    } else {
        let work = b.cache.temp_dir("installer")?;
        let tree = work.path().join("tree");
        checkout(b, &tree)?;
        kickstart::installer::build_installer_initramfs(
            &tree,
            b.kernel_version,
            nodeboot,
            &cached,
        )?;
        drop(work);
        b.cache.gc_installers(KEEP_INSTALLERS, &key)?;
    }
    let mut src =
        std::fs::File::open(&cached).with_context(|| format!("opening {}", cached.display()))?;
    let mut f = AtomicFile::create(dest)?;
    std::io::copy(&mut src, f.file())
        .with_context(|| format!("copying {} to {}", cached.display(), dest.display()))?;
    f.commit()?;
    Ok(None)
}

/// Check the commit out into `tree`: hardlinks from the bare stage repository when it has
/// the commit (seconds), else a copy out of the archive repository.
fn checkout(b: &PxeBuild<'_>, tree: &Path) -> Result<()> {
    let stage = b.cache.stage_repo();
    let from_stage = stage.join("config").is_file()
        && commit::has_commit(&commit::open_or_create_stage_repo(&stage)?, b.checksum)?;
    let mut cmd = Cmd::new("ostree").arg("checkout");
    cmd = if from_stage {
        cmd.arg(format!("--repo={}", stage.display()))
            .arg("--require-hardlinks")
    } else {
        cmd.arg(format!("--repo={}", b.repo.display()))
    };
    cmd.arg(b.checksum)
        .arg(tree)
        .run()
        .with_context(|| format!("checking out commit {} to {}", b.checksum, tree.display()))
}

/// Whether `path` exists in the commit.
fn commit_has_path(repo: &Path, checksum: &str, path: &str) -> Result<bool> {
    let r = commit::open_or_create_repo(repo)?;
    let (root, _) = r
        .read_commit(checksum, gio::Cancellable::NONE)
        .with_context(|| format!("reading commit {checksum}"))?;
    Ok(root
        .resolve_relative_path(path.trim_start_matches('/'))
        .query_exists(gio::Cancellable::NONE))
}

/// Copy one file of a commit out of the repository (atomically).
pub fn copy_from_commit(repo: &Path, checksum: &str, path: &str, dest: &Path) -> Result<()> {
    let r = commit::open_or_create_repo(repo)?;
    let cancel = gio::Cancellable::NONE;
    let (root, _) = r
        .read_commit(checksum, cancel)
        .with_context(|| format!("reading commit {checksum}"))?;
    let file = root
        .resolve_relative_path(path.trim_start_matches('/'))
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("libostree returned a path that is not a RepoFile"))?;
    file.ensure_resolved()
        .with_context(|| format!("{path} is not in commit {checksum}"))?;
    let (stream, _, _) = r
        .load_file(&file.checksum(), cancel)
        .with_context(|| format!("loading {path} of commit {checksum}"))?;
    let stream = stream.with_context(|| format!("{path} in commit {checksum} is not a file"))?;
    let mut reader = stream.into_read();
    let mut f = AtomicFile::create(dest)?;
    std::io::copy(&mut reader, f.file())
        .with_context(|| format!("copying {path} of {checksum} to {}", dest.display()))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_base_is_required_and_checked() {
        let err = check(&PxeOptions::default()).unwrap_err().to_string();
        assert!(err.contains("--http-base"), "{err}");
        for bad in ["ftp://h/x", "not a url", "http://h/x?y=1", "file:///srv"] {
            let o = PxeOptions {
                http_base: Some(bad.into()),
                ..PxeOptions::default()
            };
            assert!(check(&o).is_err(), "{bad}");
        }
        let o = PxeOptions {
            http_base: Some("http://10.0.0.1:8080/images/k8s-node-1.0.0/".into()),
            install_device: Some("/dev/nvme0n1".into()),
            ..PxeOptions::default()
        };
        let i = check(&o).unwrap();
        assert_eq!(i.http_base, "http://10.0.0.1:8080/images/k8s-node-1.0.0");
        let o = PxeOptions {
            install_device: Some("sda".into()),
            ..o
        };
        assert!(check(&o).is_err());
    }

    #[test]
    fn config_url_is_checked() {
        let o = PxeOptions {
            http_base: Some("http://h/".into()),
            config_url: Some("http://10.0.2.100:8080/nodes/node-1.toml".into()),
            ..PxeOptions::default()
        };
        assert_eq!(
            check(&o).unwrap().config_url.as_deref(),
            Some("http://10.0.2.100:8080/nodes/node-1.toml")
        );
        for bad in [
            "ftp://h/c.toml",
            "http://",
            "http://h/a b.toml",
            "/srv/c.toml",
        ] {
            let o = PxeOptions {
                config_url: Some(bad.into()),
                ..o.clone()
            };
            let err = check(&o).unwrap_err().to_string();
            assert!(err.contains("--config-url"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_user_data_is_refused_before_the_build() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ud.toml");
        std::fs::write(&p, "this is = not [valid").unwrap();
        let o = PxeOptions {
            http_base: Some("http://h/".into()),
            user_data: Some(p.clone()),
            ..PxeOptions::default()
        };
        let err = format!("{:#}", check(&o).unwrap_err());
        assert!(err.contains("ud.toml"), "{err}");
        let missing = PxeOptions {
            user_data: Some(d.path().join("nope.toml")),
            ..o
        };
        assert!(format!("{:#}", check(&missing).unwrap_err()).contains("nope.toml"));
        // Inline join material: valid for nodeboot, but never embedded in a kickstart.
        std::fs::write(
            &p,
            "version = 1\nrole = \"join-worker\"\n\n[cluster]\nname = \"c\"\n\
             control-plane-endpoint = \"10.0.0.10:6443\"\nkubernetes-version = \"v1.34.2\"\n\n\
             [join]\ninsecure-inline = true\ntoken = \"abcdef.0123456789abcdef\"\n\
             ca-cert-hashes = [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]\n",
        )
        .unwrap();
        let o = PxeOptions {
            user_data: Some(p.clone()),
            ..missing
        };
        let err = format!("{:#}", check(&o).unwrap_err());
        assert!(err.contains("join material inline"), "{err}");
    }

    #[test]
    fn remote_follows_http_base() {
        let o = PxeOptions {
            http_base: Some("http://h/img/".into()),
            ..PxeOptions::default()
        };
        assert_eq!(
            remote_for(&o, "nodeimg"),
            Some(("nodeimg".into(), "http://h/img/repo".into()))
        );
        assert_eq!(remote_for(&PxeOptions::default(), "nodeimg"), None);
    }
}

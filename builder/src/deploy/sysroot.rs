//! The libostree part of the deploy stage, through the `ostree` crate.
//!
//! Everything here runs on one dedicated thread ([`run_on_ostree_thread`]): GLib objects are
//! not `Send`, libostree keeps per-thread state (the thread-default main context used by
//! pulls), and the caller may be anywhere, including an async runtime worker.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nodeimg_common::Cmd;
use ostree::gio;
use ostree::glib;

/// Bootloader backend during the host-side deploy: none, so libostree never runs the
/// *host's* bootloader tooling (the build host has grub-common, hence a real grub-mkconfig).
const HOST_BOOTLOADER: &str = "none";
/// Bootloader backend in the image: libostree then runs the image's `/usr/sbin/grub-mkconfig`
/// shim on every in-VM deploy.
const IMAGE_BOOTLOADER: &str = "grub2";

/// What the ostree thread needs.
#[derive(Debug, Clone)]
pub struct OstreeDeploy {
    pub sysroot: PathBuf,
    pub source_repo: PathBuf,
    pub ref_name: String,
    pub osname: String,
    pub kernel_args: Vec<String>,
    pub remote: Option<(String, String)>,
    /// Public key file of a GPG-signed commit (see [`super::DeployRequest::gpg_key`]).
    pub gpg_key: Option<PathBuf>,
}

/// What came out of libostree.
#[derive(Debug, Clone)]
pub struct OstreeDeployed {
    pub commit: String,
    pub bootcsum: String,
    /// Relative to the sysroot, e.g. `ostree/deploy/debian/deploy/<commit>.0`.
    pub deployment_path: String,
}

/// Run `f` on a fresh thread and wait for it.
pub fn run_on_ostree_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("ostree-deploy".into())
            .spawn_scoped(s, f)
            .context("starting the ostree thread")?
            .join()
            .map_err(|_| anyhow!("the ostree thread panicked"))?
    })
}

/// `ostree admin init-fs --modern` + `os-init` + `pull-local` + `admin deploy`, with the
/// bootloader set to none for the duration.
pub fn init_and_deploy(req: &OstreeDeploy) -> Result<OstreeDeployed> {
    let root = &req.sysroot;
    // init-fs --modern creates exactly `boot/` and the `ostree/` hierarchy; the latter is
    // what `ensure_initialized` does.
    std::fs::create_dir_all(root.join("boot"))
        .with_context(|| format!("creating {}/boot", root.display()))?;
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(root)));
    sysroot
        .ensure_initialized(gio::Cancellable::NONE)
        .with_context(|| format!("initialising the sysroot {}", root.display()))?;
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading the sysroot {}", root.display()))?;
    sysroot
        .init_osname(&req.osname, gio::Cancellable::NONE)
        .with_context(|| format!("os-init `{}` in {}", req.osname, root.display()))?;

    let repo = sysroot.repo();
    set_bootloader(&repo, HOST_BOOTLOADER)?;
    let commit = pull_local(&repo, &req.source_repo, &req.ref_name)?;

    // The local ref the in-VM upgrade follows: `remote:ref` when a remote is configured (what
    // `ostree pull remote ref` would leave behind), else the plain ref.
    let refspec = match &req.remote {
        Some((name, url)) => {
            let repo_dir = root.join("ostree/repo");
            add_remote(&repo, &repo_dir, name, url, req.gpg_key.as_deref())?;
            if req.gpg_key.is_some() {
                verify_for_remote(&repo, &commit, name)?;
            }
            repo.set_ref_immediate(
                Some(name),
                &req.ref_name,
                Some(&commit),
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("setting ref {name}:{}", req.ref_name))?;
            format!("{name}:{}", req.ref_name)
        }
        None => {
            repo.set_ref_immediate(None, &req.ref_name, Some(&commit), gio::Cancellable::NONE)
                .with_context(|| format!("setting ref {}", req.ref_name))?;
            req.ref_name.clone()
        }
    };

    sysroot
        .lock()
        .with_context(|| format!("locking the sysroot {}", root.display()))?;
    let deployed = deploy_locked(&sysroot, req, &commit, &refspec);
    sysroot.unlock();
    deployed
}

fn deploy_locked(
    sysroot: &ostree::Sysroot,
    req: &OstreeDeploy,
    commit: &str,
    refspec: &str,
) -> Result<OstreeDeployed> {
    let origin = sysroot.origin_new_from_refspec(refspec);
    let kargs: Vec<&str> = req.kernel_args.iter().map(String::as_str).collect();
    let deployment = sysroot
        .deploy_tree(
            Some(&req.osname),
            commit,
            Some(&origin),
            None,
            &kargs,
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("deploying {commit} ({refspec})"))?;
    sysroot
        .simple_write_deployment(
            Some(&req.osname),
            &deployment,
            None,
            ostree::SysrootSimpleWriteDeploymentFlags::NONE,
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("writing the deployment of {commit}"))?;
    let deployment_path = sysroot.deployment_dirpath(&deployment).to_string();
    Ok(OstreeDeployed {
        commit: deployment.csum().to_string(),
        bootcsum: deployment.bootcsum().to_string(),
        deployment_path,
    })
}

/// Switch the sysroot's repo to the bootloader backend the image uses. Called after the
/// boot menu has been written.
pub fn set_image_bootloader(sysroot: &Path) -> Result<()> {
    let repo_path = sysroot.join("ostree/repo");
    let repo = ostree::Repo::new(&gio::File::for_path(&repo_path));
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening {}", repo_path.display()))?;
    set_bootloader(&repo, IMAGE_BOOTLOADER)
}

fn set_bootloader(repo: &ostree::Repo, value: &str) -> Result<()> {
    let config = repo.copy_config();
    config.set_string("sysroot", "bootloader", value);
    repo.write_config(&config)
        .with_context(|| format!("setting sysroot.bootloader={value}"))
}

/// Equivalent of `ostree pull-local SOURCE REF`: a pull from a `file://` URL, which libostree
/// turns into a local import (hardlinks where the repo modes allow it). The ref is resolved
/// first and the commit pulled by checksum, so a ref moving meanwhile cannot mix two commits.
fn pull_local(repo: &ostree::Repo, source: &Path, ref_name: &str) -> Result<String> {
    let source = source
        .canonicalize()
        .with_context(|| format!("source repository {}", source.display()))?;
    let src = ostree::Repo::new(&gio::File::for_path(&source));
    src.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening {}", source.display()))?;
    let commit = src
        .resolve_rev(ref_name, false)
        .with_context(|| format!("resolving {ref_name} in {}", source.display()))?
        .with_context(|| format!("{ref_name} does not exist in {}", source.display()))?
        .to_string();
    let url = format!("file://{}", source.display());
    let options = glib::VariantDict::new(None);
    options.insert("refs", vec![commit.clone()]);
    repo.pull_with_options(&url, &options.end(), None, gio::Cancellable::NONE)
        .with_context(|| format!("pulling {ref_name} ({commit}) from {}", source.display()))?;
    Ok(commit)
}

/// Configure the remote the booted system upgrades from. With the public key of a signed
/// commit it verifies every pull (`gpg-verify=true`, the key in the remote's own keyring);
/// without one, commits are unsigned and verification would refuse them.
fn add_remote(
    repo: &ostree::Repo,
    repo_dir: &Path,
    name: &str,
    url: &str,
    gpg_key: Option<&Path>,
) -> Result<()> {
    let options = glib::VariantDict::new(None);
    options.insert("gpg-verify", gpg_key.is_some());
    repo.remote_add(
        name,
        Some(url),
        Some(&options.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("adding remote {name} ({url})"))?;
    if let Some(key) = gpg_key {
        // The CLI rather than `Repo::remote_gpg_import`: the binding turns "all keys in the
        // file" (a NULL key list) into an empty list, which imports nothing.
        Cmd::new("ostree")
            .arg(format!("--repo={}", repo_dir.display()))
            .args(["remote", "gpg-import"])
            .arg(format!("--keyring={}", key.display()))
            .arg(name)
            .run()
            .with_context(|| {
                format!(
                    "importing the GPG public key {} into remote {name}",
                    key.display()
                )
            })?;
    }
    Ok(())
}

/// Check the deployed commit verifies against the remote's keyring, as the node's next
/// `ostree admin upgrade` will: an image that cannot verify its own commit's signer could
/// never upgrade.
fn verify_for_remote(repo: &ostree::Repo, commit: &str, remote: &str) -> Result<()> {
    let result = repo
        .verify_commit_for_remote(commit, remote, gio::Cancellable::NONE)
        .with_context(|| format!("verifying commit {commit} against remote {remote}'s keys"))?;
    result
        .require_valid_signature()
        .with_context(|| format!("commit {commit} has no good signature by remote {remote}'s keys"))
}

//! Stage `commit`: the OSTree-ready tree into an archive-mode repository with metadata.
//! (Named `commit`, not `ostree` as in DESIGN.md, so it does not shadow the `ostree` crate.)
//!
//! Uses libostree through the `ostree` crate. glib objects are not `Send`: every call here
//! runs on the caller's thread, and nothing in this module spawns one.
//!
//! The commit is reproducible: a fixed timestamp, metadata built in sorted key order, and the
//! tree's real owners, modes and xattrs (the build runs as root). The same tree and metadata
//! on the same parent give the same checksum. Objects, the optional signature and the ref
//! are written in one transaction: a failure leaves the ref where it was.

mod gpg;
mod inspect;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use glib::prelude::*;
use glib::{Variant, VariantTy};
use ostree::gio;
use ostree::prelude::*;

pub use gpg::{copy_signatures, export_public_key, public_key_binary, verify_signed_by, GpgKey};
pub use inspect::{inspect, render_text, CommitInfo};

use crate::compose::Package;

/// libostree is not safe to drive from two threads of one process at once: two local pulls
/// running in parallel aborted inside libostree (`n_outstanding_content_write_requests > 0`).
/// Every builder entry point that writes a repository with libostree (commit, publish,
/// deploy) holds this lock for its duration. A build runs them one after another anyway;
/// only callers that build in parallel in one process (tests, library users) wait.
pub fn libostree_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Commit timestamp used when neither `SOURCE_DATE_EPOCH` nor the recipe sets one.
pub const DEFAULT_TIMESTAMP: u64 = 1_700_000_000;

/// Metadata keys nodeimg writes.
pub mod keys {
    pub const VERSION: &str = "version";
    pub const RECIPE_DIGEST: &str = "nodeimg.recipe-digest";
    pub const KUBERNETES_VERSION: &str = "nodeimg.kubernetes-version";
    pub const PACKAGES: &str = "nodeimg.packages";
    pub const IMAGE: &str = "nodeimg.image";
    pub const LINUX: &str = "ostree.linux";
    pub const BOOTABLE: &str = "ostree.bootable";
    pub const REF_BINDING: &str = "ostree.ref-binding";
}

/// What the commit says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMetadata {
    /// The platform version (what `ostree admin status` shows as `Version:`).
    pub version: String,
    pub image: String,
    pub recipe_digest: String,
    pub kubernetes_version: String,
    pub kernel_version: String,
    pub packages: Vec<Package>,
}

/// Where and how to commit.
#[derive(Debug, Clone)]
pub struct CommitSpec<'a> {
    pub repo: &'a Path,
    pub ostree_ref: &'a str,
    pub subject: String,
    pub metadata: &'a CommitMetadata,
    /// Seconds since the epoch; see [`commit_timestamp`].
    pub timestamp: u64,
    /// ed25519 secret key file (base64, as `ostree sign` reads it).
    pub sign_key: Option<&'a Path>,
    /// GPG key to sign with (libostree's GPG signing; works on Debian 12, unlike ed25519).
    pub gpg: Option<GpgKey<'a>>,
    /// A bare-mode repository (in the build cache) the tree is committed into first: there,
    /// files are only hashed and new objects stored uncompressed. A local pull then brings
    /// just the objects `repo` lacks into it, so only those get compressed. `None`: commit
    /// straight into `repo` (every file is hashed *and* recompressed).
    pub stage_repo: Option<&'a Path>,
}

/// What to commit: a directory, or a root tree already in the repo (a cache hit whose ref
/// has moved on: same content, new parent).
#[derive(Debug, Clone, Copy)]
pub enum CommitSource<'a> {
    Tree(&'a Path),
    Existing {
        root_contents: &'a str,
        root_metadata: &'a str,
    },
}

/// A written commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub checksum: String,
    pub parent: Option<String>,
    pub root_contents: String,
    pub root_metadata: String,
}

/// The commit timestamp: `SOURCE_DATE_EPOCH`, else the recipe's, else [`DEFAULT_TIMESTAMP`].
pub fn commit_timestamp(recipe_timestamp: Option<i64>) -> Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        return s.trim().parse::<u64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds since the epoch")
        });
    }
    match recipe_timestamp {
        Some(t) if t < 0 => bail!("commit.timestamp {t} is before 1970"),
        Some(t) => Ok(t as u64),
        None => Ok(DEFAULT_TIMESTAMP),
    }
}

/// Open the repository at `path`, creating an archive-mode one if nothing is there.
pub fn open_or_create_repo(path: &Path) -> Result<ostree::Repo> {
    open_or_create(path, ostree::RepoMode::Archive)
}

/// Open the bare-mode staging repository at `path` (see [`CommitSpec::stage_repo`]),
/// creating it if nothing is there.
pub fn open_or_create_stage_repo(path: &Path) -> Result<ostree::Repo> {
    open_or_create(path, ostree::RepoMode::Bare)
}

/// A new repository is made next to the target and renamed into place, so an interrupted
/// init never leaves a half-made repository.
fn open_or_create(path: &Path, mode: ostree::RepoMode) -> Result<ostree::Repo> {
    if !path.join("config").is_file() {
        if path.exists()
            && path
                .read_dir()
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            bail!(
                "{} exists but is not an OSTree repository (no config file); choose another --repo",
                path.display()
            );
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".repo-init.")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let repo = ostree::Repo::new_for_path(tmp.path());
        repo.create(mode, gio::Cancellable::NONE).with_context(|| {
            format!(
                "initialising a {mode:?}-mode repository at {}",
                path.display()
            )
        })?;
        drop(repo);
        if path.exists() {
            std::fs::remove_dir(path)
                .with_context(|| format!("removing the empty {}", path.display()))?;
        }
        let made = tmp.keep();
        std::fs::rename(&made, path)
            .with_context(|| format!("moving the new repository to {}", path.display()))?;
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening the OSTree repository {}", path.display()))?;
    Ok(repo)
}

/// The commit `ostree_ref` points at, if the ref exists.
pub fn ref_target(repo: &ostree::Repo, ostree_ref: &str) -> Result<Option<String>> {
    let rev = repo
        .resolve_rev(ostree_ref, true)
        .with_context(|| format!("resolving the ref {ostree_ref}"))?;
    Ok(rev.map(|r| r.to_string()))
}

/// Whether the repository has the commit object `checksum`.
pub fn has_commit(repo: &ostree::Repo, checksum: &str) -> Result<bool> {
    let v = repo
        .load_variant_if_exists(ostree::ObjectType::Commit, checksum)
        .with_context(|| format!("looking up commit {checksum}"))?;
    Ok(v.is_some())
}

/// The root tree (`dirtree`, `dirmeta`) checksums of a commit.
pub fn root_checksums(repo: &ostree::Repo, checksum: &str) -> Result<(String, String)> {
    let commit = repo
        .load_variant(ostree::ObjectType::Commit, checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    let contents = ostree::checksum_from_bytes_v(&commit.child_value(6)).to_string();
    let meta = ostree::checksum_from_bytes_v(&commit.child_value(7)).to_string();
    Ok((contents, meta))
}

/// What a commit made by nodeimg records about itself (read back on a cache hit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub parent: Option<String>,
    pub packages: Vec<Package>,
    pub kernel_version: String,
}

/// Read the parent, package list and kernel version of `checksum`.
pub fn read_recorded(repo: &ostree::Repo, checksum: &str) -> Result<Recorded> {
    let commit = repo
        .load_variant(ostree::ObjectType::Commit, checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    let meta = glib::VariantDict::new(Some(&commit.child_value(0)));
    let packages: Vec<(String, String, String)> = meta
        .lookup::<Vec<(String, String, String)>>(keys::PACKAGES)
        .ok()
        .flatten()
        .with_context(|| format!("commit {checksum} has no {} metadata", keys::PACKAGES))?;
    let kernel_version = meta
        .lookup::<String>(keys::LINUX)
        .ok()
        .flatten()
        .with_context(|| format!("commit {checksum} has no {} metadata", keys::LINUX))?;
    Ok(Recorded {
        parent: ostree::commit_get_parent(&commit).map(|p| p.to_string()),
        packages: packages
            .into_iter()
            .map(|(name, version, arch)| Package {
                name,
                version,
                arch,
            })
            .collect(),
        kernel_version,
    })
}

/// The metadata as an `a{sv}` variant, keys sorted.
pub fn metadata_variant(m: &CommitMetadata, ostree_ref: &str) -> Variant {
    let packages: Vec<(String, String, String)> = m
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.arch.clone()))
        .collect();
    let mut map: BTreeMap<&str, Variant> = BTreeMap::new();
    map.insert(keys::VERSION, m.version.to_variant());
    map.insert(keys::IMAGE, m.image.to_variant());
    map.insert(keys::RECIPE_DIGEST, m.recipe_digest.to_variant());
    map.insert(keys::KUBERNETES_VERSION, m.kubernetes_version.to_variant());
    map.insert(keys::PACKAGES, packages.to_variant());
    map.insert(keys::LINUX, m.kernel_version.to_variant());
    map.insert(keys::BOOTABLE, true.to_variant());
    map.insert(keys::REF_BINDING, vec![ostree_ref.to_owned()].to_variant());
    let entries: Vec<Variant> = map
        .into_iter()
        .map(|(k, v)| Variant::from_dict_entry(&k.to_variant(), &Variant::from_variant(&v)))
        .collect();
    let ty = VariantTy::new("{sv}").expect("valid variant type");
    Variant::array_from_iter_with_type(ty, entries)
}

/// Write the commit and move the ref. The ref moves in one transaction with the signature,
/// after every object is in `spec.repo`: a failure leaves the ref where it was.
pub fn commit(spec: &CommitSpec<'_>, source: CommitSource<'_>) -> Result<Committed> {
    let _libostree = libostree_lock();
    let repo = open_or_create_repo(spec.repo)?;
    let parent = ref_target(&repo, spec.ostree_ref)?;
    let staged = match spec.stage_repo {
        Some(stage) => {
            let srepo = open_or_create_stage_repo(stage)?;
            if source_available(&srepo, source)? {
                Some((srepo, stage))
            } else {
                None
            }
        }
        None => None,
    };
    let committed = match staged {
        Some((srepo, stage)) => {
            // The stage repo keeps the ref too: the deploy stage pulls from it.
            let c = in_transaction(&srepo, |r| {
                let c = write_objects(r, spec, source, parent.as_deref())?;
                r.transaction_set_ref(None, spec.ostree_ref, Some(&c.checksum));
                Ok(c)
            })
            .with_context(|| format!("committing into the stage repository {}", stage.display()))?;
            pull_commit(&repo, stage, &c.checksum)?;
            in_transaction(&repo, |r| finish_commit(r, spec, &c.checksum))?;
            if spec.gpg.is_some() || spec.sign_key.is_some() {
                // The deploy stage pulls from the stage repo: the image's repo gets the
                // signature only if the stage repo has it too.
                copy_signatures(&repo, &srepo, &c.checksum).with_context(|| {
                    format!(
                        "copying signatures to the stage repository {}",
                        stage.display()
                    )
                })?;
            }
            c
        }
        None => in_transaction(&repo, |r| {
            let c = write_objects(r, spec, source, parent.as_deref())?;
            finish_commit(r, spec, &c.checksum)?;
            Ok(c)
        })?,
    };
    Ok(committed)
}

/// Whether `repo` can take `source`: a tree always, an existing root only when its objects
/// are there (the stage repo may be newer than the commit the cache remembers).
fn source_available(repo: &ostree::Repo, source: CommitSource<'_>) -> Result<bool> {
    match source {
        CommitSource::Tree(_) => Ok(true),
        CommitSource::Existing {
            root_contents,
            root_metadata,
        } => {
            let has = |t: ostree::ObjectType, c: &str| {
                repo.has_object(t, c, gio::Cancellable::NONE)
                    .with_context(|| format!("looking up {t:?} object {c}"))
            };
            Ok(has(ostree::ObjectType::DirTree, root_contents)?
                && has(ostree::ObjectType::DirMeta, root_metadata)?)
        }
    }
}

/// Run `f` in a transaction of `repo`; abort it when `f` fails.
fn in_transaction<T>(repo: &ostree::Repo, f: impl FnOnce(&ostree::Repo) -> Result<T>) -> Result<T> {
    let cancel = gio::Cancellable::NONE;
    repo.prepare_transaction(cancel)
        .context("starting an OSTree transaction")?;
    match f(repo) {
        Ok(v) => {
            repo.commit_transaction(cancel)
                .context("finishing the OSTree transaction")?;
            Ok(v)
        }
        Err(e) => {
            if let Err(abort) = repo.abort_transaction(cancel) {
                tracing::warn!(error = %abort, "aborting the OSTree transaction failed");
            }
            Err(e)
        }
    }
}

/// Copy commit `checksum` and the objects it needs that `repo` lacks from the repository at
/// `source` (a local pull by checksum: no ref is written, the parent is not fetched).
pub fn pull_commit(repo: &ostree::Repo, source: &Path, checksum: &str) -> Result<()> {
    let source = source
        .canonicalize()
        .with_context(|| format!("source repository {}", source.display()))?;
    let options = glib::VariantDict::new(None);
    options.insert("refs", vec![checksum.to_owned()]);
    repo.pull_with_options(
        &format!("file://{}", source.display()),
        &options.end(),
        None,
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("pulling commit {checksum} from {}", source.display()))
}

fn finish_commit(repo: &ostree::Repo, spec: &CommitSpec<'_>, checksum: &str) -> Result<()> {
    if let Some(key) = spec.sign_key {
        sign(repo, checksum, key)?;
    }
    if let Some(key) = &spec.gpg {
        gpg::sign(repo, checksum, key)?;
    }
    repo.transaction_set_ref(None, spec.ostree_ref, Some(checksum));
    Ok(())
}

/// Write the tree (or reuse the existing root) and the commit object; no ref, no signature.
fn write_objects(
    repo: &ostree::Repo,
    spec: &CommitSpec<'_>,
    source: CommitSource<'_>,
    parent: Option<&str>,
) -> Result<Committed> {
    let cancel = gio::Cancellable::NONE;
    let mtree = match source {
        CommitSource::Tree(dir) => {
            let mtree = ostree::MutableTree::new();
            // No modifier: owners, modes and xattrs are taken from the tree as they are,
            // exactly as `ostree commit --tree=dir=` does.
            repo.write_directory_to_mtree(&gio::File::for_path(dir), &mtree, None, cancel)
                .with_context(|| format!("writing {} into the repository", dir.display()))?;
            mtree
        }
        CommitSource::Existing {
            root_contents,
            root_metadata,
        } => ostree::MutableTree::from_checksum(repo, root_contents, root_metadata),
    };
    let root = repo
        .write_mtree(&mtree, cancel)
        .context("writing the root tree")?
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;
    root.ensure_resolved().context("resolving the root tree")?;
    let root_contents = root
        .tree_get_contents_checksum()
        .context("the root tree has no contents checksum")?
        .to_string();
    let root_metadata = root
        .tree_get_metadata_checksum()
        .context("the root tree has no metadata checksum")?
        .to_string();
    let metadata = metadata_variant(spec.metadata, spec.ostree_ref);
    let checksum = repo
        .write_commit_with_time(
            parent,
            Some(&spec.subject),
            None,
            Some(&metadata),
            &root,
            spec.timestamp,
            cancel,
        )
        .context("writing the commit object")?
        .to_string();
    Ok(Committed {
        checksum,
        parent: parent.map(str::to_owned),
        root_contents,
        root_metadata,
    })
}

/// Sign with ed25519 through libostree (the key never goes on a command line).
fn sign(repo: &ostree::Repo, checksum: &str, key_file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading the signing key {}", key_file.display()))?;
    let key = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("the signing key file {} is empty", key_file.display()))?;
    let signer = ostree::Sign::by_name("ed25519").context("loading the ed25519 signer")?;
    let unsupported = |e: glib::Error| {
        if e.message().contains("not implemented") || e.message().contains("libsodium") {
            anyhow::anyhow!(
                "signing commits needs libostree built with ed25519 support (libsodium); \
                 this host's libostree has none ({}). Remove commit.sign-key (sign with \
                 commit.gpg-key-id instead) or build on a host whose `ostree --version` lists \
                 sign-ed25519",
                e.message()
            )
        } else {
            anyhow::Error::new(e)
        }
    };
    signer
        .set_sk(&key.to_variant())
        .map_err(unsupported)
        .with_context(|| format!("loading the signing key {}", key_file.display()))?;
    signer
        .commit(repo, checksum, gio::Cancellable::NONE)
        .map_err(unsupported)
        .with_context(|| format!("signing commit {checksum}"))
}

/// Drop from the stage repository every object no ref reaches: it holds one tree per ref,
/// the current one (older trees are in the archive repository, which keeps history).
pub fn prune_stage_repo(path: &Path) -> Result<()> {
    let _libostree = libostree_lock();
    let repo = open_or_create_stage_repo(path)?;
    repo.prune(ostree::RepoPruneFlags::REFS_ONLY, 0, gio::Cancellable::NONE)
        .with_context(|| format!("pruning the stage repository {}", path.display()))?;
    Ok(())
}

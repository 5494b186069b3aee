//! `nodeimg build`: the pipeline from a recipe to an OSTree commit and the build's output
//! directory, stage by stage, each skipped when its cache key matches.
//!
//! ```text
//! resolve -> fetch -> rootfs -> customize -> ostreeify -> commit -> publish
//!   -> deploy -> disk -> export (raw, qcow2, vhd) -> pxe -> manifest
//! ```
//!
//! Keys: the rootfs key covers the base and package set; the customize key adds the recipe
//! digest, the artifact digests and the nodeboot binary; the commit key adds the ref and the
//! timestamp. The cache index maps the commit key to the commit: when the ref still points at
//! it, customize, ostreeify and commit are skipped entirely (and so is the rootfs, which may
//! already be garbage-collected); when the ref has moved on, the same tree is committed again
//! on top of it without rebuilding anything.

pub mod command;
pub mod images;
pub mod pxe;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use nodeimg_common::digest::{KeyBuilder, Sha256Hex};

use crate::cache::{Cache, CommitIndexEntry, KEEP_ROOTFS};
use crate::commit::{self, CommitMetadata, CommitSource, CommitSpec, Committed};
use crate::compose::{node, ostreeify, rootfs, Package};
use crate::fetch::{self, FetchOptions, Fetched, Mirror};
use crate::manifest::{self, Manifest, OutputDir, StageTiming};
use crate::progress;
use crate::publish::{self, PublishRequest};
use crate::recipe::schema::{Format, Recipe};
use crate::recipe::{self, Loaded};

pub use crate::compose::rootfs::InitramfsCheck;

/// Bump when customize/ostreeify produce a different tree for the same inputs.
const CUSTOMIZE_VERSION: &str = "customize/v1";
const COMMIT_VERSION: &str = "commit/v1";

/// Everything `nodeimg build` takes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub recipe: PathBuf,
    /// Archive-mode repository the commit goes to (created if missing).
    pub repo: PathBuf,
    /// Parent of the output directory `<name>-<version>/`.
    pub output: PathBuf,
    /// Default: [`Cache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    pub artifact_mirror: Option<Mirror>,
    pub offline: bool,
    /// Formats to produce after the commit; `None`: the recipe's `image.formats`. Carried to
    /// the later stages (disk, export, pxe).
    pub formats: Option<Vec<Format>>,
    pub initramfs_check: InitramfsCheck,
    /// `--http-base`, `--userdata`, `--inventory`, `--install-device`, `--config-url`.
    pub pxe: pxe::PxeOptions,
    /// Generate a static delta from the ref's previous commit even when the recipe does not
    /// ask for one (`commit.static-delta`).
    pub static_delta: bool,
}

impl BuildOptions {
    /// Defaults of the command line: repo `images/repo`, output `images/`, full checks.
    pub fn new(recipe: impl Into<PathBuf>) -> Self {
        BuildOptions {
            recipe: recipe.into(),
            repo: PathBuf::from("images/repo"),
            output: PathBuf::from("images"),
            cache_dir: None,
            artifact_mirror: None,
            offline: false,
            formats: None,
            initramfs_check: InitramfsCheck::Lsinitrd,
            pxe: pxe::PxeOptions::default(),
            static_delta: false,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub manifest: Manifest,
    pub output_dir: PathBuf,
}

/// What the stages after the commit get: the commit and the recipe, and the output
/// directory to put their files into (registered with [`OutputDir::register`]).
#[derive(Debug)]
pub struct PostCommit<'a> {
    pub recipe: &'a Recipe,
    pub repo: &'a Path,
    pub ostree_ref: &'a str,
    pub checksum: &'a str,
    pub timestamp: u64,
    pub kernel_version: &'a str,
    pub formats: &'a [Format],
    pub cache: &'a Cache,
    /// Remote the booted system upgrades from (from `--http-base`).
    pub remote: Option<(String, String)>,
    /// The exported public key of a GPG-signed commit: the remote verifies with it.
    pub gpg_public_key: Option<&'a Path>,
    /// Checked PXE inputs when `pxe` is among the formats.
    pub pxe: Option<&'a pxe::PxeInputs>,
    /// The nodeboot binary in the image (the PXE installer embeds it too).
    pub nodeboot: Option<&'a Path>,
}

/// Run the whole build. Errors are one line of cause plus a hint where one helps.
pub fn build(opts: &BuildOptions) -> Result<BuildOutcome> {
    run(opts).map_err(|e| explain(e, opts))
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "nodeimg build must run as root: the rootfs and commit stages create and read files \
             owned by other users (hint: sudo nodeimg build ...)"
        );
    }
    Ok(())
}

/// Stage timings, in order.
#[derive(Debug, Default)]
pub struct Timings(Vec<StageTiming>);

impl Timings {
    /// Record a stage that printed its own progress lines.
    pub fn push(&mut self, name: &str, seconds: f64, cached: bool) {
        self.0.push(StageTiming {
            name: name.to_owned(),
            seconds: (seconds * 10.0).round() / 10.0,
            cached,
        });
    }

    fn add(&mut self, name: &str, step: progress::Step, cached: bool, note: &str) {
        let seconds = step.done_with(note);
        self.push(name, seconds, cached);
    }
}

fn run(opts: &BuildOptions) -> Result<BuildOutcome> {
    require_root()?;
    let mut timings = Timings::default();

    let step = progress::step("resolve recipe");
    // Recipe errors already name the file, line and field.
    let loaded = recipe::load(&opts.recipe)?;
    timings.add("resolve", step, false, loaded.digest.short(12));
    let recipe = &loaded.recipe;
    let formats = opts
        .formats
        .clone()
        .unwrap_or_else(|| recipe.image.formats.clone());
    let pxe_inputs = if formats.contains(&Format::Pxe) {
        Some(pxe::check(&opts.pxe)?)
    } else {
        let p = &opts.pxe;
        if p.user_data.is_some()
            || p.inventory.is_some()
            || p.install_device.is_some()
            || p.config_url.is_some()
        {
            anyhow::bail!(
                "--userdata, --inventory, --install-device and --config-url only apply to the pxe format, \
                 which this build does not produce (add --format ...,pxe)"
            );
        }
        None
    };
    let recipe_dir = loaded
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));

    let cache_dir = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => Cache::default_dir()?,
    };
    let cache = Cache::open(&cache_dir)?;

    let fetch_started = Instant::now();
    let mut fopts = FetchOptions::new(cache.root());
    fopts.mirror = opts.artifact_mirror.clone();
    fopts.offline = opts.offline;
    let fetched = fetch::fetch_all(&recipe.artifacts, &fopts)?;
    timings.push(
        "fetch",
        fetch_started.elapsed().as_secs_f64(),
        fetched.iter().all(|f| f.from_cache),
    );

    let nodeboot_bin = node::nodeboot_binary(recipe, &recipe_dir)?;
    let base_source = recipe.base.path.as_ref().map(|p| recipe_dir.join(p));
    let rootfs_key = rootfs::rootfs_key(&recipe.base, recipe.image.arch, base_source.as_deref())?;
    let customize_key = customize_key(&rootfs_key, &loaded, &fetched, nodeboot_bin.as_deref())?;
    let ostree_ref = recipe.image.ref_name();
    let timestamp = commit::commit_timestamp(recipe.commit.timestamp)?;
    let commit_key = KeyBuilder::new(COMMIT_VERSION)
        .field("customize", customize_key.as_str())
        .field("ref", &ostree_ref)
        .field("timestamp", timestamp.to_string())
        .field("subject", subject(recipe))
        .finish();

    let stage = cache.stage_repo();
    let hit = cached_commit(&cache, &commit_key, &opts.repo, &ostree_ref)?;
    let (committed, packages, kernel_version, reused) = match hit {
        Some(CacheHit::Current(entry)) => {
            let step = progress::step("commit");
            let recorded = recorded(&opts.repo, &entry.commit)?;
            timings.add(
                "commit",
                step,
                true,
                &format!("cached {}", &entry.commit[..12]),
            );
            let (packages, kver) = (recorded.packages, recorded.kernel_version);
            let committed = Committed {
                parent: recorded.parent,
                checksum: entry.commit,
                root_contents: entry.root_contents,
                root_metadata: entry.root_metadata,
            };
            (committed, packages, kver, true)
        }
        Some(CacheHit::Moved(entry)) => {
            let step = progress::step("commit (same tree, new parent)");
            let recorded = recorded(&opts.repo, &entry.commit)?;
            let (packages, kver) = (recorded.packages, recorded.kernel_version);
            let metadata = commit_metadata(recipe, &loaded.digest, &kver, &packages);
            let spec = commit_spec(opts, recipe, &ostree_ref, &metadata, timestamp, &stage);
            let committed = commit::commit(
                &spec,
                CommitSource::Existing {
                    root_contents: &entry.root_contents,
                    root_metadata: &entry.root_metadata,
                },
            )?;
            timings.add("commit", step, true, &committed.checksum[..12]);
            (committed, packages, kver, false)
        }
        None => {
            let step = progress::step("rootfs");
            let rootfs = rootfs::build_rootfs(
                &recipe.base,
                recipe.image.arch,
                &recipe_dir,
                &cache,
                opts.initramfs_check,
            )?;
            let note = if rootfs.from_cache { "cached" } else { "built" };
            timings.add("rootfs", step, rootfs.from_cache, note);

            let work = cache.temp_dir("tree")?;
            let tree = work.path().join("tree");
            let step = progress::step("customize");
            rootfs::copy_tree(&rootfs.tree, &tree)?;
            node::customize(
                &tree,
                &node::NodeInput {
                    recipe,
                    recipe_dir: &recipe_dir,
                    fetched: &fetched,
                    nodeboot_binary: nodeboot_bin.as_deref(),
                },
            )?;
            timings.add("customize", step, false, "");

            let step = progress::step("ostreeify");
            let report = ostreeify::ostreeify(
                &tree,
                &ostreeify::VersionInfo {
                    image: recipe.image.name.to_string(),
                    version: recipe.image.version.to_string(),
                    recipe_digest: loaded.digest.to_string(),
                },
            )?;
            timings.add(
                "ostreeify",
                step,
                false,
                &format!(
                    "{} tmpfiles.d lines, {} factory files",
                    report.tmpfiles_lines, report.factory_files
                ),
            );

            let step = progress::step("commit");
            let metadata = commit_metadata(
                recipe,
                &loaded.digest,
                &report.kernel_version,
                &rootfs.packages,
            );
            let spec = commit_spec(opts, recipe, &ostree_ref, &metadata, timestamp, &stage);
            let committed = commit::commit(&spec, CommitSource::Tree(&tree))?;
            timings.add("commit", step, false, &committed.checksum[..12]);
            drop(work);
            commit::prune_stage_repo(&stage)?;
            cache.gc_rootfs(KEEP_ROOTFS, &rootfs.key)?;
            (committed, rootfs.packages, report.kernel_version, false)
        }
    };
    cache.record_commit(
        &commit_key,
        &CommitIndexEntry {
            commit: committed.checksum.clone(),
            root_contents: committed.root_contents.clone(),
            root_metadata: committed.root_metadata.clone(),
            ostree_ref: ostree_ref.clone(),
        },
    )?;

    // From here on the ref has moved (unless the commit was reused): when a later stage
    // fails, the ref goes back, so the repository never publishes a commit whose images
    // failed to build.
    let moved_ref = ostree_ref.clone();
    let after_commit = (|| -> Result<BuildOutcome> {
        let gpg_signature = match gpg_key(recipe) {
            Some(key) => {
                let step = progress::step("publish GPG public key");
                let rec = publish::publish_gpg_key(
                    &opts.repo,
                    recipe.image.osname.as_str(),
                    &committed.checksum,
                    &key,
                )?;
                timings.add("publish-gpg-key", step, false, &rec.public_key);
                Some(rec)
            }
            None => None,
        };
        let gpg_public_key = gpg_signature
            .as_ref()
            .map(|r| opts.repo.join(&r.public_key));

        let publish_record = if reused {
            None
        } else {
            let step = progress::step("publish");
            let rec = publish::publish(&PublishRequest {
                repo: &opts.repo,
                parent: committed.parent.as_deref(),
                checksum: &committed.checksum,
                static_delta: recipe.commit.static_delta || opts.static_delta,
            })?;
            let note = match &rec.static_delta {
                Some(d) => format!("summary, static delta {} bytes", d.size),
                None => "summary".to_owned(),
            };
            timings.add("publish", step, false, &note);
            Some(rec)
        };

        let mut out = OutputDir::create(
            &opts.output,
            recipe.image.name.as_str(),
            &recipe.image.version.to_string(),
        )?;
        let notes = later_stages(
            &PostCommit {
                recipe,
                repo: &opts.repo,
                ostree_ref: &ostree_ref,
                checksum: &committed.checksum,
                timestamp,
                kernel_version: &kernel_version,
                formats: &formats,
                cache: &cache,
                remote: pxe::remote_for(&opts.pxe, recipe.image.osname.as_str()),
                gpg_public_key: gpg_public_key.as_deref(),
                pxe: pxe_inputs.as_ref(),
                nodeboot: nodeboot_bin.as_deref(),
            },
            &mut out,
            &mut timings,
        )?;

        let mut manifest = Manifest {
            manifest_version: manifest::MANIFEST_VERSION,
            nodeimg_version: env!("CARGO_PKG_VERSION").to_owned(),
            image: manifest::ImageInfo {
                name: recipe.image.name.to_string(),
                version: recipe.image.version.to_string(),
                description: recipe.image.description.clone(),
            },
            recipe: manifest::RecipeInfo {
                path: loaded.path.display().to_string(),
                digest: loaded.digest.clone(),
                files: loaded
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect(),
            },
            inputs: manifest::Inputs {
                base_kind: format!("{:?}", recipe.base.kind).to_lowercase(),
                suite: recipe.base.suite.clone(),
                mirrors: recipe.base.mirrors.iter().map(|m| m.to_string()).collect(),
                components: recipe.base.components.clone(),
                kubernetes_version: recipe.kubernetes.version.to_string(),
                kernel_version,
                rootfs_key,
                customize_key,
                commit_key,
            },
            artifacts: recipe
                .artifacts
                .iter()
                .map(|a| manifest::ArtifactInfo {
                    name: a.name.to_string(),
                    url: a.url.to_string(),
                    sha256: a.sha256.clone(),
                    size: fetched
                        .iter()
                        .find(|f| f.name == a.name.as_str())
                        .map(|f| f.size)
                        .unwrap_or(0),
                    dest: a.dest.to_string(),
                })
                .collect(),
            packages,
            commit: manifest::CommitRecord {
                checksum: committed.checksum.clone(),
                parent: committed.parent.clone(),
                ostree_ref,
                repo: opts.repo.display().to_string(),
                timestamp,
                version: recipe.image.version.to_string(),
                reused,
                gpg_signature,
            },
            formats: formats.iter().map(|f| f.to_string()).collect(),
            outputs: Vec::new(),
            stages: timings.0,
            publish: publish_record,
            notes,
        };
        let output_dir = out.finish(&mut manifest)?;
        Ok(BuildOutcome {
            manifest,
            output_dir,
        })
    })();
    if let Err(e) = &after_commit {
        if !reused {
            publish::withdraw(
                &opts.repo,
                &moved_ref,
                &committed.checksum,
                committed.parent.as_deref(),
            )
            .with_context(|| format!("after this failure: {e:#}"))?;
            tracing::warn!(
                ostree_ref = %moved_ref,
                "the build failed after the commit: the ref was moved back"
            );
        }
    }
    after_commit
}

/// The stages after the commit: deploy + disk (one cached raw image) when any disk format
/// is asked for, the exports, then the PXE material. Each writes into `out.path()` and
/// registers its files. Returns notes for the manifest.
fn later_stages(
    ctx: &PostCommit<'_>,
    out: &mut OutputDir,
    timings: &mut Timings,
) -> Result<Vec<String>> {
    let disk_formats = images::disk_formats(ctx.formats);
    let mut exported = Vec::new();
    if !disk_formats.is_empty() {
        let req = images::ImageRequest {
            recipe: ctx.recipe,
            repo: ctx.repo,
            ostree_ref: ctx.ostree_ref,
            checksum: ctx.checksum,
            timestamp: ctx.timestamp,
            remote: ctx.remote.clone(),
            gpg_public_key: ctx.gpg_public_key,
            cache: ctx.cache,
        };
        let raw = images::raw_image(&req, timings)?;
        exported =
            images::export_all(ctx.recipe, &raw, &disk_formats, ctx.timestamp, out, timings)?;
    }
    let mut notes = Vec::new();
    if let Some(inputs) = ctx.pxe {
        let started = Instant::now();
        let raw_image = exported
            .iter()
            .find(|(f, _, _)| *f == Format::Raw)
            .map(|(_, name, sha)| (name.clone(), sha.clone()));
        notes = pxe::write(
            &pxe::PxeBuild {
                recipe: ctx.recipe,
                repo: ctx.repo,
                checksum: ctx.checksum,
                kernel_version: ctx.kernel_version,
                raw_image,
                nodeboot: ctx.nodeboot,
                cache: ctx.cache,
            },
            inputs,
            out,
        )?;
        timings.push("pxe", started.elapsed().as_secs_f64(), false);
    }
    Ok(notes)
}

fn subject(recipe: &Recipe) -> String {
    match &recipe.image.description {
        Some(d) => format!("{} {}: {d}", recipe.image.name, recipe.image.version),
        None => format!("{} {}", recipe.image.name, recipe.image.version),
    }
}

fn commit_spec<'a>(
    opts: &'a BuildOptions,
    recipe: &'a Recipe,
    ostree_ref: &'a str,
    metadata: &'a CommitMetadata,
    timestamp: u64,
    stage: &'a Path,
) -> CommitSpec<'a> {
    CommitSpec {
        repo: &opts.repo,
        ostree_ref,
        subject: subject(recipe),
        metadata,
        timestamp,
        sign_key: recipe.commit.sign_key.as_deref(),
        gpg: gpg_key(recipe),
        stage_repo: Some(stage),
    }
}

/// The recipe's GPG signing key, if it names one.
pub fn gpg_key(recipe: &Recipe) -> Option<commit::GpgKey<'_>> {
    recipe.commit.gpg_key_id.as_ref().map(|id| commit::GpgKey {
        key_id: id.as_str(),
        homedir: recipe.commit.gpg_homedir.as_deref(),
    })
}

fn commit_metadata(
    recipe: &Recipe,
    digest: &Sha256Hex,
    kver: &str,
    packages: &[Package],
) -> CommitMetadata {
    CommitMetadata {
        version: recipe.image.version.to_string(),
        image: recipe.image.name.to_string(),
        recipe_digest: digest.to_string(),
        kubernetes_version: recipe.kubernetes.version.to_string(),
        kernel_version: kver.to_owned(),
        packages: packages.to_vec(),
    }
}

/// The customize key: the rootfs key, the recipe digest (which covers every recipe field and
/// referenced local file), the artifact digests, the nodeboot binary and nodeimg's version.
fn customize_key(
    rootfs_key: &Sha256Hex,
    loaded: &Loaded,
    fetched: &[Fetched],
    nodeboot: Option<&Path>,
) -> Result<Sha256Hex> {
    let mut k = KeyBuilder::new(CUSTOMIZE_VERSION)
        .field("nodeimg", env!("CARGO_PKG_VERSION"))
        .field("rootfs", rootfs_key.as_str())
        .field("recipe", loaded.digest.as_str());
    for f in fetched {
        k = k.field("artifact", format!("{} {}", f.name, f.sha256));
    }
    if let Some(p) = nodeboot {
        k = k.field("nodeboot", Sha256Hex::of_file(p)?.as_str());
    }
    Ok(k.finish())
}

#[derive(Debug)]
enum CacheHit {
    /// The ref points at the recorded commit.
    Current(CommitIndexEntry),
    /// The commit's tree is in the repository, but the ref points elsewhere (or nowhere).
    Moved(CommitIndexEntry),
}

fn cached_commit(
    cache: &Cache,
    key: &Sha256Hex,
    repo: &Path,
    ostree_ref: &str,
) -> Result<Option<CacheHit>> {
    let Some(entry) = cache.lookup_commit(key)? else {
        return Ok(None);
    };
    if !repo.join("config").is_file() {
        return Ok(None);
    }
    let r = commit::open_or_create_repo(repo)?;
    if !commit::has_commit(&r, &entry.commit)? {
        return Ok(None);
    }
    if commit::ref_target(&r, ostree_ref)?.as_deref() == Some(entry.commit.as_str()) {
        Ok(Some(CacheHit::Current(entry)))
    } else {
        Ok(Some(CacheHit::Moved(entry)))
    }
}

fn recorded(repo: &Path, checksum: &str) -> Result<commit::Recorded> {
    let r = commit::open_or_create_repo(repo)?;
    commit::read_recorded(&r, checksum)
}

/// Turn a failure into one line of cause plus a hint for the common environmental causes.
fn explain(e: anyhow::Error, opts: &BuildOptions) -> anyhow::Error {
    let enospc = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| code == libc::ENOSPC)
            || c.to_string().contains("No space left on device")
    });
    if enospc {
        let cache = opts
            .cache_dir
            .clone()
            .or_else(|| Cache::default_dir().ok())
            .unwrap_or_default();
        return e.context(format!(
            "disk full; hint: free space where the cache ({}), the repository ({}) and the output ({}) live, or point --cache-dir/--repo/--output elsewhere",
            cache.display(),
            opts.repo.display(),
            opts.output.display()
        ));
    }
    e
}

/// The path the CLI prints for a finished build.
pub fn manifest_path(outcome: &BuildOutcome) -> PathBuf {
    outcome.output_dir.join(manifest::MANIFEST_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_gets_a_hint() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = anyhow::Error::new(io).context("writing the tree");
        let msg = format!("{:#}", explain(e, &BuildOptions::new("r.toml")));
        assert!(msg.starts_with("disk full; hint:"), "{msg}");
        let other = anyhow::anyhow!("something else");
        assert_eq!(
            format!("{:#}", explain(other, &BuildOptions::new("r.toml"))),
            "something else"
        );
    }
}

//! The disk image stages after the commit: deploy → disk (one raw image, cached by key) →
//! export (each requested format into the output directory).
//!
//! The deploy stage's output is a temporary staged sysroot that only the disk stage reads,
//! so the two share one cache entry: the raw image under `disk/<key>.raw` in the cache,
//! where the key covers everything that decides its bytes (commit, osname, ref, kernel
//! arguments, remote, layout, firmware, timestamp and nodeimg's version). An unchanged
//! input skips both and exports from the cached image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use nodeimg_common::digest::{KeyBuilder, Sha256Hex};

use super::Timings;
use crate::cache::{Cache, KEEP_DISKS};
use crate::commit;
use crate::deploy::{self, DeployRequest};
use crate::disk::{self, DiskInput};
use crate::export::{self, ExportOptions};
use crate::manifest::OutputDir;
use crate::progress;
use crate::recipe::schema::{Format, Recipe};

/// Bump when deploy or disk produce different bytes for the same inputs.
const DISK_VERSION: &str = "disk/v1";

/// What the deploy and disk stages need.
#[derive(Debug, Clone)]
pub struct ImageRequest<'a> {
    pub recipe: &'a Recipe,
    /// The archive repository holding the commit.
    pub repo: &'a Path,
    pub ostree_ref: &'a str,
    pub checksum: &'a str,
    /// Commit timestamp; also every file and superblock time in the disk image.
    pub timestamp: u64,
    /// Remote the booted system upgrades from: (name, URL).
    pub remote: Option<(String, String)>,
    /// Public key of a GPG-signed commit, imported into the remote (which then verifies).
    pub gpg_public_key: Option<&'a Path>,
    pub cache: &'a Cache,
}

/// The raw disk image the exports are made from.
#[derive(Debug, Clone)]
pub struct RawImage {
    pub path: PathBuf,
    pub key: Sha256Hex,
    pub from_cache: bool,
}

/// Formats that are disk images (everything but `pxe`).
pub fn disk_formats(formats: &[Format]) -> Vec<Format> {
    let mut v: Vec<Format> = formats
        .iter()
        .copied()
        .filter(|f| *f != Format::Pxe)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The file name of an exported image in the output directory.
pub fn image_file_name(recipe: &Recipe, format: Format) -> String {
    let ext = match format {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
        Format::Vhd => "vhd",
        Format::VhdDynamic => "dynamic.vhd",
        Format::Pxe => "pxe",
    };
    format!("{}-{}.{ext}", recipe.image.name, recipe.image.version)
}

/// The id export formats store for the disk (the VHD unique id): the first 16 bytes of the
/// disk key, which digests every input of the raw image, so the same disk always gets the
/// same id and different disks different ones.
fn disk_id(key: &Sha256Hex) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&key.bytes()[..16]);
    id
}

/// The disk stage key.
pub fn disk_key(req: &ImageRequest<'_>) -> Result<Sha256Hex> {
    let d = &req.recipe.disk;
    let mut k = KeyBuilder::new(DISK_VERSION)
        .field("nodeimg", env!("CARGO_PKG_VERSION"))
        .field("commit", req.checksum)
        .field("ref", req.ostree_ref)
        .field("osname", req.recipe.image.osname.as_str())
        .field("kernel-args", req.recipe.os.kernel_args.join("\n"))
        .field("timestamp", req.timestamp.to_string())
        .field(
            "size",
            d.size.map(|s| s.bytes().to_string()).unwrap_or_default(),
        )
        .field("boot-size", d.boot_size.bytes().to_string())
        .field("esp-size", d.esp_size.bytes().to_string());
    for f in &d.firmware {
        k = k.field("firmware", format!("{f:?}"));
    }
    if let Some((name, url)) = &req.remote {
        k = k.field("remote", format!("{name} {url}"));
    }
    if let Some(key) = req.gpg_public_key {
        k = k.field("gpg-key", Sha256Hex::of_file(key)?.as_str());
    }
    Ok(k.finish())
}

/// Deploy the commit and build the raw disk image, or take it from the cache.
pub fn raw_image(req: &ImageRequest<'_>, timings: &mut Timings) -> Result<RawImage> {
    let key = disk_key(req)?;
    let path = req.cache.disk_image(&key);
    if path.is_file() {
        let step = progress::step("deploy + disk");
        req.cache.touch(&path)?;
        let secs = step.done_with(&format!("cached {}", key.short(12)));
        timings.push("disk", secs, true);
        return Ok(RawImage {
            path,
            key,
            from_cache: true,
        });
    }

    let source = deploy_source(req)?;
    let work = req.cache.temp_dir("deploy")?;
    let started = Instant::now();
    let deployed = deploy::deploy(&DeployRequest {
        repo: source,
        ref_name: req.ostree_ref.to_owned(),
        osname: req.recipe.image.osname.to_string(),
        kernel_args: req.recipe.os.kernel_args.clone(),
        remote: req.remote.clone(),
        gpg_key: req.gpg_public_key.map(Path::to_path_buf),
        workdir: work.path().to_owned(),
    })?;
    timings.push("deploy", started.elapsed().as_secs_f64(), false);
    if deployed.commit != req.checksum {
        anyhow::bail!(
            "deployed commit {} is not the built commit {} (the ref {} moved during the build?)",
            deployed.commit,
            req.checksum,
            req.ostree_ref
        );
    }

    let started = Instant::now();
    let seed: Sha256Hex = req
        .checksum
        .parse()
        .with_context(|| format!("commit checksum {} as a disk seed", req.checksum))?;
    let epoch = i64::try_from(req.timestamp)
        .with_context(|| format!("commit timestamp {} out of range", req.timestamp))?;
    let input = DiskInput::from_recipe(
        &req.recipe.disk,
        &deployed.root_tree,
        &deployed.boot_tree,
        seed,
        epoch,
    );
    disk::build(&input, &path).with_context(|| {
        format!(
            "building the disk image of {} {} (recipe [disk])",
            req.recipe.image.name, req.recipe.image.version
        )
    })?;
    deployed.remove()?;
    drop(work);
    timings.push("disk", started.elapsed().as_secs_f64(), false);
    req.cache.gc_disks(KEEP_DISKS, &key)?;
    Ok(RawImage {
        path,
        key,
        from_cache: false,
    })
}

/// The repository the deploy pulls from: the bare stage repository when it has the commit
/// (a bare-to-bare pull on one file system hardlinks objects instead of decompressing
/// them), else the archive repository.
fn deploy_source(req: &ImageRequest<'_>) -> Result<PathBuf> {
    let stage = req.cache.stage_repo();
    if stage.join("config").is_file() {
        let r = commit::open_or_create_stage_repo(&stage)?;
        if commit::has_commit(&r, req.checksum)? {
            // The deploy resolves the ref in its source; make it name this commit.
            r.set_ref_immediate(
                None,
                req.ostree_ref,
                Some(req.checksum),
                ostree::gio::Cancellable::NONE,
            )
            .with_context(|| format!("setting {} in {}", req.ostree_ref, stage.display()))?;
            return Ok(stage);
        }
    }
    Ok(req.repo.to_owned())
}

/// Write each disk format from `raw` into the output directory and register it.
pub fn export_all(
    recipe: &Recipe,
    raw: &RawImage,
    formats: &[Format],
    timestamp: u64,
    out: &mut OutputDir,
    timings: &mut Timings,
) -> Result<Vec<(Format, String, Sha256Hex)>> {
    let opts = ExportOptions {
        timestamp: Some(timestamp as i64),
        disk_id: Some(disk_id(&raw.key)),
        ..ExportOptions::default()
    };
    let mut written = Vec::new();
    for &format in formats {
        let name = image_file_name(recipe, format);
        let started = Instant::now();
        let report = export::write(format, &raw.path, &out.path().join(&name), &opts)?;
        timings.push(
            &format!("export-{format}"),
            started.elapsed().as_secs_f64(),
            false,
        );
        out.register_hashed(&name, &format.to_string(), report.sha256.clone())?;
        written.push((format, name, report.sha256));
    }
    Ok(written)
}

//! The `build` and `inspect` subcommands.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{build, manifest_path, BuildOptions, InitramfsCheck};
use crate::fetch::Mirror;
use crate::recipe::schema::Format;

/// `nodeimg build RECIPE`: recipe to OSTree commit, manifest and SBOM.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Archive-mode OSTree repository to commit to (created if missing).
    #[arg(long, default_value = "images/repo")]
    pub repo: PathBuf,
    /// Directory the build's output directory `<name>-<version>/` goes into.
    #[arg(long, default_value = "images")]
    pub output: PathBuf,
    /// Build cache [default: $XDG_CACHE_HOME/nodeimg or ~/.cache/nodeimg].
    #[arg(long, env = "NODEIMG_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Fetch artifacts from this mirror server or directory before upstream.
    #[arg(long, value_name = "URL|DIR")]
    pub artifact_mirror: Option<Mirror>,
    /// Never use the network for artifacts (cache, file:// and a mirror directory only).
    #[arg(long)]
    pub offline: bool,
    /// Print the manifest as JSON on stdout (progress stays off).
    #[arg(long)]
    pub json: bool,
    /// Formats to produce after the commit [default: the recipe's image.formats].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "raw,qcow2,vhd,vhd-dynamic,pxe"
    )]
    pub format: Option<Vec<Format>>,
    /// Stop after the commit and publishing: no disk images, no PXE material.
    #[arg(long, conflicts_with = "format")]
    pub commit_only: bool,
    /// Only check that the initramfs exists, not that it holds ostree-prepare-root. For test
    /// fixtures whose initramfs is a placeholder; an image built so may not boot.
    #[arg(long)]
    pub skip_initramfs_check: bool,
    /// Also write a static delta from the ref's previous commit (as `commit.static-delta =
    /// true` in the recipe does). The summary is regenerated on every new commit.
    #[arg(long)]
    pub static_delta: bool,
    /// URL the output directory `<name>-<version>/` is served at, with the repository at
    /// `URL/repo`. Required for `pxe`; when given, disk images also follow `URL/repo` for
    /// upgrades (remote named after the osname).
    #[arg(long, value_name = "URL")]
    pub http_base: Option<String>,
    /// nodeboot config (TOML) embedded in the generic kickstart (`pxe`); join material must
    /// come from a secret store, not inline.
    #[arg(long, value_name = "FILE")]
    pub userdata: Option<PathBuf>,
    /// PXE inventory: per-MAC hostnames, roles and user-data (`pxe`).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Disk the built-in installer writes [default: /dev/sda] (`pxe`).
    #[arg(long, value_name = "DEV")]
    pub install_device: Option<String>,
    /// Node config URL for `pxe`: `nodeboot.config=URL` on the built-in installer's kernel
    /// line (it fetches, validates and places the config) and on the kickstart-installed
    /// system's.
    #[arg(long, value_name = "URL")]
    pub config_url: Option<String>,
}

/// `nodeimg inspect REPO [REF]`: a commit's checksum, parent, date, version, metadata and size.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The OSTree repository.
    pub repo: PathBuf,
    /// A ref or commit checksum [default: the repository's only ref].
    pub rev: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run_build(args: &BuildArgs) -> Result<()> {
    crate::progress::set_quiet(args.json);
    let opts = BuildOptions {
        recipe: args.recipe.clone(),
        repo: args.repo.clone(),
        output: args.output.clone(),
        cache_dir: args.cache_dir.clone(),
        artifact_mirror: args.artifact_mirror.clone(),
        offline: args.offline,
        formats: if args.commit_only {
            Some(Vec::new())
        } else {
            args.format.clone()
        },
        initramfs_check: if args.skip_initramfs_check {
            InitramfsCheck::ExistsOnly
        } else {
            InitramfsCheck::Lsinitrd
        },
        pxe: super::pxe::PxeOptions {
            http_base: args.http_base.clone(),
            user_data: args.userdata.clone(),
            inventory: args.inventory.clone(),
            install_device: args.install_device.clone(),
            config_url: args.config_url.clone(),
        },
        static_delta: args.static_delta,
    };
    let outcome = build(&opts)?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&outcome.manifest).context("serialising the manifest")?;
        println!("{text}");
    } else {
        let c = &outcome.manifest.commit;
        eprintln!("commit   {} ({})", c.checksum, c.ostree_ref);
        for o in &outcome.manifest.outputs {
            eprintln!(
                "output   {} ({} bytes, sha256 {})",
                outcome.output_dir.join(&o.name).display(),
                o.size,
                o.sha256
            );
        }
        for n in &outcome.manifest.notes {
            eprintln!("note     {n}");
        }
        eprintln!("manifest {}", manifest_path(&outcome).display());
    }
    Ok(())
}

pub fn run_inspect(args: &InspectArgs) -> Result<()> {
    let info = crate::commit::inspect(&args.repo, args.rev.as_deref())?;
    if args.json {
        let text = serde_json::to_string_pretty(&info).context("serialising the commit info")?;
        println!("{text}");
    } else {
        print!("{}", crate::commit::render_text(&info));
    }
    Ok(())
}

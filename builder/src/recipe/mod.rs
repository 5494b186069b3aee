//! Stage `resolve`: recipe files parsed, `extends`/`include` merged, validated and digested.
//!
//! [`load`] is the entry point. Every file is checked on its own first ([`layer`]), so errors
//! carry `file:line:column` and the field path; the layers are merged ([`resolve`]); the
//! merged table becomes a typed [`Recipe`]; cross-field rules run ([`validate`]) and their
//! findings are traced back to the file that set the field; finally the digest is computed
//! over the resolved recipe and the local files it references.

pub mod command;
pub mod layer;
pub mod location;
pub mod paths;
pub mod resolve;
pub mod rules;
pub mod schema;
pub mod validate;
pub mod values;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nodeimg_common::digest::{KeyBuilder, Sha256Hex};

use layer::Layer;
use location::{locate, FieldPath};
pub use schema::Recipe;

/// Key-format version of the recipe digest; bump when the canonical form changes.
const DIGEST_DOMAIN: &str = "nodeimg-recipe-v1";

/// A resolved recipe and what it was made from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub recipe: Recipe,
    /// The recipe file given to [`load`], as given.
    pub path: PathBuf,
    /// Every recipe file read, absolute, in merge order.
    pub files: Vec<PathBuf>,
    /// Changes iff the build input described by the recipe changes: the resolved recipe
    /// (local paths relative to the recipe's directory) plus the content of every referenced
    /// local file (`os.file[].source`, `nodeboot.config`).
    pub digest: Sha256Hex,
}

/// Read, merge, validate and digest the recipe at `path`.
pub fn load(path: &Path) -> Result<Loaded> {
    let layers = resolve::collect_layers(path)?;
    let merged = resolve::merge(&layers);
    let recipe = typed(&layers, merged)?;

    let issues = validate::check(&recipe);
    if !issues.is_empty() {
        // Reported in merge order, then file order, whatever order the rules ran in.
        let mut lines: Vec<(Place, String)> = issues
            .iter()
            .map(|i| {
                let place = position(&layers, &i.path, i.at);
                let line = format!("{}: {}: {}", place.text, i.path, i.message);
                (place, line)
            })
            .collect();
        lines.sort_by_key(|(place, _)| (place.layer, place.offset));
        let lines: Vec<String> = lines.into_iter().map(|(_, line)| line).collect();
        bail!("{}", lines.join("\n"));
    }
    if let Some(config) = &recipe.nodeboot.config {
        validate_nodeboot_config(config, &recipe).map_err(|e| {
            let p = FieldPath::parse("nodeboot.config");
            anyhow!(
                "{}: {p}: {e:#}",
                position(&layers, &p, location::At::Value).text
            )
        })?;
    }

    let top = layers
        .last()
        .map(|l| l.source.path.clone())
        .unwrap_or_default();
    let digest = digest(&recipe, top.parent().unwrap_or(Path::new("/")))?;
    tracing::debug!(
        recipe = %path.display(),
        layers = layers.len(),
        digest = %digest,
        "recipe resolved"
    );
    Ok(Loaded {
        recipe,
        path: path.to_path_buf(),
        files: layers.iter().map(|l| l.source.path.clone()).collect(),
        digest,
    })
}

/// The merged table as a [`Recipe`], with `extra-packages` folded into `packages`.
fn typed(layers: &[Layer], mut merged: toml::Table) -> Result<Recipe> {
    let names: Vec<String> = layers
        .iter()
        .map(|l| l.source.display.display().to_string())
        .collect();
    for required in ["image.name", "image.version", "kubernetes.version", "base"] {
        if !is_set(&merged, required) {
            bail!(
                "{}: {required}: required, but not set in any recipe file (read: {})",
                names.last().map(String::as_str).unwrap_or_default(),
                names.join(", ")
            );
        }
    }
    merged.insert(
        "version".to_owned(),
        toml::Value::Integer(schema::RECIPE_VERSION.into()),
    );
    let mut recipe: Recipe =
        serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            anyhow!(
                "{}: {} (after merging {})",
                e.path(),
                e.inner(),
                names.join(", ")
            )
        })?;
    let extra = std::mem::take(&mut recipe.base.extra_packages);
    for p in extra {
        if !recipe.base.packages.contains(&p) {
            recipe.base.packages.push(p);
        }
    }
    Ok(recipe)
}

fn is_set(table: &toml::Table, dotted: &str) -> bool {
    let keys: Vec<&str> = dotted.split('.').collect();
    let mut cur = table;
    for (i, k) in keys.iter().enumerate() {
        match cur.get(*k) {
            Some(_) if i + 1 == keys.len() => return true,
            Some(toml::Value::Table(inner)) => cur = inner,
            _ => return false,
        }
    }
    false
}

/// Where a field of the merged recipe was set.
#[derive(Debug)]
struct Place {
    /// Index of the layer in merge order (`usize::MAX`: nowhere, a default value).
    layer: usize,
    offset: usize,
    /// `file:line:column`, or the file list for defaults.
    text: String,
}

/// The layer that set `path`: the last one in merge order, since later layers override
/// earlier ones. Falls back to the nearest parent field, then to the file list, for values
/// that come from defaults.
fn position(layers: &[Layer], path: &FieldPath, at: location::At) -> Place {
    for len in (1..=path.0.len()).rev() {
        let prefix = FieldPath(path.0[..len].to_vec());
        let at = if len == path.0.len() {
            at
        } else {
            location::At::Key
        };
        for (index, layer) in layers.iter().enumerate().rev() {
            let Ok(root) = toml::de::DeTable::parse(&layer.source.text) else {
                continue;
            };
            if let Some(span) = locate(root.get_ref(), &prefix, at) {
                return Place {
                    layer: index,
                    offset: span.start,
                    text: layer.source.position(span.start),
                };
            }
        }
    }
    let names: Vec<String> = layers
        .iter()
        .map(|l| l.source.display.display().to_string())
        .collect();
    Place {
        layer: usize::MAX,
        offset: 0,
        text: format!("{} (default value)", names.join(", ")),
    }
}

/// Build-time validation of a baked-in node config with nodeboot's own schema, plus the
/// rules that only hold for a config that is copied into every node of an image.
fn validate_nodeboot_config(config: &Path, recipe: &Recipe) -> Result<()> {
    let text = fs::read_to_string(config)
        .with_context(|| format!("reading the nodeboot config {}", config.display()))?;
    let cfg = nodeboot::config::parse_node_config(&text, &config.display().to_string())
        .map_err(|e| anyhow!("{e}"))?;
    if cfg.inline_join().is_some() {
        bail!(
            "{} carries inline join material ([join] insecure-inline); an image is copied to \
             every node and registry, so join secrets must come from the secret store at boot",
            config.display()
        );
    }
    let (cv, rv) = (&cfg.cluster.kubernetes_version, &recipe.kubernetes.version);
    if (u64::from(cv.major), u64::from(cv.minor)) != (rv.major, rv.minor) {
        bail!(
            "{}: cluster.kubernetes-version {} does not match the image's kubernetes.version {}",
            config.display(),
            cv.as_str(),
            rv
        );
    }
    Ok(())
}

/// The recipe digest (see [`Loaded::digest`]). `base_dir` is the top recipe's directory:
/// local paths enter the digest relative to it, so the checkout location does not matter.
pub fn digest(recipe: &Recipe, base_dir: &Path) -> Result<Sha256Hex> {
    let mut canonical = recipe.clone();
    let local_paths = [
        &mut canonical.base.path,
        &mut canonical.nodeboot.binary,
        &mut canonical.nodeboot.config,
        &mut canonical.commit.sign_key,
        &mut canonical.commit.gpg_homedir,
    ]
    .into_iter()
    .chain(canonical.os.files.iter_mut().map(|f| &mut f.source));
    for p in local_paths.flatten() {
        *p = paths::relative_to(p, base_dir);
    }
    let json = serde_json::to_string(&canonical).context("serializing the recipe")?;
    let mut key = KeyBuilder::new(DIGEST_DOMAIN).field("recipe", json);
    let referenced = recipe
        .os
        .files
        .iter()
        .filter_map(|f| f.source.as_ref())
        .chain(recipe.nodeboot.config.as_ref());
    for p in referenced {
        let content = fs::read(p)
            .with_context(|| format!("reading {} for the recipe digest", p.display()))?;
        let label = format!("file:{}", paths::relative_to(p, base_dir).display());
        key = key.field(&label, content);
    }
    Ok(key.finish())
}

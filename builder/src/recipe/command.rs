//! `nodeimg recipe check` and `nodeimg recipe show`: validate a recipe without building
//! anything (no root, no network), and print the resolved recipe.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Loaded;

#[derive(Debug, clap::Subcommand)]
pub enum RecipeCommand {
    /// Validate a recipe (with everything it extends and includes) and print a summary.
    Check {
        /// The recipe file, e.g. recipes/k8s-node.toml.
        recipe: PathBuf,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the resolved recipe (extends/include merged, defaults filled in) as TOML.
    Show {
        /// The recipe file.
        recipe: PathBuf,
    },
}

pub fn run(cmd: RecipeCommand) -> Result<()> {
    match cmd {
        RecipeCommand::Check { recipe, json } => {
            let loaded = super::load(&recipe)?;
            if json {
                let v = summary_json(&loaded);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).context("serializing the summary")?
                );
            } else {
                print!("{}", summary(&loaded));
            }
        }
        RecipeCommand::Show { recipe } => {
            let loaded = super::load(&recipe)?;
            print!("{}", show(&loaded)?);
        }
    }
    Ok(())
}

/// The human summary `recipe check` prints.
pub fn summary(l: &Loaded) -> String {
    let r = &l.recipe;
    let artifacts: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
    let files: Vec<String> = l.files.iter().map(|f| f.display().to_string()).collect();
    format!(
        "recipe {} is valid\n  image       {} {} ({})\n  ref         {}\n  kubernetes  {}\n  \
         packages    {}\n  artifacts   {}\n  files       {}\n  digest      {}\n",
        l.path.display(),
        r.image.name,
        r.image.version,
        r.image.arch,
        r.image.ref_name(),
        r.kubernetes.version,
        r.base.packages.len(),
        if artifacts.is_empty() {
            "(none)".to_owned()
        } else {
            artifacts.join(", ")
        },
        files.join(", "),
        l.digest,
    )
}

/// The machine-readable summary of `recipe check --json`.
pub fn summary_json(l: &Loaded) -> serde_json::Value {
    let r = &l.recipe;
    serde_json::json!({
        "path": l.path,
        "name": r.image.name,
        "version": r.image.version.to_string(),
        "arch": r.image.arch.to_string(),
        "ref": r.image.ref_name(),
        "kubernetes": r.kubernetes.version.to_string(),
        "packages": r.base.packages.len(),
        "artifacts": r.artifacts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        "files": l.files,
        "digest": l.digest,
    })
}

/// The resolved recipe as TOML, headed by where it came from.
pub fn show(l: &Loaded) -> Result<String> {
    let body = toml::to_string_pretty(&l.recipe).context("serializing the resolved recipe")?;
    let mut out = String::from("# resolved recipe; merged from:\n");
    for f in &l.files {
        out.push_str(&format!("#   {}\n", f.display()));
    }
    out.push_str(&format!("# digest: {}\n\n{body}", l.digest));
    Ok(out)
}

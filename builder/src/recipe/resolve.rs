//! `extends` and `include`: reading the files a recipe is made of, in merge order, and
//! merging their tables.
//!
//! Merge order for a file F: F's parent (itself resolved the same way) < F's includes, in
//! order (each resolved the same way) < F. Merge rules:
//! - tables merge key by key, recursively;
//! - scalars and arrays replace what earlier layers set;
//! - `[[artifact]]`, `[[os.file]]`, `[[os.user]]` merge by `name`/`path`/`name`: an entry
//!   replaces the earlier entry with the same identity in place, new ones are appended;
//! - `base.extra-packages` accumulates across layers (the one additive list), so a variant
//!   adds packages without restating the base list.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::layer::{self, Layer, KEYED_ARRAYS};
use super::location::SourceFile;
use super::paths::normalize;

/// Read and check `top` and every file it extends or includes; the result is in merge order
/// (a file included twice through different routes appears twice).
pub fn collect_layers(top: &Path) -> Result<Vec<Layer>> {
    let abs = std::path::absolute(top)
        .with_context(|| format!("resolving the path {}", top.display()))?;
    let mut out = Vec::new();
    let mut stack = Vec::new();
    collect(normalize(top), normalize(&abs), None, &mut stack, &mut out)?;
    Ok(out)
}

/// Where a file was named: `file:line:col: field` of the `extends`/`include` entry.
type NamedAt = Option<String>;

fn collect(
    display: PathBuf,
    path: PathBuf,
    named_at: NamedAt,
    stack: &mut Vec<(PathBuf, PathBuf)>,
    out: &mut Vec<Layer>,
) -> Result<()> {
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => match &named_at {
            Some(at) => bail!("{at}: cannot read {}: {e}", display.display()),
            None => bail!("{}: cannot read recipe: {e}", display.display()),
        },
    };
    let identity = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    if let Some(i) = stack.iter().position(|(id, _)| *id == identity) {
        let chain: Vec<String> = stack[i..]
            .iter()
            .map(|(_, d)| d.display().to_string())
            .chain([display.display().to_string()])
            .collect();
        bail!(
            "{}: cycle in extends/include: {}",
            named_at.unwrap_or_default(),
            chain.join(" -> ")
        );
    }
    let layer = layer::check(SourceFile {
        display: display.clone(),
        path: path.clone(),
        text,
    })?;
    stack.push((identity, display.clone()));
    let dir = path.parent().unwrap_or(Path::new("/"));
    let display_dir = display.parent().unwrap_or(Path::new(""));
    let named: Vec<(String, &toml::Spanned<String>)> = layer
        .extends
        .iter()
        .map(|e| ("extends".to_owned(), e))
        .chain(
            layer
                .include
                .iter()
                .enumerate()
                .map(|(i, inc)| (format!("include[{i}]"), inc)),
        )
        .collect();
    for (field, name) in named {
        let at = format!("{}: {field}", layer.source.position(name.span().start));
        collect(
            normalize(&display_dir.join(name.get_ref())),
            normalize(&dir.join(name.get_ref())),
            Some(at),
            stack,
            out,
        )?;
    }
    stack.pop();
    out.push(layer);
    Ok(())
}

/// Merge the layers' tables, first to last.
pub fn merge(layers: &[Layer]) -> toml::Table {
    let mut merged = toml::Table::new();
    for layer in layers {
        merge_into(&mut merged, layer.table.clone(), "");
    }
    merged
}

fn merge_into(into: &mut toml::Table, from: toml::Table, prefix: &str) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let keyed = KEYED_ARRAYS
            .iter()
            .find(|(array, _)| *array == path)
            .map(|(_, field)| *field);
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge_into(old, new, &path),
            (Some(toml::Value::Array(old)), toml::Value::Array(new)) if keyed.is_some() => {
                let field = keyed.unwrap_or_default();
                for entry in new {
                    let id = entry.get(field).cloned();
                    match old
                        .iter_mut()
                        .find(|e| id.is_some() && e.get(field) == id.as_ref())
                    {
                        Some(slot) => *slot = entry,
                        None => old.push(entry),
                    }
                }
            }
            (Some(toml::Value::Array(old)), toml::Value::Array(new))
                if path == "base.extra-packages" =>
            {
                old.extend(new)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn merge_rules() {
        let mut m = table(
            r#"
            [base]
            packages = ["a", "b"]
            extra-packages = ["x"]
            [os.sysctls]
            "k.a" = 1
            "k.b" = 2
            [[artifact]]
            name = "one"
            url = "u1"
            [[artifact]]
            name = "two"
            url = "u2"
            "#,
        );
        merge_into(
            &mut m,
            table(
                r#"
                [base]
                packages = ["c"]
                extra-packages = ["y"]
                [os.sysctls]
                "k.b" = 3
                [[artifact]]
                name = "one"
                url = "u1-new"
                [[artifact]]
                name = "three"
                url = "u3"
                "#,
            ),
            "",
        );
        let expected = table(
            r#"
            [base]
            packages = ["c"]
            extra-packages = ["x", "y"]
            [os.sysctls]
            "k.a" = 1
            "k.b" = 3
            [[artifact]]
            name = "one"
            url = "u1-new"
            [[artifact]]
            name = "two"
            url = "u2"
            [[artifact]]
            name = "three"
            url = "u3"
            "#,
        );
        assert_eq!(m, expected);
    }
}

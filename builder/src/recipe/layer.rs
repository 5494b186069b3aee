//! One recipe file, checked on its own before anything is merged, so that every error can
//! name the file, line, column and field it is about: TOML syntax, `version`, unknown keys,
//! value types and formats, duplicates within the file, and the single-value rules of
//! [`super::rules`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::location::{line_col, path_at, FieldPath, SourceFile};
use super::paths::normalize;
use super::rules;
use super::schema::{
    Arch, Artifact, Base, CgroupDriver, Commit, Disk, Format, Name, Nodeboot, Os, Runtime,
    RECIPE_VERSION,
};

/// A checked recipe file, ready to be merged.
#[derive(Debug, Clone)]
pub struct Layer {
    pub source: SourceFile,
    /// The file's settings without `version`/`extends`/`include`; sysctls flattened to
    /// dotted names; relative paths made absolute against the file's directory.
    pub table: toml::Table,
    pub extends: Option<Spanned<String>>,
    pub include: Vec<Spanned<String>>,
}

/// The shape one file may have: the schema with every required field optional, because a
/// field may come from another layer. Entries of `[[artifact]]`, `[[os.file]]` and
/// `[[os.user]]` are whole (they replace by identity), so they use the full types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)] // the fields exist to be type-checked, not read
struct LayerSchema {
    version: u32,
    extends: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    image: Option<ImageLayer>,
    base: Option<Base>,
    kubernetes: Option<KubernetesLayer>,
    #[serde(default)]
    artifact: Vec<Artifact>,
    os: Option<Os>,
    nodeboot: Option<Nodeboot>,
    disk: Option<Disk>,
    commit: Option<Commit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)]
struct ImageLayer {
    name: Option<Name>,
    version: Option<semver::Version>,
    osname: Option<Name>,
    #[serde(rename = "ref")]
    ostree_ref: Option<String>,
    arch: Option<Arch>,
    description: Option<String>,
    formats: Option<Vec<Format>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)]
struct KubernetesLayer {
    version: Option<semver::Version>,
    runtime: Option<Runtime>,
    cgroup_driver: Option<CgroupDriver>,
    sandbox_image: Option<String>,
}

/// Arrays of tables that merge by an identifying field instead of being replaced.
pub const KEYED_ARRAYS: &[(&str, &str)] = &[
    ("artifact", "name"),
    ("os.file", "path"),
    ("os.user", "name"),
];

/// Fields holding local paths, resolved against the directory of the file that sets them.
const PATH_FIELDS: &[&str] = &[
    "base.path",
    "os.file.*.source",
    "nodeboot.binary",
    "nodeboot.config",
    "commit.sign-key",
    "commit.gpg-homedir",
];

type Rule = fn(&str) -> Result<(), String>;

/// Single-value rules: a field pattern (`*` = every entry of an array) and its check.
const RULES: &[(&str, Rule)] = &[
    ("base.packages.*", rules::package_spec),
    ("base.extra-packages.*", rules::package_spec),
    ("base.exclude.*", rules::package_name),
    ("base.suite", rules::suite),
    ("base.components.*", rules::component),
    ("image.ref", rules::ostree_ref),
    ("kubernetes.sandbox-image", rules::image_reference),
    ("os.hostname", rules::hostname),
    ("os.root-password-hash", rules::password_hash),
    ("os.kernel-modules.*", rules::module_name),
    ("os.kernel-args.*", rules::kernel_arg),
    ("os.units.enable.*", rules::unit_name),
    ("os.units.disable.*", rules::unit_name),
    ("os.units.mask.*", rules::unit_name),
    ("os.time-sync.servers.*", rules::ntp_server),
    ("os.file.*.owner", rules::owner),
    ("os.file.*.group", rules::owner),
    ("os.user.*.groups.*", rules::account_name),
    ("os.user.*.ssh-authorized-keys.*", rules::ssh_public_key),
];

/// Check one file. `source.text` is its content.
pub fn check(source: SourceFile) -> Result<Layer> {
    let spanned = match DeTable::parse(&source.text) {
        Ok(t) => t,
        Err(e) => bail!("{}: {}", where_(&source, e.span()), e.message().trim_end()),
    };
    let root = spanned.get_ref();
    check_version(&source, root)?;

    if let Err(e) = toml::from_str::<LayerSchema>(&source.text) {
        let path = e.span().map(|s| path_at(root, s.start)).unwrap_or_default();
        let msg = e
            .message()
            .trim_end()
            .replacen("unknown field", "unknown key", 1);
        bail!("{}: {path}: {msg}", where_(&source, e.span()));
    }

    // (offset, message), reported in file order.
    let mut problems: Vec<(usize, String)> = Vec::new();
    check_duplicates(root, &source.text, &mut |span, path, msg| {
        problems.push((
            span.start,
            format!("{}: {path}: {msg}", source.position(span.start)),
        ))
    });
    for (pattern, rule) in RULES {
        let pattern: Vec<&str> = pattern.split('.').collect();
        visit(root, &pattern, FieldPath::default(), &mut |value, path| {
            if let Some(Err(msg)) = value.get_ref().as_str().map(rule) {
                let at = value.span().start;
                problems.push((at, format!("{}: {path}: {msg}", source.position(at))));
            }
        });
    }
    check_sysctl_names(root, &source, &mut problems);
    if !problems.is_empty() {
        problems.sort();
        let lines: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
        bail!("{}", lines.join("\n"));
    }

    let extends = root
        .iter()
        .find(|(k, _)| k.get_ref() == "extends")
        .and_then(|(_, v)| spanned_str(v));
    let include = root
        .iter()
        .find(|(k, _)| k.get_ref() == "include")
        .and_then(|(_, v)| v.get_ref().as_array())
        .map(|items| items.iter().filter_map(spanned_str).collect())
        .unwrap_or_default();

    let mut table: toml::Table = toml::from_str(&source.text)
        .map_err(|e| anyhow::anyhow!("{}: {}", source.display.display(), e.message()))?;
    for key in ["version", "extends", "include"] {
        table.remove(key);
    }
    flatten_sysctls(&mut table)
        .map_err(|e| anyhow::anyhow!("{}: {e}", source.display.display()))?;
    let dir = source.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    for field in PATH_FIELDS {
        let pattern: Vec<&str> = field.split('.').collect();
        resolve_paths(&mut table, &pattern, &dir);
    }
    Ok(Layer {
        source,
        table,
        extends,
        include,
    })
}

fn where_(source: &SourceFile, span: Option<Range<usize>>) -> String {
    match span {
        Some(s) => source.position(s.start),
        None => source.display.display().to_string(),
    }
}

fn spanned_str(v: &Spanned<DeValue<'_>>) -> Option<Spanned<String>> {
    v.get_ref()
        .as_str()
        .map(|s| Spanned::new(v.span(), s.to_owned()))
}

fn check_version(source: &SourceFile, root: &DeTable<'_>) -> Result<()> {
    let Some((key, value)) = root.iter().find(|(k, _)| k.get_ref() == "version") else {
        bail!(
            "{}:1:1: version: missing; every recipe file must start with `version = {RECIPE_VERSION}`",
            source.display.display()
        );
    };
    let pos = source.position(value.span().start);
    match value
        .get_ref()
        .as_integer()
        .map(|i| i.as_str().parse::<i64>())
    {
        Some(Ok(n)) if n == i64::from(RECIPE_VERSION) => Ok(()),
        Some(Ok(n)) => bail!(
            "{pos}: version: recipe format version {n} is not supported; this nodeimg \
             understands version {RECIPE_VERSION} only"
        ),
        _ => bail!(
            "{}: version: must be the integer {RECIPE_VERSION} (this nodeimg understands recipe \
             format version {RECIPE_VERSION})",
            source.position(key.span().start)
        ),
    }
}

/// Two entries of a keyed array in the same file would silently shadow each other.
fn check_duplicates(
    root: &DeTable<'_>,
    text: &str,
    report: &mut dyn FnMut(Range<usize>, FieldPath, String),
) {
    for (array, field) in KEYED_ARRAYS {
        let mut pattern: Vec<&str> = array.split('.').collect();
        pattern.push("*");
        pattern.push(field);
        let mut seen: Vec<(String, Range<usize>)> = Vec::new();
        visit(root, &pattern, FieldPath::default(), &mut |value, path| {
            let Some(s) = value.get_ref().as_str() else {
                return;
            };
            if let Some((_, first)) = seen.iter().find(|(v, _)| v == s) {
                let (line, _) = line_col(text, first.start);
                report(
                    value.span(),
                    path,
                    format!("duplicate {field} `{s}` in {array} (first defined on line {line})"),
                );
            } else {
                seen.push((s.to_owned(), value.span()));
            }
        });
    }
}

fn check_sysctl_names(
    root: &DeTable<'_>,
    source: &SourceFile,
    problems: &mut Vec<(usize, String)>,
) {
    fn walk(
        table: &DeTable<'_>,
        prefix: &str,
        path: &FieldPath,
        source: &SourceFile,
        problems: &mut Vec<(usize, String)>,
    ) {
        for (k, v) in table.iter() {
            let name = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            match v.get_ref() {
                DeValue::Table(t) => walk(t, &name, path, source, problems),
                _ => {
                    if let Err(msg) = rules::sysctl_name(&name) {
                        let at = k.span().start;
                        let field = path.clone().key(&name);
                        problems.push((at, format!("{}: {field}: {msg}", source.position(at))));
                    }
                }
            }
        }
    }
    let sysctls = root
        .iter()
        .find(|(k, _)| k.get_ref() == "os")
        .and_then(|(_, os)| os.get_ref().as_table())
        .and_then(|os| os.iter().find(|(k, _)| k.get_ref() == "sysctls"))
        .and_then(|(_, s)| s.get_ref().as_table());
    if let Some(t) = sysctls {
        walk(t, "", &FieldPath::parse("os.sysctls"), source, problems);
    }
}

/// Call `f` on every value matching `pattern` (`*` = each array element).
fn visit(
    table: &DeTable<'_>,
    pattern: &[&str],
    path: FieldPath,
    f: &mut dyn FnMut(&Spanned<DeValue<'_>>, FieldPath),
) {
    let Some((first, rest)) = pattern.split_first() else {
        return;
    };
    if let Some((_, v)) = table.iter().find(|(k, _)| k.get_ref() == first) {
        visit_value(v, rest, path.key(first), f);
    }
}

fn visit_value(
    value: &Spanned<DeValue<'_>>,
    pattern: &[&str],
    path: FieldPath,
    f: &mut dyn FnMut(&Spanned<DeValue<'_>>, FieldPath),
) {
    match pattern.split_first() {
        None => f(value, path),
        Some((&"*", rest)) => {
            if let Some(items) = value.get_ref().as_array() {
                for (i, item) in items.iter().enumerate() {
                    visit_value(item, rest, path.clone().index(i), f);
                }
            }
        }
        Some(_) => {
            if let Some(t) = value.get_ref().as_table() {
                visit(t, pattern, path, f);
            }
        }
    }
}

fn flatten_sysctls(table: &mut toml::Table) -> Result<(), String> {
    let Some(toml::Value::Table(os)) = table.get_mut("os") else {
        return Ok(());
    };
    let Some(toml::Value::Table(sysctls)) = os.get_mut("sysctls") else {
        return Ok(());
    };
    let mut flat = std::collections::BTreeMap::new();
    super::values::flatten_sysctls("", std::mem::take(sysctls), &mut flat)?;
    *sysctls = flat
        .into_iter()
        .map(|(k, v)| {
            let v = toml::Value::try_from(v).map_err(|e| e.to_string())?;
            Ok((k, v))
        })
        .collect::<Result<_, String>>()?;
    Ok(())
}

/// Make the path values matching `pattern` absolute against `dir`.
fn resolve_paths(table: &mut toml::Table, pattern: &[&str], dir: &Path) {
    let Some((first, rest)) = pattern.split_first() else {
        return;
    };
    let Some(v) = table.get_mut(*first) else {
        return;
    };
    match (rest.split_first(), v) {
        (None, toml::Value::String(s)) => {
            let p = PathBuf::from(&*s);
            if p.is_relative() {
                *s = normalize(&dir.join(p)).to_string_lossy().into_owned();
            }
        }
        (Some((&"*", rest)), toml::Value::Array(items)) => {
            for item in items {
                if let toml::Value::Table(t) = item {
                    resolve_paths(t, rest, dir);
                }
            }
        }
        (Some(_), toml::Value::Table(t)) => resolve_paths(t, rest, dir),
        _ => {}
    }
}

//! `nodeimg inspect`: what a commit in a repository is and holds.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use glib::{Variant, VariantClass};
use ostree::gio;
use serde::Serialize;

use super::keys;

/// A commit as `nodeimg inspect` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommitInfo {
    pub repo: String,
    #[serde(rename = "ref")]
    pub ostree_ref: Option<String>,
    pub checksum: String,
    pub parent: Option<String>,
    pub timestamp: u64,
    /// The timestamp as RFC 3339 (UTC).
    pub date: String,
    pub subject: String,
    pub version: Option<String>,
    /// Every metadata key; the package list is summarised in `package-count`.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub package_count: usize,
    /// Sum of the sizes of the regular files in the tree (what it takes once deployed).
    pub content_size: u64,
    pub file_count: u64,
    /// What the commit's objects take in the repository (compressed in an archive repo).
    pub stored_size: u64,
}

/// Look up `rev` (a ref or checksum) in the repository at `repo_path`. Without `rev`, the
/// repository must have exactly one ref.
pub fn inspect(repo_path: &Path, rev: Option<&str>) -> Result<CommitInfo> {
    if !repo_path.join("config").is_file() {
        bail!("{} is not an OSTree repository", repo_path.display());
    }
    let repo = ostree::Repo::new_for_path(repo_path);
    let cancel = gio::Cancellable::NONE;
    repo.open(cancel)
        .with_context(|| format!("opening the OSTree repository {}", repo_path.display()))?;
    let (ostree_ref, rev) = match rev {
        Some(r) => (
            (!looks_like_checksum(r)).then(|| r.to_owned()),
            r.to_owned(),
        ),
        None => {
            let refs = repo
                .list_refs(None, cancel)
                .with_context(|| format!("listing the refs of {}", repo_path.display()))?;
            let mut names: Vec<String> = refs.into_keys().collect();
            names.sort();
            match names.len() {
                1 => (Some(names[0].clone()), names[0].clone()),
                0 => bail!(
                    "{} has no refs; name a commit checksum",
                    repo_path.display()
                ),
                _ => bail!(
                    "{} has several refs; name one: {}",
                    repo_path.display(),
                    names.join(", ")
                ),
            }
        }
    };
    let checksum = repo
        .resolve_rev(&rev, false)
        .with_context(|| format!("resolving {rev} in {}", repo_path.display()))?
        .with_context(|| format!("{rev} does not exist in {}", repo_path.display()))?
        .to_string();
    let commit = repo
        .load_variant(ostree::ObjectType::Commit, &checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    let meta = commit.child_value(0);
    let mut metadata = serde_json::Map::new();
    let mut package_count = 0;
    for i in 0..meta.n_children() {
        let entry = meta.child_value(i);
        let key = entry.child_value(0).str().unwrap_or_default().to_owned();
        let value = entry
            .child_value(1)
            .as_variant()
            .unwrap_or_else(|| entry.child_value(1));
        if key == keys::PACKAGES {
            package_count = value.n_children();
            continue;
        }
        metadata.insert(key, variant_to_json(&value));
    }
    let version = metadata
        .get(keys::VERSION)
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let timestamp = ostree::commit_get_timestamp(&commit);
    let (content_size, file_count, stored_size) = sizes(&repo, &checksum)?;
    Ok(CommitInfo {
        repo: repo_path.display().to_string(),
        ostree_ref,
        parent: ostree::commit_get_parent(&commit).map(|p| p.to_string()),
        timestamp,
        date: rfc3339(timestamp),
        subject: commit.child_value(3).str().unwrap_or_default().to_owned(),
        version,
        metadata,
        package_count,
        content_size,
        file_count,
        stored_size,
        checksum,
    })
}

fn looks_like_checksum(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn rfc3339(ts: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// (content size, regular file count, stored size) over every object of the commit.
fn sizes(repo: &ostree::Repo, checksum: &str) -> Result<(u64, u64, u64)> {
    let cancel = gio::Cancellable::NONE;
    let objects = repo
        .traverse_commit(checksum, 0, cancel)
        .with_context(|| format!("walking commit {checksum}"))?;
    let mut seen = HashSet::new();
    let (mut content, mut files, mut stored) = (0u64, 0u64, 0u64);
    for o in objects {
        if !seen.insert((o.checksum().to_owned(), o.object_type())) {
            continue;
        }
        stored += repo
            .query_object_storage_size(o.object_type(), o.checksum(), cancel)
            .with_context(|| format!("sizing object {}", o.checksum()))?;
        if o.object_type() == ostree::ObjectType::File {
            let (_, info, _) = repo
                .load_file(o.checksum(), cancel)
                .with_context(|| format!("reading object {}", o.checksum()))?;
            if info.file_type() == gio::FileType::Regular {
                content += info.size() as u64;
                files += 1;
            }
        }
    }
    Ok((content, files, stored))
}

/// A GVariant as JSON (strings, numbers, booleans, arrays, tuples, dictionaries).
fn variant_to_json(v: &Variant) -> serde_json::Value {
    use serde_json::Value;
    match v.classify() {
        VariantClass::Boolean => Value::Bool(v.get::<bool>().unwrap_or_default()),
        VariantClass::String | VariantClass::ObjectPath | VariantClass::Signature => {
            Value::String(v.str().unwrap_or_default().to_owned())
        }
        VariantClass::Byte => Value::from(v.get::<u8>().unwrap_or_default()),
        VariantClass::Int16 => Value::from(v.get::<i16>().unwrap_or_default()),
        VariantClass::Uint16 => Value::from(v.get::<u16>().unwrap_or_default()),
        VariantClass::Int32 => Value::from(v.get::<i32>().unwrap_or_default()),
        VariantClass::Uint32 => Value::from(v.get::<u32>().unwrap_or_default()),
        VariantClass::Int64 => Value::from(v.get::<i64>().unwrap_or_default()),
        VariantClass::Uint64 => Value::from(v.get::<u64>().unwrap_or_default()),
        VariantClass::Double => Value::from(v.get::<f64>().unwrap_or_default()),
        VariantClass::Variant => v
            .as_variant()
            .map(|inner| variant_to_json(&inner))
            .unwrap_or(Value::Null),
        VariantClass::Array if v.type_().as_str() == "ay" => Value::String(hex::encode(v.data())),
        VariantClass::Array | VariantClass::Tuple | VariantClass::DictEntry => Value::Array(
            (0..v.n_children())
                .map(|i| variant_to_json(&v.child_value(i)))
                .collect(),
        ),
        _ => Value::String(v.print(true).to_string()),
    }
}

/// The human form of [`CommitInfo`].
pub fn render_text(info: &CommitInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "commit       {}", info.checksum);
    if let Some(r) = &info.ostree_ref {
        let _ = writeln!(s, "ref          {r}");
    }
    let _ = writeln!(
        s,
        "parent       {}",
        info.parent.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(s, "date         {} ({})", info.date, info.timestamp);
    let _ = writeln!(s, "subject      {}", info.subject);
    let _ = writeln!(
        s,
        "version      {}",
        info.version.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(s, "packages     {}", info.package_count);
    let _ = writeln!(
        s,
        "size         {} in {} files ({} stored)",
        human(info.content_size),
        info.file_count,
        human(info.stored_size)
    );
    let _ = writeln!(s, "metadata");
    for (k, v) in &info.metadata {
        let text = match v {
            serde_json::Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(s, "  {k} = {text}");
    }
    s
}

fn human(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{b} B")
    } else {
        format!("{v:.1} {unit}")
    }
}

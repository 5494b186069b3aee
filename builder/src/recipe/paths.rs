//! Lexical path arithmetic for recipe files: no filesystem access, so a recipe can name a
//! file that is produced later (the nodeboot binary) and symlinked checkouts behave the same.

use std::path::{Component, Path, PathBuf};

/// Remove `.` and resolve `..` against the preceding component.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// `path` relative to the directory `base` (both absolute and normalised), e.g. for digests
/// that must not depend on where the checkout lives.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        assert_eq!(normalize(Path::new("/../a")), Path::new("/a"));
        assert_eq!(normalize(Path::new("a/../../b")), Path::new("../b"));
        assert_eq!(
            normalize(Path::new("recipes/./x.toml")),
            Path::new("recipes/x.toml")
        );
    }

    #[test]
    fn relative() {
        let base = Path::new("/repo/recipes");
        assert_eq!(
            relative_to(Path::new("/repo/recipes/files/a"), base),
            Path::new("files/a")
        );
        assert_eq!(
            relative_to(Path::new("/repo/keys/k"), base),
            Path::new("../keys/k")
        );
        assert_eq!(
            relative_to(Path::new("/repo/recipes"), base),
            Path::new(".")
        );
    }
}

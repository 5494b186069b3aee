//! Where things are in recipe files: byte offsets as `line:column`, field paths such as
//! `os.sysctls."net.ipv4.ip_forward"`, and the mapping between the two in both directions
//! (the span of an error to the field it is in; a field of the merged recipe to the file,
//! line and column that set it).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One recipe file as read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user sees it: as given on the command line, or joined onto the
    /// directory of the file that named it.
    pub display: PathBuf,
    /// Absolute, lexically normalised path.
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// `file:line:column` of a byte offset.
    pub fn position(&self, offset: usize) -> String {
        let (line, col) = line_col(&self.text, offset);
        format!("{}:{line}:{col}", self.display.display())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
    /// The entry of an array of tables whose `field` equals `value` (`artifact["kubelet"]`):
    /// keyed arrays are merged by that field, so an index would mean nothing across files.
    Keyed {
        field: &'static str,
        value: String,
    },
}

/// A path to a field, printed the way a user would find it in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn parse(dotted: &str) -> FieldPath {
        FieldPath(dotted.split('.').map(|k| Seg::Key(k.to_owned())).collect())
    }

    pub fn key(mut self, k: &str) -> FieldPath {
        self.0.push(Seg::Key(k.to_owned()));
        self
    }

    pub fn index(mut self, i: usize) -> FieldPath {
        self.0.push(Seg::Index(i));
        self
    }

    pub fn keyed(mut self, field: &'static str, value: &str) -> FieldPath {
        self.0.push(Seg::Keyed {
            field,
            value: value.to_owned(),
        });
        self
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Keyed { value, .. } => write!(f, "[{value:?}]")?,
            }
        }
        Ok(())
    }
}

/// The field whose key or value contains `offset`, the innermost one if several do. Errors
/// from the toml deserializer carry only a span; this turns it into a field path.
pub fn path_at(root: &DeTable<'_>, offset: usize) -> FieldPath {
    let mut best: Option<(usize, FieldPath)> = None;
    let mut consider = |span: Range<usize>, path: &FieldPath| {
        let hit = span.contains(&offset) || (span.is_empty() && span.start == offset);
        if hit && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
            best = Some((span.len(), path.clone()));
        }
    };
    walk_table(root, &FieldPath::default(), &mut consider);
    best.map(|(_, p)| p).unwrap_or_default()
}

fn walk_table(
    table: &DeTable<'_>,
    path: &FieldPath,
    visit: &mut dyn FnMut(Range<usize>, &FieldPath),
) {
    for (k, v) in table.iter() {
        let p = path.clone().key(k.get_ref());
        visit(k.span(), &p);
        walk_value(v, &p, visit);
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    path: &FieldPath,
    visit: &mut dyn FnMut(Range<usize>, &FieldPath),
) {
    visit(value.span(), path);
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, path, visit),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &path.clone().index(i), visit);
            }
        }
        _ => {}
    }
}

/// What part of a located field an issue is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Key,
    Value,
}

/// The span in `root` that defines `path`, or `None` when this file does not set it.
pub fn locate(root: &DeTable<'_>, path: &FieldPath, at: At) -> Option<Range<usize>> {
    let (last, parents) = path.0.split_last()?;
    let mut cur: Option<&DeTable<'_>> = Some(root);
    let mut cur_value: Option<&Spanned<DeValue<'_>>> = None;
    for seg in parents {
        let v = step(cur, cur_value, seg)?;
        cur = v.1.get_ref().as_table();
        cur_value = Some(v.1);
    }
    let (key_span, value) = step(cur, cur_value, last)?;
    match (at, key_span) {
        (At::Key, Some(k)) => Some(k),
        _ => Some(value.span()),
    }
}

type Step<'a, 'i> = (Option<Range<usize>>, &'a Spanned<DeValue<'i>>);

fn step<'a, 'i>(
    table: Option<&'a DeTable<'i>>,
    value: Option<&'a Spanned<DeValue<'i>>>,
    seg: &Seg,
) -> Option<Step<'a, 'i>> {
    match seg {
        Seg::Key(k) => {
            let table = table?;
            if let Some((key, v)) = table.iter().find(|(key, _)| key.get_ref() == k) {
                return Some((Some(key.span()), v));
            }
            // `a.b.c = 1` written as dotted keys is a nested table; look it up that way too.
            let mut parts = k.split('.');
            let first = parts.next()?;
            let (mut key, mut v) = table.iter().find(|(key, _)| key.get_ref() == first)?;
            for part in parts {
                (key, v) = v
                    .get_ref()
                    .as_table()?
                    .iter()
                    .find(|(key, _)| key.get_ref() == part)?;
            }
            Some((Some(key.span()), v))
        }
        Seg::Index(i) => {
            let items = value?.get_ref().as_array()?;
            items.get(*i).map(|v| (None, v))
        }
        Seg::Keyed { field, value: want } => {
            let items = value?.get_ref().as_array()?;
            items
                .iter()
                .rev()
                .find(|item| {
                    item.get_ref()
                        .as_table()
                        .and_then(|t| t.iter().find(|(k, _)| k.get_ref() == field))
                        .and_then(|(_, v)| v.get_ref().as_str())
                        == Some(want.as_str())
                })
                .map(|v| (None, v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let t = "a = 1\nbb = \"é\"\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 11), (2, 6));
        // Past the multi-byte character: columns count characters, not bytes.
        assert_eq!(line_col(t, 13), (2, 7));
    }

    #[test]
    fn paths_print_like_toml() {
        let p = FieldPath::parse("os.sysctls").key("net.ipv4.ip_forward");
        assert_eq!(p.to_string(), "os.sysctls.\"net.ipv4.ip_forward\"");
        let p = FieldPath::default()
            .key("artifact")
            .keyed("name", "kubelet")
            .key("dest");
        assert_eq!(p.to_string(), "artifact[\"kubelet\"].dest");
        assert_eq!(
            FieldPath::parse("os.kernel-args").index(2).to_string(),
            "os.kernel-args[2]"
        );
    }

    #[test]
    fn span_to_path_and_back() {
        let text = "version = 1\n[os]\nkernel-args = [\"a\", \"b c\"]\n\
                    [os.sysctls]\nnet.ipv4.ip_forward = 1\n\
                    [[artifact]]\nname = \"x\"\ndest = \"/usr/bin/x\"\n";
        let root = DeTable::parse(text).unwrap();
        let root = root.get_ref();
        let off = text.find("\"b c\"").unwrap();
        assert_eq!(path_at(root, off).to_string(), "os.kernel-args[1]");
        let p = FieldPath::parse("os.kernel-args").index(1);
        assert_eq!(locate(root, &p, At::Value), Some(off..off + 5));

        let p = FieldPath::parse("os.sysctls").key("net.ipv4.ip_forward");
        let span = locate(root, &p, At::Key).unwrap();
        assert_eq!(&text[span], "ip_forward");

        let p = FieldPath::default()
            .key("artifact")
            .keyed("name", "x")
            .key("dest");
        let span = locate(root, &p, At::Value).unwrap();
        assert_eq!(&text[span], "\"/usr/bin/x\"");
        let missing = FieldPath::default().key("artifact").keyed("name", "y");
        assert_eq!(locate(root, &missing, At::Value), None);
    }
}

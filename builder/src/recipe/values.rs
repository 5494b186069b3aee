//! Validating value types of the recipe schema: each parses (and rejects) while the recipe is
//! deserialized, so an error points at the offending value in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! string_newtype {
    ($name:ident, $check:expr, $what:literal) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(super) String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(format!("`{s}` is not {}", $what))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    Name,
    |s| !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
    "a valid name (lower-case letters, digits, `-`, `_`; at most 63 characters; starting with a letter or digit)"
);

string_newtype!(
    AbsPath,
    |s| s.starts_with('/') && !s.split('/').any(|c| c == "..") && !s.contains('\0'),
    "an absolute path without `..`"
);

string_newtype!(
    HttpUrl,
    |s| url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()),
    "an http:// or https:// URL"
);

// A short key id (16) or a full fingerprint (40): the 8-digit short id collides too easily
// to name a signing key.
string_newtype!(
    GpgKeyId,
    |s| matches!(s.len(), 16 | 40) && s.bytes().all(|b| b.is_ascii_hexdigit()),
    "a GPG key id (16 hex digits) or fingerprint (40 hex digits)"
);

string_newtype!(
    ArtifactUrl,
    |s| url::Url::parse(s).is_ok_and(|u| match u.scheme() {
        "http" | "https" => u.has_host(),
        "file" => !u.path().is_empty(),
        _ => false,
    }),
    "an http://, https:// or file:// URL"
);

/// A Unix file mode written as an octal string (`"0755"`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if (3..=5).contains(&digits.len()) && m <= 0o7777 => Ok(Mode(m)),
            _ => Err(format!(
                "`{s}` is not a file mode (expected an octal string such as \"0644\")"
            )),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file mode as an octal string such as \"0644\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Mode, E> {
                s.parse().map_err(E::custom)
            }
            // `mode = 644` is decimal 644 in TOML, not 0o644: refuse integers instead of
            // silently producing a different mode.
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "write the mode as a quoted octal string such as \"0644\" (the bare \
                     integer {n} would be read as a decimal number)"
                )))
            }
        }
        d.deserialize_any(ModeVisitor)
    }
}

/// A size in bytes, written as an integer or a string with a binary or decimal unit
/// (`"512MiB"`, `"4G"`, `"10Mi"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(&self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, n) in UNITS {
            if self.0 >= n && self.0 % n == 0 {
                return write!(f, "{}{unit}", self.0 / n);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("`{s}` is not a size (examples: 4096, \"512MiB\", \"4GiB\", \"10M\")");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "Ki" => 1 << 10,
            "M" | "MiB" | "Mi" => 1 << 20,
            "G" | "GiB" | "Gi" => 1 << 30,
            "T" | "TiB" | "Ti" => 1 << 40,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Size).ok_or_else(bad)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"512MiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {n} is negative")))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// A sysctl value as written: string, integer or boolean (booleans become 1/0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SysctlValue {
    Int(i64),
    Bool(bool),
    Str(String),
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysctlValue::Int(i) => write!(f, "{i}"),
            SysctlValue::Bool(b) => write!(f, "{}", u8::from(*b)),
            SysctlValue::Str(s) => f.write_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SysctlVisitor;
        impl Visitor<'_> for SysctlVisitor {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sysctl value: an integer, a boolean or a string")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SysctlValue, E> {
                i64::try_from(n)
                    .map(SysctlValue::Int)
                    .map_err(|_| E::custom(format!("sysctl value {n} is too large")))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Bool(b))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SysctlValue, E> {
                if s.contains(['\n', '\r']) {
                    return Err(E::custom("a sysctl value cannot contain a line break"));
                }
                Ok(SysctlValue::Str(s.to_owned()))
            }
        }
        d.deserialize_any(SysctlVisitor)
    }
}

/// `[os.sysctls]` keys may be quoted (`"net.ipv4.ip_forward" = 1`) or dotted
/// (`net.ipv4.ip_forward = 1`); TOML turns the dotted form into nested tables, so nested
/// tables are flattened back into dotted names here.
pub fn deserialize_sysctls<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SysctlValue>, D::Error> {
    let top = BTreeMap::<String, toml::Value>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten_sysctls("", top, &mut out).map_err(de::Error::custom)?;
    Ok(out)
}

/// Flatten nested sysctl tables into dotted names (see [`deserialize_sysctls`]).
pub fn flatten_sysctls(
    prefix: &str,
    map: impl IntoIterator<Item = (String, toml::Value)>,
    out: &mut BTreeMap<String, SysctlValue>,
) -> Result<(), String> {
    for (k, v) in map {
        let name = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        let value = match v {
            toml::Value::Table(inner) => {
                flatten_sysctls(&name, inner, out)?;
                continue;
            }
            toml::Value::Integer(i) => SysctlValue::Int(i),
            toml::Value::Boolean(b) => SysctlValue::Bool(b),
            toml::Value::String(s) if !s.contains(['\n', '\r']) => SysctlValue::Str(s),
            toml::Value::String(_) => {
                return Err(format!("sysctl `{name}`: the value contains a line break"))
            }
            other => {
                return Err(format!(
                    "sysctl `{name}`: expected an integer, a boolean or a string, found {}",
                    other.type_str()
                ))
            }
        };
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("sysctl `{name}` is set twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpg_key_ids_are_long_ids_or_fingerprints() {
        for ok in [
            "0123456789ABCDEF",
            "b1da062927853737f0d8c62900d0a420d2877552",
        ] {
            assert_eq!(ok.parse::<GpgKeyId>().unwrap().as_str(), ok);
        }
        // Short ids collide; `0x` prefixes and spaced fingerprints are not what gpg prints
        // with --with-colons.
        for bad in [
            "",
            "CAFEBABE",
            "0x0123456789ABCDEF",
            "0123456789ABCDEG",
            "B1DA 0629 2785 3737 F0D8  C629 00D0 A420 D287 7552",
        ] {
            let err = bad.parse::<GpgKeyId>().unwrap_err();
            assert!(err.contains("16 hex digits"), "{bad}: {err}");
        }
    }
}

//! SHA-256 digests: a validated newtype for digests written by people (recipes, manifests) and
//! helpers to hash files and build content-addressed cache keys.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest: exactly 64 lower-case hex characters (an optional `sha256:` prefix is
/// accepted when parsing and never printed).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a sha256 digest (expected 64 hex characters)")]
pub struct BadDigest(pub String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn of_bytes(data: impl AsRef<[u8]>) -> Self {
        Sha256Hex(hex::encode(Sha256::digest(data.as_ref())))
    }

    /// Hash a file by streaming it.
    pub fn of_file(path: &Path) -> Result<Self> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Sha256Hex(hex::encode(h.finalize())))
    }

    pub fn from_hasher(h: Sha256) -> Self {
        Sha256Hex(hex::encode(h.finalize()))
    }

    /// The 32 digest bytes.
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Every constructor checks or produces 64 lowercase hex characters.
        hex::decode_to_slice(&self.0, &mut out).expect("a Sha256Hex is 64 hex characters");
        out
    }

    /// The first `n` characters, for short names in paths and logs.
    pub fn short(&self, n: usize) -> &str {
        &self.0[..n.min(self.0.len())]
    }
}

impl FromStr for Sha256Hex {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let hexpart = s.strip_prefix("sha256:").unwrap_or(s);
        if hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(hexpart.to_ascii_lowercase()))
        } else {
            Err(BadDigest(s.to_owned()))
        }
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl Serialize for Sha256Hex {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Builds a content-addressed cache key from labelled inputs. Labels and lengths are hashed
/// too, so `("a", "bc")` and `("ab", "c")` give different keys.
#[derive(Debug, Clone, Default)]
pub struct KeyBuilder {
    h: Sha256,
}

impl KeyBuilder {
    /// `domain` names the stage and its key-format version: bump it when the stage's output
    /// for the same inputs changes.
    pub fn new(domain: &str) -> Self {
        let mut k = KeyBuilder { h: Sha256::new() };
        k = k.field("domain", domain);
        k
    }

    pub fn field(mut self, label: &str, value: impl AsRef<[u8]>) -> Self {
        let v = value.as_ref();
        self.h.update((label.len() as u64).to_le_bytes());
        self.h.update(label.as_bytes());
        self.h.update((v.len() as u64).to_le_bytes());
        self.h.update(v);
        self
    }

    pub fn finish(self) -> Sha256Hex {
        Sha256Hex::from_hasher(self.h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d: Sha256Hex =
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                .parse()
                .unwrap();
        assert_eq!(d, Sha256Hex::of_bytes(b""));
        assert!("abc".parse::<Sha256Hex>().is_err());
        assert!("g".repeat(64).parse::<Sha256Hex>().is_err());
        assert_eq!(
            d.bytes(),
            <[u8; 32]>::from(Sha256::digest(b"")),
            "bytes() is the digest the hex spells"
        );
    }

    #[test]
    fn keys_are_unambiguous() {
        let a = KeyBuilder::new("t")
            .field("x", "a")
            .field("y", "bc")
            .finish();
        let b = KeyBuilder::new("t")
            .field("x", "ab")
            .field("y", "c")
            .finish();
        assert_ne!(a, b);
        let c = KeyBuilder::new("t")
            .field("x", "a")
            .field("y", "bc")
            .finish();
        assert_eq!(a, c);
    }
}

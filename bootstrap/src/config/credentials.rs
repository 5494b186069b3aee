//! The join secrets as validating newtypes (reference §1.9): bootstrap token, certificate key
//! and CA public key pin. Token and key hold a [`Secret`]: `Display`/`Debug` never print the
//! secret part and parse errors never repeat the value, because both end up in logs.

use std::fmt;
use std::str::FromStr;

use nodeimg_common::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A kubeadm bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`. The 6-character ID is public (it names
/// the token's Secret in the cluster and appears in kubeadm's errors); the whole token is secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(Secret);

impl BootstrapToken {
    /// A fresh random token from the OS generator.
    pub fn generate() -> anyhow::Result<Self> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        // Rejection sampling keeps the distribution uniform: 252 = 7 * 36.
        let mut out = String::with_capacity(23);
        let mut buf = [0u8; 64];
        while out.len() < 23 {
            getrandom::fill(&mut buf)
                .map_err(|e| anyhow::anyhow!("reading the OS random generator: {e}"))?;
            for b in buf {
                if out.len() == 6 {
                    out.push('.');
                }
                if out.len() == 23 {
                    break;
                }
                if b < 252 {
                    out.push(ALPHABET[(b % 36) as usize] as char);
                }
            }
        }
        Ok(BootstrapToken(Secret::new(out)))
    }

    /// The public 6-character token ID.
    pub fn id(&self) -> &str {
        &self.0.expose()[..6]
    }

    /// The whole token, for the 0600 kubeadm config and the secret store only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// Why a token was refused. Never carries the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid bootstrap token: expected 6 then 16 lower-case letters or digits separated by a dot, like `abcdef.0123456789abcdef` (value not shown)")]
pub struct BadToken;

impl FromStr for BootstrapToken {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        let ok = s.len() == 23
            && s.bytes().enumerate().all(|(i, b)| {
                if i == 6 {
                    b == b'.'
                } else {
                    b.is_ascii_lowercase() || b.is_ascii_digit()
                }
            });
        if ok {
            Ok(BootstrapToken(Secret::new(s)))
        } else {
            Err(BadToken)
        }
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.id())
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({self})")
    }
}

impl<'de> Deserialize<'de> for BootstrapToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Secret::deserialize(d)?;
        s.expose().parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for BootstrapToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose())
    }
}

/// The key that encrypts the control-plane certificates kubeadm uploads (`kubeadm-certs`):
/// 32 bytes as 64 hex characters. Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateKey(Secret);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid certificate key: expected 64 hex characters (an AES key of 32 bytes) (value not shown)")]
pub struct BadCertificateKey;

impl CertificateKey {
    pub fn generate() -> anyhow::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| anyhow::anyhow!("reading the OS random generator: {e}"))?;
        let hex = hex::encode(key);
        key.iter_mut().for_each(|b| *b = 0);
        Ok(CertificateKey(Secret::new(hex)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl FromStr for CertificateKey {
    type Err = BadCertificateKey;
    fn from_str(s: &str) -> Result<Self, BadCertificateKey> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(CertificateKey(Secret::new(s.to_ascii_lowercase())))
        } else {
            Err(BadCertificateKey)
        }
    }
}

impl fmt::Display for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateKey(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for CertificateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Secret::deserialize(d)?;
        s.expose().parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for CertificateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose())
    }
}

/// A CA public key pin: `sha256:` + 64 hex characters (kubeadm `pubkeypin`). Public: it is the
/// hash of the cluster CA's public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CaCertHash(String);

impl CaCertHash {
    /// From the raw SHA-256 of a DER SubjectPublicKeyInfo.
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        CaCertHash(format!("sha256:{}", hex::encode(digest)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CaCertHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // kubeadm lower-cases the whole pin, so `SHA256:` is accepted too.
        let lower = s.to_ascii_lowercase();
        match lower.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(CaCertHash(lower))
            }
            _ => Err(format!(
                "invalid CA certificate hash `{s}`: expected `sha256:` followed by 64 hex characters"
            )),
        }
    }
}

impl fmt::Display for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CaCertHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for CaCertHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_display_hides_secret_half() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert_eq!(t.to_string(), "abcdef.<redacted>");
        assert!(!format!("{t:?}").contains("0123456789"));
        for bad in [
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
            "abcde.0123456789abcdefg",
            "",
        ] {
            let err = bad.parse::<BootstrapToken>().unwrap_err().to_string();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn generated_material_is_valid_and_random() {
        let a = BootstrapToken::generate().unwrap();
        let b = BootstrapToken::generate().unwrap();
        assert!(a.expose().parse::<BootstrapToken>().is_ok());
        assert_ne!(a.expose(), b.expose());
        let k = CertificateKey::generate().unwrap();
        assert_eq!(hex::decode(k.expose()).unwrap().len(), 32);
        assert_ne!(k.expose(), CertificateKey::generate().unwrap().expose());
    }
}

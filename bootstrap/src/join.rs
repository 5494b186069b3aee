//! Join material: what the first control plane publishes and joining nodes fetch, stored as one
//! secret (JSON, format version 1):
//!
//! ```json
//! {"version": 1, "token": "abcdef.0123456789abcdef", "token-expires-at": "2026-01-02T03:04:05Z",
//!  "ca-cert-hashes": ["sha256:<64 hex>"], "certificate-key": "<64 hex>",
//!  "certificate-key-expires-at": "2026-01-01T05:04:05Z", "api-server-endpoint": "k8s-api:6443"}
//! ```
//!
//! The expiry times matter because an expired token only shows up in kubeadm after its 5-minute
//! discovery timeout, with an obscure message (reference §0.5). Messages about material never
//! contain the token's secret half or the certificate key: parsing goes through plain strings
//! first so that no serde error can echo a value.

use std::fmt;

use nodeimg_common::Secret;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{BootstrapToken, CaCertHash, CertificateKey, Endpoint};

/// Lifetime of the `kubeadm-certs` Secret that the certificate key decrypts: kubeadm ties it to
/// a token with a fixed 2h TTL.
pub const CERTIFICATE_KEY_TTL: time::Duration = time::Duration::hours(2);

/// Validated join material.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinMaterial {
    pub token: BootstrapToken,
    pub token_expires_at: OffsetDateTime,
    pub ca_cert_hashes: Vec<CaCertHash>,
    pub certificate_key: Option<CertificateKey>,
    pub certificate_key_expires_at: Option<OffsetDateTime>,
    pub api_server_endpoint: Endpoint,
}

/// Why material was refused. Callers branch: `Expired` gets its own message and hint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("join material from {origin} is malformed: {detail}")]
    Malformed { origin: String, detail: String },
    #[error("join material from {origin} has expired: {what} expired at {expired_at} (now {now})")]
    Expired {
        origin: String,
        what: String,
        expired_at: String,
        now: String,
    },
    #[error(
        "join material from {origin} has no certificate key, which a control-plane join needs"
    )]
    NoCertificateKey { origin: String },
}

/// The wire form: every value a plain string so serde errors cannot quote a secret.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Wire {
    version: u32,
    token: Secret,
    token_expires_at: String,
    ca_cert_hashes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_key_expires_at: Option<String>,
    api_server_endpoint: String,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl JoinMaterial {
    /// Parse the stored secret. `origin` names the store and key for messages.
    pub fn parse(secret: &Secret, origin: &str) -> Result<JoinMaterial, JoinError> {
        let malformed = |detail: String| JoinError::Malformed {
            origin: origin.to_owned(),
            detail,
        };
        let wire: Wire = serde_json::from_str(secret.expose()).map_err(|e| {
            // Syntax, missing-field, unknown-field and type errors never quote a string value
            // from the input; the error category and position are enough to find the fault.
            malformed(format!("{e}"))
        })?;
        if wire.version != 1 {
            return Err(malformed(format!(
                "format version {} is not supported (expected 1)",
                wire.version
            )));
        }
        let time = |field: &str, s: &str| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| malformed(format!("`{field}` is not an RFC 3339 time: `{s}`")))
        };
        let token: BootstrapToken = wire
            .token
            .expose()
            .parse()
            .map_err(|e| malformed(format!("`token`: {e}")))?;
        let certificate_key = match &wire.certificate_key {
            Some(k) => Some(
                k.expose()
                    .parse::<CertificateKey>()
                    .map_err(|e| malformed(format!("`certificate-key`: {e}")))?,
            ),
            None => None,
        };
        let certificate_key_expires_at = match &wire.certificate_key_expires_at {
            Some(t) => Some(time("certificate-key-expires-at", t)?),
            None => None,
        };
        if certificate_key.is_some() != certificate_key_expires_at.is_some() {
            return Err(malformed(
                "`certificate-key` and `certificate-key-expires-at` go together".to_owned(),
            ));
        }
        if wire.ca_cert_hashes.is_empty() {
            return Err(malformed(
                "`ca-cert-hashes` is empty; nodeboot never joins without verifying the cluster CA"
                    .to_owned(),
            ));
        }
        Ok(JoinMaterial {
            token,
            token_expires_at: time("token-expires-at", &wire.token_expires_at)?,
            ca_cert_hashes: wire
                .ca_cert_hashes
                .iter()
                .map(|h| {
                    h.parse()
                        .map_err(|e| malformed(format!("`ca-cert-hashes`: {e}")))
                })
                .collect::<Result<_, _>>()?,
            certificate_key,
            certificate_key_expires_at,
            api_server_endpoint: wire
                .api_server_endpoint
                .parse()
                .map_err(|e| malformed(format!("`api-server-endpoint`: {e}")))?,
        })
    }

    /// The JSON stored in the secret store.
    pub fn to_secret(&self) -> Secret {
        let wire = Wire {
            version: 1,
            token: Secret::new(self.token.expose()),
            token_expires_at: rfc3339(self.token_expires_at),
            ca_cert_hashes: self.ca_cert_hashes.iter().map(|h| h.to_string()).collect(),
            certificate_key: self
                .certificate_key
                .as_ref()
                .map(|k| Secret::new(k.expose())),
            certificate_key_expires_at: self.certificate_key_expires_at.map(rfc3339),
            api_server_endpoint: self.api_server_endpoint.to_string(),
        };
        Secret::new(serde_json::to_string(&wire).expect("plain strings serialise"))
    }

    /// Refuse material that kubeadm would reject only after its discovery timeout. A
    /// control-plane join also needs an unexpired certificate key.
    pub fn check_usable(
        &self,
        now: OffsetDateTime,
        control_plane: bool,
        origin: &str,
    ) -> Result<(), JoinError> {
        let expired = |what: String, at: OffsetDateTime| JoinError::Expired {
            origin: origin.to_owned(),
            what,
            expired_at: rfc3339(at),
            now: rfc3339(now),
        };
        if self.token_expires_at <= now {
            return Err(expired(
                format!("bootstrap token {}", self.token),
                self.token_expires_at,
            ));
        }
        if control_plane {
            match self.certificate_key_expires_at {
                None => {
                    return Err(JoinError::NoCertificateKey {
                        origin: origin.to_owned(),
                    })
                }
                Some(at) if at <= now => {
                    return Err(expired("certificate key".to_owned(), at));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for JoinMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token {} (expires {}), {} CA hash(es), endpoint {}",
            self.token,
            rfc3339(self.token_expires_at),
            self.ca_cert_hashes.len(),
            self.api_server_endpoint
        )?;
        if let Some(at) = self.certificate_key_expires_at {
            write!(f, ", certificate key (expires {})", rfc3339(at))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn sample() -> JoinMaterial {
        JoinMaterial {
            token: TOKEN.parse().unwrap(),
            token_expires_at: datetime!(2030-01-02 03:04:05 UTC),
            ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32)).parse().unwrap()],
            certificate_key: Some(KEY.parse().unwrap()),
            certificate_key_expires_at: Some(datetime!(2030-01-01 05:04:05 UTC)),
            api_server_endpoint: "k8s-api.example:6443".parse().unwrap(),
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let s = m.to_secret();
        assert!(s
            .expose()
            .contains("\"token-expires-at\":\"2030-01-02T03:04:05Z\""));
        assert_eq!(JoinMaterial::parse(&s, "test").unwrap(), m);
    }

    #[test]
    fn malformed_material_never_echoes_secrets() {
        let bad_token = r#"{"version":1,"token":"abcdef.0123456789ABCDEF","token-expires-at":"2030-01-01T00:00:00Z","ca-cert-hashes":["sha256:00"],"api-server-endpoint":"a:1"}"#;
        let e = JoinMaterial::parse(&Secret::new(bad_token), "store")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`token`") && !e.contains("0123456789ABCDEF"),
            "{e}"
        );
        let bad_key = format!(
            r#"{{"version":1,"token":"{TOKEN}","token-expires-at":"2030-01-01T00:00:00Z","ca-cert-hashes":["sha256:{}"],"certificate-key":"{}","certificate-key-expires-at":"2030-01-01T00:00:00Z","api-server-endpoint":"a:1"}}"#,
            "ab".repeat(32),
            &KEY[..60]
        );
        let e = JoinMaterial::parse(&Secret::new(bad_key), "store")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("certificate-key") && !e.contains(&KEY[..60]),
            "{e}"
        );
        let e = JoinMaterial::parse(&Secret::new(format!("{{\"token\": \"{TOKEN}\", ")), "s")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("0123456789abcdef"), "{e}");
    }

    #[test]
    fn expiry_is_checked_and_reported_without_secrets() {
        let m = sample();
        m.check_usable(datetime!(2029-12-31 00:00 UTC), true, "s")
            .unwrap();
        let e = m
            .check_usable(datetime!(2030-01-01 06:00 UTC), true, "vault x")
            .unwrap_err();
        assert!(matches!(e, JoinError::Expired { .. }));
        assert!(
            e.to_string()
                .contains("certificate key expired at 2030-01-01T05:04:05Z"),
            "{e}"
        );
        // A worker does not need the certificate key.
        m.check_usable(datetime!(2030-01-01 06:00 UTC), false, "s")
            .unwrap();
        let e = m
            .check_usable(datetime!(2030-01-03 00:00 UTC), false, "s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bootstrap token abcdef.<redacted> expired at 2030-01-02T03:04:05Z"),
            "{e}"
        );
        assert!(!e.contains("0123456789abcdef") && !e.contains(KEY), "{e}");
    }
}

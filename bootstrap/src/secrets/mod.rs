//! Secret stores holding the cluster's join material, by reference, never inline.
//!
//! A store is a key → secret-string map with two operations. The join material's own format
//! (JSON with the token, CA hashes, certificate key and expiry times) is defined by the caller;
//! stores treat the value as opaque.
//!
//! Keys are `/`-separated paths of `[A-Za-z0-9._-]` segments (e.g. `clusters/prod/join`), the
//! subset every backend accepts unchanged: a Vault KV v2 path, a Secrets Manager name, a
//! relative file path. No error message of a store contains a secret value or a credential.

pub mod aws;
pub mod file;
pub mod sigv4;
pub mod vault;

use anyhow::Context;
use nodeimg_common::Secret;

/// Why a store operation failed. Callers branch on it: `NotFound` means "wait and retry" for
/// a joining node, everything else is an error with exit code "secret store".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("secret `{key}` does not exist in {store}")]
    NotFound { store: String, key: String },
    #[error("{store}: access denied for `{key}`: {detail}")]
    Denied {
        store: String,
        key: String,
        detail: String,
    },
    #[error("{store}: {detail}")]
    Other { store: String, detail: String },
}

/// Result of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// This call created the secret: the caller won.
    Created,
    /// A secret already existed under the key; nothing was written.
    AlreadyExists,
}

/// A secret store. Implementations: `file` (a directory), `vault` (KV v2), `aws` (Secrets
/// Manager).
pub trait SecretStore: std::fmt::Debug {
    /// A short description for messages, e.g. `vault https://vault:8200 (mount secret)`.
    fn describe(&self) -> String;

    /// Read the current value of `key`.
    fn get(&self, key: &str) -> Result<Secret, StoreError>;

    /// Write `value` under `key` only if nothing exists there yet (Vault `cas: 0`, Secrets
    /// Manager `CreateSecret`, `O_EXCL` for files). Exactly one concurrent caller gets
    /// `Created`.
    fn create(&self, key: &str, value: &Secret) -> Result<CreateOutcome, StoreError>;

    /// Replace the value of `key` (used to refresh expired join material). Stores that cannot
    /// do this safely return an error.
    fn update(&self, key: &str, value: &Secret) -> Result<(), StoreError>;
}

/// Where the join material lives, as written in the node config (`[secrets]` table).
/// The I/O for each kind lives in its own module; [`open`] builds the store.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoreConfig {
    /// HashiCorp Vault (or OpenBao) KV version 2.
    Vault(VaultConfig),
    /// AWS Secrets Manager.
    Aws(AwsConfig),
    /// A directory on the node (tests, air-gapped installs that provision it out of band).
    File(FileConfig),
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VaultConfig {
    /// Base URL, e.g. `https://vault.example:8200`.
    pub address: String,
    /// KV v2 mount path, default `secret`.
    #[serde(default = "default_vault_mount")]
    pub mount: String,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// PEM CA bundle to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<std::path::PathBuf>,
    pub auth: VaultAuth,
}

fn default_vault_mount() -> String {
    "secret".to_owned()
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
// `rename_all` renames the variants only; the fields of struct variants need
// `rename_all_fields` to be kebab-case like every other config key.
#[serde(
    tag = "method",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum VaultAuth {
    /// A token read from a file (never inline).
    Token { token_file: std::path::PathBuf },
    /// AppRole login with role id and secret id read from files.
    Approle {
        #[serde(default = "default_approle_mount")]
        mount: String,
        role_id_file: std::path::PathBuf,
        secret_id_file: std::path::PathBuf,
    },
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AwsConfig {
    pub region: String,
    /// Endpoint override (VPC endpoints, tests); default `https://secretsmanager.<region>.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub dir: std::path::PathBuf,
}

/// Build the store a config names. Credentials are read here (files, instance role), so a
/// missing credential fails before any kubeadm work starts.
pub fn open(config: &StoreConfig) -> anyhow::Result<Box<dyn SecretStore>> {
    Ok(match config {
        StoreConfig::File(c) => Box::new(file::FileStore::new(&c.dir)),
        StoreConfig::Vault(c) => Box::new(
            vault::VaultStore::from_config(c)
                .with_context(|| format!("setting up the Vault store at {}", c.address))?,
        ),
        StoreConfig::Aws(c) => Box::new(aws::AwsStore::from_config(c).with_context(|| {
            format!("setting up the AWS Secrets Manager store in {}", c.region)
        })?),
    })
}

/// Check a key against the rule in the module documentation.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 512 {
        return Err(format!(
            "secret key `{key}` must be 1 to 512 characters long"
        ));
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "secret key `{key}` has an empty, `.` or `..` path segment"
            ));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
        {
            return Err(format!(
                "secret key `{key}` contains `{c}`; allowed are letters, digits, `.`, `_`, `-` and `/` between segments"
            ));
        }
    }
    Ok(())
}

/// [`validate_key`] as a store error.
pub(crate) fn check_key(store: &dyn SecretStore, key: &str) -> Result<(), StoreError> {
    validate_key(key).map_err(|detail| StoreError::Other {
        store: store.describe(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("clusters/prod-1/join_v2.json").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "a/./b",
            "trailing/",
            "sp ace",
            "a\\b",
            "ü",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(validate_key(&"a".repeat(513)).is_err());
    }

    #[test]
    fn config_parses_strictly() {
        let c: StoreConfig = toml::from_str(
            r#"
kind = "vault"
address = "https://vault.example:8200"
auth = { method = "approle", role-id-file = "/etc/nodeboot/role-id", secret-id-file = "/run/secret-id" }
"#,
        )
        .unwrap();
        let StoreConfig::Vault(v) = c else {
            panic!("vault expected")
        };
        assert_eq!(v.mount, "secret");
        assert!(matches!(v.auth, VaultAuth::Approle { ref mount, .. } if mount == "approle"));
        let err = toml::from_str::<StoreConfig>("kind = \"file\"\ndir = \"/x\"\ntoken = \"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token"), "{err}");
    }
}

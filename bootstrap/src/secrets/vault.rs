//! HashiCorp Vault / OpenBao KV version 2 (reference §4.1).
//!
//! Storage format: the secret string is the field `value` of the KV data,
//! `{"data": {"value": "<secret string>"}}`, so other tools (`vault kv get -field=value`)
//! can read it. Create-only writes use `options.cas = 0`; Vault answers an existing key with
//! 400 "check-and-set parameter did not match the current version", which is
//! [`CreateOutcome::AlreadyExists`]. Updates write with `cas = current_version`.
//!
//! Authentication: a token read from a file, or AppRole (`POST /v1/auth/<mount>/login` with
//! role id and secret id read from files); the AppRole token is cached and a 403 triggers one
//! new login. Messages name the address, mount and key, never a token or a value.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use nodeimg_common::Secret;
use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::{check_key, CreateOutcome, SecretStore, StoreError, VaultAuth, VaultConfig};
use crate::sources::http::{self, Retry};

const TIMEOUT: Duration = Duration::from_secs(10);
const RETRY: Retry = Retry {
    retries: 3,
    base: Duration::from_millis(250),
    cap: Duration::from_secs(2),
};
const MAX_RESPONSE: usize = 1024 * 1024;
const CAS_MISMATCH: &str = "check-and-set parameter did not match";

#[derive(Debug)]
enum Auth {
    Token(Secret),
    AppRole {
        mount: String,
        role_id: Secret,
        secret_id: Secret,
    },
}

/// A KV v2 mount on one Vault server.
#[derive(Debug)]
pub struct VaultStore {
    address: String,
    mount: String,
    namespace: Option<String>,
    client: Client,
    auth: Auth,
    token: Mutex<Option<Secret>>,
}

impl VaultStore {
    /// Read the credentials and CA bundle the config names and build the client. No request
    /// is sent yet.
    pub fn from_config(cfg: &VaultConfig) -> anyhow::Result<Self> {
        let address = cfg.address.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&address)
            .with_context(|| format!("vault address `{address}` is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "vault address `{address}` must be http:// or https://"
        );
        let mount = cfg.mount.trim_matches('/').to_owned();
        anyhow::ensure!(!mount.is_empty(), "vault mount must not be empty");

        let mut builder = Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(bundle) = &cfg.ca_bundle {
            let pem = std::fs::read(bundle)
                .with_context(|| format!("reading the vault CA bundle {}", bundle.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("parsing the vault CA bundle {} as PEM", bundle.display())
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "the vault CA bundle {} contains no PEM certificate",
                bundle.display()
            );
            // Only the given CAs: a private Vault must not be trusted via a public CA.
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {}", http::chain(&e)))?;

        let auth = match &cfg.auth {
            VaultAuth::Token { token_file } => Auth::Token(read_credential(token_file, "token")?),
            VaultAuth::Approle {
                mount,
                role_id_file,
                secret_id_file,
            } => Auth::AppRole {
                mount: mount.trim_matches('/').to_owned(),
                role_id: read_credential(role_id_file, "AppRole role id")?,
                secret_id: read_credential(secret_id_file, "AppRole secret id")?,
            },
        };
        Ok(VaultStore {
            address,
            mount,
            namespace: cfg.namespace.clone(),
            client,
            auth,
            token: Mutex::new(None),
        })
    }

    fn where_(&self, key: &str) -> String {
        format!("vault {} mount `{}` key `{key}`", self.address, self.mount)
    }

    fn other(&self, key: &str, detail: String) -> StoreError {
        StoreError::Other {
            store: self.describe(),
            detail: format!("{}: {detail}", self.where_(key)),
        }
    }

    fn denied(&self, key: &str, detail: String) -> StoreError {
        StoreError::Denied {
            store: self.describe(),
            key: key.to_owned(),
            detail,
        }
    }

    /// The token to send: the configured one, or a cached/new AppRole login.
    fn token(&self, key: &str) -> Result<Secret, StoreError> {
        match &self.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = cached.as_ref() {
                    return Ok(t.clone());
                }
                let url = format!("{}/v1/auth/{mount}/login", self.address);
                let body = json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()});
                let reply = http::send(&url, &RETRY, MAX_RESPONSE, || {
                    self.with_namespace(self.client.post(&url)).json(&body)
                })
                .map_err(|e| self.other(key, format!("AppRole login at {url}: {e}")))?;
                let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                if reply.status != 200 {
                    return Err(self.denied(
                        key,
                        format!(
                            "AppRole login at {url} failed: HTTP {}{}",
                            reply.status,
                            vault_errors(&v)
                        ),
                    ));
                }
                let token = v
                    .pointer("/auth/client_token")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        self.other(
                            key,
                            format!("AppRole login at {url}: no auth.client_token in the answer"),
                        )
                    })?;
                let token = Secret::new(token);
                *cached = Some(token.clone());
                Ok(token)
            }
        }
    }

    fn with_namespace(
        &self,
        b: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.namespace {
            Some(ns) => b.header("X-Vault-Namespace", ns),
            None => b,
        }
    }

    /// One API call on `path` (below `/v1/<mount>/`), with one re-login after a 403 when the
    /// token came from AppRole (it may have expired).
    fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), StoreError> {
        let url = format!("{}/v1/{}/{path}", self.address, self.mount);
        for relogin in [false, true] {
            let token = self.token(key)?;
            let reply = http::send(&url, &RETRY, MAX_RESPONSE, || {
                let b = self
                    .with_namespace(self.client.request(method.clone(), &url))
                    .header("X-Vault-Token", token.expose());
                match body {
                    Some(v) => b.json(v),
                    None => b,
                }
            })
            .map_err(|e| self.other(key, e.to_string()))?;
            let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            if reply.status == 403 && !relogin && matches!(self.auth, Auth::AppRole { .. }) {
                tracing::debug!(address = %self.address, "vault refused the AppRole token; logging in again");
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                continue;
            }
            if reply.status == 403 {
                return Err(self.denied(
                    key,
                    format!("{}: HTTP 403{}", self.where_(key), vault_errors(&v)),
                ));
            }
            return Ok((reply.status, v));
        }
        unreachable!("the loop returns on its second pass")
    }

    fn write(&self, key: &str, value: &Secret, cas: u64) -> Result<(u16, Value), StoreError> {
        let body = json!({"options": {"cas": cas}, "data": {"value": value.expose()}});
        self.call(
            key,
            reqwest::Method::POST,
            &format!("data/{key}"),
            Some(&body),
        )
    }
}

impl SecretStore for VaultStore {
    fn describe(&self) -> String {
        format!("vault {} (mount {})", self.address, self.mount)
    }

    fn get(&self, key: &str) -> Result<Secret, StoreError> {
        check_key(self, key)?;
        let (status, v) = self.call(key, reqwest::Method::GET, &format!("data/{key}"), None)?;
        match status {
            200 => {}
            404 => {
                return Err(StoreError::NotFound {
                    store: self.describe(),
                    key: key.to_owned(),
                })
            }
            s => return Err(self.other(key, format!("HTTP {s}{}", vault_errors(&v)))),
        }
        // A deleted or destroyed latest version reads as `data.data: null`.
        let data = v.pointer("/data/data").unwrap_or(&Value::Null);
        if data.is_null() {
            return Err(StoreError::NotFound {
                store: self.describe(),
                key: key.to_owned(),
            });
        }
        data.get("value")
            .and_then(Value::as_str)
            .map(Secret::new)
            .ok_or_else(|| {
                self.other(
                    key,
                    "the secret has no string field `value` (nodeboot stores the secret as data.value)"
                        .to_owned(),
                )
            })
    }

    fn create(&self, key: &str, value: &Secret) -> Result<CreateOutcome, StoreError> {
        check_key(self, key)?;
        let (status, v) = self.write(key, value, 0)?;
        match status {
            200 | 204 => Ok(CreateOutcome::Created),
            400 if vault_errors(&v).contains(CAS_MISMATCH) => Ok(CreateOutcome::AlreadyExists),
            s => Err(self.other(key, format!("create: HTTP {s}{}", vault_errors(&v)))),
        }
    }

    fn update(&self, key: &str, value: &Secret) -> Result<(), StoreError> {
        check_key(self, key)?;
        // Another writer may slip in between reading the version and writing; re-read then.
        for _ in 0..3 {
            let (status, meta) =
                self.call(key, reqwest::Method::GET, &format!("metadata/{key}"), None)?;
            let current = match status {
                200 => meta
                    .pointer("/data/current_version")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| self.other(key, "metadata has no current_version".to_owned()))?,
                404 => {
                    return Err(StoreError::NotFound {
                        store: self.describe(),
                        key: key.to_owned(),
                    })
                }
                s => {
                    return Err(self.other(
                        key,
                        format!("reading metadata: HTTP {s}{}", vault_errors(&meta)),
                    ))
                }
            };
            let (status, v) = self.write(key, value, current)?;
            match status {
                200 | 204 => return Ok(()),
                400 if vault_errors(&v).contains(CAS_MISMATCH) => continue,
                s => return Err(self.other(key, format!("update: HTTP {s}{}", vault_errors(&v)))),
            }
        }
        Err(self.other(
            key,
            "update: the key kept changing under concurrent writers (3 attempts)".to_owned(),
        ))
    }
}

/// `: a; b` from Vault's `{"errors": ["a", "b"]}`, or nothing.
fn vault_errors(v: &Value) -> String {
    let list: Vec<&str> = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        String::new()
    } else {
        format!(": {}", list.join("; "))
    }
}

fn read_credential(path: &Path, what: &str) -> anyhow::Result<Secret> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("reading the vault {what} from {}", path.display()))?;
    let v = raw.trim();
    anyhow::ensure!(
        !v.is_empty(),
        "the vault {what} file {} is empty",
        path.display()
    );
    Ok(Secret::new(v))
}

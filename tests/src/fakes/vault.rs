//! Test double standing in for HashiCorp Vault / OpenBao (KV version 2 + AppRole), which
//! cannot be installed on a Debian build machine (reference §5.1). Reproduces the documented
//! behaviour listed in reference §4.1 and §6.2:
//! - the response envelope (`request_id`, `lease_id`, `renewable`, `lease_duration`, `data`,
//!   `wrap_info`, `warnings`, `auth`) and the KV v2 `data`/`metadata` shapes;
//! - `X-Vault-Token` checking: missing, unknown or revoked → 403 `{"errors":["permission denied"]}`;
//!   with a namespace configured, a request whose `X-Vault-Namespace` differs → 403 as well;
//! - `GET <mount>/data/<path>[?version=N]`: never written → 404 `{"errors":[]}`; latest version
//!   soft-deleted or destroyed → **404 with `data.data: null`** and the metadata;
//! - per-key versions, `metadata.version`, `current_version`;
//! - `options.cas`: mismatch, or `cas: 0` on an existing key → 400
//!   `{"errors":["check-and-set parameter did not match the current version"]}`; with
//!   `cas_required` (engine `config` or [`FakeVault::set_cas_required`]) and no `cas` → 400
//!   "check-and-set parameter required for this call";
//! - `DELETE <mount>/data/<path>` soft-deletes the latest version;
//! - `GET <mount>/metadata/<path>` (`current_version`, `versions`, …) and `LIST` /
//!   `GET ?list=true` on a directory → `{"keys": [...]}` with `dir/` suffixes;
//! - `POST auth/<mount>/login` with `role_id`/`secret_id`, no token needed →
//!   `auth.client_token`; bad credentials → 400 `{"errors":["invalid role or secret ID"]}`.
//!
//! Not reproduced: response wrapping (`sys/wrapping/unwrap`), policies, leases and token TTLs
//! (use [`FakeVault::revoke_all_tokens`] to simulate an expired token), engine mounting.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{empty, fake_token, json as reply_json, FakeRequest, FakeServer, ResponseBox};

#[derive(Debug, Clone)]
struct Version {
    data: Value,
    created_time: String,
    deletion_time: String,
    destroyed: bool,
}

#[derive(Debug, Default)]
struct Entry {
    versions: Vec<Version>,
    cas_required: bool,
}

/// One recorded request (never the token or the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub namespace: Option<String>,
    pub had_token: bool,
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashSet<String>,
    /// (auth mount, role_id, secret_id)
    approles: Vec<(String, String, String)>,
    kv_mounts: HashSet<String>,
    kv: BTreeMap<(String, String), Entry>,
    cas_required: bool,
    namespace: Option<String>,
    logins: usize,
    log: Vec<Logged>,
}

/// A fake Vault on 127.0.0.1 with a KV v2 engine at `secret/`.
#[derive(Debug)]
pub struct FakeVault {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl FakeVault {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            kv_mounts: HashSet::from(["secret".to_owned()]),
            ..State::default()
        }));
        let s = Arc::clone(&state);
        let server = FakeServer::start(move |req| {
            let mut st = s.lock().unwrap_or_else(|p| p.into_inner());
            let resp = handle(&mut st, req);
            st.log.push(Logged {
                method: req.method.clone(),
                path: req.url.clone(),
                namespace: req.header("x-vault-namespace").map(str::to_owned),
                had_token: req.header("x-vault-token").is_some(),
                status: resp.status_code().0,
            });
            resp
        });
        FakeVault { server, state }
    }

    /// The Vault address (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Issue a new valid token.
    pub fn add_token(&self) -> String {
        let t = fake_token("hvs.");
        self.with(|s| s.tokens.insert(t.clone()));
        t
    }

    pub fn revoke_token(&self, token: &str) {
        self.with(|s| s.tokens.remove(token));
    }

    /// Revoke every token (as if their TTL had run out).
    pub fn revoke_all_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// Enable an AppRole credential pair under auth mount `mount`.
    pub fn add_approle(&self, mount: &str, role_id: &str, secret_id: &str) {
        self.with(|s| {
            s.approles
                .push((mount.to_owned(), role_id.to_owned(), secret_id.to_owned()))
        });
    }

    /// Another KV v2 engine at `mount`.
    pub fn add_kv_mount(&self, mount: &str) {
        self.with(|s| s.kv_mounts.insert(mount.to_owned()));
    }

    pub fn set_cas_required(&self, required: bool) {
        self.with(|s| s.cas_required = required);
    }

    /// Require `X-Vault-Namespace: ns` on every authenticated request.
    pub fn set_namespace(&self, ns: Option<&str>) {
        self.with(|s| s.namespace = ns.map(str::to_owned));
    }

    /// Write a version directly (test setup), bypassing auth and CAS.
    pub fn put(&self, mount: &str, path: &str, data: Value) {
        self.with(|s| {
            let e = s.kv.entry((mount.to_owned(), path.to_owned())).or_default();
            e.versions.push(new_version(data));
        });
    }

    /// The latest version's data, if it exists and is not deleted.
    pub fn latest(&self, mount: &str, path: &str) -> Option<Value> {
        self.with(|s| {
            let v =
                s.kv.get(&(mount.to_owned(), path.to_owned()))?
                    .versions
                    .last()?
                    .clone();
            (v.deletion_time.is_empty() && !v.destroyed).then_some(v.data)
        })
    }

    /// Number of versions of a key.
    pub fn versions(&self, mount: &str, path: &str) -> usize {
        self.with(|s| {
            s.kv.get(&(mount.to_owned(), path.to_owned()))
                .map_or(0, |e| e.versions.len())
        })
    }

    pub fn destroy_latest(&self, mount: &str, path: &str) {
        self.with(|s| {
            if let Some(v) =
                s.kv.get_mut(&(mount.to_owned(), path.to_owned()))
                    .and_then(|e| e.versions.last_mut())
            {
                v.destroyed = true;
                v.data = Value::Null;
            }
        });
    }

    /// Successful AppRole logins so far.
    pub fn logins(&self) -> usize {
        self.with(|s| s.logins)
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.with(|s| s.log.clone())
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn new_version(data: Value) -> Version {
    Version {
        data,
        created_time: now(),
        deletion_time: String::new(),
        destroyed: false,
    }
}

fn envelope(data: Value, auth: Value) -> Value {
    json!({
        "request_id": fake_token(""),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth,
    })
}

fn errors(status: u16, msgs: &[&str]) -> ResponseBox {
    reply_json(status, &json!({ "errors": msgs }))
}

fn version_meta(v: &Version, n: usize) -> Value {
    json!({
        "created_time": v.created_time,
        "custom_metadata": null,
        "deletion_time": v.deletion_time,
        "destroyed": v.destroyed,
        "version": n,
    })
}

fn handle(s: &mut State, req: &FakeRequest) -> ResponseBox {
    let Some(route) = req.path().strip_prefix("/v1/") else {
        return errors(404, &[]);
    };
    let route = route.to_owned();
    if let Some(mount) = route
        .strip_prefix("auth/")
        .and_then(|r| r.strip_suffix("/login"))
    {
        return login(s, mount, req);
    }
    let token_ok = req
        .header("x-vault-token")
        .is_some_and(|t| s.tokens.contains(t));
    let ns_ok = s.namespace.is_none() || req.header("x-vault-namespace") == s.namespace.as_deref();
    if !token_ok || !ns_ok {
        return errors(403, &["permission denied"]);
    }
    let Some((mount, rest)) = route.split_once('/') else {
        return errors(
            404,
            &[&format!(
                "no handler for route \"{route}\". route entry not found."
            )],
        );
    };
    if !s.kv_mounts.contains(mount) {
        return errors(
            404,
            &[&format!(
                "no handler for route \"{route}\". route entry not found."
            )],
        );
    }
    let mount = mount.to_owned();
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if rest == "config" && req.method == "POST" {
        if let Some(b) = body.get("cas_required").and_then(Value::as_bool) {
            s.cas_required = b;
        }
        return empty(204);
    }
    if let Some(path) = rest.strip_prefix("data/") {
        let key = (mount, path.to_owned());
        return match req.method.as_str() {
            "GET" => read(s, &key, req),
            "POST" | "PUT" => write(s, key, &body),
            "DELETE" => {
                if let Some(v) = s.kv.get_mut(&key).and_then(|e| e.versions.last_mut()) {
                    v.deletion_time = now();
                }
                empty(204)
            }
            _ => errors(405, &["unsupported operation"]),
        };
    }
    if let Some(path) = rest.strip_prefix("metadata/") {
        let list = req.method == "LIST" || req.query("list") == Some("true");
        if list {
            return list_keys(s, &mount, path);
        }
        if req.method != "GET" {
            return errors(405, &["unsupported operation"]);
        }
        let Some(e) = s.kv.get(&(mount, path.to_owned())) else {
            return errors(404, &[]);
        };
        let versions: serde_json::Map<String, Value> = e
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    (i + 1).to_string(),
                    json!({"created_time": v.created_time, "deletion_time": v.deletion_time, "destroyed": v.destroyed}),
                )
            })
            .collect();
        let data = json!({
            "cas_required": e.cas_required,
            "created_time": e.versions.first().map(|v| v.created_time.clone()),
            "current_version": e.versions.len(),
            "custom_metadata": null,
            "delete_version_after": "0s",
            "max_versions": 0,
            "oldest_version": 0,
            "updated_time": e.versions.last().map(|v| v.created_time.clone()),
            "versions": versions,
        });
        return reply_json(200, &envelope(data, Value::Null));
    }
    errors(
        404,
        &[&format!(
            "no handler for route \"{route}\". route entry not found."
        )],
    )
}

fn login(s: &mut State, mount: &str, req: &FakeRequest) -> ResponseBox {
    if req.method != "POST" && req.method != "PUT" {
        return errors(405, &["unsupported operation"]);
    }
    if !s.approles.iter().any(|(m, _, _)| m == mount) {
        return errors(
            404,
            &[&format!(
                "no handler for route \"auth/{mount}/login\". route entry not found."
            )],
        );
    }
    if s.namespace.is_some() && req.header("x-vault-namespace") != s.namespace.as_deref() {
        return errors(
            404,
            &[&format!(
                "no handler for route \"auth/{mount}/login\". route entry not found."
            )],
        );
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (role_id, secret_id) = (field("role_id"), field("secret_id"));
    if role_id.is_empty() {
        return errors(400, &["missing role_id"]);
    }
    let Some((_, _, _)) = s
        .approles
        .iter()
        .find(|(m, r, sid)| m == mount && *r == role_id && *sid == secret_id)
    else {
        return errors(400, &["invalid role or secret ID"]);
    };
    let token = fake_token("hvs.");
    s.tokens.insert(token.clone());
    s.logins += 1;
    let auth = json!({
        "client_token": token,
        "accessor": fake_token(""),
        "policies": ["default", "nodeboot"],
        "token_policies": ["default", "nodeboot"],
        "metadata": {"role_name": "nodeboot"},
        "lease_duration": 1200,
        "renewable": true,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
    });
    reply_json(200, &envelope(Value::Null, auth))
}

fn read(s: &State, key: &(String, String), req: &FakeRequest) -> ResponseBox {
    let Some(e) = s.kv.get(key).filter(|e| !e.versions.is_empty()) else {
        return errors(404, &[]);
    };
    let n = match req.query("version").map(str::parse::<usize>) {
        None | Some(Ok(0)) => e.versions.len(),
        Some(Ok(n)) if n <= e.versions.len() => n,
        Some(Ok(_)) => return errors(404, &[]),
        Some(Err(_)) => return errors(400, &["invalid version"]),
    };
    let v = &e.versions[n - 1];
    let gone = !v.deletion_time.is_empty() || v.destroyed;
    let data = json!({
        "data": if gone { Value::Null } else { v.data.clone() },
        "metadata": version_meta(v, n),
    });
    reply_json(if gone { 404 } else { 200 }, &envelope(data, Value::Null))
}

fn write(s: &mut State, key: (String, String), body: &Value) -> ResponseBox {
    let Some(data) = body.get("data").filter(|d| d.is_object()) else {
        return errors(400, &["no data provided"]);
    };
    let cas = body.pointer("/options/cas").and_then(Value::as_u64);
    let engine_cas = s.cas_required;
    let e = s.kv.entry(key).or_default();
    if cas.is_none() && (engine_cas || e.cas_required) {
        return errors(400, &["check-and-set parameter required for this call"]);
    }
    if let Some(c) = cas {
        if c as usize != e.versions.len() {
            return errors(
                400,
                &["check-and-set parameter did not match the current version"],
            );
        }
    }
    e.versions.push(new_version(data.clone()));
    let n = e.versions.len();
    let meta = version_meta(&e.versions[n - 1], n);
    reply_json(200, &envelope(meta, Value::Null))
}

fn list_keys(s: &State, mount: &str, dir: &str) -> ResponseBox {
    let prefix = if dir.is_empty() || dir.ends_with('/') {
        dir.to_owned()
    } else {
        format!("{dir}/")
    };
    let mut keys: Vec<String> =
        s.kv.keys()
            .filter(|(m, p)| m == mount && p.starts_with(&prefix))
            .map(|(_, p)| {
                let rest = &p[prefix.len()..];
                match rest.split_once('/') {
                    Some((d, _)) => format!("{d}/"),
                    None => rest.to_owned(),
                }
            })
            .collect();
    keys.dedup();
    if keys.is_empty() {
        return errors(404, &[]);
    }
    reply_json(200, &envelope(json!({ "keys": keys }), Value::Null))
}

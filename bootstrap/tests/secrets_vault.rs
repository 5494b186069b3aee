//! The Vault KV v2 store against the in-process fake Vault (nodeimg-tests `fakes::vault`):
//! token and AppRole auth, create-only race, update, bad credentials, namespace, CA bundle.

use std::path::Path;
use std::sync::{Arc, Barrier};

use nodeboot::secrets::{
    open, CreateOutcome, SecretStore, StoreConfig, StoreError, VaultAuth, VaultConfig,
};
use nodeimg_common::Secret;
use nodeimg_tests::fakes::vault::FakeVault;
use serde_json::json;

const VALUE: &str = "{\"token\":\"abcdef.0123456789abcdef\"}";
const SECRET_PART: &str = "0123456789abcdef";

fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn token_config(vault: &FakeVault, dir: &Path, token: &str) -> VaultConfig {
    VaultConfig {
        address: vault.url(),
        mount: "secret".to_owned(),
        namespace: None,
        ca_bundle: None,
        auth: VaultAuth::Token {
            token_file: write(dir, "token", &format!("{token}\n")),
        },
    }
}

fn approle_config(vault: &FakeVault, dir: &Path, secret_id: &str) -> VaultConfig {
    VaultConfig {
        address: vault.url(),
        mount: "secret".to_owned(),
        namespace: None,
        ca_bundle: None,
        auth: VaultAuth::Approle {
            mount: "approle".to_owned(),
            role_id_file: write(dir, "role-id", "role-1234"),
            secret_id_file: write(dir, "secret-id", secret_id),
        },
    }
}

fn open_vault(c: VaultConfig) -> Box<dyn SecretStore> {
    open(&StoreConfig::Vault(c)).unwrap()
}

fn assert_no_secret(msg: &str, also: &[&str]) {
    assert!(!msg.contains(SECRET_PART), "value leaked: {msg}");
    for s in also {
        assert!(!msg.contains(s), "`{s}` leaked: {msg}");
    }
}

#[test]
fn token_auth_create_get_update() {
    let vault = FakeVault::start();
    let d = tempfile::tempdir().unwrap();
    let token = vault.add_token();
    let s = open_vault(token_config(&vault, d.path(), &token));
    let key = "clusters/demo/join";

    let err = s.get(key).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(
        s.create(key, &Secret::new(VALUE)).unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        vault.latest("secret", key),
        Some(json!({ "value": VALUE })),
        "stored as data.value"
    );
    assert_eq!(
        s.create(key, &Secret::new("other")).unwrap(),
        CreateOutcome::AlreadyExists
    );
    assert_eq!(s.get(key).unwrap().expose(), VALUE);
    s.update(key, &Secret::new("refreshed")).unwrap();
    assert_eq!(s.get(key).unwrap().expose(), "refreshed");
    assert_eq!(vault.versions("secret", key), 2);
    let err = s
        .update("clusters/demo/none", &Secret::new(VALUE))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(s.describe().contains(&vault.url()));
}

#[test]
fn deleted_or_destroyed_latest_reads_as_not_found() {
    let vault = FakeVault::start();
    let d = tempfile::tempdir().unwrap();
    let s = open_vault(token_config(&vault, d.path(), &vault.add_token()));
    vault.put("secret", "a", json!({"value": "x"}));
    assert_eq!(s.get("a").unwrap().expose(), "x");
    vault.destroy_latest("secret", "a");
    assert!(matches!(s.get("a"), Err(StoreError::NotFound { .. })));
    // The key exists (metadata), so create-only still refuses it.
    assert_eq!(
        s.create("a", &Secret::new("y")).unwrap(),
        CreateOutcome::AlreadyExists
    );
    // A foreign secret without our `value` field is an error, not a silent empty value.
    vault.put("secret", "foreign", json!({"password": "p"}));
    let msg = s.get("foreign").unwrap_err().to_string();
    assert!(msg.contains("data.value"), "{msg}");
}

#[test]
fn create_only_race_has_one_winner() {
    let vault = FakeVault::start();
    let d = tempfile::tempdir().unwrap();
    let config = token_config(&vault, d.path(), &vault.add_token());
    for round in 0..10 {
        let key = format!("race/{round}");
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let c = config.clone();
                let (key, barrier) = (key.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let s = open_vault(c);
                    barrier.wait();
                    s.create(&key, &Secret::new(format!("node-{i}"))).unwrap()
                })
            })
            .collect();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == CreateOutcome::Created)
                .count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(vault.versions("secret", &key), 1);
    }
}

#[test]
fn approle_login_is_cached_and_renewed_after_403() {
    let vault = FakeVault::start();
    vault.add_approle("approle", "role-1234", "sid-5678");
    let d = tempfile::tempdir().unwrap();
    let s = open_vault(approle_config(&vault, d.path(), "sid-5678\n"));
    assert_eq!(
        vault.logins(),
        0,
        "open reads the files but does not log in"
    );
    assert_eq!(
        s.create("k", &Secret::new(VALUE)).unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(s.get("k").unwrap().expose(), VALUE);
    assert_eq!(vault.logins(), 1, "token cached");
    vault.revoke_all_tokens();
    assert_eq!(s.get("k").unwrap().expose(), VALUE);
    assert_eq!(vault.logins(), 2, "one new login after the 403");
    let login_requests: Vec<_> = vault
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/login"))
        .collect();
    assert!(
        login_requests.iter().all(|r| !r.had_token),
        "login without a token"
    );
}

#[test]
fn bad_credentials_are_denied_without_leaking() {
    let vault = FakeVault::start();
    vault.add_approle("approle", "role-1234", "sid-5678");
    let d = tempfile::tempdir().unwrap();
    let s = open_vault(approle_config(&vault, d.path(), "wrong-secret-id"));
    let err = s.create("k", &Secret::new(VALUE)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Denied { .. }), "{msg}");
    assert!(msg.contains("invalid role or secret ID"), "{msg}");
    assert_no_secret(&msg, &["wrong-secret-id"]);

    let s = open_vault(token_config(&vault, d.path(), "hvs.bogus-token-value"));
    for err in [
        s.create("k", &Secret::new(VALUE)).unwrap_err(),
        s.update("k", &Secret::new(VALUE)).unwrap_err(),
        s.get("k").unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Denied { .. }), "{msg}");
        assert!(
            msg.contains("403") && msg.contains("permission denied"),
            "{msg}"
        );
        assert!(msg.contains(&vault.url()) && msg.contains("`k`"), "{msg}");
        assert_no_secret(&msg, &["bogus-token-value"]);
        assert_no_secret(&format!("{err:?}"), &["bogus-token-value"]);
    }
}

#[test]
fn namespace_header_and_cas_required_engine() {
    let vault = FakeVault::start();
    vault.set_namespace(Some("team-a"));
    vault.set_cas_required(true);
    let d = tempfile::tempdir().unwrap();
    let token = vault.add_token();
    let mut c = token_config(&vault, d.path(), &token);
    let without = open_vault(c.clone());
    assert!(matches!(without.get("k"), Err(StoreError::Denied { .. })));
    c.namespace = Some("team-a".to_owned());
    let s = open_vault(c);
    assert_eq!(
        s.create("k", &Secret::new("v1")).unwrap(),
        CreateOutcome::Created
    );
    s.update("k", &Secret::new("v2")).unwrap();
    assert_eq!(s.get("k").unwrap().expose(), "v2");
    assert!(vault
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.namespace.as_deref() == Some("team-a")));
}

#[test]
fn config_errors_name_the_file() {
    let vault = FakeVault::start();
    let d = tempfile::tempdir().unwrap();
    let mut c = token_config(&vault, d.path(), "t");
    c.ca_bundle = Some(write(d.path(), "ca.pem", "this is not PEM\n"));
    let msg = format!("{:#}", open(&StoreConfig::Vault(c.clone())).unwrap_err());
    assert!(
        msg.contains("ca.pem") && msg.contains("no PEM certificate"),
        "{msg}"
    );
    c.ca_bundle = Some(d.path().join("missing-ca.pem"));
    let msg = format!("{:#}", open(&StoreConfig::Vault(c.clone())).unwrap_err());
    assert!(msg.contains("missing-ca.pem"), "{msg}");

    // A real CA certificate is accepted.
    let key = d.path().join("ca.key");
    let cert = d.path().join("ca.crt");
    nodeimg_common::Cmd::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .run()
        .unwrap();
    c.ca_bundle = Some(cert);
    assert!(open(&StoreConfig::Vault(c.clone())).is_ok());

    let mut c = token_config(&vault, d.path(), "t");
    c.auth = VaultAuth::Token {
        token_file: d.path().join("no-token-file"),
    };
    let msg = format!("{:#}", open(&StoreConfig::Vault(c)).unwrap_err());
    assert!(msg.contains("no-token-file"), "{msg}");
    let mut c = token_config(&vault, d.path(), "t");
    c.address = "vault.example:8200".to_owned();
    assert!(open(&StoreConfig::Vault(c)).is_err());
}

/// The fake's own documented shapes (reference §6.2), spoken to with plain HTTP.
#[test]
fn fake_vault_reproduces_documented_shapes() {
    let vault = FakeVault::start();
    let token = vault.add_token();
    let c = reqwest::blocking::Client::new();
    let url = |p: &str| format!("{}/v1/{p}", vault.url());
    let call = |method: &str, p: &str, body: Option<serde_json::Value>, tok: Option<&str>| {
        let mut r = c.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            url(p),
        );
        if let Some(t) = tok {
            r = r.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.json().unwrap_or(serde_json::Value::Null);
        (status, v)
    };
    let t = Some(token.as_str());
    assert_eq!(
        call("GET", "secret/data/x", None, None),
        (403, json!({"errors": ["permission denied"]}))
    );
    assert_eq!(
        call("GET", "secret/data/x", None, t),
        (404, json!({"errors": []}))
    );
    let (s, v) = call(
        "POST",
        "secret/data/dir/a",
        Some(json!({"options": {"cas": 0}, "data": {"k": 1}})),
        t,
    );
    assert_eq!((s, &v["data"]["version"]), (200, &json!(1)));
    for key in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(v.get(key).is_some(), "envelope lacks {key}: {v}");
    }
    let (s, v) = call(
        "POST",
        "secret/data/dir/a",
        Some(json!({"options": {"cas": 0}, "data": {"k": 2}})),
        t,
    );
    assert_eq!(
        (s, v),
        (
            400,
            json!({"errors": ["check-and-set parameter did not match the current version"]})
        )
    );
    call(
        "POST",
        "secret/data/dir/a",
        Some(json!({"data": {"k": 2}})),
        t,
    );
    call(
        "POST",
        "secret/data/dir/sub/b",
        Some(json!({"data": {"k": 3}})),
        t,
    );
    let (s, v) = call("GET", "secret/data/dir/a?version=1", None, t);
    assert_eq!((s, &v["data"]["data"]), (200, &json!({"k": 1})));
    let (_, v) = call("GET", "secret/metadata/dir/a", None, t);
    assert_eq!(v["data"]["current_version"], json!(2));
    let (s, v) = call("LIST", "secret/metadata/dir", None, t);
    assert_eq!((s, &v["data"]["keys"]), (200, &json!(["a", "sub/"])));
    let (_, v2) = call("GET", "secret/metadata/dir?list=true", None, t);
    assert_eq!(v2["data"]["keys"], v["data"]["keys"]);
    // Soft delete: 404, but with data.data null and the metadata filled in.
    assert_eq!(call("DELETE", "secret/data/dir/a", None, t).0, 204);
    let (s, v) = call("GET", "secret/data/dir/a", None, t);
    assert_eq!(s, 404);
    assert!(v["data"]["data"].is_null());
    assert!(!v["data"]["metadata"]["deletion_time"]
        .as_str()
        .unwrap()
        .is_empty());
    // cas_required on the engine: a write without cas is refused.
    assert_eq!(
        call(
            "POST",
            "secret/config",
            Some(json!({"cas_required": true})),
            t
        )
        .0,
        204
    );
    assert_eq!(
        call("POST", "secret/data/c", Some(json!({"data": {"k": 1}})), t),
        (
            400,
            json!({"errors": ["check-and-set parameter required for this call"]})
        )
    );
    // AppRole login needs no token; bad credentials are a 400.
    vault.add_approle("approle", "r", "s");
    let (s, v) = call(
        "POST",
        "auth/approle/login",
        Some(json!({"role_id": "r", "secret_id": "s"})),
        None,
    );
    assert_eq!(s, 200);
    assert!(v["auth"]["client_token"]
        .as_str()
        .unwrap()
        .starts_with("hvs."));
    assert_eq!(
        call(
            "POST",
            "auth/approle/login",
            Some(json!({"role_id": "r", "secret_id": "x"})),
            None
        ),
        (400, json!({"errors": ["invalid role or secret ID"]}))
    );
}

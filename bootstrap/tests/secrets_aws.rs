//! The AWS Secrets Manager store against a REAL moto server on 127.0.0.1 (PyPI
//! `moto[server]`, installed by `ci/moto`), in plain mode and with SigV4 checking on
//! (`INITIAL_NO_AUTH_ACTION_COUNT`, reference §5.2), plus instance-role credentials served by
//! the fake IMDS.
//!
//! moto is found via `NODEIMG_MOTO_URL` (a server `ci/moto start` runs; plain mode),
//! `NODEIMG_MOTO_SERVER` / `.venv/bin/moto_server` / `PATH` (servers started here). Without
//! moto the tests print why and pass, unless `NODEIMG_REQUIRE_MOTO` is set (CI), where
//! they fail.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nodeboot::secrets::aws::{AwsStore, CredentialSource};
use nodeboot::secrets::sigv4::{self, Credentials};
use nodeboot::secrets::{AwsConfig, CreateOutcome, SecretStore, StoreError};
use nodeimg_common::Secret;
use nodeimg_tests::fakes::imds::FakeImds;

const VALUE: &str = "{\"token\":\"abcdef.0123456789abcdef\",\"certificate_key\":\"00ff\"}";
const SECRET_PART: &str = "0123456789abcdef";

/// A moto server: one this test started (killed on drop) or the shared one from `ci/moto`.
struct Moto {
    url: String,
    child: Option<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODEIMG_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("moto_server"))
        .find(|p| p.exists())
}

fn skip_or_fail(reason: &str) -> Option<Moto> {
    if std::env::var_os("NODEIMG_REQUIRE_MOTO").is_some() {
        panic!("moto is required (NODEIMG_REQUIRE_MOTO is set) but {reason}; run ci/moto install");
    }
    eprintln!(
        "SKIP: {reason} (run `ci/moto install`; set NODEIMG_REQUIRE_MOTO=1 to make this fatal)"
    );
    None
}

/// Start moto. `auth_after`: enable SigV4/IAM checking after that many unauthenticated
/// actions (a private server is always started then).
fn moto(auth_after: Option<u32>) -> Option<Moto> {
    if auth_after.is_none() {
        if let Ok(url) = std::env::var("NODEIMG_MOTO_URL") {
            return Some(Moto { url, child: None });
        }
    }
    let Some(bin) = moto_binary() else {
        return skip_or_fail("moto_server was not found");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(n) = auth_after {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
    }
    // A long-running server: nodeimg_common::Cmd runs commands to completion, hence Command.
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return skip_or_fail(&format!("{} could not start: {e}", bin.display())),
    };
    let m = Moto {
        url: format!("http://127.0.0.1:{port}"),
        child: Some(child),
    };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto did not listen on {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(m)
}

fn unique(prefix: &str) -> String {
    format!(
        "nodeboot-test/{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn creds(id: &str, secret: &str) -> Credentials {
    Credentials {
        access_key_id: id.to_owned(),
        secret_access_key: Secret::new(secret),
        session_token: None,
    }
}

fn store(m: &Moto, c: CredentialSource) -> AwsStore {
    AwsStore::new(
        &AwsConfig {
            region: "us-east-1".to_owned(),
            endpoint: Some(m.url.clone()),
        },
        c,
    )
    .unwrap()
}

#[test]
fn create_get_update_against_moto() {
    let Some(m) = moto(None) else { return };
    let s = store(&m, CredentialSource::Static(creds("testing", "testing")));
    let key = unique("join");

    let err = s.get(&key).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(
        s.create(&key, &Secret::new(VALUE)).unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(s.get(&key).unwrap().expose(), VALUE);
    // The same create again (a retry after a lost answer) is idempotent thanks to the
    // deterministic ClientRequestToken; another value is refused.
    assert_eq!(
        s.create(&key, &Secret::new(VALUE)).unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        s.create(&key, &Secret::new("another node's material"))
            .unwrap(),
        CreateOutcome::AlreadyExists
    );
    assert_eq!(s.get(&key).unwrap().expose(), VALUE);
    s.update(&key, &Secret::new("refreshed")).unwrap();
    assert_eq!(s.get(&key).unwrap().expose(), "refreshed");
    // Back to an earlier value must still become current (random update tokens).
    s.update(&key, &Secret::new(VALUE)).unwrap();
    assert_eq!(s.get(&key).unwrap().expose(), VALUE);

    let err = s
        .update(&unique("missing"), &Secret::new(VALUE))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(!err.to_string().contains(SECRET_PART));
}

#[test]
fn concurrent_creates_one_winner_against_moto() {
    let Some(m) = moto(None) else { return };
    let key = unique("race");
    let url = m.url.clone();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (url, key) = (url.clone(), key.clone());
            std::thread::spawn(move || {
                let s = AwsStore::new(
                    &AwsConfig {
                        region: "us-east-1".to_owned(),
                        endpoint: Some(url),
                    },
                    CredentialSource::Static(creds("testing", "testing")),
                )
                .unwrap();
                s.create(&key, &Secret::new(format!("material-{i}")))
                    .unwrap()
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
}

fn iam(m: &Moto, c: &Credentials, params: &[(&str, &str)]) -> String {
    query_action(m, c, "iam", "2010-05-08", params)
}

/// Send a Query-protocol action (IAM, STS) to moto, signed with `c`; returns the XML answer.
fn query_action(
    m: &Moto,
    c: &Credentials,
    service: &str,
    version: &str,
    params: &[(&str, &str)],
) -> String {
    let url = url::Url::parse(&format!("{}/", m.url)).unwrap();
    // Strict RFC 3986 encoding (`*` as %2A): moto re-encodes the parsed form with Python's
    // urlencode before checking the payload hash, so the body must already be in that form.
    let body = params
        .iter()
        .chain([("Version", version)].iter())
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let headers = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
    )];
    let signed = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            url: &url,
            headers: &headers,
            payload: body.as_bytes(),
        },
        c,
        "us-east-1",
        service,
        time::OffsetDateTime::now_utc(),
    );
    let mut req = reqwest::blocking::Client::new().post(url).body(body);
    for (k, v) in headers.iter().chain(signed.iter()) {
        req = req.header(k, v);
    }
    let resp = req.send().unwrap();
    let status = resp.status();
    let text = resp.text().unwrap();
    assert!(status.is_success(), "IAM {params:?}: {status} {text}");
    text
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap() + open.len();
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    xml[start..end].to_owned()
}

/// moto with signature checking on after `setup` unauthenticated actions: an IAM user with
/// an access key and an allow-all policy (three actions), then only correctly signed requests
/// pass.
fn checked_moto(setup: u32) -> Option<(Moto, Credentials)> {
    let m = moto(Some(setup))?;
    let bootstrap = creds("AKIDBOOTSTRAP", "unchecked");
    iam(
        &m,
        &bootstrap,
        &[("Action", "CreateUser"), ("UserName", "nodeboot")],
    );
    let key = iam(
        &m,
        &bootstrap,
        &[("Action", "CreateAccessKey"), ("UserName", "nodeboot")],
    );
    let policy =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    iam(
        &m,
        &bootstrap,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "nodeboot"),
            ("PolicyName", "all"),
            ("PolicyDocument", policy),
        ],
    );
    let c = creds(
        &xml_field(&key, "AccessKeyId"),
        &xml_field(&key, "SecretAccessKey"),
    );
    Some((m, c))
}

#[test]
fn sigv4_is_checked_by_moto() {
    let Some((m, good)) = checked_moto(3) else {
        return;
    };
    let key = unique("signed");
    let s = store(&m, CredentialSource::Static(good.clone()));
    assert_eq!(
        s.create(&key, &Secret::new(VALUE)).unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(s.get(&key).unwrap().expose(), VALUE);

    // Right key id, wrong secret: the signature does not match.
    let wrong = creds(&good.access_key_id, "definitely-not-the-secret-key");
    let s = store(&m, CredentialSource::Static(wrong));
    for err in [
        s.get(&key).unwrap_err(),
        s.create(&unique("x"), &Secret::new(VALUE)).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Denied { .. }), "{msg}");
        assert!(
            !msg.contains(SECRET_PART) && !msg.contains("definitely-not"),
            "{msg}"
        );
    }
    // Unknown key id: 403 InvalidClientTokenId (XML body even on the JSON protocol).
    let s = store(
        &m,
        CredentialSource::Static(creds("AKIAUNKNOWN000000000", "x")),
    );
    let msg = s.get(&key).unwrap_err().to_string();
    assert!(
        msg.contains("InvalidClientTokenId") || msg.contains("403"),
        "{msg}"
    );
}

#[test]
fn instance_role_credentials_from_imds() {
    // A role, its policy and AssumeRole as unauthenticated setup actions 4-6 (moto 5.2.5
    // answers a *signed* AssumeRole with a 500), giving real temporary credentials whose
    // session token moto then checks, as an instance profile's would be.
    let Some((m, _user)) = checked_moto(6) else {
        return;
    };
    let bootstrap = creds("AKIDBOOTSTRAP", "unchecked");
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let role = iam(
        &m,
        &bootstrap,
        &[
            ("Action", "CreateRole"),
            ("RoleName", "node-role"),
            ("AssumeRolePolicyDocument", trust),
        ],
    );
    let allow = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:*","Resource":"*"}]}"#;
    iam(
        &m,
        &bootstrap,
        &[
            ("Action", "PutRolePolicy"),
            ("RoleName", "node-role"),
            ("PolicyName", "sm"),
            ("PolicyDocument", allow),
        ],
    );
    let sts = query_action(
        &m,
        &bootstrap,
        "sts",
        "2011-06-15",
        &[
            ("Action", "AssumeRole"),
            ("RoleArn", &xml_field(&role, "Arn")),
            ("RoleSessionName", "i-0123"),
        ],
    );
    let imds = FakeImds::start();
    imds.set_role(
        "node-role",
        &xml_field(&sts, "AccessKeyId"),
        &xml_field(&sts, "SecretAccessKey"),
        &xml_field(&sts, "SessionToken"),
        "2099-01-01T00:00:00Z",
    );
    let s = store(&m, CredentialSource::instance_role(&imds.url()).unwrap());
    let key = unique("role");
    assert_eq!(
        s.create(&key, &Secret::new(VALUE)).unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(s.get(&key).unwrap().expose(), VALUE);
    assert_eq!(imds.token_puts(), 1, "credentials cached until near expiry");

    // The same key pair with a forged session token is refused: the token really is sent.
    let forged = FakeImds::start();
    forged.set_role(
        "node-role",
        &xml_field(&sts, "AccessKeyId"),
        &xml_field(&sts, "SecretAccessKey"),
        "forged-session-token",
        "2099-01-01T00:00:00Z",
    );
    let s = store(&m, CredentialSource::instance_role(&forged.url()).unwrap());
    let msg = s.get(&key).unwrap_err().to_string();
    assert!(msg.contains("denied"), "{msg}");
    assert!(!msg.contains("forged-session-token"), "{msg}");

    // No instance profile: the error says so.
    let bare = FakeImds::start();
    let src = CredentialSource::instance_role(&bare.url()).unwrap();
    let msg = src.credentials().unwrap_err();
    assert!(
        msg.contains("404") && msg.contains("instance profile"),
        "{msg}"
    );
}

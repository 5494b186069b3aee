//! AWS Secrets Manager over its JSON 1.1 protocol, signed with [`super::sigv4`]
//! (reference §4.2).
//!
//! - `get` = `GetSecretValue` (`SecretString`); `ResourceNotFoundException` → NotFound.
//! - `create` = `CreateSecret` with a `ClientRequestToken` derived from key and value (UUIDv5),
//!   so a retry of the same create is idempotent; `ResourceExistsException` → AlreadyExists.
//! - `update` = `PutSecretValue` (new `AWSCURRENT` version) with a random token.
//!
//! Errors are told apart by the `__type` field, never by the HTTP status (AWS documents 400
//! where moto answers 404). Credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, else the instance role from IMDSv2
//! (`/latest/meta-data/iam/security-credentials/<role>`), refreshed before it expires. The
//! IMDS address can be overridden with `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as in the AWS SDKs.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use nodeimg_common::Secret;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::sigv4::{self, Credentials};
use super::{check_key, AwsConfig, CreateOutcome, SecretStore, StoreError};
use crate::sources::http::{self, Retry};
use crate::sources::{ImdsAnswer, ImdsClient, Net};

const SERVICE: &str = "secretsmanager";
const TIMEOUT: Duration = Duration::from_secs(10);
const RETRY: Retry = Retry {
    retries: 3,
    base: Duration::from_millis(250),
    cap: Duration::from_secs(2),
};
const MAX_RESPONSE: usize = 1024 * 1024;
/// Instance-role credentials are refreshed this long before they expire.
const REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);
const ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// Namespace of the deterministic `ClientRequestToken`s (a fixed, project-chosen UUID).
const TOKEN_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1c1d52-3a5e-4b8e-9a57-0c3f4f2d9e11");

/// Where request credentials come from.
#[derive(Debug)]
pub enum CredentialSource {
    Static(Credentials),
    /// The instance profile, read over IMDSv2 and cached until shortly before `Expiration`.
    InstanceRole {
        imds: ImdsClient,
        cached: Mutex<Option<(Credentials, OffsetDateTime)>>,
    },
}

impl CredentialSource {
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`) if set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var("AWS_ACCESS_KEY_ID")
            .ok()
            .filter(|v| !v.is_empty())?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
            .ok()
            .filter(|v| !v.is_empty())?;
        Some(CredentialSource::Static(Credentials {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
            session_token: std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new),
        }))
    }

    pub fn instance_role(imds_base: &str) -> Result<Self, String> {
        let net = Net::new(Duration::from_secs(2), 3, Duration::from_millis(250));
        Ok(CredentialSource::InstanceRole {
            imds: ImdsClient::new(imds_base, net)?,
            cached: Mutex::new(None),
        })
    }

    /// Current credentials (fetching or refreshing the instance role's as needed).
    pub fn credentials(&self) -> Result<Credentials, String> {
        match self {
            CredentialSource::Static(c) => Ok(c.clone()),
            CredentialSource::InstanceRole { imds, cached } => {
                let mut guard = cached.lock().unwrap_or_else(|p| p.into_inner());
                let now = OffsetDateTime::now_utc();
                if let Some((c, exp)) = guard.as_ref() {
                    if *exp - REFRESH_MARGIN > now {
                        return Ok(c.clone());
                    }
                }
                let (c, exp) = fetch_role_credentials(imds)?;
                *guard = Some((c.clone(), exp));
                Ok(c)
            }
        }
    }
}

fn fetch_role_credentials(imds: &ImdsClient) -> Result<(Credentials, OffsetDateTime), String> {
    let found = |a: ImdsAnswer, what: &str| match a {
        ImdsAnswer::Found(b) => Ok(b),
        ImdsAnswer::NotFound => Err(format!(
            "{}{ROLE_PATH}{what}: HTTP 404 (no instance profile attached?)",
            imds.base()
        )),
    };
    let roles = found(imds.get(ROLE_PATH, 64 * 1024)?, "")?;
    let roles = String::from_utf8_lossy(&roles);
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| format!("{}{ROLE_PATH}: no role listed", imds.base()))?
        .to_owned();
    let body = found(imds.get(&format!("{ROLE_PATH}{role}"), 64 * 1024)?, &role)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("instance role `{role}` credentials are not JSON: {e}"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("instance role `{role}` credentials lack `{k}`"))
    };
    if let Some(code) = v.get("Code").and_then(Value::as_str) {
        if code != "Success" {
            return Err(format!("instance role `{role}` credentials: Code {code}"));
        }
    }
    let expiration = OffsetDateTime::parse(
        &field("Expiration")?,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| format!("instance role `{role}`: bad Expiration: {e}"))?;
    Ok((
        Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: Secret::new(field("SecretAccessKey")?),
            session_token: Some(Secret::new(field("Token")?)),
        },
        expiration,
    ))
}

/// Secrets Manager in one region.
#[derive(Debug)]
pub struct AwsStore {
    region: String,
    endpoint: url::Url,
    client: Client,
    creds: CredentialSource,
}

/// An error answer: `__type` without its namespace prefix, and the message.
#[derive(Debug)]
struct AwsFault {
    status: u16,
    kind: String,
    message: String,
}

impl AwsStore {
    /// Credentials from the environment, else the instance role (fetched now, so a node
    /// without either fails before doing any work).
    pub fn from_config(cfg: &AwsConfig) -> anyhow::Result<Self> {
        let creds = match CredentialSource::from_env() {
            Some(c) => c,
            None => {
                let base = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                    .unwrap_or_else(|_| "http://169.254.169.254".to_owned());
                let src = CredentialSource::instance_role(&base).map_err(anyhow::Error::msg)?;
                src.credentials().map_err(anyhow::Error::msg).context(
                    "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment and no instance-role credentials",
                )?;
                src
            }
        };
        Self::new(cfg, creds)
    }

    pub fn new(cfg: &AwsConfig, creds: CredentialSource) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !cfg.region.is_empty()
                && cfg
                    .region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "AWS region `{}` is not a region name such as eu-west-1",
            cfg.region
        );
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{SERVICE}.{}.amazonaws.com", cfg.region));
        let endpoint = url::Url::parse(&endpoint)
            .with_context(|| format!("AWS endpoint `{endpoint}` is not a URL"))?;
        let client = http::client(TIMEOUT, true).map_err(anyhow::Error::msg)?;
        Ok(AwsStore {
            region: cfg.region.clone(),
            endpoint,
            client,
            creds,
        })
    }

    /// Send one signed operation. Ok is the success body; Err(Ok(fault)) an AWS error answer.
    fn call(
        &self,
        key: &str,
        op: &str,
        body: &Value,
    ) -> Result<Result<Value, AwsFault>, StoreError> {
        let creds = self.creds.credentials().map_err(|d| self.other(key, d))?;
        let payload = serde_json::to_vec(body).expect("JSON values serialise");
        let headers = vec![
            (
                "content-type".to_owned(),
                "application/x-amz-json-1.1".to_owned(),
            ),
            ("x-amz-target".to_owned(), format!("secretsmanager.{op}")),
        ];
        let what = format!("{op} at {}", self.endpoint);
        // Signed per attempt: a retry after a pause must carry a fresh x-amz-date.
        let reply = http::send(&what, &RETRY, MAX_RESPONSE, || {
            let signed = sigv4::sign(
                &sigv4::Request {
                    method: "POST",
                    url: &self.endpoint,
                    headers: &headers,
                    payload: &payload,
                },
                &creds,
                &self.region,
                SERVICE,
                OffsetDateTime::now_utc(),
            );
            let mut b = self
                .client
                .post(self.endpoint.clone())
                .body(payload.clone());
            for (k, v) in headers.iter().chain(signed.iter()) {
                b = b.header(k, v);
            }
            b
        })
        .map_err(|e| self.other(key, e.to_string()))?;
        if reply.status == 200 {
            let v = serde_json::from_slice(&reply.body)
                .map_err(|e| self.other(key, format!("{op}: answer is not JSON: {e}")))?;
            return Ok(Ok(v));
        }
        Ok(Err(parse_fault(reply.status, &reply.body)))
    }

    fn other(&self, key: &str, detail: String) -> StoreError {
        StoreError::Other {
            store: self.describe(),
            detail: format!("secret `{key}`: {detail}"),
        }
    }

    /// The common mapping of an error answer; callers handle their special cases first.
    fn fault(&self, key: &str, op: &str, f: AwsFault) -> StoreError {
        match f.kind.as_str() {
            "ResourceNotFoundException" => StoreError::NotFound {
                store: self.describe(),
                key: key.to_owned(),
            },
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "ExpiredTokenException"
            | "IncompleteSignature" => StoreError::Denied {
                store: self.describe(),
                key: key.to_owned(),
                detail: format!("{op}: {}: {}", f.kind, f.message),
            },
            _ if f.status == 403 => StoreError::Denied {
                store: self.describe(),
                key: key.to_owned(),
                detail: format!("{op}: HTTP 403 {}: {}", f.kind, f.message),
            },
            _ => self.other(
                key,
                format!("{op}: HTTP {} {}: {}", f.status, f.kind, f.message),
            ),
        }
    }
}

impl SecretStore for AwsStore {
    fn describe(&self) -> String {
        format!("aws secretsmanager {} ({})", self.region, self.endpoint)
    }

    fn get(&self, key: &str) -> Result<Secret, StoreError> {
        check_key(self, key)?;
        match self.call(key, "GetSecretValue", &json!({"SecretId": key}))? {
            Ok(v) => v
                .get("SecretString")
                .and_then(Value::as_str)
                .map(Secret::new)
                .ok_or_else(|| {
                    self.other(
                        key,
                        "GetSecretValue: no SecretString (binary secrets are not supported)"
                            .to_owned(),
                    )
                }),
            Err(f) => Err(self.fault(key, "GetSecretValue", f)),
        }
    }

    fn create(&self, key: &str, value: &Secret) -> Result<CreateOutcome, StoreError> {
        check_key(self, key)?;
        let body = json!({
            "Name": key,
            "SecretString": value.expose(),
            "ClientRequestToken": create_token(key, value).to_string(),
        });
        match self.call(key, "CreateSecret", &body)? {
            Ok(_) => Ok(CreateOutcome::Created),
            Err(f) if f.kind == "ResourceExistsException" => Ok(CreateOutcome::AlreadyExists),
            Err(f) => Err(self.fault(key, "CreateSecret", f)),
        }
    }

    fn update(&self, key: &str, value: &Secret) -> Result<(), StoreError> {
        check_key(self, key)?;
        // A random token: a deterministic one would turn A → B → A into a no-op.
        let body = json!({
            "SecretId": key,
            "SecretString": value.expose(),
            "ClientRequestToken": random_uuid().map_err(|d| self.other(key, d))?.to_string(),
        });
        match self.call(key, "PutSecretValue", &body)? {
            Ok(_) => Ok(()),
            Err(f) => Err(self.fault(key, "PutSecretValue", f)),
        }
    }
}

/// The `ClientRequestToken` of a create: UUIDv5 of `key NUL value`. The same create retried
/// after a lost answer is recognised by Secrets Manager as the same request.
pub fn create_token(key: &str, value: &Secret) -> uuid::Uuid {
    let mut name = Vec::with_capacity(key.len() + 1 + value.expose().len());
    name.extend_from_slice(key.as_bytes());
    name.push(0);
    name.extend_from_slice(value.expose().as_bytes());
    uuid::Uuid::new_v5(&TOKEN_NAMESPACE, &name)
}

fn random_uuid() -> Result<uuid::Uuid, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("reading random bytes: {e}"))?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid())
}

/// `{"__type": "ns#Kind", "message": "…"}` (JSON protocol) or `<Code>Kind</Code>` (moto and
/// the IAM-style XML some auth errors use even on the JSON protocol).
fn parse_fault(status: u16, body: &[u8]) -> AwsFault {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let kind = v
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
            .unwrap_or_default();
        let message = v
            .get("message")
            .or_else(|| v.get("Message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return AwsFault {
            status,
            kind,
            message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&close)? + start;
        Some(text[start..end].to_owned())
    };
    AwsFault {
        status,
        kind: tag("Code").unwrap_or_default(),
        message: tag("Message").unwrap_or_else(|| text.chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_both_shapes() {
        let f = parse_fault(
            400,
            br#"{"__type":"com.amazonaws.secretsmanager#ResourceExistsException","message":"exists"}"#,
        );
        assert_eq!(
            (f.kind.as_str(), f.message.as_str()),
            ("ResourceExistsException", "exists")
        );
        let f = parse_fault(
            403,
            b"<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error></ErrorResponse>",
        );
        assert_eq!(f.kind, "InvalidClientTokenId");
        assert!(f.message.starts_with("The security token"));
    }

    #[test]
    fn create_token_is_deterministic_and_value_bound() {
        let a = create_token("k", &Secret::new("v1"));
        assert_eq!(a, create_token("k", &Secret::new("v1")));
        assert_ne!(a, create_token("k", &Secret::new("v2")));
        assert_ne!(a, create_token("k2", &Secret::new("v1")));
        assert_eq!(a.get_version_num(), 5);
    }
}

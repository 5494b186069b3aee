//! Test double standing in for the EC2 instance metadata service, IMDSv2 (169.254.169.254),
//! which exists only on EC2 instances. Reproduces the documented behaviour of reference §3.1
//! and §6.3 (rules of aws/amazon-ec2-metadata-mock's token generator/validator):
//! - a session token only from `PUT /latest/api/token`; the TTL header
//!   `X-aws-ec2-metadata-token-ttl-seconds` missing, not a number or outside 1–21600 → 400;
//!   `GET /latest/api/token` → 405; a PUT carrying `X-Forwarded-For` → 403;
//! - every other request needs `X-aws-ec2-metadata-token`; missing, unknown or expired → 401
//!   (expiry is honoured; [`FakeImds::expire_tokens`] makes every issued token expire now);
//! - `GET /latest/user-data` → 200 with the raw bytes, or 404 when the instance has none;
//! - `GET /latest/meta-data/iam/security-credentials/[<role>]` → the role name / its JSON
//!   credentials (`Code`, `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`), 404 without
//!   an instance profile;
//! - "disabled" mode (IMDS turned off for the instance): 403 on the token PUT.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    empty, endless_body, fake_token, header, json, text, FakeRequest, FakeServer, ResponseBox,
};

const MAX_TTL: u64 = 21600;

#[derive(Debug, Default)]
struct State {
    user_data: Option<Vec<u8>>,
    /// Serve this many bytes of user-data, streamed without a length.
    streamed_user_data: Option<usize>,
    tokens: HashMap<String, Instant>,
    disabled: bool,
    role: Option<(String, serde_json::Value)>,
    token_puts: usize,
    unauthorized: usize,
}

/// A fake IMDSv2 on 127.0.0.1.
#[derive(Debug)]
pub struct FakeImds {
    server: FakeServer,
    state: Arc<Mutex<State>>,
    served: Arc<AtomicU64>,
}

impl FakeImds {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let served = Arc::new(AtomicU64::new(0));
        let (s, c) = (Arc::clone(&state), Arc::clone(&served));
        let server = FakeServer::start(move |req| handle(&s, &c, req));
        FakeImds {
            server,
            state,
            served,
        }
    }

    /// Base URL to use instead of `http://169.254.169.254`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set_user_data(&self, data: Option<&[u8]>) {
        self.with(|s| s.user_data = data.map(<[u8]>::to_vec));
    }

    /// Serve `len` bytes of user-data as a chunked stream (no Content-Length).
    pub fn set_streamed_user_data(&self, len: usize) {
        self.with(|s| s.streamed_user_data = Some(len));
    }

    /// Bytes of the streamed user-data the server has written so far.
    pub fn streamed_bytes(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.with(|s| s.disabled = disabled);
    }

    /// Attach an instance profile: role `name` with these credentials.
    pub fn set_role(
        &self,
        name: &str,
        access_key_id: &str,
        secret_access_key: &str,
        token: &str,
        expiration: &str,
    ) {
        let creds = serde_json::json!({
            "Code": "Success",
            "LastUpdated": "2026-01-01T00:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": access_key_id,
            "SecretAccessKey": secret_access_key,
            "Token": token,
            "Expiration": expiration,
        });
        self.with(|s| s.role = Some((name.to_owned(), creds)));
    }

    /// Make every token issued so far expire now (as if its TTL had passed).
    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.values_mut().for_each(|e| *e = Instant::now()));
    }

    /// How many token PUTs were answered 200.
    pub fn token_puts(&self) -> usize {
        self.with(|s| s.token_puts)
    }

    /// How many requests were refused with 401.
    pub fn unauthorized(&self) -> usize {
        self.with(|s| s.unauthorized)
    }
}

fn handle(state: &Mutex<State>, served: &Arc<AtomicU64>, req: &FakeRequest) -> ResponseBox {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let path = req.path();
    if path == "/latest/api/token" {
        if req.method != "PUT" {
            return empty(405);
        }
        if s.disabled || req.header("x-forwarded-for").is_some() {
            return text(403, "Forbidden");
        }
        let ttl = req
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=MAX_TTL).contains(t)) else {
            return text(400, "Bad Request");
        };
        let token = fake_token("AQAEA");
        s.tokens
            .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
        s.token_puts += 1;
        return tiny_http::Response::from_data(token.into_bytes())
            .with_status_code(200)
            .with_header(header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                &ttl.to_string(),
            ))
            .boxed();
    }
    let valid = req
        .header("x-aws-ec2-metadata-token")
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|exp| Instant::now() < *exp);
    if !valid {
        s.unauthorized += 1;
        return text(401, "Unauthorized");
    }
    if req.method != "GET" {
        return empty(405);
    }
    const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
    match path {
        "/latest/user-data" => {
            if let Some(len) = s.streamed_user_data {
                return endless_body(len, b'#', Arc::clone(served));
            }
            match &s.user_data {
                Some(d) => super::respond(200, "application/octet-stream", d.clone()),
                None => text(404, "Not Found"),
            }
        }
        CREDS => match &s.role {
            Some((name, _)) => text(200, name.clone()),
            None => text(404, "Not Found"),
        },
        p if p.starts_with(CREDS) => match &s.role {
            Some((name, creds)) if p[CREDS.len()..] == *name => json(200, creds),
            _ => text(404, "Not Found"),
        },
        _ => text(404, "Not Found"),
    }
}

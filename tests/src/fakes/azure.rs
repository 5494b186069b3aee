//! Test double standing in for Azure IMDS (169.254.169.254/metadata), which exists only on
//! Azure VMs. Reproduces reference §3.5 and §6.3:
//! - every request must carry `Metadata: true`, else 400 with Azure's JSON error; a request
//!   with `X-Forwarded-For` → 400;
//! - `GET /metadata/instance/compute/userData?api-version=2021-01-01&format=text` → the
//!   base64 user-data as text, empty when none was set;
//! - `GET /metadata/instance?api-version=2021-08-01` (and the `2019-06-01` fallback
//!   cloud-init uses) → instance JSON with `compute.userData` (base64);
//! - an unknown or missing `api-version` → 400.

use std::sync::{Arc, Mutex};

use base64::Engine;

use super::{json, FakeRequest, FakeServer, ResponseBox};

const VERSIONS: &[&str] = &["2019-06-01", "2021-01-01", "2021-08-01"];

/// A fake Azure IMDS on 127.0.0.1.
#[derive(Debug)]
pub struct FakeAzure {
    server: FakeServer,
    /// The `userData` text exactly as served (base64, or anything for malformed tests).
    user_data: Arc<Mutex<String>>,
}

impl FakeAzure {
    pub fn start() -> Self {
        let user_data = Arc::new(Mutex::new(String::new()));
        let u = Arc::clone(&user_data);
        let server =
            FakeServer::start(move |req| handle(&u.lock().unwrap_or_else(|p| p.into_inner()), req));
        FakeAzure { server, user_data }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Set the user-data (stored base64-encoded, as Azure does); `None` clears it.
    pub fn set_user_data(&self, data: Option<&[u8]>) {
        let encoded = data
            .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
            .unwrap_or_default();
        *self.user_data.lock().unwrap_or_else(|p| p.into_inner()) = encoded;
    }

    /// Serve this text as `userData` verbatim (to test malformed base64).
    pub fn set_raw_user_data(&self, raw: &str) {
        *self.user_data.lock().unwrap_or_else(|p| p.into_inner()) = raw.to_owned();
    }
}

fn handle(user_data: &str, req: &FakeRequest) -> ResponseBox {
    if req.header("metadata") != Some("true") {
        return json(
            400,
            &serde_json::json!({"error": "Bad request. Required metadata header not specified"}),
        );
    }
    if req.header("x-forwarded-for").is_some() {
        return json(
            400,
            &serde_json::json!({"error": "Bad request. Request contains X-Forwarded-For header"}),
        );
    }
    if !req
        .query("api-version")
        .is_some_and(|v| VERSIONS.contains(&v))
    {
        return json(
            400,
            &serde_json::json!({
                "error": "Bad request. api-version is invalid or was not specified in the request.",
                "newest-versions": VERSIONS.iter().rev().collect::<Vec<_>>(),
            }),
        );
    }
    match req.path() {
        "/metadata/instance/compute/userData" if req.query("format") == Some("text") => {
            super::respond(200, "text/plain; charset=utf-8", user_data.to_owned())
        }
        "/metadata/instance" => json(
            200,
            &serde_json::json!({
                "compute": {
                    "azEnvironment": "AzurePublicCloud",
                    "location": "westeurope",
                    "name": "node-0",
                    "osType": "Linux",
                    "userData": user_data,
                    "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                },
                "network": {"interface": []},
            }),
        ),
        _ => json(404, &serde_json::json!({"error": "Not found"})),
    }
}

//! Test double standing in for the GCE metadata server (metadata.google.internal), which
//! exists only on Compute Engine VMs. Reproduces reference §3.4 and §6.3:
//! - every request must carry `Metadata-Flavor: Google`, else 403; a request with
//!   `X-Forwarded-For` → 403;
//! - answers carry the `Metadata-Flavor: Google` response header;
//! - `GET /computeMetadata/v1/instance/attributes/<name>` → the attribute's value, 404 when the
//!   attribute is not set (so `user-data` absent → 404; `user-data-encoding: base64` is just
//!   another attribute);
//! - `GET /computeMetadata/v1/instance/attributes/?recursive=true` → all attributes as JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{header, FakeRequest, FakeServer, ResponseBox};

const ATTRS: &str = "/computeMetadata/v1/instance/attributes/";

/// A fake GCE metadata server on 127.0.0.1.
#[derive(Debug)]
pub struct FakeGce {
    server: FakeServer,
    attrs: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeGce {
    pub fn start() -> Self {
        let attrs = Arc::new(Mutex::new(BTreeMap::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (Arc::clone(&attrs), Arc::clone(&requests));
        let server = FakeServer::start(move |req| {
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(req.url.clone());
            handle(&a.lock().unwrap_or_else(|p| p.into_inner()), req)
        });
        FakeGce {
            server,
            attrs,
            requests,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Set (`Some`) or remove (`None`) instance attribute `name`.
    pub fn set_attribute(&self, name: &str, value: Option<&[u8]>) {
        let mut a = self.attrs.lock().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => a.insert(name.to_owned(), v.to_vec()),
            None => a.remove(name),
        };
    }

    /// Paths (with query) requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> ResponseBox {
    tiny_http::Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Metadata-Flavor", "Google"))
        .boxed()
}

fn handle(attrs: &BTreeMap<String, Vec<u8>>, req: &FakeRequest) -> ResponseBox {
    if req.header("metadata-flavor") != Some("Google") || req.header("x-forwarded-for").is_some() {
        return reply(
            403,
            "text/html",
            b"Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header."
                .to_vec(),
        );
    }
    if req.method != "GET" {
        return reply(405, "text/html", Vec::new());
    }
    let Some(name) = req.path().strip_prefix(ATTRS) else {
        return reply(404, "text/html", b"Not Found".to_vec());
    };
    if name.is_empty() {
        if req.query("recursive") == Some("true") {
            let map: serde_json::Map<String, serde_json::Value> = attrs
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
                .collect();
            return reply(
                200,
                "application/json",
                serde_json::Value::Object(map).to_string().into_bytes(),
            );
        }
        let listing: String = attrs.keys().map(|k| format!("{k}\n")).collect();
        return reply(200, "application/text", listing.into_bytes());
    }
    match attrs.get(name) {
        Some(v) => reply(200, "application/text", v.clone()),
        None => reply(404, "text/html", b"Not Found".to_vec()),
    }
}

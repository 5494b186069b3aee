//! Cloud metadata services (reference §3.1, §3.4, §3.5) and the DMI check that says which
//! one to ask. All base URLs are injectable; requests never go through a proxy.

use std::path::Path;
use std::sync::Mutex;

use nodeimg_common::Secret;
use reqwest::blocking::Client;

use super::decode::{decode_declared_base64, MAX_RAW_USER_DATA};
use super::http::{self, HttpError, Reply};
use super::{Net, Source, SourceError};

/// A platform recognised from DMI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Ec2,
    Gce,
    Azure,
}

/// The SMBIOS chassis asset tag every Azure VM carries (cloud-init, Microsoft docs).
pub const AZURE_CHASSIS_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Recognise the platform from `<root>/sys/class/dmi/id/`. Checks, in order:
/// EC2 — `sys_vendor` or `bios_vendor` is `Amazon EC2` (Nitro), or `product_uuid` starts with
/// `ec2` (Xen instances); GCE — `product_name` is `Google Compute Engine` or `sys_vendor` is
/// `Google`; Azure — `sys_vendor` is `Microsoft Corporation` **and** the chassis asset tag is
/// Azure's (Hyper-V on premises has the same vendor).
pub fn detect_platform(root: &Path) -> Option<Platform> {
    let dmi = |f: &str| {
        std::fs::read_to_string(root.join("sys/class/dmi/id").join(f))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let (sys_vendor, bios_vendor, product_name) =
        (dmi("sys_vendor"), dmi("bios_vendor"), dmi("product_name"));
    if sys_vendor == "Amazon EC2"
        || bios_vendor == "Amazon EC2"
        || dmi("product_uuid").to_ascii_lowercase().starts_with("ec2")
    {
        return Some(Platform::Ec2);
    }
    if product_name == "Google Compute Engine" || sys_vendor == "Google" {
        return Some(Platform::Gce);
    }
    if sys_vendor == "Microsoft Corporation" && dmi("chassis_asset_tag") == AZURE_CHASSIS_ASSET_TAG
    {
        return Some(Platform::Azure);
    }
    None
}

const EC2: &str = "ec2";
const TOKEN_TTL_SECONDS: &str = "21600";

/// An IMDSv2 session: a token from `PUT /latest/api/token`, cached and renewed when IMDS
/// answers 401. Shared by the EC2 user-data source and the AWS instance-role credentials.
#[derive(Debug)]
pub struct ImdsClient {
    base: String,
    net: Net,
    client: Client,
    /// Debug prints `<redacted>`: the session token grants metadata access.
    token: Mutex<Option<Secret>>,
}

/// What a GET against IMDS gave.
#[derive(Debug)]
pub enum ImdsAnswer {
    Found(Vec<u8>),
    NotFound,
}

impl ImdsClient {
    pub fn new(base: &str, net: Net) -> Result<Self, String> {
        Ok(ImdsClient {
            base: base.trim_end_matches('/').to_owned(),
            client: http::client(net.timeout, false)?,
            net,
            token: Mutex::new(None),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn fresh_token(&self) -> Result<Secret, String> {
        let url = format!("{}/latest/api/token", self.base);
        let reply = http::send(&url, &self.net.retry, 4096, || {
            self.client
                .put(&url)
                .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
        })
        .map_err(|e| e.to_string())?;
        match reply.status {
            200 => {
                let token = reply.body_text().trim().to_owned();
                if token.is_empty() {
                    return Err(format!("{url}: empty token"));
                }
                Ok(Secret::new(token))
            }
            // IMDS disabled (or IMDSv2 tokens refused): retrying cannot help.
            403 => Err(format!(
                "{url}: HTTP 403, the instance metadata service is disabled for this instance"
            )),
            s => Err(format!("{url}: HTTP {s}")),
        }
    }

    /// GET `path` (starting with `/`) with the session token; a 401 drops the token and
    /// retries once with a new one.
    pub fn get(&self, path: &str, limit: usize) -> Result<ImdsAnswer, String> {
        let url = format!("{}{path}", self.base);
        for renewed in [false, true] {
            let token = {
                let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
                match cached.as_ref() {
                    Some(t) => t.clone(),
                    None => {
                        let t = self.fresh_token()?;
                        *cached = Some(t.clone());
                        t
                    }
                }
            };
            let reply = http::send(&url, &self.net.retry, limit, || {
                self.client
                    .get(&url)
                    .header("X-aws-ec2-metadata-token", token.expose())
            })
            .map_err(|e| match e {
                HttpError::TooLarge { .. } => format!("{url}: {e}"),
                HttpError::Transport(m) => m,
            })?;
            match reply.status {
                200 => return Ok(ImdsAnswer::Found(reply.body)),
                404 => return Ok(ImdsAnswer::NotFound),
                401 if !renewed => {
                    tracing::debug!("IMDS token rejected (expired?); requesting a new one");
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                s => return Err(format!("{url}: HTTP {s}")),
            }
        }
        Err(format!("{url}: HTTP 401 even with a freshly issued token"))
    }
}

/// EC2 user-data: `GET /latest/user-data` over IMDSv2; 404 means the instance has none.
#[derive(Debug)]
pub struct Ec2 {
    imds: ImdsClient,
}

impl Ec2 {
    pub(crate) fn new(base: &str, net: Net) -> Result<Self, SourceError> {
        Ok(Ec2 {
            imds: ImdsClient::new(base, net).map_err(|d| failed(EC2, d))?,
        })
    }
}

impl Source for Ec2 {
    fn name(&self) -> &'static str {
        EC2
    }

    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        match self
            .imds
            .get("/latest/user-data", MAX_RAW_USER_DATA)
            .map_err(|d| failed(EC2, d))?
        {
            ImdsAnswer::Found(b) => Ok(b),
            ImdsAnswer::NotFound => Err(SourceError::Absent {
                source_name: EC2,
                detail: format!("{}/latest/user-data: HTTP 404", self.imds.base),
            }),
        }
    }
}

const GCE: &str = "gce";
const GCE_ATTRS: &str = "/computeMetadata/v1/instance/attributes";

/// GCE user-data: the `user-data` instance attribute (`Metadata-Flavor: Google`), decoded
/// from base64 when the `user-data-encoding` attribute says `base64` (as cloud-init does).
#[derive(Debug)]
pub struct Gce {
    base: String,
    net: Net,
    client: Client,
}

impl Gce {
    pub(crate) fn new(base: &str, net: Net) -> Result<Self, SourceError> {
        Ok(Gce {
            base: base.trim_end_matches('/').to_owned(),
            client: http::client(net.timeout, false).map_err(|d| failed(GCE, d))?,
            net,
        })
    }

    fn attribute(&self, name: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let url = format!("{}{GCE_ATTRS}/{name}", self.base);
        let reply = get_with_header(
            &self.client,
            &url,
            &self.net,
            ("Metadata-Flavor", "Google"),
            GCE,
        )?;
        match reply.status {
            200 => Ok(Some(reply.body)),
            404 => Ok(None),
            s => Err(failed(GCE, format!("{url}: HTTP {s}"))),
        }
    }
}

impl Source for Gce {
    fn name(&self) -> &'static str {
        GCE
    }

    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        let data = self
            .attribute("user-data")?
            .ok_or_else(|| SourceError::Absent {
                source_name: GCE,
                detail: format!("{}{GCE_ATTRS}/user-data: HTTP 404", self.base),
            })?;
        let encoding = self.attribute("user-data-encoding")?;
        match encoding
            .as_deref()
            .map(|e| String::from_utf8_lossy(e).trim().to_owned())
        {
            None => Ok(data),
            Some(e) if e == "base64" => decode_declared_base64(&data)
                .map_err(|e| failed(GCE, format!("user-data-encoding is base64, but {e}"))),
            Some(other) => Err(failed(
                GCE,
                format!("unsupported user-data-encoding `{other}` (only base64 is known)"),
            )),
        }
    }
}

const AZURE: &str = "azure";
const AZURE_USER_DATA: &str =
    "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";

/// Azure user-data: IMDS `compute/userData` as text (`Metadata: true`), always base64;
/// empty means none was set.
#[derive(Debug)]
pub struct Azure {
    base: String,
    net: Net,
    client: Client,
}

impl Azure {
    pub(crate) fn new(base: &str, net: Net) -> Result<Self, SourceError> {
        Ok(Azure {
            base: base.trim_end_matches('/').to_owned(),
            client: http::client(net.timeout, false).map_err(|d| failed(AZURE, d))?,
            net,
        })
    }
}

impl Source for Azure {
    fn name(&self) -> &'static str {
        AZURE
    }

    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        let url = format!("{}{AZURE_USER_DATA}", self.base);
        let reply = get_with_header(&self.client, &url, &self.net, ("Metadata", "true"), AZURE)?;
        match reply.status {
            200 => {}
            404 => {
                return Err(SourceError::Absent {
                    source_name: AZURE,
                    detail: format!("{url}: HTTP 404"),
                })
            }
            s => return Err(failed(AZURE, format!("{url}: HTTP {s}: {}", short(&reply)))),
        }
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            return Err(SourceError::Absent {
                source_name: AZURE,
                detail: "userData is empty".to_owned(),
            });
        }
        decode_declared_base64(&reply.body)
            .map_err(|e| failed(AZURE, format!("userData must be base64, but {e}")))
    }
}

fn get_with_header(
    client: &Client,
    url: &str,
    net: &Net,
    header: (&str, &str),
    source_name: &'static str,
) -> Result<Reply, SourceError> {
    http::send(url, &net.retry, MAX_RAW_USER_DATA, || {
        client.get(url).header(header.0, header.1)
    })
    .map_err(|e| match e {
        HttpError::TooLarge { .. } => failed(source_name, format!("{url}: {e}")),
        HttpError::Transport(m) => failed(source_name, m),
    })
}

/// The start of an error body, for messages (metadata services answer errors in JSON/text).
fn short(reply: &Reply) -> String {
    reply.body_text().chars().take(200).collect()
}

fn failed(source_name: &'static str, detail: String) -> SourceError {
    SourceError::Failed {
        source_name,
        detail,
    }
}

//! TEST DOUBLE standing in for `kube-apiserver`, the control plane a `kubeadm init` node runs
//! as a static pod (no registry reachable here ships it, and it would need etcd). The kubelet
//! double starts it from `/etc/kubernetes/manifests/kube-apiserver.yaml`, as the real kubelet
//! runs static pods, with the flags kubeadm put there.
//!
//! What it reproduces (what nodeboot's health gate and the kubelet double use):
//! - HTTPS on `--bind-address` (default `0.0.0.0`) : `--secure-port` (default 6443) with
//!   `--tls-cert-file`/`--tls-private-key-file`; client certificates are verified against
//!   `--client-ca-file` and name the user (CN) and groups (O), as the x509 authenticator does;
//!   without a certificate the request is anonymous;
//! - `GET /api/v1/nodes/{name}`, `POST /api/v1/nodes` (kubelet registration),
//!   `PATCH /api/v1/nodes/{name}/status` (strategic merge patch, as the kubelet posts its
//!   NodeStatus), `GET /healthz|/livez|/readyz`; authorization as the Node authorizer (with
//!   `AuthorizeNodeWithSelectors`, default since 1.32) and NodeRestriction do it: a node reads
//!   and writes only its own Node, `system:masters`/`kubeadm:cluster-admins` everything,
//!   anyone else gets 403; failures are `Status` objects (see [`nodes`]).
//!
//! Where it differs, and why: a client certificate that does not chain to the client CA ends
//! the TLS handshake (rustls' verifier) where the real server answers 401; Node objects live
//! in memory (no etcd), so after a restart a node is unknown (404) until its kubelet registers
//! again, where the real one keeps the object and its last status (until the node lifecycle
//! controller, which is not reproduced, marks it Unknown). Every other flag is accepted and
//! ignored. Prints `apiserver-double: serving https://ADDR` on stdout once listening (port 0
//! = any, for tests) and one line per request on stderr.

pub mod nodes;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use nodes::{Nodes, Reply, User};

/// What the stand-in takes from kube-apiserver's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub bind_address: String,
    pub secure_port: u16,
    pub client_ca_file: PathBuf,
    pub tls_cert_file: PathBuf,
    pub tls_private_key_file: PathBuf,
}

impl Flags {
    /// `--name=value` or `--name value`, as kube-apiserver (pflag) takes them; the three files
    /// are required (kube-apiserver would generate a self-signed serving certificate without
    /// them; kubeadm always passes them).
    pub fn parse(args: &[String]) -> Result<Flags> {
        let mut values = std::collections::BTreeMap::new();
        let mut i = 0;
        while i < args.len() {
            let Some(body) = args[i].strip_prefix("--") else {
                bail!("unexpected argument `{}`", args[i]);
            };
            match body.split_once('=') {
                Some((k, v)) => {
                    values.insert(k.to_owned(), v.to_owned());
                }
                None => {
                    let next = args.get(i + 1).filter(|n| !n.starts_with("--"));
                    values.insert(body.to_owned(), next.cloned().unwrap_or_default());
                    if next.is_some() {
                        i += 1;
                    }
                }
            }
            i += 1;
        }
        let file = |name: &str| {
            values
                .get(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .with_context(|| format!("--{name} is required by the stand-in"))
        };
        let port = values.get("secure-port").map_or("6443", String::as_str);
        Ok(Flags {
            bind_address: values
                .get("bind-address")
                .cloned()
                .unwrap_or_else(|| "0.0.0.0".to_owned()),
            secure_port: port
                .parse()
                .with_context(|| format!("--secure-port: `{port}` is not a port"))?,
            client_ca_file: file("client-ca-file")?,
            tls_cert_file: file("tls-cert-file")?,
            tls_private_key_file: file("tls-private-key-file")?,
        })
    }

    fn listen(&self) -> String {
        if self.bind_address.contains(':') {
            format!("[{}]:{}", self.bind_address, self.secure_port)
        } else {
            format!("{}:{}", self.bind_address, self.secure_port)
        }
    }
}

/// The TLS configuration: serving certificate, and client certificates verified against the
/// client CA but not required (anonymous requests are authorized as such).
pub fn tls_config(flags: &Flags) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = CertificateDer::pem_file_iter(&flags.tls_cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", flags.tls_cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&flags.tls_private_key_file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", flags.tls_private_key_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&flags.client_ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", flags.client_ca_file.display()))?;
    for ca in cas {
        roots
            .add(ca)
            .with_context(|| format!("{}: not a CA certificate", flags.client_ca_file.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("building the client certificate verifier")?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the serving certificate and key")?;
    Ok(Arc::new(cfg))
}

/// The user a verified client certificate names: CN, and O as groups.
pub fn user_of(cert: &[u8]) -> Result<User> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert)
        .map_err(|e| anyhow::anyhow!("invalid client certificate: {e}"))?;
    let mut name = None;
    let mut groups = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        let text = rdn.to_string();
        if let Some(cn) = text.strip_prefix("CN=") {
            name = Some(cn.to_owned());
        } else if let Some(o) = text.strip_prefix("O=") {
            groups.push(o.to_owned());
        }
    }
    let name = name.context("the client certificate has no CN")?;
    groups.push("system:authenticated".to_owned());
    Ok(User { name, groups })
}

/// Entry point of the `apiserver-double` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apiserver-double: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args)?;
    let tls = tls_config(&flags)?;
    let listener = TcpListener::bind(flags.listen())
        .with_context(|| format!("listening on {}", flags.listen()))?;
    let addr = listener.local_addr().context("the bound address")?;
    // Ignore a closed stdout: a test may stop reading after this line.
    let _ = writeln!(
        std::io::stdout(),
        "apiserver-double: serving https://{addr}"
    );
    let _ = std::io::stdout().flush();
    let nodes = Arc::new(Nodes::default());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (tls, nodes) = (Arc::clone(&tls), Arc::clone(&nodes));
        std::thread::spawn(move || {
            let peer = conn
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            if let Err(e) = serve(conn, tls, &nodes) {
                eprintln!("apiserver-double: {peer}: {e:#}");
            }
        });
    }
    Ok(())
}

const MAX_BODY: usize = 1 << 20;

/// One request per connection (answered with `Connection: close`).
fn serve(tcp: TcpStream, tls: Arc<rustls::ServerConfig>, nodes: &Nodes) -> Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .context("setting a read timeout")?;
    let conn = rustls::ServerConnection::new(tls).context("a TLS session")?;
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut request_line = String::new();
    // The handshake happens here; a rejected client certificate fails it.
    reader
        .read_line(&mut request_line)
        .context("TLS handshake or request line")?;
    let mut content_length = 0usize;
    let mut content_type = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).context("request headers")? == 0
            || header.trim().is_empty()
        {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.parse().context("Content-Length")?,
                "content-type" => content_type = v.to_owned(),
                _ => {}
            }
        }
    }
    if content_length > MAX_BODY {
        bail!("request body of {content_length} bytes is too large");
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).context("request body")?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let stream = reader.get_mut();
    let user = match stream.conn.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => user_of(cert)?,
        None => User::anonymous(),
    };
    let reply = nodes.handle(
        method,
        path,
        &content_type,
        &user,
        &body,
        OffsetDateTime::now_utc(),
    );
    eprintln!(
        "apiserver-double: {} {method} {path} -> {}",
        user.name,
        reply.code()
    );
    let (code, ctype, text) = match reply {
        Reply::Json(c, v) => (c, "application/json", v.to_string()),
        Reply::Text(c, t) => (c, "text/plain; charset=utf-8", t),
    };
    write!(
        stream,
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        reason_phrase(code),
        text.len()
    )
    .context("writing the answer")?;
    stream.conn.send_close_notify();
    stream.flush().context("writing the answer")
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_as_kubeadm_writes_them() {
        let f = Flags::parse(&args(&[
            "--advertise-address=10.0.2.15",
            "--allow-privileged=true",
            "--client-ca-file=/etc/kubernetes/pki/ca.crt",
            "--secure-port=6443",
            "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
            "--tls-private-key-file",
            "/etc/kubernetes/pki/apiserver.key",
            "--enable-bootstrap-token-auth",
        ]))
        .unwrap();
        assert_eq!(f.listen(), "0.0.0.0:6443");
        assert_eq!(
            f.tls_private_key_file,
            Path::new("/etc/kubernetes/pki/apiserver.key")
        );
        let f = Flags::parse(&args(&[
            "--bind-address=::1",
            "--secure-port=0",
            "--client-ca-file=a",
            "--tls-cert-file=b",
            "--tls-private-key-file=c",
        ]))
        .unwrap();
        assert_eq!(f.listen(), "[::1]:0");
        let e =
            Flags::parse(&args(&["--tls-cert-file=b", "--tls-private-key-file=c"])).unwrap_err();
        assert!(e.to_string().contains("--client-ca-file"), "{e}");
        assert!(Flags::parse(&args(&[
            "--secure-port=x",
            "--client-ca-file=a",
            "--tls-cert-file=b",
            "--tls-private-key-file=c"
        ]))
        .is_err());
    }
}

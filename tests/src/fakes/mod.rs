//! In-process fakes of network services that cannot run on a build machine (reference §6.2,
//! §6.3): Vault KV v2 + AppRole ([`vault`]), EC2 IMDSv2 ([`imds`]), the GCE metadata server
//! ([`gce`]) and Azure IMDS ([`azure`]). Each listens on 127.0.0.1 on a random port, is
//! started by the test and stops when dropped. [`BlackHole`] accepts connections and never
//! answers, for timeout tests.

pub mod azure;
pub mod gce;
pub mod imds;
pub mod vault;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use tiny_http::ResponseBox;

/// A request as the fakes see it: header names lower-cased, body read in full.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    /// Path and query, as sent (`/latest/user-data`, `/metadata/instance?api-version=…`).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }

    /// The value of query parameter `name`, if present.
    pub fn query(&self, name: &str) -> Option<&str> {
        let q = self.url.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

type Handler = dyn Fn(&FakeRequest) -> ResponseBox + Send + Sync;

/// An HTTP server on 127.0.0.1:<random> running `handler` for every request, each on its own
/// thread (so one slow answer does not hold up the others).
pub struct FakeServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeServer {
    pub fn start(handler: impl Fn(&FakeRequest) -> ResponseBox + Send + Sync + 'static) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding 127.0.0.1:0"));
        let addr = server
            .server_addr()
            .to_ip()
            .expect("a TCP listener has an IP address");
        let handler: Arc<Handler> = Arc::new(handler);
        let srv = Arc::clone(&server);
        let accept = std::thread::spawn(move || {
            while let Ok(mut req) = srv.recv() {
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || {
                    let mut body = Vec::new();
                    let _ = req.as_reader().read_to_end(&mut body);
                    let fake = FakeRequest {
                        method: req.method().as_str().to_owned(),
                        url: req.url().to_owned(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_ascii_lowercase(),
                                    h.value.as_str().to_owned(),
                                )
                            })
                            .collect(),
                        body,
                    };
                    let resp = handler(&fake);
                    // The client may have gone away (timeouts, size limits): not our problem.
                    let _ = req.respond(resp);
                });
            }
        });
        FakeServer {
            addr,
            server,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A response with a body and a status.
pub fn respond(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> ResponseBox {
    tiny_http::Response::from_data(body.into())
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .boxed()
}

pub fn json(status: u16, v: &serde_json::Value) -> ResponseBox {
    respond(status, "application/json", v.to_string())
}

pub fn text(status: u16, body: impl Into<Vec<u8>>) -> ResponseBox {
    respond(status, "text/plain", body)
}

pub fn empty(status: u16) -> ResponseBox {
    tiny_http::Response::empty(status).boxed()
}

pub fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// A body of `len` bytes of `fill` streamed without Content-Length (chunked), counting in
/// `served` how many bytes the server actually handed to the socket: proves a client stopped
/// reading early instead of buffering everything.
pub fn endless_body(len: usize, fill: u8, served: Arc<AtomicU64>) -> ResponseBox {
    struct Counting {
        left: usize,
        fill: u8,
        served: Arc<AtomicU64>,
    }
    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.left).min(16 * 1024);
            buf[..n].fill(self.fill);
            self.left -= n;
            self.served.fetch_add(n as u64, Ordering::SeqCst);
            Ok(n)
        }
    }
    tiny_http::Response::new(
        tiny_http::StatusCode(200),
        vec![header("Content-Type", "application/octet-stream")],
        Counting {
            left: len,
            fill,
            served,
        },
        None,
        None,
    )
    .boxed()
}

/// A unique, unguessable-enough token for fakes (not for production use).
pub fn fake_token(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    use sha2::Digest;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("{}-{nanos}-{n}", std::process::id()));
    format!("{prefix}{}", &hex::encode(digest)[..32])
}

/// A TCP listener that accepts connections and never answers: requests to it can only time
/// out. Connections are held open until the value is dropped.
pub struct BlackHole {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BlackHole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlackHole")
            .field("addr", &self.addr)
            .finish()
    }
}

impl BlackHole {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (stop2, held2) = (Arc::clone(&stop), Arc::clone(&held));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held2.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        BlackHole {
            addr,
            stop,
            held,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections were accepted (and left unanswered).
    pub fn connections(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

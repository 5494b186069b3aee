//! The PXE e2e test's HTTP server on 127.0.0.1: serves the build's output directory (iPXE
//! loads `pxe/vmlinuz` and `pxe/installer.img` from it, the installer streams the raw image)
//! and the node config, streamed from disk (a raw image is GiBs), one request per connection.
//! It logs every request with its User-Agent (which client asked: iPXE or the installer) and
//! can break one file on purpose: answer 404, or flip one byte of it in flight so the
//! download completes with a wrong sha256.
//!
//! Not `support::StaticServer`: that one reads a whole file into memory per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub user_agent: String,
    pub status: u16,
    /// Body bytes written to the client (all of them, unless it went away).
    pub sent: u64,
}

/// What to break in the next answers for `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    NotFound {
        path: String,
    },
    /// XOR the byte at `offset` of `path`'s body with 0xff.
    FlipByte {
        path: String,
        offset: u64,
    },
}

#[derive(Debug)]
pub struct PxeHttp {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
}

/// URL path prefix -> a directory (the rest of the path is looked up under it) or a file
/// (the path must be exactly the prefix). The longest matching prefix wins.
pub type Routes = Vec<(String, PathBuf)>;

impl PxeHttp {
    pub fn start(routes: Routes) -> PxeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let fault = Arc::new(Mutex::new(Fault::None));
        let stop = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(routes);
        let (l, f, st) = (Arc::clone(&log), Arc::clone(&fault), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (routes, l, f) = (Arc::clone(&routes), Arc::clone(&l), Arc::clone(&f));
                std::thread::spawn(move || {
                    let fault = f.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some((req, conn)) = serve_one(conn, &routes, &fault) {
                        // Logged before the connection closes: a client that has read the
                        // whole answer finds its request in the log.
                        l.lock().unwrap_or_else(|p| p.into_inner()).push(req);
                        drop(conn);
                    }
                });
            }
        });
        PxeHttp {
            addr,
            log,
            fault,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Every request so far, in the order their answers ended.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for PxeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answer one request; returns it with the still open connection.
fn serve_one(conn: TcpStream, routes: &Routes, fault: &Fault) -> Option<(Request, TcpStream)> {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut user_agent = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("user-agent") {
                user_agent = value.trim().to_owned();
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = path.split('?').next().unwrap_or("/").to_owned();
    let file = match (method, fault) {
        (_, Fault::NotFound { path: p }) if *p == path => None,
        ("GET" | "HEAD", _) => file_for(routes, &path),
        _ => None,
    };
    let mut out = conn;
    let (status, sent) = match file.and_then(|p| std::fs::File::open(p).ok()) {
        Some(f) => {
            let flip = match fault {
                Fault::FlipByte { path: p, offset } if *p == path => Some(*offset),
                _ => None,
            };
            let sent = send_file(&mut out, f, method == "HEAD", flip);
            (200, sent)
        }
        None => {
            let (status, reason) = if method == "GET" || method == "HEAD" {
                (404, "Not Found")
            } else {
                (405, "Method Not Allowed")
            };
            let _ = write!(
                out,
                "HTTP/1.0 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            (status, 0)
        }
    };
    let _ = out.flush();
    Some((
        Request {
            path,
            user_agent,
            status,
            sent,
        },
        out,
    ))
}

/// Answer 200 with the file, streamed; returns the body bytes written.
fn send_file(out: &mut TcpStream, mut f: std::fs::File, head: bool, flip: Option<u64>) -> u64 {
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return 0;
    };
    if write!(
        out,
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
        || head
    {
        return 0;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => return at,
            Ok(n) => n,
        };
        if let Some(off) = flip.filter(|o| (at..at + n as u64).contains(o)) {
            buf[(off - at) as usize] ^= 0xff;
        }
        if out.write_all(&buf[..n]).is_err() {
            return at;
        }
        at += n as u64;
    }
}

/// The file for a URL path; none for anything that would leave a route's directory.
fn file_for(routes: &Routes, url_path: &str) -> Option<PathBuf> {
    let (prefix, target) = routes
        .iter()
        .filter(|(prefix, _)| url_path.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())?;
    if target.is_file() {
        return (url_path == prefix).then(|| target.clone());
    }
    let mut p = target.clone();
    for part in url_path[prefix.len()..]
        .split('/')
        .filter(|s| !s.is_empty())
    {
        if part == "." || part == ".." || part.contains('\\') || part.contains('%') {
            return None;
        }
        p.push(part);
    }
    p.is_file().then_some(p)
}

/// `GET path` with a User-Agent; (status, body). For this module's tests.
#[cfg(test)]
fn get(base: &str, path: &str, agent: &str) -> (u16, Vec<u8>) {
    let addr = base.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).expect("connecting to the test server");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {agent}\r\n\r\n"
    )
    .expect("sending a request");
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).expect("reading the answer");
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head")
        + 4;
    let head = String::from_utf8_lossy(&resp[..body_at]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, resp[body_at..].to_vec())
}

/// For the tests: a directory with `img.raw` (3 MiB of a pattern) and `cfg.toml`.
#[cfg(test)]
fn fixture(dir: &Path) -> (Routes, Vec<u8>) {
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("pxe")).expect("creating the fixture");
    let img: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(out.join("img.raw"), &img).expect("writing the fixture");
    std::fs::write(out.join("pxe/boot.ipxe"), "#!ipxe\n").expect("writing the fixture");
    std::fs::write(dir.join("cfg.toml"), "version = 1\n").expect("writing the fixture");
    std::fs::write(dir.join("secret"), "x").expect("writing the fixture");
    let routes = vec![
        ("/".to_owned(), out),
        ("/nodes/n1.toml".to_owned(), dir.join("cfg.toml")),
    ];
    (routes, img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_routes_streams_files_and_logs_clients() {
        let d = tempfile::tempdir().unwrap();
        let (routes, img) = fixture(d.path());
        let s = PxeHttp::start(routes);
        let (status, body) = get(&s.url(), "/img.raw", "nodeboot/0.1.0");
        assert_eq!(status, 200);
        assert!(body == img, "the body is the file, byte for byte");
        assert_eq!(get(&s.url(), "/pxe/boot.ipxe", "iPXE/1.0.0").1, b"#!ipxe\n");
        assert_eq!(get(&s.url(), "/nodes/n1.toml", "x").1, b"version = 1\n");
        // A file route matches only itself; nothing leaves a directory route.
        assert_eq!(get(&s.url(), "/nodes/n1.toml/x", "x").0, 404);
        assert_eq!(get(&s.url(), "/nodes/other.toml", "x").0, 404);
        assert_eq!(get(&s.url(), "/../secret", "x").0, 404);
        assert_eq!(get(&s.url(), "/%2e%2e/secret", "x").0, 404);
        assert_eq!(get(&s.url(), "/pxe", "x").0, 404);
        let log = s.requests();
        assert_eq!(log.len(), 8);
        assert!(log.contains(&Request {
            path: "/img.raw".into(),
            user_agent: "nodeboot/0.1.0".into(),
            status: 200,
            sent: img.len() as u64,
        }));
        s.clear();
        assert!(s.requests().is_empty());
    }

    #[test]
    fn faults_break_only_their_file() {
        let d = tempfile::tempdir().unwrap();
        let (routes, img) = fixture(d.path());
        let s = PxeHttp::start(routes);
        s.set_fault(Fault::FlipByte {
            path: "/img.raw".into(),
            offset: (2 << 20) + 7,
        });
        let (status, body) = get(&s.url(), "/img.raw", "x");
        assert_eq!((status, body.len()), (200, img.len()));
        let diff: Vec<usize> = (0..img.len()).filter(|&i| body[i] != img[i]).collect();
        assert_eq!(diff, [(2 << 20) + 7]);
        assert_eq!(body[diff[0]], img[diff[0]] ^ 0xff);
        assert_eq!(get(&s.url(), "/pxe/boot.ipxe", "x").1, b"#!ipxe\n");
        s.set_fault(Fault::NotFound {
            path: "/img.raw".into(),
        });
        assert_eq!(get(&s.url(), "/img.raw", "x").0, 404);
        s.set_fault(Fault::None);
        assert!(get(&s.url(), "/img.raw", "x").1 == img);
    }
}

//! Shared by the VM end-to-end tests (`ci/e2e-lifecycle`, `ci/e2e-cluster`): the image series
//! `nodeimg build` made from `tests/recipes/e2e-v*.toml`, a static HTTP server for its OSTree
//! repository, and a node: one persistent qcow2 overlay booted again and again, each boot with
//! a NoCloud seed carrying the user-data and that boot's commands for the image's test hook
//! (`tests/recipes/e2e-hook/hook.sh`).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodeimg_builder::boot::serial::report_values;
use nodeimg_builder::boot::{seed, AccelChoice, Firmware, UserNet, Vm, VmConfig};
use nodeimg_builder::manifest::Manifest;
use regex::Regex;

/// Where the guest reaches the test's services (qemu `guestfwd`; with `restrict=on` nothing
/// else is reachable).
pub const GUEST_SERVICE_ADDR: &str = "10.0.2.100";
pub const GUEST_REPO_PORT: u16 = 8080;
pub const GUEST_VAULT_PORT: u16 = 8200;

/// The repository URL as the guest sees it (the v1 image is built with
/// `--http-base http://10.0.2.100:8080`, so its remote points here too).
pub fn guest_repo_url() -> String {
    format!("http://{GUEST_SERVICE_ADDR}:{GUEST_REPO_PORT}/repo")
}

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// One build of the series, from its `manifest.json`.
#[derive(Debug, Clone)]
pub struct Build {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Build {
    pub fn load(dir: &Path) -> Result<Build> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Build {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn commit(&self) -> &str {
        &self.manifest.commit.checksum
    }

    pub fn version(&self) -> &str {
        &self.manifest.commit.version
    }

    pub fn repo(&self) -> PathBuf {
        PathBuf::from(&self.manifest.commit.repo)
    }

    /// The qcow2 disk image of this build.
    pub fn qcow2(&self) -> Result<PathBuf> {
        let o = self
            .manifest
            .outputs
            .iter()
            .find(|o| o.format == "qcow2")
            .with_context(|| format!("{} has no qcow2 output", self.dir.display()))?;
        Ok(self.dir.join(&o.name))
    }
}

/// Serves the files under `root` over HTTP/1.0 on 127.0.0.1 (GET only, one request per
/// connection), counting the bytes of every 200 answer: what `ostree pull` downloaded.
///
/// Not `tiny_http`: libostree asks every request for an HTTP/2 upgrade (`Connection: Upgrade`,
/// `Upgrade: h2c`), after which tiny_http stops reading the connection while curl waits for
/// its next answer. HTTP/1.0 with `Connection: close` is what any static server does.
#[derive(Debug)]
pub struct StaticServer {
    addr: std::net::SocketAddr,
    served: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<(String, u16, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl StaticServer {
    pub fn start(root: &Path) -> StaticServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let root = root.to_path_buf();
        let served = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, l, st) = (Arc::clone(&served), Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, s, l) = (root.clone(), Arc::clone(&s), Arc::clone(&l));
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &root, |path, status, len| {
                        // Counted before the answer goes out, so a client that has its answer
                        // sees it counted.
                        s.fetch_add(len, Ordering::Relaxed);
                        l.lock().unwrap_or_else(|p| p.into_inner()).push((
                            path.to_owned(),
                            status,
                            len,
                        ));
                    });
                });
            }
        });
        StaticServer {
            addr,
            served,
            log,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn bytes_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// (path, status, bytes) of every request so far.
    pub fn requests(&self) -> Vec<(String, u16, u64)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn reset(&self) {
        self.served.store(0, Ordering::Relaxed);
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// Read one request head, record it with `record(path, status, body bytes)`, answer, close.
fn serve_one(
    mut conn: std::net::TcpStream,
    root: &Path,
    record: impl FnOnce(&str, u16, u64),
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = path.split('?').next().unwrap_or("/").to_owned();
    let body = match (method, file_for(root, &path)) {
        ("GET" | "HEAD", Some(p)) => std::fs::read(p).ok(),
        _ => None,
    };
    let (status, reason, body) = match body {
        Some(b) => (200, "OK", b),
        None if method == "GET" || method == "HEAD" => (404, "Not Found", Vec::new()),
        None => (405, "Method Not Allowed", Vec::new()),
    };
    let sent = if method == "GET" {
        body.len() as u64
    } else {
        0
    };
    record(&path, status, if status == 200 { sent } else { 0 });
    write!(
        conn,
        "HTTP/1.0 {status} {reason}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method == "GET" {
        conn.write_all(&body)?;
    }
    conn.flush()
}

/// The file under `root` for a URL path; none for anything that would leave `root`.
fn file_for(root: &Path, url_path: &str) -> Option<PathBuf> {
    let mut p = root.to_path_buf();
    for part in url_path.split('/').filter(|s| !s.is_empty()) {
        if part == "." || part == ".." || part.contains('\\') || part.contains('%') {
            return None;
        }
        p.push(part);
    }
    p.is_file().then_some(p)
}

/// Accelerator: `NODEIMG_E2E_ACCEL=kvm|tcg`, else TCG (KVM does not work on the CI hosts and
/// a failed KVM start would only cost time).
pub fn accel() -> AccelChoice {
    match env_or("NODEIMG_E2E_ACCEL", "tcg").as_str() {
        "kvm" => AccelChoice::Kvm,
        "auto" => AccelChoice::Auto,
        _ => AccelChoice::Tcg,
    }
}

/// Firmware: `NODEIMG_E2E_FIRMWARE=bios|uefi` (SeaBIOS or OVMF), default bios.
pub fn firmware() -> Firmware {
    match env_or("NODEIMG_E2E_FIRMWARE", "bios").as_str() {
        "bios" => Firmware::Bios,
        "uefi" => Firmware::Uefi,
        other => panic!("NODEIMG_E2E_FIRMWARE: `{other}` is neither bios nor uefi"),
    }
}

/// What one boot left on the serial console.
#[derive(Debug, Clone)]
pub struct BootLog {
    pub name: String,
    pub text: String,
    /// Host wall clock from qemu start to power-off/reboot.
    pub seconds: f64,
    /// When qemu was started.
    pub started: Instant,
    /// Host instants of the markers [`Node::boot`] was asked to time.
    pub marks: Vec<(String, Instant)>,
}

impl BootLog {
    pub fn values(&self, prefix: &str) -> Vec<&str> {
        report_values(&self.text, prefix)
    }

    /// The single value of `PREFIX: value`; fails when there is none or more than one.
    pub fn one(&self, prefix: &str) -> &str {
        match self.values(prefix).as_slice() {
            [v] => v,
            other => panic!(
                "boot {}: expected one `{prefix}:` line, found {}:\n{}",
                self.name,
                other.len(),
                self.tail(60)
            ),
        }
    }

    /// `nodeboot status --json` as the hook printed it.
    pub fn status(&self) -> serde_json::Value {
        let line = self.one("E2E-STATUS-JSON");
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "boot {}: E2E-STATUS-JSON is not JSON ({e}): {line}",
                self.name
            )
        })
    }

    /// Output lines of `e2e_run NAME` and its exit status.
    pub fn run_output(&self, name: &str) -> (Vec<&str>, i32) {
        let out = self.values(&format!("E2E-OUT {name}"));
        let rc = self.one(&format!("E2E-RC {name}"));
        (out, rc.parse().expect("E2E-RC is a number"))
    }

    pub fn mark(&self, name: &str) -> Option<Instant> {
        self.marks.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    pub fn tail(&self, n: usize) -> String {
        nodeimg_builder::boot::serial::tail(&self.text, n)
    }
}

/// One node: a disk image, a persistent overlay over it, the user-data, the network.
#[derive(Debug)]
pub struct Node {
    pub image: PathBuf,
    pub overlay: PathBuf,
    pub logs: PathBuf,
    pub user_data: String,
    /// Extra files for the seed (`vault-token`, `cluster-ca.crt`, ...).
    pub seed_files: Vec<(String, Vec<u8>)>,
    pub network: UserNet,
    pub firmware: Firmware,
    boots: usize,
}

impl Node {
    /// A fresh node over `image`; its state lives in `dir` (overlay, seeds, serial logs).
    pub fn new(image: &Path, dir: &Path, user_data: &str, network: UserNet) -> Result<Node> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Node {
            image: image.to_path_buf(),
            overlay: dir.join("node.qcow2"),
            logs: dir.join("logs"),
            user_data: user_data.to_owned(),
            seed_files: Vec::new(),
            network,
            firmware: firmware(),
            boots: 0,
        })
    }

    /// Boot once with `hook` as this boot's commands and wait until the VM powers off or
    /// reboots (qemu runs with `-no-reboot`, so both end it). `timed` markers (regexes over
    /// console lines) are waited for in order and their host instants recorded.
    pub fn boot(
        &mut self,
        name: &str,
        hook: &str,
        timed: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<BootLog> {
        self.boots += 1;
        let tag = format!("{:02}-{name}", self.boots);
        let seed_dir = self.logs.join(format!("{tag}.seed"));
        std::fs::create_dir_all(&seed_dir)
            .with_context(|| format!("creating {}", seed_dir.display()))?;
        std::fs::write(seed_dir.join("user-data"), &self.user_data)
            .with_context(|| format!("writing the user-data into {}", seed_dir.display()))?;
        std::fs::write(seed_dir.join("e2e-hook.sh"), hook)
            .with_context(|| format!("writing the hook into {}", seed_dir.display()))?;
        for (file, bytes) in &self.seed_files {
            std::fs::write(seed_dir.join(file), bytes)
                .with_context(|| format!("writing {file} into {}", seed_dir.display()))?;
        }
        let iso = self.logs.join(format!("{tag}.seed.iso"));
        seed::from_dir(&seed_dir, &iso)?;
        // The seed directory may hold credentials; the ISO is what the VM gets.
        std::fs::remove_dir_all(&seed_dir)
            .with_context(|| format!("removing {}", seed_dir.display()))?;

        let mut cfg = VmConfig::new(&self.image);
        cfg.firmware = self.firmware;
        cfg.accel = accel();
        cfg.seed_iso = Some(iso);
        cfg.network = Some(self.network.clone());
        cfg.overlay = Some(self.overlay.clone());
        cfg.serial_log = Some(self.logs.join(format!("{tag}.serial.log")));
        let deadline = Instant::now() + timeout;
        let mut vm = Vm::start(&cfg)?;
        let started = Instant::now();
        let mut marks = Vec::new();
        for (mark, re) in timed {
            let re = Regex::new(re).with_context(|| format!("marker regex `{re}`"))?;
            let left = deadline.saturating_duration_since(Instant::now());
            vm.wait_for(&re, left)
                .with_context(|| format!("boot {tag}: waiting for {mark}"))?;
            marks.push(((*mark).to_owned(), Instant::now()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        vm.wait_exit(left)
            .with_context(|| format!("boot {tag}: waiting for the VM to power off or reboot"))?;
        let seconds = vm.elapsed().as_secs_f64();
        let text = vm.serial_text()?;
        eprintln!("E2E-TIMING boot={tag} seconds={seconds:.1}");
        Ok(BootLog {
            name: tag,
            text,
            seconds,
            started,
            marks,
        })
    }
}

/// The deployments of a `nodeboot status --json` document as (role, commit, version).
pub fn deployments(status: &serde_json::Value) -> Vec<(String, String, String)> {
    status["os"]["deployments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["role"].as_str().unwrap_or_default().to_owned(),
                        d["checksum"].as_str().unwrap_or_default().to_owned(),
                        d["version"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The OS state name (`idle`, `confirmed`, ...) of a status document.
pub fn os_state(status: &serde_json::Value) -> &str {
    status["os"]["state"]["state"]["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no os.state.state.state in {status}"))
}

/// Fail unless `text` is free of every secret in `secrets`.
pub fn assert_no_secret(what: &str, text: &str, secrets: &[(&str, &str)]) -> Result<()> {
    for (name, value) in secrets {
        if value.len() < 8 {
            bail!("{name}: refusing to search for a secret shorter than 8 characters");
        }
        if text.contains(value) {
            bail!("{what} contains the {name}");
        }
    }
    Ok(())
}

/// The bytes the test hook prints for `value` in place of a secret.
pub fn redacted(value: &str) -> String {
    format!(
        "<sha256:{}>",
        nodeimg_common::digest::Sha256Hex::of_bytes(value.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request as libostree sends it (HTTP/1.1 asking for an h2c upgrade): status, body.
    fn get(url_base: &str, path: &str) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let addr = url_base.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: libostree/2022.7\r\nAccept: */*\r\n\
             Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        .unwrap();
        let mut resp = Vec::new();
        c.read_to_end(&mut resp).unwrap();
        let text = String::from_utf8_lossy(&resp).into_owned();
        let (head, _) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body_at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (status, resp[body_at..].to_vec())
    }

    #[test]
    fn static_server_serves_files_counts_bytes_and_stays_inside_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("repo/objects")).unwrap();
        std::fs::write(d.path().join("repo/config"), b"[core]\nmode=archive-z2\n").unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        let s = StaticServer::start(&d.path().join("repo"));
        let (status, body) = get(&s.url(), "/config");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"[core]\nmode=archive-z2\n"[..])
        );
        // A second request right after the upgrade-asking first one is answered too.
        assert_eq!(get(&s.url(), "/config").0, 200);
        assert_eq!(get(&s.url(), "/objects").0, 404);
        assert_eq!(get(&s.url(), "/../secret").0, 404);
        assert_eq!(get(&s.url(), "/%2e%2e/secret").0, 404);
        assert_eq!(s.bytes_served(), 46);
        assert_eq!(s.requests().len(), 5);
        s.reset();
        assert_eq!(s.bytes_served(), 0);
    }

    #[test]
    fn deployments_and_state_from_status_json() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"complete":true,"os":{"deployments":[
                {"index":0,"osname":"debian","checksum":"aa","serial":0,"version":"2.0.0","refspec":"debian:r","role":"booted"},
                {"index":1,"osname":"debian","checksum":"bb","serial":0,"version":"1.0.0","refspec":"debian:r","role":"rollback"}],
                "state":{"version":1,"state":{"state":"confirmed","commit":"aa"},"failures":[]},"boot-counter":null}}"#,
        )
        .unwrap();
        assert_eq!(
            deployments(&v),
            [
                ("booted".into(), "aa".into(), "2.0.0".into()),
                ("rollback".into(), "bb".into(), "1.0.0".into())
            ]
        );
        assert_eq!(os_state(&v), "confirmed");
    }

    #[test]
    fn secrets_are_found() {
        let e = assert_no_secret(
            "log",
            "a abcdef.0123456789abcdef b",
            &[("token", "abcdef.0123456789abcdef")],
        );
        assert!(e.unwrap_err().to_string().contains("token"));
        assert!(assert_no_secret("log", "clean", &[("token", "abcdef.0123456789abcdef")]).is_ok());
    }
}

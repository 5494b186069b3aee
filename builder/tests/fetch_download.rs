//! The fetch stage against a real HTTP server on 127.0.0.1 (tiny_http in a thread, random
//! port), local mirror directories and file:// URLs.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nodeimg_builder::fetch::{fetch_all, FetchOptions, Fetched, Mirror};
use nodeimg_builder::recipe::schema::{Artifact, Mode};
use nodeimg_common::digest::Sha256Hex;

/// What the server answers to the n-th request (0-based) for a path.
type Route = Box<dyn Fn(usize) -> Reply + Send>;

enum Reply {
    Body(Vec<u8>),
    Status(u16),
    /// Wait this long before answering 200 with the body (to trigger client timeouts).
    Slow(Duration, Vec<u8>),
}

struct TestServer {
    base: String,
    server: Arc<tiny_http::Server>,
    hits: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(routes: Vec<(&str, Route)>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let routes: HashMap<String, Route> =
            routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect();
        let (s, h) = (server.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for req in s.incoming_requests() {
                let path = req.url().to_owned();
                h.lock().unwrap().push(path.clone());
                let n = counts.entry(path.clone()).or_default();
                let reply = routes
                    .get(&path)
                    .map(|r| r(*n))
                    .unwrap_or(Reply::Status(404));
                *n += 1;
                // Answer from a thread so a slow reply does not hold up the retries.
                std::thread::spawn(move || {
                    let _ = match reply {
                        Reply::Body(b) => req.respond(tiny_http::Response::from_data(b)),
                        Reply::Status(c) => req.respond(tiny_http::Response::empty(c)),
                        Reply::Slow(d, b) => {
                            std::thread::sleep(d);
                            req.respond(tiny_http::Response::from_data(b))
                        }
                    };
                });
            }
        });
        TestServer {
            base: format!("http://127.0.0.1:{port}"),
            server,
            hits,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn body(data: &[u8]) -> Route {
    let data = data.to_vec();
    Box::new(move |_| Reply::Body(data.clone()))
}

fn artifact(name: &str, url: &str, data: &[u8]) -> Artifact {
    artifact_sha(name, url, Sha256Hex::of_bytes(data))
}

fn artifact_sha(name: &str, url: &str, sha256: Sha256Hex) -> Artifact {
    Artifact {
        name: name.parse().unwrap(),
        url: url.parse().unwrap(),
        sha256,
        dest: format!("/usr/bin/{name}").parse().unwrap(),
        mode: Mode(0o755),
        unpack: None,
        strip_components: 0,
    }
}

fn opts(cache: &Path) -> FetchOptions {
    FetchOptions {
        cache_dir: cache.to_owned(),
        mirror: None,
        offline: false,
        retries: 3,
        timeout: Duration::from_secs(5),
        backoff: Duration::from_millis(10),
    }
}

fn entry_dir(cache: &Path) -> PathBuf {
    cache.join("artifacts/sha256")
}

/// Every file in the cache's entry directory (temporary files included).
fn cache_files(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(entry_dir(cache)) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn err_text(r: anyhow::Result<Vec<Fetched>>) -> String {
    format!("{:#}", r.expect_err("fetch should fail"))
}

#[test]
fn downloads_verifies_and_caches() {
    let data = b"#!/bin/sh\necho kubelet\n".repeat(1000);
    let srv = TestServer::start(vec![("/bin/kubelet", body(&data))]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("kubelet", &srv.url("/bin/kubelet"), &data);

    let got = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    assert_eq!(got.len(), 1);
    let f = &got[0];
    assert_eq!(f.name, "kubelet");
    assert_eq!(f.sha256, a.sha256);
    assert_eq!(f.size, data.len() as u64);
    assert!(!f.from_cache);
    assert_eq!(f.source, srv.url("/bin/kubelet"));
    assert_eq!(f.path, entry_dir(cache.path()).join(a.sha256.as_str()));
    assert_eq!(fs::read(&f.path).unwrap(), data);
    assert_eq!(
        fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert_eq!(cache_files(cache.path()), vec![a.sha256.to_string()]);
    assert_eq!(srv.hits().len(), 1);

    // Second run: served from the cache, the server is not contacted.
    let again = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    assert!(again[0].from_cache);
    assert_eq!(again[0].path, f.path);
    assert_eq!(again[0].size, f.size);
    assert_eq!(srv.hits().len(), 1, "cache hit must not contact the server");
}

#[test]
fn results_keep_input_order_and_shared_digests_download_once() {
    let (x, y) = (b"xxxx".to_vec(), b"yyyyyy".to_vec());
    let srv = TestServer::start(vec![("/x", body(&x)), ("/y", body(&y))]);
    let cache = tempfile::tempdir().unwrap();
    let list = vec![
        artifact("y", &srv.url("/y"), &y),
        artifact("x", &srv.url("/x"), &x),
        artifact("x-again", &srv.url("/x"), &x),
    ];
    let got = fetch_all(&list, &opts(cache.path())).unwrap();
    let names: Vec<&str> = got.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["y", "x", "x-again"]);
    assert_eq!(got[1].path, got[2].path);
    assert!(!got[1].from_cache && got[2].from_cache);
    assert_eq!(srv.hits(), ["/y", "/x"]);
}

#[test]
fn sha_mismatch_names_everything_and_keeps_nothing() {
    let served = b"not what the recipe pinned".to_vec();
    let srv = TestServer::start(vec![("/kubeadm", body(&served))]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("kubeadm", &srv.url("/kubeadm"), b"the pinned bytes");

    let msg = err_text(fetch_all(std::slice::from_ref(&a), &opts(cache.path())));
    assert!(msg.contains("`kubeadm`"), "{msg}");
    assert!(msg.contains(&srv.url("/kubeadm")), "{msg}");
    assert!(msg.contains(a.sha256.as_str()), "{msg}");
    assert!(msg.contains(Sha256Hex::of_bytes(&served).as_str()), "{msg}");
    assert!(msg.contains("mismatch"), "{msg}");
    assert!(cache_files(cache.path()).is_empty(), "nothing kept");
    assert_eq!(srv.hits().len(), 1, "a mismatch is not retried");
}

#[test]
fn retries_503_then_succeeds() {
    let data = b"crictl".to_vec();
    let d2 = data.clone();
    let route: Route = Box::new(move |n| {
        if n < 2 {
            Reply::Status(503)
        } else {
            Reply::Body(d2.clone())
        }
    });
    let srv = TestServer::start(vec![("/crictl", route)]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("crictl", &srv.url("/crictl"), &data);
    let got = fetch_all(&[a], &opts(cache.path())).unwrap();
    assert_eq!(fs::read(&got[0].path).unwrap(), data);
    assert_eq!(srv.hits().len(), 3);
}

#[test]
fn does_not_retry_404() {
    let srv = TestServer::start(vec![]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("kubectl", &srv.url("/missing/kubectl"), b"kubectl");
    let msg = err_text(fetch_all(&[a], &opts(cache.path())));
    assert!(msg.contains("404"), "{msg}");
    assert!(msg.contains("`kubectl`"), "{msg}");
    assert_eq!(srv.hits().len(), 1);
    assert!(cache_files(cache.path()).is_empty());
}

#[test]
fn gives_up_after_retries_on_persistent_5xx_and_points_at_mirror() {
    let route: Route = Box::new(|_| Reply::Status(502));
    let srv = TestServer::start(vec![("/k", route)]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("k", &srv.url("/k"), b"k");
    let mut o = opts(cache.path());
    o.retries = 2;
    let msg = err_text(fetch_all(&[a], &o));
    assert_eq!(srv.hits().len(), 3, "first attempt + 2 retries");
    assert!(msg.contains("502"), "{msg}");
    assert!(msg.contains("3 attempts"), "{msg}");
    assert!(msg.contains("--artifact-mirror"), "{msg}");
}

#[test]
fn unreachable_host_mentions_artifact_mirror() {
    // A port nobody listens on: bind, note the port, close.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(
        "kubelet",
        &format!("http://127.0.0.1:{port}/release/kubelet"),
        b"x",
    );
    let mut o = opts(cache.path());
    o.retries = 1;
    let msg = err_text(fetch_all(&[a], &o));
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(msg.contains("2 attempts"), "{msg}");
    assert!(msg.contains("--artifact-mirror"), "{msg}");
    assert!(msg.contains("127.0.0.1 could not be reached"), "{msg}");
}

#[test]
fn stalled_server_times_out_and_is_retried() {
    let data = b"slow".to_vec();
    let d2 = data.clone();
    let route: Route = Box::new(move |n| {
        if n == 0 {
            Reply::Slow(Duration::from_millis(1500), d2.clone())
        } else {
            Reply::Body(d2.clone())
        }
    });
    let srv = TestServer::start(vec![("/slow", route)]);
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.timeout = Duration::from_millis(300);
    let a = artifact("slow", &srv.url("/slow"), &data);
    let got = fetch_all(&[a], &o).unwrap();
    assert_eq!(fs::read(&got[0].path).unwrap(), data);
    assert_eq!(srv.hits().len(), 2);
}

#[test]
fn connection_lost_mid_body_is_retried() {
    // tiny_http always completes a response, so this server is a raw socket: the first
    // answer promises 100 bytes and hangs up after 10.
    let data: Vec<u8> = (0..100u8).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let d2 = data.clone();
    let server = std::thread::spawn(move || {
        for (i, conn) in listener.incoming().take(2).enumerate() {
            let mut c = conn.unwrap();
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                d2.len()
            );
            c.write_all(head.as_bytes()).unwrap();
            let n = if i == 0 { 10 } else { d2.len() };
            c.write_all(&d2[..n]).unwrap();
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("cut", &format!("http://127.0.0.1:{port}/cut"), &data);
    let got = fetch_all(&[a], &opts(cache.path())).unwrap();
    server.join().unwrap();
    assert_eq!(fs::read(&got[0].path).unwrap(), data);
    assert_eq!(cache_files(cache.path()).len(), 1, "no temp file left over");
}

#[test]
fn offline_cold_cache_lists_every_missing_artifact() {
    let srv = TestServer::start(vec![("/a", body(b"a")), ("/b", body(b"b"))]);
    let cache = tempfile::tempdir().unwrap();
    let list = vec![
        artifact("kubelet", &srv.url("/a"), b"a"),
        artifact("kubeadm", &srv.url("/b"), b"b"),
    ];
    let mut o = opts(cache.path());
    o.offline = true;
    let msg = err_text(fetch_all(&list, &o));
    for a in &list {
        assert!(msg.contains(a.name.as_str()), "{msg}");
        assert!(msg.contains(a.url.as_str()), "{msg}");
        assert!(msg.contains(a.sha256.as_str()), "{msg}");
    }
    assert!(msg.contains("2 of 2 artifacts"), "{msg}");
    assert!(
        msg.contains("run once online, or use --artifact-mirror DIR"),
        "{msg}"
    );
    assert!(srv.hits().is_empty(), "offline must not touch the network");
}

#[test]
fn offline_warm_cache_succeeds_without_network() {
    let srv = TestServer::start(vec![("/a", body(b"aaa"))]);
    let cache = tempfile::tempdir().unwrap();
    let list = vec![artifact("kubelet", &srv.url("/a"), b"aaa")];
    fetch_all(&list, &opts(cache.path())).unwrap();
    drop(srv); // the server is gone: any request would fail
    let mut o = opts(cache.path());
    o.offline = true;
    let got = fetch_all(&list, &o).unwrap();
    assert!(got[0].from_cache);
    assert_eq!(fs::read(&got[0].path).unwrap(), b"aaa");
}

#[test]
fn mirror_url_rewrites_host_and_path() {
    let data = b"kubelet 1.34.2".to_vec();
    let srv = TestServer::start(vec![(
        "/mirror/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet",
        body(&data),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(
        "kubelet",
        "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet",
        &data,
    );
    let mut o = opts(cache.path());
    o.mirror = Some(srv.url("/mirror/").parse::<Mirror>().unwrap());
    let got = fetch_all(&[a], &o).unwrap();
    assert_eq!(
        got[0].source,
        srv.url("/mirror/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet")
    );
    assert_eq!(fs::read(&got[0].path).unwrap(), data);
    assert_eq!(
        srv.hits(),
        ["/mirror/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"]
    );
}

#[test]
fn mirror_dir_finds_each_lookup_form_offline() {
    let mirror = tempfile::tempdir().unwrap();
    let m = mirror.path();
    let (kubelet, kubeadm, crictl) = (
        b"kubelet-bytes".to_vec(),
        b"kubeadm-bytes".to_vec(),
        b"crictl-bytes".to_vec(),
    );
    // host/path form
    let p = m.join("dl.k8s.io/release/v1.34.2/bin/linux/amd64");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("kubelet"), &kubelet).unwrap();
    // flat sha256 form
    fs::write(m.join(Sha256Hex::of_bytes(&kubeadm).as_str()), &kubeadm).unwrap();
    // flat basename form
    fs::write(m.join("crictl-v1.34.0-linux-amd64.tar.gz"), &crictl).unwrap();

    let list = vec![
        artifact(
            "kubelet",
            "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet",
            &kubelet,
        ),
        artifact(
            "kubeadm",
            "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubeadm",
            &kubeadm,
        ),
        artifact(
            "crictl",
            "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.34.0/crictl-v1.34.0-linux-amd64.tar.gz",
            &crictl,
        ),
    ];
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.offline = true;
    o.mirror = Some(Mirror::Dir(m.to_owned()));
    let got = fetch_all(&list, &o).unwrap();
    assert_eq!(got[0].source, p.join("kubelet").display().to_string());
    assert_eq!(
        got[1].source,
        m.join(Sha256Hex::of_bytes(&kubeadm).as_str())
            .display()
            .to_string()
    );
    assert_eq!(
        got[2].source,
        m.join("crictl-v1.34.0-linux-amd64.tar.gz")
            .display()
            .to_string()
    );
    for (f, data) in got.iter().zip([&kubelet, &kubeadm, &crictl]) {
        assert!(!f.from_cache);
        assert_eq!(&fs::read(&f.path).unwrap(), data);
        assert!(
            f.path.starts_with(entry_dir(cache.path())),
            "copied into the cache"
        );
    }
}

#[test]
fn mirror_dir_skips_a_mismatching_file_for_the_next_form() {
    let mirror = tempfile::tempdir().unwrap();
    let m = mirror.path();
    let want = b"kubelet v1.34.2".to_vec();
    let p = m.join("dl.k8s.io/v1.34.2");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("kubelet"), b"corrupt copy").unwrap();
    fs::write(m.join("kubelet"), &want).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.offline = true;
    o.mirror = Some(m.display().to_string().parse().unwrap());
    let a = artifact("kubelet", "https://dl.k8s.io/v1.34.2/kubelet", &want);
    let got = fetch_all(&[a], &o).unwrap();
    assert_eq!(got[0].source, m.join("kubelet").display().to_string());
    assert_eq!(fs::read(&got[0].path).unwrap(), want);
}

#[test]
fn offline_with_mirror_dir_miss_reports_paths_tried() {
    let mirror = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.offline = true;
    o.mirror = Some(Mirror::Dir(mirror.path().to_owned()));
    let a = artifact("kubelet", "https://dl.k8s.io/v1/kubelet", b"k");
    let msg = err_text(fetch_all(&[a], &o));
    let expected = mirror.path().join("dl.k8s.io/v1/kubelet");
    assert!(
        msg.contains(&format!("tried {}: not found", expected.display())),
        "{msg}"
    );
    assert!(msg.contains("1 of 1 artifact is not in the cache"), "{msg}");
}

#[test]
fn missing_mirror_dir_is_an_error_naming_the_option() {
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.mirror = Some(Mirror::Dir(cache.path().join("nope")));
    let msg = err_text(fetch_all(&[], &o));
    assert!(msg.contains("--artifact-mirror"), "{msg}");
}

#[test]
fn file_url_is_verified_and_cached() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("cni plugins.tgz");
    fs::write(&src, b"tarball").unwrap();
    let url = url::Url::from_file_path(&src).unwrap().to_string();
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("cni", &url, b"tarball");
    let got = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    assert_eq!(got[0].source, src.display().to_string());
    assert!(!got[0].from_cache);
    fs::remove_file(&src).unwrap();
    let again = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    assert!(again[0].from_cache);

    // A file:// URL with other content fails like a download.
    let wrong = src_dir.path().join("other");
    fs::write(&wrong, b"other").unwrap();
    let b = artifact(
        "cni2",
        url::Url::from_file_path(&wrong).unwrap().as_str(),
        b"expected",
    );
    let msg = err_text(fetch_all(&[b], &opts(cache.path())));
    assert!(msg.contains("mismatch"), "{msg}");
    assert!(msg.contains(&wrong.display().to_string()), "{msg}");
}

#[test]
fn corrupted_cache_entry_is_replaced() {
    let data = b"good bytes".to_vec();
    let srv = TestServer::start(vec![("/f", body(&data))]);
    let cache = tempfile::tempdir().unwrap();
    let a = artifact("f", &srv.url("/f"), &data);
    let got = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    let p = &got[0].path;
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(p, b"bad  bytes").unwrap(); // same length

    let again = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    assert!(!again[0].from_cache, "the corrupted entry is not a hit");
    assert_eq!(fs::read(&again[0].path).unwrap(), data);
    assert_eq!(srv.hits().len(), 2);
}

/// Measurement, not a check: how long re-verifying a cache hit takes for a large artifact.
/// `cargo test -p nodeimg-builder --test fetch_download -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_cache_hit_verification() {
    let size_mib = 256usize;
    let data: Vec<u8> = (0..size_mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("big");
    fs::write(&src, &data).unwrap();
    let a = artifact(
        "big",
        url::Url::from_file_path(&src).unwrap().as_str(),
        &data,
    );
    let cache = tempfile::tempdir().unwrap();
    let t = Instant::now();
    fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    let ingest = t.elapsed();
    let t = Instant::now();
    let got = fetch_all(std::slice::from_ref(&a), &opts(cache.path())).unwrap();
    let hit = t.elapsed();
    assert!(got[0].from_cache);
    eprintln!(
        "{size_mib} MiB: copy+hash into cache {:.2}s, cache hit re-verify {:.2}s ({:.0} MiB/s)",
        ingest.as_secs_f64(),
        hit.as_secs_f64(),
        size_mib as f64 / hit.as_secs_f64()
    );
}

//! Shared pieces of the installer tests: a small GPT disk image laid out like nodeimg's
//! (BIOS boot, ESP, /boot, root last as number 4, ext4 with an OSTree deployment in it),
//! built with the real sfdisk and mkfs.ext4, and a local HTTP server on 127.0.0.1.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nodeboot::install::Host;
use nodeboot::sources::Net;
use nodeimg_common::digest::Sha256Hex;

pub const MIB: u64 = 1 << 20;
pub const IMAGE_MIB: u64 = 40;
pub const DEPLOYMENT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.0";

/// The test image, built once per test binary.
#[derive(Debug)]
pub struct Image {
    pub dir: PathBuf,
    pub raw: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: Sha256Hex,
    pub zst: Vec<u8>,
    /// Root partition (number 4): first sector and sector count in the image.
    pub root_start: u64,
    pub root_sectors: u64,
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic, incompressible filler.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(build_image)
}

fn build_image() -> Image {
    // One fixed directory per test binary under cargo's scratch space, rebuilt every run,
    // so repeated runs do not pile up images in /tmp.
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("install-image-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("disk.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(IMAGE_MIB * MIB)
        .unwrap();
    let layout = "label: gpt\nfirst-lba: 2048\n\
        start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
        size=4MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n\
        size=8MiB, type=BC13C2FF-59E6-4262-A352-B275FD6F7172, name=\"boot\"\n\
        type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n";
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let parts = partitions(&raw);
    let (boot_start, boot_size) = parts[2];
    let (root_start, root_sectors) = parts[3];

    // /boot and root as ext4 with GRUB-compatible features, as nodeimg builds them.
    let boot_tree = dir.join("boot-tree");
    std::fs::create_dir_all(boot_tree.join("loader/entries")).unwrap();
    std::fs::write(
        boot_tree.join("loader/entries/ostree-1-debian.conf"),
        "title t\n",
    )
    .unwrap();
    mkfs(&raw, &boot_tree, "boot", boot_start, boot_size);
    let root_tree = dir.join("root-tree");
    let dep = root_tree
        .join("ostree/deploy/debian/deploy")
        .join(DEPLOYMENT);
    std::fs::create_dir_all(dep.join("etc/systemd")).unwrap();
    std::fs::create_dir_all(dep.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root_tree.join("ostree/deploy/debian/var")).unwrap();
    std::fs::create_dir_all(root_tree.join("boot")).unwrap();
    std::fs::write(dep.join("etc/hostname"), "localhost\n").unwrap();
    std::fs::write(dep.join("usr/bin/payload"), noise(6 << 20, 4)).unwrap();
    mkfs(&raw, &root_tree, "root", root_start, root_sectors);

    // BIOS boot code in the MBR and "GRUB core" in partition 1, ESP filler: bytes that
    // must arrive unchanged.
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[..440].copy_from_slice(&noise(440, 1));
    let (p1, _) = parts[0];
    let (p2, _) = parts[1];
    bytes[(p1 * 512) as usize..(p1 * 512 + 200 * 1024) as usize]
        .copy_from_slice(&noise(200 * 1024, 2));
    bytes[(p2 * 512) as usize..(p2 * 512 + MIB) as usize].copy_from_slice(&noise(MIB as usize, 3));
    std::fs::write(&raw, &bytes).unwrap();
    run(Command::new("sgdisk").arg("-v").arg(&raw));
    let zst = zstd::encode_all(&bytes[..], 3).unwrap();
    Image {
        sha256: Sha256Hex::of_bytes(&bytes),
        dir,
        raw,
        bytes,
        zst,
        root_start,
        root_sectors,
    }
}

fn mkfs(raw: &Path, tree: &Path, label: &str, start: u64, sectors: u64) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", label])
        .args(["-O", "^metadata_csum_seed,^orphan_file"])
        .arg("-d")
        .arg(tree)
        .arg("-E")
        .arg(format!("offset={}", start * 512))
        .arg(raw)
        .arg(format!("{}k", sectors * 512 / 1024)));
}

/// `(start, size)` in sectors of each partition, from `sfdisk --json`.
pub fn partitions(disk: &Path) -> Vec<(u64, u64)> {
    let v = sfdisk_json(disk);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect()
}

pub fn sfdisk_json(disk: &Path) -> serde_json::Value {
    serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(disk))).unwrap()
}

/// A fresh sparse target file of `mib` MiB.
pub fn sparse_target(dir: &Path, mib: u64) -> PathBuf {
    let p = dir.join("target.disk");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    p
}

/// `sgdisk -v` output (it exits 0 on a disk without a table too, so callers read it).
pub fn sgdisk_verify(disk: &Path) -> String {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Assert that nothing on `disk` makes it bootable: no MBR/GPT in the first MiB, no backup
/// GPT, and neither sgdisk nor blkid find a partition table.
pub fn assert_unbootable(disk: &Path) {
    let bytes = std::fs::read(disk).unwrap();
    assert!(
        bytes[..MIB as usize].iter().all(|&b| b == 0),
        "first MiB (MBR, primary GPT) must be zero"
    );
    assert!(
        bytes[bytes.len() - 33 * 512..].iter().all(|&b| b == 0),
        "backup GPT region must be zero"
    );
    // sgdisk says it creates a new table in memory when it finds none on the disk.
    let v = sgdisk_verify(disk);
    assert!(
        v.contains("Creating new GPT entries in memory"),
        "sgdisk still finds a table:\n{v}"
    );
    let sfdisk = Command::new("sfdisk").arg("-d").arg(disk).output().unwrap();
    assert!(!sfdisk.status.success(), "sfdisk finds a table");
    let blkid = Command::new("blkid").arg("-p").arg(disk).output().unwrap();
    assert_eq!(
        blkid.status.code(),
        Some(2),
        "blkid -p must find nothing: {}",
        String::from_utf8_lossy(&blkid.stdout)
    );
}

/// debugfs on the root file system of an installed target, output as text.
pub fn debugfs(disk: &Path, root_start: u64, request: &str) -> String {
    String::from_utf8_lossy(&debugfs_bytes(disk, root_start, request)).into_owned()
}

/// debugfs output as bytes (for `cat` of binary files).
pub fn debugfs_bytes(disk: &Path, root_start: u64, request: &str) -> Vec<u8> {
    let mut spec = disk.as_os_str().to_owned();
    spec.push(format!("?offset={}", root_start * 512));
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(spec)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs {request}");
    out.stdout
}

/// Test settings: no reboot, fast retries.
pub fn host(root: &Path, cmdline: &Path) -> Host {
    Host {
        cmdline_path: cmdline.to_path_buf(),
        root: root.to_path_buf(),
        reboot: None,
        image_net: Net::new(Duration::from_secs(10), 1, Duration::from_millis(50)),
        config_net: Net::new(Duration::from_secs(10), 1, Duration::from_millis(50)),
    }
}

pub const CONFIG: &str = r#"version = 1
role = "join-worker"

[cluster]
name = "lab"
control-plane-endpoint = "k8s-api.lab.internal:6443"
kubernetes-version = "v1.31.2"

[node]
name = "node-7"

[secrets]
key = "clusters/lab/join"

[secrets.store]
kind = "file"
dir = "/var/lib/nodeboot/store"
"#;

/// A local HTTP server: path -> body; anything else is 404. Counts requests per path.
#[derive(Debug)]
pub struct Server {
    pub base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    pub fn start(files: Vec<(&str, Vec<u8>)>) -> Server {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let base = format!("http://{}", server.server_addr().to_ip().unwrap());
        let files: HashMap<String, Vec<u8>> =
            files.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().to_owned();
                *counter.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                let _ = match files.get(&path) {
                    // A Content-Length, as static file servers send (tiny_http would
                    // otherwise switch to chunked encoding for large bodies).
                    Some(body) => req.respond(
                        tiny_http::Response::from_data(body.clone())
                            .with_chunked_threshold(usize::MAX),
                    ),
                    None => req.respond(tiny_http::Response::empty(404)),
                };
            }
        });
        Server { base, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A server that announces `full` bytes but sends only the first `send` and closes.
pub fn short_server(body: Vec<u8>, send: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    static CONNS: AtomicUsize = AtomicUsize::new(0);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            CONNS.fetch_add(1, Ordering::SeqCst);
            let mut req = [0u8; 4096];
            let _ = conn.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body[..send]);
            let _ = conn.flush();
        }
    });
    format!("http://{addr}/short.raw")
}

//! The `nodeboot install` binary: the request read from a kernel command line file, the
//! one-line failure report, and a crash (SIGKILL) in the middle of the download, where no
//! cleanup can run, still leaving a disk without a partition table.

mod install_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use install_support::*;

fn nodeboot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodeboot"))
}

#[test]
fn installs_from_the_kernel_command_line() {
    let img = image();
    let server = Server::start(vec![
        ("/k8s-node.raw.zst", img.zst.clone()),
        ("/node.toml", CONFIG.as_bytes().to_vec()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), 64);
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "BOOT_IMAGE=/pxe/vmlinuz console=ttyS0,115200 nodeboot.install.device={} \
             nodeboot.install.image-url={} nodeboot.install.sha256={} nodeboot.config={}\n",
            target.display(),
            server.url("/k8s-node.raw.zst"),
            img.sha256,
            server.url("/node.toml")
        ),
    )
    .unwrap();
    let out = nodeboot()
        .arg("install")
        .arg("--no-reboot")
        .arg("--cmdline")
        .arg(&cmdline)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verified"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let v = sgdisk_verify(&target);
    assert!(v.contains("No problems found"), "{v}");
    let path = format!("/ostree/deploy/debian/deploy/{DEPLOYMENT}/etc/nodeboot/config.toml");
    assert_eq!(
        debugfs(&target, img.root_start, &format!("cat {path}")),
        CONFIG
    );
}

#[test]
fn failure_prints_one_line_and_exits_non_zero() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let target = sparse_target(dir.path(), 64);
    let out = nodeboot()
        .arg("install")
        .arg("--no-reboot")
        .arg("--device")
        .arg(&target)
        .arg("--image-url")
        .arg(format!("file://{}", img.raw.display()))
        .arg("--sha256")
        .arg("0".repeat(64))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("nodeboot install: FAILED: "))
        .unwrap_or_else(|| panic!("no FAILED line:\n{stderr}"));
    assert!(line.contains("sha256 mismatch"), "{line}");
    assert!(line.contains("not bootable"), "{line}");
    assert_unbootable(&target);

    // Flags without the rest are a usage error, not an install.
    let out = nodeboot()
        .args(["install", "--no-reboot", "--device", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A server that sends `send` bytes of `body` and then stalls with the connection open.
fn stalling_server(body: Vec<u8>, send: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body[..send]);
                let _ = conn.flush();
                std::thread::sleep(Duration::from_secs(120));
            });
        }
    });
    format!("http://{addr}/stall.raw")
}

#[test]
fn killed_mid_download_leaves_no_partition_table() {
    let img = image();
    // Start from a disk that had a table: the installer clears it before streaming.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("used.disk");
    std::fs::write(&target, noise((64 * MIB) as usize, 11)).unwrap();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+8M"])
        .arg(&target));
    let url = stalling_server(img.bytes.clone(), (30 * MIB) as usize);
    let mut child = nodeboot()
        .arg("install")
        .arg("--no-reboot")
        .arg("--wipe")
        .arg("--device")
        .arg(&target)
        .arg("--image-url")
        .arg(&url)
        .arg("--sha256")
        .arg(img.sha256.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until image data has reached the disk (the /boot partition's bytes), then kill:
    // no error path, no cleanup.
    let boot = (partitions(&img.raw)[2].0 * 512) as usize;
    let started = Instant::now();
    loop {
        let disk = std::fs::read(&target).unwrap();
        if disk[boot..boot + 4096] == img.bytes[boot..boot + 4096] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the installer never wrote image data"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_unbootable(&target);
}

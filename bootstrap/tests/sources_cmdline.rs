//! The kernel command line source: `nodeboot.config=URL` (http, file) with `${mac}`,
//! `${uuid}`, `${hostname}`, and `ds=nocloud;s=SEED`, against a fake root directory and an
//! in-process HTTP server.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodeboot::sources::{
    fetch_user_data, fetch_user_data_and_meta, source_for, SourceError, SourceKind, SourceOptions,
};
use nodeimg_tests::fakes::{text, FakeServer};

const DOC: &[u8] = b"version = 1\n";

fn root_with_cmdline(line: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "proc/cmdline", line.as_bytes());
    root
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn opts(root: &Path) -> SourceOptions {
    SourceOptions {
        kind: SourceKind::Cmdline,
        cmdline_path: root.join("proc/cmdline"),
        root: root.to_path_buf(),
        local_file: root.join("etc/nodeboot/config.toml"),
        timeout: Duration::from_secs(2),
        retries: 1,
        backoff: Duration::from_millis(10),
        ..SourceOptions::default()
    }
}

/// A config server answering every path with DOC and recording the paths asked for.
fn config_server() -> (FakeServer, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let server = FakeServer::start(move |req| {
        s.lock().unwrap().push(req.url.clone());
        if req.path().ends_with("/missing") {
            text(404, "nope")
        } else {
            text(200, DOC)
        }
    });
    (server, seen)
}

#[test]
fn url_with_bootif_mac_uuid_and_hostname() {
    let (server, seen) = config_server();
    let root = root_with_cmdline(&format!(
        "BOOT_IMAGE=/vmlinuz ro BOOTIF=01-52-54-00-AB-CD-EF nodeboot.config={}/nodes/${{mac}}/${{uuid}}/${{hostname}}.toml quiet\n",
        server.url()
    ));
    write(
        root.path(),
        "sys/class/dmi/id/product_uuid",
        b"4C4C4544-0042-3510-8057-B7C04F4B4E32\n",
    );
    write(root.path(), "proc/sys/kernel/hostname", b"node-7\n");
    let ud = fetch_user_data(&opts(root.path())).unwrap();
    assert_eq!((ud.source, ud.bytes.as_slice()), ("cmdline", DOC));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["/nodes/52:54:00:ab:cd:ef/4c4c4544-0042-3510-8057-b7c04f4b4e32/node-7.toml"]
    );
}

#[test]
fn mac_falls_back_to_first_physical_interface() {
    let (server, seen) = config_server();
    let root = root_with_cmdline(&format!("nodeboot.config={}/m/${{mac}}", server.url()));
    let r = root.path();
    // `lo` and a virtual bridge (no `device` link) must not win over the physical NIC.
    write(r, "sys/class/net/lo/address", b"00:00:00:00:00:00\n");
    write(r, "sys/class/net/br0/address", b"02:42:ac:11:00:01\n");
    write(r, "sys/class/net/ens3/address", b"52:54:00:12:34:56\n");
    fs::create_dir_all(r.join("sys/class/net/ens3/device")).unwrap();
    fetch_user_data(&opts(r)).unwrap();
    assert_eq!(seen.lock().unwrap().as_slice(), ["/m/52:54:00:12:34:56"]);
}

#[test]
fn unknown_variable_and_missing_sources_are_reported() {
    let root = root_with_cmdline("nodeboot.config=http://127.0.0.1:9/${serial}");
    let msg = format!("{:#}", fetch_user_data(&opts(root.path())).unwrap_err());
    assert!(msg.contains("unknown variable ${serial}"), "{msg}");
    let root = root_with_cmdline("nodeboot.config=http://127.0.0.1:9/${uuid}");
    let msg = format!("{:#}", fetch_user_data(&opts(root.path())).unwrap_err());
    assert!(msg.contains("product_uuid"), "{msg}");
}

#[test]
fn file_url() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "srv/node.toml", DOC);
    let url = url::Url::from_file_path(root.path().join("srv/node.toml")).unwrap();
    write(
        root.path(),
        "proc/cmdline",
        format!("nodeboot.config={url}").as_bytes(),
    );
    assert_eq!(fetch_user_data(&opts(root.path())).unwrap().bytes, DOC);
    write(
        root.path(),
        "proc/cmdline",
        b"nodeboot.config=file:///nonexistent/x.toml",
    );
    let msg = format!("{:#}", fetch_user_data(&opts(root.path())).unwrap_err());
    assert!(msg.contains("/nonexistent/x.toml"), "{msg}");
}

#[test]
fn explicit_url_that_fails_is_an_error_not_absent() {
    let (server, _) = config_server();
    let root = root_with_cmdline(&format!("nodeboot.config={}/missing", server.url()));
    let err = source_for(SourceKind::Cmdline, &opts(root.path()))
        .unwrap()
        .fetch()
        .unwrap_err();
    assert!(matches!(err, SourceError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    let root = root_with_cmdline("nodeboot.config=ftp://example/x");
    let msg = format!("{:#}", fetch_user_data(&opts(root.path())).unwrap_err());
    assert!(msg.contains("unsupported scheme `ftp`"), "{msg}");
}

#[test]
fn nocloud_seed_url_with_identity() {
    let (server, seen) = config_server();
    let root = root_with_cmdline(&format!(
        "ro ds=nocloud-net;s={}/seed;h=cp-0;i=iid-42 console=ttyS0",
        server.url()
    ));
    let (ud, meta) = fetch_user_data_and_meta(&opts(root.path())).unwrap();
    assert_eq!(ud.bytes, DOC);
    assert_eq!(meta.hostname.as_deref(), Some("cp-0"));
    assert_eq!(meta.instance_id.as_deref(), Some("iid-42"));
    assert_eq!(seen.lock().unwrap().as_slice(), ["/seed/user-data"]);
}

#[test]
fn no_parameter_means_absent() {
    let root = root_with_cmdline("BOOT_IMAGE=/vmlinuz root=UUID=1234 ro ds=nocloud");
    let src = source_for(SourceKind::Cmdline, &opts(root.path())).unwrap();
    let err = src.fetch().unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Absent {
                source_name: "cmdline",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn oversize_file_url_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let big = root.path().join("big.toml");
    let f = fs::File::create(&big).unwrap();
    f.set_len(10 * 1024 * 1024).unwrap();
    let url = url::Url::from_file_path(&big).unwrap();
    write(
        root.path(),
        "proc/cmdline",
        format!("nodeboot.config={url}").as_bytes(),
    );
    let msg = format!("{:#}", fetch_user_data(&opts(root.path())).unwrap_err());
    assert!(msg.contains("larger than the limit"), "{msg}");
}

//! The health gate: checks against the kubelet double, a stand-in for `systemctl is-active`,
//! a fake API server (plain HTTP, tiny_http) and a real TLS server with client-certificate
//! authentication (`openssl s_server`); then the whole upgrade → boot → gate → confirm or
//! roll back flow on a real staged OSTree sysroot.

mod lifecycle_support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_support::{systemctl_double, Fixture, Kubelet, TestClock};
use nodeboot::firstboot::Clock;
use nodeboot::lifecycle::bootcount;
use nodeboot::lifecycle::gate::{self, Node, RollbackOutcome, UpgradeOptions, UpgradeOutcome};
use nodeboot::lifecycle::health::{self, CheckResult, HealthConfig};
use nodeboot::lifecycle::os_state::{OsState, OsStateStore, Refusal};
use nodeboot::lifecycle::ostree_ops;
use nodeimg_common::Cmd;
use time::OffsetDateTime;

/// A Ready Node whose kubelet last reported at `heartbeat` (RFC 3339).
fn node_ready_at(heartbeat: &str) -> &'static str {
    let json = format!(
        r#"{{"kind":"Node","apiVersion":"v1","metadata":{{"name":"worker-1"}},
"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status","lastHeartbeatTime":"{heartbeat}"}}]}}}}"#
    );
    // The fake servers hold their answer for the whole test process.
    Box::leak(json.into_boxed_str())
}

/// A Ready Node that reported just now (after this host booted, as the gate requires).
fn node_ready() -> &'static str {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    node_ready_at(&now)
}
const NODE_NOT_READY: &str = r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"worker-1"},
"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"container runtime network not ready"}]}}"#;

fn get(url: &str) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn kubelet_double_answers_and_fails_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("fault");
    // The flags kubeadm's kubelet drop-in passes: accepted and ignored.
    let k = Kubelet::start(
        &fault,
        &[
            "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
            "--kubeconfig=/etc/kubernetes/kubelet.conf",
            "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
            "--pod-infra-container-image",
            "registry.k8s.io/pause:3.10",
        ],
    );
    assert_eq!(get(&k.healthz), (200, "ok".to_owned()));
    std::fs::write(&fault, "unhealthy\n").unwrap();
    let (code, body) = get(&k.healthz);
    assert_eq!(code, 500);
    assert!(body.contains("healthz check failed"), "{body}");
    std::fs::remove_file(&fault).unwrap();
    assert_eq!(get(&k.healthz).0, 200);
    assert_eq!(get(&k.healthz.replace("/healthz", "/metrics")).0, 404);
}

#[test]
fn kubelet_double_reads_its_address_like_the_kubelet() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nhealthzBindAddress: 127.0.0.1\nhealthzPort: {port}\ncgroupDriver: systemd\n"),
    )
    .unwrap();
    let mut child = std::process::Command::new(lifecycle_support::kubelet_double())
        .arg(format!("--config={}", config.display()))
        .env_remove("KUBELET_DOUBLE_LISTEN")
        .env("KUBELET_DOUBLE_FAULT_FILE", dir.path().join("none"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        format!("kubelet-double: serving http://127.0.0.1:{port}/healthz")
    );
    assert_eq!(get(&format!("http://127.0.0.1:{port}/healthz")).1, "ok");
    let _ = child.kill();
    let _ = child.wait();

    // The `exit` fault: the process fails at start, nothing listens.
    let out = std::process::Command::new(lifecycle_support::kubelet_double())
        .env("KUBELET_DOUBLE_FAULT", "exit")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

fn config(dir: &Path, healthz: &str) -> HealthConfig {
    HealthConfig {
        deadline: Duration::from_secs(60),
        poll_interval: Duration::from_secs(10),
        systemctl: systemctl_double(dir),
        kubelet_healthz: healthz.to_owned(),
        kubeconfig: dir.join("kubelet.conf"),
        ..HealthConfig::default()
    }
}

#[test]
fn checks_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kubelet::start(&dir.path().join("fault"), &[]);
    let cfg = config(dir.path(), &k.healthz);
    let checks = health::check_once(&cfg);
    assert_eq!(checks.len(), 3);
    assert!(matches!(checks[0].result, CheckResult::Pass { .. }));
    assert!(matches!(checks[1].result, CheckResult::Pass { .. }));
    assert!(
        matches!(&checks[2].result, CheckResult::Skipped { reason } if reason.contains("not joined"))
    );

    std::fs::write(dir.path().join("kubelet"), "activating").unwrap();
    let checks = health::check_once(&cfg);
    assert_eq!(checks.len(), 1, "stops at the first failure");
    assert_eq!(
        checks[0].result,
        CheckResult::Fail {
            reason: "unit kubelet is activating".into()
        }
    );
    std::fs::remove_file(dir.path().join("kubelet")).unwrap();

    std::fs::write(dir.path().join("fault"), "unhealthy").unwrap();
    let checks = health::check_once(&cfg);
    let CheckResult::Fail { reason } = &checks[1].result else {
        panic!("{checks:?}")
    };
    assert!(
        reason.contains("500") && reason.contains("[-]syncloop failed"),
        "{reason}"
    );

    // Nothing listening.
    let cfg = config(dir.path(), "http://127.0.0.1:9/healthz");
    let checks = health::check_once(&cfg);
    assert!(
        matches!(&checks[1].result, CheckResult::Fail { reason } if reason.starts_with("http://127.0.0.1:9/healthz: "))
    );
}

/// A clock whose sleeps also run a hook: lets a test change the world between attempts.
#[derive(Debug)]
struct HookClock {
    inner: Arc<TestClock>,
    sleeps: Mutex<u32>,
    at_sleep: u32,
    flip: std::path::PathBuf,
}

impl Clock for HookClock {
    fn now(&self) -> OffsetDateTime {
        self.inner.now()
    }
    fn sleep(&self, d: Duration) {
        self.inner.sleep(d);
        let mut n = self.sleeps.lock().unwrap();
        *n += 1;
        if *n == self.at_sleep {
            let _ = std::fs::remove_file(&self.flip);
        }
    }
}

#[test]
fn the_gate_polls_until_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kubelet::start(&dir.path().join("fault"), &[]);
    let cfg = config(dir.path(), &k.healthz);
    std::fs::write(dir.path().join("containerd"), "failed").unwrap();
    let clock = TestClock::new();
    let start = clock.now();
    let report = health::run_gate(&cfg, start + time::Duration::seconds(60), clock.as_ref());
    assert!(!report.passed);
    // Attempts at 0, 10, ..., 60 s; none would start after the deadline.
    assert_eq!(report.attempts, 7);
    assert_eq!(clock.now() - start, time::Duration::seconds(60));
    assert_eq!(
        report.reason.as_deref(),
        Some("units: unit containerd is failed")
    );

    // containerd comes up after the second wait: the third attempt passes.
    let hook = HookClock {
        inner: TestClock::new(),
        sleeps: Mutex::new(0),
        at_sleep: 2,
        flip: dir.path().join("containerd"),
    };
    let start = hook.now();
    let report = health::run_gate(&cfg, start + time::Duration::seconds(60), &hook);
    assert!(report.passed, "{report:?}");
    assert_eq!(report.attempts, 3);
    assert_eq!(report.reason, None);
}

/// A fake API server over plain HTTP: serves one Node object, 404 for others. (TLS with
/// client certificates is tested against `openssl s_server` below.)
fn fake_apiserver(node_json: &'static str) -> (String, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let s = server.clone();
    std::thread::spawn(move || {
        for req in s.incoming_requests() {
            let resp = if req.url() == "/api/v1/nodes/worker-1" {
                tiny_http::Response::from_string(node_json).with_status_code(200)
            } else {
                tiny_http::Response::from_string(
                    r#"{"kind":"Status","status":"Failure","reason":"NotFound","code":404}"#,
                )
                .with_status_code(404)
            };
            let _ = req.respond(resp);
        }
    });
    (url, server)
}

#[test]
fn node_ready_through_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kubelet::start(&dir.path().join("fault"), &[]);
    let mut cfg = config(dir.path(), &k.healthz);
    let (ready, _s1) = fake_apiserver(node_ready());
    let kubeconfig = |server: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: x\ncurrent-context: x\nusers:\n- name: u\n  user: {{}}\n"
        )
    };
    std::fs::write(&cfg.kubeconfig, kubeconfig(&ready)).unwrap();
    cfg.node_name = Some("worker-1".into());
    let checks = health::check_once(&cfg);
    assert_eq!(
        checks[2].result,
        CheckResult::Pass {
            detail: "Ready (KubeletReady)".into()
        }
    );
    cfg.node_name = Some("worker-2".into());
    let CheckResult::Fail { reason } = &health::check_once(&cfg)[2].result else {
        panic!()
    };
    assert!(reason.contains("404"), "{reason}");

    let (not_ready, _s2) = fake_apiserver(NODE_NOT_READY);
    std::fs::write(&cfg.kubeconfig, kubeconfig(&not_ready)).unwrap();
    cfg.node_name = Some("worker-1".into());
    let CheckResult::Fail { reason } = &health::check_once(&cfg)[2].result else {
        panic!()
    };
    assert!(
        reason.contains("Ready is False (KubeletNotReady"),
        "{reason}"
    );

    // Ready, but last reported before this host booted: what the API server still says about
    // a node that rebooted into a new OS whose kubelet never came back.
    let (stale, _s3) = fake_apiserver(node_ready_at("2020-01-01T00:00:00Z"));
    std::fs::write(&cfg.kubeconfig, kubeconfig(&stale)).unwrap();
    let CheckResult::Fail { reason } = &health::check_once(&cfg)[2].result else {
        panic!()
    };
    assert!(reason.contains("from before this boot"), "{reason}");
}

fn openssl(dir: &Path, args: &[&str]) {
    Cmd::new("openssl")
        .args(args)
        .current_dir(dir)
        .run()
        .unwrap_or_else(|e| panic!("openssl {args:?}: {e}"));
}

/// mTLS as the kubelet does it: cluster CA only, client certificate `system:node:<name>`.
#[test]
fn node_ready_over_tls_with_the_kubelet_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=kubernetes",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
        ]
        .concat(),
    );
    std::fs::write(d.join("srv.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "2",
            "-extfile",
            "srv.ext",
        ],
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "client.key",
                "-out",
                "client.csr",
                "-subj",
                "/O=system:nodes/CN=system:node:worker-1",
            ],
        ]
        .concat(),
    );
    // X.509 v3 with clientAuth, as the kubelet's certificates are (webpki refuses v1).
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
    // kubeadm's rotated kubelet credential: certificate and key in one file.
    let mut pem = std::fs::read(d.join("client.crt")).unwrap();
    pem.extend(std::fs::read(d.join("client.key")).unwrap());
    std::fs::create_dir(d.join("pki")).unwrap();
    std::fs::write(d.join("pki/kubelet-client-current.pem"), &pem).unwrap();
    assert_eq!(health::node_name_from_cert(&pem).unwrap(), "worker-1");

    // `s_server -WWW` serves files under its working directory.
    let www = d.join("www");
    std::fs::create_dir_all(www.join("api/v1/nodes")).unwrap();
    std::fs::write(www.join("api/v1/nodes/worker-1"), node_ready()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-WWW", "-Verify", "1", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(d.join("ca.crt"))
        .arg("-cert")
        .arg(d.join("srv.crt"))
        .arg("-key")
        .arg(d.join("srv.key"))
        .current_dir(&www)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    while !line.contains("ACCEPT") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "s_server exited"
        );
    }

    let k = Kubelet::start(&d.join("fault"), &[]);
    let cfg = config(d, &k.healthz);
    let ca = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(d.join("ca.crt")).unwrap(),
    );
    let kubeconfig = |user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://127.0.0.1:{port}\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: x\ncurrent-context: x\nusers:\n- name: u\n  user:{user}\n"
        )
    };
    std::fs::write(
        &cfg.kubeconfig,
        kubeconfig("\n    client-certificate: pki/kubelet-client-current.pem\n    client-key: pki/kubelet-client-current.pem"),
    )
    .unwrap();
    // Node name from the certificate.
    let checks = health::check_once(&cfg);
    let result = checks[2].result.clone();
    // Without a client certificate the server refuses the handshake.
    std::fs::write(&cfg.kubeconfig, kubeconfig(" {}")).unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.node_name = Some("worker-1".into());
    let refused = health::check_once(&cfg2)[2].result.clone();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        result,
        CheckResult::Pass {
            detail: "Ready (KubeletReady)".into()
        }
    );
    assert!(
        matches!(&refused, CheckResult::Fail { reason } if reason.contains("CertificateRequired")),
        "{refused:?}"
    );
}

/// A node on the staged sysroot, booted into menu entry `entry`, in boot `boot_id`.
fn node(fx: &Fixture, state: &Path, entry: usize, boot_id: &str, clock: Arc<TestClock>) -> Node {
    Node {
        sysroot: fx.spec(fx.boot_entry(entry)),
        state_dir: state.join("state"),
        grubenv: state.join("boot/grub/grubenv"),
        boot_tries: 3,
        boot_id: boot_id.to_owned(),
        reboot: vec!["touch".into(), state.join("rebooted").into()],
        clock,
    }
}

fn booted_commit(n: &Node) -> String {
    ostree_ops::status(&n.sysroot)
        .unwrap()
        .booted()
        .unwrap()
        .checksum
        .to_string()
}

#[test]
fn upgrade_confirm_fail_rollback_and_fallback_on_a_staged_sysroot() {
    let fx = Fixture::new();
    let t = tempfile::tempdir().unwrap();
    let st = t.path();
    std::fs::create_dir_all(st.join("boot/grub")).unwrap();
    let k = Kubelet::start(&st.join("fault"), &[]);
    let cfg = config(st, &k.healthz);
    let clock = TestClock::new();
    let store = OsStateStore::new(st.join("state"));
    let grubenv = st.join("boot/grub/grubenv");

    // Upgrade to v2 in boot 1.
    let v2 = fx.publish("2", "kernel-a");
    let n1 = node(&fx, st, 0, "boot-1", clock.clone());
    let out = gate::upgrade(&n1, &UpgradeOptions::default()).unwrap();
    assert!(
        matches!(out, UpgradeOutcome::Deployed { ref to, boot_counting: true, rebooting: false, .. } if to.checksum.as_str() == v2)
    );
    assert_eq!(bootcount::armed(&grubenv).unwrap(), Some(3));
    assert!(store.marker_path().exists());
    // A second upgrade in the same boot is refused before pulling.
    let err = gate::upgrade(&n1, &UpgradeOptions::default()).unwrap_err();
    assert!(err.downcast_ref::<Refusal>().is_some(), "{err}");
    // The gate in the same boot waits for the reboot.
    let h = gate::health(&n1, &cfg).unwrap();
    assert!(h.report.is_none() && h.after.name() == "pending", "{h:?}");

    // Boot 2 runs entry 0 = v2; healthy: confirmed, counter disarmed, marker gone.
    let n2 = node(&fx, st, 0, "boot-2", clock.clone());
    assert_eq!(booted_commit(&n2), v2);
    let h = gate::health(&n2, &cfg).unwrap();
    assert!(h.healthy(), "{h:?}");
    assert!(matches!(h.after, OsState::Confirmed { ref commit, .. } if commit.as_str() == v2));
    assert_eq!(bootcount::armed(&grubenv).unwrap(), None);
    assert!(!store.marker_path().exists());
    // Upgrading to what runs is a no-op.
    assert!(matches!(
        gate::upgrade(&n2, &UpgradeOptions::default()).unwrap(),
        UpgradeOutcome::AlreadyBooted { .. }
    ));

    // v3 breaks the kubelet: the gate rolls back to v2 and reboots.
    let v3 = fx.publish("3", "kernel-b");
    gate::upgrade(&n2, &UpgradeOptions::default()).unwrap();
    let n3 = node(&fx, st, 0, "boot-3", clock.clone());
    assert_eq!(booted_commit(&n3), v3);
    std::fs::write(st.join("fault"), "unhealthy").unwrap();
    let h = gate::health(&n3, &cfg).unwrap();
    std::fs::remove_file(st.join("fault")).unwrap();
    assert!(!h.healthy() && h.rebooting, "{h:?}");
    assert!(st.join("rebooted").exists(), "reboot command ran");
    let OsState::RolledBack {
        reason,
        automatic: true,
        ..
    } = &h.after
    else {
        panic!("{h:?}")
    };
    assert!(reason.starts_with("kubelet-healthz: "), "{reason}");
    assert_eq!(fx.cli_order(), [v2.clone(), v3.clone()]);
    assert_eq!(bootcount::armed(&grubenv).unwrap(), None);
    assert!(
        store.marker_path().exists(),
        "the restored deployment is verified next boot"
    );

    // Boot 4 runs v2 again; the gate verifies it and settles.
    let n4 = node(&fx, st, 0, "boot-4", clock.clone());
    assert_eq!(booted_commit(&n4), v2);
    let h = gate::health(&n4, &cfg).unwrap();
    assert!(h.healthy(), "{h:?}");
    assert!(!store.marker_path().exists());
    // v3 is not retried unless asked.
    let err = gate::upgrade(&n4, &UpgradeOptions::default()).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Refusal>(),
            Some(Refusal::KnownBad { .. })
        ),
        "{err}"
    );

    // v4 never reaches userspace: GRUB's counter runs out and boots entry 1 (v2).
    let v4 = fx.publish("4", "kernel-c");
    gate::upgrade(&n4, &UpgradeOptions::default()).unwrap();
    assert_eq!(fx.cli_order(), [v4.clone(), v2.clone()]);
    let n5 = node(&fx, st, 1, "boot-5", clock.clone());
    assert_eq!(booted_commit(&n5), v2);
    let h = gate::health(&n5, &cfg).unwrap();
    assert!(
        matches!(h.after, OsState::Confirmed { ref commit, .. } if commit.as_str() == v2),
        "{h:?}"
    );
    assert_eq!(
        fx.cli_order(),
        [v2.clone(), v4.clone()],
        "v2 is the default again"
    );
    let doc = store.load().unwrap();
    assert!(doc
        .failures
        .iter()
        .any(|f| f.commit.as_str() == v4 && f.automatic_rollbacks == 1));
    assert_eq!(bootcount::armed(&grubenv).unwrap(), None);

    // Manual rollback goes to the other deployment (v4) without pulling; then discard path.
    let out = gate::rollback(&n5, false).unwrap();
    assert!(
        matches!(out, RollbackOutcome::Reordered { ref restored, .. } if restored.checksum.as_str() == v4)
    );
    assert_eq!(fx.cli_order(), [v4.clone(), v2.clone()]);
}

#[test]
fn manual_rollback_before_the_reboot_discards_the_upgrade() {
    let fx = Fixture::new();
    let t = tempfile::tempdir().unwrap();
    let st = t.path();
    std::fs::create_dir_all(st.join("boot/grub")).unwrap();
    fx.publish("2", "kernel-b");
    let n = node(&fx, st, 0, "boot-1", TestClock::new());
    gate::upgrade(&n, &UpgradeOptions::default()).unwrap();
    let out = gate::rollback(&n, false).unwrap();
    assert!(matches!(out, RollbackOutcome::DiscardedPending { ref removed } if removed.len() == 1));
    assert_eq!(fx.cli_order(), std::slice::from_ref(&fx.v1));
    let store = OsStateStore::new(st.join("state"));
    assert_eq!(store.load().unwrap().state.name(), "idle");
    assert!(!store.marker_path().exists());
    assert_eq!(
        bootcount::armed(&st.join("boot/grub/grubenv")).unwrap(),
        None
    );
    // Nothing left to roll back to.
    let err = gate::rollback(&n, false).unwrap_err();
    assert_eq!(
        err.downcast_ref::<Refusal>(),
        Some(&Refusal::NoRollbackTarget)
    );
}

//! End to end (run by `ci/e2e-lifecycle`, ignored by `cargo test`): the OS lifecycle of one
//! node in qemu, on one persistent qcow2 overlay, against the images `nodeimg build --repo`
//! made from `tests/recipes/e2e-v{1,2,3,4}*.toml` into one archive repository (same ref):
//!
//! 1. v1 first boot, then `nodeboot upgrade --version 2.0.0 --remote URL --reboot`, the
//!    repository served by this test on 127.0.0.1 and reached through a qemu `guestfwd`;
//! 2. v2 boots, the health gate confirms it, every check passing: units, kubelet /healthz and
//!    the Node `Ready` as the API server reports it to the kubelet's own credentials (the
//!    kubeadm double's kubelet.conf; the API server stand-in the kubelet double runs from
//!    kubeadm's static pod manifest); `nodeboot upgrade --version 3.0.0 --reboot`;
//! 3. v3's kubelet fails /healthz (and posts NotReady): the gate fails on /healthz, the first
//!    failing check, rolls back and reboots by itself;
//! 4. v2 again, the restored deployment is verified, v3 is recorded as failed and refused
//!    when asked for again; `nodeboot upgrade --reboot` follows the ref to v4;
//! 5. v4's initramfs is garbage: the kernel panics (panic=10 reboots it) until GRUB's boot
//!    counter runs out and boots the previous entry; the gate records v4 as failed.
//!
//! Every step is asserted from the serial console: the boot report (`E2E-BOOTED`), the
//! health gate's own output, and what the image's test hook prints (`nodeboot status --json`,
//! command output). Timings go to stderr as `E2E-TIMING` / `E2E-BENCH` lines.
//!
//! Inputs from the environment:
//! - `NODEIMG_E2E_IMAGES` (required): the `--output` directory of the four builds;
//! - `NODEIMG_E2E_WORKDIR` (default `/var/tmp/nodeimg-e2e-lifecycle`): overlay, seeds, logs
//!   (under `node/`, or `node-uefi/` with OVMF);
//! - `NODEIMG_E2E_FIRMWARE` (`bios`, the default, or `uefi`): SeaBIOS or OVMF.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use nodeimg_builder::boot::{Firmware, UserNet};
use support::*;

const BOOT: Duration = Duration::from_secs(900);

/// First boot of v1: the initial state, then the upgrade to v2 with a URL override.
fn hook_upgrade_to_v2() -> String {
    format!(
        "e2e_where\ne2e_status\necho E2E-UPGRADE-BEGIN\n\
         e2e_run upgrade nodeboot upgrade --version 2.0.0 --remote {} --reboot \
         || systemctl --no-block poweroff\n",
        guest_repo_url()
    )
}

const HOOK_CONFIRMED_THEN_V3: &str = "e2e_where\ne2e_status\n\
echo \"E2E-SYSCTL: vm.max_map_count=$(cat /proc/sys/vm/max_map_count)\"\n\
echo \"E2E-KUBELET-CONF-SERVER: $(sed -n 's/^ *server: //p' /etc/kubernetes/kubelet.conf)\"\n\
echo \"E2E-KUBELET-POSTED: $(journalctl -b -u kubelet -o cat | grep -m1 'kubelet-double: posted')\"\n\
echo E2E-UPGRADE-BEGIN\n\
e2e_run upgrade nodeboot upgrade --version 3.0.0 --reboot || systemctl --no-block poweroff\n";

/// Runs only if v3 got through its gate (a failure of the test).
const HOOK_REPORT_AND_POWEROFF: &str = "e2e_where\ne2e_status\nsystemctl --no-block poweroff\n";

const HOOK_ROLLED_BACK_THEN_V4: &str = "e2e_where\ne2e_status\n\
e2e_run refused nodeboot upgrade --version 3.0.0\n\
echo E2E-UPGRADE-BEGIN\n\
e2e_run upgrade nodeboot upgrade --reboot || systemctl --no-block poweroff\n";

const HOOK_AFTER_FALLBACK: &str = "e2e_where\ne2e_status\n\
echo \"E2E-GRUBENV: $(grep -v '^#' /boot/grub/grubenv | tr '\\n' ' ')\"\n\
systemctl --no-block poweroff\n";

/// The gate's confirmation as `nodeboot health` prints it.
const CONFIRMED_RE: &str = r"os state: \S+ -> confirmed: ";

struct Series {
    v1: Build,
    v2: Build,
    v3: Build,
    v4: Build,
}

impl Series {
    fn load() -> Series {
        let dir = PathBuf::from(std::env::var("NODEIMG_E2E_IMAGES").expect("NODEIMG_E2E_IMAGES"));
        let b = |v: &str| Build::load(&dir.join(format!("k8s-node-e2e-{v}"))).unwrap();
        let s = Series {
            v1: b("1.0.0"),
            v2: b("2.0.0"),
            v3: b("3.0.0"),
            v4: b("4.0.0"),
        };
        let all = [&s.v1, &s.v2, &s.v3, &s.v4];
        for w in all.windows(2) {
            assert_eq!(
                w[0].manifest.commit.ostree_ref,
                w[1].manifest.commit.ostree_ref
            );
            assert_eq!(w[0].repo(), w[1].repo(), "one repository for the series");
            assert_eq!(
                w[1].manifest.commit.parent.as_deref(),
                Some(w[0].commit()),
                "each build's commit follows the previous one on the ref"
            );
        }
        s
    }
}

fn deployment_roles(status: &serde_json::Value) -> Vec<(String, String)> {
    deployments(status)
        .into_iter()
        .map(|(role, commit, _)| (role, commit))
        .collect()
}

/// The health gate's per-check lines on the console (`ok    node-ready       Ready (...)`), as
/// (mark, check, text), from the gate's last attempt of this boot.
fn gate_checks(b: &BootLog) -> Vec<(String, String, String)> {
    b.text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("nodeboot-health[")?..];
            let rest = rest[rest.find("]: ")? + 3..].trim_end();
            let (mark, rest) = rest.split_once(' ')?;
            if !["ok", "FAIL", "skip"].contains(&mark) {
                return None;
            }
            let rest = rest.trim_start();
            let (check, text) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((mark.to_owned(), check.to_owned(), text.trim().to_owned()))
        })
        .collect()
}

/// The gate passed every check, Node-Ready included (not skipped).
fn assert_gate_passed_with_node_ready(b: &BootLog) {
    let checks = gate_checks(b);
    let marks: Vec<(&str, &str)> = checks
        .iter()
        .map(|(m, c, _)| (m.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        marks,
        [
            ("ok", "units"),
            ("ok", "kubelet-healthz"),
            ("ok", "node-ready")
        ],
        "boot {}: {checks:?}\n{}",
        b.name,
        b.tail(60)
    );
    assert_eq!(checks[2].2, "Ready (KubeletReady)", "boot {}", b.name);
}

fn failures(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["os"]["state"]["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
#[ignore = "boots real images for ~15 minutes; run by ci/e2e-lifecycle"]
fn upgrade_health_gate_rollback_and_boot_counting_on_one_node() {
    let s = Series::load();
    let (c1, c2, c3, c4) = (s.v1.commit(), s.v2.commit(), s.v3.commit(), s.v4.commit());
    let work = PathBuf::from(env_or(
        "NODEIMG_E2E_WORKDIR",
        "/var/tmp/nodeimg-e2e-lifecycle",
    ));
    let serve_root = s.v1.repo().parent().unwrap().to_path_buf();
    assert_eq!(
        s.v1.repo().file_name().unwrap(),
        "repo",
        "the repository is served at /repo"
    );
    let server = StaticServer::start(&serve_root);
    let net = UserNet {
        hostfwd: vec![],
        guestfwd: vec![(
            GUEST_SERVICE_ADDR.to_owned(),
            GUEST_REPO_PORT,
            server.port(),
        )],
    };
    let user_data =
        std::fs::read_to_string(repo_root().join("tests/recipes/e2e/user-data.toml")).unwrap();
    // Under OVMF the node gets a directory of its own, so a BIOS run's logs stay.
    let dir = match firmware() {
        Firmware::Bios => work.join("node"),
        Firmware::Uefi => work.join("node-uefi"),
    };
    let mut node = Node::new(&s.v1.qcow2().unwrap(), &dir, &user_data, net).unwrap();
    eprintln!("E2E-TIMING firmware={}", node.firmware);

    // --- 1. v1, first boot, upgrade to v2 over HTTP ---
    let b1 = node
        .boot(
            "v1",
            &hook_upgrade_to_v2(),
            &[("upgrade", "E2E-UPGRADE-BEGIN")],
            BOOT,
        )
        .unwrap();
    assert_eq!(b1.one("E2E-BOOTED"), c1, "{}", b1.tail(40));
    assert_eq!(b1.one("E2E-HOOK-VERSION"), "1.0.0");
    let st = b1.status();
    assert_eq!(st["complete"], true, "first boot completed: {st}");
    assert_eq!(os_state(&st), "idle");
    assert_eq!(deployment_roles(&st), [("booted".into(), c1.to_owned())]);
    let (out, rc) = b1.run_output("upgrade");
    assert_eq!(rc, 0, "{out:?}");
    assert!(
        out.iter().any(|l| l.contains("deployed version 2.0.0")),
        "{out:?}"
    );
    let pulled_v1_v2 = server.bytes_served();
    let delta_requests = server
        .requests()
        .iter()
        .filter(|(p, st, _)| p.starts_with("/repo/deltas/") && *st == 200)
        .count();
    eprintln!(
        "E2E-BENCH upgrade v1->v2 in the guest: {pulled_v1_v2} bytes over HTTP, {} requests, {delta_requests} static delta files",
        server.requests().len()
    );

    // --- 2. v2 boots, the gate confirms it; upgrade to v3 ---
    let b2 = node
        .boot(
            "v2",
            HOOK_CONFIRMED_THEN_V3,
            &[
                ("confirmed", CONFIRMED_RE),
                ("upgrade", "E2E-UPGRADE-BEGIN"),
            ],
            BOOT,
        )
        .unwrap();
    assert_eq!(b2.one("E2E-BOOTED"), c2, "{}", b2.tail(60));
    assert_eq!(b2.one("E2E-HOOK-VERSION"), "2.0.0");
    assert_eq!(b2.one("E2E-SYSCTL"), "vm.max_map_count=262144");
    let st = b2.status();
    assert_eq!(os_state(&st), "confirmed", "{st}");
    assert_eq!(st["os"]["state"]["state"]["commit"], c2);
    assert_eq!(
        deployment_roles(&st),
        [
            ("booted".into(), c2.to_owned()),
            ("rollback".into(), c1.to_owned())
        ]
    );
    assert!(
        st["os"]["boot-counter"].is_null(),
        "the gate disarmed the counter: {st}"
    );
    // The Node-Ready check ran against the API server with kubelet.conf's credentials.
    assert_gate_passed_with_node_ready(&b2);
    assert_eq!(b2.one("E2E-KUBELET-CONF-SERVER"), "https://127.0.0.1:6443");
    assert_eq!(
        b2.one("E2E-KUBELET-POSTED"),
        "kubelet-double: posted: node e2e-0 Ready=True (KubeletReady) via https://127.0.0.1:6443"
    );
    let node_ready_attempts = b2
        .text
        .lines()
        .filter(|l| l.contains("health check attempt=") && l.contains("failure=\"node-ready:"))
        .count();
    let (out, rc) = b2.run_output("upgrade");
    assert_eq!(rc, 0, "{out:?}");
    assert!(
        out.iter().any(|l| l.contains("deployed version 3.0.0")),
        "{out:?}"
    );
    let upgrade_to_confirmed = b2.mark("confirmed").unwrap() - b1.mark("upgrade").unwrap();
    eprintln!(
        "E2E-BENCH nodeboot upgrade -> health confirmed (v1->v2, incl. reboot): {:.1}s",
        upgrade_to_confirmed.as_secs_f64()
    );

    // --- 3. v3: the kubelet is unhealthy, the gate rolls back and reboots ---
    let b3 = node
        .boot(
            "v3",
            HOOK_REPORT_AND_POWEROFF,
            // Logged just before `systemctl reboot` (the gate's summary may be cut off by it).
            &[("rollback", r"lifecycle::gate: rebooting")],
            BOOT,
        )
        .unwrap();
    assert!(
        b3.values("E2E-HOOK-START").is_empty(),
        "v3 must not get past its gate:\n{}",
        b3.tail(60)
    );
    // The first failing check ends each attempt: /healthz, before the Node-Ready check.
    let checks = gate_checks(&b3);
    assert_eq!(checks.len(), 2, "{checks:?}\n{}", b3.tail(60));
    assert_eq!(
        (checks[0].0.as_str(), checks[0].1.as_str()),
        ("ok", "units")
    );
    assert_eq!(
        (checks[1].0.as_str(), checks[1].1.as_str()),
        ("FAIL", "kubelet-healthz"),
        "{checks:?}"
    );
    assert!(
        checks[1].2.contains("500 Internal Server Error"),
        "the gate failed on the kubelet's /healthz: {checks:?}"
    );
    let gate_to_rollback = b3.mark("rollback").unwrap() - b3.started;

    // --- 4. v2 again: verified, v3 recorded and refused; upgrade follows the ref to v4 ---
    let b4 = node
        .boot(
            "v2-restored",
            HOOK_ROLLED_BACK_THEN_V4,
            &[("upgrade", "E2E-UPGRADE-BEGIN")],
            BOOT,
        )
        .unwrap();
    assert_eq!(b4.one("E2E-BOOTED"), c2, "{}", b4.tail(60));
    let st = b4.status();
    assert_eq!(os_state(&st), "confirmed", "{st}");
    assert_eq!(st["os"]["state"]["state"]["commit"], c2);
    let f = failures(&st);
    assert_eq!(f.len(), 1, "{st}");
    assert_eq!(f[0]["commit"], c3);
    assert_eq!(f[0]["version"], "3.0.0");
    assert_eq!(f[0]["automatic-rollbacks"], 1);
    let reason = f[0]["last-reason"].as_str().unwrap();
    assert!(
        reason.contains("kubelet-healthz") && reason.contains("500 Internal Server Error"),
        "{st}"
    );
    assert_gate_passed_with_node_ready(&b4);
    let (out, rc) = b4.run_output("refused");
    assert_ne!(rc, 0, "a version rolled back before is refused: {out:?}");
    assert!(
        out.iter()
            .any(|l| l.contains("failed its health gate before")),
        "{out:?}"
    );
    let (out, rc) = b4.run_output("upgrade");
    assert_eq!(rc, 0, "{out:?}");
    assert!(
        out.iter().any(|l| l.contains("deployed version 4.0.0")),
        "{out:?}"
    );

    // --- 5. v4 never reaches userspace; GRUB's counter runs out and boots v2 ---
    let mut panicked = 0;
    let fallback = loop {
        let b = node.boot("v4-try", HOOK_AFTER_FALLBACK, &[], BOOT).unwrap();
        if !b.values("E2E-HOOK-START").is_empty() {
            break b;
        }
        assert!(
            b.text.contains("Kernel panic"),
            "a boot of v4 ends in a kernel panic:\n{}",
            b.tail(30)
        );
        panicked += 1;
        assert!(panicked <= 3, "GRUB did not fall back after 3 tries");
    };
    assert_eq!(
        panicked, 3,
        "boot_counter=3: three tries of v4, then the fallback"
    );
    assert_eq!(fallback.one("E2E-BOOTED"), c2, "{}", fallback.tail(60));
    assert_gate_passed_with_node_ready(&fallback);
    let st = fallback.status();
    assert_eq!(os_state(&st), "confirmed", "{st}");
    assert_eq!(st["os"]["state"]["state"]["commit"], c2);
    let f = failures(&st);
    let v4 = f
        .iter()
        .find(|r| r["commit"] == c4)
        .unwrap_or_else(|| panic!("v4 recorded as failed: {st}"));
    assert_eq!(v4["version"], "4.0.0");
    assert!(st["os"]["boot-counter"].is_null(), "{st}");
    let grubenv = fallback.one("E2E-GRUBENV");
    assert!(grubenv.contains("boot_success=1"), "{grubenv}");
    assert!(!grubenv.contains("boot_counter="), "{grubenv}");
    assert_eq!(
        deployment_roles(&st)[0],
        ("booted".to_owned(), c2.to_owned()),
        "the booted v2 is the default again: {st}"
    );

    eprintln!(
        "E2E-BENCH v3 boot start -> gate gave up and rolled back: {:.1}s (deadline 90s)",
        gate_to_rollback.as_secs_f64()
    );
    eprintln!(
        "E2E-BENCH v2 gate: {node_ready_attempts} attempt(s) failed on node-ready before the kubelet had posted Ready"
    );
    eprintln!("E2E-BENCH proven: upgrade v1->v2 over HTTP with --remote, health confirm (Node Ready via the API server), v3 fail -> automatic rollback -> verified, v3 refused, v4 boot-count fallback after {panicked} panicked boots");
}

/// `ostree pull` of v2 into a repository holding v1, over HTTP from [`StaticServer`]; returns
/// the bytes served and the seconds it took.
fn pull_v2_over_v1(s: &Series, server: &StaticServer, static_deltas: bool) -> (u64, f64) {
    use nodeimg_common::Cmd;
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    let r = repo.to_str().unwrap();
    Cmd::new("ostree")
        .args(["init", "--mode=bare-user", &format!("--repo={r}")])
        .run()
        .unwrap();
    Cmd::new("ostree")
        .args([&format!("--repo={r}"), "pull-local"])
        .arg(s.v1.repo())
        .arg(s.v1.commit())
        .run()
        .unwrap();
    // The client follows the ref and has v1, as a node on v1 does: the static delta is
    // chosen from the local ref's commit.
    let ostree_ref = &s.v1.manifest.commit.ostree_ref;
    Cmd::new("ostree")
        .args([
            &format!("--repo={r}"),
            "refs",
            &format!("--create=e2e:{ostree_ref}"),
            s.v1.commit(),
        ])
        .run()
        .unwrap();
    Cmd::new("ostree")
        .args([
            &format!("--repo={r}"),
            "remote",
            "add",
            "--no-gpg-verify",
            "e2e",
            &format!("{}/repo", server.url()),
        ])
        .run()
        .unwrap();
    server.reset();
    let t = std::time::Instant::now();
    let mut pull = Cmd::new("ostree").args([&format!("--repo={r}"), "pull"]);
    if !static_deltas {
        pull = pull.arg("--disable-static-deltas");
    }
    // REF@COMMIT: the ref's head is v4 by now; the bench is about v1 -> v2.
    pull.args(["e2e", &format!("{ostree_ref}@{}", s.v2.commit())])
        .run()
        .unwrap();
    (server.bytes_served(), t.elapsed().as_secs_f64())
}

#[test]
#[ignore = "needs the built series; run by ci/bench-lifecycle"]
fn bench_upgrade_download_v1_to_v2() {
    let s = Series::load();
    let serve_root = s.v1.repo().parent().unwrap().to_path_buf();
    let server = StaticServer::start(&serve_root);
    let delta =
        s.v2.manifest
            .publish
            .as_ref()
            .and_then(|p| p.static_delta.as_ref());
    let delta = delta.expect("v2 was built with --static-delta");
    assert_eq!(delta.from, s.v1.commit());
    let (with, t_with) = pull_v2_over_v1(&s, &server, true);
    let delta_fetched = server
        .requests()
        .iter()
        .any(|(p, st, _)| p.starts_with("/repo/deltas/") && *st == 200);
    assert!(delta_fetched, "the pull used the static delta");
    let (without, t_without) = pull_v2_over_v1(&s, &server, false);
    assert!(
        !server
            .requests()
            .iter()
            .any(|(p, _, _)| p.starts_with("/repo/deltas/")),
        "--disable-static-deltas fetched objects only"
    );
    eprintln!(
        "E2E-BENCH download v1->v2: static delta {with} bytes in {t_with:.2}s ({} delta on disk); objects only {without} bytes in {t_without:.2}s, {} requests",
        delta.size,
        server.requests().len()
    );
}

//! The first-boot state machine against the kubeadm double (fake root) and the real file secret
//! store: publish, resume after a crash between kubeadm and publish, no-op when finished,
//! kubeadm failures (exit 4), partial state (exit 5), the create-only race (exit 6), joining
//! with waiting, timeouts and expired material (exit 3).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config_text, kubeadm_double};
use nodeboot::config::{parse_node_config, NodeConfig};
use nodeboot::firstboot::{self, Clock, Failure, FailureKind, Host, Outcome};
use nodeboot::join::JoinMaterial;
use nodeboot::secrets::{self, FileConfig, SecretStore, StoreConfig};
use nodeboot::state::{Phase, StateDir};
use time::OffsetDateTime;

type SleepHook = Box<dyn FnMut(usize) + Send>;

/// A clock that advances only when slept on; a hook runs at each sleep (e.g. to publish).
struct FakeClock {
    now: Mutex<OffsetDateTime>,
    sleeps: Mutex<Vec<Duration>>,
    hook: Mutex<Option<SleepHook>>,
}

impl std::fmt::Debug for FakeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeClock")
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
        let n = {
            let mut s = self.sleeps.lock().unwrap();
            s.push(d);
            s.len()
        };
        if let Some(h) = self.hook.lock().unwrap().as_mut() {
            h(n);
        }
    }
}

fn clock() -> Arc<FakeClock> {
    Arc::new(FakeClock {
        now: Mutex::new(OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()),
        sleeps: Mutex::new(Vec::new()),
        hook: Mutex::new(None),
    })
}

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    journal: PathBuf,
    host: Host,
    clock: Arc<FakeClock>,
}

fn node(env: &[(&str, &str)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let journal = dir.path().join("journal.jsonl");
    let clock = clock();
    let mut kubeadm_env = vec![
        ("KUBEADM_FAKE_ROOT".into(), root.clone().into_os_string()),
        (
            "KUBEADM_DOUBLE_JOURNAL".into(),
            journal.clone().into_os_string(),
        ),
    ];
    kubeadm_env.extend(env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    let host = Host {
        state_dir: dir.path().join("var/lib/nodeboot"),
        run_dir: dir.path().join("run/nodeboot"),
        kubernetes_dir: root.join("etc/kubernetes"),
        cluster_api_dir: dir.path().join("run/cluster-api"),
        kubeadm: kubeadm_double(),
        kubeadm_env,
        clock: clock.clone(),
    };
    Node {
        _dir: dir,
        root,
        journal,
        host,
        clock,
    }
}

impl Node {
    /// kubeadm invocations recorded by the double (argv[0]), in order.
    fn kubeadm_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["argv"][0]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .filter(|a| a != "version")
            .collect()
    }

    fn state(&self) -> StateDir {
        self.host.state()
    }

    fn run(&self, cfg: &NodeConfig, store: &dyn SecretStore) -> Result<Outcome, Failure> {
        firstboot::run(cfg, "test", &self.host, Some(store))
    }
}

fn file_store(dir: &Path) -> Box<dyn SecretStore> {
    secrets::open(&StoreConfig::File(FileConfig {
        dir: dir.to_path_buf(),
    }))
    .unwrap()
}

fn cfg(role: &str, store: &Path, extra: &str) -> NodeConfig {
    parse_node_config(&config_text(role, store, extra), "test.toml").unwrap()
}

#[test]
fn init_publishes_then_is_a_no_op() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    let n = node(&[]);
    let c = cfg("init", store_dir.path(), "");
    let out = n.run(&c, &*store).unwrap();
    assert!(
        matches!(
            out,
            Outcome::Completed {
                resumed_from: Phase::ConfigLoaded,
                ..
            }
        ),
        "{out:?}"
    );
    for p in Phase::ALL {
        assert!(n.state().is_done(p).unwrap(), "{p} not marked");
    }
    let m = n.state().marker(Phase::KubeadmDone).unwrap().unwrap();
    assert_eq!(m.kubeadm_version.as_deref(), Some("v1.31.2"));
    let published = JoinMaterial::parse(&store.get("clusters/prod/join").unwrap(), "t").unwrap();
    let started = m.started_at.unwrap();
    assert_eq!(
        published.token_expires_at,
        started + time::Duration::hours(24)
    );
    assert_eq!(
        published.certificate_key_expires_at,
        Some(started + time::Duration::hours(2))
    );
    assert_eq!(
        published.ca_cert_hashes[0].as_str(),
        nodeimg_tests::kubeadm_double::ca_pin(&n.root.join("etc/kubernetes/pki/ca.crt")).unwrap()
    );
    assert_eq!(
        published.api_server_endpoint.to_string(),
        "k8s-api.example.internal:6443"
    );
    // Secrets left only in the store: pending file and kubeadm config are gone.
    assert!(n.state().load_pending().unwrap().is_none());
    assert!(!n.host.kubeadm_config_path().exists());
    assert_eq!(
        std::fs::read_to_string(n.host.sentinel_path()).unwrap(),
        "success\n"
    );
    assert_eq!(n.kubeadm_calls(), ["init"]);

    let again = n.run(&c, &*store).unwrap();
    assert!(matches!(again, Outcome::AlreadyDone { .. }), "{again:?}");
    assert_eq!(
        n.kubeadm_calls(),
        ["init"],
        "a finished node must not run kubeadm"
    );
}

#[test]
fn crash_between_kubeadm_and_publish_resumes_at_publish() {
    let store_dir = tempfile::tempdir().unwrap();
    let n = node(&[]);
    let c = cfg("init", store_dir.path(), "");
    // A store that cannot be written: a regular file where its directory should be.
    let broken_dir = store_dir.path().join("not-a-dir");
    std::fs::write(&broken_dir, "").unwrap();
    let e = n.run(&c, &*file_store(&broken_dir)).unwrap_err();
    assert_eq!(e.kind, FailureKind::SecretStore, "{e:?}");
    assert_eq!(e.kind.exit_code(), 3);
    assert!(e.hint.contains("without re-running kubeadm"), "{e:?}");
    assert!(n.state().is_done(Phase::KubeadmDone).unwrap());
    assert!(!n.state().is_done(Phase::Published).unwrap());
    let pending = n
        .state()
        .load_pending()
        .unwrap()
        .expect("material kept for the retry");
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(n.host.state_dir.join("pending-join-material.json"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let store = file_store(store_dir.path());
    let out = n.run(&c, &*store).unwrap();
    assert!(
        matches!(
            out,
            Outcome::Completed {
                resumed_from: Phase::Published,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(n.kubeadm_calls(), ["init"], "kubeadm must not run twice");
    let published = JoinMaterial::parse(&store.get("clusters/prod/join").unwrap(), "t").unwrap();
    assert_eq!(
        published.token, pending.token,
        "the token kubeadm put in the cluster is the one published"
    );
    assert!(n.state().load_pending().unwrap().is_none());
}

#[test]
fn second_init_loses_the_create_only_race() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    let c = cfg("init", store_dir.path(), "");
    let first = node(&[]);
    first.run(&c, &*store).unwrap();
    let before = store.get("clusters/prod/join").unwrap();
    let second = node(&[]);
    let e = second.run(&c, &*store).unwrap_err();
    assert_eq!(e.kind, FailureKind::InitConflict, "{e:?}");
    assert_eq!(e.kind.exit_code(), 6);
    assert!(e.cause.contains("two nodes ran `kubeadm init`"), "{e:?}");
    assert!(e.hint.contains("kubeadm reset -f"), "{e:?}");
    assert_eq!(
        store.get("clusters/prod/join").unwrap(),
        before,
        "the winner's material is untouched"
    );
    assert!(!second.state().is_done(Phase::Published).unwrap());
}

#[test]
fn kubeadm_failure_without_changes_is_exit_4() {
    let store_dir = tempfile::tempdir().unwrap();
    let n = node(&[("KUBEADM_DOUBLE_FAIL", "init")]);
    let e = n
        .run(
            &cfg("init", store_dir.path(), ""),
            &*file_store(store_dir.path()),
        )
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Kubeadm, "{e:?}");
    assert_eq!(e.kind.exit_code(), 4);
    assert!(e.cause.starts_with("kubeadm init failed"), "{e:?}");
    assert!(!e.cause.contains('\n'), "one-line cause: {e:?}");
    assert!(!n.state().is_done(Phase::KubeadmDone).unwrap());
    assert!(
        !n.host.kubeadm_config_path().exists(),
        "config removed after a failure too"
    );
}

#[test]
fn partial_kubeadm_state_is_exit_5_until_reset() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    let c = cfg("init", store_dir.path(), "");
    let mut n = node(&[("KUBEADM_DOUBLE_FAIL", "init-partial")]);
    let e = n.run(&c, &*store).unwrap_err();
    assert_eq!(e.kind, FailureKind::PartialState, "{e:?}");
    assert_eq!(e.kind.exit_code(), 5);
    assert!(e.hint.contains("kubeadm reset -f"), "{e:?}");
    // Without the injected failure a re-run still refuses: the host is dirty.
    n.host
        .kubeadm_env
        .retain(|(k, _)| k != "KUBEADM_DOUBLE_FAIL");
    assert_eq!(
        n.run(&c, &*store).unwrap_err().kind,
        FailureKind::PartialState
    );
    // After the reset the documented hint asks for, the same state dir completes.
    nodeimg_common::Cmd::new(&n.host.kubeadm)
        .args(["reset", "-f"])
        .env("KUBEADM_FAKE_ROOT", &n.root)
        .run()
        .unwrap();
    n.run(&c, &*store).unwrap();
    assert!(n.state().is_done(Phase::Done).unwrap());
}

#[test]
fn join_waits_for_material_then_joins() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    // The control plane that will publish, set up but not yet run.
    let cp = node(&[]);
    let cp_cfg = cfg("init", store_dir.path(), "");
    let w = node(&[]);
    // Point the worker's discovery at the CA the control plane is about to create.
    let w = with_env(
        w,
        "KUBEADM_DOUBLE_CLUSTER_CA",
        cp.root.join("etc/kubernetes/pki/ca.crt"),
    );
    let publisher_store_dir = store_dir.path().to_path_buf();
    let cp_host = cp.host.clone();
    *w.clock.hook.lock().unwrap() = Some(Box::new(move |n| {
        if n == 3 {
            let s = file_store(&publisher_store_dir);
            firstboot::run(&cp_cfg, "test", &cp_host, Some(&*s)).unwrap();
        }
    }));
    let out = w
        .run(&cfg("join-worker", store_dir.path(), ""), &*store)
        .unwrap();
    assert!(matches!(out, Outcome::Completed { .. }), "{out:?}");
    let sleeps = w.clock.sleeps.lock().unwrap().clone();
    assert_eq!(
        sleeps,
        [1, 2, 4].map(Duration::from_secs),
        "bounded exponential backoff"
    );
    assert_eq!(w.kubeadm_calls(), ["join"]);
    assert!(w.root.join("etc/kubernetes/kubelet.conf").exists());
    assert!(w.host.sentinel_path().exists());
}

fn with_env(mut n: Node, k: &str, v: PathBuf) -> Node {
    n.host.kubeadm_env.push((k.into(), v.into_os_string()));
    n
}

#[test]
fn join_gives_up_after_the_wait_timeout() {
    let store_dir = tempfile::tempdir().unwrap();
    let w = node(&[]);
    let c = cfg(
        "join-worker",
        store_dir.path(),
        "\n[timeouts]\nwait-for-join-material = \"2m\"\n",
    );
    let e = w.run(&c, &*file_store(store_dir.path())).unwrap_err();
    assert_eq!(e.kind, FailureKind::SecretStore, "{e:?}");
    assert!(
        e.cause.contains("did not appear") && e.cause.contains("2m0s"),
        "{e:?}"
    );
    let total: Duration = w.clock.sleeps.lock().unwrap().iter().sum();
    assert_eq!(
        total,
        Duration::from_secs(120),
        "waits exactly up to the deadline"
    );
    assert!(w
        .clock
        .sleeps
        .lock()
        .unwrap()
        .iter()
        .all(|d| *d <= Duration::from_secs(30)));
    assert!(w.kubeadm_calls().is_empty());
}

#[test]
fn expired_material_is_refused_naming_only_the_token_id() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    let token = nodeboot::config::BootstrapToken::generate().unwrap();
    let key = nodeboot::config::CertificateKey::generate().unwrap();
    let past = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::hours(30);
    let m = JoinMaterial {
        token: token.clone(),
        token_expires_at: past + time::Duration::hours(24),
        ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32)).parse().unwrap()],
        certificate_key: Some(key.clone()),
        certificate_key_expires_at: Some(past + time::Duration::hours(2)),
        api_server_endpoint: "k8s-api.example.internal:6443".parse().unwrap(),
    };
    store.create("clusters/prod/join", &m.to_secret()).unwrap();
    for role in ["join-worker", "join-control-plane"] {
        let w = node(&[]);
        let e = w
            .run(&cfg(role, store_dir.path(), ""), &*store)
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::SecretStore, "{e:?}");
        let expected_at = (past + time::Duration::hours(24))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert!(
            e.cause.contains(&format!(
                "bootstrap token {}.<redacted> expired at {expected_at}",
                token.id()
            )),
            "{e:?}"
        );
        assert!(
            !e.cause.contains(token.expose()) && !e.cause.contains(key.expose()),
            "{e:?}"
        );
        assert!(e.hint.contains("kubeadm token create"), "{e:?}");
        assert!(w.kubeadm_calls().is_empty());
    }
}

#[test]
fn control_plane_join_with_fresh_material_passes_the_certificate_key() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    let cp = node(&[]);
    cp.run(&cfg("init", store_dir.path(), ""), &*store).unwrap();
    let cp2 = with_env(
        node(&[]),
        "KUBEADM_DOUBLE_CLUSTER_CA",
        cp.root.join("etc/kubernetes/pki/ca.crt"),
    );
    cp2.run(&cfg("join-control-plane", store_dir.path(), ""), &*store)
        .unwrap();
    let journal = std::fs::read_to_string(&cp2.journal).unwrap();
    let join: serde_json::Value = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["argv"][0] == "join")
        .unwrap();
    let published = JoinMaterial::parse(&store.get("clusters/prod/join").unwrap(), "t").unwrap();
    let config = join["config"].as_str().unwrap();
    assert!(
        config.contains(&format!(
            "certificateKey: {}",
            published.certificate_key.unwrap().expose()
        )),
        "{config}"
    );
    assert_eq!(join["config_mode"], "600");
    assert_eq!(join["unknown_fields"], serde_json::json!([]));
    assert!(cp2
        .root
        .join("etc/kubernetes/manifests/kube-apiserver.yaml")
        .exists());
}

#[test]
fn discovery_failure_of_expired_token_is_a_kubeadm_failure() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = file_store(store_dir.path());
    node(&[])
        .run(&cfg("init", store_dir.path(), ""), &*store)
        .unwrap();
    let w = node(&[("KUBEADM_DOUBLE_FAIL", "join-expired-token")]);
    let e = w
        .run(&cfg("join-worker", store_dir.path(), ""), &*store)
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Kubeadm, "{e:?}");
    assert!(e.cause.contains("could not find a JWS signature"), "{e:?}");
}

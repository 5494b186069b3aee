//! End to end through the `nodeboot` binary: init publishes to a file store, a worker joins
//! (verifying the CA pin through the kubeadm double), the create-only race, waiting for
//! material, expired material, status/validate/render/dry-run, the systemd unit, and the
//! "no secret leaks" check over logs, the double's recorded argv and every file written.

mod common;

use std::path::{Path, PathBuf};

use common::{config_text, kubeadm_double};
use nodeboot::join::JoinMaterial;
use nodeboot::secrets::{self, FileConfig, StoreConfig};
use nodeimg_common::cmd::CmdError;
use nodeimg_common::Cmd;

/// One simulated machine: its directories and config.
struct Machine {
    dir: PathBuf,
    config: PathBuf,
    journal: PathBuf,
}

fn machine(base: &Path, name: &str, role: &str, store: &Path, extra: &str) -> Machine {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_text(role, store, extra).replace("node-1", name),
    )
    .unwrap();
    Machine {
        journal: dir.join("kubeadm-journal.jsonl"),
        dir,
        config,
    }
}

impl Machine {
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// `nodeboot run` for this machine, with extra kubeadm-double environment.
    fn run_cmd(&self, double_env: &[(&str, String)]) -> Cmd {
        let mut c = Cmd::new(env!("CARGO_BIN_EXE_nodeboot"))
            .args(["run", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--kubeadm")
            .arg(kubeadm_double())
            .arg("--kubernetes-dir")
            .arg(self.root().join("etc/kubernetes"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--cluster-api-dir")
            .arg(self.dir.join("cluster-api"))
            .env("NODEBOOT_LOG", "debug");
        let mut env = vec![
            ("KUBEADM_FAKE_ROOT", self.root().display().to_string()),
            ("KUBEADM_DOUBLE_JOURNAL", self.journal.display().to_string()),
        ];
        env.extend(double_env.iter().cloned());
        for (k, v) in env {
            c = c.arg("--kubeadm-env").arg(format!("{k}={v}"));
        }
        c
    }

    fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn logs(out: &nodeimg_common::cmd::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn failed(e: CmdError) -> (i32, String) {
    match e {
        CmdError::Failed {
            status,
            stderr_tail,
            ..
        } => (status.code().unwrap(), stderr_tail),
        other => panic!("{other}"),
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn init_then_join_leaks_no_secret() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("store");
    let cp = machine(base.path(), "cp-0", "init", &store, "");
    let w = machine(base.path(), "worker-0", "join-worker", &store, "");
    let init = cp.run_cmd(&[]).output().unwrap();
    let ca = cp
        .root()
        .join("etc/kubernetes/pki/ca.crt")
        .display()
        .to_string();
    let join = w
        .run_cmd(&[
            ("KUBEADM_DOUBLE_CLUSTER_CA", ca),
            ("KUBEADM_DOUBLE_VERSION", "v1.30.4".into()),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&init.stdout).contains("first boot complete (role init)"));
    assert!(
        String::from_utf8_lossy(&join.stdout).contains("first boot complete (role join-worker)")
    );

    let file_store = secrets::open(&StoreConfig::File(FileConfig { dir: store.clone() })).unwrap();
    let m = JoinMaterial::parse(&file_store.get("clusters/prod/join").unwrap(), "store").unwrap();
    let token = m.token.expose().to_owned();
    let secret_half = token[7..].to_owned();
    let key = m.certificate_key.as_ref().unwrap().expose().to_owned();
    let secrets = [token.as_str(), secret_half.as_str(), key.as_str()];

    let all_logs = logs(&init) + &logs(&join);
    assert!(
        all_logs.contains(&format!("{}.<redacted>", m.token.id())),
        "the token ID is what logs show"
    );
    for s in secrets {
        assert!(
            !all_logs.contains(s),
            "secret in nodeboot's output:\n{all_logs}"
        );
    }
    for (machine, action, api) in [(&cp, "init", "v1beta4"), (&w, "join", "v1beta3")] {
        let entry = machine
            .journal()
            .into_iter()
            .find(|e| e["argv"][0] == action)
            .unwrap();
        let argv = entry["argv"].to_string();
        let env = entry["env"].to_string();
        for s in secrets {
            assert!(
                !argv.contains(s) && !env.contains(s),
                "secret in kubeadm argv/env: {argv}"
            );
        }
        if action == "init" {
            assert!(
                argv.contains("--skip-token-print")
                    && argv.contains("--skip-certificate-key-print"),
                "{argv}"
            );
        }
        assert_eq!(entry["config_mode"], "600");
        assert!(
            entry["config"].as_str().unwrap().contains(&token),
            "the 0600 config is where the token goes"
        );
        assert!(entry["config"]
            .as_str()
            .unwrap()
            .contains(&format!("kubeadm.k8s.io/{api}")));
        assert!(
            !Path::new(entry["config_path"].as_str().unwrap()).exists(),
            "config removed afterwards"
        );
    }
    // Every file either node wrote, except the double's journal (it records the 0600 config's
    // content by design) and the secret store itself.
    let mut files = Vec::new();
    files_under(&cp.dir, &mut files);
    files_under(&w.dir, &mut files);
    assert!(files.iter().any(|f| f.ends_with("state/done")));
    for f in files
        .iter()
        .filter(|f| !f.ends_with("kubeadm-journal.jsonl"))
    {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        for s in secrets {
            assert!(!text.contains(s), "secret left in {}", f.display());
        }
    }

    // A finished node is a no-op and says so.
    let again = cp.run_cmd(&[]).stdout_string().unwrap();
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(
        cp.journal()
            .iter()
            .filter(|e| e["argv"][0] == "init")
            .count(),
        1
    );

    // Status shows every phase with its time and the kubeadm version.
    let status = Cmd::new(env!("CARGO_BIN_EXE_nodeboot"))
        .args(["status", "--json", "--state-dir"])
        .arg(cp.dir.join("state"))
        .stdout_string()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["complete"], true);
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "config-loaded",
            "material-ready",
            "kubeadm-done",
            "published",
            "done"
        ]
    );
    assert!(v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["done"] == true && p["completed-at"].is_string()));
    assert_eq!(v["phases"][2]["kubeadm-version"], "v1.31.2");
    assert!(!status.contains(&secret_half));
}

#[test]
fn second_init_loses_the_race_and_join_refuses_expired_material() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("store");
    machine(base.path(), "cp-a", "init", &store, "")
        .run_cmd(&[])
        .run()
        .unwrap();
    let loser = machine(base.path(), "cp-b", "init", &store, "");
    let (code, stderr) = failed(loser.run_cmd(&[]).run().unwrap_err());
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("nodeboot: error: another node already published")
            && stderr.contains("nodeboot: hint: "),
        "{stderr}"
    );

    // Expired material in another key: the joiner refuses before running kubeadm.
    let file_store = secrets::open(&StoreConfig::File(FileConfig { dir: store.clone() })).unwrap();
    let mut m = JoinMaterial::parse(&file_store.get("clusters/prod/join").unwrap(), "s").unwrap();
    m.token_expires_at = time::macros::datetime!(2020-01-01 00:00 UTC);
    file_store
        .create("clusters/old/join", &m.to_secret())
        .unwrap();
    let w = machine(base.path(), "worker-x", "join-worker", &store, "");
    std::fs::write(
        &w.config,
        std::fs::read_to_string(&w.config)
            .unwrap()
            .replace("clusters/prod/join", "clusters/old/join"),
    )
    .unwrap();
    let (code, stderr) = failed(w.run_cmd(&[]).run().unwrap_err());
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bootstrap token {}.<redacted> expired at 2020-01-01T00:00:00Z",
            m.token.id()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(m.token.expose()), "{stderr}");
    assert!(
        w.journal().iter().all(|e| e["argv"][0] == "version"),
        "kubeadm join must not run"
    );
}

#[test]
fn join_waits_for_the_init_node() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("store");
    let cp = machine(base.path(), "cp-0", "init", &store, "");
    let w = machine(base.path(), "worker-0", "join-worker", &store, "");
    let ca = cp
        .root()
        .join("etc/kubernetes/pki/ca.crt")
        .display()
        .to_string();
    let join = w.run_cmd(&[("KUBEADM_DOUBLE_CLUSTER_CA", ca)]);
    kubeadm_double();
    let waiting = std::thread::spawn(move || join.output());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!waiting.is_finished(), "the joiner must still be waiting");
    cp.run_cmd(&[]).run().unwrap();
    let out = waiting.join().unwrap().unwrap();
    let log = logs(&out);
    assert!(log.contains("waiting for the join material"), "{log}");
    assert!(
        log.contains("first boot complete (role join-worker)"),
        "{log}"
    );
}

#[test]
fn validate_render_and_dry_run() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("store");
    let cp = machine(base.path(), "cp-0", "init", &store, "");
    let bin = env!("CARGO_BIN_EXE_nodeboot");
    let ok = Cmd::new(bin)
        .arg("validate")
        .arg(&cp.config)
        .stdout_string()
        .unwrap();
    assert!(
        ok.ends_with(
            "ok (role init, cluster prod at k8s-api.example.internal:6443, Kubernetes v1.31.2)"
        ),
        "{ok}"
    );
    let bad = base.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cp.config)
            .unwrap()
            .replace("[node]", "[node]\ncri-socket = \"/run/containerd.sock\""),
    )
    .unwrap();
    let (code, stderr) = failed(Cmd::new(bin).arg("validate").arg(&bad).run().unwrap_err());
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("{}:11:14: field `node.cri-socket`", bad.display())),
        "{stderr}"
    );

    let yaml = Cmd::new(bin)
        .args(["render", "--kubeadm-version", "v1.29.3"])
        .arg(&cp.config)
        .stdout_string()
        .unwrap();
    assert!(
        yaml.contains("kubeadm.k8s.io/v1beta3")
            && yaml.contains("token: <generated at first boot>"),
        "{yaml}"
    );
    assert!(
        !regex::Regex::new(r"[a-z0-9]{6}\.[a-z0-9]{16}|[0-9a-f]{64}")
            .unwrap()
            .is_match(&yaml),
        "{yaml}"
    );

    let plan = cp.run_cmd(&[]).arg("--dry-run").stdout_string().unwrap();
    assert!(
        plan.contains("# phase kubeadm-done: pending") && plan.contains("kind: InitConfiguration"),
        "{plan}"
    );
    assert!(!cp.dir.join("state").exists(), "dry run changes nothing");
    assert!(cp.journal().iter().all(|e| e["argv"][0] == "version"));

    let help = Cmd::new(bin).args(["help", "run"]).stdout_string().unwrap();
    assert!(
        help.contains("--dry-run") && help.contains("resumes at the first"),
        "{help}"
    );
    let help = Cmd::new(bin).arg("--help").stdout_string().unwrap();
    assert!(help.contains("5 partial kubeadm state"), "{help}");
}

#[test]
fn systemd_unit_verifies_and_runs_once() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("units/nodeboot.service"),
    )
    .unwrap();
    for line in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ConditionPathExists=!/var/lib/nodeboot/done",
        "After=network-online.target containerd.service",
        "ExecStart=/usr/bin/nodeboot run",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing `{line}`");
    }
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("Before=") && l.contains("kubelet")),
        "kubeadm starts the kubelet itself"
    );
    // The marker the unit checks is the one nodeboot writes last.
    assert_eq!(
        nodeboot::state::StateDir::new("/var/lib/nodeboot")
            .marker_path(nodeboot::state::Phase::Done),
        Path::new("/var/lib/nodeboot/done")
    );
    // systemd-analyze insists the ExecStart binary exists: point it at the one just built.
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("nodeboot.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/nodeboot", env!("CARGO_BIN_EXE_nodeboot")),
    )
    .unwrap();
    let out = Cmd::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = logs(&out);
    assert!(
        !text.contains("nodeboot.service"),
        "systemd-analyze complained:\n{text}"
    );
}

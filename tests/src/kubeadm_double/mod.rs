//! TEST DOUBLE standing in for `kubeadm`, which no package registry reachable here ships.
//! It follows the documented behaviour of reference §6.1 (`/work/shared/reference/
//! kubeadm-userdata-secrets.md`, facts from kubeadm 1.22–1.36 sources): the CLI surface of
//! `version -o short`, `init|join --config F` with the allowed flags and the "can not mix
//! '--config' with arguments" error, `reset -f`, `config validate`; multi-document configs with
//! known GVKs, per-version shapes, strict unknown fields (warning in init/join), kubeadm's static
//! validation rules; simulated host state under `KUBEADM_FAKE_ROOT` (preflight FileAvailable
//! errors on a second run, success files including a real throwaway CA made with `openssl`);
//! token / certificate-key printing unless the skip flags are given; exit 1 + `error: …`.
//!
//! Environment:
//! - `KUBEADM_DOUBLE_VERSION` (default `v1.31.2`): what `version -o short` prints;
//! - `KUBEADM_FAKE_ROOT`: root of the simulated host (required for init/join/reset);
//! - `KUBEADM_DOUBLE_JOURNAL`: file to append one JSON line per invocation to (argv, env,
//!   config path/content/mode, strict-decoding warnings);
//! - `KUBEADM_DOUBLE_FAIL`: `version`, `init`, `join` (fail before touching the host),
//!   `init-partial`, `join-partial` (fail after writing some files), `join-expired-token`
//!   (the JWS discovery failure), `hang` (sleep, to exercise timeouts);
//! - `KUBEADM_DOUBLE_CLUSTER_CA`: CA certificate a joining node discovers; its pin must be in
//!   `caCertHashes` (the double checks it like discovery does);
//! - `KUBEADM_DOUBLE_EXIT_CODES=legacy`: pre-1.34 codes (2 preflight, 3 validation).

mod control_plane;
pub mod schema;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nodeimg_common::Cmd;
use serde_yaml::Value;

use schema::Api;

/// A failure: message (printed after `error: `) and the exit code class.
#[derive(Debug)]
struct Fail {
    msg: String,
    class: Class,
}

#[derive(Debug, Clone, Copy)]
enum Class {
    General,
    Preflight,
    Validation,
}

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        class: Class::General,
    }
}

fn validation(msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        class: Class::Validation,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn failing(what: &str) -> bool {
    env("KUBEADM_DOUBLE_FAIL").is_some_and(|f| f.split(',').any(|x| x == what))
}

/// Entry point of the `kubeadm-double` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut journal = serde_json::json!({
        "argv": args,
        "env": std::env::vars().collect::<std::collections::BTreeMap<_, _>>(),
    });
    let result = dispatch(&args, &mut journal);
    if let Some(path) = env("KUBEADM_DOUBLE_JOURNAL") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{journal}");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.msg);
            let legacy = env("KUBEADM_DOUBLE_EXIT_CODES").as_deref() == Some("legacy");
            ExitCode::from(match (legacy, e.class) {
                (true, Class::Preflight) => 2,
                (true, Class::Validation) => 3,
                _ => 1,
            })
        }
    }
}

fn version() -> String {
    env("KUBEADM_DOUBLE_VERSION").unwrap_or_else(|| "v1.31.2".to_owned())
}

fn minor() -> u32 {
    version()
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn dispatch(args: &[String], journal: &mut serde_json::Value) -> Result<(), Fail> {
    match args.first().map(String::as_str) {
        Some("version") => {
            if failing("version") {
                return Err(fail("injected failure of `kubeadm version`"));
            }
            match &args[1..] {
                [o, short] if o == "-o" && short == "short" => println!("{}", version()),
                [o] if o == "--output=short" => println!("{}", version()),
                [] => println!(
                    "kubeadm version: &version.Info{{Major:\"1\", GitVersion:\"{}\"}}",
                    version()
                ),
                other => return Err(fail(format!("unknown version arguments {other:?}"))),
            }
            Ok(())
        }
        Some(action @ ("init" | "join")) => {
            let flags = parse_flags(&args[1..])?;
            run_action(action, &flags, journal)
        }
        Some("reset") => reset(&args[1..]),
        Some("config") if args.get(1).map(String::as_str) == Some("validate") => {
            let flags = parse_flags(&args[2..])?;
            let path = flags
                .config
                .as_ref()
                .ok_or_else(|| fail("required flag --config not set"))?;
            let docs = load_config(path, journal)?;
            let report = shape_check(&docs)?;
            if !report.is_empty() {
                return Err(validation(format!(
                    "strict decoding error: unknown field(s) {}",
                    report.join(", ")
                )));
            }
            let errs = validate_docs(&docs, docs.join.is_some());
            if !errs.is_empty() {
                return Err(validation(format!("[{}]", errs.join(", "))));
            }
            println!("ok");
            Ok(())
        }
        Some(other) => Err(fail(format!("unknown command \"{other}\" for \"kubeadm\""))),
        None => Err(fail("no command given")),
    }
}

#[derive(Debug, Default)]
struct Flags {
    config: Option<PathBuf>,
    upload_certs: bool,
    skip_token_print: bool,
    skip_certificate_key_print: bool,
    ignore_preflight: Vec<String>,
    /// Names of flags given next to `--config` that kubeadm does not allow there.
    disallowed: Vec<String>,
}

/// Flags that take a value (as in kubeadm's flag sets).
const VALUE_FLAGS: &[&str] = &[
    "config",
    "ignore-preflight-errors",
    "skip-phases",
    "v",
    "kubeconfig",
    "node-name",
    "kubeconfig-dir",
    "rootfs",
    "log-file",
    "token",
    "certificate-key",
    "discovery-token",
    "discovery-token-ca-cert-hash",
    "discovery-file",
    "apiserver-advertise-address",
    "apiserver-bind-port",
    "pod-network-cidr",
    "service-cidr",
    "service-dns-domain",
    "kubernetes-version",
    "control-plane-endpoint",
    "cri-socket",
    "token-ttl",
    "image-repository",
    "apiserver-cert-extra-sans",
    "cert-dir",
    "feature-gates",
    "patches",
    "tls-bootstrap-token",
];
const BOOL_FLAGS: &[&str] = &[
    "upload-certs",
    "skip-token-print",
    "skip-certificate-key-print",
    "dry-run",
    "control-plane",
    "discovery-token-unsafe-skip-ca-verification",
    "print-join-command",
    "force",
    "f",
];

/// `validation.isAllowedFlag`: what may accompany `--config`.
fn allowed_with_config(name: &str) -> bool {
    name.starts_with("skip-")
        || [
            "config",
            "ignore-preflight-errors",
            "dry-run",
            "kubeconfig",
            "node-name",
            "kubeconfig-dir",
            "upload-certs",
            "print-join-command",
            "rootfs",
            "v",
            "log-file",
        ]
        .contains(&name)
}

fn parse_flags(args: &[String]) -> Result<Flags, Fail> {
    let mut f = Flags::default();
    let mut given = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            // Positional argument (join's API server endpoint): not allowed with --config.
            given.push(a.clone());
            i += 1;
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (body.to_owned(), None),
        };
        let value = if VALUE_FLAGS.contains(&name.as_str()) {
            match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    Some(
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| fail(format!("flag needs an argument: --{name}")))?,
                    )
                }
            }
        } else if BOOL_FLAGS.contains(&name.as_str()) {
            inline
        } else {
            return Err(fail(format!("unknown flag: --{name}")));
        };
        match name.as_str() {
            "config" => f.config = value.map(PathBuf::from),
            "upload-certs" => f.upload_certs = true,
            "skip-token-print" => f.skip_token_print = true,
            "skip-certificate-key-print" => f.skip_certificate_key_print = true,
            "ignore-preflight-errors" => f.ignore_preflight.extend(
                value
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.to_ascii_lowercase()),
            ),
            _ => {}
        }
        given.push(name);
        i += 1;
    }
    if f.config.is_some() {
        f.disallowed = given
            .into_iter()
            .filter(|n| !allowed_with_config(n))
            .collect();
    }
    Ok(f)
}

/// The documents of a config file, by kind.
#[derive(Debug, Default)]
struct Docs {
    api: Option<Api>,
    init: Option<Value>,
    cluster: Option<Value>,
    join: Option<Value>,
    other_kinds: Vec<String>,
}

fn load_config(path: &Path, journal: &mut serde_json::Value) -> Result<Docs, Fail> {
    let meta = fs::metadata(path).map_err(|e| {
        fail(format!(
            "unable to read config from \"{}\": {e}",
            path.display()
        ))
    })?;
    let text = fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "unable to read config from \"{}\": {e}",
            path.display()
        ))
    })?;
    journal["config_path"] = path.display().to_string().into();
    journal["config_mode"] = format!("{:o}", meta.permissions().mode() & 0o7777).into();
    journal["config"] = text.clone().into();
    let mut docs = Docs::default();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v = <Value as serde::Deserialize>::deserialize(de)
            .map_err(|e| fail(format!("error converting YAML to JSON: {e}")))?;
        if v.is_null() {
            continue;
        }
        let gv = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("Object 'apiVersion' is missing in document"))?;
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("Object 'Kind' is missing in document"))?
            .to_owned();
        let api = match gv {
            "kubeadm.k8s.io/v1beta3" if minor() >= 36 => {
                return Err(fail("your configuration file uses an old API spec: \"kubeadm.k8s.io/v1beta3\", which is no longer supported. Please use kubeadm v1.35 instead and run 'kubeadm config migrate --old-config old.yaml --new-config new.yaml'"))
            }
            "kubeadm.k8s.io/v1beta3" => Some(Api::V1Beta3),
            "kubeadm.k8s.io/v1beta4" if minor() >= 31 => Some(Api::V1Beta4),
            "kubelet.config.k8s.io/v1beta1" if kind == "KubeletConfiguration" => None,
            "kubeproxy.config.k8s.io/v1alpha1" if kind == "KubeProxyConfiguration" => None,
            _ => return Err(fail(format!("no kind \"{kind}\" is registered for version \"{gv}\" in scheme"))),
        };
        if let Some(api) = api {
            if docs.api.is_some_and(|a| a != api) {
                return Err(fail(
                    "mixing kubeadm API versions in one config is not supported",
                ));
            }
            docs.api = Some(api);
            let slot = match kind.as_str() {
                "InitConfiguration" => &mut docs.init,
                "ClusterConfiguration" => &mut docs.cluster,
                "JoinConfiguration" => &mut docs.join,
                "ResetConfiguration" | "UpgradeConfiguration" if api == Api::V1Beta4 => {
                    docs.other_kinds.push(kind);
                    continue;
                }
                _ => {
                    return Err(fail(format!(
                        "no kind \"{kind}\" is registered for version \"{gv}\" in scheme"
                    )))
                }
            };
            if slot.is_some() {
                return Err(fail(format!("duplicate {kind} document")));
            }
            *slot = Some(v);
        } else {
            docs.other_kinds.push(kind);
        }
    }
    Ok(docs)
}

/// Shape errors are fatal; unknown fields come back for the caller to warn or fail on.
fn shape_check(docs: &Docs) -> Result<Vec<String>, Fail> {
    let api = docs.api.unwrap_or(Api::V1Beta4);
    let mut report = schema::ShapeReport::default();
    for (doc, shape) in [
        (&docs.init, &schema::INIT),
        (&docs.cluster, &schema::CLUSTER),
        (&docs.join, &schema::JOIN),
    ] {
        if let Some(d) = doc {
            schema::check(d, shape, api, "", &mut report);
        }
    }
    if !report.type_errors.is_empty() {
        return Err(fail(report.type_errors.join("; ")));
    }
    Ok(report.unknown)
}

fn validate_docs(docs: &Docs, join: bool) -> Vec<String> {
    if join {
        docs.join
            .as_ref()
            .map(schema::validate_join)
            .unwrap_or_default()
    } else {
        schema::validate_init(docs.init.as_ref(), docs.cluster.as_ref())
    }
}

fn fake_root() -> Result<PathBuf, Fail> {
    env("KUBEADM_FAKE_ROOT").map(PathBuf::from).ok_or_else(|| {
        fail("KUBEADM_FAKE_ROOT is not set: the kubeadm double never touches the real host")
    })
}

fn run_action(action: &str, flags: &Flags, journal: &mut serde_json::Value) -> Result<(), Fail> {
    let Some(path) = &flags.config else {
        return Err(fail(
            "the kubeadm double supports only --config (nodeboot always passes one)",
        ));
    };
    if !flags.disallowed.is_empty() {
        return Err(fail(format!(
            "can not mix '--config' with arguments {:?}",
            flags.disallowed
        )));
    }
    let root = fake_root()?;
    let docs = load_config(path, journal)?;
    let is_join = action == "join";
    for kind in &docs.other_kinds {
        if is_join && kind == "KubeletConfiguration" {
            eprintln!("[config] WARNING: Ignored KubeletConfiguration: a joining node downloads the cluster's kubelet-config");
        }
    }
    if is_join && docs.join.is_none() {
        return Err(fail("no JoinConfiguration kind was found in the YAML file"));
    }
    if !is_join && docs.init.is_none() && docs.cluster.is_none() {
        return Err(fail(
            "no InitConfiguration or ClusterConfiguration kind was found in the YAML file",
        ));
    }
    if is_join && (docs.init.is_some() || docs.cluster.is_some()) {
        eprintln!(
            "[config] WARNING: Ignored Init/ClusterConfiguration documents for `kubeadm join`"
        );
    }
    let unknown = shape_check(&docs)?;
    for u in &unknown {
        eprintln!("W0101 00:00:00.000000       1 strict.go:61] strict decoding error: unknown field \"{u}\"");
    }
    journal["unknown_fields"] = unknown.clone().into();
    let errs = validate_docs(&docs, is_join);
    if !errs.is_empty() {
        return Err(validation(format!("[{}]", errs.join(", "))));
    }
    if failing("hang") {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    preflight(&root, is_join, docs.join.as_ref(), &flags.ignore_preflight)?;
    if is_join {
        join(&root, docs.join.as_ref().expect("checked above"))
    } else {
        init(&root, &docs, flags)
    }
}

fn preflight(root: &Path, join: bool, jc: Option<&Value>, ignore: &[String]) -> Result<(), Fail> {
    println!("[preflight] Running pre-flight checks");
    let control_plane = !join
        || jc
            .and_then(|j| j.get("controlPlane"))
            .is_some_and(|c| !c.is_null());
    let mut files: Vec<&str> = Vec::new();
    if !join || control_plane {
        files.extend([
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
            "/etc/kubernetes/manifests/kube-controller-manager.yaml",
            "/etc/kubernetes/manifests/kube-scheduler.yaml",
            "/etc/kubernetes/manifests/etcd.yaml",
        ]);
    }
    if join {
        files.extend([
            "/etc/kubernetes/kubelet.conf",
            "/etc/kubernetes/bootstrap-kubelet.conf",
        ]);
        if !control_plane {
            files.push("/etc/kubernetes/pki/ca.crt");
        }
    }
    let mut errors = Vec::new();
    for f in files {
        if root.join(f.trim_start_matches('/')).exists() {
            errors.push((
                format!("FileAvailable-{}", f.replace('/', "-")),
                format!("{f} already exists"),
            ));
        }
    }
    if control_plane {
        let etcd = root.join("var/lib/etcd");
        if fs::read_dir(&etcd).is_ok_and(|mut d| d.next().is_some()) {
            errors.push((
                "DirAvailable--var-lib-etcd".to_owned(),
                "/var/lib/etcd is not empty".to_owned(),
            ));
        }
    }
    let all = ignore.iter().any(|i| i == "all");
    errors.retain(|(name, _)| !all && !ignore.contains(&name.to_ascii_lowercase()));
    if errors.is_empty() {
        return Ok(());
    }
    eprintln!("[preflight] Some fatal errors occurred:");
    for (name, msg) in &errors {
        eprintln!("\t[ERROR {name}]: {msg}");
    }
    eprintln!("[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`");
    Err(Fail {
        msg: "preflight checks failed".to_owned(),
        class: Class::Preflight,
    })
}

fn write(root: &Path, rel: &str, content: &str) -> Result<(), Fail> {
    let p = root.join(rel.trim_start_matches('/'));
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| fail(format!("creating {}: {e}", d.display())))?;
    }
    fs::write(&p, content).map_err(|e| fail(format!("writing {}: {e}", p.display())))
}

/// A real throwaway CA, so callers can compute and check its public key pin.
fn make_ca(root: &Path) -> Result<(), Fail> {
    let pki = root.join("etc/kubernetes/pki");
    fs::create_dir_all(&pki).map_err(|e| fail(format!("creating {}: {e}", pki.display())))?;
    Cmd::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=kubernetes",
        ])
        .arg("-keyout")
        .arg(pki.join("ca.key"))
        .arg("-out")
        .arg(pki.join("ca.crt"))
        .run()
        .map_err(|e| fail(format!("[certs] generating the CA: {e}")))
}

/// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, via the documented openssl pipeline.
pub fn ca_pin(ca_crt: &Path) -> Result<String, String> {
    let pubkey = Cmd::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(ca_crt)
        .output()
        .map_err(|e| e.to_string())?;
    let der = Cmd::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(pubkey.stdout)
        .output()
        .map_err(|e| e.to_string())?;
    use sha2::Digest;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(&der.stdout))
    ))
}

fn kubelet_files(root: &Path, doc: &Value) -> Result<(), Fail> {
    let nr = doc.get("nodeRegistration");
    let sock = nr
        .and_then(|n| n.get("criSocket"))
        .and_then(Value::as_str)
        .unwrap_or("unix:///var/run/containerd/containerd.sock");
    let mut flags = vec![format!("--container-runtime-endpoint={sock}")];
    // kubeadm passes the node name to the kubelet only when it is not the host name.
    let name = control_plane::node_name(Some(doc));
    if name != control_plane::hostname() {
        flags.push(format!("--hostname-override={name}"));
    }
    match nr.and_then(|n| n.get("kubeletExtraArgs")) {
        Some(Value::Mapping(m)) => flags.extend(m.iter().map(|(k, v)| {
            format!(
                "--{}={}",
                k.as_str().unwrap_or(""),
                v.as_str().unwrap_or("")
            )
        })),
        Some(Value::Sequence(s)) => flags.extend(s.iter().map(|a| {
            format!(
                "--{}={}",
                a.get("name").and_then(Value::as_str).unwrap_or(""),
                a.get("value").and_then(Value::as_str).unwrap_or("")
            )
        })),
        _ => {}
    }
    write(
        root,
        "var/lib/kubelet/kubeadm-flags.env",
        &format!("KUBELET_KUBEADM_ARGS=\"{}\"\n", flags.join(" ")),
    )?;
    // The part of kubeadm's KubeletConfiguration the kubelet double reads: where the static
    // pods are (on every node; only a control-plane node has manifests there).
    let manifests = root.join("etc/kubernetes/manifests");
    write(
        root,
        "var/lib/kubelet/config.yaml",
        &format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\nstaticPodPath: {}\n",
            manifests.display()
        ),
    )
}

/// Manifests, etcd data and the control-plane components' kubeconfigs (placeholders: nothing
/// in the tests runs the controller manager or the scheduler).
fn control_plane_files(root: &Path, cp: &control_plane::Init) -> Result<(), Fail> {
    control_plane::write_manifests(root, cp)?;
    write(root, "var/lib/etcd/member/snap/db", "")?;
    for conf in ["controller-manager.conf", "scheduler.conf"] {
        write(
            root,
            &format!("etc/kubernetes/{conf}"),
            "apiVersion: v1\nkind: Config\n",
        )?;
    }
    Ok(())
}

fn init(root: &Path, docs: &Docs, flags: &Flags) -> Result<(), Fail> {
    if failing("init") {
        return Err(fail(
            "couldn't initialize a Kubernetes cluster: injected failure before any change",
        ));
    }
    println!(
        "[init] Using Kubernetes version: {}",
        docs.cluster
            .as_ref()
            .and_then(|c| c.get("kubernetesVersion"))
            .and_then(Value::as_str)
            .unwrap_or("stable-1")
    );
    let cp = control_plane::Init::from_docs(docs.init.as_ref(), docs.cluster.as_ref())?;
    println!("[certs] Generating \"ca\" certificate and key");
    make_ca(root)?;
    control_plane::write_certs(root, &cp)?;
    control_plane_files(root, &cp)?;
    if failing("init-partial") {
        return Err(fail("error execution phase wait-control-plane: could not initialize a Kubernetes cluster: context deadline exceeded"));
    }
    let init = docs.init.as_ref();
    control_plane::write_kubeconfigs(root, &cp, minor() >= 29)?;
    if let Some(i) = init {
        kubelet_files(root, i)?;
    }
    let token = init
        .and_then(|i| i.get("bootstrapTokens"))
        .and_then(|t| t.get(0))
        .and_then(|t| t.get("token"))
        .and_then(Value::as_str)
        .unwrap_or("abcdef.0123456789abcdef")
        .to_owned();
    if !flags.skip_token_print {
        println!("[bootstrap-token] Using token: {token}");
    }
    if flags.upload_certs {
        let key = init
            .and_then(|i| i.get("certificateKey"))
            .and_then(Value::as_str)
            .unwrap_or("");
        println!("[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace");
        if !flags.skip_certificate_key_print {
            println!("[upload-certs] Using certificate key:\n{key}");
        }
    }
    println!("\nYour Kubernetes control-plane has initialized successfully!");
    Ok(())
}

fn join(root: &Path, jc: &Value) -> Result<(), Fail> {
    if failing("join") {
        return Err(fail(
            "couldn't validate the identity of the API Server: injected failure before any change",
        ));
    }
    let bt = jc.get("discovery").and_then(|d| d.get("bootstrapToken"));
    let token = bt
        .and_then(|b| b.get("token"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if failing("join-expired-token") {
        let id = token.split('.').next().unwrap_or("");
        return Err(fail(format!("couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"{id}\"")));
    }
    println!("[preflight] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
    let cluster_ca = env("KUBEADM_DOUBLE_CLUSTER_CA").map(PathBuf::from);
    if let Some(ca) = &cluster_ca {
        let pin = ca_pin(ca).map_err(|e| fail(format!("hashing the cluster CA: {e}")))?;
        let pins: Vec<String> = bt
            .and_then(|b| b.get("caCertHashes"))
            .and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        if !pins.contains(&pin) {
            return Err(fail(format!("cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{pin}\" are pinned")));
        }
    }
    write(
        root,
        "etc/kubernetes/bootstrap-kubelet.conf",
        "apiVersion: v1\nkind: Config\n",
    )?;
    match &cluster_ca {
        Some(ca) => {
            let pem = fs::read_to_string(ca)
                .map_err(|e| fail(format!("reading {}: {e}", ca.display())))?;
            write(root, "etc/kubernetes/pki/ca.crt", &pem)?;
        }
        None => make_ca(root)?,
    }
    if failing("join-partial") {
        return Err(fail("error execution phase kubelet-start: timed out waiting for the condition (TLS bootstrap)"));
    }
    let cp = jc.get("controlPlane").is_some_and(|c| !c.is_null());
    if cp {
        // A joining control plane gets the CA key through `certificateKey`, which the double
        // does not reproduce: its manifests name what would be there.
        let init = control_plane::Init::from_docs(None, None)?;
        control_plane_files(root, &init)?;
    }
    kubelet_files(root, jc)?;
    let endpoint = bt
        .and_then(|b| b.get("apiServerEndpoint"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    control_plane::write_join_kubeconfig(root, endpoint)?;
    let _ = fs::remove_file(root.join("etc/kubernetes/bootstrap-kubelet.conf"));
    println!(
        "\nThis node has joined the cluster{}",
        if cp {
            " and a new control plane instance was created"
        } else {
            ""
        }
    );
    Ok(())
}

fn reset(args: &[String]) -> Result<(), Fail> {
    let force = args.iter().any(|a| a == "-f" || a == "--force");
    if !force {
        eprintln!("[reset] Are you sure you want to proceed? [y/N]: ");
        return Err(fail("aborted reset operation"));
    }
    let root = fake_root()?;
    for rel in ["etc/kubernetes", "var/lib/kubelet", "var/lib/etcd"] {
        let p = root.join(rel);
        if p.exists() {
            fs::remove_dir_all(&p).map_err(|e| fail(format!("removing {}: {e}", p.display())))?;
        }
    }
    println!("[reset] Deleted contents of the etcd data directory and /etc/kubernetes");
    Ok(())
}

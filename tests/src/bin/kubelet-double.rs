//! TEST DOUBLE standing in for the `kubelet` (no package registry here ships it). It
//! reproduces what nodeboot's health gate observes of a kubelet:
//! - the local health endpoint, `GET http://127.0.0.1:10248/healthz`, answering `ok` (200,
//!   `text/plain; charset=utf-8`);
//! - static pods: every manifest in `staticPodPath` (KubeletConfiguration) or
//!   `--pod-manifest-path` whose container command has a stand-in executable in
//!   `KUBELET_DOUBLE_STATIC_POD_BIN_DIR` (default `/usr/libexec/kubelet-double`) is run as a
//!   child process with the manifest's command line (the e2e image ships the API server
//!   stand-in there as `kube-apiserver`); the others are reported and skipped;
//! - node registration and status: with `--kubeconfig` (its server, CA and client
//!   certificate), it registers its Node (`POST /api/v1/nodes`) and posts the `Ready`
//!   condition (`PATCH /api/v1/nodes/<name>/status`, strategic merge patch) every
//!   `nodeStatusUpdateFrequency` (KubeletConfiguration; default 10 s), as
//!   the kubelet's node status loop does; the node name is `--hostname-override` or the host
//!   name, lower-cased.
//!
//! Address, as the real kubelet resolves it: `healthzBindAddress`/`healthzPort` from the
//! KubeletConfiguration named by `--config`, overridden by the deprecated flags
//! `--healthz-bind-address`/`--healthz-port`; defaults 127.0.0.1 and 10248; port 0 disables
//! the endpoint. Every other flag of the real kubelet is accepted and ignored, so the
//! kubeadm-generated unit (`kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS ...`) can
//! start it. `KUBELET_DOUBLE_LISTEN=ADDR:PORT` (tests; port 0 = any) overrides all of that;
//! the bound address is the first line on stdout, `kubelet-double: serving
//! http://ADDR/healthz`; everything else goes to stderr.
//!
//! Faults (what the e2e "broken kubelet" image ships): the env var `KUBELET_DOUBLE_FAULT`, or
//! the first word of the file `KUBELET_DOUBLE_FAULT_FILE` (default
//! `/etc/kubelet-double/fault`), read at start, on every request and every status update:
//! - `unhealthy`: `/healthz` answers 500 with the body shape the real kubelet uses for a
//!   failed check, and the node posts `Ready=False` (`KubeletNotReady`);
//! - `network-not-ready`: `/healthz` stays ok, the node posts `Ready=False` with the message
//!   of a kubelet whose CNI plugin is not initialised (what only the Node-Ready check sees);
//! - `exit`: exit 1 at start without listening (the unit fails, like a kubelet that crashes).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

const DEFAULT_BIND: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 10248;
const DEFAULT_FAULT_FILE: &str = "/etc/kubelet-double/fault";
const DEFAULT_STATIC_POD_BIN_DIR: &str = "/usr/libexec/kubelet-double";
/// The kubelet's default `nodeStatusUpdateFrequency`.
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Until the first status update went through (the API server may still be starting).
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Unhealthy,
    NetworkNotReady,
    Exit,
}

fn fault() -> Fault {
    let from_env = std::env::var("KUBELET_DOUBLE_FAULT").ok();
    let file = std::env::var_os("KUBELET_DOUBLE_FAULT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FAULT_FILE));
    let text = from_env.or_else(|| std::fs::read_to_string(file).ok());
    match text.as_deref().and_then(|t| t.split_whitespace().next()) {
        Some("unhealthy") => Fault::Unhealthy,
        Some("network-not-ready") => Fault::NetworkNotReady,
        Some("exit") => Fault::Exit,
        _ => Fault::None,
    }
}

/// The value of `--name=V` or `--name V` (last one wins, as with pflag).
fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        if let Some(v) = args[i].strip_prefix(&format!("{long}=")) {
            found = Some(v.to_owned());
        } else if args[i] == long {
            found = args.get(i + 1).cloned();
            i += 1;
        }
        i += 1;
    }
    found
}

/// Where `/healthz` listens; `None` when disabled (port 0 from flags or config).
fn listen_address(args: &[String]) -> Result<Option<String>, String> {
    if let Ok(addr) = std::env::var("KUBELET_DOUBLE_LISTEN") {
        return Ok(Some(addr));
    }
    let mut bind = DEFAULT_BIND.to_owned();
    let mut port = DEFAULT_PORT;
    if let Some(path) = flag(args, "config") {
        // A missing config file is fatal for the real kubelet too.
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("failed to load kubelet config file {path}: {e}"))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| format!("failed to parse kubelet config file {path}: {e}"))?;
        if let Some(b) = doc.get("healthzBindAddress").and_then(|v| v.as_str()) {
            bind = b.to_owned();
        }
        if let Some(p) = doc.get("healthzPort").and_then(|v| v.as_u64()) {
            port = u16::try_from(p).map_err(|_| format!("healthzPort {p} is out of range"))?;
        }
    }
    if let Some(b) = flag(args, "healthz-bind-address") {
        bind = b;
    }
    if let Some(p) = flag(args, "healthz-port") {
        port = p
            .parse()
            .map_err(|_| format!("invalid --healthz-port `{p}`"))?;
    }
    Ok((port != 0).then(|| format!("{bind}:{port}")))
}

fn respond(req: tiny_http::Request) {
    let text_plain =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain; charset=utf-8"[..])
            .expect("static header");
    let (status, body) = match (req.url(), fault()) {
        ("/healthz", Fault::None | Fault::NetworkNotReady) => (200, "ok".to_owned()),
        ("/healthz", _) => (
            500,
            "[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n"
                .to_owned(),
        ),
        _ => (404, "404 page not found\n".to_owned()),
    };
    let resp = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(text_plain);
    let _ = req.respond(resp);
}

/// A field of the `--config` file (KubeletConfiguration).
fn config_field(args: &[String], field: &str) -> Option<serde_yaml::Value> {
    let text = std::fs::read_to_string(flag(args, "config")?).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    doc.get(field).cloned()
}

/// `nodeStatusUpdateFrequency` (a Go duration: `10s`, `1m`, `500ms`), default 10 s.
fn status_interval(args: &[String]) -> Duration {
    let Some(v) = config_field(args, "nodeStatusUpdateFrequency") else {
        return DEFAULT_STATUS_INTERVAL;
    };
    let text = v.as_str().unwrap_or_default();
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse().ok().map(Duration::from_secs)
    } else if let Some(m) = text.strip_suffix('m') {
        m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60))
    } else {
        None
    };
    parsed.unwrap_or_else(|| {
        eprintln!("kubelet-double: nodeStatusUpdateFrequency `{text}` not understood; using 10s");
        DEFAULT_STATUS_INTERVAL
    })
}

/// `--pod-manifest-path`, else `staticPodPath` of the `--config` file.
fn static_pod_path(args: &[String]) -> Option<PathBuf> {
    if let Some(p) = flag(args, "pod-manifest-path") {
        return Some(PathBuf::from(p));
    }
    config_field(args, "staticPodPath")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Run the static pods that have a stand-in; the children share this process's lifetime the
/// way containers share the kubelet's cgroup (systemd stops them with the unit).
fn start_static_pods(dir: &Path) -> Vec<std::process::Child> {
    let bin_dir = std::env::var_os("KUBELET_DOUBLE_STATIC_POD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATIC_POD_BIN_DIR));
    let mut manifests: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            eprintln!("kubelet-double: static pod path {}: {e}", dir.display());
            return Vec::new();
        }
    };
    manifests.sort();
    let mut children = Vec::new();
    for m in manifests
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
    {
        let pod: serde_yaml::Value = match std::fs::read_to_string(m)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_yaml::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                eprintln!("kubelet-double: static pod {}: {e}", m.display());
                continue;
            }
        };
        let container = &pod["spec"]["containers"][0];
        let mut command: Vec<String> = container["command"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(container["args"].as_sequence().into_iter().flatten())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if command.is_empty() {
            eprintln!("kubelet-double: static pod {}: no command", m.display());
            continue;
        }
        let exe = bin_dir.join(command.remove(0));
        if !exe.is_file() {
            eprintln!(
                "kubelet-double: static pod {}: no stand-in {}; not run",
                m.display(),
                exe.display()
            );
            continue;
        }
        // Its stdout goes to our stderr: a test reads only our first stdout line.
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null());
        match std::process::Command::new(&exe)
            .args(&command)
            .stdout(stdout)
            .spawn()
        {
            Ok(c) => {
                eprintln!(
                    "kubelet-double: static pod {}: started {} (pid {})",
                    m.display(),
                    exe.display(),
                    c.id()
                );
                children.push(c);
            }
            Err(e) => eprintln!("kubelet-double: static pod {}: {e}", m.display()),
        }
    }
    children
}

/// The parts of a kubeconfig the status loop uses: server, CA, client certificate and key.
struct KubeConfig {
    server: String,
    ca: Vec<u8>,
    identity: Vec<u8>,
}

fn load_kubeconfig(path: &Path) -> Result<KubeConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let named = |list: &str, name: &str| -> Option<serde_yaml::Value> {
        doc[list]
            .as_sequence()?
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .cloned()
    };
    let ctx_name = doc["current-context"].as_str().unwrap_or_default();
    let ctx = named("contexts", ctx_name)
        .ok_or_else(|| format!("{}: no context `{ctx_name}`", path.display()))?;
    let cluster = named(
        "clusters",
        ctx["context"]["cluster"].as_str().unwrap_or_default(),
    )
    .ok_or_else(|| format!("{}: the context's cluster is missing", path.display()))?;
    let user = named("users", ctx["context"]["user"].as_str().unwrap_or_default())
        .ok_or_else(|| format!("{}: the context's user is missing", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    // `<field>-data` (base64) or `<field>` (a file, relative to the kubeconfig).
    let material = |v: &serde_yaml::Value, field: &str| -> Result<Vec<u8>, String> {
        if let Some(b) = v[format!("{field}-data").as_str()].as_str() {
            return base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| format!("{}: {field}-data: {e}", path.display()));
        }
        let file = v[field]
            .as_str()
            .ok_or_else(|| format!("{}: no {field}", path.display()))?;
        std::fs::read(dir.join(file))
            .map_err(|e| format!("{}: {field}: {file}: {e}", path.display()))
    };
    let mut identity = material(&user["user"], "client-certificate")?;
    identity.push(b'\n');
    identity.extend(material(&user["user"], "client-key")?);
    Ok(KubeConfig {
        server: cluster["cluster"]["server"]
            .as_str()
            .ok_or_else(|| format!("{}: the cluster has no server", path.display()))?
            .trim_end_matches('/')
            .to_owned(),
        ca: material(&cluster["cluster"], "certificate-authority")?,
        identity,
    })
}

fn rfc3339_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The `Ready` condition for the current fault: (status, reason, message).
fn ready_condition(f: Fault) -> (&'static str, &'static str, &'static str) {
    match f {
        Fault::None | Fault::Exit => ("True", "KubeletReady", "kubelet is posting ready status"),
        Fault::Unhealthy => (
            "False",
            "KubeletNotReady",
            "kubelet-double fault `unhealthy`: the sync loop is failing (/healthz answers 500)",
        ),
        Fault::NetworkNotReady => (
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
        ),
    }
}

/// One round of the node status loop: register the Node if the API server does not know it,
/// then post the Ready condition. Returns what was posted.
fn post_status(
    kubeconfig: &Path,
    node: &str,
    transition: &mut (String, String),
) -> Result<String, String> {
    let kc = load_kubeconfig(kubeconfig)?;
    let err = |e: reqwest::Error| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        s
    };
    let ca = reqwest::Certificate::from_pem_bundle(&kc.ca).map_err(err)?;
    let id = reqwest::Identity::from_pem(&kc.identity)
        .map_err(|e| format!("the kubeconfig's client certificate and key: {}", err(e)))?;
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only(ca)
        .identity(id)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(err)?;
    let registration = json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": node, "labels": {
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        }},
        "spec": {},
    });
    let r = client
        .get(format!("{}/api/v1/nodes/{node}", kc.server))
        .send()
        .map_err(err)?;
    if r.status().as_u16() == 404 {
        let r = client
            .post(format!("{}/api/v1/nodes", kc.server))
            .json(&registration)
            .send()
            .map_err(err)?;
        if !(r.status().is_success() || r.status().as_u16() == 409) {
            return Err(format!(
                "registering node {node}: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            ));
        }
    } else if !r.status().is_success() {
        return Err(format!(
            "GET node {node}: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        ));
    }
    let (status, reason, message) = ready_condition(fault());
    let now = rfc3339_now();
    if transition.0 != status {
        *transition = (status.to_owned(), now.clone());
    }
    let patch = json!({"status": {"conditions": [{
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition.1,
    }]}});
    let r = client
        .patch(format!("{}/api/v1/nodes/{node}/status", kc.server))
        .header("Content-Type", "application/strategic-merge-patch+json")
        .body(patch.to_string())
        .send()
        .map_err(err)?;
    if !r.status().is_success() {
        return Err(format!(
            "posting the status of node {node}: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        ));
    }
    Ok(format!(
        "node {node} Ready={status} ({reason}) via {}",
        kc.server
    ))
}

fn status_loop(kubeconfig: PathBuf, node: String, interval: Duration) {
    let mut last = String::new();
    let mut transition = (String::new(), String::new());
    loop {
        let (line, ok) = match post_status(&kubeconfig, &node, &mut transition) {
            Ok(s) => (format!("posted: {s}"), true),
            Err(e) => (format!("node status: {e}"), false),
        };
        // Once per change: the loop runs every few seconds.
        if line != last {
            eprintln!("kubelet-double: {line}");
            last = line;
        }
        std::thread::sleep(if ok { interval } else { RETRY_INTERVAL });
    }
}

fn node_name(args: &[String]) -> String {
    flag(args, "hostname-override")
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default())
        .trim()
        .to_lowercase()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if fault() == Fault::Exit {
        eprintln!("kubelet-double: fault `exit` requested; exiting like a crashing kubelet");
        return ExitCode::from(1);
    }
    let addr = match listen_address(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kubelet-double: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match addr.as_deref().map(tiny_http::Server::http) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            eprintln!(
                "kubelet-double: listening on {}: {e}",
                addr.unwrap_or_default()
            );
            return ExitCode::from(1);
        }
    };
    if let Some(server) = &server {
        let bound = server
            .server_addr()
            .to_ip()
            .map_or(addr.clone().unwrap_or_default(), |a| a.to_string());
        println!("kubelet-double: serving http://{bound}/healthz");
    }
    let _pods = static_pod_path(&args)
        .map(|d| start_static_pods(&d))
        .unwrap_or_default();
    // Without a kubeconfig the kubelet runs standalone: no API server to report to.
    if let Some(kc) = flag(&args, "kubeconfig").filter(|k| Path::new(k).exists()) {
        let node = node_name(&args);
        let interval = status_interval(&args);
        std::thread::spawn(move || status_loop(PathBuf::from(kc), node, interval));
    }
    match server {
        Some(server) => {
            for req in server.incoming_requests() {
                respond(req);
            }
        }
        // Health endpoint disabled: stay up like a kubelet without it.
        None => loop {
            std::thread::park();
        },
    }
    ExitCode::SUCCESS
}

//! TEST DOUBLE standing in for the `kubelet` (no package registry here ships it). It
//! reproduces only what nodeboot's health gate observes: the kubelet's local health endpoint,
//! `GET http://127.0.0.1:10248/healthz`, answering `ok` (200, `text/plain; charset=utf-8`).
//!
//! Address, as the real kubelet resolves it: `healthzBindAddress`/`healthzPort` from the
//! KubeletConfiguration named by `--config`, overridden by the deprecated flags
//! `--healthz-bind-address`/`--healthz-port`; defaults 127.0.0.1 and 10248; port 0 disables
//! the endpoint. Every other flag of the real kubelet is accepted and ignored, so the
//! kubeadm-generated unit (`kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS ...`) can
//! start it. `KUBELET_DOUBLE_LISTEN=ADDR:PORT` (tests; port 0 = any) overrides all of that;
//! the bound address is printed on stdout as `kubelet-double: serving http://ADDR/healthz`.
//!
//! Faults (what the e2e "broken kubelet" image ships): the env var `KUBELET_DOUBLE_FAULT`, or
//! the first word of the file `KUBELET_DOUBLE_FAULT_FILE` (default
//! `/etc/kubelet-double/fault`), read at start and on every request:
//! - `unhealthy`: `/healthz` answers 500 with the body shape the real kubelet uses for a
//!   failed check;
//! - `exit`: exit 1 at start without listening (the unit fails, like a kubelet that crashes).

use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_BIND: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 10248;
const DEFAULT_FAULT_FILE: &str = "/etc/kubelet-double/fault";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Unhealthy,
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
        ("/healthz", Fault::None) => (200, "ok".to_owned()),
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
    let Some(addr) = addr else {
        // Health endpoint disabled: stay up like a kubelet without it.
        loop {
            std::thread::park();
        }
    };
    let server = match tiny_http::Server::http(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kubelet-double: listening on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = server
        .server_addr()
        .to_ip()
        .map_or(addr.clone(), |a| a.to_string());
    println!("kubelet-double: serving http://{bound}/healthz");
    for req in server.incoming_requests() {
        respond(req);
    }
    ExitCode::SUCCESS
}

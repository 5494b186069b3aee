//! Config parsing of the kubeadm double, as kubeadm does it (reference §1.1–§1.9, §6.1.2–3):
//! multi-document YAML, known group/version/kinds only, per-version shapes (v1beta3 maps vs
//! v1beta4 `{name, value}` lists, timeouts placement), strict unknown-field detection including
//! case mismatches (a warning for init/join, an error for `config validate`), and the static
//! validation rules of kubeadm's `validation.go` that nodeboot's output must satisfy.

use std::net::IpAddr;

use regex::Regex;
use serde_yaml::{Mapping, Value};

/// kubeadm API version of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1Beta3,
    V1Beta4,
}

/// The shape of a field; `Args` depends on the API version.
#[derive(Debug)]
pub enum Shape {
    Str,
    Bool,
    Int,
    Duration,
    StrList,
    /// `extraArgs` / `kubeletExtraArgs`: a map in v1beta3, a list of `{name, value}` in v1beta4.
    Args,
    Obj(&'static [(&'static str, Shape)]),
    List(&'static Shape),
    /// Not checked (component configs, etcd, volumes).
    Any,
    /// A field that exists only in v1beta3.
    V3(&'static Shape),
    /// A field that exists only in v1beta4.
    V4(&'static Shape),
}

use Shape::*;

const TAINT: Shape = Obj(&[
    ("key", Str),
    ("value", Str),
    ("effect", Str),
    ("timeAdded", Any),
]);
const NODE_REG: Shape = Obj(&[
    ("name", Str),
    ("criSocket", Str),
    ("taints", List(&TAINT)),
    ("kubeletExtraArgs", Args),
    ("ignorePreflightErrors", StrList),
    ("imagePullPolicy", Str),
    ("imagePullSerial", V4(&Bool)),
]);
const BOOTSTRAP_TOKEN: Shape = Obj(&[
    ("token", Str),
    ("description", Str),
    ("ttl", Duration),
    ("expires", Str),
    ("usages", StrList),
    ("groups", StrList),
]);
const LOCAL_API: Shape = Obj(&[("advertiseAddress", Str), ("bindPort", Int)]);
const TIMEOUTS: Shape = Obj(&[
    ("controlPlaneComponentHealthCheck", Duration),
    ("kubeletHealthCheck", Duration),
    ("kubernetesAPICall", Duration),
    ("etcdAPICall", Duration),
    ("tlsBootstrap", Duration),
    ("discovery", Duration),
    ("upgradeManifests", Duration),
]);
const PATCHES: Shape = Obj(&[("directory", Str)]);
const CONTROL_PLANE_COMPONENT: Shape = Obj(&[
    ("extraArgs", Args),
    ("extraVolumes", Any),
    ("extraEnvs", V4(&Any)),
]);

pub const INIT: Shape = Obj(&[
    ("apiVersion", Str),
    ("kind", Str),
    ("bootstrapTokens", List(&BOOTSTRAP_TOKEN)),
    ("dryRun", V4(&Bool)),
    ("nodeRegistration", NODE_REG),
    ("localAPIEndpoint", LOCAL_API),
    ("certificateKey", Str),
    ("skipPhases", StrList),
    ("patches", PATCHES),
    ("timeouts", V4(&TIMEOUTS)),
]);

pub const CLUSTER: Shape = Obj(&[
    ("apiVersion", Str),
    ("kind", Str),
    ("etcd", Any),
    (
        "networking",
        Obj(&[
            ("serviceSubnet", Str),
            ("podSubnet", Str),
            ("dnsDomain", Str),
        ]),
    ),
    ("kubernetesVersion", Str),
    ("controlPlaneEndpoint", Str),
    (
        "apiServer",
        Obj(&[
            ("extraArgs", Args),
            ("extraVolumes", Any),
            ("extraEnvs", V4(&Any)),
            ("certSANs", StrList),
            ("timeoutForControlPlane", V3(&Duration)),
        ]),
    ),
    ("controllerManager", CONTROL_PLANE_COMPONENT),
    ("scheduler", CONTROL_PLANE_COMPONENT),
    ("dns", Any),
    ("proxy", V4(&Any)),
    ("certificatesDir", Str),
    ("imageRepository", Str),
    ("featureGates", Any),
    ("clusterName", Str),
    ("encryptionAlgorithm", V4(&Str)),
    ("certificateValidityPeriod", V4(&Duration)),
    ("caCertificateValidityPeriod", V4(&Duration)),
]);

pub const JOIN: Shape = Obj(&[
    ("apiVersion", Str),
    ("kind", Str),
    ("dryRun", V4(&Bool)),
    ("nodeRegistration", NODE_REG),
    ("caCertPath", Str),
    (
        "discovery",
        Obj(&[
            (
                "bootstrapToken",
                Obj(&[
                    ("token", Str),
                    ("apiServerEndpoint", Str),
                    ("caCertHashes", StrList),
                    ("unsafeSkipCAVerification", Bool),
                ]),
            ),
            ("file", Obj(&[("kubeConfigPath", Str)])),
            ("tlsBootstrapToken", Str),
            ("timeout", V3(&Duration)),
        ]),
    ),
    (
        "controlPlane",
        Obj(&[("localAPIEndpoint", LOCAL_API), ("certificateKey", Str)]),
    ),
    ("skipPhases", StrList),
    ("patches", PATCHES),
    ("timeouts", V4(&TIMEOUTS)),
]);

/// Result of checking a document against its shape.
#[derive(Debug, Default)]
pub struct ShapeReport {
    /// Unknown (or case-mismatched) fields, as dotted paths: warnings in init/join.
    pub unknown: Vec<String>,
    /// Type errors: always fatal (the Go JSON decoder fails).
    pub type_errors: Vec<String>,
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "array",
        Value::Mapping(_) => "object",
        Value::Tagged(_) => "tagged value",
    }
}

fn go_duration_ok(s: &str) -> bool {
    let re = Regex::new(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$").expect("static regex");
    s == "0" || re.is_match(s)
}

/// Check `v` against `shape` for API `api`; `path` is the dotted path so far.
pub fn check(v: &Value, shape: &Shape, api: Api, path: &str, r: &mut ShapeReport) {
    let mismatch = |r: &mut ShapeReport, want: &str| {
        r.type_errors.push(format!(
            "json: cannot unmarshal {} into Go struct field {path} of type {want}",
            kind_name(v)
        ))
    };
    if v.is_null() {
        return;
    }
    match shape {
        Any => {}
        Str => {
            if !v.is_string() {
                mismatch(r, "string")
            }
        }
        Bool => {
            if !v.is_bool() {
                mismatch(r, "bool")
            }
        }
        Int => match v.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => {}
            _ => mismatch(r, "int32"),
        },
        Duration => match v.as_str() {
            Some(s) if go_duration_ok(s) => {}
            Some(s) => r
                .type_errors
                .push(format!("{path}: time: invalid duration \"{s}\"")),
            None => mismatch(r, "v1.Duration"),
        },
        StrList => match v.as_sequence() {
            Some(items) if items.iter().all(Value::is_string) => {}
            _ => mismatch(r, "[]string"),
        },
        Args => match (api, v) {
            (Api::V1Beta3, Value::Mapping(m)) => {
                if !m.values().all(Value::is_string) {
                    mismatch(r, "map[string]string")
                }
            }
            (Api::V1Beta3, _) => mismatch(r, "map[string]string"),
            (Api::V1Beta4, Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    check(item, &Obj(&[("name", Str), ("value", Str)]), api, &p, r);
                    if item
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                    {
                        r.type_errors.push(format!(
                            "{p}.name: Required value: argument name is required"
                        ));
                    }
                }
            }
            (Api::V1Beta4, _) => mismatch(r, "[]v1beta4.Arg"),
        },
        List(inner) => match v.as_sequence() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, inner, api, &format!("{path}[{i}]"), r);
                }
            }
            None => mismatch(r, "[]object"),
        },
        V3(inner) | V4(inner) => check(v, inner, api, path, r),
        Obj(fields) => {
            let Some(map) = v.as_mapping() else {
                return mismatch(r, "object");
            };
            check_object(map, fields, api, path, r);
        }
    }
}

fn check_object(
    map: &Mapping,
    fields: &[(&str, Shape)],
    api: Api,
    path: &str,
    r: &mut ShapeReport,
) {
    for (k, val) in map {
        let key = k.as_str().unwrap_or("<non-string key>");
        let p = if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        };
        let known = fields.iter().find(|(name, shape)| {
            *name == key
                && match shape {
                    V3(_) => api == Api::V1Beta3,
                    V4(_) => api == Api::V1Beta4,
                    _ => true,
                }
        });
        match known {
            Some((_, shape)) => check(val, shape, api, &p, r),
            None => {
                // The Go decoder matches case-insensitively but strict mode reports it.
                let case = fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(key));
                r.unknown.push(if case {
                    format!("{p} (case mismatch)")
                } else {
                    p
                });
            }
        }
    }
}

pub fn token_ok(s: &str) -> bool {
    Regex::new(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
        .expect("static regex")
        .is_match(s)
}

pub fn dns1123_subdomain(s: &str) -> bool {
    let re = Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static regex");
    s.len() <= 253 && re.is_match(s)
}

/// Go's `net.SplitHostPort`, enough of it for `host:port` and `[v6]:port`.
pub fn split_host_port(s: &str) -> Result<(String, String), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("address {s}: missing port in address"))?;
        return Ok((h.to_owned(), p.to_owned()));
    }
    match s.rsplit_once(':') {
        None => Err(format!("address {s}: missing port in address")),
        Some((h, _)) if h.contains(':') => Err(format!("address {s}: too many colons in address")),
        Some((h, p)) => Ok((h.to_owned(), p.to_owned())),
    }
}

fn cidr_ok(s: &str) -> bool {
    s.split(',').count() <= 2
        && s.split(',').all(|c| match c.split_once('/') {
            Some((a, l)) => match a.parse::<IpAddr>() {
                Ok(ip) => l
                    .parse::<u8>()
                    .is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 }),
                Err(_) => false,
            },
            None => false,
        })
}

fn invalid(field: &str, value: &str, detail: &str) -> String {
    format!("{field}: Invalid value: \"{value}\": {detail}")
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn certificate_key_rule(field: &str, key: &str, errs: &mut Vec<String>) {
    match hex::decode(key) {
        Ok(b) if b.len() == 32 => {}
        Ok(b) => errs.push(format!(
            "{field}: invalid certificate key size {}, the key must be an AES key of size 32",
            b.len()
        )),
        Err(e) => errs.push(format!("{field}: {e}")),
    }
}

fn node_registration_rules(doc: &Value, errs: &mut Vec<String>) {
    let Some(nr) = doc.get("nodeRegistration") else {
        return;
    };
    if let Some(name) = nr.get("name").and_then(Value::as_str) {
        if !dns1123_subdomain(name) {
            errs.push(invalid("nodeRegistration.name", name, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
        }
    }
    if let Some(sock) = nr.get("criSocket").and_then(Value::as_str) {
        if !sock.starts_with("unix://") {
            errs.push(invalid(
                "nodeRegistration.criSocket",
                sock,
                "the URL scheme must be \"unix\"",
            ));
        }
    }
    for t in nr
        .get("taints")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            errs.push(invalid(
                "nodeRegistration.taints.effect",
                effect,
                "supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
            ));
        }
    }
}

fn local_api_rules(field: &str, v: Option<&Value>, errs: &mut Vec<String>) {
    let Some(ep) = v else { return };
    if let Some(a) = ep.get("advertiseAddress").and_then(Value::as_str) {
        if a.parse::<IpAddr>().is_err() {
            errs.push(invalid(
                &format!("{field}.advertiseAddress"),
                a,
                "must be a valid IP address",
            ));
        }
    }
    if let Some(p) = ep.get("bindPort").and_then(Value::as_i64) {
        if !(1..=65535).contains(&p) {
            errs.push(format!(
                "{field}.bindPort: Invalid value: {p}: must be between 1 and 65535, inclusive"
            ));
        }
    }
}

/// Static validation of an InitConfiguration (+ the ClusterConfiguration if any).
pub fn validate_init(init: Option<&Value>, cluster: Option<&Value>) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(init) = init {
        let groups_re =
            Regex::new(r"^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$").expect("static regex");
        for (i, bt) in init
            .get("bootstrapTokens")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("bootstrapTokens[{i}]");
            match bt.get("token").and_then(Value::as_str) {
                Some(t) if token_ok(t) => {}
                Some(t) => errs.push(invalid(
                    &format!("{f}.token"),
                    t,
                    "the bootstrap token is invalid",
                )),
                None => {}
            }
            if bt.get("ttl").is_some() && bt.get("expires").is_some() {
                errs.push(format!(
                    "{f}: Invalid value: ttl and expires are mutually exclusive"
                ));
            }
            let usages: Vec<&str> = bt
                .get("usages")
                .and_then(Value::as_sequence)
                .map(|s| s.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for u in &usages {
                if !["signing", "authentication"].contains(u) {
                    errs.push(invalid(&format!("{f}.usages"), u, "unknown usage"));
                }
            }

            for g in bt
                .get("groups")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let g = g.as_str().unwrap_or("");
                if !groups_re.is_match(g) {
                    errs.push(invalid(
                        &format!("{f}.groups"),
                        g,
                        "group does not match the bootstrap group pattern",
                    ));
                }
                if !usages.is_empty() && !usages.contains(&"authentication") {
                    errs.push(format!(
                        "{f}.groups: Invalid value: groups require the authentication usage"
                    ));
                }
            }
        }
        if let Some(k) = init.get("certificateKey").and_then(Value::as_str) {
            certificate_key_rule("certificateKey", k, &mut errs);
        }
        node_registration_rules(init, &mut errs);
        local_api_rules("localAPIEndpoint", init.get("localAPIEndpoint"), &mut errs);
    }
    if let Some(c) = cluster {
        for f in ["serviceSubnet", "podSubnet"] {
            if let Some(s) = str_at(c, &["networking", f]) {
                if !cidr_ok(s) {
                    errs.push(invalid(
                        &format!("networking.{f}"),
                        s,
                        "couldn't parse subnet",
                    ));
                }
            }
        }
        if let Some(ep) = c.get("controlPlaneEndpoint").and_then(Value::as_str) {
            let host = split_host_port(ep)
                .map(|(h, _)| h)
                .unwrap_or_else(|_| ep.to_owned());
            if host.parse::<IpAddr>().is_err() && !dns1123_subdomain(&host) {
                errs.push(invalid(
                    "controlPlaneEndpoint",
                    ep,
                    "must be a valid IP address or DNS name with an optional port",
                ));
            }
        }
    }
    errs
}

/// Static validation of a JoinConfiguration.
pub fn validate_join(join: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let d = join.get("discovery");
    let bt = d
        .and_then(|d| d.get("bootstrapToken"))
        .filter(|v| !v.is_null());
    let file = d.and_then(|d| d.get("file")).filter(|v| !v.is_null());
    match (bt, file) {
        (None, None) => {
            errs.push("discovery: Invalid value: bootstrapToken or file must be set".to_owned())
        }
        (Some(_), Some(_)) => errs.push(
            "discovery: Invalid value: bootstrapToken and file cannot both be set".to_owned(),
        ),
        _ => {}
    }
    if let Some(bt) = bt {
        let f = "discovery.bootstrapToken";
        let token = bt.get("token").and_then(Value::as_str).unwrap_or("");
        if !token_ok(token) {
            errs.push(invalid(
                &format!("{f}.token"),
                token,
                "the bootstrap token is invalid",
            ));
        }
        match bt.get("apiServerEndpoint").and_then(Value::as_str) {
            None | Some("") => errs.push(format!(
                "{f}.apiServerEndpoint: Required value: the API server endpoint is required"
            )),
            Some(ep) => {
                if let Err(e) = split_host_port(ep) {
                    errs.push(invalid(&format!("{f}.apiServerEndpoint"), ep, &e));
                }
            }
        }
        let hashes: Vec<&str> = bt
            .get("caCertHashes")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let unsafe_skip = bt
            .get("unsafeSkipCAVerification")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if hashes.is_empty() && !unsafe_skip {
            errs.push(format!("{f}.caCertHashes: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue"));
        }
        for h in hashes {
            let lower = h.to_ascii_lowercase();
            let ok = matches!(lower.split_once(':'), Some(("sha256", hex)) if hex::decode(hex).is_ok_and(|b| b.len() == 32));
            if !ok {
                errs.push(invalid(
                    &format!("{f}.caCertHashes"),
                    h,
                    "invalid hash, expected \"format:hex-value\" with format sha256 and 32 bytes",
                ));
            }
        }
    }
    if let Some(p) = join.get("caCertPath").and_then(Value::as_str) {
        if !p.starts_with('/') || !p.ends_with(".crt") {
            errs.push(invalid(
                "caCertPath",
                p,
                "the ca certificate path must be an absolute path ending in .crt",
            ));
        }
    }
    if let Some(cp) = join.get("controlPlane").filter(|v| !v.is_null()) {
        if let Some(k) = cp.get("certificateKey").and_then(Value::as_str) {
            certificate_key_rule("controlPlane.certificateKey", k, &mut errs);
        }
        local_api_rules(
            "controlPlane.localAPIEndpoint",
            cp.get("localAPIEndpoint"),
            &mut errs,
        );
    }
    node_registration_rules(join, &mut errs);
    errs
}

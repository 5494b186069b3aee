//! Newtypes of the node config that validate while parsing, so a `NodeConfig` that exists is a
//! valid one. Formats follow kubeadm's own validation (reference §1.5, §1.6, §1.9) so a bad value
//! is refused at first boot before kubeadm runs, with a message naming the field.
//!
//! The join secrets themselves are in `credentials`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements `Deserialize` through `FromStr` (errors become serde custom errors, which the
/// TOML parser locates at the value) and `Serialize` through `Display`.
macro_rules! string_newtype_serde {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// `host:port` where host is a DNS name, an IPv4 address or a bracketed IPv6 address (what Go's
/// `net.SplitHostPort` accepts and kubeadm requires of `apiServerEndpoint`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid endpoint `{s}`: {why} (expected host:port)");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(|| bad("missing port"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in brackets"))?;
            (h, p)
        } else {
            let (h, p) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
            if h.contains(':') {
                return Err(bad("IPv6 addresses must be written in brackets"));
            }
            if h.parse::<std::net::Ipv4Addr>().is_err() && !is_dns1123_subdomain(h) {
                return Err(bad("host is neither an IPv4 address nor a DNS name"));
            }
            (h, p)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be a number from 1 to 65535"))?;
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

string_newtype_serde!(Endpoint);

/// One or two CIDRs (`"10.244.0.0/16"` or dual-stack `"10.244.0.0/16,fd00::/56"`), host bits
/// zero, families distinct when two are given.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Subnets(Vec<(IpAddr, u8)>);

impl FromStr for Subnets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (addr, len) = part
                .split_once('/')
                .ok_or_else(|| format!("invalid CIDR `{part}`: missing /prefix-length"))?;
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("invalid CIDR `{part}`: `{addr}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 =
                len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                    format!("invalid CIDR `{part}`: prefix length must be 0..={max}")
                })?;
            let bits: u128 = match addr {
                IpAddr::V4(a) => u32::from(a) as u128,
                IpAddr::V6(a) => u128::from(a),
            };
            let host_bits = max - len;
            if host_bits > 0 && bits & ((1u128 << host_bits) - 1) != 0 {
                return Err(format!(
                    "invalid CIDR `{part}`: address has bits set after the /{len} prefix"
                ));
            }
            nets.push((addr, len));
        }
        match nets.as_slice() {
            [_] => {}
            [a, b] if a.0.is_ipv4() != b.0.is_ipv4() => {}
            [_, _] => {
                return Err(format!(
                    "invalid subnets `{s}`: a dual-stack pair needs one IPv4 and one IPv6 CIDR"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid subnets `{s}`: at most two CIDRs (one per IP family)"
                ))
            }
        }
        Ok(Subnets(nets))
    }
}

impl fmt::Display for Subnets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, l)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}/{l}")?;
        }
        Ok(())
    }
}

string_newtype_serde!(Subnets);

/// A DNS-1123 subdomain: what Kubernetes accepts as a node name and kubeadm as `nodeRegistration.name`.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Kubernetes node name (DNS-1123 subdomain, lower case).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if is_dns1123_subdomain(s) {
            Ok(NodeName(s.to_owned()))
        } else {
            Err(format!("invalid node name `{s}`: must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit)"))
        }
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype_serde!(NodeName);

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: label names and values.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Labels the kubelet may set on its own node in the `kubernetes.io`/`k8s.io` namespaces
/// (kubelet refuses to start with any other such label in `--node-labels`).
const KUBELET_ALLOWED_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.kubernetes.io/zone",
    "failure-domain.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "node.kubernetes.io/instance-type",
];

/// A label or taint key: `[prefix/]name`, prefix a DNS-1123 subdomain.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct LabelKey(String);

impl LabelKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the kubelet may apply this label to its own node via `--node-labels`.
    pub fn kubelet_may_set(&self) -> bool {
        let Some((prefix, _)) = self.0.split_once('/') else {
            return true;
        };
        let reserved = |ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
        if !reserved("kubernetes.io") && !reserved("k8s.io") {
            return true;
        }
        KUBELET_ALLOWED_LABELS.contains(&self.0.as_str())
            || reserved("kubelet.kubernetes.io")
            || reserved("node.kubernetes.io")
    }
}

impl FromStr for LabelKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (prefix, name) = match s.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, s),
        };
        if let Some(p) = prefix {
            if !is_dns1123_subdomain(p) {
                return Err(format!(
                    "invalid key `{s}`: prefix `{p}` must be a DNS-1123 subdomain"
                ));
            }
        }
        if !is_qualified_name_part(name) {
            return Err(format!("invalid key `{s}`: name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"));
        }
        Ok(LabelKey(s.to_owned()))
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype_serde!(LabelKey);

/// A label or taint value: empty, or a qualified name part (at most 63 characters).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LabelValue(String);

impl LabelValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || is_qualified_name_part(s) {
            Ok(LabelValue(s.to_owned()))
        } else {
            Err(format!("invalid value `{s}`: must be empty or 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))
        }
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype_serde!(LabelValue);

/// A CRI endpoint; kubeadm validates it as a URL with scheme `unix`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CriSocket(String);

impl CriSocket {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CriSocket {
    fn default() -> Self {
        CriSocket("unix:///var/run/containerd/containerd.sock".to_owned())
    }
}

impl FromStr for CriSocket {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
                Ok(CriSocket(s.to_owned()))
            }
            _ => Err(format!(
                "invalid CRI socket `{s}`: expected `unix://` followed by an absolute path"
            )),
        }
    }
}

impl fmt::Display for CriSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype_serde!(CriSocket);

/// A Kubernetes release, `v1.31.2` (a leading `v` is added when missing).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KubernetesVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The text as kubeadm wants it, with the leading `v` and any pre-release suffix.
    text: String,
}

impl KubernetesVersion {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for KubernetesVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid Kubernetes version `{s}`: expected vMAJOR.MINOR.PATCH, like v1.31.2")
        };
        let t = s.trim();
        let body = t.strip_prefix('v').unwrap_or(t);
        let (core, _suffix) = match body.split_once(['-', '+']) {
            Some((c, rest)) => (c, Some(rest)),
            None => (body, None),
        };
        let nums: Vec<u32> = core
            .split('.')
            .map(|n| n.parse::<u32>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [major, minor, patch] = nums[..] else {
            return Err(bad());
        };
        Ok(KubernetesVersion {
            major,
            minor,
            patch,
            text: format!("v{body}"),
        })
    }
}

impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

string_newtype_serde!(KubernetesVersion);

/// A duration written as `90s`, `30m`, `1h30m`, `24h` (whole seconds, at least one).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DurationSpec(Duration);

impl DurationSpec {
    pub const fn from_secs(s: u64) -> Self {
        DurationSpec(Duration::from_secs(s))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    /// The form Go's `time.Duration.String()` prints (`4m0s`, `24h0m0s`), which kubeadm's
    /// `metav1.Duration` fields use.
    pub fn go_string(self) -> String {
        let s = self.0.as_secs();
        let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
        if h > 0 {
            format!("{h}h{m}m{sec}s")
        } else if m > 0 {
            format!("{m}m{sec}s")
        } else {
            format!("{sec}s")
        }
    }
}

impl FromStr for DurationSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid duration `{s}`: expected e.g. `90s`, `30m`, `1h30m` or `24h`");
        let mut total: u64 = 0;
        let mut num = String::new();
        let mut last_unit = u64::MAX;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            // Units must appear largest first, each once.
            if num.is_empty() || unit >= last_unit {
                return Err(bad());
            }
            last_unit = unit;
            let n: u64 = num.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            num.clear();
        }
        if !num.is_empty() || total == 0 {
            return Err(bad());
        }
        Ok(DurationSpec(Duration::from_secs(total)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.go_string())
    }
}

string_newtype_serde!(DurationSpec);

/// A kubelet flag name without leading dashes, as kubeadm's `kubeletExtraArgs` wants it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct FlagName(String);

impl FlagName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FlagName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(FlagName(s.to_owned()))
        } else {
            Err(format!("invalid kubelet flag name `{s}`: write it without leading dashes, lower-case letters, digits and '-' (e.g. `node-ip`)"))
        }
    }
}

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FlagName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for FlagName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Where the join material lives in the store: `a/b/c` of letters, digits, `_ - .`; no empty,
/// `.` or `..` segment (file stores map it onto paths).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 512
            && s.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            });
        if ok {
            Ok(SecretKey(s.to_owned()))
        } else {
            Err(format!("invalid secret key `{s}`: expected segments of letters, digits, '_', '-' or '.' separated by '/', like `clusters/prod/join`"))
        }
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype_serde!(SecretKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!("k8s.example:6443".parse::<Endpoint>().unwrap().port(), 6443);
        assert_eq!(
            "[fd00::1]:6443".parse::<Endpoint>().unwrap().to_string(),
            "[fd00::1]:6443"
        );
        for bad in [
            "k8s.example",
            "k8s.example:0",
            "fd00::1:6443",
            "Bad_Host:1",
            ":6443",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets() {
        assert!("10.244.0.0/16".parse::<Subnets>().is_ok());
        assert!("10.244.0.0/16,fd00:10:244::/56".parse::<Subnets>().is_ok());
        assert!("10.244.0.1/16".parse::<Subnets>().is_err());
        assert!("10.244.0.0/16,10.245.0.0/16".parse::<Subnets>().is_err());
        assert!("10.244.0.0/33".parse::<Subnets>().is_err());
    }

    #[test]
    fn durations_print_like_go() {
        let d: DurationSpec = "24h".parse().unwrap();
        assert_eq!(d.go_string(), "24h0m0s");
        assert_eq!("4m".parse::<DurationSpec>().unwrap().go_string(), "4m0s");
        assert_eq!(
            "1h30m5s".parse::<DurationSpec>().unwrap().get().as_secs(),
            5405
        );
        for bad in ["", "0s", "5", "m5", "5m1h", "1d"] {
            assert!(bad.parse::<DurationSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kubelet_label_namespaces() {
        let k = |s: &str| s.parse::<LabelKey>().unwrap();
        assert!(k("example.com/pool").kubelet_may_set());
        assert!(k("node.kubernetes.io/pool").kubelet_may_set());
        assert!(k("topology.kubernetes.io/zone").kubelet_may_set());
        assert!(!k("node-role.kubernetes.io/worker").kubelet_may_set());
    }
}

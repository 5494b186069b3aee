//! The files `compose::node` renders from the recipe. Pure functions of the recipe (and a few
//! facts about the tree), so every file has a golden copy under
//! `builder/testdata/compose/node/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::recipe::schema::{JournalStorage, Recipe, Size, TimeSyncService};

/// One file to write into the tree. `path` is absolute in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub content: String,
    pub mode: u32,
}

/// Facts about the tree and the build that the rendered files depend on besides the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    /// Where the kubelet binary is in the image (the `kubelet` artifact's `dest`).
    pub kubelet_path: String,
    /// The tree has OpenSSH's server (`ssh.service`): its host keys must be made per node.
    pub has_sshd: bool,
    /// Where containerd looks for CNI plugins (the `cni-plugins` artifact's `dest`).
    pub cni_bin_dir: String,
}

/// Kernel modules the kubelet and kube-proxy need whatever the recipe says: overlayfs for
/// containerd's snapshotter, br_netfilter so bridged pod traffic passes iptables.
const REQUIRED_MODULES: [&str; 2] = ["overlay", "br_netfilter"];

/// sysctls kubeadm's preflight checks require; the recipe may override them.
const REQUIRED_SYSCTLS: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.ipv4.ip_forward", "1"),
];

/// Where nodeboot is installed in the image.
pub const NODEBOOT_PATH: &str = "/usr/bin/nodeboot";

/// Every file the node stage renders, in a fixed order.
pub fn render_node_files(recipe: &Recipe, ctx: &RenderContext) -> Vec<RenderedFile> {
    let f = |path: &str, content: String| RenderedFile {
        path: path.to_owned(),
        content,
        mode: 0o644,
    };
    let mut out = vec![
        f("/etc/modules-load.d/nodeimg.conf", modules_load(recipe)),
        f("/etc/sysctl.d/90-nodeimg.conf", sysctl_conf(recipe)),
        f("/etc/fstab", fstab()),
        f("/etc/hosts", hosts(recipe)),
        f("/etc/resolv.conf", resolv_conf()),
        f(
            "/etc/containerd/config.toml",
            containerd_config(recipe, ctx),
        ),
        f("/etc/crictl.yaml", crictl_yaml()),
        f(
            "/usr/lib/systemd/system/kubelet.service",
            kubelet_service(ctx),
        ),
        f(
            "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
            kubeadm_dropin(ctx),
        ),
        f("/etc/default/kubelet", default_kubelet(recipe)),
        f(
            "/etc/systemd/journald.conf.d/90-nodeimg.conf",
            journald(recipe),
        ),
    ];
    if let Some(h) = &recipe.os.hostname {
        out.push(f("/etc/hostname", format!("{h}\n")));
    }
    if let Some(t) = timesyncd(recipe) {
        out.push(f("/etc/systemd/timesyncd.conf.d/90-nodeimg.conf", t));
    }
    if ctx.has_sshd {
        out.push(f(
            "/etc/systemd/system/ssh.service.d/10-nodeimg-host-keys.conf",
            ssh_host_keys_dropin(),
        ));
    }
    let with_keys: Vec<_> = recipe
        .os
        .users
        .iter()
        .filter(|u| !u.ssh_authorized_keys.is_empty())
        .collect();
    if !with_keys.is_empty() {
        out.push(f("/etc/ssh/sshd_config.d/90-nodeimg.conf", sshd_dropin()));
    }
    for u in with_keys {
        let mut text = String::new();
        for k in &u.ssh_authorized_keys {
            let _ = writeln!(text, "{}", k.trim());
        }
        out.push(f(&format!("/etc/ssh/authorized_keys.d/{}", u.name), text));
    }
    for u in recipe.os.users.iter().filter(|u| u.sudo) {
        out.push(RenderedFile {
            path: format!("/etc/sudoers.d/90-nodeimg-{}", u.name),
            content: format!("{} ALL=(ALL:ALL) NOPASSWD: ALL\n", u.name),
            mode: 0o440,
        });
    }
    if recipe.nodeboot.enabled {
        out.push(f(
            "/usr/lib/systemd/system/nodeboot.service",
            nodeboot_service(),
        ));
        out.push(f(
            "/usr/lib/systemd/system/nodeboot-health.service",
            nodeboot::units::NODEBOOT_HEALTH_SERVICE.to_owned(),
        ));
    }
    out
}

fn modules_load(recipe: &Recipe) -> String {
    let mut text = String::from(
        "# Written by nodeimg. overlay and br_netfilter are always loaded (containerd and\n\
         # kube-proxy need them); the rest comes from the recipe's os.kernel-modules.\n",
    );
    let mut seen = Vec::new();
    for m in REQUIRED_MODULES
        .iter()
        .map(|s| s.to_string())
        .chain(recipe.os.kernel_modules.iter().cloned())
    {
        if !seen.contains(&m) {
            let _ = writeln!(text, "{m}");
            seen.push(m);
        }
    }
    text
}

fn sysctl_conf(recipe: &Recipe) -> String {
    let mut all: BTreeMap<String, String> = REQUIRED_SYSCTLS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &recipe.os.sysctls {
        all.insert(k.clone(), v.to_string());
    }
    let mut text = String::from(
        "# Written by nodeimg: the recipe's os.sysctls over the settings kubeadm's preflight\n\
         # checks require.\n",
    );
    for (k, v) in all {
        let _ = writeln!(text, "{k} = {v}");
    }
    text
}

fn fstab() -> String {
    "# Written by nodeimg. The root filesystem is mounted by the initramfs (root=LABEL=root\n\
     # and the ostree= argument); /etc, /var and /sysroot by ostree. /boot is the separate\n\
     # ext4 partition. No swap: the kubelet requires swap off.\n\
     LABEL=boot /boot ext4 defaults 0 2\n"
        .to_owned()
}

fn hosts(recipe: &Recipe) -> String {
    let mut text = String::from("127.0.0.1 localhost\n");
    if let Some(h) = &recipe.os.hostname {
        let _ = writeln!(text, "127.0.1.1 {h}");
    }
    text.push_str("::1 localhost ip6-localhost ip6-loopback\n");
    text
}

fn resolv_conf() -> String {
    // mmdebstrap copies the build host's resolver here; the node gets its own at boot.
    "# Written at boot by the node's network configuration.\n".to_owned()
}

/// The pause image kubeadm of this Kubernetes minor expects (kubeadm warns on a mismatch).
fn default_sandbox_image(recipe: &Recipe) -> String {
    let minor = recipe.kubernetes.version.minor;
    let tag = match minor {
        0..=30 => "3.9",
        31..=33 => "3.10",
        _ => "3.10.1",
    };
    format!("registry.k8s.io/pause:{tag}")
}

fn containerd_config(recipe: &Recipe, ctx: &RenderContext) -> String {
    let sandbox = recipe
        .kubernetes
        .sandbox_image
        .clone()
        .unwrap_or_else(|| default_sandbox_image(recipe));
    format!(
        r#"# Written by nodeimg: containerd config format 2 with only what differs from the
# built-in defaults. SystemdCgroup must match the kubelet's cgroupDriver (systemd).
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
  snapshotter = "overlayfs"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true

# The CNI plugins of the image (the recipe's cni-plugins artifact) or, without one, where
# network add-ons install theirs (/opt is writable: /opt -> /var/opt).
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{bin_dir}"
  conf_dir = "/etc/cni/net.d"
"#,
        bin_dir = ctx.cni_bin_dir
    )
}

fn crictl_yaml() -> String {
    "runtime-endpoint: unix:///run/containerd/containerd.sock\n\
     image-endpoint: unix:///run/containerd/containerd.sock\n\
     timeout: 10\n\
     debug: false\n"
        .to_owned()
}

fn kubelet_service(ctx: &RenderContext) -> String {
    format!(
        "[Unit]\n\
         Description=kubelet: the Kubernetes node agent\n\
         Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/\n\
         Wants=network-online.target containerd.service\n\
         After=network-online.target containerd.service\n\
         \n\
         [Service]\n\
         ExecStart={kubelet}\n\
         # Until kubeadm has written its configuration the kubelet exits at once; keep\n\
         # retrying without ever hitting the start limit.\n\
         Restart=always\n\
         RestartSec=10\n\
         StartLimitInterval=0\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        kubelet = ctx.kubelet_path
    )
}

fn kubeadm_dropin(ctx: &RenderContext) -> String {
    format!(
        "# Written by nodeimg: how kubeadm drives the kubelet. kubeadm writes the kubeconfigs,\n\
         # /var/lib/kubelet/config.yaml and kubeadm-flags.env during init/join;\n\
         # /etc/default/kubelet carries the image's own extra flags.\n\
         [Service]\n\
         Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"\n\
         Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"\n\
         EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n\
         EnvironmentFile=-/etc/default/kubelet\n\
         ExecStart=\n\
         ExecStart={kubelet} $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS\n",
        kubelet = ctx.kubelet_path
    )
}

/// A size as a Kubernetes quantity (`10Mi`).
fn k8s_quantity(s: Size) -> String {
    let b = s.bytes();
    for (unit, n) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= n && b % n == 0 {
            return format!("{}{unit}", b / n);
        }
    }
    b.to_string()
}

/// A size as systemd writes it (`512M`, base 1024).
fn systemd_size(s: Size) -> String {
    let b = s.bytes();
    for (unit, n) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if b >= n && b % n == 0 {
            return format!("{}{unit}", b / n);
        }
    }
    b.to_string()
}

fn default_kubelet(recipe: &Recipe) -> String {
    let logs = &recipe.os.container_logs;
    format!(
        "# Written by nodeimg: kubelet flags of this image (read through 10-kubeadm.conf).\n\
         # Container log rotation comes from the recipe's os.container-logs; kubeadm's own\n\
         # KubeletConfiguration does not set it.\n\
         KUBELET_EXTRA_ARGS=\"--container-log-max-size={} --container-log-max-files={}\"\n",
        k8s_quantity(logs.max_size),
        logs.max_files
    )
}

fn journald(recipe: &Recipe) -> String {
    let j = &recipe.os.journald;
    let storage = match j.storage {
        JournalStorage::Persistent => "persistent",
        JournalStorage::Volatile => "volatile",
    };
    format!(
        "# Written by nodeimg from the recipe's os.journald.\n\
         [Journal]\n\
         Storage={storage}\n\
         SystemMaxUse={}\n",
        systemd_size(j.system_max_use)
    )
}

fn timesyncd(recipe: &Recipe) -> Option<String> {
    let t = &recipe.os.time_sync;
    if t.service != TimeSyncService::SystemdTimesyncd || t.servers.is_empty() {
        return None;
    }
    Some(format!(
        "# Written by nodeimg from the recipe's os.time-sync.\n\
         [Time]\n\
         NTP={}\n",
        t.servers.join(" ")
    ))
}

fn ssh_host_keys_dropin() -> String {
    "# Written by nodeimg. The image ships no SSH host keys (every node would share them);\n\
     # each node generates its own before the first start. The list is reset so the key\n\
     # generation runs before Debian's `sshd -t` check, which fails without keys.\n\
     [Service]\n\
     ExecStartPre=\n\
     ExecStartPre=/usr/bin/ssh-keygen -A\n\
     ExecStartPre=/usr/sbin/sshd -t\n"
        .to_owned()
}

fn sshd_dropin() -> String {
    "# Written by nodeimg. Keys of the image's users live under /etc (updated with the\n\
     # image) rather than in home directories (created once from /var and never updated).\n\
     AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u\n"
        .to_owned()
}

/// nodeboot's own unit file: the `nodeboot` crate owns its command line and unit.
fn nodeboot_service() -> String {
    nodeboot::units::NODEBOOT_SERVICE.to_owned()
}

/// Compare a rendered text with its golden file under `builder/testdata/compose/`.
#[cfg(test)]
pub(crate) fn check_golden(rel: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/compose")
        .join(rel);
    nodeimg_common::golden::assert_golden(path, actual);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipe that sets every field the renderers read.
    const RECIPE: &str = r#"
version = 1
[image]
name = "k8s-node"
version = "1.4.0"
[base]
packages = ["systemd"]
[kubernetes]
version = "1.34.2"
[os]
hostname = "node0"
kernel-modules = ["overlay", "ip_vs"]
sysctls = { "vm.max_map_count" = 262144, "net.ipv4.ip_forward" = 1, "kernel.panic" = 10 }
[os.time-sync]
servers = ["0.pool.ntp.org", "1.pool.ntp.org"]
[os.journald]
system-max-use = "1GiB"
storage = "volatile"
[os.container-logs]
max-size = "50MiB"
max-files = 3
[[os.user]]
name = "ops"
groups = ["sudo"]
ssh-authorized-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly ops@example"]
sudo = true
"#;

    fn ctx() -> RenderContext {
        RenderContext {
            kubelet_path: "/usr/bin/kubelet".into(),
            has_sshd: true,
            cni_bin_dir: "/usr/lib/cni".into(),
        }
    }

    #[test]
    fn every_rendered_file_matches_golden() {
        let recipe: Recipe = toml::from_str(RECIPE).unwrap();
        let files = render_node_files(&recipe, &ctx());
        for f in &files {
            check_golden(&format!("node{}", f.path), &f.content);
        }
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"/etc/sudoers.d/90-nodeimg-ops"));
        assert!(paths.contains(&"/etc/ssh/authorized_keys.d/ops"));
        let sudo = files.iter().find(|f| f.path.contains("sudoers")).unwrap();
        assert_eq!(sudo.mode, 0o440);
    }

    #[test]
    fn recipe_overrides_required_sysctls_and_modules_are_deduplicated() {
        let mut recipe: Recipe = toml::from_str(RECIPE).unwrap();
        recipe.os.sysctls.insert(
            "net.ipv4.ip_forward".into(),
            crate::recipe::schema::SysctlValue::Int(0),
        );
        let text = sysctl_conf(&recipe);
        assert!(text.contains("net.ipv4.ip_forward = 0\n"));
        assert_eq!(text.matches("net.ipv4.ip_forward").count(), 1);
        let m = modules_load(&recipe);
        assert_eq!(m.matches("\noverlay\n").count(), 1);
    }

    #[test]
    fn minimal_recipe_renders_no_optional_files() {
        let recipe: Recipe = toml::from_str(
            "version = 1\n[image]\nname = \"n\"\nversion = \"1.0.0\"\n[base]\n[kubernetes]\nversion = \"1.30.1\"\n[nodeboot]\nenabled = false\n",
        )
        .unwrap();
        let files = render_node_files(
            &recipe,
            &RenderContext {
                kubelet_path: "/opt/k/kubelet".into(),
                has_sshd: false,
                cni_bin_dir: "/opt/cni/bin".into(),
            },
        );
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert!(!paths.iter().any(|p| p.contains("ssh")));
        assert!(!paths.contains(&"/etc/hostname"));
        assert!(!paths.contains(&"/usr/lib/systemd/system/nodeboot.service"));
        assert!(!paths.contains(&"/usr/lib/systemd/system/nodeboot-health.service"));
        let c = files
            .iter()
            .find(|f| f.path == "/etc/containerd/config.toml")
            .unwrap();
        assert!(c.content.contains("registry.k8s.io/pause:3.9"));
        assert!(c.content.contains("bin_dir = \"/opt/cni/bin\""));
        let k = files
            .iter()
            .find(|f| f.path.ends_with("10-kubeadm.conf"))
            .unwrap();
        assert!(k.content.contains("ExecStart=/opt/k/kubelet $KUBELET"));
    }

    #[test]
    fn quantities() {
        assert_eq!(k8s_quantity(Size(10 << 20)), "10Mi");
        assert_eq!(k8s_quantity(Size(1500)), "1500");
        assert_eq!(systemd_size(Size(512 << 20)), "512M");
        assert_eq!(systemd_size(Size(2 << 30)), "2G");
    }
}

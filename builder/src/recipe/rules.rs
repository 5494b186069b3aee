//! Checks of single values that the type system does not express (package names, kernel
//! arguments, unit names, ...). Each returns the reason a value is rejected; the file check
//! applies them to every file with the value's position.

/// Characters Debian policy allows in a package name (after the first).
fn is_pkg_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
}

/// A Debian package name (policy §5.6.1).
pub fn package_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| is_pkg_char(c))
    {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a Debian package name (lower-case letters, digits, `+`, `-`, `.`; \
             at least two characters)"
        ))
    }
}

/// A package as apt takes it: a name, optionally pinned with `=version` or `/suite`. Commas
/// and spaces would split the list mmdebstrap receives, so they are rejected here.
pub fn package_spec(s: &str) -> Result<(), String> {
    let (name, pin) = match s.find(['=', '/']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    package_name(name)?;
    match pin {
        Some(p) if p.is_empty() || p.contains(|c: char| c.is_whitespace() || c == ',') => Err(
            format!("`{s}`: a version or suite pin must be non-empty and have no spaces or commas"),
        ),
        _ => Ok(()),
    }
}

/// A Debian suite or codename (`bookworm`, `bookworm-backports`).
pub fn suite(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(format!("`{s}` is not a suite name (e.g. `bookworm`)"))
    }
}

/// An archive component (`main`, `contrib`, `non-free-firmware`).
pub fn component(s: &str) -> Result<(), String> {
    suite(s).map_err(|_| format!("`{s}` is not an archive component (e.g. `main`)"))
}

/// A kernel module name as `modules-load.d` takes it.
pub fn module_name(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!("`{s}` is not a kernel module name"))
    }
}

/// One kernel command line argument. `root=` and `ostree=` are set by nodeimg and libostree;
/// a second one would make the boot depend on which the kernel or initramfs reads first.
pub fn kernel_arg(s: &str) -> Result<(), String> {
    if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{s}` is not a single kernel argument (no spaces; list each argument separately)"
        ));
    }
    let key = s.split('=').next().unwrap_or(s);
    if matches!(key, "root" | "ostree" | "rw" | "ro") {
        return Err(format!(
            "`{s}`: `{key}` is set by nodeimg (root=LABEL=root rw) and libostree (ostree=); \
             do not set it in the recipe"
        ));
    }
    Ok(())
}

const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "target",
    "mount",
    "automount",
    "path",
    "slice",
    "scope",
    "swap",
    "device",
];

/// A systemd unit name with its type suffix (`containerd.service`, `getty@ttyS0.service`).
pub fn unit_name(s: &str) -> Result<(), String> {
    let ok_chars = s.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'@' | b'\\')
    });
    match s.rsplit_once('.') {
        Some((stem, suffix)) if ok_chars && !stem.is_empty() && UNIT_SUFFIXES.contains(&suffix) => {
            Ok(())
        }
        _ => Err(format!(
            "`{s}` is not a systemd unit name (it needs a type suffix: .{})",
            UNIT_SUFFIXES.join(", .")
        )),
    }
}

/// A sysctl name as `sysctl.d` takes it: dot- or slash-separated, at least two parts;
/// `*` globs and a leading `-` (ignore failures) are systemd-sysctl syntax.
pub fn sysctl_name(s: &str) -> Result<(), String> {
    let name = s.strip_prefix('-').unwrap_or(s);
    let parts: Vec<&str> = name.split(['.', '/']).collect();
    let first_ok = parts
        .first()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()));
    let rest_ok = parts.iter().all(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*' | b'@'))
    });
    if parts.len() >= 2 && first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` does not look like a sysctl name (e.g. `net.ipv4.ip_forward`)"
        ))
    }
}

/// A hostname (RFC 1123): dot-separated labels of letters, digits and `-`.
pub fn hostname(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid hostname"))
    }
}

/// A crypt(3) hash (`$6$...`, `$y$...`) or a locked marker (`!`, `*`). Anything else is most
/// likely a plain-text password, which must never end up in an image.
pub fn password_hash(s: &str) -> Result<(), String> {
    let fields = s.split('$').count();
    if s == "!" || s == "*" || (s.starts_with('$') && fields >= 4 && !s.contains(':')) {
        Ok(())
    } else {
        Err(
            "not a crypt(3) password hash (expected e.g. `$y$...` or `$6$...` as printed by \
             `mkpasswd`); plain-text passwords are not accepted"
                .to_owned(),
        )
    }
}

/// A local user or group name (`useradd` defaults).
pub fn account_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid user or group name"))
    }
}

/// A file owner: a user/group name or a numeric id.
pub fn owner(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        account_name(s)
    }
}

/// An OpenSSH public key line: `type base64 [comment]`.
pub fn ssh_public_key(s: &str) -> Result<(), String> {
    let mut parts = s.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    let body_ok = parts.next().is_some_and(|b| {
        b.len() >= 16
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
    });
    if known && body_ok && !s.contains('\n') {
        Ok(())
    } else {
        Err("not an OpenSSH public key (expected `ssh-ed25519 AAAA... comment`)".to_owned())
    }
}

/// An NTP server name or address.
pub fn ntp_server(s: &str) -> Result<(), String> {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(format!("`{s}` is not a server name or address"))
    }
}

/// An OSTree ref: `/`-separated parts of letters, digits, `-`, `_`, `.`, each starting with
/// a letter, digit or `_`.
pub fn ostree_ref(s: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    };
    if s.split('/').all(part_ok) {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an OSTree ref (e.g. `nodeimg/k8s-node/x86_64`)"
        ))
    }
}

/// A container image reference (no spaces; containerd parses the rest).
pub fn image_reference(s: &str) -> Result<(), String> {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(format!("`{s}` is not a container image reference"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages() {
        for ok in [
            "systemd",
            "linux-image-amd64",
            "g++",
            "libc6",
            "ca-certificates",
        ] {
            assert!(package_spec(ok).is_ok(), "{ok}");
        }
        assert!(package_spec("containerd=1.6.20~ds1-1+b1").is_ok());
        assert!(package_spec("e2fsprogs/bookworm-backports").is_ok());
        for bad in ["Systemd", "a", "curl,wget", "curl wget", "curl=", "-x"] {
            assert!(package_spec(bad).is_err(), "{bad}");
        }
        assert!(package_name("curl=1").is_err());
    }

    #[test]
    fn kernel_args() {
        assert!(kernel_arg("console=ttyS0,115200").is_ok());
        assert!(kernel_arg("quiet").is_ok());
        assert!(kernel_arg("a b").is_err());
        assert!(kernel_arg("").is_err());
        let e = kernel_arg("root=/dev/sda1").unwrap_err();
        assert!(e.contains("set by nodeimg"), "{e}");
        assert!(kernel_arg("ostree=/x").is_err());
    }

    #[test]
    fn units() {
        assert!(unit_name("containerd.service").is_ok());
        assert!(unit_name("getty@ttyS0.service").is_ok());
        assert!(unit_name("var-lib.mount").is_ok());
        let e = unit_name("containerd").unwrap_err();
        assert!(e.contains(".service"), "{e}");
        assert!(unit_name(".service").is_err());
        assert!(unit_name("foo.conf").is_err());
    }

    #[test]
    fn sysctls() {
        for ok in [
            "net.ipv4.ip_forward",
            "net.bridge.bridge-nf-call-iptables",
            "fs.inotify.max_user_watches",
            "net.ipv4.conf.*.rp_filter",
            "-net.ipv6.conf.eth0.disable_ipv6",
            "kernel/pid_max",
        ] {
            assert!(sysctl_name(ok).is_ok(), "{ok}");
        }
        for bad in ["ip_forward", "net..x", "Net.ipv4.x", "net.ipv4.x y", ""] {
            assert!(sysctl_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn misc() {
        assert!(hostname("node-1.example.com").is_ok());
        assert!(hostname("-bad").is_err());
        assert!(password_hash("$y$j9T$abc$def").is_ok());
        assert!(password_hash("$6$salt$hash").is_ok());
        assert!(password_hash("!").is_ok());
        assert!(password_hash("hunter2").is_err());
        assert!(account_name("core").is_ok());
        assert!(account_name("Core").is_err());
        assert!(owner("1000").is_ok());
        assert!(ssh_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host").is_ok());
        assert!(ssh_public_key("hello world").is_err());
        assert!(ostree_ref("nodeimg/k8s-node/x86_64").is_ok());
        assert!(ostree_ref("nodeimg//x").is_err());
        assert!(ostree_ref("-x").is_err());
        assert!(suite("bookworm-backports").is_ok());
        assert!(suite("Bookworm").is_err());
        assert!(module_name("br_netfilter").is_ok());
        assert!(module_name("br netfilter").is_err());
    }
}

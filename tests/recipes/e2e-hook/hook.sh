#!/bin/sh
# nodeimg e2e, TEST ONLY (baked in by tests/recipes/e2e-v1.toml and its variants, never by a
# shipped recipe): lets a VM test run commands in the guest without a shell login.
#
# `seed` (nodeimg-e2e-seed.service, before nodeboot): copies the test's inputs from the NoCloud
#   seed (volume `cidata`) to /run/nodeimg-e2e, mode 0600: `e2e-hook.sh` (the commands of
#   this boot), `vault-token`, `cluster-ca.crt`, `kubeadm-double.env`. Whatever is absent is
#   skipped. nodeboot reads its own `user-data` from the same volume.
# `run` (nodeimg-e2e-hook.service, after first boot, the report and the health gate): sources
#   /run/nodeimg-e2e/e2e-hook.sh with the helpers below. Output goes to the serial console;
#   every line a test asserts on starts with `E2E-`.
set -u
S=/run/nodeimg-e2e

seed() {
    mkdir -p "$S"
    chmod 0700 "$S"
    dev=
    i=0
    while [ $i -lt 60 ]; do
        dev=$(blkid -L cidata 2>/dev/null || blkid -L CIDATA 2>/dev/null || true)
        [ -n "$dev" ] && break
        sleep 0.5
        i=$((i + 1))
    done
    if [ -z "$dev" ]; then
        echo "E2E-HOOK: no cidata volume"
        return 0
    fi
    mkdir -p "$S/cidata"
    mount -o ro "$dev" "$S/cidata" || return 1
    for f in e2e-hook.sh vault-token cluster-ca.crt kubeadm-double.env; do
        if [ -f "$S/cidata/$f" ]; then install -m 0600 "$S/cidata/$f" "$S/$f"; fi
    done
    umount "$S/cidata"
    rmdir "$S/cidata"
}

# --- helpers for e2e-hook.sh ---

# The booted deployment's commit, the image version file and the kernel command line (tags
# of their own: the boot report prints E2E-BOOTED too).
e2e_where() {
    echo "E2E-HOOK-BOOTED: $(ostree admin status | sed -n 's/^\* [^ ]* \([0-9a-f]*\)\.[0-9]*.*/\1/p')"
    echo "E2E-HOOK-VERSION: $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' /usr/lib/nodeimg/version)"
    echo "E2E-HOOK-CMDLINE: $(cat /proc/cmdline)"
}

# `nodeboot status --json` on one line (pretty JSON has no newline inside strings). Data is
# printed with printf: dash's echo would turn the `\n` escapes inside JSON strings into newlines.
e2e_status() {
    printf 'E2E-STATUS-JSON: %s\n' "$(nodeboot status --json | tr -d '\n')"
}

# e2e_run NAME CMD...: run CMD, each output line as `E2E-OUT NAME: line`, then
# `E2E-RC NAME: status`.
e2e_run() {
    name=$1
    shift
    "$@" >"$S/out.$name" 2>&1
    rc=$?
    sed "s/^/E2E-OUT $name: /" "$S/out.$name"
    echo "E2E-RC $name: $rc"
    return $rc
}

# The kubeadm double's journal (one JSON line per call), with every bootstrap token and
# certificate key replaced by `<sha256:HASH>` of its value: the test compares the hashes with
# what it published, and the serial log must not carry the secrets themselves.
e2e_kubeadm_journal() {
    j=${1:-/var/log/kubeadm-double.jsonl}
    [ -f "$j" ] || { echo "E2E-KUBEADM-JOURNAL-MISSING: $j"; return 0; }
    while IFS= read -r line; do
        for v in $(printf '%s' "$line" | grep -o '[a-z0-9]\{6\}\.[a-z0-9]\{16\}' | sort -u) \
            $(printf '%s' "$line" | grep -o 'certificateKey: [^0-9a-f]\{0,3\}[0-9a-f]\{64\}' | grep -o '[0-9a-f]\{64\}$' | sort -u); do
            h=$(printf '%s' "$v" | sha256sum | cut -c1-64)
            line=$(printf '%s' "$line" | sed "s/$v/<sha256:$h>/g")
        done
        printf 'E2E-KUBEADM-JOURNAL: %s\n' "$line"
    done <"$j"
}

# The cluster CA certificate (public), one line each.
e2e_print_ca() {
    sed 's/^/E2E-CA: /' /etc/kubernetes/pki/ca.crt
}

# Sourced by the helpers' own test (tests/e2e/cluster.rs): functions only.
[ -n "${E2E_HOOK_SOURCE_ONLY:-}" ] && return 0

case "${1:-}" in
seed) seed ;;
run)
    [ -f "$S/e2e-hook.sh" ] || exit 0
    # A command that reboots (`nodeboot upgrade --reboot`) must not cut off what it printed:
    # finish this boot's commands, then let the shutdown stop the unit.
    trap '' TERM
    echo "E2E-HOOK-START: boot-id=$(cat /proc/sys/kernel/random/boot_id) uptime=$(cut -d' ' -f1 /proc/uptime)s"
    . "$S/e2e-hook.sh"
    echo "E2E-HOOK-END"
    ;;
*)
    echo "usage: $0 seed|run" >&2
    exit 2
    ;;
esac

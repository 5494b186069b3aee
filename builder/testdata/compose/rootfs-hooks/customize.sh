#!/bin/sh
# nodeimg rootfs: mmdebstrap customize hook. $1 is the finished rootfs.
set -eu
root="$1"

# The .debs were synced out to the cache already; keep them out of the image.
rm -f "$root"/var/cache/apt/archives/*.deb

# Undo the essential hook's diversion so the image carries dracut's real hook.
rm -f "$root/etc/kernel/postinst.d/dracut"
chroot "$root" dpkg-divert --quiet --local --rename --remove /etc/kernel/postinst.d/dracut

# Debian's ostree-boot ships the dracut module 98ostree, but dracut only includes it when
# named. hostonly=no: the image boots on any machine, not the build host.
mkdir -p "$root/etc/dracut.conf.d"
cat > "$root/etc/dracut.conf.d/90-nodeimg-ostree.conf" <<'EOF'
add_dracutmodules+=" ostree systemd "
hostonly="no"
compress="zstd"
EOF

set -- "$root"/usr/lib/modules/*
if [ "$#" -ne 1 ] || [ ! -d "$1" ]; then
    echo "nodeimg: expected exactly one kernel under /usr/lib/modules, found: $*" >&2
    exit 1
fi
kver="${1##*/}"
chroot "$root" dracut --quiet --force --no-hostonly --kver "$kver" "/usr/lib/modules/$kver/initramfs.img"

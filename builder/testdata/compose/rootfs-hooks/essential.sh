#!/bin/sh
# nodeimg rootfs: mmdebstrap essential hook. $1 is the rootfs being built.
# Runs after the essential packages and before the --include ones (the kernel among them).
set -eu
root="$1"

# No /vmlinuz and /initrd.img symlinks in the root: ostreeify moves the kernel to
# /usr/lib/modules/$KVER/ and /boot becomes a separate partition.
echo "do_symlinks = no" > "$root/etc/kernel-img.conf"

# The kernel postinst and dracut's own trigger both run this hook, each building an
# initramfs (~30 s) that is thrown away. Divert the real hook and leave a no-op under its
# name (dracut's trigger calls the path directly, so it has to exist); the customize hook
# restores the real one and builds the initramfs once.
mkdir -p "$root/etc/kernel/postinst.d"
chroot "$root" dpkg-divert --quiet --local --rename \
    --divert /etc/kernel/postinst.d/dracut.nodeimg-disabled \
    --add /etc/kernel/postinst.d/dracut
printf '#!/bin/sh\nexit 0\n' > "$root/etc/kernel/postinst.d/dracut"
chmod 0755 "$root/etc/kernel/postinst.d/dracut"

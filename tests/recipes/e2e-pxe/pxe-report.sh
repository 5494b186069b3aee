#!/bin/sh
# nodeimg PXE e2e: print, on the serial console, what the network installer left on this node.
# Every line the test asserts on starts with `E2E-PXE-`. The config itself is not printed
# (a node config may name secret stores), only its digest.
c=/etc/nodeboot/config.toml
if [ -f "$c" ]; then
  echo "E2E-PXE-CONFIG: $(sha256sum "$c" | cut -d' ' -f1) $(stat -c '%a %U:%G' "$c")"
else
  echo "E2E-PXE-CONFIG: missing"
fi
# nodeboot logs which source delivered its user-data (never the user-data itself).
journalctl -b -u nodeboot.service -o cat --no-pager | grep -m1 'user-data found' | sed 's/^/E2E-PXE-USERDATA: /'
# kubeadm writes the kubelet flags from the node config nodeboot rendered (labels included).
sed 's/^/E2E-PXE-KUBELET-FLAGS: /' /var/lib/kubelet/kubeadm-flags.env 2>/dev/null
root=$(findmnt -n -o SOURCE /sysroot 2>/dev/null || findmnt -n -o SOURCE /)
echo "E2E-PXE-ROOT: $root $(lsblk -b -n -d -o SIZE "$root" | tr -d ' ') $(lsblk -b -n -d -o SIZE "/dev/$(lsblk -n -d -o PKNAME "$root" | tr -d ' ')" | tr -d ' ')"
echo "E2E-PXE-ROOTFS-MIB: $(df -B1M --output=size /sysroot 2>/dev/null | tail -n1 | tr -d ' ')"

#!/bin/sh
# nodeimg e2e: print what the boot test asserts on the serial console, then power off
# (unless /etc/nodeimg-e2e-keep-running exists).
echo "E2E-MARKER: reached multi-user.target uptime=$(cut -d' ' -f1 /proc/uptime)s"
echo "E2E-CMDLINE: $(cat /proc/cmdline)"
ostree admin status | sed 's/^/E2E-STATUS: /'
echo "E2E-BOOTED: $(ostree admin status | sed -n 's/^\* [^ ]* \([0-9a-f]*\)\.[0-9]*.*/\1/p')"
findmnt -n -o TARGET,SOURCE,FSTYPE,OPTIONS / | sed 's/^/E2E-MOUNT: /'
findmnt -n -o TARGET,SOURCE,FSTYPE,OPTIONS /boot | sed 's/^/E2E-MOUNT: /'
systemctl --failed --no-legend --plain | sed 's/^/E2E-FAILED-UNIT: /'
echo "E2E-FAILED-COUNT: $(systemctl --failed --no-legend --plain | wc -l)"
dev=$(blkid -L cidata 2>/dev/null || blkid -L CIDATA 2>/dev/null || true)
if [ -n "$dev" ]; then
  mkdir -p /run/cidata && mount -o ro "$dev" /run/cidata
  echo "E2E-CIDATA: found on $dev instance=$(sed -n 's/^instance-id: *//p' /run/cidata/meta-data)"
fi
echo "E2E-NODEBOOT: $(systemctl show -p Result --value nodeboot.service) $(systemctl show -p ExecMainStatus --value nodeboot.service)"
if [ -e /var/lib/nodeboot/done ]; then echo "E2E-NODEBOOT-DONE: yes"; else echo "E2E-NODEBOOT-DONE: no"; fi
journalctl -b -u nodeboot.service -o cat --no-pager | tail -n 30 | sed 's/^/E2E-NODEBOOT-LOG: /'
ls /var/lib/nodeboot-secrets 2>/dev/null | sed 's/^/E2E-SECRET: /'
echo "E2E-KUBELET: $(systemctl is-active kubelet.service)"
echo "E2E-DONE"
if [ ! -e /etc/nodeimg-e2e-keep-running ]; then systemctl --no-block poweroff; fi

#!/bin/sh
# nodeimg network installer: name servers from the DHCP leases into /etc/resolv.conf.
# networkd records them in its lease files; without systemd-resolved in the initramfs
# nothing else writes resolv.conf, and the image URL may name a host.
out=/etc/resolv.conf.nodeboot
: > "$out"
for lease in /run/systemd/netif/leases/*; do
    [ -f "$lease" ] || continue
    for ns in $(sed -n 's/^DNS=//p' "$lease"); do
        echo "nameserver $ns" >> "$out"
    done
    domain=$(sed -n 's/^DOMAINNAME=//p' "$lease")
    [ -n "$domain" ] && echo "search $domain" >> "$out"
done
mv "$out" /etc/resolv.conf
exit 0

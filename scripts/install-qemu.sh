#!/usr/bin/env bash
# Installs what the qemu test tier (tests/qemu) and bench/kernel_throughput.py need, as root
# on Debian 12: QEMU (TCG), kmod, busybox-static, the newest Debian linux-image-6.1.0-*-amd64
# unpacked to /var/lib/cgwd-qemu/<version> with its modules in /lib/modules/<version>, and
# virtme-ng (`vng`) in the project venv. Idempotent, and quick when everything is present.
#
# The host kernel has no ESP / xfrm interfaces; the guest kernel does, and it sees the host's
# filesystem as its root (virtme-ng), so the project, the venv, strongSwan and BIRD are there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "install-qemu.sh: run as root" >&2; exit 2; fi
KDIR=${CGWD_QEMU_KERNEL_DIR:-/var/lib/cgwd-qemu}

missing=""
for p in qemu-system-x86 kmod busybox-static; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-qemu: apt-get install$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The kernel: reuse one already unpacked (with its modules) unless told to refresh.
have=""
for v in $(ls -1 "$KDIR" 2>/dev/null | sort -V); do
  if [ -f "$KDIR/$v/vmlinuz" ] && [ -f "/lib/modules/$v/modules.dep" ]; then have=$v; fi
done
if [ -z "$have" ] || [ "${CGWD_QEMU_REFRESH:-0}" = 1 ]; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
  fi
  if [ -z "$pkg" ]; then echo "install-qemu: no linux-image-6.1.0-*-amd64 package in apt" >&2; exit 1; fi
  v=${pkg#linux-image-}
  tmp=$(mktemp -d); chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  echo "install-qemu: fetching $pkg"
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
  dpkg -x "$tmp"/linux-image-*.deb "$tmp/x"
  mkdir -p /lib/modules "$KDIR/$v"
  rm -rf "/lib/modules/$v"
  cp -a "$tmp/x/lib/modules/$v" "/lib/modules/$v"
  cp "$tmp/x/boot/vmlinuz-$v" "$KDIR/$v/vmlinuz"
  cp "$tmp/x/boot/config-$v" "$KDIR/$v/config" 2>/dev/null || true
  depmod "$v"
  have=$v
fi
ln -sfn "$KDIR/$have" "$KDIR/current"

if [ ! -x .venv/bin/python ]; then echo "install-qemu: no venv (.venv): run scripts/install-deps.sh" >&2; exit 1; fi
if [ ! -x .venv/bin/vng ]; then
  echo "install-qemu: pip install virtme-ng"
  .venv/bin/pip install -q virtme-ng 2>&1 | grep -v -E "^(WARNING: Location|  !!)" || true
fi
.venv/bin/vng --version >/dev/null
echo "install-qemu: ready (kernel $have in $KDIR/current, $(.venv/bin/vng --version 2>&1 | head -1))"

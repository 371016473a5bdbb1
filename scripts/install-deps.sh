#!/usr/bin/env bash
# Installs what cgwd, its lab and its tests need on a fresh Debian 12 machine (as root):
# Debian packages (strongSwan with kernel-libipsec, BIRD 2, GoBGP, FRR, ExaBGP, iproute2, ...)
# and the Python package in a virtual environment at .venv (with the test extra).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "install-deps.sh: run as root" >&2; exit 2; fi
PKGS="strongswan-charon strongswan-swanctl charon-systemd libcharon-extra-plugins
      libstrongswan-standard-plugins libstrongswan-extra-plugins bird2 gobgpd exabgp frr
      iproute2 iptables nftables iperf3 iputils-ping tcpdump kmod systemd openssl keepalived"
missing=""
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "install-deps: apt-get install$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Debian starts these services when installed; the lab runs its own instances per namespace.
for svc in strongswan-starter strongswan charon-systemd bird gobgpd exabgp frr keepalived; do
  systemctl stop "$svc" 2>/dev/null || true
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e ".[test,ec2,bench]" 2>&1 | grep -v -E "^(WARNING: Location|  !!|    with strategy)" || true
.venv/bin/python -c "import cgwd, cryptography, pyroute2, scapy, pytest, botocore, moto" 
# The qemu tier (a Debian kernel with ESP under QEMU): best-effort, its tests skip with a reason.
bash scripts/install-qemu.sh || echo "install-deps: QEMU tier not installed (tests/qemu will skip)" >&2
# The systemd tier (systemd as PID 1 in a container, tests/systemd): best-effort as well.
bash scripts/install-systemd-tier.sh || echo "install-deps: systemd tier not installed (tests/systemd will skip)" >&2
echo "install-deps: ready (.venv/bin/cgwd, .venv/bin/cgwctl)"

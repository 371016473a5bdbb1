#!/usr/bin/env bash
# Installs what the systemd test tier (tests/systemd) needs, as root on Debian 12:
# systemd-container (systemd-nspawn) and mmdebstrap, and a Debian 12 root file system with
# systemd as init, built once by mmdebstrap from Debian's packages and cached under
# /var/lib/cgwd-systemd/<key>/root (the key is a hash of what goes into it, so a change to the
# package list or to this recipe builds a new one). Idempotent, and quick when it is present.
#
# The image is minbase + systemd + python3-venv + procps (the unit's ExecReload runs
# /bin/kill) and a wheelhouse of cgwd's Python dependencies, fetched while building (the
# container has no network at test time: it joins the lab's customer namespace). Its
# /etc/pip.conf points pip there, so the README's `pip install .` works inside unchanged.
# The tests boot it with an overlay (--volatile=overlay): the cached tree is never written.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "install-systemd-tier.sh: run as root" >&2; exit 2; fi
BASE=${CGWD_SYSTEMD_IMAGE_DIR:-/var/lib/cgwd-systemd}
SUITE=bookworm
INCLUDE="systemd,systemd-sysv,dbus,procps,python3,python3-venv"
WHEELS="cryptography>=41 pyroute2>=0.7.9 setuptools>=77 wheel"

missing=""
for p in systemd-container mmdebstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-systemd-tier: apt-get install$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# the recipe's own text is part of the key: editing the hooks below builds a new image
key=$( (echo "$SUITE $INCLUDE $WHEELS"; sed -n '/^build_image()/,/^}/p' "$SELF") | sha256sum | cut -c1-12)
dir="$BASE/$key"

build_image() {
  local tmp=$1
  # the wheels come through this machine's own pip set-up (its index and certificates);
  # Debian 12's python3 in the image is CPython 3.11 on the same glibc as this machine
  local pip=(python3 -m pip)
  [ -x .venv/bin/pip ] && pip=(.venv/bin/pip)
  "${pip[@]}" download -q --only-binary=:all: -d "$tmp/wheels" $WHEELS 2>&1 | { grep -v "^WARNING: Location" || true; }
  export CGWD_WHEELS="$tmp/wheels"
  mmdebstrap --quiet --variant=minbase --mode=root --include="$INCLUDE" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --customize-hook='cp -a "$CGWD_WHEELS" "$1/var/cache/cgwd-wheels"' \
    --customize-hook='printf "[global]\nno-index = true\nfind-links = /var/cache/cgwd-wheels\ndisable-pip-version-check = true\n" > "$1/etc/pip.conf"' \
    --customize-hook='echo cgwd-sd > "$1/etc/hostname"' \
    --customize-hook='rm -f "$1/etc/machine-id"; : > "$1/etc/machine-id"' \
    "$SUITE" "$tmp/root"
}

if [ ! -f "$dir/ready" ] || [ "${CGWD_SYSTEMD_REFRESH:-0}" = 1 ]; then
  mkdir -p "$BASE"
  tmp=$(mktemp -d "$BASE/build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "install-systemd-tier: building a Debian 12 root file system with mmdebstrap ($INCLUDE)"
  t0=$(date +%s)
  build_image "$tmp"
  t1=$(date +%s)
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$tmp/root" "$dir/root"
  echo "$((t1 - t0))" > "$dir/build-seconds"
  du -sm "$dir/root" | cut -f1 > "$dir/size-mib"
  touch "$dir/ready"
  echo "install-systemd-tier: built in $((t1 - t0)) s, $(cat "$dir/size-mib") MiB"
  # older images (another recipe) are not needed any more
  for old in "$BASE"/*/; do
    old=${old%/}
    [ "$old" = "$dir" ] || [ ! -f "$old/ready" ] || rm -rf "$old"
  done
fi
ln -sfn "$dir" "$BASE/current"
echo "install-systemd-tier: ready (image $BASE/current/root, built in $(cat "$dir/build-seconds") s," \
     "$(cat "$dir/size-mib") MiB; $(systemd-nspawn --version | head -1))"

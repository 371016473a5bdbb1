#!/usr/bin/env bash
# The README's test command: installs everything the tests need, then runs every tier:
# unit (in memory, fake clocks), interop (real strongSwan/BIRD/GoBGP in network namespaces)
# and the kernel XFRM tier (a Debian kernel under QEMU; skipped with a reason if QEMU cannot start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PYTHONUNBUFFERED=1
.venv/bin/python -m pytest tests -p no:cacheprovider -ra "$@"

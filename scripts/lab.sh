#!/usr/bin/env bash
# The README's lab command: installs everything, then brings up the built-in lab (two AWS
# endpoints played by strongSwan + BIRD in network namespaces) with cgwd as the customer
# gateway, prints `cgwctl status` and pings from the on-prem host to the VPC host.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
.venv/bin/cgwctl lab down >/dev/null 2>&1 || true
exec .venv/bin/cgwctl lab up "$@"

#!/usr/bin/env bash
# What the test suite drives for real besides Python packages: redis-server (the cluster tests start
# their own on a Unix socket), Chromium and ChromeDriver (the console's browser tests), and the pinned
# official AG-UI clients (tests/agui, from its lockfile). Debian and npm packages only; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
packages=(redis-server chromium chromium-driver)
command -v npm >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
(cd tests/agui && npm ci --no-audit --no-fund --loglevel=error)

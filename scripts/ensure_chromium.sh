#!/usr/bin/env bash
# The dashboard's browser test drives Debian's Chromium (/usr/bin/chromium); install it when
# it is missing. Needs root or sudo, and Debian's package archive.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
echo "chromium: not installed; installing Debian's chromium package (for the dashboard's browser test)"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "error: /usr/bin/chromium is missing and this user cannot install it; run: apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
}
[ -x /usr/bin/chromium ] || { echo "error: chromium did not install" >&2; exit 1; }
echo "chromium: $(/usr/bin/chromium --version)"

#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the browser end-to-end test
# (tests/e2e/test_web_browser.py). Playwright drives this binary through
# executable_path; it never downloads a browser of its own (no `playwright install`).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo unknown)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version

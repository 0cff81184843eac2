#!/usr/bin/env bash
# Install promtool (Debian's prometheus package ships it) when it is missing.
# Used by `make test` so `promtool check rules` / `promtool test rules` can run.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: promtool only, not the whole exporter family.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a Prometheus server on Debian hosts with systemd; we only want the tool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
    $SUDO systemctl disable prometheus || true
fi
command -v promtool >/dev/null 2>&1 || { echo "promtool still missing after installing prometheus" >&2; exit 1; }
promtool --version | head -1

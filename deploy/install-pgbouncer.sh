#!/usr/bin/env bash
# Install PgBouncer (Debian's pgbouncer package) when it is missing. Used by `make test`
# (the PgBouncer integration test) and by the local stack with OPTOUT_DEVSTACK_PGBOUNCER=1.
set -euo pipefail

if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
# The package starts a system PgBouncer on port 6432 on Debian hosts with systemd; the stack
# runs its own from its own configuration, so the system one is stopped and disabled.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
    $SUDO systemctl stop pgbouncer || true
    $SUDO systemctl disable pgbouncer || true
fi
PGB=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -x "$PGB" ] || { echo "pgbouncer still missing after installing it" >&2; exit 1; }
"$PGB" --version | head -1

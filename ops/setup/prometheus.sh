#!/bin/sh
# Install Prometheus and promtool from Debian (the `prometheus` package, 2.42 on bookworm) for the dashboard and
# alert-rule tests. Idempotent: does nothing when both binaries are already on PATH. The Debian package ships a
# system service; should it start anyway, it is stopped and disabled again, because the tests run their own
# Prometheus on free ports.
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
sh "$(dirname "$0")/apt-install.sh" prometheus prometheus promtool

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop prometheus >/dev/null 2>&1 || true
    systemctl disable prometheus >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    service prometheus stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

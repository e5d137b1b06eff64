#!/bin/sh
# Install Prometheus and promtool from Debian (the `prometheus` package, 2.42 on bookworm) for the dashboard and
# alert-rule tests. Idempotent: does nothing when both binaries are already on PATH. The Debian package starts a
# system service; it is stopped and disabled again, because the tests run their own Prometheus on free ports.
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ops/setup/prometheus.sh: apt-get not found; install Prometheus >= 2.42 (prometheus and promtool) by hand" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ops/setup/prometheus.sh: installing the Debian 'prometheus' package needs root; run" >&2
    echo "    sudo apt-get install -y --no-install-recommends prometheus" >&2
    echo "or put prometheus and promtool (>= 2.42) on PATH" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are missing or do not know the package yet.
if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt-get update -qq
fi
# policy-rc.d exit 101 keeps invoke-rc.d from starting the service during the install (where it applies).
policy=/usr/sbin/policy-rc.d
created_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=yes
fi
status=0
apt-get install -y -qq --no-install-recommends prometheus >/dev/null || status=$?
if [ "$created_policy" = yes ]; then
    rm -f "$policy"
fi
if [ "$status" -ne 0 ]; then
    echo "ops/setup/prometheus.sh: apt-get install prometheus failed ($status)" >&2
    exit "$status"
fi

# Should the service have started anyway (systemd hosts), stop it and keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop prometheus >/dev/null 2>&1 || true
    systemctl disable prometheus >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    service prometheus stop >/dev/null 2>&1 || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || {
    echo "ops/setup/prometheus.sh: prometheus/promtool still not on PATH after the install" >&2
    exit 1
}

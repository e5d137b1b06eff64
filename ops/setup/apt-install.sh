#!/bin/sh
# Install a Debian package unless every command it is wanted for is on PATH already:
#     ops/setup/apt-install.sh PACKAGE COMMAND...
# Idempotent. A service the package ships is not started by the install (policy-rc.d exit 101, where it applies).
set -eu

package=$1
shift
have_all() {
    for command in "$@"; do
        command -v "$command" >/dev/null 2>&1 || return 1
    done
}
if have_all "$@"; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ops/setup/apt-install.sh: apt-get not found; install $* (Debian package $package) by hand" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ops/setup/apt-install.sh: installing the Debian package $package needs root; run" >&2
    echo "    sudo apt-get install -y --no-install-recommends $package" >&2
    echo "or put $* on PATH" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# An install cut short before (Ctrl-C, a session's end) leaves dpkg half-done, refusing every install after it.
dpkg --configure -a
# Fresh package lists, whatever the image came with: an old list names versions the mirrors no longer hold (404).
apt-get update -qq
policy=/usr/sbin/policy-rc.d
created_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=yes
fi
status=0
apt-get install -y -qq --no-install-recommends "$package" >/dev/null || status=$?
if [ "$created_policy" = yes ]; then
    rm -f "$policy"
fi
if [ "$status" -ne 0 ]; then
    echo "ops/setup/apt-install.sh: apt-get install $package failed ($status)" >&2
    exit "$status"
fi
have_all "$@" || {
    echo "ops/setup/apt-install.sh: $* still not on PATH after installing $package" >&2
    exit 1
}

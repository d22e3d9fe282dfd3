#!/usr/bin/env bash
# The system tools the tests need, each with the Debian/Ubuntu package that has it. `make
# test` runs this before anything else: on Debian or Ubuntu as root it installs what is
# missing; elsewhere it stops with one line naming what is missing and how to install it.
# Another tool: add a "command package" line below (or pass command:package arguments,
# as `make test TOOLS=...` does).
set -euo pipefail

TOOLS=(
    "initdb postgresql"       # app/devdb/: initdb, postgres, pg_basebackup, pg_rewind
    "pg_rewind postgresql"
    "pgbouncer pgbouncer"     # tests/cluster/test_pgbouncer.py, tests/attacks/test_pgbouncer_*
    "chromium chromium"       # tests/api/test_docs.py renders /docs
    "patroni patroni"         # tests/cluster/test_patroni.py: two Patroni members and etcd
    "patronictl patroni"
    "etcd etcd-server"
    "openssl openssl"         # tests/cluster/test_scram_keys.py: a self-signed certificate
)
for extra in "$@"; do
    TOOLS+=("${extra%%:*} ${extra#*:}")
done

# Debian keeps PostgreSQL's server binaries in /usr/lib/postgresql/N/bin, pgbouncer in /usr/sbin.
have() {
    local dir
    command -v "$1" >/dev/null 2>&1 && return 0
    for dir in /usr/sbin /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/$1" ]] && return 0
    done
    return 1
}

missing=()
packages=()
for entry in "${TOOLS[@]}"; do
    read -r tool package <<<"$entry"
    if ! have "$tool"; then
        missing+=("$tool")
        [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
    fi
done

root=false
[[ "$(id -u)" == 0 ]] && root=true
debian=false
[[ -f /etc/debian_version ]] && command -v apt-get >/dev/null && debian=true

if ((${#missing[@]})); then
    if $root && $debian; then
        echo "make test: installing ${packages[*]} (for ${missing[*]}) with apt-get"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq "${packages[@]}" >/dev/null; }; then
            echo "make test: apt-get could not install ${packages[*]}; install them, then run make test again" >&2
            exit 1
        fi
    elif $debian; then
        echo "make test: missing ${missing[*]}; install them first: sudo apt-get install ${packages[*]}" >&2
        exit 1
    else
        echo "make test: missing ${missing[*]}; install them first with your package manager (Debian/Ubuntu: apt-get install ${packages[*]})" >&2
        exit 1
    fi
fi

# PostgreSQL refuses to run as root: the harness runs the servers as this user.
if $root && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
fi

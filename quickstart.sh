#!/usr/bin/env bash
# Installs everything alluxiofuse needs on Debian 12 (as root), then either mounts the
# bundled example data (demo) or runs the whole test suite with the linters (test).
#
#   ./quickstart.sh demo [MOUNTPOINT]   # default mountpoint /mnt/alluxiofuse-demo
#   ./quickstart.sh test [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev)
# Tests start their own etcd on loopback ports; the container entrypoint is tested under
# tini as PID 1; the systemd units are checked with systemd-analyze; S3 mounts are checked
# against s3fs-fuse (the metadata both keep) and with rsync -a (a missing one fails those
# tests under CI=true: tests/support/needs.py).
TEST_APT_PACKAGES=(etcd-server tini systemd s3fs rsync)

install_system_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "== installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_python_packages() {
    [ -x .venv/bin/python ] || python3 -m venv .venv
    echo "== installing alluxiofuse and its test tools into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    # alluxio==0.1.4, the official client of the Alluxio 2.x proxy that the proxy simulator's
    # tests run, is the package "alluxio" like 1.0.0 above: it goes to a directory of its own
    # (tests/sim/apy01.py loads it from there), without dependencies (requests and six are in
    # the test extras); --upgrade replaces an earlier copy quietly.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --upgrade \
        --target .venv/alluxio-0.1.4 alluxio==0.1.4
}

demo() {
    local mnt=${1:-/mnt/alluxiofuse-demo}
    mkdir -p "$mnt"
    if mountpoint -q "$mnt"; then .venv/bin/alluxiofuse umount "$mnt"; fi
    .venv/bin/alluxiofuse mount examples/data "$mnt"
    echo "== mounted examples/data at $mnt (writable: changes go to examples/data); a look inside:"
    ls -lR "$mnt"
    echo "== $mnt/dataset.json:"
    cat "$mnt/dataset.json"
    echo
    echo "== byte-for-byte check against the source:"
    (cd examples/data && find . -type f -exec sha256sum {} + | sort -k2) > /tmp/alluxiofuse-src.sha
    (cd "$mnt" && sha256sum -c --quiet /tmp/alluxiofuse-src.sha) && echo "all files identical"
    echo "== still mounted; unmount with: .venv/bin/alluxiofuse umount $mnt"
}

run_tests() {
    echo "== ruff"
    .venv/bin/ruff check .
    echo "== mypy"
    .venv/bin/mypy
    echo "== pytest (unit, component, integration, deploy; import-linter contracts included)"
    # Two processes, a test file at a time each: most tests wait (on daemons, servers,
    # timeouts), and a file's tests share what its module sets up (a moto server, the
    # installed mount helper).
    .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
}

command=${1:-demo}
shift || true
case "$command" in
    demo) install_system_packages; install_python_packages; demo "$@" ;;
    test) install_system_packages "${TEST_APT_PACKAGES[@]}"; install_python_packages; run_tests "$@" ;;
    *) echo "usage: $0 demo [MOUNTPOINT] | test [PYTEST ARGS]" >&2; exit 2 ;;
esac

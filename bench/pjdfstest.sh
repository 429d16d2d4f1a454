#!/usr/bin/env bash
# pjdfstest (POSIX conformance: chmod, chown, link, mkdir, open, rename, ...) on a writable
# alluxiofuse mount of a local directory; prints subtests passed and failed per group.
# Run as root (pjdfstest needs it; the mount is made with --allow-other so that the
# suite's setuid tests can reach it). It never downloads anything.
#
#   bench/pjdfstest.sh [--direct DIR] [--out DIR] [--timeout SECONDS] [PJDFSTEST [GROUP...]]
#
# PJDFSTEST (or $PJDFSTEST): a pjdfstest source tree (https://github.com/pjd/pjdfstest),
#     built in place (autoreconf -ifs && ./configure && make pjdfstest) if its pjdfstest
#     binary is missing.
# GROUP...: only these groups (directories of its tests/: chmod, mkdir, ...); default all.
# --direct DIR: also run the suite in a fresh directory under DIR without any mount (DIR on
#     tmpfs, /dev/shm, gives the kernel's own baseline), and print both tables.
# --out DIR: where the TAP output, the failing subtests and the daemon's log are kept
#     (default: a new /tmp/pjdfstest-out.XXXXXX); it is the only thing left behind.
# --timeout: bound of one test file (default 600 s); a file cut short fails its rest.
# $ALLUXIOFUSE: the CLI to mount with (default .venv/bin/alluxiofuse of this checkout).
#
# The mount uses the daemon's default options plus --allow-other; besides those, its spool
# (--cache-dir) and log (--log-file) go to temporary places so that nothing is left under
# /var/cache, and --metrics-addr off keeps it off the metrics port another daemon may hold.
# None of these changes what a file system call answers.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
ALLUXIOFUSE=${ALLUXIOFUSE:-$repo/.venv/bin/alluxiofuse}
direct=""
out=""
per_file_timeout=600
pjd=${PJDFSTEST:-}
groups=()

usage() { sed -n '7p' "$0" | sed 's/^# *//' >&2; exit 2; }
while (($#)); do
    case $1 in
    --direct) direct=${2:?--direct needs a directory}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --timeout) per_file_timeout=${2:?--timeout needs seconds}; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "pjdfstest.sh: unknown option $1" >&2; usage ;;
    *) if [ -z "$pjd" ]; then pjd=$1; else groups+=("$1"); fi; shift ;;
    esac
done

die() { echo "pjdfstest.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (pjdfstest's tests change owners and modes)"
if [ -z "$pjd" ] || [ ! -d "$pjd/tests" ]; then
    die "no pjdfstest source tree at ${pjd:-(none given)}. This script never downloads it: clone
  https://github.com/pjd/pjdfstest yourself and pass its directory (or set PJDFSTEST).
  Building it needs: apt-get install autoconf automake libtool gcc make; running it: perl (prove), openssl."
fi
pjd=$(cd "$pjd" && pwd)
command -v prove >/dev/null || die "prove not found (Debian: apt-get install perl)"
command -v openssl >/dev/null || die "openssl not found (pjdfstest makes its names with it)"
[ -x "$ALLUXIOFUSE" ] || die "no alluxiofuse CLI at $ALLUXIOFUSE (set ALLUXIOFUSE)"

tests=()
if ((${#groups[@]})); then
    for g in "${groups[@]}"; do
        [ -d "$pjd/tests/$g" ] || die "no group $g in $pjd/tests"
        tests+=("$pjd/tests/$g")
    done
else
    tests=("$pjd/tests")
fi

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/pjdfstest-out.XXXXXX")
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ ! -x "$pjd/pjdfstest" ]; then
    command -v autoreconf >/dev/null || die "$pjd is not built and autoreconf is missing (apt-get install autoconf automake libtool)"
    echo "== building pjdfstest in $pjd"
    (cd "$pjd" && autoreconf -ifs && ./configure && make pjdfstest) >"$out/build.log" 2>&1 ||
        die "building pjdfstest failed; see $out/build.log"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pjdfstest-work.XXXXXX")
mnt=$work/mnt
direct_run=""
suite=""  # the running suite's process group
cleanup() {
    cd /
    # The suite's processes first: while they work in the mount, it cannot be unmounted.
    if [ -n "$suite" ]; then
        { kill -KILL -- "-$suite"; wait "$suite"; } 2>/dev/null || true
        sleep 1
    fi
    if mountpoint -q "$mnt" 2>/dev/null; then
        "$ALLUXIOFUSE" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" || true
    fi
    # Never remove through a mount that is still there.
    if mountpoint -q "$mnt" 2>/dev/null; then
        echo "pjdfstest.sh: $mnt is still mounted; $work left in place" >&2
    else
        rm -rf "$work"
    fi
    [ -z "$direct_run" ] || rm -rf "$direct_run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs the suite with its working directory in $1 (pjdfstest makes its files in the
# current directory), TAP into $2.tap; every test file is bounded by the timeout. The
# suite runs in a process group of its own (setsid; timeout --foreground stays in it), so
# that an interrupted run can end all of it before unmounting.
run_suite() {
    local where=$1 name=$2
    echo "== pjdfstest in $where ($name): TAP in $out/$name.tap"
    local started=$SECONDS
    (cd "$where" && exec setsid prove -rv \
        --exec "timeout --foreground -k 10 $per_file_timeout sh" "${tests[@]}") \
        >"$out/$name.tap" 2>"$out/$name.stderr" &
    suite=$!
    wait "$suite" || true
    suite=""
    echo "   took $((SECONDS - started)) s"
}

# The per-group table from a verbose prove log. A file's subtests are its plan (or the
# subtests it printed, when more); one that never printed (timeout, crash) failed.
# "not ok ... # TODO" counts as passed, as prove counts it. Failing lines go to $1.failures.
table() {
    local name=$1
    awk -v failures="$out/$name.failures" '
        function flush() {
            if (file == "") return
            n = (plan > seen) ? plan : seen
            files[group]++; subtests[group] += n; passed[group] += ok
            if (n > seen) print file ": " n - seen " subtests never ran" > failures
            file = ""
        }
        /^\/.*\.t \.+ ?$/ {
            flush()
            file = $1; sub(/ .*/, "", file)
            group = file; sub(/.*\/tests\//, "", group); sub(/\/.*/, "", group)
            if (!(group in files)) order[++ngroups] = group
            plan = 0; seen = 0; ok = 0
            next
        }
        file != "" && /^1\.\.[0-9]+/ { plan = substr($1, 4) + 0; next }
        file != "" && /^ok [0-9]+/ { seen++; ok++; next }
        file != "" && /^not ok [0-9]+/ {
            seen++
            if ($0 ~ /# TODO/) ok++; else print file ": " $0 > failures
            next
        }
        END {
            flush()
            printf "%-16s %6s %9s %8s %8s\n", "group", "files", "subtests", "passed", "failed"
            for (i = 1; i <= ngroups; i++) {
                g = order[i]
                printf "%-16s %6d %9d %8d %8d\n", g, files[g], subtests[g], passed[g], subtests[g] - passed[g]
                tf += files[g]; ts += subtests[g]; tp += passed[g]
            }
            printf "%-16s %6d %9d %8d %8d\n", "total", tf, ts, tp, ts - tp
        }' "$out/$name.tap"
}

: >"$out/mount.failures"
# 0755 whatever the caller's umask: the suite's unprivileged users must get in.
mkdir -m 0755 "$work/src" "$mnt"
echo "== mounting $work/src at $mnt with $ALLUXIOFUSE"
"$ALLUXIOFUSE" mount "$work/src" "$mnt" --allow-other --cache-dir "$work/spool" \
    --log-file "$out/daemon.log" --metrics-addr off || die "the mount failed; see $out/daemon.log"
# In a directory below the mount's root, as a user works: the suite's longest paths are
# PATH_MAX long from its working directory, so longer than that from the root.
mkdir -m 0755 "$mnt/pjdfstest"
run_suite "$mnt/pjdfstest" mount
cd /
"$ALLUXIOFUSE" umount "$mnt" || echo "pjdfstest.sh: unmounting $mnt failed; see $out/daemon.log" >&2

if [ -n "$direct" ]; then
    : >"$out/direct.failures"
    direct_run=$(mktemp -d "$direct/pjdfstest-direct.XXXXXX")
    chmod 0755 "$direct_run"  # mktemp made it 0700: the suite's other users must get in
    run_suite "$direct_run" direct
fi

echo
echo "pjdfstest ($pjd) on an alluxiofuse mount of a local directory ($(df -PT "$work" | awk 'NR == 2 {print $2}')):"
table mount
echo "failing subtests: $out/mount.failures"
echo "daemon log: $out/daemon.log ($(grep -cE ' (WARNING|ERROR|CRITICAL) ' "$out/daemon.log" || true) warnings and errors)"
if [ -n "$direct" ]; then
    echo
    echo "the same suite without a mount, in $direct ($(df -PT "$direct" | awk 'NR == 2 {print $2}')):"
    table direct
    echo "failing subtests: $out/direct.failures"
fi

#!/bin/sh
# The container's entrypoint (installed as /usr/local/bin/alluxiofuse-entrypoint): runs the
# alluxiofuse daemon in the foreground as this script's child, and ties the mount's life to
# the container's:
#
#   - a dead mount left by an earlier run of this container is detached first (a daemon
#     that was killed leaves its mount behind, answering "Transport endpoint is not
#     connected"; on a volume shared with other containers the mount outlives ours);
#   - SIGTERM and SIGINT are passed on to the daemon, which unmounts and exits 0 (SIGINT
#     only if it was not ignored when this script started, as it is for a background
#     command of a non-interactive shell: no shell can trap such a signal; tini starts it
#     with the default);
#   - the script exits with the daemon's exit code and leaves nothing mounted.
#
# It does not exec the daemon, since it must still be there to clean up after it; so it
# runs under tini (PID 1 in the image), which passes signals to it and reaps orphans.
#
# Usage:
#   alluxiofuse-entrypoint [SOURCE [MOUNTPOINT]] [alluxiofuse mount options...]
#   alluxiofuse-entrypoint stop [MOUNTPOINT]     detach the mount (the Kubernetes preStop
#                                                hook); the daemon then exits 0
#
# SOURCE and MOUNTPOINT default to $ALLUXIOFUSE_SOURCE and $ALLUXIOFUSE_MOUNTPOINT
# (/mnt/data); $ALLUXIOFUSE_CONFIG, when set and not empty, is passed as --config.
set -u

log() {
    echo "alluxiofuse-entrypoint: $*" >&2
}

# Prints PATH made absolute with symlinks resolved, as /proc/self/mountinfo shows it. Only
# the parent is resolved: the path itself may be a dead mount, which nothing can stat.
canonical() {
    parent=$(dirname -- "$1")
    mkdir -p -- "$parent" && parent=$(cd -P -- "$parent" && pwd) || return 1
    name=$(basename -- "$1")
    case $parent in
        /) echo "/$name" ;;
        *) echo "$parent/$name" ;;
    esac
}

# Whether PATH (canonical) is a mountpoint, live or dead. Read from mountinfo, as a stat of
# a dead or hung mount fails or blocks. The kernel escapes space, tab and backslash there.
is_mounted() {
    escaped=$(printf '%s\n' "$1" | sed -e 's/\\/\\134/g' -e 's/ /\\040/g' -e 's/\t/\\011/g')
    while read -r _ _ _ _ point _; do
        [ "$point" = "$escaped" ] && return 0
    done </proc/self/mountinfo
    return 1
}

detach() {
    alluxiofuse umount --lazy "$1" >&2
}

# A mount at MOUNTPOINT whose daemon is gone: detach it. A live one is left alone (it is
# not ours); the mount below then fails with "already mounted".
clear_dead_mount() {
    is_mounted "$1" || return 0
    # A dead FUSE mount fails a stat with ENOTCONN, but only one that reaches it: the
    # kernel answers from its attribute cache (seconds, --attr-timeout) without asking, so
    # mountpoint(1) calls a mount live for that long after its daemon died. statx with
    # AT_STATX_FORCE_SYNC (--cached=never) always asks. A hung mount would block, hence
    # the timeout. LC_ALL=C: the message is matched below.
    answer=$(LC_ALL=C timeout 10 stat --cached=never -- "$1" 2>&1 >/dev/null)
    code=$?
    case $answer in
        *"Transport endpoint is not connected"*)
            log "$1 is a dead mount (its daemon is gone): detaching it"
            detach "$1"
            ;;
        *)
            if [ "$code" = 124 ]; then
                log "$1 does not answer: detaching it"
                detach "$1"
            fi
            ;;
    esac
}

mountpoint_arg() {
    canonical "${1:-${ALLUXIOFUSE_MOUNTPOINT:-/mnt/data}}"
}

if [ "${1:-}" = stop ]; then
    mnt=$(mountpoint_arg "${2:-}") || exit 1
    if is_mounted "$mnt"; then
        detach "$mnt"
        exit
    fi
    exit 0
fi

source=${ALLUXIOFUSE_SOURCE:-}
mnt=${ALLUXIOFUSE_MOUNTPOINT:-/mnt/data}
case ${1:-} in
    -* | "") ;;
    *) source=$1; shift ;;
esac
case ${1:-} in
    -* | "") ;;
    *) mnt=$1; shift ;;
esac
if [ -z "$source" ]; then
    log "no source: give SOURCE as the first argument or set ALLUXIOFUSE_SOURCE"
    exit 2
fi

# A signal before the daemon runs stops us before it starts; after, it is passed on. Always
# as SIGTERM: a background child of a non-interactive shell starts with SIGINT ignored, and
# the daemon treats both alike.
stopping=
child=
on_signal() {
    stopping=$1
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
    fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

mnt=$(canonical "$mnt") || exit 1
clear_dead_mount "$mnt"
mkdir -p -- "$mnt" || exit 1
# Only a mount the daemon made is ours to clean up: not one that was there before.
was_mounted=
is_mounted "$mnt" && was_mounted=yes

if [ -n "$stopping" ]; then
    log "SIG$stopping before the daemon started"
    exit 143
fi
if [ -n "${ALLUXIOFUSE_CONFIG:-}" ]; then
    set -- --config "$ALLUXIOFUSE_CONFIG" "$@"
fi
alluxiofuse mount -f "$source" "$mnt" "$@" &
child=$!
if [ -n "$stopping" ]; then  # the signal came between the fork and child=$!
    kill -TERM "$child" 2>/dev/null
fi

# A trapped signal interrupts wait; wait again until the daemon has exited. The shell
# remembers its exit status, which the last wait returns.
while kill -0 "$child" 2>/dev/null; do
    wait "$child"
done
wait "$child"
status=$?

if [ -z "$was_mounted" ] && is_mounted "$mnt"; then
    log "the daemon exited with $status and left $mnt mounted: detaching it"
    detach "$mnt"
fi
exit "$status"

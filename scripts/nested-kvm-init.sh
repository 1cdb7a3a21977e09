#!/bin/busybox sh
# PID 1 of the nested-KVM guest (L1) that scripts/nested-kvm.sh boots. Not run on the host.
#
# Stage 1 runs from the initramfs: it loads the drivers, mounts the host's root (virtio-fs,
# tag "host") with /tmp and the working directory writable and everything else read-only,
# and switch_roots into it. Stage 2 runs on the host's root: it mounts the kernel's own
# filesystems (proc, sys, a pure cgroup v2 hierarchy with its controllers enabled, dev,
# run), runs the command with stdout and stderr on the two virtio consoles, writes its exit
# status to the run directory and powers off. If PID 1 dies instead, the kernel panics
# (panic=-1) and QEMU exits without a status: the host reports a crash.
# shellcheck shell=sh
set -u
bb=/bin/busybox

die() {
    echo "nested-kvm init: $*" >&2
    $bb sync
    $bb poweroff -f
}

stage1() {
    $bb mkdir -p /proc /sys /dev /host
    $bb mount -t proc proc /proc
    $bb mount -t devtmpfs dev /dev
    exec >/dev/ttyS0 2>&1
    # shellcheck disable=SC2013
    for m in $($bb cat /modules/order); do
        $bb insmod "/modules/$m.ko" || die "insmod $m failed"
    done
    run=$($bb sed -n 's/.*nested_kvm_run=\([^ ]*\).*/\1/p' /proc/cmdline)
    [ -n "$run" ] || die "no nested_kvm_run= on the command line"
    $bb mount -t virtiofs host /host || die "mounting the host's root (virtio-fs) failed"
    [ -d "/host$run" ] || die "the run directory $run is not on the shared root"
    # Writable: /tmp and the working directory. Bind mounts are mount points of their own,
    # so they stay writable when the root's mount turns read-only below.
    $bb mount --bind /host/tmp /host/tmp
    cwd=$($bb cat "/host$run/cwd")
    case "$cwd" in
    /tmp | /tmp/*) ;;
    *) $bb mount --bind "/host$cwd" "/host$cwd" || die "cannot share $cwd" ;;
    esac
    $bb mount -o remount,bind,ro /host || die "cannot make the shared root read-only"
    $bb mount --move /proc /host/proc
    $bb mount --move /dev /host/dev
    exec $bb switch_root /host $bb sh "$run/init" stage2 "$run"
}

stage2() {
    run=$1
    $bb mount -t sysfs sysfs /sys
    $bb mkdir -p /dev/pts /dev/shm
    $bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
    $bb ln -sf pts/ptmx /dev/ptmx 2>/dev/null
    $bb mount -t tmpfs tmpfs /dev/shm
    $bb mount -t tmpfs tmpfs /run
    $bb mount -t tmpfs tmpfs /sys/fs/cgroup 2>/dev/null
    $bb mount -t cgroup2 cgroup2 /sys/fs/cgroup || die "mounting cgroup2 failed"
    for c in $($bb cat /sys/fs/cgroup/cgroup.controllers); do
        echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    done
    # The guest kernel's modules at the usual path, for anything that looks there.
    kmods=$($bb cat "$run/modules_dir")
    [ -d /lib/modules ] && $bb mount --bind "$kmods" /lib/modules
    $bb ip link set lo up
    # passt, the default network's helper, models the container's network on an interface
    # with a default route; L1 has no network card, so a dummy interface stands in (traffic
    # beyond the host's own loopback goes nowhere, which no test needs).
    # pasta (the same in container mode) serves a tap device: /dev/net/tun.
    $bb insmod "$kmods/kernel/drivers/net/tun.ko" 2>/dev/null
    if $bb insmod "$kmods/kernel/drivers/net/dummy.ko" 2>/dev/null || [ -d /sys/module/dummy ]; then
        $bb ip link add vessel-l1 type dummy &&
            $bb ip addr add 198.18.0.15/24 dev vessel-l1 &&
            $bb ip link set vessel-l1 up &&
            $bb ip route add default via 198.18.0.1 dev vessel-l1
    fi
    $bb hostname nested-kvm
    $bb mount --make-rprivate /
    # The caller's environment, then its directory.
    # shellcheck disable=SC1091
    . "$run/env"
    cd "$($bb cat "$run/cwd")" || die "cannot enter the working directory"
    echo "nested-kvm: L1 is up after $($bb cut -d' ' -f1 /proc/uptime) s" >/dev/ttyS0
    set --
    while IFS= read -r arg; do
        set -- "$@" "$(printf '%b' "$arg")"
    done <"$run/argv"
    # Byte-exact streams: no CR added before each LF. A tty's settings last only while it
    # is open, so hold both consoles open from before stty until the command is done.
    exec 3>/dev/hvc0 4>/dev/hvc1
    $bb stty -opost <&3 2>/dev/null
    $bb stty -opost <&4 2>/dev/null
    "$@" </dev/null >&3 2>&4 3>&- 4>&-
    status=$?
    exec 3>&- 4>&-
    echo "$status" >"$run/status.tmp" && $bb mv "$run/status.tmp" "$run/status"
    $bb sync
    $bb poweroff -f
}

case "${1:-}" in
stage2) stage2 "$2" ;;
*) stage1 ;;
esac

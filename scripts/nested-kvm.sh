#!/usr/bin/env bash
# Runs a command inside a guest (L1) that has a real, hardware-assisted KVM, on a host whose
# own /dev/kvm cannot boot Linux:
#
#   scripts/nested-kvm.sh [--cpus N] [--memory SIZE] [--timeout S] -- COMMAND [ARG...]
#
# QEMU emulates (TCG) an AMD CPU with SVM and nested paging (-cpu EPYC,+svm,+npt); the Debian
# cloud kernel that scripts/setup.sh fetches boots in it and loads kvm-amd, so /dev/kvm in L1
# runs full Linux guests. The host's root is shared into L1 with virtiofsd at the same
# paths: read-only, except /tmp and the working directory, which are writable and shared
# with the host (state roots prepared under /tmp work in L1, and what L1 writes there comes
# back). COMMAND runs as root in the current directory with this environment; its stdout
# and stderr are streamed here and its exit status is this script's. A timeout exits 124,
# a crash of L1 125, each with one line saying so. qemu and virtiofsd end with this script
# on every path, Ctrl-C included.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cpus=2
memory=3G
timeout=900
usage() {
    echo "usage: $0 [--cpus N] [--memory SIZE] [--timeout SECONDS] -- COMMAND [ARG...]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
    --cpus) cpus=${2:?}; shift 2 ;;
    --memory) memory=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) usage ;;
    esac
done
[ $# -gt 0 ] || usage
[[ $cpus =~ ^[1-9][0-9]*$ ]] || { echo "nested-kvm: --cpus wants a positive number" >&2; exit 2; }
[[ $memory =~ ^[1-9][0-9]*[MG]$ ]] || { echo "nested-kvm: --memory wants a size like 3G or 2048M" >&2; exit 2; }
[[ $timeout =~ ^[1-9][0-9]*$ ]] || { echo "nested-kvm: --timeout wants seconds" >&2; exit 2; }

say() { echo "nested-kvm: $*" >&2; }
kernel=${VESSEL_NESTED_KERNEL:-/var/cache/vessel/kernel}
virtiofsd=${VESSEL_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
for need in "$kernel/vmlinuz" "$kernel/version" "$virtiofsd" /bin/busybox; do
    [ -e "$need" ] || { say "missing $need (run scripts/setup.sh)"; exit 125; }
done
command -v qemu-system-x86_64 >/dev/null || { say "missing qemu-system-x86_64 (run scripts/setup.sh)"; exit 125; }
command -v cpio >/dev/null || { say "missing cpio (run scripts/setup.sh)"; exit 125; }
[ "$(id -u)" -eq 0 ] || { say "needs root (virtiofsd shares the host's root)"; exit 125; }
cwd=$(pwd -P)
case "$cwd" in
/) say "refusing to make / writable: run from a project directory"; exit 2 ;;
esac

version=$(cat "$kernel/version")
moddir="$kernel/lib/modules/$version"
run=$(mktemp -d /tmp/nested-kvm.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # VESSEL_NESTED_KEEP=1 keeps the run directory (console log, initramfs) for debugging.
    if [ "${VESSEL_NESTED_KEEP:-0}" = 1 ]; then say "kept $run"; else rm -rf "$run"; fi
}
last_messages() {
    tail -n "${1:-15}" "$run/console.log" "$run/qemu.log" 2>/dev/null | sed 's/^/  /' >&2
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM HUP

# --- The initramfs: busybox, the drivers stage 1 needs, and kvm-amd. ---
declare -A ko
while IFS= read -r f; do
    b=$(basename "$f" .ko)
    ko[${b//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko')
declare -A seen
order=()
add_module() {
    local m=${1//-/_} f dep
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    f=${ko[$m]:-}
    [ -n "$f" ] || { say "the guest kernel has no module $m"; exit 125; }
    for dep in $(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    order+=("$m")
}
for m in virtio_mmio virtio_console fuse virtiofs kvm_amd overlay; do add_module "$m"; done
mkdir -p "$run/initrd/bin" "$run/initrd/modules"
cp /bin/busybox "$run/initrd/bin/busybox"
cp "$here/nested-kvm-init.sh" "$run/initrd/init"
cp "$here/nested-kvm-init.sh" "$run/init"
chmod 0755 "$run/initrd/init"
for m in "${order[@]}"; do cp "${ko[$m]}" "$run/initrd/modules/$m.ko"; done
printf '%s\n' "${order[@]}" >"$run/initrd/modules/order"
(cd "$run/initrd" && find . | cpio -o -H newc --quiet) >"$run/initrd.cpio"

# --- What stage 2 needs: the directory, the environment, the command. ---
echo "$cwd" >"$run/cwd"
echo "$moddir" >"$run/modules_dir"
while IFS= read -r -d '' kv; do
    name=${kv%%=*}
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    case "$name" in PWD | OLDPWD | SHLVL | _ | HOSTNAME) continue ;; esac
    val=${kv#*=}
    printf "export %s='%s'\n" "$name" "${val//\'/\'\\\'\'}"
done < <(env -0) >"$run/env"
for arg in "$@"; do
    arg=${arg//\\/\\\\}
    printf '%s\n' "${arg//$'\n'/\\n}"
done >"$run/argv"

# --- The host's root over virtio-fs, and the guest's two output streams. ---
"$virtiofsd" --socket-path="$run/fs.sock" -o source=/ -o cache=auto -o no_posix_lock \
    -o sandbox=chroot -o log_level=err 2>"$run/virtiofsd.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$run/fs.sock" ] && break; sleep 0.05; done
[ -S "$run/fs.sock" ] || { say "virtiofsd did not start: $(cat "$run/virtiofsd.log")"; exit 125; }
mkfifo "$run/stdout" "$run/stderr"
cat "$run/stdout" &
pids+=($!)
cat "$run/stderr" >&2 &
pids+=($!)

# The TSC frequency on the command line: TCG guests often fail to calibrate it.
khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
cmdline="console=ttyS0 panic=-1 rdinit=/init loglevel=4 edd=off cryptomgr.notests"
cmdline+=" 8250.nr_uarts=1 random.trust_cpu=on reboot=t nested_kvm_run=$run"
[ -n "$khz" ] && cmdline+=" tsc_early_khz=$khz"
# TCG gives every vCPU the host's own invariant TSC, so it is reliable; without this L1's
# clocksource watchdog, itself slowed by emulation, marks it unstable, and L1's KVM then
# gives its guests a kvm-clock without the stable bit ("SMP vm created on host with
# unstable TSC").
cmdline+=" tsc=reliable"
qemu-system-x86_64 \
    -M microvm,x-option-roms=off,memory-backend=mem -accel tcg,thread=multi \
    -cpu EPYC,+svm,+npt -smp "$cpus" -m "$memory" \
    -object "memory-backend-memfd,id=mem,size=$memory,share=on" \
    -global virtio-mmio.force-legacy=false \
    -nodefaults -no-user-config -nographic -no-reboot \
    -kernel "$kernel/vmlinuz" -initrd "$run/initrd.cpio" -append "$cmdline" \
    -serial "file:$run/console.log" \
    -chardev "socket,id=fs,path=$run/fs.sock" -device vhost-user-fs-device,chardev=fs,tag=host \
    -device virtio-serial-device \
    -chardev "file,id=out,path=$run/stdout" -device virtconsole,chardev=out \
    -chardev "file,id=err,path=$run/stderr" -device virtconsole,chardev=err \
    </dev/null >"$run/qemu.log" 2>&1 &
qemu=$!
pids=("$qemu" "${pids[@]}")
started=$SECONDS
while kill -0 "$qemu" 2>/dev/null; do
    if [ $((SECONDS - started)) -ge "$timeout" ]; then
        kill -KILL "$qemu" 2>/dev/null || true
        wait "$qemu" 2>/dev/null || true
        say "timed out after $timeout s: L1 was still running \`$*\`; its last messages:"
        last_messages
        exit 124
    fi
    sleep 0.2
done
qemu_status=0
wait "$qemu" || qemu_status=$?
# The output streams end when QEMU closes them.
for p in "${pids[@]:1}"; do wait "$p" 2>/dev/null || true; done
pids=()
if [ -s "$run/status" ]; then
    exit "$(cat "$run/status")"
fi
why=$(grep -m1 -o 'Kernel panic - .*' "$run/console.log" 2>/dev/null | tr -d '\r' || true)
say "L1 crashed (qemu exited $qemu_status without the command's status${why:+: $why}); its last messages:"
last_messages 40
exit 125

# vessel compare: the probe run inside each isolation mode.
# POSIX sh only (busybox ash is enough); tools it lacks are taken from `busybox` when
# the image has it. Prints one key=value line per measurement. Every escape probe is
# harmless if it succeeds: sysrq 'h' only prints help, the "module" is junk the kernel
# rejects, the disk is mounted read-only and only looked at.
p() { printf '%s=%s\n' "$1" "$2"; }
bb() {
    if command -v "$1" >/dev/null 2>&1; then "$@"
    elif command -v busybox >/dev/null 2>&1; then busybox "$@"
    else return 127; fi
}

p kernel "$(bb uname -r)"
boot_id=""; read -r boot_id < /proc/sys/kernel/random/boot_id 2>/dev/null; p boot_id "$boot_id"
n=0; for d in /proc/[0-9]*; do [ -d "$d" ] && n=$((n + 1)); done; p processes "$n"
n=0; while read -r _; do n=$((n + 1)); done < /proc/mounts; p mounts "$n"
ifs=""
while read -r line; do
    case "$line" in *:*) name=${line%%:*}; name=${name##* }; ifs="$ifs${ifs:+,}$name" ;; esac
done < /proc/net/dev
p interfaces "$ifs"
n=0; while read -r k _; do [ "$k" = processor ] && n=$((n + 1)); done < /proc/cpuinfo; p cpus "$n"
while read -r k v _; do [ "$k" = MemTotal: ] && p mem_total_kib "$v"; done < /proc/meminfo
n=0; for d in /dev/* /dev/.[!.]*; do [ -e "$d" ] && n=$((n + 1)); done; p dev_entries "$n"
blk=""
while read -r maj min _ name; do
    case "$maj" in '' | major) continue ;; esac
    blk="$blk${blk:+,}$name"
done < /proc/partitions
p block_devices "$blk"
if [ -e /dev/kvm ]; then p kvm_visible yes; else p kvm_visible no; fi
if [ -n "$VESSEL_PROBE_HOST_PID" ] && [ -e "/proc/$VESSEL_PROBE_HOST_PID" ]; then
    p host_pid_visible yes
else
    p host_pid_visible no
fi
hn=""; read -r hn < /proc/sys/kernel/hostname 2>/dev/null; p hostname "$hn"
procsys=absent
if [ -d /proc/sys/kernel ]; then
    procsys=rw
    while read -r _ mnt _ opts _; do
        if [ "$mnt" = /proc/sys ]; then case ",$opts," in *,ro,*) procsys=ro ;; esac; fi
    done < /proc/mounts
fi
p proc_sys "$procsys"

# Escape probes (the unit test that runs this script on the host turns them off).
if [ -n "$VESSEL_PROBE_NO_ESCAPES" ]; then
    p probe_sysrq skipped; p probe_module skipped; p probe_host_disk skipped
    exit 0
fi
if (echo h > /proc/sysrq-trigger) 2>/dev/null; then p probe_sysrq allowed; else p probe_sysrq blocked; fi

scratch=""
for d in /tmp /dev/shm /run /; do
    if (: > "$d/.vessel-probe") 2>/dev/null; then scratch=$d; break; fi
done
if [ -z "$scratch" ]; then
    p probe_module "untested (no writable directory)"
else
    printf 'not a kernel module\n' > "$scratch/.vessel-probe.ko"
    out=$(bb insmod "$scratch/.vessel-probe.ko" 2>&1); rc=$?
    case "$rc:$out" in
        127:*) p probe_module "untested (no insmod in image)" ;;
        *ermitted* | *EPERM*) p probe_module blocked ;;
        0:*) p probe_module "allowed (module loaded)" ;;
        *) p probe_module "allowed (kernel parsed and rejected it)" ;;
    esac
    rm -f "$scratch/.vessel-probe.ko" "$scratch/.vessel-probe"
fi

found=no; mounted=0
if [ -n "$scratch" ] && [ -n "$VESSEL_PROBE_MARKER" ]; then
    mnt="$scratch/.vessel-probe-mnt"; mkdir -p "$mnt" 2>/dev/null
    while read -r maj min _ name; do
        case "$maj" in '' | major) continue ;; esac
        dev="/dev/$name"
        if [ ! -b "$dev" ]; then
            dev="$scratch/.vessel-probe-$name"
            bb mknod "$dev" b "$maj" "$min" 2>/dev/null || continue
        fi
        if bb mount -o ro "$dev" "$mnt" 2>/dev/null; then
            mounted=$((mounted + 1))
            [ -e "$mnt/$VESSEL_PROBE_MARKER" ] && found=yes
            bb umount "$mnt" 2>/dev/null
        fi
        rm -f "$scratch/.vessel-probe-$name"
    done < /proc/partitions
    rmdir "$mnt" 2>/dev/null
fi
if [ "$found" = yes ]; then p probe_host_disk "ESCAPED (host disk mounted)"
elif [ "$mounted" -gt 0 ]; then p probe_host_disk "blocked (mounted $mounted disk(s), none the host's)"
else p probe_host_disk blocked; fi

#!/usr/bin/env bash
# Volumes, side by side in one run: a VM's virtio-fs volume (virtiofsd) against container
# mode's bind mount of the same host directory, with the same image:
#   write   dd 256 MB into the volume, fsync'd
#   read    dd it back (a new container: a cold guest page cache in a VM)
#   untar   extract a 5000-file tree (tar made on the host, read from the volume) into it
# Times are taken inside the container (/proc/uptime, 10 ms steps), medians of RUNS runs.
# Usage: scripts/bench-volumes.sh [RUNS]   (as root; default 3)
# VMM=qemu|builtin|qemu,builtin picks the VM backends (default qemu); NO_BUILD=1 as in
# bench-vm.sh (for the nested-KVM guest: TMPDIR=/run NO_BUILD=1 VMM=builtin,qemu).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-3}"
VMM="${VMM:-qemu}"
. scripts/bench-vm-env.sh
vm_bench_env bench-volumes
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

# The image: busybox-static with every applet, as an OCI layout written by hand.
python3 scripts/busybox-image.py "$WORK/image.tar" bench/vol:latest
# The 5000-file tree to untar: 50 directories of 100 files of 1-4 KB.
python3 - "$WORK" <<'PY'
import io, os, sys, tarfile
work = sys.argv[1]
with tarfile.open(os.path.join(work, "tree.tar"), "w") as t:
    for d in range(50):
        i = tarfile.TarInfo(f"tree/d{d}"); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
        for f in range(100):
            data = os.urandom(1024 * (1 + (d * 100 + f) % 4))
            i = tarfile.TarInfo(f"tree/d{d}/f{f}"); i.size = len(data); t.addfile(i, io.BytesIO(data))
PY
"$VESSEL" --root "$WORK/root" load -i "$WORK/image.tar" >&2

python3 - "$RUNS" "$VESSEL" "$WORK" "$VMM" <<'PY'
import os, shutil, statistics, subprocess, sys
runs, vessel, work, vmms = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")
root = os.path.join(work, "root")
share = os.path.join(work, "share")
clock = "read t _ < /proc/uptime; echo $t"
jobs = {
    "write": f"s=$({clock}); dd if=/dev/zero of=/data/f bs=1M count=256 conv=fsync 2>/dev/null; e=$({clock}); echo $s $e",
    "read": f"s=$({clock}); dd if=/data/f of=/dev/null bs=1M 2>/dev/null; e=$({clock}); echo $s $e",
    "untar": f"s=$({clock}); tar -xf /data/tree.tar -C /data/out; sync; e=$({clock}); echo $s $e",
}
modes = [("container", ["--isolation", "container"])] + [
    (f"vm ({v})", ["--isolation", "vm", "--vmm", v, "--memory", "512m"]) for v in vmms]
times = {m: {j: [] for j in jobs} for m, _ in modes}
def fresh_share():
    shutil.rmtree(share, ignore_errors=True)
    os.makedirs(os.path.join(share, "out"))
    shutil.copy(os.path.join(work, "tree.tar"), share)
for i in range(runs):
    for name, args in (modes if i % 2 == 0 else list(reversed(modes))):
        fresh_share()
        for job in ["write", "read", "untar"]:
            p = subprocess.run([vessel, "--root", root, "run", "--rm", *args, "-v", f"{share}:/data",
                                "bench/vol", "sh", "-c", jobs[job]], capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"bench-volumes: {name} {job} failed:\n{p.stderr[-2000:]}")
            s, e = map(float, p.stdout.split())
            times[name][job].append(e - s)
med = statistics.median
print(f"Volumes, {runs} runs each, medians in seconds (inside the container):")
print(f"  {'':<16}" + "".join(f"{j:>12}" for j in jobs))
for name, _ in modes:
    print(f"  {name:<16}" + "".join(f"{med(times[name][j]):12.2f}" for j in jobs))
print("  throughput: " + "; ".join(
    f"{name}: write {256 / med(times[name]['write']):.0f} MB/s, read {256 / max(med(times[name]['read']), 0.01):.0f} MB/s"
    for name, _ in modes))
for name, _ in modes[1:]:
    print(f"  {name} / container: " + ", ".join(
        f"{j} {med(times[name][j]) / max(med(times['container'][j]), 0.01):.1f}x" for j in jobs))
PY

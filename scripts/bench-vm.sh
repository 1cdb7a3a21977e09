#!/usr/bin/env bash
# `vessel run --rm IMAGE true` with VM isolation, broken into stages, beside the same run
# in container mode. Usage: scripts/bench-vm.sh [RUNS]   (as root; default 10 runs each)
#
# Stages come from `VESSEL_VM_TIMINGS=1 vessel run` (times since the backend started the run):
#   assets-ready   kernel, initramfs and both disks ready (image disk cached after run 1)
#   vmm-started    the VMM process spawned
#   agent-ready    the guest kernel booted and the agent announced itself on the channel
#   process-done   the container's process exited and its output was drained
#   vm-gone        the guest powered off and the VMM process was reaped
# plus the wall time of the whole `vessel run` process. Medians over RUNS runs, after one
# warm-up run each. Runs alternate VM / container so that load elsewhere hits both alike.
# VMM=qemu|builtin|auto picks the backend (default auto: qemu under TCG on hosts whose KVM
# cannot run Linux); a comma-separated list (VMM=builtin,qemu) measures each, alternating
# runs between them, and adds each backend's ratio to the first. A `+bzimage` suffix
# (VMM=builtin,qemu,qemu+bzimage) runs that backend with VESSEL_KERNEL_UNPACK=0: the
# bzImage booted as it is, instead of the ELF vmlinux vessel unpacks from it; a `+unconfined`
# suffix (VMM=builtin,builtin+unconfined) runs it with VESSEL_VMM_UNCONFINED=1: no jail and no
# seccomp filters, the baseline their cost is measured against (the jail-cpu row: CPU time
# the VMM's process spent before its exec, i.e. in the jail's set-up). For each backend it also
# `+own` suffix (VMM=qemu,qemu+own) boots vessel's own kernel (`vessel kernel build`, built
# first if it is not in the cache) instead of $VESSEL_KERNEL (default: Debian's cloud
# kernel from scripts/setup.sh). For each backend it also
# reports the memory an idle VM's host processes hold (PSS of the VMM process and its
# helpers, the processes of its cgroup as `vessel inspect` lists them; `vessel run -d IMAGE
# sleep`, 2 s after the agent answered an exec) and what the guest itself uses
# (MemTotal - MemFree in its /proc/meminfo: the guest RAM it has touched, at most).
# NO_BUILD=1 uses the release binaries as they are (inside the nested-KVM guest, which
# should not run cargo: scripts/nested-kvm.sh -- env NO_BUILD=1 VMM=builtin,qemu
# scripts/bench-vm.sh). Set KEEP=1 to keep the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-10}"
VMM="${VMM:-auto}"
[ -x /bin/busybox ] || { echo "bench-vm: missing /bin/busybox (busybox-static)" >&2; exit 1; }
. scripts/bench-vm-env.sh
vm_bench_env bench-vm
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
OWN_KERNEL=
if [[ ",$VMM" == *+own* ]]; then
    OWN_KERNEL=$("$VESSEL" kernel build --no-install --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["dir"])')
fi
export OWN_KERNEL

# A busybox-static image as an OCI layout, written by hand (no vessel code involved).
python3 scripts/busybox-image.py "$WORK/bench.tar" bench/vm:latest sh true echo sleep cat
"$VESSEL" --root "$ROOT" load -i "$WORK/bench.tar" >&2

VESSEL_VM_TIMINGS=1 python3 - "$RUNS" "$VESSEL" "$ROOT" "$VMM" <<'PY'
import json, os, re, statistics, subprocess, sys, time
runs, vessel, root, vmms = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")
stages = ["assets-ready", "vmm-started", "agent-ready", "process-done", "vm-gone"]
def vmm_of(slot):
    return slot.split("+")[0]
def env_of(slot):
    env = dict(os.environ)
    if "+bzimage" in slot:
        env["VESSEL_KERNEL_UNPACK"] = "0"
    if "+unconfined" in slot:
        env["VESSEL_VMM_UNCONFINED"] = "1"
    if "+own" in slot:
        env["VESSEL_KERNEL"] = os.environ["OWN_KERNEL"]
    return env
def vm_cmd(vmm):
    return [vessel, "--root", root, "run", "--rm", "--vmm", vmm_of(vmm), "bench/vm", "true"]
ct_cmd = [vessel, "--root", root, "run", "--rm", "--isolation", "container", "bench/vm", "true"]
def vm_run(vmm):
    t = time.perf_counter()
    p = subprocess.run(vm_cmd(vmm), stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env_of(vmm))
    wall = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        sys.exit(f"bench-vm: VM run ({vmm}) failed ({p.returncode}):\n{p.stderr[-3000:]}")
    m = re.search(r"vm timings \(ms since start\): (.*)", p.stderr)
    vals = dict(kv.split("=") for kv in m.group(1).split())
    return wall, {k: float(vals[k]) for k in stages + ["jail-cpu"]}
def ct_run():
    t = time.perf_counter()
    p = subprocess.run(ct_cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        return None
    return (time.perf_counter() - t) * 1000
def backend_name(vmm):
    out = subprocess.run([vessel, "--root", root, "kernel", "--vmm", vmm_of(vmm)], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("vmm:")), "?")
def pss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
def idle_pss(vmm):
    name = "idle-" + vmm.replace("+", "-")
    subprocess.run([vessel, "--root", root, "run", "-d", "--name", name, "--vmm", vmm_of(vmm), "bench/vm", "sleep", "600"],
                   check=True, capture_output=True, env=env_of(vmm))
    try:
        deadline = time.time() + 120
        while subprocess.run([vessel, "--root", root, "exec", name, "true"], capture_output=True).returncode != 0:
            if time.time() > deadline:
                return None
            time.sleep(0.5)
        time.sleep(2)
        # The VM's host processes: the VMM and any helper, in the container's cgroup.
        info = json.loads(subprocess.run([vessel, "--root", root, "inspect", name],
                                         check=True, capture_output=True, text=True).stdout)
        tree = {p["pid"] for p in info[0]["HostProcesses"]}
        mem = subprocess.run([vessel, "--root", root, "exec", name, "cat", "/proc/meminfo"],
                             capture_output=True, text=True).stdout
        kib = {l.split(":")[0]: int(l.split()[1]) for l in mem.splitlines() if l.split()[1:2]}
        used = (kib.get("MemTotal", 0) - kib.get("MemFree", 0)) / 1024
        return sum(pss_kib(p) for p in tree) / 1024, len(tree), used
    finally:
        subprocess.run([vessel, "--root", root, "rm", "-f", name], capture_output=True)
names = {v: backend_name(v) for v in vmms}
first = {v: vm_run(v) for v in vmms}  # builds the image disk and the initramfs
ct_ok = ct_run() is not None
walls = {v: [] for v in vmms}
st = {v: {k: [] for k in stages + ["jail-cpu"]} for v in vmms}
ct_walls = []
slots = vmms + (["container"] if ct_ok else [])
for i in range(runs):
    # Rotate the order each round, so that load and caches favour no backend.
    for slot in slots[i % len(slots):] + slots[:i % len(slots)]:
        if slot == "container":
            w = ct_run()
            if w is not None: ct_walls.append(w)
        else:
            w, s = vm_run(slot); walls[slot].append(w)
            for k in stages + ["jail-cpu"]: st[slot][k].append(s[k])
med = statistics.median
print(f"VM isolation, {runs} runs each, alternating (medians, ms since the backend started):")
for v in vmms:
    print(f"  --vmm {v}: {names[v]}")
hdr = "".join(f"{'--vmm ' + v:>22}" for v in vmms)
print(f"  {'stage':<13}{hdr}")
prev = {v: 0.0 for v in vmms}
for k in stages:
    cells = ""
    for v in vmms:
        m = med(st[v][k]); cells += f"{m:10.1f} (+{m - prev[v]:7.1f})"; prev[v] = m
    print(f"  {k:<13}{cells}")
print(f"  {'jail-cpu':<13}" + "".join(f"{med(st[v]['jail-cpu']):10.2f} {'':10}" for v in vmms) + "  CPU ms of the VMM's process before its exec")
print(f"  {'wall':<13}" + "".join(f"{med(walls[v]):10.1f} {'':10}" for v in vmms) + "  whole `vessel run --rm IMAGE true`")
print(f"  {'wall min/max':<13}" + "".join(f"{min(walls[v]):8.0f}/{max(walls[v]):<8.0f}{'':5}" for v in vmms))
print(f"  {'first run':<13}" + "".join(f"{first[v][0]:10.1f} {'':10}" for v in vmms) + "  (builds the image disk and the initramfs)")
for v in vmms:
    r = idle_pss(v)
    print(f"  idle VM, --vmm {v}: " + (f"{r[0]:.1f} MiB PSS in {r[1]} host process(es); the guest uses {r[2]:.1f} MiB (MemTotal - MemFree)" if r else "did not come up"))
for v in vmms[1:]:
    print(f"--vmm {v} / --vmm {vmms[0]} wall ratio: {med(walls[v]) / med(walls[vmms[0]]):.2f}x; "
          f"--vmm {vmms[0]} / --vmm {v}: {med(walls[vmms[0]]) / med(walls[v]):.2f}x")
if ct_walls:
    print(f"container isolation, {len(ct_walls)} runs: wall median {med(ct_walls):.1f} ms (min {min(ct_walls):.1f}, max {max(ct_walls):.1f})")
    for v in vmms:
        print(f"--vmm {v} / container wall ratio: {med(walls[v]) / med(ct_walls):.1f}x")
else:
    print("container isolation: not runnable here (see `vessel run --isolation container`)")
PY

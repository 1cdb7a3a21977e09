#!/usr/bin/env bash
# The default network, side by side in one run: host <-> container through a published
# port (`-p 127.0.0.1:HP:CP`), for container mode (pasta) and VM mode (passt) on each VM
# backend, next to the same tools on the host's loopback with no container at all:
#   tcp in    iperf3 from the host into the container (Mbit/s, receiver side)
#   tcp out   the same, reversed (-R): the container sends
#   http      requests per second of busybox httpd in the container under wrk
#             (2 threads, 16 connections, a 612-byte page)
# Medians of RUNS runs of DURATION seconds each.
# Usage: scripts/bench-network.sh [RUNS] [DURATION]   (as root; default 3 runs of 5 s)
# VMM=qemu|builtin|qemu,builtin picks the VM backends (default qemu); NO_BUILD=1 as in
# bench-vm.sh (for the nested-KVM guest: TMPDIR=/run NO_BUILD=1 VMM=builtin,qemu).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-3}"
DURATION="${2:-5}"
VMM="${VMM:-qemu}"
for t in iperf3 wrk passt pasta; do
    command -v "$t" >/dev/null || { echo "bench-network: $t is missing (scripts/setup.sh)" >&2; exit 1; }
done
. scripts/bench-vm-env.sh
vm_bench_env bench-network
[ "${KEEP:-0}" = 1 ] || trap '"$VESSEL" --root "$WORK/root" rm -f $("$VESSEL" --root "$WORK/root" ps -aq 2>/dev/null) >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# The image: busybox-static and Debian's iperf3 with the libraries it loads.
iperf=$(command -v iperf3)
libs=$(ldd "$iperf" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}')
EXTRA_FILES="$iperf $libs" python3 scripts/busybox-image.py "$WORK/image.tar" bench/net:latest
"$VESSEL" --root "$WORK/root" load -i "$WORK/image.tar" >&2

python3 - "$RUNS" "$DURATION" "$VESSEL" "$WORK" "$VMM" <<'PY'
import json, os, re, socket, statistics, subprocess, sys, time
runs, duration, vessel, work, vmms = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5].split(",")
root = os.path.join(work, "root")
page = "x" * 612
server = f"mkdir -p /www; printf '%s' {page} > /www/index.html; httpd -p 8080 -h /www; exec /usr/bin/iperf3 -s -p 5201"

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_http(port, secs=120):
    end = time.time() + secs
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                if c.recv(16).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise Failed(f"the server on port {port} never answered")

class Failed(Exception):
    """A mode that could not be measured: said in its row, the others still run."""

def logs(cid):
    if cid is None:
        return ""
    p = subprocess.run([vessel, "--root", root, "logs", cid], capture_output=True, text=True)
    return f"\ncontainer output:\n{p.stdout[-1500:]}{p.stderr[-1500:]}"

def iperf(port, reverse, name, cid):
    args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(duration), "-J"] + (["-R"] if reverse else [])
    for _ in range(15):
        p = subprocess.run(args, capture_output=True, text=True)
        try:
            return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (ValueError, KeyError):
            # The server takes one client at a time ("the server is busy"), and the last
            # one may still be closing (seconds, in the nested-KVM guest).
            time.sleep(2)
    raise Failed(f"iperf3 failed: {p.stdout[-300:]}{p.stderr[-1500:]}{logs(cid)}")

def wrk(port):
    p = subprocess.run(["wrk", "-t2", "-c16", f"-d{duration}s", f"http://127.0.0.1:{port}/index.html"],
                       capture_output=True, text=True, check=True)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", p.stdout).group(1))

modes = [("host loopback", None), ("container", ["--isolation", "container"])] + [
    (f"vm ({v})", ["--isolation", "vm", "--vmm", v, "--memory", "512m"]) for v in vmms]
jobs = ["tcp in", "tcp out", "http"]
res = {m: {j: [] for j in jobs} for m, _ in modes}
failed = {}
for name, args in modes:
    ip, hp = free_port(), free_port()
    if args is None:
        procs = [subprocess.Popen(["iperf3", "-s", "-p", str(ip)], stdout=subprocess.DEVNULL),
                 subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{hp}", "-h", work])]
        with open(os.path.join(work, "index.html"), "w") as f:
            f.write(page)
        cid = None
    else:
        p = subprocess.run([vessel, "--root", root, "run", "-d", *args, "-p", f"127.0.0.1:{ip}:5201",
                            "-p", f"127.0.0.1:{hp}:8080", "bench/net", "sh", "-c", server],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"bench-network: {name}: {p.stderr[-2000:]}")
        cid, procs = p.stdout.strip(), []
    try:
        wait_http(hp)
        time.sleep(0.5)
        for _ in range(runs):
            res[name]["tcp in"].append(iperf(ip, False, name, cid))
            res[name]["tcp out"].append(iperf(ip, True, name, cid))
            res[name]["http"].append(wrk(hp))
    except Failed as e:
        failed[name] = str(e)
        print(f"bench-network: {name}: {e}", file=sys.stderr)
    if cid:
        subprocess.run([vessel, "--root", root, "rm", "-f", cid], capture_output=True)
    for p in procs:
        p.kill(); p.wait()

def med(v):
    return statistics.median(v) if v else float("nan")
print(f"Network through -p 127.0.0.1:HP:CP, {runs} runs of {duration} s each, medians:")
print(f"  {'':<16}{'tcp in Mbit/s':>15}{'tcp out Mbit/s':>16}{'http req/s':>12}")
for name, _ in modes:
    r = res[name]
    print(f"  {name:<16}{med(r['tcp in']):15.0f}{med(r['tcp out']):16.0f}{med(r['http']):12.0f}"
          + ("   (failed: see above)" if name in failed else ""))
for name, _ in modes[2:]:
    print(f"  {name} / container: " + ", ".join(
        f"{j} {med(res[name][j]) / max(med(res['container'][j]), 1e-9):.2f}x" for j in jobs))
sys.exit(1 if failed else 0)
PY

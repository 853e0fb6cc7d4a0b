#!/usr/bin/env bash
# ringkv against Redis on this machine, in one run, with one tool (`ringkv bench`) and one load:
# redis-server without persistence and with `appendfsync always`; ringkv with 1 node and with 3
# nodes (N=3, R=W=quorum), each through the SDK and through its Redis port. Prints every
# figure and the ratios the targets name, plus the machine's state during the run (fsync
# latency of the data folder's disk, CPU steal, load), so a slow run can be told apart from a
# regression.
# Usage: bench/compare.sh DIR   (after `cargo build --release`; needs redis-server)
# Env: DUR (seconds per measurement, 10), C (in flight, 64), KEYS (100000), SIZE (100).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
B=$REPO/target/release/ringkv
D=$(realpath -m "$1"); DUR=${DUR:-10}; C=${C:-64}; KEYS=${KEYS:-100000}; SIZE=${SIZE:-100}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
[ -x "$B" ] || { echo "needs $B: run cargo build --release"; exit 1; }
pkill -f "ringkv.*node" 2>/dev/null; rm -rf "$D"; mkdir -p "$D"; cd "$D"
RESULTS=$D/results.jsonl; : > "$RESULTS"
BENCH="--keys $KEYS --value-size $SIZE --concurrency $C --duration $DUR --json"

machine() { # label: fsync latency (median of 200 fdatasyncs of 4 KiB), steal and iowait over the last measurement
  python3 - "$1" "$D" <<'PY'
import os, sys, time, statistics, json
label, d = sys.argv[1], sys.argv[2]
p = os.path.join(d, ".fsync-probe"); fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644); ts = []
for _ in range(200):
    os.write(fd, b"x" * 4096); t = time.perf_counter(); os.fdatasync(fd); ts.append(time.perf_counter() - t)
os.close(fd); os.unlink(p)
f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
prev = os.path.join(d, ".cpu"); old = json.load(open(prev)) if os.path.exists(prev) else f
json.dump(f, open(prev, "w")); dt = [a - b for a, b in zip(f, old)]; tot = sum(dt) or 1
print(json.dumps({"machine": label, "fsync_ms_p50": round(statistics.median(ts) * 1e3, 3),
      "fsync_ms_p99": round(sorted(ts)[197] * 1e3, 3), "steal_pct": round(100 * dt[7] / tot, 1),
      "iowait_pct": round(100 * dt[4] / tot, 1), "busy_pct": round(100 * (tot - dt[3] - dt[4]) / tot, 1),
      "load1": os.getloadavg()[0]}))
PY
}
run() { # name, then ringkv bench arguments
  local name=$1; shift
  local out; out=$("$B" "$@" $BENCH 2>/dev/null) || out='{"ops_per_sec":0,"p50_ms":0,"p99_ms":0,"errors":-1}'
  echo "{\"name\":\"$name\",\"report\":$out}" >> "$RESULTS"
  machine "$name" >> "$RESULTS"
  python3 -c "import json,sys; r=json.loads(sys.argv[2]); print('%-28s %8.0f ops/s  p50 %6.2f ms  p99 %6.2f ms  errors %d' % (sys.argv[1], r['ops_per_sec'], r['p50_ms'], r['p99_ms'], r['errors']))" "$name" "$out"
}
machine start > /dev/null

redis() { # name port extra-args
  redis-server --port "$2" --save "" --dir "$D" --daemonize yes --logfile "$D/$1.log" ${3:-} >/dev/null
  for _ in $(seq 50); do redis-cli -p "$2" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
redis redis-mem 6391 "--appendonly no"
run "redis GET" bench --target resp://127.0.0.1:6391 --workload read
run "redis SET" bench --target resp://127.0.0.1:6391 --workload update --no-load
redis-cli -p 6391 shutdown nosave >/dev/null 2>&1
redis redis-aof 6392 "--appendonly yes --appendfsync always --appendfilename aof"
run "redis AOF-always GET" bench --target resp://127.0.0.1:6392 --workload read
run "redis AOF-always SET" bench --target resp://127.0.0.1:6392 --workload update --no-load
redis-cli -p 6392 shutdown nosave >/dev/null 2>&1

ringkv() { # label nodes
  "$B" --config "$REPO/cluster.toml" cluster up --detach --nodes "$2" --data-dir "$D/$1" > "$D/$1.up" 2>&1 || { cat "$D/$1.up"; exit 1; }
}
ringkv one 1
CFG=$D/one/cluster.toml
run "ringkv 1 node SDK read" --config "$CFG" bench --workload read
run "ringkv 1 node SDK update" --config "$CFG" bench --workload update --no-load
run "ringkv 1 node RESP GET" bench --target resp://127.0.0.1:8401 --workload read --no-load
run "ringkv 1 node RESP SET" bench --target resp://127.0.0.1:8401 --workload update --no-load
"$B" cluster down --data-dir "$D/one" > /dev/null
ringkv three 3
CFG=$D/three/cluster.toml
run "ringkv 3 nodes SDK read" --config "$CFG" bench --workload read
run "ringkv 3 nodes SDK update" --config "$CFG" bench --workload update --no-load
run "ringkv 3 nodes RESP GET" bench --target resp://127.0.0.1:8401 --workload read --no-load
run "ringkv 3 nodes RESP SET" bench --target resp://127.0.0.1:8401 --workload update --no-load
"$B" cluster down --data-dir "$D/three" > /dev/null

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = {x["name"]: x["report"] for x in rows if "report" in x}
m = [x for x in rows if "machine" in x]
def ratio(a, b):
    return r[a]["ops_per_sec"] / r[b]["ops_per_sec"] if r.get(b, {}).get("ops_per_sec") else float("nan")
print()
for a, b, target in [
    ("ringkv 3 nodes SDK read", "redis GET", 0.5), ("ringkv 3 nodes RESP GET", "redis GET", 0.5),
    ("ringkv 3 nodes SDK update", "redis AOF-always SET", 0.5), ("ringkv 3 nodes RESP SET", "redis AOF-always SET", 0.5),
    ("ringkv 1 node SDK read", "redis GET", None), ("ringkv 1 node SDK update", "redis AOF-always SET", None)]:
    t = f"(target >= {target}x)" if target else ""
    print(f"{a} / {b}: {ratio(a, b):.2f}x {t}")
for a in ["ringkv 3 nodes SDK read", "ringkv 3 nodes SDK update", "ringkv 3 nodes RESP GET", "ringkv 3 nodes RESP SET"]:
    print(f"{a}: p99 {r[a]['p99_ms']:.2f} ms (target < 10 ms)")
print("machine during the run: fsync p50 %.2f-%.2f ms, steal %.1f-%.1f %%, iowait %.1f-%.1f %%" % (
    min(x["fsync_ms_p50"] for x in m), max(x["fsync_ms_p50"] for x in m),
    min(x["steal_pct"] for x in m), max(x["steal_pct"] for x in m),
    min(x["iowait_pct"] for x in m), max(x["iowait_pct"] for x in m)))
PY

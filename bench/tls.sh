#!/usr/bin/env bash
# TLS against plaintext, same run: ROUNDS rounds, each a fresh 3-node cluster (N=3, quorum)
# without and then with `cluster up --tls`, each measured with the same read and update
# benches; prints every figure and the TLS/plain ratios (median over the rounds).
# Usage: bench/tls.sh DIR   Needs `cargo build --release` first.
# Env: ROUNDS (3), DUR (seconds per bench, 10), C (in flight, 64), KEYS (100000).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
B=$REPO/target/release/ringkv
D=$(realpath -m "$1"); ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}; C=${C:-64}; KEYS=${KEYS:-100000}
rm -rf "$D"; mkdir -p "$D"
for r in $(seq 1 "$ROUNDS"); do
  for mode in plain tls; do
    data=$D/$mode-$r
    flag=""; [ $mode = tls ] && flag="--tls"
    $B --config "$REPO/cluster.toml" cluster up --detach $flag --data-dir "$data" > "$D/up-$mode-$r.log" 2>&1 \
      || { cat "$D/up-$mode-$r.log"; exit 1; }
    $B --config "$data/cluster.toml" bench --workload read --keys "$KEYS" --concurrency "$C" --duration "$DUR" --json > "$D/$mode-$r-read.json"
    $B --config "$data/cluster.toml" bench --workload update --keys "$KEYS" --concurrency "$C" --duration "$DUR" --json > "$D/$mode-$r-update.json"
    $B cluster down --data-dir "$data" > /dev/null
  done
done
python3 - "$D" "$ROUNDS" <<'PY'
import json, sys, statistics
d, rounds = sys.argv[1], int(sys.argv[2])
for w in ["read", "update"]:
    ratios, p99r = [], []
    for r in range(1, rounds + 1):
        p = json.load(open(f"{d}/plain-{r}-{w}.json")); t = json.load(open(f"{d}/tls-{r}-{w}.json"))
        ratios.append(t["ops_per_sec"] / p["ops_per_sec"]); p99r.append(t["p99_ms"] / p["p99_ms"])
        print(f"round {r} {w:6} plain {p['ops_per_sec']:8.0f}/s p99 {p['p99_ms']:6.2f} ms | tls {t['ops_per_sec']:8.0f}/s p99 {t['p99_ms']:6.2f} ms | ratio {ratios[-1]:.3f} errors {p['errors']}+{t['errors']}")
    print(f"{w}: TLS/plain throughput median {statistics.median(ratios):.3f} (target >= 0.85), p99 ratio median {statistics.median(p99r):.2f}")
PY

#!/usr/bin/env bash
# Membership changes under load, one round: a fresh 3-node cluster, 1M keys of 100 B, then a
# read and an update bench side by side in steady state, during a 3->4 join (`cluster add`) and
# during the 4->3 leave (`cluster remove n4`); prints each phase's rate, p50/p99 and errors, and
# the transfer throughput per transfer and per receiving node.
# Usage: bench/membership.sh DIR [MB_PER_SEC]   (0, the default here, is unthrottled)
# Needs `cargo build --release` first. Env: DUR (seconds per phase, 40), KEYS (1000000);
# READ_RATE and UPDATE_RATE (ops/s) run each bench open loop at that rate (`bench --rate`)
# instead of as fast as 32 requests in flight go.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
B=$REPO/target/release/ringkv
D=$(realpath -m "$1"); MBPS=${2:-0}; DUR=${DUR:-40}; KEYS=${KEYS:-1000000}
rm -rf $D; mkdir -p $D; cp "$REPO/cluster.toml" $D/
cd $D
export RINGKV__MEMBERSHIP__HANDOFF_MB_PER_SEC=$MBPS
$B cluster up --detach --data-dir $D/data > up.log 2>&1 || { cat up.log; exit 1; }
C=$D/data/cluster.toml
$B --config $C bench --workload read --keys $KEYS --duration 2 --json > load.json
RR=${READ_RATE:+--rate $READ_RATE}; UR=${UPDATE_RATE:+--rate $UPDATE_RATE}
pair() { # name duration
  $B --config $C bench --workload read --no-load --keys $KEYS --concurrency 32 --duration $2 $RR --json > $1-read.json &
  $B --config $C bench --workload update --keys $KEYS --concurrency 32 --duration $2 $UR --json > $1-update.json &
}
pair steady 15; wait
pair join $DUR; sleep 3
/usr/bin/time -f "join took %e s" $B --config $C cluster add --data-dir $D/data > join.log 2>&1; tail -2 join.log
wait
pair leave $DUR; sleep 3
/usr/bin/time -f "leave took %e s" $B --config $C cluster remove n4 --data-dir $D/data > leave.log 2>&1; tail -2 leave.log
wait
for f in steady join leave; do for w in read update; do
  python3 -c "import json,sys; r=json.load(open('$f-$w.json')); print('$f $w', 'ops/s %.0f'%r['ops_per_sec'], 'p50 %.2f p99 %.2f ms'%(r['p50_ms'],r['p99_ms']), 'errors', r['errors'], r['error_samples'][:2])"
done; done
grep -h "partition streamed in" data/n*/node.log | python3 -c "
import sys,re
rates=[float(re.search(r'mb_per_sec=([0-9.]+)',l).group(1)) for l in sys.stdin]
rates.sort(); print('transfers', len(rates), 'per-transfer MB/s median %.1f min %.1f max %.1f'%(rates[len(rates)//2], rates[0], rates[-1]) if rates else 'none')"
for n in n4 n1 n2 n3; do grep -h "partition streamed in" data/$n/node.log | python3 -c "
import sys,re,datetime
rows=[]
for l in sys.stdin:
    t=datetime.datetime.fromisoformat(l.split()[0].rstrip('Z')).timestamp()
    b=int(re.search(r' bytes=([0-9]+)',l).group(1)); r=float(re.search(r'mb_per_sec=([0-9.]+)',l).group(1))*1e6
    rows.append((t-b/max(r,1),t,b))
if rows:
    # one window per change: split where a gap of over 5 s separates transfers
    rows.sort(); groups=[[rows[0]]]
    for r in rows[1:]:
        (groups[-1].append(r) if r[0]-max(x[1] for x in groups[-1])<5 else groups.append([r]))
    for g in groups:
        s=min(x[0] for x in g); e=max(x[1] for x in g); b=sum(x[2] for x in g)
        print('$n: %d transfers in, %.1f MB in %.2f s = %.1f MB/s aggregate'%(len(g),b/1e6,e-s,b/1e6/(e-s)))
"; done
$B cluster down --data-dir $D/data > /dev/null

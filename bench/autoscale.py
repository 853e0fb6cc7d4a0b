#!/usr/bin/env python3
"""Autoscaling benchmark on a local cluster (`ringkv cluster up --autoscale`).

step DIR    a load step on 3 nodes: time to the scale-out decision and to the new node serving,
            throughput (total and per node) before and after, per-second p99 during each
            scale-out against the steady seconds before; then light load while it scales back
            in, with per-second p99 during each scale-in against the light load's own steady
            seconds.
steady DIR  SECS of noisy load (a read bench whose concurrency changes every 15 s at random
            between 8 and 40): counts actions and flaps (an action opposite to the one before).

Needs `cargo build --release`. The [autoscale] settings come from cluster.toml and
RINGKV__AUTOSCALE__* in the environment (e.g. RINGKV__AUTOSCALE__SCALE_IN_AFTER_SECS=60).
Env: STEP (seconds of the load step, 150), QUIET (seconds of light load after it, 300),
SECS (steady: 600), KEYS (100000).
"""
import json, os, random, re, statistics, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = os.path.join(REPO, "target/release/ringkv")
KEYS = os.environ.get("KEYS", "100000")


def run(*args, **kw):
    return subprocess.run([B, *args], capture_output=True, text=True, **kw)


def bench(cfg, workload, conc, secs, log):
    return subprocess.Popen(
        [B, "--config", cfg, "bench", "--workload", workload, "--no-load", "--keys", KEYS,
         "--concurrency", str(conc), "--duration", str(secs), "--progress", "--json"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def progress(log, t_start):
    """(wall time, ops/s, p99 ms) per second of a bench's --progress output."""
    rows = []
    for line in open(log):
        m = re.match(r"t=\s*(\d+)s\s+(\d+) ops/s\s+(\d+) errors\s+p99 ([0-9.]+) ms", line)
        if m:
            rows.append((t_start + int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))))
    return rows


def up(d):
    subprocess.run(["rm", "-rf", d]); os.makedirs(d)
    out = run("--config", os.path.join(REPO, "cluster.toml"), "cluster", "up", "--detach",
              "--autoscale", "--data-dir", os.path.join(d, "data"))
    if out.returncode != 0:
        sys.exit(out.stdout + out.stderr)
    cfg = os.path.join(d, "data", "cluster.toml")
    run("--config", cfg, "bench", "--workload", "read", "--keys", KEYS, "--duration", "1")
    return cfg


def view(cfg):
    out = run("--config", cfg, "console", "--json", "-c", "autoscale")
    try:
        return json.loads(out.stdout)["active"]
    except Exception:
        return None


def poll(cfg, until, log, stop=lambda v: False):
    last = None
    with open(log, "a") as f:
        while time.time() < until:
            v = view(cfg)
            if v:
                last = v
                f.write(json.dumps({"t": time.time(), "view": v}) + "\n")
                if stop(v):
                    break
            time.sleep(1)
    return last


def down(d):
    run("cluster", "down", "--data-dir", os.path.join(d, "data"))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def step(d):
    step_s, quiet_s = int(os.environ.get("STEP", 150)), int(os.environ.get("QUIET", 300))
    cfg = up(d)
    t0 = time.time()
    r = bench(cfg, "read", 64, step_s, f"{d}/step-read.log")
    u = bench(cfg, "update", 2, step_s, f"{d}/step-update.log")
    last = poll(cfg, t0 + step_s, f"{d}/autoscale.jsonl")
    r.wait(); u.wait()
    tq = time.time()
    q = bench(cfg, "read", 4, quiet_s, f"{d}/quiet-read.log")
    last = poll(cfg, tq + quiet_s, f"{d}/autoscale.jsonl") or last
    q.kill(); q.wait()
    down(d)
    decisions = last["decisions"] if last else []
    outs = [x for x in decisions if x["action"] == "scale-out"]
    ins = [x for x in decisions if x["action"] == "scale-in"]
    sr, su = progress(f"{d}/step-read.log", t0), progress(f"{d}/step-update.log", t0)
    total = {}
    for rows in (sr, su):
        for (t, ops, err, p99) in rows:
            total[t] = total.get(t, 0) + ops
    print(f"load step at t=0; {len(outs)} scale-out(s), {len(ins)} scale-in(s)")
    errors = sum(x[2] for x in sr + su)
    print(f"errors during the step: {errors}")
    windows = []
    for i, x in enumerate(outs):
        at = x["at_ms"] / 1000
        m = re.search(r"serving ([0-9.]+) s after the decision", x["result"])
        serve = float(m.group(1)) if m else float("nan")
        windows.append((at, at + serve))
        print(f"scale-out {i+1}: {x['members']}->{x['members']+1} decided at t={at-t0:.1f} s "
              f"(load {x['ratio']:.2f}x), serving at t={at-t0+serve:.1f} s: {x['result']}")
    if outs:
        first = windows[0][0]
        before = [total[t] for t in total if t0 + 5 <= t < first]
        after = [total[t] for t in total if t >= t0 + step_s - 30]
        n_after = outs[-1]["members"] + 1
        print(f"throughput before the first scale-out: {med(before):.0f} ops/s total, "
              f"{med(before)/3:.0f} per node (3 nodes)")
        print(f"throughput in the step's last 30 s: {med(after):.0f} ops/s total, "
              f"{med(after)/n_after:.0f} per node ({n_after} nodes)")
        for name, rows in (("read", sr), ("update", su)):
            steady = [p for (t, _, _, p) in rows if t0 + 5 <= t < first]
            for i, (a, b) in enumerate(windows):
                during = [p for (t, _, _, p) in rows if a <= t <= b + 1]
                print(f"{name} p99 during scale-out {i+1}: median {med(during):.1f} ms, max "
                      f"{max(during, default=float('nan')):.1f} ms; steady median {med(steady):.1f} ms "
                      f"-> {med(during)/med(steady):.2f}x")
    qr = progress(f"{d}/quiet-read.log", tq)
    busy = []
    for x in ins:
        at = x["at_ms"] / 1000
        m = re.search(r"stopped in ([0-9.]+) s", x["result"])
        busy.append((at, at + (float(m.group(1)) if m else 0)))
        print(f"scale-in: {x['members']}->{x['members']-1} decided at t={at-tq:.1f} s after the load "
              f"dropped: {x['result']}")
    quiet = [p for (t, _, _, p) in qr if not any(a <= t <= b + 1 for a, b in busy)]
    during = [p for (t, _, _, p) in qr if any(a <= t <= b + 1 for a, b in busy)]
    print(f"light-load read p99 during scale-ins: median {med(during):.1f} ms (max "
          f"{max(during, default=float('nan')):.1f}), otherwise {med(quiet):.1f} ms, errors "
          f"{sum(x[2] for x in qr)}")
    print(f"members at the end: {last['members'] if last else '?'}")


def steady(d):
    secs = int(os.environ.get("SECS", 600))
    cfg = up(d)
    t0 = time.time(); rng = random.Random(7); procs = []
    while time.time() < t0 + secs:
        conc = rng.randint(8, 40)
        p = bench(cfg, "read", conc, 15, f"{d}/noise.log")
        poll(cfg, time.time() + 15, f"{d}/autoscale.jsonl")
        p.wait()
    last = view(cfg)
    down(d)
    acts = [x for x in (last or {}).get("decisions", []) if x["action"] != "hold"]
    flaps = sum(1 for a, b in zip(acts, acts[1:]) if a["action"] != b["action"])
    print(f"{secs} s of noisy load: {len(acts)} action(s) {[a['action'] for a in acts]}, flaps {flaps}")
    sizes = sorted({x["members"] for x in (last or {}).get("decisions", [])})
    print(f"sizes seen: {sizes}; final members {last['members'] if last else '?'}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("step", "steady"):
        sys.exit(__doc__)
    {"step": step, "steady": steady}[sys.argv[1]](os.path.abspath(sys.argv[2]))

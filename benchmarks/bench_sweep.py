"""Per-trial overhead of `maxup sweep` and the efficiency of a 10-trial sweep.

Usage: .venv/bin/python benchmarks/bench_sweep.py [--reps 3] [--epochs 15]

1. **Per-trial overhead.** The same config (the quickstart's m=4 arm, seed 0) runs
   (a) in a bare process through ``maxup.engine.train`` and (b) as a 1-trial
   ``maxup sweep`` in a subprocess, alternately, ``--reps`` times each. Every line the CLI
   prints is time-stamped as it arrives, which splits the sweep's wall into: Ray start
   (process start → the "N trial(s) to run" line, printed right after ``ray.init``), the
   Tune phase (that line → "sweep finished"), and the exit (→ process end: Ray shutdown).
   The bare process uses one torch thread, as a trial with ``cpus_per_trial: 1`` does.
   Per-trial overhead = Tune phase − the bare ``train()`` call (both include building data
   and model; the Tune phase adds the actor start, the worker's imports, Tune's scheduling,
   per-epoch ``tune.report`` and the record/log writes on top). The bare process's imports
   and the sweep's fixed Ray start/stop are shown apart.
2. **Sweep efficiency.** ``search_spaces/quickstart.yaml`` (10 trials, 2 at a time) once:
   Σ trial compute (the records' ``timings.wall_s``: epochs, train + eval) ÷ (slots × wall),
   for the Tune phase and for the whole command. Quickstart trials are tiny (~2 s of
   compute), so the fixed per-actor start dominates; the same 10 trials with
   ``--long-epochs`` epochs each (~20–30 s of compute) show the efficiency of real trials.

3. **Order and plan accuracy.** The 10 long trials run twice, ``--order file`` (the space's
   seeded order: the pre-issue-14 behaviour) and ``--order longest-first``; each reports its
   efficiency, and the cost model's prediction for the sweep on this machine
   (``maxup.platform.plan.price``: Σ trial time and the simulated wall) is set against the
   measured Σ trial time (records' ``timings.wall_s`` plus the profile's per-trial overhead)
   and the Tune phase. ``--order-only`` runs just this part.

Each subprocess gets a private ``RAY_TMPDIR`` and its own session; whatever Ray leaves
behind in that session is killed by pid afterwards (never ``ray stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TARGET_OVERHEAD_S = 2.0
TARGET_EFFICIENCY = 0.9

_BARE = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)  # as the sweep's trial does with cpus_per_trial: 1
from maxup.engine import train
from maxup.platform.space import load_space
t1 = time.perf_counter()
trial = load_space(sys.argv[1]).expand()[0]
t2 = time.perf_counter()
rec = train(trial.config, sys.argv[2], log=None)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "train_s": t3 - t2, "epochs_s": rec["timings"]["wall_s"],
                  "status": rec["status"]}))
"""


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> list[int]:
    """SIGTERM then SIGKILL what is left of a session this script started; returns its pids."""
    left = _session_pids(sid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while _session_pids(sid) and time.time() < deadline:
            time.sleep(0.1)
    return left


def one_trial_space(tmp: Path, epochs: int) -> Path:
    path = tmp / "one.yaml"
    text = (ROOT / "search_spaces" / "quickstart.yaml").read_text()
    text = text.replace("name: quickstart", "name: one")
    text = text.replace("maxup.m: [1, 4]", "maxup.m: [4]").replace("seeds: 5", "seeds: [0]")
    text = text.replace("epochs: 15", f"epochs: {epochs}")
    path.write_text(text)
    return path


def run_bare(space: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([PYTHON, "-c", _BARE, str(space), str(out)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["process_s"] = time.perf_counter() - t0
    return info


def run_sweep(space: Path, storage: Path, order: str = "longest-first") -> dict:
    """Run the CLI; time-stamp its lines; return phase durations."""
    ray_tmp = tempfile.mkdtemp(prefix="mxb", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1",
               RAY_USAGE_STATS_ENABLED="0")
    t0 = time.perf_counter()
    p = subprocess.Popen([PYTHON, "-m", "maxup", "sweep", str(space), "--storage", str(storage),
                          "--no-table", "--order", order], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in p.stdout]
    rc = p.wait()
    end = time.perf_counter() - t0
    leftovers = _kill_session(p.pid)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if rc != 0:
        raise RuntimeError(f"sweep exited {rc}:\n" + "\n".join(t for _, t in lines[-40:]))

    ray_up = next(t for t, line in lines if "trial(s) to run" in line)
    finished = next(t for t, line in lines if line.startswith("sweep finished in"))
    return {"ray_start_s": ray_up, "tune_s": finished - ray_up, "exit_s": end - finished,
            "process_s": end, "leftover_procs": len(leftovers)}


def ten_space(tmp: Path, epochs: int) -> Path:
    text = (ROOT / "search_spaces" / "quickstart.yaml").read_text()
    text = text.replace("name: quickstart", "name: ten").replace("epochs: 15", f"epochs: {epochs}")
    (tmp / "ten.yaml").write_text(text)
    return tmp / "ten.yaml"


def predicted(space: Path) -> dict:
    """The cost model's plan of a space on this machine (2 slots of this CPU)."""
    from maxup.platform import plan
    from maxup.platform.space import load_space

    spec = load_space(space)
    trials = spec.expand()
    target = plan.local_target(spec, trials, float(os.cpu_count() or 1), 0.0)
    priced = plan.price(spec, trials, target, {})
    return {"compute_s": priced.compute_s, "wall_s": priced.wall_s, "slots": len(target.slots),
            "notes": priced.notes}


def order_compare(tmp: Path, epochs: int) -> list[dict]:
    from maxup.platform import cost

    space = ten_space(tmp, epochs)
    pred = predicted(space)
    prof, _ = cost.find_profile(cost.cpu_name(), "cpu")
    out = []
    for order in ("file", "longest-first"):
        storage = tmp / f"ten-{order}"
        res = run_sweep(space, storage, order)
        recs = [json.loads(f.read_text()) for f in (storage / "trials").glob("*/record.json")]
        res.update(order=order, n=len(recs), slots=2,
                   compute_s=sum(r["timings"]["wall_s"] for r in recs),
                   overhead_s=prof.trial_overhead_s * len(recs), predicted=pred)
        out.append(res)
        print(f"{order}: Σ compute {res['compute_s']:.2f}s, Tune phase {res['tune_s']:.2f}s, "
              f"efficiency {res['compute_s'] / (2 * res['tune_s']):.2f}", flush=True)
    return out


def print_order(results: list[dict], epochs: int) -> None:
    print()
    print(f"| 10 trials × {epochs} epochs, 2 slots | order | Σ trial compute s | Tune phase s "
          "| efficiency | predicted Σ trial time s | measured Σ (+ overhead) s | predicted wall "
          "s | pred ÷ meas (Σ) | pred ÷ meas (wall) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p = r["predicted"]
        meas = r["compute_s"] + r["overhead_s"]
        print(f"| n = 1 | {r['order']} | {r['compute_s']:.2f} | {r['tune_s']:.2f} | "
              f"{r['compute_s'] / (r['slots'] * r['tune_s']):.2f} | {p['compute_s']:.2f} | "
              f"{meas:.2f} | {p['wall_s']:.2f} | {p['compute_s'] / meas:.2f} | "
              f"{p['wall_s'] / r['tune_s']:.2f} |")
    for note in results[0]["predicted"]["notes"]:
        print(f"note: {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15, help="epochs of the 1-trial config")
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--long-epochs", type=int, default=150,
                    help="epochs per trial of the long 10-trial sweep (0: skip it)")
    ap.add_argument("--order-only", action="store_true",
                    help="only compare file order with longest-first (and the plan's accuracy)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep"))
    if args.order_only:
        try:
            results = order_compare(tmp, args.long_epochs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"\nmachine: {machine_description()}; load average before {load0[0]:.1f}, "
              f"after {os.getloadavg()[0]:.1f}")
        print_order(results, args.long_epochs)
        return
    try:
        space = one_trial_space(tmp, args.epochs)
        bare, sweep = [], []
        for i in range(args.reps):
            bare.append(run_bare(space, tmp / f"bare{i}"))
            sweep.append(run_sweep(space, tmp / f"st{i}"))
            print(f"rep {i}: bare train() {bare[-1]['train_s']:.2f}s, sweep Tune phase "
                  f"{sweep[-1]['tune_s']:.2f}s (Ray start {sweep[-1]['ray_start_s']:.2f}s, "
                  f"exit {sweep[-1]['exit_s']:.2f}s)", flush=True)
        med = statistics.median
        overheads = [s["tune_s"] - b["train_s"] for s, b in zip(sweep, bare)]
        quick = None
        if not args.skip_quickstart:
            q_storage = tmp / "q"
            quick = run_sweep(ROOT / "search_spaces" / "quickstart.yaml", q_storage)
            recs = [json.loads(f.read_text())
                    for f in (q_storage / "trials").glob("*/record.json")]
            quick["n"] = len(recs)
            quick["compute_s"] = sum(r["timings"]["wall_s"] for r in recs)
            quick["slots"] = 2
        long = None
        if args.long_epochs:
            long = run_sweep(ten_space(tmp, args.long_epochs), tmp / "ten")
            recs = [json.loads(f.read_text())
                    for f in (tmp / "ten" / "trials").glob("*/record.json")]
            long.update(n=len(recs), slots=2,
                        compute_s=sum(r["timings"]["wall_s"] for r in recs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.reps
    print()
    print(f"machine: {machine_description()}; load average before "
          f"{load0[0]:.1f}, after {os.getloadavg()[0]:.1f} (shared machine)")
    print()
    print("| measure | n | median s | all runs s |")
    print("|---|---|---|---|")

    def row(name: str, values: list[float]) -> None:
        print(f"| {name} | {len(values)} | {med(values):.2f} | "
              + ", ".join(f"{v:.2f}" for v in values) + " |")

    row("bare process, end to end", [b["process_s"] for b in bare])
    row("bare: imports (torch, maxup)", [b["imports_s"] for b in bare])
    row("bare: `train()` call", [b["train_s"] for b in bare])
    row("bare: epochs only (record timings)", [b["epochs_s"] for b in bare])
    row("1-trial sweep, end to end", [s["process_s"] for s in sweep])
    row("sweep: start + `ray.init`", [s["ray_start_s"] for s in sweep])
    row("sweep: Tune phase (trial to run → finished)", [s["tune_s"] for s in sweep])
    row("sweep: exit (Ray shutdown)", [s["exit_s"] for s in sweep])
    row("**per-trial overhead** (Tune phase − bare `train()`)", overheads)
    eff_tune = eff_all = None
    if quick:
        eff_tune = quick["compute_s"] / (quick["slots"] * quick["tune_s"])
        eff_all = quick["compute_s"] / (quick["slots"] * quick["process_s"])
        print(f"| quickstart ({quick['n']} trials, {quick['slots']} slots): Σ trial compute "
              f"| 1 | {quick['compute_s']:.2f} | |")
        print(f"| quickstart: Tune phase | 1 | {quick['tune_s']:.2f} | |")
        print(f"| quickstart: end to end | 1 | {quick['process_s']:.2f} | |")
    if long:
        print(f"| 10 trials × {args.long_epochs} epochs ({long['slots']} slots): Σ trial "
              f"compute | 1 | {long['compute_s']:.2f} | |")
        print(f"| 10 trials × {args.long_epochs} epochs: Tune phase | 1 | "
              f"{long['tune_s']:.2f} | |")
        print(f"| 10 trials × {args.long_epochs} epochs: end to end | 1 | "
              f"{long['process_s']:.2f} | |")
    print()
    ratio = (f"overhead {med(overheads):.2f} s/trial (target ≤ {TARGET_OVERHEAD_S:g} s, "
             f"{'met' if med(overheads) <= TARGET_OVERHEAD_S else 'MISSED'}), n={n}")
    if quick:
        ratio += (f"; efficiency {eff_tune:.2f} over the Tune phase "
                  f"(target ≥ {TARGET_EFFICIENCY:g}, "
                  f"{'met' if eff_tune >= TARGET_EFFICIENCY else 'MISSED'}), "
                  f"{eff_all:.2f} end to end incl. Ray start/stop, n=1")
    if long:
        eff_long = long["compute_s"] / (long["slots"] * long["tune_s"])
        ratio += (f"; {args.long_epochs}-epoch trials: efficiency {eff_long:.2f} over the Tune "
                  f"phase ({'met' if eff_long >= TARGET_EFFICIENCY else 'MISSED'}), "
                  f"{long['compute_s'] / (long['slots'] * long['process_s']):.2f} end to end")
    print(ratio)


if __name__ == "__main__":
    main()

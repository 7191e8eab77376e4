"""Time and peak memory of one LM MaxUp step vs. its bound (m no-grad forwards + one step), CPU.

Usage: ``.venv/bin/python benchmarks/bench_lm_step.py [--shape kjv] [--reps 9] [--threads 1]
[--ms 2 4] [--json PATH]``

The step is the LM task's (``maxup.lm.task``): ``maxup.lm.objective.train_step``, then
backward, gradient clipping and an SGD step, on a fixed window of random token ids (the cost
does not depend on the text) from a fixed random starting hidden state.

Shapes: ``kjv`` is ``configs/lm_kjv.yaml`` (V 10,000, E 128, H 256, 2 layers, bptt 35, batch
20, its dropouts, AR/TAR, clip 0.25); ``ptb`` is ``configs/lm_ptb_adv_awd_lstm.yaml``
(V 10,000, E 400, H 1150, 3 layers, bptt 70, batch 20, ADV's perturbation and noise on).

Configurations:

- ``plain``: the m = 1 step (awd-lstm-lm's; one (V, 1) word-dropout mask for the batch);
- ``fwd``: one no-grad forward of the batch with the step's dropout draws, scored as the
  selection scores a copy (cross-entropy summed over the window);
- ``bound-mM``: the bound as its own code path from the same calls: draw the step's noise,
  M no-grad forwards of the batch as ``fwd``, then the plain step's training forward,
  backward, clipping and SGD step;
- ``maxup-mM``: the MaxUp step at m = M with the config's ``maxup.chunk: null`` (all copies
  in one selection forward); ``maxup-mM-c1``: one copy per selection forward.

Time: every configuration is built in ONE process and stepped round-robin (one warm-up round,
then ``--reps`` timed rounds), so load from other processes hits them alike; each figure is a
median of ``--reps`` steps. Memory: every configuration also runs in a fresh subprocess
(``--one NAME``; one warm-up and one measured step): peak = ``ru_maxrss`` after the steps minus
the resident size before the first step (``benchmarks/_common.py``). The MaxUp configurations
(and ``plain``) also count, through a torch dispatch mode, the new tensors one step creates
that have a dimension of size E and hold at least V·E elements (the embedding's gradients
are such; the (T·B, V) logits are not), and the largest one: a masked (V, E) embedding matrix
per copy, or an (m, V, E) stack of them, would show up there as more such tensors than the
plain step's, or as one of m·V·E elements (``tests/test_lm_objective_memory.py`` asserts this
at a small size where the logits are below V·E too).

Target: maxup-mM ÷ bound-mM ≤ 1.15 at m = 2 and 4 (ratio of the medians; the median of the
per-round ratios is printed beside it). The last line printed holds the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import machine_description, peak_extra_mib, round_robin

SHAPES = {
    "kjv": dict(vocab=10_000, emsize=128, nhid=256, nlayers=2, bptt=35, batch=20,
                dropout=0.4, dropouth=0.25, dropouti=0.4, dropoute=0.1, wdrop=0.5,
                adv_eps=0.0, adv_noise=0.0),
    "ptb": dict(vocab=10_000, emsize=400, nhid=1150, nlayers=3, bptt=70, batch=20,
                dropout=0.4, dropouth=0.25, dropouti=0.3, dropoute=0.1, wdrop=0.5,
                adv_eps=0.005, adv_noise=0.15),
}
ALPHA, BETA, CLIP, LR = 2.0, 1.0, 0.25, 30.0  # both configs' values


def configs(ms: list[int]) -> list[str]:
    """Names of all configurations, in the order they are run and printed."""
    names = ["plain", "fwd"]
    for m in ms:
        names += [f"bound-m{m}", f"maxup-m{m}", f"maxup-m{m}-c1"]
    return names


def build_step(name: str, shape: str = "kjv"):
    """Build one configuration's model, data and optimiser; return ``step()`` (no arguments).

    ``step()`` returns the seconds its selection forwards took (0 for configurations without
    one). Model, window and starting state are seeded, so every configuration starts alike.

    Args:
        name: one of :func:`configs` (any m: ``maxup-m3`` works too).
        shape: a key of ``SHAPES``.
    """
    import torch

    from maxup.lm.objective import train_step
    from maxup.models.awd_lstm import AWDLSTM, lm_token_losses

    s = SHAPES[shape]
    torch.manual_seed(0)
    model = AWDLSTM(s["vocab"], emsize=s["emsize"], nhid=s["nhid"], nlayers=s["nlayers"],
                    dropout=s["dropout"], dropouth=s["dropouth"], dropouti=s["dropouti"],
                    dropoute=s["dropoute"], wdrop=s["wdrop"], adv_eps=s["adv_eps"],
                    adv_noise=s["adv_noise"])
    model.train()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    t, b = s["bptt"], s["batch"]
    data = torch.randint(0, s["vocab"], (t + 1, b))
    words, targets = data[:-1], data[1:]
    hidden = [(h.normal_(0, 0.1), c.normal_(0, 0.1)) for h, c in model.init_hidden(b)]
    gen = torch.Generator().manual_seed(0)
    adversarial = s["adv_eps"] > 0

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()

    def score(noise):
        with torch.no_grad():
            out, _, _ = model(words, hidden, noise)
            return lm_token_losses(model, out, targets, adversarial=adversarial).sum(0)

    if name == "fwd":
        def step():
            score(model.draw_noise(words, gen))
            return 0.0
        return step
    parts = name.split("-")
    m = 1 if name == "plain" else int(parts[1][1:])
    if parts[0] == "bound":
        from maxup.lm.objective import _regularised

        def step():
            noise = model.draw_noise(words, gen)
            t0 = time.perf_counter()
            for _ in range(m):
                score(noise)
            fwd_s = time.perf_counter() - t0
            out, _, raw_last = model(words, hidden, noise)
            loss, raw = _regularised(model, out, raw_last, targets, alpha=ALPHA, beta=BETA,
                                     adversarial=adversarial)
            float(raw.detach())
            update(loss)
            return fwd_s
        return step
    chunk = 1 if parts[-1] == "c1" else None

    def step():
        res = train_step(model, words, targets, hidden, gen, m=m, alpha=ALPHA, beta=BETA,
                         adversarial=adversarial, chunk=chunk)
        update(res.loss)
        return res.selection_s
    return step


def embedding_shaped(step, shape: str) -> dict:
    """Tensors one ``step()`` creates with a dimension of size E and at least V·E elements in
    their (new) storage: their count and the largest one's shape."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    v, e = SHAPES[shape]["vocab"], SHAPES[shape]["emsize"]
    seen: list[tuple[int, tuple[int, ...]]] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {x.untyped_storage().data_ptr()
                      for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)}
            for x in tree_flatten(out)[0]:
                if (not isinstance(x, torch.Tensor) or e not in x.shape
                        or x.untyped_storage().data_ptr() in inputs):
                    continue
                numel = x.untyped_storage().nbytes() // x.element_size()
                if numel >= v * e:
                    seen.append((numel, tuple(x.shape)))
            return out

    with Watch():
        step()
    largest = max(seen, default=(0, ()))
    return {"ve_tensors": len(seen), "largest_ve_numel": largest[0],
            "largest_ve_shape": list(largest[1])}


def run_one(name: str, shape: str, threads: int) -> dict:
    """Peak extra RSS (MiB) of one configuration (one warm-up and one measured step, here),
    and for MaxUp and plain the embedding-shaped tensors of a further step."""
    import torch

    torch.set_num_threads(threads)
    step = build_step(name, shape)
    res = {"name": name, "peak_mib": peak_extra_mib(step)}
    if name == "plain" or name.startswith("maxup"):
        res.update(embedding_shaped(step, shape))
    return res


def time_all(names: list[str], shape: str, reps: int, threads: int) -> dict:
    """Median ms/step of every configuration, stepped round-robin in this process."""
    import torch

    torch.set_num_threads(threads)
    return round_robin({name: build_step(name, shape) for name in names}, reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="kjv")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ms", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.shape, args.threads)))
        return 0

    s = SHAPES[args.shape]
    machine = machine_description(args.threads)
    print(f"# bench_lm_step: {args.shape} shape (V {s['vocab']}, E {s['emsize']}, H {s['nhid']},"
          f" {s['nlayers']} layers, bptt {s['bptt']}, batch {s['batch']}); median of "
          f"{args.reps} round-robin steps after 1 warm-up round; peak RSS of each config in a "
          "fresh process")
    print(f"# machine: {machine}")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    names = configs(args.ms)
    res = {}
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--shape", args.shape,
                               "--threads", str(args.threads)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, timing in time_all(names, args.shape, args.reps, args.threads).items():
        res[name].update(timing)
    load_after = os.getloadavg()
    wall = time.perf_counter() - t0
    print(f"# wall time {wall:.0f} s; load average before "
          f"{' '.join(f'{x:.1f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.1f}' for x in load_after)} (other processes share the CPU)")

    print()
    print("| config | median ms/step | n | min–max ms | selection ms | peak MiB |"
          " E-wide tensors ≥ V·E | largest |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r in res.items():
        ve = (f" {r['ve_tensors']} | {tuple(r['largest_ve_shape'])} |" if "ve_tensors" in r
              else " | |")
        print(f"| {name} | {r['median_ms']:.0f} | {r['n']} | {r['min_ms']:.0f}–{r['max_ms']:.0f}"
              f" | {r['selection_ms']:.0f} | {r['peak_mib']:.0f} |{ve}")
    ratios = {}
    for m in args.ms:
        bound, maxup = res[f"bound-m{m}"], res[f"maxup-m{m}"]
        ratios[m] = {
            "maxup_over_bound": maxup["median_ms"] / bound["median_ms"],
            "maxup_c1_over_bound": res[f"maxup-m{m}-c1"]["median_ms"] / bound["median_ms"],
            # the same ratio round by round (both stepped within seconds of each other)
            "paired_median": statistics.median(
                a / c for a, c in zip(maxup["all_ms"], bound["all_ms"], strict=True)),
            "bound_over_sum": bound["median_ms"] / (m * res["fwd"]["median_ms"]
                                                    + res["plain"]["median_ms"]),
            "maxup_peak_over_bound_peak": maxup["peak_mib"] / bound["peak_mib"],
            "per_copy_embedding": any(
                r["largest_ve_numel"] >= m * s["vocab"] * s["emsize"]
                or r["ve_tensors"] > res["plain"]["ve_tensors"]
                for r in (maxup, res[f"maxup-m{m}-c1"])),
        }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": args.shape, "dims": s, "reps": args.reps,
                       "threads": args.threads, "machine": machine,
                       "load_before": load_before, "load_after": load_after, "wall_s": wall,
                       "configs": res, "ratios": ratios}, fh, indent=1)
    print()
    print("ratios: " + "; ".join(
        f"m={m}: maxup/bound={r['maxup_over_bound']:.2f} (median of per-round ratios "
        f"{r['paired_median']:.2f}; one copy per selection forward "
        f"{r['maxup_c1_over_bound']:.2f}; target ≤1.15), bound/(m·fwd+plain)="
        f"{r['bound_over_sum']:.2f}, peak maxup/bound={r['maxup_peak_over_bound_peak']:.2f}, "
        f"per-copy (V, E) embedding tensors: {'YES' if r['per_copy_embedding'] else 'none'}"
        for m, r in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

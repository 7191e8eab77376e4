"""Write the shipped GPU profiles (maxup/platform/profiles/*.json) from the H200 measurement.

One GPU was measured (issue 25): ``maxup calibrate`` on an NVIDIA H200 at batch 256 timed
ResNet-110, PreAct-ResNet-110 and WRN-28-10 — the entries of ``nvidia-h200.json`` without a
``basis`` (the measurement, copied from the shared ``gpu/nvidia-h200.json``), with the packing
factor measured there (4 trials on one GPU: 1.33× the throughput of one). Everything else is
derived, and each entry says how in its ``basis``, each file in its ``source``:

* **Same family, other depth, on the H200**: ResNet-20/32/56 = the measured ResNet-110 × the
  ratio of forward FLOPs (``torch.utils.flop_counter.FlopCounterMode``, CIFAR input). Thin
  CIFAR ResNets scale with depth in FLOPs and in kernel count alike.
* **Other GPUs, measured families**: H200 time × (H200 ÷ that GPU) of a datasheet figure —
  **memory bandwidth** for the thin CIFAR ResNets (16–64 channels: BatchNorm, ReLU and small
  convolutions move more bytes than they compute), **dense TF32 tensor throughput** (what
  fp32 training's convolutions use on Ampere and later) for WRN-28-10.
* **Families nothing measured on a GPU** (small_cnn, ResNet-50/101, EfficientNet): the former
  FLOP-count estimate — forward FLOPs ÷ an assumed effective A100 throughput — scaled from the
  A100 to each GPU by the same datasheet ratios (tensor for ResNet-50/101, bandwidth for
  small_cnn and EfficientNet's depthwise convolutions); step = 3 × forward.

Why not FLOP counts for the measured families: the former estimates (an assumed A100
throughput × a guessed speed factor) were 1.6–3.2× slower per image on the H100 than the H200
measured (issue 25). GPUs without TF32 (V100, T4) run fp32 training on FP32 cores, so no
ratio carries the H200's TF32 measurement there: compute-bound models (WRN-28-10,
ResNet-50/101) are forward FLOPs ÷ an assumed 60 % of the FP32 peak. The caveat that stays:
the H200 runs ResNet-110's step at ~6 TFLOP/s of counted FLOPs (about 1 % of its TF32 peak;
kernel launches and small kernels bound it, not bandwidth or arithmetic), so the thin ResNets'
derived times are likely upper bounds — on the H100, which has the H200's compute and 0.7× its
bandwidth, probably by up to the full 1.43×. ``maxup calibrate SPACE`` on the GPU replaces them;
finished trials refine them (``cost.refinement``).

    .venv/bin/python scripts/estimate_gpu_profiles.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from maxup.data import dataset_info
from maxup.models import build_model
from maxup.platform import cost

OUT = Path(__file__).resolve().parents[1] / "maxup" / "platform" / "profiles"
MEASURED = OUT / "nvidia-h200.json"
H200 = "NVIDIA H200"
BATCH = 256  # the H200 measurement's batch; the cost model is linear per image
OVERHEAD_S = 30.0  # per trial: process, CUDA and data start-up (an assumption)
DEFAULT = "NVIDIA A100-SXM4-40GB"  # the fallback for GPUs without a profile
#: The H200 measurement's own statement (its ``maxup calibrate`` source, issue 25).
MEASUREMENT = ("measured by `maxup calibrate` on host vm (NVIDIA H200), torch 2.11.0+cu130; "
               "median of 3 round(s)")

#: nvidia-smi name → (memory bandwidth GB/s, dense TF32 tensor TFLOP/s or None where the GPU
#: has no TF32 (fp32 training then runs on FP32 cores), FP32 TFLOP/s), from NVIDIA's
#: datasheets (dense: without sparsity).
SPECS: dict[str, tuple[float, float | None, float]] = {
    "NVIDIA H200": (4800.0, 494.7, 67.0),  # H200 SXM: HBM3e 4.8 TB/s, TF32 989 sparse
    "NVIDIA H100 80GB HBM3": (3350.0, 494.7, 67.0),  # H100 SXM5: the H200's compute
    "NVIDIA A100-SXM4-40GB": (1555.0, 156.0, 19.5),
    "NVIDIA A100-SXM4-80GB": (2039.0, 156.0, 19.5),
    "NVIDIA A10G": (600.0, 35.0, 31.2),  # AWS's A10 variant: TF32 as reported for g5
    "NVIDIA L4": (300.0, 60.0, 30.3),  # TF32 120 sparse
    "NVIDIA L40S": (864.0, 183.0, 91.6),  # TF32 366 sparse
    "Tesla T4": (320.0, None, 8.1),
    "Tesla V100-SXM2-16GB": (900.0, None, 15.7),
}
#: On GPUs without TF32, compute-bound models: forward FLOPs ÷ this fraction of FP32 peak
#: (an assumption: cuDNN's FP32 convolutions of wide layers).
FP32_EFFICIENCY = 0.6
#: Measured on the H200 → which datasheet ratio carries it to another GPU.
MEASURED_BOUND = {"resnet110": "bandwidth", "preact_resnet110": "bandwidth",
                  "wrn28_10": "tensor"}
#: Same family, other depth: model → the measured model its FLOP ratio is taken to.
BY_FLOPS = {"resnet20": "resnet110", "resnet32": "resnet110", "resnet56": "resnet110"}
#: Nothing of the family measured: (model, dataset) → (assumed effective A100 TFLOP/s,
#: the ratio that carries it to another GPU).
A100_TFLOPS = {
    ("small_cnn", "fashion_mnist"): (0.5, "bandwidth"), ("small_cnn", "digits"): (0.5, "bandwidth"),
    ("resnet50", "imagenet"): (12.0, "tensor"), ("resnet101", "imagenet"): (12.0, "tensor"),
    **{(f"efficientnet_b{i}", "imagenet"): (4.0, "bandwidth") for i in range(8)},
}
CIFAR = "cifar10"
#: Language models (``lm`` of each profile): awd-lstm-lm's README, "Speed": on an NVIDIA Quadro
#: GP100 "Penn Treebank (batch size 20): LSTM takes 65 seconds per epoch" — its PTB model
#: (3 layers, nhid 1150, emsize 400, V 10,000) training over ptb.train.txt at batch 20 and
#: evaluating ptb.valid.txt at batch 10. GP100: 720 GB/s (datasheet). At batch 20 an LSTM's
#: recurrent matrices are read again at every time step, so a GPU's rate is the GP100's ×
#: the memory-bandwidth ratio (no GPU LM was measured here).
LM_GP100 = {"bandwidth_gbs": 720.0, "epoch_s": 65.0,
            "lm": {"emsize": 400, "nhid": 1150, "nlayers": 3}, "vocab": 10_000,
            "batch": 20, "eval_batch": 10}


def ratio(device: str, bound: str, ref: str = H200) -> float | None:
    """How many times slower ``device`` is than ``ref`` by a datasheet figure (memory
    bandwidth, or dense TF32 throughput; None where either GPU has no TF32)."""
    i = 0 if bound == "bandwidth" else 1
    if SPECS[ref][i] is None or SPECS[device][i] is None:
        return None
    return SPECS[ref][i] / SPECS[device][i]


def _figure(bound: str) -> str:
    return "memory bandwidth" if bound == "bandwidth" else "dense TF32 throughput"


def _units(bound: str) -> str:
    return "GB/s" if bound == "bandwidth" else "TFLOP/s"


def _fp32_flop_count(device: str, flops: float) -> cost.Timing:
    """A compute-bound model on a GPU without TF32: FLOPs ÷ a fraction of its FP32 peak."""
    eff = FP32_EFFICIENCY * SPECS[device][2]
    fwd = BATCH * flops / (eff * 1e12)
    return cost.Timing(BATCH, fwd, 3 * fwd, (
        f"FLOP-count ESTIMATE (no TF32 on this GPU, so no ratio to the H200's TF32 "
        f"measurement): {flops / 1e6:.1f} MFLOPs forward per image ÷ {eff:.3g} TFLOP/s "
        f"(assumed {FP32_EFFICIENCY:.0%} of its {SPECS[device][2]:g} TFLOP/s FP32 peak); "
        "step = 3 × forward"))


def forward_flops(model_name: str, dataset: str) -> tuple[str, float]:
    info = dataset_info(dataset)
    shape = (info.in_channels, *info.image_size)
    model = build_model(model_name, num_classes=info.num_classes,
                        in_channels=info.in_channels, mean=info.mean, std=info.std,
                        image_size=tuple(info.image_size)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((1, *shape)))
    return cost.shape_key(model_name, shape), float(counter.get_total_flops())


def measured_h200() -> cost.Profile:
    """The shipped H200 profile; its entries without a ``basis`` are the measurement."""
    prof = cost.load_profile(MEASURED)
    prof.models = {k: t for k, t in prof.models.items() if t.basis is None}
    missing = {cost.shape_key(m, (3, 32, 32)) for m in MEASURED_BOUND} - set(prof.models)
    if missing:
        raise SystemExit(f"{MEASURED}: no measured entries for {sorted(missing)}")
    return prof


def derive(h200: cost.Profile, flops: dict[str, float]) -> dict[str, dict[str, cost.Timing]]:
    """device → profile key → timing (with its basis), every GPU of :data:`SPECS`."""
    out: dict[str, dict[str, cost.Timing]] = {}
    for device in SPECS:
        models: dict[str, cost.Timing] = {}
        for name, bound in MEASURED_BOUND.items():
            key = cost.shape_key(name, (3, 32, 32))
            t = h200.models[key]
            if device == H200:
                models[key] = t
                continue
            r = ratio(device, bound)
            if r is None:
                models[key] = _fp32_flop_count(device, flops[key])
                continue
            i = 0 if bound == "bandwidth" else 1
            models[key] = cost.Timing(t.batch, t.fwd_s * r, t.step_s * r, (
                f"H200 measured × {r:.4g} (H200 ÷ this GPU's {_figure(bound)}: "
                f"{SPECS[H200][i]:g} ÷ {SPECS[device][i]:g} {_units(bound)})"))
        for name, ref in BY_FLOPS.items():
            key, ref_key = (cost.shape_key(m, (3, 32, 32)) for m in (name, ref))
            t, f = models[ref_key], flops[key] / flops[ref_key]
            how = (f"{ref} × {f:.4g} (forward FLOPs {flops[key] / 1e6:.1f} ÷ "
                   f"{flops[ref_key] / 1e6:.1f} M per image)")
            basis = how if device == H200 else f"{how}, {ref}: {t.basis}"
            models[key] = cost.Timing(t.batch, t.fwd_s * f, t.step_s * f, basis)
        for (name, dataset), (tflops, bound) in A100_TFLOPS.items():
            info = dataset_info(dataset)
            key = cost.shape_key(name, (info.in_channels, *info.image_size))
            r = ratio(device, bound, ref=DEFAULT)
            if r is None:
                models[key] = _fp32_flop_count(device, flops[key])
                continue
            eff = tflops / r  # this GPU's assumed TFLOP/s
            fwd = BATCH * flops[key] / (eff * 1e12)
            models[key] = cost.Timing(BATCH, fwd, 3 * fwd, (
                f"FLOP-count ESTIMATE: {flops[key] / 1e6:.1f} MFLOPs forward per image ÷ "
                f"{eff:.3g} TFLOP/s (assumed {tflops:g} on an A100 × this GPU's "
                f"{_figure(bound)} ÷ the A100's); step = 3 × forward"))
        out[device] = models
    return out


def lm_rates(device: str) -> cost.LMRates:
    """A GPU's AWD-LSTM rates: the GP100's published PTB epoch (:data:`LM_GP100`) in counted
    FLOPs (``cost.lm_forward_flops``) per second, × this GPU's ÷ the GP100's bandwidth."""
    g = LM_GP100
    f = cost.lm_forward_flops(g["lm"], g["vocab"])
    train, valid, _test = cost.LM_TOKENS[("ptb", 1)]
    flops = (cost.batchified_tokens(train, g["batch"]) * 3 * f
             + cost.batchified_tokens(valid, g["eval_batch"]) * f)
    gp100 = flops / g["epoch_s"]
    r = SPECS[device][0] / g["bandwidth_gbs"]
    rate = float(f"{gp100 * r:.3g}")
    return cost.LMRates(rate, rate, (
        f"ESTIMATE: awd-lstm-lm's README (Quadro GP100, PTB at batch 20: 65 s per epoch, "
        f"{flops / 1e12:.1f} TFLOPs of training and validation = {gp100 / 1e12:.3g} TFLOP/s) "
        f"× this GPU's memory bandwidth ÷ the GP100's ({SPECS[device][0]:g} ÷ "
        f"{g['bandwidth_gbs']:g} GB/s); a batch-20 LSTM is bound by per-step latency as much "
        "as bandwidth on the newest GPUs, so it is likely optimistic there; training and "
        "evaluation alike. scripts/estimate_gpu_profiles.py"))


def h200_source() -> str:
    return (f"{MEASUREMENT}; batch 256, torch's default fp32 (TF32 convolutions); issue 25's "
            "measurement (shared gpu/nvidia-h200.json): resnet110, preact_resnet110 and "
            "wrn28_10 are measured (entries without a basis); resnet20/32/56 are resnet110 × "
            "their forward-FLOP ratio; small_cnn, resnet50/101 and EfficientNet are FLOP-count "
            "estimates (each entry's basis); packing measured on this H200 (see packing); "
            "derived entries: scripts/estimate_gpu_profiles.py")


def device_source(device: str) -> str:
    bw, tc = ratio(device, "bandwidth"), ratio(device, "tensor")
    wide = (f"WRN-28-10 × {tc:.3g} (dense TF32 {SPECS[H200][1]:g} ÷ {SPECS[device][1]:g} "
            "TFLOP/s)" if tc is not None else
            f"WRN-28-10 and ResNet-50/101 (no TF32 here, so no ratio to the H200's TF32 "
            f"measurement): FLOP counts ÷ {FP32_EFFICIENCY:.0%} of the {SPECS[device][2]:g} "
            "TFLOP/s FP32 peak")
    return (
        "ESTIMATE, not measured on this GPU: derived from the NVIDIA H200 measured by `maxup "
        "calibrate` (batch 256, issue 25) by datasheet ratios — thin CIFAR ResNets × "
        f"{bw:.3g} (memory bandwidth {SPECS[H200][0]:g} ÷ {SPECS[device][0]:g} GB/s), {wide}; "
        "resnet20/32/56 by forward-FLOP ratio to resnet110; small_cnn, EfficientNet"
        + (", ResNet-50/101" if tc is not None else "") + ": FLOP counts ÷ an assumed A100 "
        "throughput × this GPU's ratio to the A100 (each entry's basis). The H200 runs thin "
        "ResNets far under its limits (~6 TFLOP/s, launch- and small-kernel-bound), so their "
        "times here are likely upper bounds. "
        f"{OVERHEAD_S:g} s per trial assumed; no packing factor measured here. "
        "scripts/estimate_gpu_profiles.py; run `maxup calibrate` on the GPU to replace it")


def main() -> None:
    h200 = measured_h200()
    flops: dict[str, float] = {}
    for name in [*MEASURED_BOUND, *BY_FLOPS]:
        key, f = forward_flops(name, CIFAR)
        flops[key] = f
    for name, dataset in A100_TFLOPS:
        key, f = forward_flops(name, dataset)
        flops[key] = f
    for key, f in flops.items():
        print(f"{key}: {f / 1e6:.1f} MFLOPs forward per image")
    for key in (cost.shape_key(m, (3, 32, 32)) for m in MEASURED_BOUND):
        t = h200.models[key]
        print(f"H200 {key}: {3 * flops[key] * t.batch / t.step_s / 1e12:.1f} TFLOP/s in a step")
    for device, models in derive(h200, flops).items():
        if device == H200:
            prof = h200
            prof.models = models
            prof.source = h200_source()
        else:
            prof = cost.Profile(device, "gpu", device_source(device), True, models,
                                OVERHEAD_S, "gpu" if device == DEFAULT else None)
        prof.lm = lm_rates(device)
        path = OUT / f"{cost.device_slug(device)}.json"
        path.write_text(json.dumps(prof.to_dict(), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Write the shipped GPU profiles (maxup/platform/profiles/*.json): estimates, not measurements.

No GPU was available to this project when they were made, so every figure is derived, and
each file says so (``estimate: true`` and its ``source``):

    forward seconds per batch = batch × forward FLOPs per image ÷ effective throughput
    step seconds per batch    = 3 × that (backward ≈ 2 forwards)

Forward FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the CPU, at the
input shape of the dataset each model is used with. The effective throughput (useful FLOPs
per second in fp32/TF32 training) is an assumption per model family on an A100 (below),
scaled per GPU by a relative-speed factor. Replace any of them with a measured profile:
``maxup calibrate SPACE`` on the GPU itself.

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
BATCH = 128
#: (model, dataset) → assumed effective training throughput on an A100, TFLOP/s.
A100_TFLOPS = {
    ("resnet20", "cifar10"): 2.0, ("resnet32", "cifar10"): 2.0, ("resnet56", "cifar10"): 2.0,
    ("resnet110", "cifar10"): 2.0, ("preact_resnet110", "cifar10"): 2.0,
    ("wrn28_10", "cifar10"): 20.0, ("small_cnn", "fashion_mnist"): 0.5,
    ("small_cnn", "digits"): 0.5, ("resnet50", "imagenet"): 12.0,
    ("resnet101", "imagenet"): 12.0, **{(f"efficientnet_b{i}", "imagenet"): 4.0
                                        for i in range(8)},
}
#: GPU (nvidia-smi name) → speed relative to an A100 for these workloads (an assumption).
RELATIVE = {
    "NVIDIA A100-SXM4-40GB": 1.0, "NVIDIA A100-SXM4-80GB": 1.05, "NVIDIA H100 80GB HBM3": 1.8,
    "NVIDIA A10G": 0.35, "NVIDIA L4": 0.3, "NVIDIA L40S": 0.9, "Tesla T4": 0.15,
    "Tesla V100-SXM2-16GB": 0.5,
}
DEFAULT = "NVIDIA A100-SXM4-40GB"
OVERHEAD_S = 30.0  # per trial: process, CUDA and data start-up (an assumption)


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


def main() -> None:
    flops = {}
    for (model, data), tflops in A100_TFLOPS.items():
        key, f = forward_flops(model, data)
        flops[key] = (f, tflops)
        print(f"{key}: {f / 1e6:.1f} MFLOPs forward per image")
    for device, rel in RELATIVE.items():
        models = {}
        for key, (f, tflops) in flops.items():
            fwd = BATCH * f / (tflops * 1e12 * rel)
            models[key] = {"batch": BATCH, "fwd_s": fwd, "step_s": 3 * fwd}
        doc = {
            "schema": cost.PROFILE_SCHEMA, "device": device, "kind": "gpu",
            "source": (
                "ESTIMATE, not measured: forward FLOPs counted by FlopCounterMode ÷ an assumed "
                f"effective fp32/TF32 training throughput per model family on an A100 "
                f"(thin CIFAR ResNets 2, WRN-28-10 20, ResNet-50/101 12, EfficientNet 4 "
                f"TFLOP/s) × {rel:g} for this GPU; step = 3 × forward; {OVERHEAD_S:g} s per "
                "trial; scripts/estimate_gpu_profiles.py. Run `maxup calibrate` on the GPU "
                "to replace it"),
            "estimate": True, "default_for": "gpu" if device == DEFAULT else None,
            "created": None, "trial_overhead_s": OVERHEAD_S, "models": models,
        }
        path = OUT / f"{cost.device_slug(device)}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

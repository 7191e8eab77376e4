"""Every shipped config validates, states the paper's hyper-parameters, and runs.

The expected values below are transcribed from the paper (Gong et al. 2020):
Section 4.2 -- CIFAR: 200 epochs, batch 256, lr 0.1 divided by 10 after epochs 100 and 150
(ResNet-110, PreAct-ResNet-110) or after 60, 120, 180 (WRN-28-10), no dropout; m = 10 for
WideResNet and 4 for the others; Cutout L = 16 on CIFAR-10 and 8 on CIFAR-100.
Section 4 -- 5 warm-up epochs of standard augmentation when training from scratch.
Section 4.1 -- ImageNet ResNet-50 fine-tuned with MaxUp+CutMix for 20 epochs, m = 4.
Weight decay / momentum / nesterov (lost in our copy): Cutout's code, 5e-4 / 0.9 / true.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from maxup.cli import main
from maxup.config import check_registered_names, from_dict, load_config, to_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL = sorted(p.name for p in CONFIGS.glob("*.yaml"))

# architecture -> (milestones, MaxUp m) from Section 4.2
PAPER_ARCH = {
    "resnet110": ([100, 150], 4),
    "preact_resnet110": ([100, 150], 4),
    "wrn28_10": ([60, 120, 180], 10),
}
PAPER_CUTOUT_L = {"cifar10": 16, "cifar100": 8}
CIFAR = [(ds, arch, arm) for ds in PAPER_CUTOUT_L for arch in PAPER_ARCH
         for arm in ("cutout", "maxup_cutout")]
CIFAR_NAMES = [f"{ds}_{arch}_{arm}.yaml" for ds, arch, arm in CIFAR]
IMAGENET = "imagenet_resnet50_maxup_cutmix_finetune.yaml"
REQUIRED = set(CIFAR_NAMES) | {IMAGENET, "digits_maxup.yaml", "digits_smoke.yaml",
                               "fashion_mnist_maxup.yaml", "fashion_mnist_cutout.yaml"}


def test_all_required_configs_are_shipped():
    assert REQUIRED <= set(ALL), sorted(REQUIRED - set(ALL))


def _dotted(tree: dict, prefix: str = "") -> dict:
    """{"maxup.m": 4, ...}: every leaf of a nested mapping under its dotted key."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("name", ALL)
def test_config_loads_validates_and_keeps_every_value_of_its_file(name):
    """Each shipped file validates, and every value it states is the loaded config's value
    (read back from the YAML independently): no key silently dropped or defaulted."""
    import yaml

    cfg = load_config(CONFIGS / name)
    check_registered_names(cfg)  # raises on an unknown model, dataset or augmentation
    stated = _dotted(yaml.safe_load((CONFIGS / name).read_text()))
    loaded = _dotted(to_dict(cfg))
    assert stated and set(stated) <= set(loaded)
    for key, value in stated.items():
        assert loaded[key] == value, (key, loaded[key], value)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize(("ds", "arch", "arm"), CIFAR)
def test_cifar_config_matches_paper(ds, arch, arm):
    cfg = load_config(CONFIGS / f"{ds}_{arch}_{arm}.yaml")
    milestones, m = PAPER_ARCH[arch]
    assert cfg.model.name == arch
    assert cfg.model.dropout == 0.0
    assert cfg.data.name == ds
    assert cfg.data.root is None  # the user passes --data.root
    assert cfg.train.epochs == 200
    assert cfg.train.batch_size == 256
    assert cfg.optim.lr == 0.1
    assert cfg.optim.schedule == "multistep"
    assert cfg.optim.milestones == milestones
    assert cfg.optim.gamma == 0.1
    assert (cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.nesterov) == (5e-4, 0.9, True)
    assert cfg.augment.ops == ["crop_flip", "cutout"]
    assert cfg.augment.crop_padding == 4
    assert cfg.augment.cutout_size == PAPER_CUTOUT_L[ds]
    assert cfg.data.train_transform == "none"  # each copy draws its own crop/flip
    assert cfg.maxup.m == (m if arm == "maxup_cutout" else 1)
    assert cfg.maxup.warmup_epochs == 5


@pytest.mark.parametrize(("ds", "arch"), [(d, a) for d in PAPER_CUTOUT_L for a in PAPER_ARCH])
def test_cutout_baseline_differs_from_maxup_only_in_m(ds, arch):
    base = to_dict(load_config(CONFIGS / f"{ds}_{arch}_cutout.yaml"))
    maxup = to_dict(load_config(CONFIGS / f"{ds}_{arch}_maxup_cutout.yaml"))
    assert base["maxup"].pop("m") == 1
    maxup["maxup"].pop("m")
    assert base == maxup


def test_imagenet_finetune_config():
    cfg = load_config(CONFIGS / IMAGENET)
    assert cfg.model.name == "resnet50"
    assert cfg.model.weights  # a placeholder path the user must set
    assert cfg.data.name == "imagenet" and cfg.data.root is None
    assert cfg.augment.ops == ["cutmix"]
    assert cfg.maxup.m == 4
    assert cfg.maxup.warmup_epochs == 0  # fine-tuning, not from scratch
    assert cfg.train.epochs == 20
    assert cfg.train.batch_size == 256
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.optim.lr == 0.01


def test_fashion_mnist_baseline_differs_only_in_m():
    base = to_dict(load_config(CONFIGS / "fashion_mnist_cutout.yaml"))
    maxup = to_dict(load_config(CONFIGS / "fashion_mnist_maxup.yaml"))
    assert base["maxup"].pop("m") == 1
    assert maxup["maxup"].pop("m") > 1
    assert base == maxup
    assert maxup["model"]["name"] == "small_cnn" and maxup["data"]["subset"] == 2000


# --------------------------------------------------------------------------- tiny real files

def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar(root: Path, ds: str, n_train: int = 10, n_test: int = 4) -> Path:
    """Write CIFAR python-pickle batches (the official layout) with random pixels."""
    rng = np.random.default_rng(0)
    k = 10 if ds == "cifar10" else 100

    def batch(n, key):
        return {b"batch_label": b"tiny", b"data": rng.integers(0, 256, (n, 3072), np.uint8),
                key: [int(v) for v in rng.integers(0, k, n)]}

    if ds == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            _pickle(folder / f"data_batch_{i}", batch(n_train // 5, b"labels"))
        _pickle(folder / "test_batch", batch(n_test, b"labels"))
        _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(k)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        _pickle(folder / "train", batch(n_train, b"fine_labels"))
        _pickle(folder / "test", batch(n_test, b"fine_labels"))
        _pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(k)]})
    return root


def write_imagefolder(root: Path, per_class: int = 4) -> Path:
    """Write ImageNet-style train/ and val/ trees of tiny PNGs (two classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class if split == "train" else 1):
                px = rng.integers(0, 256, (9, 11, 3), np.uint8)
                Image.fromarray(px).save(d / f"{cls}_{i}.png")
    return root


SHORT = ["--train.epochs=1", "--data.subset=4", "--train.batch_size=4",
         "--train.eval_batch_size=4", "--maxup.warmup_epochs=0", "--optim.milestones=[]",
         "--train.device=cpu", "--train.progress=false"]

# the real model for these (one ResNet-110 step at batch 4 is about a second on CPU)
REAL_MODEL = {"cifar10_resnet110_maxup_cutout.yaml", "cifar100_preact_resnet110_maxup_cutout.yaml"}


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_config_runs_one_short_epoch(name, tmp_path, capsys):
    ds = name.split("_")[0]
    root = write_cifar(tmp_path / "data", ds)
    extra = [] if name in REAL_MODEL else ["--model.name=resnet20"]
    if "wrn28_10" in name:
        extra.append("--maxup.m=2")  # m = 10 copies of a resnet20 is only slower, not different
    out = tmp_path / "run"
    rc = main(["train", str(CONFIGS / name), f"--data.root={root}", "--out", str(out),
               *SHORT, *extra])
    assert rc == 0, capsys.readouterr()
    import json

    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "completed"
    assert len(record["history"]) == 1
    assert record["config"]["data"]["name"] == ds
    assert record["history"][0]["maxup_m"] == record["config"]["maxup"]["m"]


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
def test_wrn28_10_builds_for_the_config(ds):
    from maxup.data import dataset_info
    from maxup.models import build_model

    cfg = load_config(CONFIGS / f"{ds}_wrn28_10_maxup_cutout.yaml")
    info = dataset_info(ds)
    model = build_model(cfg.model.name, num_classes=info.num_classes, mean=info.mean,
                        std=info.std, dropout=cfg.model.dropout)
    n = sum(p.numel() for p in model.parameters())
    assert 36.0e6 < n < 36.6e6  # WRN-28-10: 36.5M parameters (Zagoruyko & Komodakis)
    assert model.net.fc.out_features == info.num_classes


@pytest.mark.slow
def test_imagenet_config_runs_one_short_epoch(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", str(CONFIGS / IMAGENET), f"--data.root={root}", "--out", str(out),
               "--model.weights=null", "--train.epochs=1", "--data.subset=4",
               "--train.batch_size=2", "--train.eval_batch_size=2", "--maxup.m=2",
               "--train.device=cpu", "--train.progress=false"])
    assert rc == 0, capsys.readouterr()
    import json

    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "completed" and len(record["history"]) == 1


def test_imagenet_placeholder_weights_fail_with_one_line(tmp_path, capsys):
    """The shipped config validates, but training without the weights file stops at once."""
    root = write_imagefolder(tmp_path / "data", per_class=1)
    out = tmp_path / "run"
    rc = main(["train", str(CONFIGS / IMAGENET), f"--data.root={root}", "--out", str(out),
               "--train.device=cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("maxup: error: model.weights:")
    assert "existing local file" in err
    assert not out.exists() or not any(out.iterdir())

"""Issue 27, "the last bad inputs": each is one line on stderr, exit 2, nothing written,
before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from maxup.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "digits_maxup.yaml")
SPACE = str(ROOT / "search_spaces" / "quickstart.yaml")


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, (out, err)
    assert lines[0].startswith("maxup: error: ")
    return lines[0].removeprefix("maxup: error: ")


def test_regression_maxup_without_a_command_is_one_line(capsys):
    """It printed 20 lines of help on stdout with exit 2."""
    line = _refused(capsys, [])
    assert line.startswith("a command is required; allowed: train, sweep, tables")
    assert "maxup --help" in line


@pytest.mark.parametrize("command, args, says", [
    ("train", ["--epochs", "3"], "override '--epochs=3': got a key without its section; "
                                 "allowed: --section.key=value, e.g. --train.epochs=3"),
    ("train", ["--maxup.m", "4"], "override '--maxup.m' '4': got a space before the value; "
                                  "allowed: --maxup.m=4"),
    ("sweep", ["--seeds", "3"], "override '--seeds' '3': got a space before the value; "
                                "allowed: --seeds=3"),
    ("sweep", ["--epochs=3"], "override '--epochs=3': got a key without its section; allowed: "
                              "--section.key=value or seeds, concurrency, retries, order_seed, "
                              "resources, e.g. --train.epochs=3"),
])
def test_regression_override_with_a_space_or_without_its_section_gives_the_spelling(
        tmp_path, capsys, command, args, says):
    target = CONFIG if command == "train" else SPACE
    where = ["--out" if command == "train" else "--storage", str(tmp_path / "o")]
    assert _refused(capsys, [command, target, *where, *args]) == says
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_regression_a_section_as_a_mapping_override_is_refused(tmp_path, capsys, command):
    """`--maxup={m: 2}` silently replaced the whole section (warm-up 1 became 0)."""
    target = CONFIG if command == "train" else SPACE
    where = ["--out" if command == "train" else "--storage", str(tmp_path / "o")]
    line = _refused(capsys, [command, target, *where, "--maxup={m: 2}"])
    assert line == ("--maxup: got {'m': 2}; allowed: one key per override, e.g. --maxup.m=2 "
                    "(a mapping would replace the whole maxup section and drop its other "
                    "settings)")
    assert not (tmp_path / "o").exists()


def test_regression_a_sweep_seed_override_is_refused(tmp_path, capsys):
    """`--seed=3` on a sweep did nothing (every trial's seed comes from `seeds`)."""
    line = _refused(capsys, ["sweep", SPACE, "--storage", str(tmp_path / "o"), "--seed=3"])
    assert line == "seed: got 3; allowed: the seeds through --seeds=N or --seeds=[0,3]"


@pytest.mark.parametrize("text", ["", "# comments only\n\n# nothing else\n"])
def test_regression_an_empty_config_is_refused(tmp_path, capsys, text):
    """An empty or comments-only config trained the defaults with exit 0."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    line = _refused(capsys, ["train", str(config), "--out", str(tmp_path / "o")])
    assert line == (f"config file {str(config)!r}: empty (or comments only); allowed: a run "
                    "config with at least one section (see configs/)")
    assert not (tmp_path / "o").exists()


def test_regression_train_of_a_search_space_says_it_is_one(tmp_path, capsys):
    line = _refused(capsys, ["train", SPACE, "--out", str(tmp_path / "o")])
    assert line.startswith(f"config file {SPACE!r}: got a search space (it has ")
    assert line.endswith(f"run a search space with: maxup sweep {SPACE}")
    assert not (tmp_path / "o").exists()


MAX_YAML_BYTES = 2**20  # the documented limit on a YAML file (1 MiB)


def _laughs(levels: int = 9) -> str:
    """A YAML flow list holding an alias chain: each level nine references to the one below
    (9**9 leaves in the last)."""
    names = [f"l{i}" for i in range(levels)]
    items = [f"&{names[0]} [x, x, x, x, x, x, x, x, x]"]
    items += [f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]"
              for prev, name in zip(names, names[1:])]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("field", ["seeds", "description", "grid"])
def test_regression_a_yaml_alias_chain_is_one_short_line(tmp_path, capsys, field):
    """A "billion laughs" alias chain as `seeds` hung, as `description` ended in a MemoryError
    at 6 GB and as a grid axis printed a 1.22 GB line: repr() of the value built the whole
    text before shortening it. The shown value is now bounded while it is built."""
    value = f"{{maxup.m: {_laughs()}}}" if field == "grid" else _laughs()
    space = tmp_path / "s.yaml"
    space.write_text("name: s\nbase: {model: {name: mlp}, data: {name: digits}}\n"
                     f"{field}: {value}\n" + ("seeds: 1\n" if field != "seeds" else ""))
    line = _refused(capsys, ["sweep", str(space), "--storage", str(tmp_path / "o"),
                             "--dry-run"])
    assert len(line) < 1000 and "more than 10000 characters" in line, line[:300]


@pytest.mark.parametrize("command", ["train", "sweep", "base_config"])
def test_regression_a_yaml_file_over_a_mebibyte_is_refused_before_it_is_parsed(
        tmp_path, capsys, command):
    """A 50 MB YAML of comments ran 18 s here (over 90 s on a slower machine) before it was
    said to be empty: the size is now refused before the file is read. A search space's
    `base_config` is read the same way."""
    big = tmp_path / "big.yaml"
    big.write_text(("# " + "x" * 77 + "\n") * (MAX_YAML_BYTES // 80 + 1))
    size = big.stat().st_size
    target = str(big)
    if command == "base_config":
        target = str(tmp_path / "s.yaml")
        Path(target).write_text(f"name: s\nbase_config: {big}\nseeds: 1\n")
    where = ["--out" if command == "train" else "--storage", str(tmp_path / "o")]
    line = _refused(capsys, ["sweep" if command != "train" else "train", target, *where])
    assert line == (f"config file {str(big)!r}: got {size} bytes ({size / 2**20:.1f} MiB); "
                    f"allowed: at most {MAX_YAML_BYTES} bytes (1 MiB; the shipped configs and "
                    "search spaces are at most 7 KB)")
    assert not (tmp_path / "o").exists()


def test_the_yaml_size_limit_is_far_above_every_shipped_file():
    shipped = [*ROOT.glob("configs/*.yaml"), *ROOT.glob("search_spaces/*.yaml"),
               ROOT / "cluster.yaml"]
    assert len(shipped) > 10
    assert max(f.stat().st_size for f in shipped) <= 7 * 1024 <= MAX_YAML_BYTES // 100


@pytest.mark.parametrize("where", ["/proc/maxup-x", "/sys/maxup-x"])
@pytest.mark.parametrize("command", ["sweep", "train"])
def test_regression_storage_on_a_kernel_file_system_is_one_line(tmp_path, capsys, where,
                                                                 command):
    """`--storage /proc/x` or `/sys/x` ended in 34-43 lines of traceback."""
    if not Path(where).parent.is_dir():
        pytest.skip(f"no {Path(where).parent} here")
    argv = (["sweep", SPACE, "--storage", where, "--dry-run"] if command == "sweep"
            else ["train", CONFIG, "--out", where])
    line = _refused(capsys, argv)
    flag = "--storage" if command == "sweep" else "--out"
    assert line.startswith(f"{flag}: got {where!r} ({Path(where).parent} is the kernel's ")
    assert line.endswith("allowed: a directory (existing or new) on a writable file system")


def test_regression_job_address_that_is_not_a_url_is_one_line(capsys):
    """`maxup job list --address 'not a url'` ended in a ValueError traceback."""
    line = _refused(capsys, ["job", "list", "--address", "not a url"])
    assert line.startswith("--address: got 'not a url' (Invalid address format: not a url); "
                           "allowed: the job API's URL, e.g. http://127.0.0.1:8265")


def test_regression_a_raw_pickle_checkpoint_is_refused_without_torch_warnings(tmp_path):
    """Refused, but torch's UserWarning about the pickle protocol came first (3 lines)."""
    import pickle
    import subprocess
    import sys

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"config": {}, "model": {}}, protocol=4))
    res = subprocess.run([sys.executable, "-m", "maxup", "certify", str(raw), "--sigma", "0.25"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"maxup: error: checkpoint {str(raw)!r}: "
                                                   "cannot be loaded with weights_only=True")


def _checkpoint(tmp_path: Path, data_name: str, model_name: str) -> Path:
    """A freshly initialised ``model_name`` saved as a checkpoint of a run on ``data_name``."""
    import torch

    from maxup.data import dataset_info
    from maxup.models import build_model

    info = dataset_info(data_name)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=info.num_classes, in_channels=info.in_channels,
                        mean=info.mean, std=info.std, dropout=0.0,
                        image_size=tuple(info.image_size))
    path = tmp_path / f"{data_name}.pt"
    torch.save({"config": {"model": {"name": model_name, "num_classes": None, "dropout": 0.0},
                           "data": {"name": data_name, "root": None}, "seed": 0},
                "model": model.state_dict(), "epoch": 1}, path)
    return path


CERTIFY = ["--sigma", "0.25", "--n", "20", "--n0", "4", "--batch", "20", "--max-images", "2",
           "--device", "cpu"]


def test_regression_certify_on_another_dataset_than_the_checkpoints_is_refused(tmp_path,
                                                                               capsys):
    """`maxup certify` of a CIFAR-10 model on another dataset of 10 classes of colour images
    ran and printed radii that mean nothing: it is refused unless --allow-other-dataset."""
    ckpt = _checkpoint(tmp_path, "cifar10", "resnet20")
    out = tmp_path / "o" / "c.json"
    line = _refused(capsys, ["certify", str(ckpt), *CERTIFY, "--data.name", "synthetic",
                             "--out", str(out)])
    assert line == ("--data.name: got 'synthetic'; allowed: 'cifar10', the dataset the "
                    "checkpoint's stored config names (add --allow-other-dataset to certify it "
                    "on another)")
    assert not (tmp_path / "o").exists()


def test_certify_on_another_dataset_when_allowed_says_so_and_stores_both(tmp_path, capsys):
    import json

    ckpt = _checkpoint(tmp_path, "cifar10", "resnet20")
    out = tmp_path / "c.json"
    assert main(["certify", str(ckpt), *CERTIFY, "--data.name", "synthetic",
                 "--allow-other-dataset", "--skip", "100", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert ("maxup: warning: certifying a model trained on 'cifar10' on the test split of "
            "'synthetic' (--allow-other-dataset)") in captured.err
    assert "2 test images of 'synthetic'" in captured.out
    summary = json.loads(out.read_text())
    assert (summary["dataset"], summary["trained_on"]) == ("synthetic", "cifar10")
    assert [row["index"] for row in summary["rows"]] == [0, 100]


@pytest.mark.parametrize("data_name, model_name, other, says", [
    ("cifar10", "resnet20", "cifar100",
     "--data.name: got 'cifar100' (3-channel images, 100 classes); allowed: with "
     "--allow-other-dataset, a dataset of 3-channel images and 10 classes, as the checkpoint's "
     "'cifar10'"),
    ("fashion_mnist", "mlp", "synthetic",
     "--data.name: got 'synthetic' (3-channel images, 10 classes); allowed: with "
     "--allow-other-dataset, a dataset of 1-channel images and 10 classes, as the checkpoint's "
     "'fashion_mnist'"),
    ("fashion_mnist", "mlp", "kjv",
     "--data.name: got 'kjv'; allowed: an image dataset, one of cifar10, cifar100, digits, "
     "fashion_mnist, imagenet, synthetic"),
])
def test_certify_on_a_dataset_of_other_channels_or_classes_is_refused_even_if_allowed(
        tmp_path, capsys, data_name, model_name, other, says):
    ckpt = _checkpoint(tmp_path, data_name, model_name)
    out = tmp_path / "o" / "c.json"
    line = _refused(capsys, ["certify", str(ckpt), *CERTIFY, "--data.name", other,
                             "--allow-other-dataset", "--out", str(out)])
    assert line == says
    assert not (tmp_path / "o").exists()


def test_certify_of_a_language_model_checkpoint_says_so(tmp_path, capsys):
    """It said `model.in_channels: got 0`, which names nothing the user gave."""
    import torch

    ckpt = tmp_path / "lm.pt"
    torch.save({"config": {"model": {"name": "awd_lstm"}, "data": {"name": "kjv"}},
                "model": {}}, ckpt)
    line = _refused(capsys, ["certify", str(ckpt), *CERTIFY])
    assert line == (f"checkpoint {str(ckpt)!r}: a model of the text dataset 'kjv'; expected an "
                    "image classifier's checkpoint (randomized smoothing certifies image "
                    "classifiers)")

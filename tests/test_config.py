"""Run config: YAML + dotted overrides, one-line refusals naming field/value/allowed, JSON trip."""

from __future__ import annotations

import json

import pytest

from maxup.config import (
    AUGMENTATIONS,
    AugmentConfig,
    MaxUpConfig,
    RunConfig,
    from_dict,
    load_config,
    parse_overrides,
    to_dict,
)
from maxup.errors import ConfigError, UsageError


def test_parse_overrides_reads_yaml_scalars_and_lists():
    got = parse_overrides(["--maxup.m=4", "--optim.lr=0.05", "--optim.milestones=[3,5]",
                           "model.weights=null", "--train.progress=false", "--data.name=cifar10"])
    assert got == {"maxup.m": 4, "optim.lr": 0.05, "optim.milestones": [3, 5],
                   "model.weights": None, "train.progress": False, "data.name": "cifar10"}


@pytest.mark.parametrize("bad", ["--maxup.m", "--=3", "maxup"])
def test_parse_overrides_refuses_malformed(bad):
    with pytest.raises(UsageError, match="expected --section.key=value"):
        parse_overrides([bad])


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\nmaxup:\n  m: 2\n  bn: eval\naugment:\n  ops: [crop_flip, cutout]\n"
                    "  cutout_size: 8\ntrain:\n  epochs: 6\n")
    cfg = load_config(path, parse_overrides(["--maxup.m=4", "--optim.lr=0.05",
                                             "--optim.milestones=[3,5]"]))
    assert cfg.seed == 3
    assert cfg.maxup == MaxUpConfig(m=4, bn="eval")  # override wins, file keys kept
    assert cfg.augment.ops == ["crop_flip", "cutout"] and cfg.augment.cutout_size == 8
    assert cfg.optim.lr == 0.05 and cfg.optim.milestones == [3, 5]
    assert cfg.train.epochs == 6
    assert cfg.model == RunConfig().model  # untouched sections keep defaults
    assert load_config() == RunConfig()


def test_regression_yaml_exponent_float(tmp_path):
    # PyYAML (YAML 1.1) reads "1e-3" as a string; float fields used to refuse it.
    cfg = load_config(None, parse_overrides(["--optim.lr=1e-3", "--augment.sigma=5e-1"]))
    assert cfg.optim.lr == 1e-3 and cfg.augment.sigma == 0.5
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 2e-2\n")
    assert load_config(path).optim.lr == 0.02
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, {"optim.lr": "fast"})


def _refusal(data_or_overrides) -> str:
    with pytest.raises(ConfigError) as info:
        if isinstance(data_or_overrides, dict):
            from_dict(data_or_overrides)
        else:
            load_config(None, parse_overrides(data_or_overrides))
    msg = str(info.value)
    assert "\n" not in msg
    assert isinstance(info.value, UsageError)
    return msg


@pytest.mark.parametrize("overrides, field, value, allowed", [
    # unknown keys
    (["--maxup.mm=4"], "maxup.mm", "4", "known keys of maxup"),
    (["--nonsense=1"], "nonsense", "1", "known keys of the config"),
    # wrong types
    (["--maxup.m=4.5"], "maxup.m", "4.5", "an integer"),
    (["--maxup.m=true"], "maxup.m", "True", "an integer"),
    (["--optim.lr=fast"], "optim.lr", "'fast'", "a number"),
    (["--maxup.mode=fast"], "maxup.mode", "'fast'", "efficient, naive"),
    (["--augment.ops=cutout"], "augment.ops", "'cutout'", "a list of str"),
    (["--train.progress=3"], "train.progress", "3", "true or false"),
    (["--maxup=3"], "maxup", "3", "a mapping"),
    # out of range
    (["--maxup.m=0"], "maxup.m", "0", ">= 1"),
    (["--augment.sigma=-0.1"], "augment.sigma", "-0.1", "sigma >= 0"),
    (["--train.epochs=0"], "train.epochs", "0", ">= 1"),
    (["--train.epochs=3", "--maxup.warmup_epochs=5"], "maxup.warmup_epochs", "5",
     "<= train.epochs (3)"),
    (["--augment.ops=[cutout,rotate]"], "augment.ops", "'rotate'", "one of crop_flip"),
    (["--optim.milestones=[5,3]"], "optim.milestones", "[5, 3]", "strictly increasing"),
    (["--maxup.chunk=0"], "maxup.chunk", "0", ">= 1"),
    (["--data.name=ptb", "--lm.checkpoint_windows=-1"], "lm.checkpoint_windows", "-1",
     "checkpoint_windows >= 0"),
])
def test_refusals_name_field_value_and_allowed(overrides, field, value, allowed):
    msg = _refusal(overrides)
    assert msg.startswith(field + ":"), msg
    assert f"got {value}" in msg, msg
    assert allowed in msg, msg


def test_unknown_augmentation_lists_all_known():
    msg = _refusal({"augment": {"ops": ["gaussian", "autoaugment"]}})
    assert "'autoaugment'" in msg and all(name in msg for name in AUGMENTATIONS)


def test_bad_yaml_file_is_one_line_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("maxup: [1,\n")
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and "not valid YAML" in str(info.value)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a YAML mapping"):
        load_config(path)


@pytest.mark.parametrize("data", [
    {},
    {"seed": 7, "maxup": {"m": 10, "mode": "naive", "chunk": 2, "warmup_epochs": 5},
     "train": {"epochs": 200}, "optim": {"milestones": [100, 150], "lr": 0.05}},
    {"augment": {"ops": ["crop_flip", "cutmix"], "cutmix_alpha": 0.5},
     "model": {"name": "resnet20", "num_classes": 10, "weights": "w.pt"},
     "data": {"name": "cifar10", "subset": 1000}},
    {"augment": {"ops": ["gaussian"], "sigma": 0}, "certify": {"enabled": True, "sigma": 0.5}},
    {"optim": {"schedule": "cosine", "nesterov": True}, "train": {"precision": "bf16",
                                                                    "min_workers": 1}},
])
def test_json_round_trip(data):
    cfg = from_dict(data)
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


def test_ints_accepted_for_floats_and_defaults_are_valid():
    cfg = from_dict({"optim": {"lr": 1}, "augment": {"sigma": 1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    RunConfig().validate()
    assert AugmentConfig().ops == ["gaussian"]

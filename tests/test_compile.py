"""``train.compile``: the compiled model computes what the eager one does, the loop reports
compile time apart, checkpoints stay plain, and a corpus config refuses it."""

from __future__ import annotations

import copy

import pytest
import torch
from test_engine import config as engine_config
from torch_helpers import with_sections

import maxup.engine.compiling as compiling
from maxup.config import from_dict, to_dict
from maxup.engine import load_checkpoint, train
from maxup.errors import ConfigError
from maxup.identity import trial_id
from maxup.models import build_model
from maxup.objective import MaxUpLoss


def cfg(**sections) -> dict:
    """test_engine's digits run on 128 images, m = 2 from the first epoch, 2 epochs."""
    base = engine_config(data={"subset": 128}, maxup={"warmup_epochs": 0},
                         train={"epochs": 2})
    return with_sections(base, sections)


@pytest.mark.slow
def test_compiled_maxup_step_matches_eager_loss_selection_and_gradients():
    """One efficient MaxUp step (no-grad selection with BN statistics frozen, then the grad
    forward) through torch.compile (inductor, CPU) against the same step eager: the same copies
    selected, loss within 1e-5 relative, every gradient within 1e-4 relative L2 (fp32 kernel
    fusion reorders sums; nothing else may differ)."""
    from maxup.augment import GaussianNoise

    torch.manual_seed(0)
    eager = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,),
                        image_size=(8, 8))
    twin = copy.deepcopy(eager)
    compiled = compiling.compile_model(twin)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 10
    objective = MaxUpLoss(GaussianNoise(0.25, 10), m=2, num_classes=10)
    outs = []
    for model in (eager, compiled):
        model.train()
        out = objective(model, x, y, torch.Generator().manual_seed(2))
        out.loss.backward()
        outs.append(out)
    assert torch.equal(outs[0].worst, outs[1].worst)
    assert float(outs[1].loss.detach()) == pytest.approx(float(outs[0].loss.detach()), rel=1e-5)
    for (name, p), q in zip(eager.named_parameters(), twin.parameters(), strict=True):
        rel = float((p.grad - q.grad).norm() / p.grad.norm().clamp_min(1e-12))
        assert rel < 1e-4, (name, rel)
    # BatchNorm running statistics: updated once (the grad forward), identically.
    for a, b in zip(eager.buffers(), twin.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)
    assert compiling.compile_seconds() > 0


def test_loop_reports_compile_time_apart_and_checkpoints_the_plain_model(tmp_path,
                                                                        monkeypatch):
    """The loop's plumbing with a stand-in compiler (a wrapper like torch.compile's, whose
    state_dict would carry a prefix) and a stand-in clock of compile seconds."""
    wrapped = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            return self._orig_mod(x)

    def fake_compile(model, mode):
        assert mode == "reduce-overhead"
        wrapped.append(model)
        return Wrapper(model)

    clock = iter(range(0, 100, 5))  # 5 "seconds" of compiling per reading
    monkeypatch.setattr("maxup.engine.loop.compile_model", fake_compile)
    monkeypatch.setattr("maxup.engine.loop.compile_seconds", lambda: float(next(clock)))
    record = train(cfg(train={"compile": True, "compile_mode": "reduce-overhead"}),
                   tmp_path / "c", log=None)
    assert record["status"] == "completed" and len(wrapped) == 1
    assert [h["compile_s"] for h in record["history"]] == [5.0, 5.0]
    assert record["timings"]["compile_s"] == 10.0
    state = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    # The same trial trained eagerly: same keys, and no compile_s anywhere.
    plain = train(cfg(), tmp_path / "p", log=None)
    assert "compile_s" not in plain["timings"]
    assert all("compile_s" not in h for h in plain["history"])
    assert set(load_checkpoint(tmp_path / "p" / "checkpoints" / "last.pt")["model"]) == set(state)


def test_compile_is_an_execution_choice_not_part_of_the_trial_id():
    on = to_dict(from_dict(cfg(train={"compile": True, "compile_mode": "max-autotune"})))
    off = to_dict(from_dict(cfg()))
    assert on["train"]["compile"] is True and off["train"]["compile"] is False
    assert trial_id(on) == trial_id(off)


def test_compile_refused_for_a_corpus_in_one_line():
    lm = {"seed": 0, "model": {"name": "awd_lstm"}, "data": {"name": "kjv"},
          "optim": {"lr": 30.0, "momentum": 0.0, "schedule": "constant"},
          "maxup": {"m": 1}, "train": {"compile": True}}
    with pytest.raises(ConfigError) as info:
        from_dict(lm)
    msg = str(info.value)
    assert "train.compile" in msg and "True" in msg and "\n" not in msg

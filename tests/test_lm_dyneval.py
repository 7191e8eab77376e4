"""Dynamic evaluation: static evaluation when it cannot move, the update rule by hand."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from maxup.lm.dyneval import dynamic_eval, gradient_statistics, grid_search, grid_values, restore
from maxup.lm.task import batchify, evaluate_stream
from maxup.models.awd_lstm import AWDLSTM, lm_token_losses

ROOT = Path(__file__).resolve().parent.parent


def _model():
    torch.manual_seed(0)
    return AWDLSTM(15, emsize=6, nhid=8, nlayers=2).double()


def test_without_steps_it_is_static_evaluation():
    model = _model()
    stream = torch.randint(0, 15, (203,))
    train = batchify(torch.randint(0, 15, (400,)), 4)
    stats = gradient_statistics(model, train, bptt=5)
    data = batchify(stream, 1)
    dyn = dynamic_eval(model, data, stats, lr=0.0, lamb=0.0, epsilon=1e-5, bptt=5)
    total, count = evaluate_stream(model, data, 5)
    # the short last window weighted by its length; float32 cross-entropy in both
    assert abs(dyn - total / count) < 1e-6


def test_one_step_of_the_update_rule_by_hand():
    model = _model()
    train = batchify(torch.randint(0, 15, (400,)), 4)
    stats = gradient_statistics(model, train, bptt=5, max_batches=3)
    # statistics by hand: RMS of 3 window gradients, decay rate = MS / mean over params
    ref = [p.detach().clone() for p in model.parameters()]
    data = batchify(torch.randint(0, 15, (6,)), 1)  # exactly one window of 5
    words, targets = data[:5], data[1:6]
    out, _, _ = model(words, model.init_hidden(1))
    lm_token_losses(model, out, targets).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lr, lamb, eps = 0.01, 0.5, 1e-3
    dynamic_eval(model, data, stats, lr=lr, lamb=lamb, epsilon=eps, bptt=5)
    for p, r, g, ms in zip(model.parameters(), ref, grads, stats["ms"], strict=True):
        # theta starts at theta0, so the decay term is 0 for the first step
        expected = r - lr * g / (ms + eps)
        torch.testing.assert_close(p.detach(), expected, atol=1e-12, rtol=0)
    gsum = sum(float(m.mean()) for m in stats["ms"]) / len(stats["ms"])
    torch.testing.assert_close(stats["decrate"][0], stats["ms"][0] / gsum)


def test_adapting_helps_on_repetitive_text():
    model = _model()
    train = batchify(torch.randint(0, 15, (400,)), 4)
    stats = gradient_statistics(model, train, bptt=5)
    data = batchify(torch.tensor([1, 2, 3, 4, 5, 6] * 60), 1)
    static = dynamic_eval(model, data, stats, lr=0.0, lamb=0.0, epsilon=1e-5, bptt=5)
    for p, t0 in zip(model.parameters(), stats["theta0"], strict=True):
        p.data.copy_(t0)
    dyn = dynamic_eval(model, data, stats, lr=2e-3, lamb=0.002, epsilon=1e-5, bptt=5)
    assert dyn < static - 0.5


# --------------------------------------------------------------------------- issue 29

V = 20


def _chain(n: int, step: int, seed: int) -> torch.Tensor:
    """A stream that mostly walks the vocabulary by ``step`` (else a random word)."""
    g = torch.Generator().manual_seed(seed)
    out = [0]
    for _ in range(n - 1):
        nxt = out[-1] + step if float(torch.rand((), generator=g)) < 0.8 else \
            int(torch.randint(0, V, (1,), generator=g))
        out.append(nxt % V)
    return torch.tensor(out)


def _known_model():
    """A small AWD-LSTM trained (deterministically) on the step-1 chain, and that chain."""
    torch.manual_seed(0)
    train_stream = _chain(1600, 1, seed=1)
    model = AWDLSTM(V, emsize=8, nhid=16, nlayers=2, dropout=0, dropouth=0, dropouti=0,
                    dropoute=0, wdrop=0)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    data = batchify(train_stream, 8)
    for _ in range(8):
        hidden = model.init_hidden(8)
        for i in range(0, data.shape[0] - 2, 10):
            x, y = data[i:i + 10], data[i + 1:i + 11]
            x = x[: y.shape[0]]
            hidden = [(h.detach(), c.detach()) for h, c in hidden]
            out, hidden, _ = model(x, hidden)
            loss = lm_token_losses(model, out, y).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
    model.eval()
    return model, train_stream


def test_dyneval_mos_lambda_0075_loses_the_gain_that_0002_keeps():
    """Issue 29: PTB's config used λ = 0.075, the MoS code's value for the old dynamiceval.py
    (decay scaled by 1/tensors); under the current rule it decays the adaptation away. On a
    fixed stream unlike the training text, perplexity must fall as λ drops
    0.075 → 0.0075 → 0.002, and 0.075 must keep less than half of 0.002's gain."""
    model, train_stream = _known_model()
    stats = gradient_statistics(model, batchify(train_stream, 10), bptt=5)
    stream = batchify(_chain(400, 3, seed=2), 1)  # another walk: adapting pays
    total, count = evaluate_stream(model, stream, 5)
    static = math.exp(total / count)
    ppl = {}
    for lamb in (0.075, 0.0075, 0.002):
        ppl[lamb] = math.exp(dynamic_eval(model, stream, stats, lr=2e-4, lamb=lamb,
                                          epsilon=2e-5, bptt=5))
        restore(model, stats)
    assert static > ppl[0.075] > ppl[0.0075] > ppl[0.002]
    assert static - ppl[0.075] < 0.5 * (static - ppl[0.002])


def test_grid_search_is_dynamiceval_grid_and_picks_the_lowest_point():
    model, train_stream = _known_model()
    stats = gradient_statistics(model, batchify(train_stream, 10), bptt=5, max_batches=20)
    val = batchify(_chain(120, 3, seed=3), 1)
    lrs, lambs = grid_values(10)  # the reference's lists times bptt / 5
    assert lrs == [x * 2 for x in (3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 1e-4)]
    assert lambs == [x * 2 for x in (0.001, 0.002, 0.003, 0.005)]
    lrs, lambs = [1e-4, 1e-3], [0.002, 0.075]
    found = grid_search(model, val, stats, epsilon=2e-5, bptt=5, lrs=lrs, lambs=lambs)
    # every point on its own, from θ0: λ outer, η inner
    expect = []
    for lamb in lambs:
        for lr in lrs:
            restore(model, stats)
            expect.append([lr, lamb, math.exp(dynamic_eval(model, val, stats, lr=lr, lamb=lamb,
                                                           epsilon=2e-5, bptt=5))])
    restore(model, stats)
    assert [p[:2] for p in found["grid"]] == [p[:2] for p in expect]
    for got, exp in zip(found["grid"], expect, strict=True):
        assert abs(got[2] - exp[2]) < 1e-9 * exp[2]
    best = min(expect, key=lambda p: p[2])
    assert (found["lr"], found["lamb"]) == (best[0], best[1]) == (1e-3, 0.002)
    for p, t0 in zip(model.parameters(), stats["theta0"], strict=True):
        assert torch.equal(p.detach(), t0)  # the weights are θ0 again


def test_ptb_and_wt2_configs_use_current_dynamiceval_defaults_and_grid():
    from maxup.config import LMConfig, load_config

    for name in ("lm_ptb_adv_awd_lstm", "lm_wt2_adv_awd_lstm"):
        lm = load_config(ROOT / "configs" / f"{name}.yaml").lm
        assert (lm.dyneval_lr, lm.dyneval_lamb, lm.dyneval_epsilon, lm.dyneval_bptt) == \
            (5e-5, 0.002, 2e-5, 5), name
        assert LMConfig().dyneval_lamb == 0.002 and lm.dyneval_search == "grid", name


def test_record_stores_the_grid_and_the_chosen_values(tmp_path):
    """lm.dyneval_search: the record holds every searched point and the (η, λ) used; on a
    validation split under 30,000 tokens gridfast searches all of it, so the reported
    dynamic validation perplexity is the grid's lowest point, recomputed."""
    import json

    from test_lm_engine import lm_config, write_corpus

    from maxup.engine import train

    root = write_corpus(tmp_path / "corpus")
    cfg = lm_config(root, train={"epochs": 1}, maxup={"m": 1, "warmup_epochs": 0})
    cfg["lm"].update(dyneval=True, dyneval_batch_size=4, dyneval_batches=5,
                     dyneval_search="gridfast", dyneval_bptt=10)
    train(cfg, tmp_path / "r", log=None)
    final = json.loads((tmp_path / "r" / "record.json").read_text())["final"]
    lrs, lambs = grid_values(10)
    assert [p[:2] for p in final["dyn_grid"]] == [[lr, lamb] for lamb in lambs for lr in lrs]
    best = min(final["dyn_grid"], key=lambda p: p[2])
    assert [final["dyn_lr"], final["dyn_lamb"]] == best[:2]
    assert abs(final["dyn_val_ppl"] - best[2]) < 1e-9 * best[2]
    assert math.isfinite(final["dyn_test_ppl"])

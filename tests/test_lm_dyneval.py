"""Dynamic evaluation: static evaluation when it cannot move, the update rule by hand."""

from __future__ import annotations

import torch

from maxup.lm.dyneval import dynamic_eval, gradient_statistics
from maxup.lm.task import batchify, evaluate_stream
from maxup.models.awd_lstm import AWDLSTM, lm_token_losses


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

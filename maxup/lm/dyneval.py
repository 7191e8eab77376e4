"""Dynamic evaluation (Krause et al. 2018), as benkrause/dynamic-evaluation's ``dynamiceval.py``.

The model keeps adapting to the text it is scoring: after each window of ``bptt`` words it takes
a gradient step normalised by the root-mean-square gradient measured on the training data, and
decays back toward the trained weights θ₀:

    θ ← θ + λ · r ⊙ (θ₀ − θ) − η · g / (MS + ε),

where MS is the RMS of the training gradients per weight and r = MS / mean(MS) (per-parameter
mean, averaged over parameters), clipped at 1/λ so the decay never overshoots.

Hyper-parameters are those of the current ``dynamiceval.py`` (η = 5e-5, λ = 0.002, ε = 2e-5,
its argparse defaults). Its original version scaled the terms differently (``--oldhyper``
converts: λ / number of parameter tensors, η and ε / √training windows), so a λ tuned for
the old code — the MoS repository's 0.075 — is about 0.075 / 14 ≈ 0.005 under this rule for a
14-tensor AWD-LSTM, and 0.075 used as is decays most of the adaptation away (issue 29).
:func:`grid_search` is its ``--grid`` / ``--gridfast`` search on validation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maxup.lm.task import window
from maxup.models.awd_lstm import lm_token_losses


def gradient_statistics(model: nn.Module, train: torch.Tensor, bptt: int,
                        max_batches: int | None = None) -> dict:
    """RMS training gradients per weight, and the decay rates derived from them.

    Args:
        model: the trained AWD-LSTM (evaluation mode: no dropout).
        train: (N, B) batchified training split (the reference uses B = 100).
        bptt: window length.
        max_batches: stop after this many windows (None: the whole split).

    Returns:
        ``{"ms": [tensor per parameter], "decrate": [...], "theta0": [...]}``.
    """
    params = list(model.parameters())
    sq = [torch.zeros_like(p) for p in params]
    model.eval()
    hidden = model.init_hidden(train.shape[1])
    batches, i = 0, 0
    while i < train.shape[0] - 1 - 1:
        words, targets = window(train, i, bptt)
        hidden = [(h.detach(), c.detach()) for h, c in hidden]
        model.zero_grad(set_to_none=True)
        out, hidden, _ = model(words, hidden)
        lm_token_losses(model, out, targets).mean().backward()
        for s, p in zip(sq, params, strict=True):
            s.add_(p.grad * p.grad)
        batches += 1
        i += bptt
        if max_batches is not None and batches >= max_batches:
            break
    ms = [torch.sqrt(s / max(batches, 1)) for s in sq]
    gsum = sum(float(m.mean()) for m in ms) / len(ms)
    model.zero_grad(set_to_none=True)
    return {"ms": ms, "decrate": [m / gsum for m in ms],
            "theta0": [p.detach().clone() for p in params]}


def dynamic_eval(model: nn.Module, data: torch.Tensor, stats: dict, *, lr: float, lamb: float,
                 epsilon: float, bptt: int) -> float:
    """Mean cross-entropy (nats per word) of ``data`` under dynamic evaluation.

    The model's weights change during the call (the caller restores them).

    Args:
        model: the trained AWD-LSTM (its weights are θ₀ = ``stats["theta0"]``).
        data: (N, 1) batchified split.
        stats: :func:`gradient_statistics`'s output.
        lr, lamb, epsilon: η, λ, ε.
        bptt: window length; a last, shorter window is down-weighted by its length.
    """
    params = list(model.parameters())
    decrate = [d.clamp(max=1.0 / lamb) if lamb > 0 else d for d in stats["decrate"]]
    model.eval()
    hidden = model.init_hidden(data.shape[1])
    total, weight, i = 0.0, 0.0, 0
    while i < data.shape[0] - 1:
        words, targets = window(data, i, bptt)
        n = words.shape[0]
        hidden = [(h.detach(), c.detach()) for h, c in hidden]
        model.zero_grad(set_to_none=True)
        out, hidden, _ = model(words, hidden)
        loss = lm_token_losses(model, out, targets).mean()
        loss.backward()
        with torch.no_grad():
            for p, d, ms, t0 in zip(params, decrate, stats["ms"], stats["theta0"], strict=True):
                p.add_(lamb * d * (t0 - p) - lr * p.grad / (ms + epsilon))
        total += (n / bptt) * float(loss.detach())
        weight += n / bptt
        i += n
    model.zero_grad(set_to_none=True)
    return total / weight


#: dynamiceval.py's ``--grid`` lists (for bptt 5; :func:`grid_values` scales them).
GRID_LR = (3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 1e-4)
GRID_LAMB = (0.001, 0.002, 0.003, 0.005)
#: ``--gridfast``: the search reads only this many validation tokens.
GRIDFAST_TOKENS = 30_000


def grid_values(bptt: int) -> tuple[list[float], list[float]]:
    """The searched η and λ values for a window of ``bptt`` (the reference's ×bptt/5)."""
    return [x * (bptt / 5.0) for x in GRID_LR], [x * (bptt / 5.0) for x in GRID_LAMB]


def grid_search(model: nn.Module, data: torch.Tensor, stats: dict, *, epsilon: float,
                bptt: int, lrs: list[float], lambs: list[float]) -> dict:
    """The (η, λ) of lowest dynamic-evaluation perplexity on ``data``, as dynamiceval.py.

    λ in the outer loop, η inside, a point replacing the best only when strictly lower, so
    ties keep the first; the weights go back to θ₀ after every point (and at the end).

    Args:
        model: the trained AWD-LSTM at θ₀ = ``stats["theta0"]``.
        data: (N, 1) validation stream (or its first tokens, for gridfast).
        stats: :func:`gradient_statistics`'s output.
        epsilon, bptt: ε and the window.
        lrs, lambs: the searched values.

    Returns:
        ``{"lr", "lamb", "ppl", "grid"}``: the chosen values, their perplexity, and every
        point as ``[lr, lamb, ppl]`` in search order.
    """
    best, grid = None, []
    for lamb in lambs:
        for lr in lrs:
            ppl = math.exp(min(dynamic_eval(model, data, stats, lr=lr, lamb=lamb,
                                            epsilon=epsilon, bptt=bptt), 700.0))
            restore(model, stats)
            grid.append([lr, lamb, ppl])
            if best is None or ppl < best[2]:
                best = (lr, lamb, ppl)
    return {"lr": best[0], "lamb": best[1], "ppl": best[2], "grid": grid}


def restore(model: nn.Module, stats: dict) -> None:
    """Put the trained weights θ₀ back after a dynamic evaluation."""
    with torch.no_grad():
        for p, t0 in zip(model.parameters(), stats["theta0"], strict=True):
            p.copy_(t0)

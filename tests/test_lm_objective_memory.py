"""The LM MaxUp step never materialises masked (V × E) embedding matrices per copy.

Every tensor the step creates (forward, selection, training forward and backward) is seen
through a torch dispatch mode; a tensor is a *large embedding-shaped* one when it has a
dimension of size V or its rows are E wide (a masked embedding matrix, one or stacked, in any
layout: (V, E), (m, V, E), (m·V, E), (E, V)…), its storage holds at least V·E elements, and
that storage is not one of the op's inputs' (views and in-place results are not new memory;
the LSTM kernel's flat workspace is neither). The sizes are chosen so that nothing legitimate
but the embedding's gradients reaches V·E: the logits (m·B·T, V) and every activation stay far
below it. The MaxUp step at m = 2 and 4 must create no more large tensors than the plain m = 1
step, and none of 2·V·E or more; the naive reference (one masked matrix per copy and
sequence) is caught by the same counter, so the check can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from maxup.lm.objective import train_step
from maxup.models.awd_lstm import AWDLSTM

V, E, H, T, B = 503, 64, 16, 4, 3


class LargeAllocations(TorchDispatchMode):
    """Record the op and shape of every new tensor with a dimension of size V or a last
    dimension of size E whose storage has >= ``min_numel`` elements of its dtype."""

    def __init__(self, min_numel: int):
        super().__init__()
        self.min_numel = min_numel
        self.large: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr()
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.dim() < 2:
                continue
            if V not in t.shape and t.shape[-1] != E:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in inputs:
                continue
            if storage.nbytes() >= self.min_numel * t.element_size():
                self.large.append((str(func), tuple(t.shape)))
        return out


def _model(adv_eps: float = 0.0) -> AWDLSTM:
    torch.manual_seed(0)
    return AWDLSTM(V, emsize=E, nhid=H, nlayers=2, dropout=0.2, dropouth=0.2, dropouti=0.2,
                   dropoute=0.3, wdrop=0.3, adv_eps=adv_eps, adv_noise=0.1 if adv_eps else 0.0)


def _large_in_step(model: AWDLSTM, m: int, chunk: int | None, min_numel: int):
    words = torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    model.zero_grad(set_to_none=True)
    with LargeAllocations(min_numel) as seen:
        step = train_step(model, words, targets, model.init_hidden(B), gen, m=m, alpha=2.0,
                          beta=1.0, adversarial=model.adv_eps > 0, chunk=chunk)
        step.loss.backward()
    return seen.large


def test_sizes_leave_only_the_embedding_gradient_at_v_times_e():
    # What the plain step creates at V·E or more: the tied embedding's gradient, nothing else
    # (so any per-copy matrix would show up as an extra entry).
    assert 4 * B * T * V < V * E  # the logits of all copies at m = 4 stay below it
    large = _large_in_step(_model(), 1, None, V * E)
    assert large and all(shape == (V, E) for _, shape in large), large


@pytest.mark.parametrize("adv_eps", [0.0, 0.5])
@pytest.mark.parametrize("chunk", [None, 1, 2])
@pytest.mark.parametrize("m", [2, 4])
def test_maxup_step_creates_no_per_copy_embedding_matrix(m, chunk, adv_eps):
    plain = _large_in_step(_model(adv_eps), 1, None, V * E)
    maxup = _large_in_step(_model(adv_eps), m, chunk, V * E)
    assert len(maxup) <= len(plain), (plain, maxup)
    assert not _large_in_step(_model(adv_eps), m, chunk, 2 * V * E)


def test_the_counter_catches_masked_matrices_per_copy():
    # The naive step: one masked (V, E) matrix per copy and sequence (test_lm_model's reference).
    model = _model()
    m, p = 2, model.dropoute
    words = torch.randint(0, V, (T, B))
    with LargeAllocations(V * E) as seen:
        masks = (torch.rand(m, B, V) >= p).float() / (1 - p)
        for k in range(m):
            torch.stack([F.embedding(words[:, j], masks[k, j].unsqueeze(1) * model.encoder.weight)
                         for j in range(B)], dim=1)
    assert len(seen.large) >= m * B
    with LargeAllocations(2 * V * E) as stacked:  # and all copies' matrices at once
        masks.unsqueeze(-1) * model.encoder.weight
    assert stacked.large

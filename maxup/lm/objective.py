"""One training step of the language model: plain AWD-LSTM, or MaxUp over word-dropout masks.

MaxUp for language modelling (paper §4.3): "we do feed-forward m times and select the worst
case to do backpropagation for each given sentence". A sentence is one of the B columns of the
batchified stream. Per step:

1. draw every dropout mask *except* word dropout once (locked dropout, DropConnect, ADV's
   Gaussian noise): they are shared by all copies, so copies differ only in the augmentation;
2. draw m word-dropout masks per sequence — (m, B, V) in the mathematical sense, drawn lazily
   at the words present (:func:`maxup.models.awd_lstm.word_dropout_scale`), never an
   (m, V, E) masked embedding matrix;
3. forward all m copies without gradient from the same hidden state, stacked along the batch
   through the LSTMs (``chunk`` copies per forward bound the memory), then decode and score
   one copy at a time (the (T·B, V) logits of one copy, never of all m: at V = 10,000 those
   dominate the selection's memory and, on a CPU, its time), each copy of each sequence by
   its cross-entropy summed over the window (with ADV's perturbation when it is on, since that
   is the data term being trained; AR/TAR are not part of the score — they regularise the
   hidden states, not the fit to this augmentation);
4. one training forward in which each sequence uses its selected mask; its loss (mean
   cross-entropy + AR + TAR) is back-propagated and its hidden state carried forward.

With m = 1 the step is awd-lstm-lm's: one (V, 1) word-dropout mask shared by the batch; with
``per_sequence`` (``lm.mask_per_sequence``) it draws one mask per sequence, in the order and
law MaxUp draws its copies (the other draws first, then the masks), so the control differs
from m = 2 only in the max over copies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from maxup.models.awd_lstm import AWDLSTM, Hidden, Noise, lm_token_losses, word_dropout_scale


@dataclass
class LMStep:
    """The result of one step's forward (the caller back-propagates ``loss``).

    Args:
        loss: scalar to back-propagate: mean CE + AR + TAR.
        raw_loss: mean cross-entropy of the trained forward (detached float).
        hidden: the trained forward's final hidden state (detached), per layer (h, c).
        gap: mean over sequences of (selected − mean) copy loss per token (0 for m = 1).
        wins: (m,) how often each copy index was selected.
        selection_s: seconds spent in the no-grad selection forwards.
    """

    loss: torch.Tensor
    raw_loss: float
    hidden: Hidden
    gap: float
    wins: torch.Tensor
    selection_s: float


def _regularised(model: AWDLSTM, out, raw_last, targets, *, alpha: float, beta: float,
                 adversarial: bool):
    raw = lm_token_losses(model, out, targets, adversarial=adversarial).mean()
    loss = raw
    if alpha:
        loss = loss + alpha * out.pow(2).mean()  # AR on the dropped last-layer output
    if beta:
        loss = loss + beta * (raw_last[1:] - raw_last[:-1]).pow(2).mean()  # TAR, undropped
    return loss, raw


def _detach(hidden: Hidden) -> Hidden:
    return [(h.detach(), c.detach()) for h, c in hidden]


@torch.no_grad()
def copy_losses(model: AWDLSTM, words: torch.Tensor, targets: torch.Tensor, hidden: Hidden,
                noise: Noise, scales: torch.Tensor, *, adversarial: bool,
                chunk: int | None) -> torch.Tensor:
    """Cross-entropy summed over the window of every copy of every sequence, no gradient.

    Args:
        model: the AWD-LSTM.
        words, targets: (T, B) inputs and next words.
        hidden: the step's starting state, per layer (h, c) each (1, B, size).
        noise: the shared draws (its ``emb_scale`` is ignored).
        scales: (m, T, B) per-copy word-dropout scales.
        adversarial: include ADV's perturbation in the score.
        chunk: copies per LSTM forward (None: all m at once); the decoder and the loss take
            one copy at a time whatever ``chunk`` is.

    Returns:
        (m, B) losses.
    """
    m, t, b = scales.shape
    step = m if chunk is None else max(1, min(chunk, m))
    out = []
    for k0 in range(0, m, step):
        c = min(step, m - k0)
        # Copies stacked batch-major: column k·B + j is copy k0+k of sequence j.
        stacked_scale = scales[k0:k0 + c].permute(1, 0, 2).reshape(t, c * b)
        h = [(hh.repeat(1, c, 1), cc.repeat(1, c, 1)) for hh, cc in hidden]
        o, _, _ = model(words.repeat(1, c), h, noise.repeat(c), emb_scale=stacked_scale)
        o = o.view(t, c, b, -1)
        for k in range(c):
            out.append(lm_token_losses(model, o[:, k], targets, adversarial=adversarial).sum(0))
    return torch.stack(out)


def select_scales(scales: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's worst copy and its mask.

    Args:
        scales: (m, T, B) per-copy word-dropout scales.
        losses: (m, B) copy losses.

    Returns:
        ``chosen`` (B,) copy indices (the first on ties) and their scales (T, B).
    """
    chosen = losses.argmax(0)
    t = scales.shape[1]
    picked = scales.gather(0, chosen.view(1, 1, -1).expand(1, t, -1)).squeeze(0)
    return chosen, picked


def maxup_step(model: AWDLSTM, words: torch.Tensor, targets: torch.Tensor, hidden: Hidden,
               noise: Noise, scales: torch.Tensor, *, alpha: float, beta: float,
               adversarial: bool, chunk: int | None = None) -> LMStep:
    """MaxUp's forward given the drawn noise and the m copies' scales (steps 3-4 above).

    Args:
        model: the AWD-LSTM (training mode).
        words, targets: (T, B).
        hidden: starting state (detached), per layer (h, c).
        noise: the shared draws of :meth:`AWDLSTM.draw_noise` (``word_dropout=False``).
        scales: (m, T, B) per-copy word-dropout scales in {0, 1/(1−p)}.
        alpha, beta: AR and TAR weights.
        adversarial: ADV-AWD-LSTM's perturbation in both the score and the loss.
        chunk: copies per selection forward.
    """
    m = scales.shape[0]
    t0 = time.perf_counter()
    losses = copy_losses(model, words, targets, hidden, noise, scales,
                         adversarial=adversarial, chunk=chunk)
    chosen, picked = select_scales(scales, losses)
    selection_s = time.perf_counter() - t0
    out, new_hidden, raw_last = model(words, hidden, noise, emb_scale=picked)
    loss, raw = _regularised(model, out, raw_last, targets, alpha=alpha, beta=beta,
                             adversarial=adversarial)
    t = words.shape[0]
    worst = losses.max(0).values
    gap = float((worst - losses.mean(0)).mean()) / t
    wins = torch.bincount(chosen.cpu(), minlength=m)
    return LMStep(loss, float(raw.detach()), _detach(new_hidden), gap, wins, selection_s)


def train_step(model: AWDLSTM, words: torch.Tensor, targets: torch.Tensor, hidden: Hidden,
               generator: torch.Generator, *, m: int, alpha: float, beta: float,
               adversarial: bool, chunk: int | None = None,
               per_sequence: bool = False) -> LMStep:
    """Draw the step's noise and run the plain (m = 1) or MaxUp (m > 1) forward.

    Args:
        model: the AWD-LSTM (training mode).
        words, targets: (T, B) inputs and next words.
        hidden: starting state, per layer (h, c); detached here (truncated BPTT).
        generator: the epoch's generator on the model's device (every draw comes from it).
        m: copies of the word-dropout mask (1: the reference step).
        alpha, beta: AR and TAR weights.
        adversarial: apply ADV-AWD-LSTM's output-embedding perturbation.
        chunk: copies per selection forward.
        per_sequence: at m = 1, one word-dropout mask per sequence (the control arm) instead
            of awd-lstm-lm's one for the batch; m > 1 always draws per sequence.
    """
    hidden = _detach(hidden)
    if m == 1 or model.dropoute == 0:
        if per_sequence and model.dropoute > 0:
            noise = model.draw_noise(words, generator, word_dropout=False)
            scale = word_dropout_scale(words, model.dropoute, generator,
                                       per_sequence_copies=1)[0]
            out, new_hidden, raw_last = model(words, hidden, noise, emb_scale=scale)
        else:
            noise = model.draw_noise(words, generator)
            out, new_hidden, raw_last = model(words, hidden, noise)
        loss, raw = _regularised(model, out, raw_last, targets, alpha=alpha, beta=beta,
                                 adversarial=adversarial)
        return LMStep(loss, float(raw.detach()), _detach(new_hidden), 0.0,
                      torch.tensor([words.shape[1]]), 0.0)
    noise = model.draw_noise(words, generator, word_dropout=False)
    scales = word_dropout_scale(words, model.dropoute, generator, per_sequence_copies=m)
    return maxup_step(model, words, targets, hidden, noise, scales, alpha=alpha, beta=beta,
                      adversarial=adversarial, chunk=chunk)

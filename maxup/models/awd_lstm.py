"""AWD-LSTM (Merity et al. 2018, salesforce/awd-lstm-lm) with ADV-AWD-LSTM's switches.

The network: word embedding (V, E) → ``nlayers`` single-layer LSTMs (E → H → … → H → E, the
last one sized E so the decoder can share the embedding matrix) → linear decoder (E → V) whose
weight *is* the embedding matrix (tied). Regularisation, all as in the reference code:

- **embedding dropout** (``dropoute``): whole words dropped from the embedding matrix, a (V, 1)
  Bernoulli mask scaled by 1/(1−p), applied to the input lookup only;
- **locked (variational) dropout**: one mask per sequence shared across time, on the
  embeddings (``dropouti``), between LSTM layers (``dropouth``) and on the output
  (``dropout``);
- **DropConnect** (``wdrop``) on each LSTM's hidden-to-hidden matrix, one mask per forward;
- ADV-AWD-LSTM (Wang et al. 2019, ChengyueGongR/advsoft): Gaussian noise of std
  ``adv_noise`` added to the (dropped) embeddings, and the adversarial output-embedding
  perturbation of strength ``adv_eps`` (:func:`lm_logits_and_loss`).

Randomness is separated from computation so MaxUp can share masks across copies: a
:class:`Noise` holds every random draw of one training step (:meth:`AWDLSTM.draw_noise`), and
:meth:`AWDLSTM.forward` is deterministic given it. The word-dropout mask is never materialised
as a (V, E) matrix: only the mask values of the words present are drawn, as a per-token scale
(T, B) — the same distribution, since the words absent from a window never enter it.

Parameter counts (tests): 24,221,600 for PTB (V = 10,000, E = 400, H = 1150, 3 layers) and
33,556,078 for WikiText-2 (V = 33,278).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maxup.errors import ConfigError
from maxup.models.registry import register_model

Hidden = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Noise:
    """Every random draw of one training forward (None: that dropout is off).

    Args:
        emb_scale: (T, B) per-token embedding scale in {0, 1/(1−dropoute)} — the word-dropout
            mask gathered at the input words (same word in the same mask → same value).
        emb_noise: (T, B, E) ADV-AWD-LSTM's Gaussian noise added to the dropped embeddings.
        locked: per locked-dropout site (input, between layers…, output), a (1, B, D) mask
            in {0, 1/(1−p)} shared across time.
        weight: per layer, a (4H_l, H_l) DropConnect mask on the hidden-to-hidden matrix.
    """

    emb_scale: torch.Tensor | None
    emb_noise: torch.Tensor | None
    locked: list[torch.Tensor | None]
    weight: list[torch.Tensor | None]

    def repeat(self, copies: int) -> Noise:
        """The same noise for ``copies`` stacked copies of the batch (batch-major blocks:
        row k·B + b is copy k of sequence b), every mask shared by all copies."""
        def rep(t, dim):
            if t is None:
                return None
            reps = [1] * t.dim()
            reps[dim] = copies
            return t.repeat(*reps)
        return Noise(rep(self.emb_scale, 1), rep(self.emb_noise, 1),
                     [rep(t, 1) for t in self.locked], list(self.weight))


def _bernoulli_scale(shape, p: float, generator, device) -> torch.Tensor:
    """A dropout mask in {0, 1/(1−p)} (float32)."""
    keep = torch.rand(shape, generator=generator, device=device) >= p
    return keep.float() / (1.0 - p)


def word_dropout_scale(words: torch.Tensor, p: float, generator, *,
                       per_sequence_copies: int | None = None) -> torch.Tensor:
    """Word-level embedding-dropout masks gathered at the input words, drawn lazily.

    Draws a Bernoulli(1−p) keep value per *distinct* word present (the absent words' mask
    entries never matter), so the cost is O(copies · B · |unique words|), never O(V · E).

    Args:
        words: (T, B) token ids.
        p: drop probability, 0 <= p < 1.
        generator: torch generator on ``words.device``.
        per_sequence_copies: None: one (V, 1) mask for the whole batch, as awd-lstm-lm's
            ``embedded_dropout``; m: m independent masks per sequence — masks of shape
            (m, B, V) in the mathematical sense.

    Returns:
        (T, B) scales for None, else (m, T, B): ``scale[k, t, b] = mask_{k,b}[words[t, b]]``.
    """
    uniq, inv = torch.unique(words, return_inverse=True)  # inv: (T, B) into uniq
    if per_sequence_copies is None:
        table = _bernoulli_scale((uniq.numel(),), p, generator, words.device)
        return table[inv]
    m, (_, b) = per_sequence_copies, words.shape
    table = _bernoulli_scale((m, b, uniq.numel()), p, generator, words.device)
    # scale[k, t, j] = table[k, j, inv[t, j]]
    idx = inv.t().unsqueeze(0).expand(m, -1, -1)  # (m, B, T)
    return table.gather(2, idx).permute(0, 2, 1)  # (m, T, B)


class LSTMLayer(nn.Module):
    """One LSTM layer whose hidden-to-hidden weight can be DropConnect-masked per forward.

    Same parameters and initialisation as ``nn.LSTM(input_size, hidden_size)`` (uniform in
    ±1/√H); the forward is torch's fused LSTM kernel with the masked weight passed in.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        k = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-k, k))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-k, k))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-k, k))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-k, k))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                weight_mask: torch.Tensor | None = None):
        """Args:
            x: (T, B, input_size).
            state: (h, c), each (1, B, hidden_size).
            weight_mask: (4H, H) DropConnect mask, or None.

        Returns:
            output (T, B, H) and the new (h, c).
        """
        w_hh = self.weight_hh if weight_mask is None else self.weight_hh * weight_mask
        out, h, c = torch.lstm(x, state, [self.weight_ih, w_hh, self.bias_ih, self.bias_hh],
                               True, 1, 0.0, self.training, False, False)
        return out, (h, c)


class AWDLSTM(nn.Module):
    """The AWD-LSTM language model (see the module docstring).

    Args:
        vocab_size: V.
        emsize: embedding size E (also the last LSTM's size, for the tied decoder).
        nhid: hidden size H of the inner LSTMs.
        nlayers: number of LSTM layers (>= 1).
        dropout, dropouth, dropouti, dropoute, wdrop: drop probabilities (see the module
            docstring).
        adv_eps: ADV-AWD-LSTM's output-embedding perturbation strength (0: off).
        adv_noise: std of the Gaussian noise on the dropped embeddings (0: off).
    """

    def __init__(self, vocab_size: int, *, emsize: int = 400, nhid: int = 1150,
                 nlayers: int = 3, dropout: float = 0.4, dropouth: float = 0.3,
                 dropouti: float = 0.65, dropoute: float = 0.1, wdrop: float = 0.5,
                 adv_eps: float = 0.0, adv_noise: float = 0.0):
        super().__init__()
        for name, p in (("dropout", dropout), ("dropouth", dropouth), ("dropouti", dropouti),
                        ("dropoute", dropoute), ("wdrop", wdrop)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"lm.{name}", p, "a probability in [0, 1)")
        self.vocab_size, self.emsize, self.nhid, self.nlayers = vocab_size, emsize, nhid, nlayers
        self.dropout, self.dropouth, self.dropouti = dropout, dropouth, dropouti
        self.dropoute, self.wdrop = dropoute, wdrop
        self.adv_eps, self.adv_noise = adv_eps, adv_noise
        self.encoder = nn.Embedding(vocab_size, emsize)
        sizes = [emsize] + [nhid] * (nlayers - 1) + [emsize]
        self.rnns = nn.ModuleList(LSTMLayer(sizes[i], sizes[i + 1]) for i in range(nlayers))
        self.decoder = nn.Linear(emsize, vocab_size)
        self.decoder.weight = self.encoder.weight  # tied (Press & Wolf; Inan et al.)
        # awd-lstm-lm's init_weights: embedding U(±0.1), decoder bias 0.
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch: int) -> Hidden:
        """Zero (h, c) per layer, each (1, batch, size)."""
        w = self.encoder.weight
        return [(w.new_zeros(1, batch, r.hidden_size), w.new_zeros(1, batch, r.hidden_size))
                for r in self.rnns]

    def draw_noise(self, words: torch.Tensor, generator: torch.Generator, *,
                   word_dropout: bool = True) -> Noise:
        """Draw every dropout mask (and the Gaussian noise) of one training forward.

        Args:
            words: (T, B) the input window.
            generator: the step's generator (on the model's device).
            word_dropout: draw the shared (V, 1) word-dropout mask; False when the caller
                supplies per-sequence masks itself (MaxUp).
        """
        t, b = words.shape
        dev = words.device
        emb_scale = None
        if word_dropout and self.dropoute > 0:
            emb_scale = word_dropout_scale(words, self.dropoute, generator)
        emb_noise = None
        if self.adv_noise > 0:
            emb_noise = torch.randn(t, b, self.emsize, generator=generator,
                                    device=dev) * self.adv_noise
        sites = [(self.dropouti, self.emsize)]
        sites += [(self.dropouth, r.hidden_size) for r in self.rnns[:-1]]
        sites += [(self.dropout, self.emsize)]
        locked = [_bernoulli_scale((1, b, d), p, generator, dev) if p > 0 else None
                  for p, d in sites]
        weight = [_bernoulli_scale(r.weight_hh.shape, self.wdrop, generator, dev)
                  if self.wdrop > 0 else None for r in self.rnns]
        return Noise(emb_scale, emb_noise, locked, weight)

    def forward(self, words: torch.Tensor, hidden: Hidden, noise: Noise | None = None,
                emb_scale: torch.Tensor | None = None):
        """Run the LSTM stack; deterministic given ``noise`` (None: no dropout, evaluation).

        Args:
            words: (T, B) token ids.
            hidden: per layer (h, c), each (1, B, size).
            noise: the step's draws (:meth:`draw_noise`), or None.
            emb_scale: (T, B) per-token embedding scale overriding ``noise.emb_scale``
                (MaxUp's per-sequence word-dropout masks).

        Returns:
            ``output`` (T, B, E): the last layer's dropped output (the decoder's input);
            ``new_hidden``; ``raw_last`` (T, B, E): the last layer's output before dropout
            (TAR's input).
        """
        emb = self.encoder(words)
        scale = emb_scale if emb_scale is not None else (noise.emb_scale if noise else None)
        if scale is not None:
            # (mask ⊙ E)[w] = mask[w]·E[w]: the dropped embedding matrix, looked up lazily.
            emb = emb * scale.unsqueeze(-1)
        if noise is not None and noise.emb_noise is not None:
            emb = emb + noise.emb_noise
        locked = noise.locked if noise is not None else [None] * (self.nlayers + 1)
        weights = noise.weight if noise is not None else [None] * self.nlayers
        x = emb if locked[0] is None else emb * locked[0]
        new_hidden = []
        for i, rnn in enumerate(self.rnns):
            x, state = rnn(x, hidden[i], weights[i])
            new_hidden.append(state)
            if i < self.nlayers - 1 and locked[i + 1] is not None:
                x = x * locked[i + 1]
        raw_last = x
        out = x if locked[-1] is None else x * locked[-1]
        return out, new_hidden, raw_last


def lm_token_losses(model: AWDLSTM, output: torch.Tensor, targets: torch.Tensor, *,
                    adversarial: bool = False) -> torch.Tensor:
    """Per-token cross-entropy (nats) of the tied decoder, optionally with ADV's perturbation.

    ADV-AWD-LSTM (advsoft ``model.py``): the target word's output embedding w_y is moved by
    δ = −ε‖w_y‖·h/‖h‖ when cos(h, w_y) > 0, i.e. the target logit is lowered by ε‖w_y‖‖h‖;
    δ is a constant (no gradient flows through it), h and w_y get the gradient of h·(w_y + δ).

    Args:
        model: the AWD-LSTM (its decoder and ``adv_eps``).
        output: (..., E) decoder inputs.
        targets: (...) next-word ids, the same leading shape.
        adversarial: apply the perturbation (training only, and only when ``adv_eps > 0``).

    Returns:
        Losses of ``targets``'s shape.
    """
    h = output.reshape(-1, output.shape[-1])
    y = targets.reshape(-1)
    logits = model.decoder(h)
    if adversarial and model.adv_eps > 0:
        w_y = model.encoder.weight[y]
        n_h = torch.sqrt((h * h).sum(1, keepdim=True) + 1e-8)
        n_w = torch.sqrt((w_y * w_y).sum(1, keepdim=True) + 1e-8)
        positive = ((h * w_y).sum(1, keepdim=True) > 0).to(h.dtype)
        delta = (-model.adv_eps * n_w * positive * h / n_h).detach()
        bump = (h * delta).sum(1)
        logits = logits.index_put((torch.arange(len(y), device=y.device), y), bump,
                                  accumulate=True)
    return F.cross_entropy(logits.float(), y, reduction="none").view(targets.shape)


@register_model("awd_lstm")
def _awd_lstm_for_images(**kwargs):
    """Registered so ``model.name: awd_lstm`` is a known name; built by the LM task
    (:mod:`maxup.lm`) from the ``lm`` config section, never as an image classifier."""
    raise ConfigError("model.name", "awd_lstm",
                      "an image model for an image dataset (awd_lstm needs a text dataset: "
                      "kjv, ptb or wikitext2)")


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())

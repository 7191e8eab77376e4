"""The language-model training loop against values computed here (awd-lstm-lm / advsoft's rules):

- each step's learning rate is the base lr times the window's drawn length over bptt;
- the hidden state is carried from window to window (non-zero, the previous step's);
- ASGD's average is the plain mean of the weights after every step since averaging began;
  evaluation and the kept best model use it, training continues from the raw iterate;
- a fine-tuning stage restarts from the best model and averages afresh from its first step;
- NT-ASGD's non-monotone trigger, on a stubbed validation sequence, switches exactly when
  ``len(h) > n and val > min(h[:-n])``;
- MaxUp's selection with ADV-AWD-LSTM on scores each copy *with* the perturbation (a naive
  reference that materialises every mask and writes the perturbation out by hand).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_lm_engine import write_corpus

import maxup.lm.task as lm_task
from maxup.config import from_dict
from maxup.engine import DistContext, build_task
from maxup.lm.objective import maxup_step
from maxup.models.awd_lstm import AWDLSTM

CPU = torch.device("cpu")
DIST = DistContext()
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors, a busy machine



def corpus(root: Path, n_train: int = 160) -> Path:
    """A tiny PTB-format corpus (a bigram chain, so there is something to learn)."""
    return write_corpus(root, n_train=n_train)


def config(root: Path, *, lm: dict | None = None, **sections) -> dict:
    cfg = {
        "seed": 0,
        "model": {"name": "awd_lstm"},
        "data": {"name": "ptb", "root": str(root)},
        "lm": {"emsize": 6, "nhid": 8, "nlayers": 2, "bptt": 10, "eval_batch_size": 2,
               "test_batch_size": 1, "asgd": "off", "dropoute": 0.2, "dropouti": 0.2,
               "dropouth": 0.1, "dropout": 0.2, "wdrop": 0.2, **(lm or {})},
        "maxup": {"m": 2, "warmup_epochs": 0},
        "optim": {"lr": 3.0, "momentum": 0.0, "weight_decay": 1.2e-6, "schedule": "constant"},
        "train": {"epochs": 3, "batch_size": 4, "device": "cpu", "progress": False},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


class Spy:
    """Records, for every training step of a task: the window (inputs), the hidden state the
    step was given and the one it returned, the learning rate of every parameter group when
    the optimiser stepped, and the weights after the step."""

    def __init__(self, task, monkeypatch):
        self.task = task
        self.steps: list[dict] = []
        real_step = lm_task.train_step

        def train_step(model, words, targets, hidden, generator, **kw):
            out = real_step(model, words, targets, hidden, generator, **kw)
            self.steps.append({"words": words.clone(),
                               "hidden": [(h.clone(), c.clone()) for h, c in hidden],
                               "returned": [(h.clone(), c.clone()) for h, c in out.hidden]})
            return out

        monkeypatch.setattr(lm_task, "train_step", train_step)
        opt = task.optimizer
        real_opt_step = opt.step

        def opt_step(*a, **kw):
            self.steps[-1]["lrs"] = [g["lr"] for g in opt.param_groups]
            self.steps[-1]["before"] = [p.detach().clone() for p in task.model.parameters()]
            self.steps[-1]["grads"] = [p.grad.detach().clone() for p in task.model.parameters()]
            result = real_opt_step(*a, **kw)
            self.steps[-1]["weights"] = [p.detach().clone() for p in task.model.parameters()]
            return result

        opt.step = opt_step

    def epoch(self, epoch: int) -> list[dict]:
        start = len(self.steps)
        self.task.train_epoch(self.task.model, epoch, DIST, False)
        return self.steps[start:]


def reference_loss(model: AWDLSTM, weights: list[torch.Tensor], stream: torch.Tensor,
                   bptt: int) -> float:
    """Mean cross-entropy (nats/token) of a batchified stream with ``weights`` put in a copy of
    the model: windows of ``bptt`` rows, the hidden state carried, no dropout."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(ref.parameters(), weights, strict=True):
            p.copy_(w)
    ref.eval()
    total, count = 0.0, 0
    hidden = ref.init_hidden(stream.shape[1])
    with torch.no_grad():
        for i in range(0, stream.shape[0] - 1, bptt):
            n = min(bptt, stream.shape[0] - 1 - i)
            out, hidden, _ = ref(stream[i:i + n], hidden)
            logits = out.reshape(-1, out.shape[-1]) @ ref.encoder.weight.t() + ref.decoder.bias
            total += float(F.cross_entropy(logits.double(), stream[i + 1:i + 1 + n].reshape(-1),
                                           reduction="sum"))
            count += n * stream.shape[1]
    return total / count


def mean_of(iterates: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack([it[j].double() for it in iterates]).mean(0)
            for j in range(len(iterates[0]))]


def assert_weights_close(a, b, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.double(), y.double(), atol=atol, rtol=0)


def _window_starts(data: torch.Tensor, steps: list[dict]) -> list[int]:
    """Row of the training stream where each step's window starts (found by content)."""
    starts, lo = [], 0
    for s in steps:
        w = s["words"]
        n = w.shape[0]
        i = next(i for i in range(lo, data.shape[0] - n + 1) if torch.equal(data[i:i + n], w))
        starts.append(i)
        lo = i + 5  # a drawn length is at least 5
    return starts


# --------------------------------------------------------------------------- lr, hidden state

def test_step_lr_is_base_lr_times_drawn_length_over_bptt_and_restored(tmp_path, monkeypatch):
    """Each window's lr is 3.0 x its drawn length / bptt 10 (awd-lstm-lm: the length drawn,
    read off the row where the next window starts), and the step is SGD at that lr with the
    configured weight decay (1e-3 here, to be seen)."""
    task = build_task(from_dict(config(corpus(tmp_path / "c"),
                                       optim={"weight_decay": 1e-3})), CPU, DIST)
    spy = Spy(task, monkeypatch)
    steps = spy.epoch(0)
    assert len(steps) >= 5
    starts = _window_starts(task.train_data, steps)
    assert starts[0] == 0
    drawn = [b - a for a, b in zip(starts, starts[1:])]  # the row advances by the drawn length
    assert len(set(drawn)) > 1  # variable BPTT: the lengths differ
    for s, length in zip(steps, drawn):
        assert s["lrs"] == pytest.approx([3.0 * length / 10] * len(s["lrs"]), rel=1e-12)
    # and the optimiser took exactly that step: plain SGD (no momentum) with the configured
    # weight decay, on the clipped gradient, w <- w - lr (g + wd w)
    for s in steps:
        lr = s["lrs"][0]
        for w, g, after in zip(s["before"], s["grads"], s["weights"], strict=True):
            torch.testing.assert_close(after, w - lr * (g + 1e-3 * w), atol=1e-6, rtol=1e-6)
    # the last window may be clipped at the end of the stream: its lr is still that of a
    # drawn length, a whole number of rows no shorter than the window
    last = steps[-1]["lrs"][0] * 10 / 3.0
    assert abs(last - round(last)) < 1e-9 and round(last) >= steps[-1]["words"].shape[0]
    # after the epoch the optimiser holds the base lr again (what the checkpoint stores)
    assert [g["lr"] for g in task.optimizer.param_groups] == [3.0] * len(
        task.optimizer.param_groups)


def test_hidden_state_is_carried_between_windows_and_reset_at_each_epoch(tmp_path, monkeypatch):
    task = build_task(from_dict(config(corpus(tmp_path / "c"))), CPU, DIST)
    spy = Spy(task, monkeypatch)
    for epoch in (0, 1):
        steps = spy.epoch(epoch)
        assert all(float(h.abs().max()) == 0 and float(c.abs().max()) == 0
                   for h, c in steps[0]["hidden"])  # a new epoch starts from the zero state
        for prev, cur in zip(steps, steps[1:]):
            for (h, c), (ph, pc) in zip(cur["hidden"], prev["returned"], strict=True):
                assert float(h.abs().max()) > 0 and float(c.abs().max()) > 0  # not zero
                assert torch.equal(h, ph) and torch.equal(c, pc)  # the previous step's


@pytest.mark.parametrize(("adv_eps", "expected"), [(0.5, True), (0.0, False)])
def test_adv_perturbation_is_trained_when_configured(tmp_path, monkeypatch, adv_eps, expected):
    task = build_task(from_dict(config(corpus(tmp_path / "c", n_train=40),
                                       lm={"adv_eps": adv_eps})), CPU, DIST)
    flags = []
    real = lm_task.train_step

    def spy(*a, adversarial, **kw):
        flags.append(adversarial)
        return real(*a, adversarial=adversarial, **kw)

    monkeypatch.setattr(lm_task, "train_step", spy)
    task.train_epoch(task.model, 0, DIST, False)
    assert flags and set(flags) == {expected}


# --------------------------------------------------------------------------- ASGD

def test_asgd_average_is_the_mean_of_the_iterates_and_is_what_evaluation_keeps(tmp_path,
                                                                             monkeypatch):
    """asgd: switch after epoch 1: averaging starts at epoch 2 (0-based 1). Its average is the
    mean of the weights after each of epoch 2's steps; validation, test and the kept best model
    are those of the averaged weights; training continues from the last raw iterate."""
    cfg = config(corpus(tmp_path / "c"), lm={"asgd": "switch", "switch": 1},
                 optim={"lr": 1.0})
    task = build_task(from_dict(cfg), CPU, DIST)
    spy = Spy(task, monkeypatch)
    spy.epoch(0)
    first = task.evaluate(task.model, 0, DIST)
    assert first["averaging"] is True and task.checkpoint_state()["avg"] is None
    steps = spy.epoch(1)
    iterates = [s["weights"] for s in steps]
    assert len(iterates) >= 5
    state = task.checkpoint_state()
    assert state["avg_count"] == len(iterates)
    average = mean_of(iterates)
    assert_weights_close(state["avg"], average)
    assert max(float((a - b).abs().max()) for a, b in zip(average, iterates[-1])) > 1e-3

    metrics = task.evaluate(task.model, 1, DIST)
    val = reference_loss(task.model, average, task.val_data, 10)
    assert metrics["epoch_val_loss"] == pytest.approx(val, rel=1e-6)
    raw_val = reference_loss(task.model, iterates[-1], task.val_data, 10)
    assert abs(raw_val - val) > 1e-4  # the two weightings are told apart
    # the averaged model improved on epoch 1's, so it is the kept one, and its test loss is
    # the averaged weights' too
    assert metrics["val_loss"] == metrics["epoch_val_loss"] < first["epoch_val_loss"]
    assert metrics["test_loss"] == pytest.approx(
        reference_loss(task.model, average, task.test_data, 10), rel=1e-6)
    best = task.checkpoint_state()["best_model"]
    named = dict(task.model.named_parameters())
    for name, a in zip(named, average, strict=True):
        torch.testing.assert_close(best[name].double(), a, atol=1e-6, rtol=0)
    # evaluation put the raw iterate back: training continues from it, not from the average
    assert_weights_close([p.detach() for p in task.model.parameters()], iterates[-1], atol=0)


def test_finetune_stage_restarts_from_the_best_model_and_averages_afresh(tmp_path, monkeypatch):
    """epochs 3, finetune_epochs [1]: epochs 1-2 are the main stage (averaging after epoch 1),
    epoch 3 a fine-tuning stage: it starts from the kept best model (finetune.py loads it) and
    averages from its first step (ASGD with t0 = 0), its average over its own steps only."""
    cfg = config(corpus(tmp_path / "c"), lm={"asgd": "switch", "switch": 1,
                                             "finetune_epochs": [1]}, optim={"lr": 1.0})
    task = build_task(from_dict(cfg), CPU, DIST)
    spy = Spy(task, monkeypatch)
    for epoch in (0, 1):
        spy.epoch(epoch)
        task.evaluate(task.model, epoch, DIST)
    state = task.checkpoint_state()
    assert state["stage"] == 0 and state["avg_count"] > 0
    best = {k: v.clone() for k, v in state["best_model"].items()}
    raw = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    assert any(not torch.equal(best[k], raw[k]) for k in best)  # best (averaged) != raw

    seen = {}
    real = lm_task.train_step

    def first_step(model, *a, **kw):
        if not seen:
            seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *a, **kw)

    monkeypatch.setattr(lm_task, "train_step", first_step)
    steps = spy.epoch(2)
    for k, v in best.items():
        assert torch.equal(seen[k], v), k  # the stage's first step starts from the best model
    state = task.checkpoint_state()
    assert state["stage"] == 1 and state["averaging"] is True
    assert state["avg_count"] == len(steps)
    assert_weights_close(state["avg"], mean_of([s["weights"] for s in steps]))


# --------------------------------------------------------------------------- NT-ASGD trigger

def _scripted(task, monkeypatch, val_losses: list[float]) -> list[dict]:
    """Run ``task.evaluate`` once per scripted validation loss (no training, no real
    evaluation: the validation stream's loss is the script's, the test stream's 9.0)."""
    script = iter(val_losses)

    def fake_eval(model, source, bptt):
        if source is task.val_data:
            return next(script), 1
        assert source is task.test_data
        return 9.0, 1

    monkeypatch.setattr(lm_task, "evaluate_stream", fake_eval)
    return [task.evaluate(task.model, e, DIST) for e in range(len(val_losses))]


def _nonmono_by_hand(losses: list[float], n: int) -> int | None:
    """awd-lstm-lm main.py: at each epoch, before appending its loss to the history h,
    switch when len(h) > n and loss > min(h[:-n])."""
    for k, loss in enumerate(losses):
        h = losses[:k]
        if len(h) > n and loss > min(h[:-n]):
            return k
    return None


@pytest.mark.parametrize(("losses", "switch_at"), [
    # k=3: 4.2 > min(5.0)? no; k=4: 4.1 > min(5.0, 4.0)? yes
    ([5.0, 4.0, 4.5, 4.2, 4.1, 4.6, 4.7], 4),
    # equal to the old minimum is not worse: k=4 (4.0) no; k=5: 4.3 > 4.0
    ([5.0, 4.0, 4.5, 4.2, 4.0, 4.3, 4.4], 5),
    # steadily better: never
    ([5.0, 4.0, 3.5, 3.2, 3.0, 2.9, 2.8], None),
])
def test_nonmono_trigger_on_a_stubbed_validation_sequence(tmp_path, monkeypatch, losses,
                                                          switch_at):
    assert _nonmono_by_hand(losses, 2) == switch_at  # the hand rule agrees with the comments
    task = build_task(from_dict(config(corpus(tmp_path / "c"),
                                       lm={"asgd": "nonmono", "nonmono": 2})), CPU, DIST)
    out = _scripted(task, monkeypatch, losses)
    expected = [switch_at is not None and k >= switch_at for k in range(len(losses))]
    assert [o["averaging"] for o in out] == expected
    assert [o["epoch_val_loss"] for o in out] == losses
    assert [o["val_loss"] for o in out] == [min(losses[:k + 1]) for k in range(len(losses))]


def test_switch_starts_averaging_after_the_configured_epoch(tmp_path, monkeypatch):
    task = build_task(from_dict(config(corpus(tmp_path / "c"),
                                       lm={"asgd": "switch", "switch": 3})), CPU, DIST)
    out = _scripted(task, monkeypatch, [5.0, 4.0, 3.0, 2.0, 1.0])
    assert [o["averaging"] for o in out] == [False, False, True, True, True]


# --------------------------------------------------------------------------- ADV in selection

def _adv_losses(model, out, targets, eps):
    """Per-token CE of the tied decoder with advsoft's perturbation written out: the target
    logit lowered by eps·|w_y|·|h| where h·w_y > 0, the shift a constant (no gradient)."""
    h = out.reshape(-1, out.shape[-1])
    y = targets.reshape(-1)
    w = model.encoder.weight
    logits = h @ w.t() + model.decoder.bias
    w_y = w[y]
    shift = torch.where((h * w_y).sum(1) > 0,
                        -eps * w_y.norm(dim=1) * h.norm(dim=1), torch.zeros(len(y),
                                                                             dtype=h.dtype))
    # value: logit_y + shift; gradient: d/dh of (h·δ), δ = shift·h/|h|² held constant
    delta = (shift / (h.norm(dim=1) ** 2)).detach()[:, None] * h.detach()
    bump = (h * delta).sum(1)
    logits = logits + F.one_hot(y, logits.shape[1]).to(h.dtype) * bump[:, None]
    return F.cross_entropy(logits, y, reduction="none").view(targets.shape)


def _naive_maxup_adv(model, words, targets, hidden, noise, masks, alpha, beta, eps):
    """Every copy forwarded with gradient through its own materialised (V, E) masked
    embedding; each sequence's worst copy by its ADV loss summed over the window."""
    m, b, _ = masks.shape
    t = words.shape[0]
    outs, raws, per_seq = [], [], []
    for k in range(m):
        emb = torch.stack([F.embedding(words[:, j], masks[k, j].unsqueeze(1)
                                       * model.encoder.weight) for j in range(b)], dim=1)
        x = emb * noise.locked[0]
        for i, rnn in enumerate(model.rnns):
            x, _ = rnn(x, hidden[i], noise.weight[i])
            if i < model.nlayers - 1:
                x = x * noise.locked[i + 1]
        raws.append(x)
        out = x * noise.locked[-1]
        outs.append(out)
        per_seq.append(_adv_losses(model, out, targets, eps).sum(0))
    losses = torch.stack(per_seq)
    chosen = losses.detach().argmax(0)
    out = torch.stack([outs[chosen[j]][:, j] for j in range(b)], dim=1)
    raw = torch.stack([raws[chosen[j]][:, j] for j in range(b)], dim=1)
    ce = torch.stack([losses[chosen[j], j] for j in range(b)]).sum() / (t * b)
    plain = torch.stack([F.cross_entropy(model.decoder(o).reshape(-1, model.vocab_size),
                                         targets.reshape(-1), reduction="none")
                         .view(t, b).sum(0) for o in outs]).detach()
    loss = ce + alpha * out.pow(2).mean() + beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return loss, chosen, plain.argmax(0)


def test_maxup_step_with_adv_matches_a_naive_reference_that_scores_with_adv():
    torch.manual_seed(4)
    v, m, t, b, p, eps = 30, 4, 7, 8, 0.4, 1.5
    model = AWDLSTM(v, emsize=6, nhid=8, nlayers=2, dropout=0.2, dropouth=0.2, dropouti=0.2,
                    dropoute=p, wdrop=0.2, adv_eps=eps).double()
    words = torch.randint(0, v, (t, b))
    targets = torch.randint(0, v, (t, b))
    hidden = [(h.normal_(), c.normal_()) for h, c in model.init_hidden(b)]
    g = torch.Generator().manual_seed(7)
    noise = model.draw_noise(words, g, word_dropout=False)
    masks = (torch.rand(m, b, v, generator=g) >= p).double() / (1 - p)
    scales = torch.stack([masks[k].gather(1, words.t()).t() for k in range(m)])

    model.zero_grad()
    ref_loss, ref_chosen, plain_chosen = _naive_maxup_adv(model, words, targets, hidden, noise,
                                                          masks, 2.0, 1.0, eps)
    # ADV changes which copy is the worst for some sequence: the test can tell them apart
    assert not torch.equal(ref_chosen, plain_chosen)
    ref_loss.backward()
    ref_grads = {n: q.grad.clone() for n, q in model.named_parameters()}

    model.zero_grad()
    step = maxup_step(model, words, targets, hidden, noise, scales, alpha=2.0, beta=1.0,
                      adversarial=True)
    step.loss.backward()
    assert step.wins.tolist() == torch.bincount(ref_chosen, minlength=m).tolist()
    assert float(step.loss.detach()) == pytest.approx(float(ref_loss.detach()), abs=1e-6)
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, ref_grads[n], atol=1e-6, rtol=0, msg=n)
    assert math.isfinite(step.gap) and step.gap > 0

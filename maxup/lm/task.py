"""The language-modelling task of the engine: AWD-LSTM on a corpus, as salesforce/awd-lstm-lm.

One epoch walks the batchified training stream once with variable-length BPTT windows,
carrying the hidden state from window to window (reset at the start of each epoch, as the
reference's ``train()`` does). Each step: MaxUp or plain forward (:mod:`maxup.lm.objective`),
AR/TAR, gradient clipping, SGD with the learning rate scaled by seq_len/bptt, and — once
averaging has started — the running average of the iterates (ASGD with t0 = 0, λ = 0, i.e.
the mean of the weights after every step since the switch).

Averaging starts by NT-ASGD's non-monotone trigger (``lm.asgd: nonmono``), after a fixed epoch
(``switch``, as advsoft), or never (``off``). Once it has started, validation, test and the
kept best model use the averaged weights. Fine-tuning stages (``lm.finetune_epochs``) restart
averaging from the best model so far, as the reference's ``finetune.py`` (the paper restarts
it twice); they are the last epochs of ``train.epochs``.

Exact resume: checkpoints are written at epoch ends, where the hidden state is reset anyway,
and with ``lm.checkpoint_windows`` = N also after every N-th window of an epoch (counted from
the epoch's start, so every rank and every resumed run takes the same decision). Every random
draw of an epoch comes from generators seeded by (seed, epoch, rank). The checkpoint's
``task`` entry holds the rest — the averages and their count, whether averaging is on, the
stage, the validation history NT-ASGD reads, the best model and its perplexities — and, for a
mid-epoch checkpoint, ``partial``: the epoch, the window count and row reached, the
window-length generator's state, and per rank (gathered to the main rank) the hidden state,
the dropout generator's state, the global RNG states (Python, NumPy, torch, the CUDA
device's) and the running sums (loss, tokens, gap, selection counts and time); plus the
epoch's starting weights, optimiser state and averages. A resumed run continues the epoch at
the saved window, each rank from its own entry, bit for bit as an uninterrupted run; a
checkpoint written by another number of ranks restarts the epoch from its starting state
(exact too; the log says so). The checkpoint's ``epoch`` stays the count of finished epochs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from maxup.config import RunConfig
from maxup.data.corpus import Corpus, load_corpus
from maxup.engine.dist import all_reduce_sum
from maxup.engine.nonfinite import NonFiniteLoss
from maxup.engine.progress import Progress
from maxup.engine.rng import derive_seed, rng_states, seed_everything, set_rng_states
from maxup.errors import ConfigError
from maxup.lm.objective import train_step
from maxup.models.awd_lstm import AWDLSTM, count_parameters, lm_token_losses
from maxup.schedule import copies_at

#: A fine-tuning window is at most bptt + this (awd-lstm-lm's finetune.py; main.py has none).
FINETUNE_EXTRA = 10


def batchify(stream: torch.Tensor, columns: int) -> torch.Tensor:
    """Cut a token stream into ``columns`` contiguous sequences (awd-lstm-lm's ``batchify``).

    Args:
        stream: (N,) token ids.
        columns: number of sequences B (the tail that does not fill a row is dropped).

    Returns:
        (N // B, B): column b is the b-th contiguous slice of the stream.
    """
    rows = stream.numel() // columns
    if rows < 2:
        raise ConfigError("train.batch_size", columns,
                          f"at most {stream.numel() // 2} for a stream of {stream.numel()} "
                          "tokens (each column needs 2 tokens)")
    return stream[: rows * columns].view(columns, rows).t().contiguous()


def window(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[i:i+L]`` and next words ``source[i+1:i+1+L]``, L clipped to the end.

    Args:
        source: (N, B) batchified stream.
        i: first row.
        seq_len: wanted length.

    Returns:
        (L, B) inputs and (L, B) targets.
    """
    n = min(seq_len, source.shape[0] - 1 - i)
    return source[i:i + n], source[i + 1:i + 1 + n]


def draw_seq_len(bptt: int, generator: torch.Generator) -> int:
    """Variable BPTT: bptt with probability 0.95 else bptt/2, then N(·, 5), at least 5."""
    base = bptt if float(torch.rand((), generator=generator)) < 0.95 else bptt / 2.0
    return max(5, int(float(torch.empty(()).normal_(base, 5.0, generator=generator))))


def window_len(bptt: int, generator: torch.Generator, stage: int) -> int:
    """The next training window's length: :func:`draw_seq_len`, capped at bptt + 10 in a
    fine-tuning stage (``stage`` > 0; finetune.py caps it, main.py does not)."""
    seq_len = draw_seq_len(bptt, generator)
    return min(seq_len, bptt + FINETUNE_EXTRA) if stage > 0 else seq_len


def count_windows(rows: int, bptt: int, generator: torch.Generator, stage: int) -> int:
    """The windows an epoch over ``rows`` batchified rows takes, drawing the lengths from
    ``generator`` as the training loop does (seeded alike, the same count)."""
    i = n = 0
    while i < rows - 1 - 1:
        i += window_len(bptt, generator, stage)
        n += 1
    return n


@torch.no_grad()
def evaluate_stream(model: AWDLSTM, source: torch.Tensor, bptt: int) -> tuple[float, int]:
    """Total cross-entropy (nats) and token count of a batchified stream, no dropout.

    Args:
        model: the AWD-LSTM (put in eval mode here).
        source: (N, B) batchified split.
        bptt: window length (the hidden state is carried across windows).
    """
    model.eval()
    hidden = model.init_hidden(source.shape[1])
    total, count = 0.0, 0
    for i in range(0, source.shape[0] - 1, bptt):
        words, targets = window(source, i, bptt)
        out, hidden, _ = model(words, hidden)
        total += float(lm_token_losses(model, out, targets).double().sum())
        count += targets.numel()
    return total, count


class LMTask:
    """AWD-LSTM language modelling: the engine's task for a corpus (see the module docstring).

    Args:
        cfg: the run config (``cfg.lm`` set).
        device: training device.
        rank, world_size: this process's data-parallel position; each rank trains
            ``train.batch_size / world_size`` of the columns and gradients are averaged.
    """

    #: The engine wraps the model in DDP for image tasks; this task averages gradients itself
    #: (it calls the model several times per step, and its decoder outside ``forward``).
    ddp = False
    finite_keys = ("epoch_val_loss", "test_loss")
    csv_columns = ("epoch", "lr", "train_loss", "train_ppl", "epoch_val_ppl", "val_ppl",
                   "test_ppl", "dyn_val_ppl", "dyn_test_ppl", "averaging", "stage",
                   "maxup_active", "maxup_m", "maxup_gap",
                   "train_s", "selection_s", "eval_s", "wall_s", "tokens_per_s")

    #: Set by the engine: ``save_mid_epoch(finished_epochs)`` writes the run's checkpoint
    #: (on the main rank) with :meth:`checkpoint_state` holding the partial epoch.
    save_mid_epoch: Callable[[int], None] | None = None
    #: After :meth:`load_checkpoint_state` of a mid-epoch checkpoint: where training resumes.
    resume_note: str | None = None
    #: With ``data.subset``: the subset's size, chapters and unseen shares (the record's).
    subset_facts: dict | None = None

    def __init__(self, cfg: RunConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1, corpus: Corpus | None = None):
        lm = cfg.lm
        self.cfg, self.lm, self.device = cfg, lm, device
        self.rank, self.world_size = rank, world_size
        self.corpus = corpus or load_corpus(cfg.data.name, cfg.data.root, cfg.data.version)
        train = self.corpus.splits["train"]
        if cfg.data.subset is not None:
            # A language model needs contiguous text: the subset is the first N tokens, or
            # (a corpus with a chapter index, KJV v2) whole chapters spread through the split.
            if cfg.data.subset > train.numel():
                raise ConfigError("data.subset", cfg.data.subset,
                                  f"1..{train.numel()} (training tokens of {cfg.data.name} "
                                  f"version {self.corpus.version})")
            train = self.corpus.train_subset(cfg.data.subset)
            self.subset_facts = {
                "tokens": int(train.numel()),
                "chapters": (None if self.corpus.chapters is None
                             else len(self.corpus.subset_chapters(cfg.data.subset))),
                "unseen_after_mapping": self.corpus.unseen_after_mapping(train)}
        if cfg.train.batch_size % world_size:
            # Unequal shards would drop columns, and the mean of the ranks' mean losses would
            # no longer be the global mean (the gradient average assumes equal shapes).
            raise ConfigError("train.batch_size", cfg.train.batch_size,
                              f"a multiple of the {world_size} data-parallel workers "
                              "(each trains an equal share of the columns)")
        full = batchify(train, cfg.train.batch_size)
        per = cfg.train.batch_size // world_size
        self.train_data = full[:, rank * per:(rank + 1) * per].to(device)
        self.val_data = batchify(self.corpus.splits["valid"], lm.eval_batch_size).to(device)
        self.test_data = batchify(self.corpus.splits["test"], lm.test_batch_size).to(device)
        self.model = AWDLSTM(
            self.corpus.vocab_size, emsize=lm.emsize, nhid=lm.nhid, nlayers=lm.nlayers,
            dropout=lm.dropout, dropouth=lm.dropouth, dropouti=lm.dropouti,
            dropoute=lm.dropoute, wdrop=lm.wdrop, adv_eps=lm.adv_eps,
            adv_noise=lm.adv_noise).to(device)
        # awd-lstm-lm: plain SGD (no momentum) with weight decay on every parameter.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr,
                                         weight_decay=cfg.optim.weight_decay)
        main = cfg.train.epochs - sum(lm.finetune_epochs)
        self.stage_starts = [main]
        for e in lm.finetune_epochs[:-1]:
            self.stage_starts.append(self.stage_starts[-1] + e)
        self.state: dict[str, Any] = {
            "averaging": False, "avg_count": 0, "avg": None, "val_history": [],
            "best_val_loss": math.inf, "best_test_loss": None, "best_model": None,
            "best_epoch": None, "stage": 0,
        }
        self._partial: dict | None = None  # the gathered partial epoch, during a mid-epoch save
        self._resume: dict | None = None  # this rank's partial epoch to continue from

    # ------------------------------------------------------------------ checkpoint

    def checkpoint_state(self) -> dict:
        """What a checkpoint must hold beyond model and optimizer (plain data + tensors)."""
        s = dict(self.state)
        s["avg"] = None if s["avg"] is None else [t.detach().cpu() for t in s["avg"]]
        if s["best_model"] is not None:
            s["best_model"] = {k: v.cpu() for k, v in s["best_model"].items()}
        s["val_history"] = list(s["val_history"])
        s["partial"] = self._partial  # None at an epoch end
        return s

    def load_checkpoint_state(self, state: dict | None) -> None:
        """Restore :meth:`checkpoint_state`'s output (a resumed run).

        A mid-epoch checkpoint from as many ranks as this run has: each rank continues from
        its own entry at the next :meth:`train_epoch`. From another number of ranks: the
        weights, optimiser state and averages go back to the epoch's start, which then
        restarts. Either way :attr:`resume_note` says which.
        """
        if not state:
            return
        s = dict(state)
        partial = s.pop("partial", None)
        if s.get("avg") is not None:
            s["avg"] = [t.to(self.device) for t in s["avg"]]
        if s.get("best_model") is not None:
            s["best_model"] = {k: v.to(self.device) for k, v in s["best_model"].items()}
        self.state.update(s)
        if partial is None:
            return
        epoch, ranks = partial["epoch"] + 1, len(partial["ranks"])
        if ranks == self.world_size:
            self._resume = {**partial, "ranks": None, "rank": partial["ranks"][self.rank],
                            "start": partial["start"] if self.rank == 0 else None}
            self.resume_note = (f"epoch {epoch} continues after window {partial['windows']} "
                                f"(row {partial['row']} of {self.train_data.shape[0]})")
            return
        start = partial["start"]
        self.model.load_state_dict(start["model"])
        self.optimizer.load_state_dict(start["optimizer"])
        st = dict(start["state"])
        if st.get("avg") is not None:
            st["avg"] = [t.to(self.device) for t in st["avg"]]
        self.state.update(st)
        self.resume_note = (f"epoch {epoch} restarts from its beginning: its checkpoint after "
                            f"window {partial['windows']} was written by {ranks} rank(s), "
                            f"this run has {self.world_size}")

    def check_resumable(self, model_state: dict, source) -> None:
        """Refuse a checkpoint trained on another vocabulary (one line)."""
        w = model_state.get("encoder.weight")
        if w is not None and w.shape[0] != self.corpus.vocab_size:
            raise ConfigError("data.name", self.cfg.data.name,
                              f"a corpus with the checkpoint's vocabulary of {w.shape[0]} "
                              f"words ({source}); this corpus has {self.corpus.vocab_size}")

    def record_facts(self) -> dict:
        """Facts for the record's environment: the corpus (checksum; with ``data.subset``, the
        subset's size, chapters and the share of each held-out split's tokens it never shows)
        and the model size."""
        corpus = self.corpus.facts()
        if self.subset_facts is not None:
            corpus["subset"] = self.subset_facts
        return {"corpus": corpus, "parameters": count_parameters(self.model)}

    # ------------------------------------------------------------------ training

    def _stage_of(self, epoch: int) -> int:
        return sum(epoch >= s for s in self.stage_starts[: len(self.lm.finetune_epochs)])

    def _start_stage(self, model: nn.Module, stage: int) -> None:
        """A fine-tuning stage: restart averaging from the best model (finetune.py)."""
        if self.state["best_model"] is not None:
            model.load_state_dict(self.state["best_model"])
        self.state.update(stage=stage, averaging=True, avg=None, avg_count=0, val_history=[])

    def _average(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        self.state["avg_count"] += 1
        n = self.state["avg_count"]
        if self.state["avg"] is None or n == 1:
            self.state["avg"] = [p.clone() for p in params]
            return
        for a, p in zip(self.state["avg"], params, strict=True):
            a.add_(p - a, alpha=1.0 / n)

    def train_epoch(self, model: nn.Module, epoch: int, dist, progress: bool) -> dict:
        """One pass over the training stream (0-based ``epoch``); returns its metrics.

        Dropout draws come from a generator seeded by (seed, epoch, rank); the window lengths
        from one seeded by (seed, epoch) alone, so all ranks take the same windows. With
        ``lm.checkpoint_windows`` = N, every N-th window of the epoch is followed by a
        mid-epoch checkpoint (:meth:`_save_partial`); after a resume from one, the epoch
        continues from its saved window and states.

        Args:
            model: the (unwrapped) model.
            epoch: 0-based epoch.
            dist: the engine's ``DistContext``.
            progress: show a progress bar (main rank, terminal only).
        """
        cfg, lm = self.cfg, self.lm
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] != epoch:
            raise RuntimeError(f"the checkpoint's partial epoch is {resume['epoch'] + 1}, "
                               f"not epoch {epoch + 1}")
        stage = self._stage_of(epoch)
        if stage != self.state["stage"]:
            self._start_stage(model, stage)
        epoch_seed = derive_seed(cfg.seed, epoch, dist.rank)
        seed_everything(epoch_seed, self.device)
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(epoch_seed, "lm"))
        len_seed = derive_seed(cfg.seed, epoch, "bptt")
        len_gen = torch.Generator().manual_seed(len_seed)
        windows = count_windows(self.train_data.shape[0], lm.bptt,
                                torch.Generator().manual_seed(len_seed), stage)
        bar = Progress(progress and dist.is_main, windows, epoch + 1, cfg.train.epochs,
                       unit="window")
        m = copies_at(epoch, m=cfg.maxup.m, warmup_epochs=cfg.maxup.warmup_epochs)
        maxup_active = m > 1
        lr = cfg.optim.lr
        data = self.train_data
        hidden = model.init_hidden(data.shape[1])
        distributed = self.world_size > 1 and torch.distributed.is_initialized()
        params = list(model.parameters())
        loss_sum = tokens = 0.0
        gap_sum, steps, selection_s = 0.0, 0, 0.0
        wins = torch.zeros(m, dtype=torch.long)
        i, elapsed, start = 0, 0.0, None
        every = lm.checkpoint_windows if self.save_mid_epoch is not None else 0
        if resume is not None:
            mine = resume["rank"]
            i, steps, start = resume["row"], resume["windows"], resume["start"]
            len_gen.set_state(resume["bptt_generator"])
            gen.set_state(mine["generator"])
            set_rng_states(mine["rng"], self.device)
            hidden = [(h.to(self.device), c.to(self.device)) for h, c in mine["hidden"]]
            loss_sum, tokens, gap_sum = mine["loss_sum"], mine["tokens"], mine["gap_sum"]
            wins, selection_s, elapsed = mine["wins"].clone(), mine["selection_s"], mine["train_s"]
        elif every and dist.is_main:
            start = self._epoch_start(model)
        model.train()
        t0 = time.perf_counter()
        total_rows = data.shape[0]
        while i < total_rows - 1 - 1:
            seq_len = window_len(lm.bptt, len_gen, stage)
            words, targets = window(data, i, seq_len)
            # awd-lstm-lm scales the step by the window's share of bptt (the drawn length).
            for group in self.optimizer.param_groups:
                group["lr"] = lr * seq_len / lm.bptt
            step = train_step(model, words, targets, hidden, gen, m=m, alpha=lm.alpha,
                              beta=lm.beta, adversarial=lm.adv_eps > 0, chunk=cfg.maxup.chunk,
                              per_sequence=lm.mask_per_sequence)
            value = step.raw_loss
            # Distributed, all ranks stop at the same step: one stopping alone would leave the
            # others waiting in the gradient all-reduce until the collective timeout.
            total = (float(all_reduce_sum(torch.tensor([value], dtype=torch.float64),
                                           self.device)) if distributed else value)
            if not math.isfinite(total):
                raise NonFiniteLoss(epoch + 1, steps, value if not math.isfinite(value) else total)
            self.optimizer.zero_grad(set_to_none=True)
            step.loss.backward()
            if distributed:
                # Each rank holds B/world columns; the global loss is the mean of the ranks'
                # means (equal shapes), so the global gradient is the mean of theirs.
                for p in params:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad.div_(self.world_size)
            if lm.clip:
                torch.nn.utils.clip_grad_norm_(params, lm.clip)
            self.optimizer.step()
            if self.state["averaging"]:
                self._average(model)
            hidden = step.hidden
            n = targets.numel()
            loss_sum += value * n
            tokens += n
            gap_sum += step.gap
            wins += step.wins if len(step.wins) == m else 0
            selection_s += step.selection_s
            steps += 1
            i += seq_len
            bar.update(steps, loss_sum / tokens)
            if every and steps % every == 0 and i < total_rows - 1 - 1:
                self._save_partial(epoch, dist, start, {
                    "row": i, "windows": steps, "bptt_generator": len_gen.get_state()}, {
                    "hidden": [(h.detach().cpu(), c.detach().cpu()) for h, c in hidden],
                    "generator": gen.get_state(), "rng": rng_states(self.device),
                    "loss_sum": loss_sum, "tokens": tokens, "gap_sum": gap_sum,
                    "wins": wins.clone(), "selection_s": selection_s,
                    "train_s": elapsed + time.perf_counter() - t0})
        bar.close()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        train_s = elapsed + time.perf_counter() - t0
        if distributed:
            sums = torch.tensor([loss_sum, tokens, gap_sum, steps], dtype=torch.float64)
            loss_sum, tokens, gap_sum, steps = all_reduce_sum(sums, self.device).tolist()
            wins = all_reduce_sum(wins, self.device)  # selections over all columns
        train_loss = loss_sum / max(tokens, 1)
        return {
            "epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
            "train_ppl": math.exp(min(train_loss, 700.0)),
            "maxup_active": maxup_active, "maxup_m": m,
            "maxup_gap": gap_sum / max(steps, 1), "maxup_wins": wins.tolist(),
            "stage": self.state["stage"], "train_s": train_s, "selection_s": selection_s,
            "tokens_per_s": tokens / max(train_s, 1e-9),
            # training time spent before a resume: the engine adds it to the epoch's wall time
            "resumed_s": elapsed,
        }

    def _epoch_start(self, model: nn.Module) -> dict:
        """What restarting this epoch from its beginning needs (on the CPU): the weights, the
        optimiser state and the task state as the epoch's first window finds them."""
        state = {k: v for k, v in self.state.items() if k != "best_model"}  # best: unchanged
        if state["avg"] is not None:
            state["avg"] = [t.detach().cpu().clone() for t in state["avg"]]
        state["val_history"] = list(state["val_history"])
        return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "state": state}

    def _save_partial(self, epoch: int, dist, start: dict | None, shared: dict,
                      mine: dict) -> None:
        """A mid-epoch checkpoint: gather every rank's ``mine`` to the main rank, which saves
        them with the ``shared`` position and the epoch's ``start`` (collective: every rank
        calls it at the same window)."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            ranks = [None] * self.world_size if dist.is_main else None
            torch.distributed.gather_object(mine, ranks, dst=0)
        else:
            ranks = [mine]
        if dist.is_main:
            self._partial = {"epoch": epoch, **shared, "ranks": ranks, "start": start}
        try:
            self.save_mid_epoch(epoch)
        finally:
            self._partial = None

    # ------------------------------------------------------------------ evaluation

    def _with_averaged(self, model: nn.Module):
        """Context: the model holds the averaged weights inside (when averaging)."""
        task = self

        class _Swap:
            def __enter__(self):
                self.saved = None
                if task.state["averaging"] and task.state["avg"] is not None:
                    self.saved = [p.detach().clone() for p in model.parameters()]
                    with torch.no_grad():
                        for p, a in zip(model.parameters(), task.state["avg"], strict=True):
                            p.copy_(a)

            def __exit__(self, *exc):
                if self.saved is not None:
                    with torch.no_grad():
                        for p, s in zip(model.parameters(), self.saved, strict=True):
                            p.copy_(s)
                return False

        return _Swap()

    def evaluate(self, model: nn.Module, epoch: int, dist=None) -> dict:
        """Validation perplexity of this epoch's (averaged) weights, NT-ASGD's bookkeeping,
        and the test perplexity of the best-validation model (recomputed when it changes).

        Metrics: ``epoch_val_loss``/``epoch_val_ppl`` (this epoch's weights); ``val_loss``/
        ``val_ppl`` and ``test_loss``/``test_ppl`` of the kept best-validation model (what the
        reference saves and reports, and what Tables 6/7 show); ``params_m`` (millions of
        parameters, the tables' Params column); ``averaging``; after the last epoch with
        ``lm.dyneval``, ``dyn_val_ppl``/``dyn_test_ppl`` of the best model.
        Every rank evaluates the whole splits (they hold the same weights), so nothing is
        all-reduced.
        """
        lm, st = self.lm, self.state
        with self._with_averaged(model):
            vt, vn = evaluate_stream(model, self.val_data, lm.bptt)
            val_loss = vt / vn
            if val_loss < st["best_val_loss"]:
                tt, tn = evaluate_stream(model, self.test_data, lm.bptt)
                st.update(best_val_loss=val_loss, best_test_loss=tt / tn, best_epoch=epoch + 1,
                          best_model={k: v.detach().clone()
                                      for k, v in model.state_dict().items()})
        if not st["averaging"]:
            hist = st["val_history"]
            trigger = (lm.asgd == "nonmono" and len(hist) > lm.nonmono
                       and val_loss > min(hist[: -lm.nonmono]))
            if lm.asgd == "switch" and lm.switch is not None and epoch + 1 >= lm.switch:
                trigger = True
            if trigger:
                st.update(averaging=True, avg=None, avg_count=0)
        st["val_history"] = [*st["val_history"], val_loss]
        test_loss = st["best_test_loss"] if st["best_test_loss"] is not None else math.nan
        out = {"epoch_val_loss": val_loss, "epoch_val_ppl": _ppl(val_loss),
               "val_loss": st["best_val_loss"], "val_ppl": _ppl(st["best_val_loss"]),
               "test_loss": test_loss, "test_ppl": _ppl(test_loss),
               "best_epoch": st["best_epoch"], "averaging": st["averaging"],
               "params_m": count_parameters(model) / 1e6}
        if lm.dyneval and epoch + 1 == self.cfg.train.epochs:
            out.update(self.dynamic_evaluation(model))
        return out

    def dynamic_evaluation(self, model: nn.Module) -> dict:
        """Dynamic evaluation of the kept best model on validation, then test (the weights
        are restored after each): ``dyn_val_ppl``, ``dyn_test_ppl``, the η and λ used
        (``dyn_lr``, ``dyn_lamb``), ``dyn_s``; with ``lm.dyneval_search`` also the searched
        points, ``dyn_grid`` (``[lr, lamb, validation ppl]`` in search order, on the whole
        validation split or its first 30,000 tokens), chosen as dynamiceval.py's ``--grid``."""
        from maxup.lm.dyneval import (
            GRIDFAST_TOKENS,
            dynamic_eval,
            gradient_statistics,
            grid_search,
            grid_values,
        )

        lm = self.lm
        t0 = time.perf_counter()
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state["best_model"])
        train = batchify(self.corpus.splits["train"], lm.dyneval_batch_size).to(self.device)
        stats = gradient_statistics(model, train, lm.dyneval_bptt, lm.dyneval_batches)
        lr, lamb, out = lm.dyneval_lr, lm.dyneval_lamb, {}
        if lm.dyneval_search != "off":
            val = batchify(self.corpus.splits["valid"], 1).to(self.device)
            if lm.dyneval_search == "gridfast":
                val = val[:GRIDFAST_TOKENS]
            lrs, lambs = grid_values(lm.dyneval_bptt)
            found = grid_search(model, val, stats, epsilon=lm.dyneval_epsilon,
                                bptt=lm.dyneval_bptt, lrs=lrs, lambs=lambs)
            lr, lamb, out["dyn_grid"] = found["lr"], found["lamb"], found["grid"]
        for split in ("valid", "test"):
            data = batchify(self.corpus.splits[split], 1).to(self.device)
            loss = dynamic_eval(model, data, stats, lr=lr, lamb=lamb,
                                epsilon=lm.dyneval_epsilon, bptt=lm.dyneval_bptt)
            out["dyn_val_ppl" if split == "valid" else "dyn_test_ppl"] = _ppl(loss)
            model.load_state_dict(self.state["best_model"])
        model.load_state_dict(saved)
        out.update(dyn_lr=lr, dyn_lamb=lamb, dyn_s=time.perf_counter() - t0)
        return out

    def summary_line(self, m: dict, epochs: int) -> str:
        arm = f"maxup m={m['maxup_m']}" if m["maxup_active"] else "plain"
        avg = " asgd" if m.get("averaging") else ""
        return (f"epoch {m['epoch']:>3}/{epochs}  {arm:<11} stage {m['stage']}{avg}  "
                f"train ppl {m['train_ppl']:.2f}  val ppl {m['epoch_val_ppl']:.2f} "
                f"(best {m['val_ppl']:.2f}, its test {m['test_ppl']:.2f})  "
                f"{m['wall_s']:.1f}s ({m['tokens_per_s']:.0f} tok/s, "
                f"selection {m['selection_s']:.1f}s)")


def _ppl(loss: float | None) -> float:
    if loss is None or not math.isfinite(loss):
        return math.nan if loss is None or math.isnan(loss) else math.inf
    return math.exp(min(loss, 700.0))

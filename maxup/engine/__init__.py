"""The training engine: one loop for a plain process, a Ray Tune trial and a Ray Train worker.

``train(config, out_dir)`` takes a plain config (dict or RunConfig), trains, evaluates every
epoch, checkpoints atomically every ``train.checkpoint_every`` epochs and at the end, writes
the record (docs/records.md), and returns it. The few framework touch-points are arguments:

- ``reporter(metrics, checkpoint_dir)`` is called after every epoch (Tune / Train report);
- ``dist`` says which data-parallel rank this process is (Ray Train sets it up);
- ``record_path`` / ``record_extra`` let the sweep driver place and label the record.

Tasks: image classification and language modelling are two implementations of one small
interface, :class:`Task` (how an epoch trains, how it is evaluated and which metrics must be
finite, what a checkpoint holds beyond model and optimiser, what the record learns about the
data); :func:`build_task` picks one from the config (``lm`` set: :class:`maxup.lm.task.LMTask`,
else :class:`ImageTask`). The loop, checkpoints, exact resume, Ray Train/Tune reporting and
records are the loop's and the same for both.

Exact resume: every source of randomness (data order, augmentation draws, dropout, data-loader
workers) is re-seeded at the start of each epoch from (seed, epoch, rank), and the learning
rate is a pure function of the epoch; so a run restored from the checkpoint of epoch k
continues exactly as an uninterrupted run would, with no RNG state to restore. A task may
also checkpoint inside an epoch (language modelling, ``lm.checkpoint_windows``): the loop hands
it its save function (``task.save_mid_epoch``), and the task's checkpoint entry then holds the
partial epoch — its position, RNG states and running sums — from which it continues.

No hidden global state: that re-seeding uses the process's global Python, NumPy and torch
generators (dropout and data-loader workers draw from them), so ``train`` saves them on entry
and restores them on exit, however it exits; and it never changes torch's thread settings
(the Ray worker and task functions that own their process set those).

Modules: :mod:`~maxup.engine.loop` (``train``), :mod:`~maxup.engine.image` (the image task),
:mod:`~maxup.engine.task` (the task interface), :mod:`~maxup.engine.rng` (seeds and generator
states), :mod:`~maxup.engine.batches`, :mod:`~maxup.engine.dist` (rank, device, all-reduce),
:mod:`~maxup.engine.nonfinite` and :mod:`~maxup.engine.progress`; the learning rate and the
warm-up rule are :mod:`maxup.schedule`'s. Everything a caller or a task needs is importable from
``maxup.engine``.
"""

from maxup.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from maxup.engine.batches import Batches, eval_batches
from maxup.engine.dist import DistContext, all_reduce_sum, resolve_device
from maxup.engine.image import CSV_COLUMNS, ImageTask, Run, build_run, evaluate, train_epoch
from maxup.engine.loop import RESUME_KEYS, Reporter, train
from maxup.engine.nonfinite import NonFiniteLoss, NonFiniteMetric, check_finite
from maxup.engine.progress import Progress
from maxup.engine.rng import (
    derive_seed,
    global_rng_preserved,
    rng_states,
    seed_everything,
    seed_worker,
    set_rng_states,
)
from maxup.engine.task import Task, build_task
from maxup.schedule import copies_at, learning_rate

__all__ = [
    "CHECKPOINT_FORMAT", "CSV_COLUMNS", "RESUME_KEYS", "Batches", "DistContext", "ImageTask",
    "NonFiniteLoss", "NonFiniteMetric", "Progress", "Reporter", "Run", "Task", "all_reduce_sum",
    "build_run", "build_task", "check_finite", "copies_at", "derive_seed", "eval_batches",
    "evaluate", "global_rng_preserved", "learning_rate", "load_checkpoint", "resolve_device",
    "rng_states", "save_checkpoint", "seed_everything", "seed_worker", "set_rng_states", "train",
    "train_epoch",
]

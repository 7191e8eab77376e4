"""Experiment identity: when two runs are the same experiment. The one place this rule lives.

The rule
--------
A run is identified by its resolved config (:func:`maxup.config.to_dict`) with the
*non-identity* settings removed: those that say where, how fast or how verbosely a run happens
(:data:`NON_IDENTITY_KEYS`: data root, data-loading workers, download flag, device,
deterministic arithmetic, compilation, progress display, evaluation batch size, checkpoint
frequencies, start time-out) and the whole post-hoc certification section (:data:`CERTIFY_SECTION`):
certifying the same model with another ``n`` is not another training run. Everything else
changes what training computes and is part of the identity — the seed, the model, the data
subset, every augmentation, MaxUp, optimiser and training-loop setting (workers included: each
rank draws its own data). A key added after trials were stored (:data:`ADDED_KEYS`) is left
out while it holds the value that does what the code did before it existed, so stored records
keep their ids; at any other value it is part of the identity. A config rebuilt from a record
made before such a key existed takes the old value (:func:`as_stored`), not today's default.

- **trial id** — 12 hex digits of sha256 over the canonical JSON (sorted keys, no spaces) of
  the identity config, seed included. Two runs with the same trial id train the same model
  bit for bit; the sweep stores, skips, locks and resumes trials by it, and the analysis
  loader counts each trial id once per sweep.
- **arm id** — the same hash without the seed: the unit one table cell aggregates; its seeds
  are the cell's observations.
- **certification id** — the trial id together with the certification settings: one
  trained model certified with other settings is another certification, not another trial.
- **counterpart arm** — the arm equal to a given one in every key except one ablated key
  (:func:`counterpart_arm_id`), or except a few (:func:`counterpart_of`): a MaxUp arm's
  baseline is its counterpart at ``maxup.m = 1``, a language model's control its counterpart
  at ``maxup.m = 1`` and ``lm.mask_per_sequence = true``, nothing about either pooled.

Nothing else in the project hashes configs; this module imports neither torch nor Ray, so
the analysis package can use it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: Dotted keys that say where, how fast or how verbosely a run executes, not what it trains.
NON_IDENTITY_KEYS: tuple[str, ...] = (
    "data.root",
    "data.num_workers",
    "data.download",
    "train.device",
    "train.deterministic",
    "train.compile",
    "train.compile_mode",
    "train.progress",
    "train.eval_batch_size",
    "train.checkpoint_every",
    "lm.checkpoint_windows",
    "train.start_timeout_s",
)
#: Identity keys added after trials were stored, each with the value that does what the code
#: did before the key existed. At that value the key is left out of the identity (absent and
#: spelled-out are the same trial), so every stored record keeps its id and a sweep planned
#: again finds it; any other value is part of the id as usual.
ADDED_KEYS: dict[str, Any] = {
    "lm.dyneval_search": "off",  # issue 29: validation grid search over eta and lambda
    "lm.mask_per_sequence": False,  # issue 29: per-column word-dropout mask at m = 1
    "data.version": 1,  # issue 29: kjv 2 splits by chapter; every earlier record read version 1
}
#: The config section of post-hoc certification: part of the certification id only.
CERTIFY_SECTION = "certify"
#: The replicate index: in the trial id, not in the arm id.
SEED_KEY = "seed"

ID_LENGTH = 12
_ABSENT = object()


def _digest(obj: Any) -> str:
    canon = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:ID_LENGTH]


def _drop(config: dict, keys: Iterable[str]) -> dict:
    out = copy.deepcopy(config)
    for key in keys:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def identity_config(config: dict) -> dict:
    """The part of a resolved config that defines the trial (a new dict; input untouched).

    Args:
        config: nested resolved run config (``maxup.config.to_dict``).
    """
    out = _drop(config, (*NON_IDENTITY_KEYS, CERTIFY_SECTION))
    at_old_value = []
    for key, old in ADDED_KEYS.items():
        node: Any = out
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT and node == old and type(node) is type(old):
            at_old_value.append(key)
    return _drop(out, at_old_value)


def as_stored(config: dict) -> dict:
    """A stored config as it ran: each :data:`ADDED_KEYS` key it lacks set to the old value.

    A record written before a key existed ran what that value does; a config rebuilt from it
    (``maxup verify``'s rerun) must say so, since a key left out of a fresh config takes its
    current default (``data.version`` 2 for the KJV, where every earlier record is version 1).
    A key whose section the config lacks (``lm`` of an image run) stays absent. The trial id
    is unchanged: at the old value the key is left out of the identity.

    Args:
        config: nested config, as a record or checkpoint stores it (input untouched).
    """
    out = copy.deepcopy(config)
    for key, old in ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = copy.deepcopy(old)
    return out


def trial_id(config: dict) -> str:
    """The trial id of a resolved config (seed included; see the module docstring).

    Args:
        config: nested resolved run config.
    """
    return _digest(identity_config(config))


def arm_id(config: dict) -> str:
    """The arm id: the trial id's rule without the seed.

    Args:
        config: nested resolved run config.
    """
    return _digest(_drop(identity_config(config), (SEED_KEY,)))


def certification_id(config: dict) -> str:
    """The id of one certification of one trial: trial id + the ``certify`` section.

    Args:
        config: nested resolved run config.
    """
    return _digest({"trial": trial_id(config), CERTIFY_SECTION: config.get(CERTIFY_SECTION)})


def with_value(config: dict, key: str, value: Any) -> dict:
    """A copy of ``config`` with the dotted ``key`` set to ``value`` (input untouched).

    Args:
        config: nested resolved run config.
        key: dotted key inside the config (``"maxup.m"``).
        value: the new value.
    """
    from maxup.config import set_dotted

    out = copy.deepcopy(config)
    set_dotted(out, key, value)
    return out


def counterpart_arm_id(config: dict, key: str, value: Any) -> str:
    """The arm id of the arm equal to ``config``'s in every key except ``key`` = ``value``.

    Args:
        config: nested resolved run config.
        key: the ablated dotted key (``"maxup.m"``).
        value: its value in the counterpart (the baseline's ``1``).
    """
    return counterpart_of(config, {key: value})


def counterpart_of(config: dict, changes: Mapping[str, Any]) -> str:
    """The arm id of the arm equal to ``config``'s in every key except those of ``changes``.

    A baseline may differ in more than one key: a language model's per-sequence control is
    ``{"maxup.m": 1, "lm.mask_per_sequence": True}``.

    Args:
        config: nested resolved run config.
        changes: dotted key -> its value in the counterpart.
    """
    out = config
    for key, value in changes.items():
        out = with_value(out, key, value)
    return arm_id(out)


def is_identity_key(key: str) -> bool:
    """Whether a dotted config key (``"maxup.m"``) is part of the trial id.

    Args:
        key: dotted key inside the config (no ``config.`` prefix).
    """
    return key not in NON_IDENTITY_KEYS and key.split(".", 1)[0] != CERTIFY_SECTION


def is_arm_key(key: str) -> bool:
    """Whether a dotted config key defines the arm (identity keys except the seed).

    Args:
        key: dotted key inside the config.
    """
    return key != SEED_KEY and is_identity_key(key)


def identity_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted identity keys whose values differ between two configs (sorted).

    Two configs with no differences have the same trial id; a checkpoint may be resumed
    under any config without differences (another device, data root or certification).

    Args:
        a, b: nested configs.
        prefix: dotted path of ``a`` and ``b`` inside the whole config (for recursion).
    """
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        name = prefix + key
        va, vb = a.get(key), b.get(key)
        if name in ADDED_KEYS:  # absent: the value it had before the key existed
            va = ADDED_KEYS[name] if key not in a else va
            vb = ADDED_KEYS[name] if key not in b else vb
        if isinstance(va, dict) and isinstance(vb, dict):
            out += identity_differences(va, vb, name + ".")
        elif va != vb and is_identity_key(name):
            out.append(name)
    return out

"""Certified accuracy of stored certifications, and Table 8's envelope over settings.

One certification (a record's ``certification`` object, Cohen et al.'s protocol on a sample
of test images) gives a step curve: the share of its images predicted correctly with a
certified l2 radius at least r. A *setting* is one trained configuration certified at one σ:
an arm (:func:`maxup.identity.arm_id`, the config without its seed) together with the
certification σ. Its models are the arm's seeds; its curve is the mean of theirs.

The paper (Section 4.4, after Salman et al. 2019) reports for each method the best result
over its trained classifiers at each radius, one classifier per hyperparameter setting (σ,
and m for MaxUp). With several seeds per setting the envelope here is the best setting's
*mean* over its seeds at each radius, not the best single model over every seed and σ, which
would reward the luckiest seed. Each radius may pick another setting; the table names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from maxup import identity, records
from maxup.analysis.load import completed

NAN = math.nan


def certified_at(cert: dict, radius: float) -> float:
    """Certified accuracy (%) of one certification at l2 ``radius``: from its per-image
    rows (``correct and radius >= r``, Cohen et al.'s ``analyze.py``) when stored, else the
    summary's value at exactly that radius (NaN when neither has it).

    Args:
        cert: a record's certification object.
        radius: the l2 radius.
    """
    rows = cert.get("rows") or []
    if rows:
        try:
            return records.certified_accuracy(rows, [radius])[0]
        except (KeyError, TypeError):  # malformed rows: fall back to the summary
            pass
    for r, a in zip(cert.get("radii") or [], cert.get("certified_accuracy") or []):
        if r is not None and abs(float(r) - radius) < 1e-9 and a is not None:
            return float(a)
    return NAN


def certified_curve(cert: dict, grid: np.ndarray) -> np.ndarray:
    """One model's certified accuracy (%) at each radius of ``grid`` (shape ``(R,)`` ->
    ``(R,)``): the share of its certified images that are correct with a radius at least r
    (Cohen et al.'s curve, a step function of the per-image radii); from the summary's radii
    (read as steps) when the per-image rows are absent."""
    rows = cert.get("rows") or []
    if rows:
        radii = np.array([float(r["radius"]) if r.get("correct") and r.get("radius") is not None
                          else -1.0 for r in rows])
        return 100.0 * (radii[None, :] >= grid[:, None]).sum(axis=1) / len(rows)
    pairs = sorted((float(x), float(y)) for x, y in zip(cert.get("radii") or [],
                                                         cert.get("certified_accuracy") or [])
                   if x is not None and y is not None)
    if not pairs:
        return np.zeros_like(grid)
    r, a = np.array([x for x, _ in pairs]), np.array([y for _, y in pairs])
    idx = np.searchsorted(r, grid, side="right") - 1  # the last summary radius <= r
    return np.where(idx >= 0, a[np.clip(idx, 0, None)], a[0])


def radius_grid(certs) -> np.ndarray:
    """Every radius where some certification's curve steps (and 0), sorted."""
    points = {0.0}
    for cert in certs:
        rows = cert.get("rows") or []
        if rows:
            points.update(float(r["radius"]) for r in rows
                          if r.get("correct") and r.get("radius") is not None)
        else:
            points.update(float(x) for x, y in zip(cert.get("radii") or [],
                                                   cert.get("certified_accuracy") or [])
                          if x is not None and y is not None)
    return np.array(sorted(points))


def images_of(cert: dict) -> int | None:
    """How many test images one certification certified (its per-image rows; None when
    only the summary is stored)."""
    rows = cert.get("rows") or []
    return len(rows) or None


@dataclass
class Setting:
    """One trained configuration certified at one σ, with its models.

    Args:
        arm_id: the arm (config without the seed).
        sigma: the certification's smoothing σ (None when not stored).
        config: the resolved config of one of its trials.
        models: seed -> certification, one per trained model (each certification id once).
    """

    arm_id: str
    sigma: float | None
    config: dict
    models: dict = field(default_factory=dict)

    def at(self, radius: float) -> dict:
        """seed -> certified accuracy (%) at ``radius`` of each model having it."""
        vals = {s: certified_at(c, radius) for s, c in self.models.items()}
        return {s: v for s, v in vals.items() if math.isfinite(v)}

    def curve(self, grid: np.ndarray) -> np.ndarray:
        """The mean over the models of their step curves on ``grid``."""
        return np.mean([certified_curve(c, grid) for c in self.models.values()], axis=0)


def _sigma(cert: dict, config: dict) -> float | None:
    value = cert.get("sigma", (config.get("augment") or {}).get("sigma"))
    return None if value is None else round(float(value), 9)


#: Certification settings that make another protocol (σ is keyed on its own).
_PROTOCOL = ("n0", "n", "alpha", "skip")


def settings(rows: pd.DataFrame) -> list[Setting]:
    """The settings of the completed, certified ``rows``, by certification σ; a trial two
    sweeps certified alike is one model (its certification id counted once)."""
    done = completed(rows)
    if not len(done) or "certification" not in done:
        return []
    seen: set[str] = set()
    out: dict[tuple, Setting] = {}
    for cfg, cert in zip(done["run_config"], done["certification"]):
        if not isinstance(cert, dict) or not isinstance(cfg, dict):
            continue
        key = identity.certification_id(cfg)
        if key in seen:
            continue
        seen.add(key)
        sigma = _sigma(cert, cfg)
        arm = identity.arm_id(cfg)
        # one model certified under two protocols (another n or alpha) is two settings
        protocol = tuple(cert.get(k) for k in _PROTOCOL)
        setting = out.setdefault((arm, sigma, protocol), Setting(arm, sigma, cfg))
        setting.models[cfg.get("seed", len(setting.models))] = cert
    # σ order (then arm id): ties between settings resolve the same way on every load
    return sorted(out.values(), key=lambda s: (s.sigma is None, s.sigma or 0.0, s.arm_id))


def best_at(found: list[Setting], radius: float) -> tuple[Setting, dict] | None:
    """The setting whose mean certified accuracy at ``radius`` is highest (the first of
    :func:`settings`' order, the smallest σ, on ties), with its models' values (seed ->
    %); None when no model has a value."""
    best, best_mean, best_vals = None, -math.inf, {}
    for s in found:
        vals = s.at(radius)
        if vals and (mean := float(np.mean(list(vals.values())))) > best_mean:
            best, best_mean, best_vals = s, mean, vals
    return None if best is None else (best, best_vals)


def envelope_curve(found: list[Setting]) -> tuple[np.ndarray, np.ndarray]:
    """The radius grid of ``found``'s certifications and, on it, the best setting's mean
    certified accuracy at each radius (each radius may pick another setting)."""
    grid = radius_grid([c for s in found for c in s.models.values()])
    return grid, np.max([s.curve(grid) for s in found], axis=0)


def setting_label(setting: Setting, found: list[Setting]) -> str:
    """``"σ = 0.25, m = 4"``: what tells ``setting`` apart from the others in ``found``
    (the certification σ, then each identity key whose value differs among them)."""
    keys: set[str] = set()
    for other in found:
        keys.update(identity.identity_differences(setting.config, other.config))
    keys.discard(identity.SEED_KEY)
    keys.discard("augment.sigma")  # the certification σ stands for it
    parts = [f"σ = {setting.sigma:g}"] if setting.sigma is not None else []
    for key in sorted(keys):
        node = setting.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        parts.append(f"{key.split('.')[-1]} = {node:g}" if isinstance(node, int | float)
                     and not isinstance(node, bool) else f"{key.split('.')[-1]} = {node}")
    return ", ".join(parts)

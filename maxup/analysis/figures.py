"""The paper's figures from stored records (matplotlib, Agg backend; PNG and PDF).

- accuracy vs m with 95% CI error bars, one line per architecture (any sweep varying m);
- certified accuracy vs l2 radius, one curve per method (Table 8's upper envelope);
- training curves: per-arm mean test accuracy / test loss vs epoch with a 95% CI band.
"""

from __future__ import annotations

import io
import math
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from maxup.analysis.load import completed  # noqa: E402
from maxup.analysis.specs import has_certification  # noqa: E402
from maxup.analysis.stats import aggregate, arm_columns  # noqa: E402
from maxup.io import atomic_write_bytes  # noqa: E402

MAX_CURVE_ARMS = 10
METHOD_LABELS = {"baseline": "Gaussian aug. (m = 1)", "maxup": "MaxUp+Gauss"}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "results"


def _save(fig, out_dir: str, stem: str) -> list[str]:
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight")
        path = os.path.join(out_dir, f"{stem}.{ext}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def _half_width(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    std, n = np.asarray(std, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(n >= 2, sps.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
        half = t * std / np.sqrt(n)
    return np.nan_to_num(half, nan=0.0)


def _label(keys: list[str], values: tuple) -> str:
    parts = []
    for k, v in zip(keys, values):
        short = k.removeprefix("config.")
        short = "m" if short == "maxup.m" else short
        parts.append(str(v) if short == "model.name" else f"{short}={v}")
    return ", ".join(parts) or "all"


def _sweeps(done: pd.DataFrame):
    sweeps = done["sweep"] if "sweep" in done else pd.Series(None, index=done.index)
    for name in sorted({s for s in sweeps.dropna().unique()}, key=str):
        yield str(name), done[sweeps == name]
    if sweeps.isna().any():
        yield "single runs", done[sweeps.isna()]


def plot_accuracy_vs_m(df: pd.DataFrame, out_dir: str, name: str,
                       metric: str = "final.test_acc") -> list[str]:
    """Accuracy vs MaxUp sample size m, 95% CI error bars, one line per architecture/arm.

    Args:
        df: records of one sweep (completed ones are used).
        out_dir: where ``acc_vs_m_<name>.png/.pdf`` go.
        name: the sweep name (title and file name).
        metric: the accuracy column.
    """
    done = completed(df)
    if "config.maxup.m" not in done or done["config.maxup.m"].nunique() < 2:
        return []
    others = [c for c in arm_columns(done) if c != "config.maxup.m"]
    agg = aggregate(done, metric, by=[*others, "config.maxup.m"])
    agg = agg[agg["n"] > 0]
    if agg.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    groups = agg.groupby(others, dropna=False, sort=True) if others else [((), agg)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("config.maxup.m")
        ax.errorbar(g["config.maxup.m"], g["mean"], yerr=_half_width(g["std"], g["n"]),
                    marker="o", capsize=3, label=_label(others, key))
    ax.set_xscale("log")
    ms = sorted(agg["config.maxup.m"].unique())
    ax.set_xticks(ms)
    ax.set_xticklabels([str(int(m)) if float(m).is_integer() else str(m) for m in ms])
    ax.set_xlabel("MaxUp sample size m (copies per example)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{name}: test accuracy vs m (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, f"acc_vs_m_{_safe(name)}")


def _method(df: pd.DataFrame) -> pd.Series:
    m = df["config.maxup.m"] if "config.maxup.m" in df else pd.Series(1, index=df.index)
    return pd.Series(np.where(m == 1, "baseline", "maxup"), index=df.index)


def certified_envelope(df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, the radii and the best certified accuracy over its models at each radius.

    Args:
        df: records (completed ones carrying ``certification`` are used).
    """
    done = completed(df)
    done = done[has_certification(done)] if len(done) else done
    out = {}
    for method, g in done.groupby(_method(done)):
        best: dict[float, float] = {}
        for cert in g["certification"]:
            for r, a in zip(cert.get("radii") or [], cert.get("certified_accuracy") or []):
                if r is None or a is None:
                    continue
                r = round(float(r), 9)
                best[r] = max(best.get(r, -math.inf), float(a))
        radii = np.array(sorted(best))
        out[method] = (radii, np.array([best[r] for r in radii]))
    return out


def plot_certified(df: pd.DataFrame, out_dir: str, name: str = "certified") -> list[str]:
    """Certified accuracy vs l2 radius, one curve per method (Table 8 envelope).

    Args:
        df: records with ``certification``.
        out_dir: where ``certified_accuracy.png/.pdf`` go.
        name: text naming the sweeps in the title.
    """
    env = certified_envelope(df)
    if not env:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, (radii, acc) in sorted(env.items()):
        ax.plot(radii, acc, marker="o", drawstyle="default", label=METHOD_LABELS[method])
    ax.set_xlabel("ℓ2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title(f"{name}: certified accuracy vs radius (best model per method)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "certified_accuracy")


def _curve(histories: list[list], key: str):
    """Epochs, mean, CI half-width of ``key`` over seeds (each epoch over the seeds having it)."""
    per_epoch: dict[int, list[float]] = {}
    for hist in histories:
        for row in hist or []:
            v, e = row.get(key), row.get("epoch")
            if v is None or e is None:
                continue
            per_epoch.setdefault(int(e), []).append(float(v))
    epochs = np.array(sorted(per_epoch))
    if epochs.size == 0:
        return None
    vals = [np.asarray(per_epoch[e]) for e in epochs]
    mean = np.array([v.mean() for v in vals])
    std = np.array([v.std(ddof=1) if v.size > 1 else np.nan for v in vals])
    n = np.array([v.size for v in vals])
    return epochs, mean, _half_width(std, n)


def plot_training_curves(df: pd.DataFrame, out_dir: str, name: str) -> list[str]:
    """Test accuracy and test loss vs epoch, per arm: mean over seeds with a 95% CI band.

    Args:
        df: records of one sweep (completed ones with a history are used).
        out_dir: where ``curves_<name>.png/.pdf`` go.
        name: the sweep name.
    """
    done = completed(df)
    if "history" not in done or not done["history"].map(bool).any():
        return []
    arms = arm_columns(done)
    groups = list(done.groupby(arms, dropna=False, sort=True)) if arms else [((), done)]
    shown = groups[:MAX_CURVE_ARMS]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    drew = False
    for key, g in shown:
        key = key if isinstance(key, tuple) else (key,)
        label = _label(arms, key) + f" (n={len(g)})"
        for ax, metric in zip(axes, ("test_acc", "test_loss")):
            c = _curve(list(g["history"]), metric)
            if c is None:
                continue
            epochs, mean, half = c
            (line,) = ax.plot(epochs, mean, label=label)
            ax.fill_between(epochs, mean - half, mean + half, alpha=0.2,
                            color=line.get_color())
            drew = True
    if not drew:
        plt.close(fig)
        return []
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("test loss (nats)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
            break
    more = f" (first {MAX_CURVE_ARMS} of {len(groups)} arms)" if len(groups) > len(shown) else ""
    fig.suptitle(f"{name}: training curves, mean over seeds with 95% CI{more}")
    return _save(fig, out_dir, f"curves_{_safe(name)}")


def write_figures(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[str]:
    """Write every figure the records can fill; return the written paths (PNG and PDF).

    Args:
        df: a frame from :func:`maxup.analysis.load_records`.
        out_dir: output directory (created).
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    done = completed(df)
    paths: list[str] = []
    for name, g in _sweeps(done):
        paths += plot_accuracy_vs_m(g, out_dir, name)
        paths += plot_training_curves(g, out_dir, name)
    if len(done) and has_certification(done).any():
        names = sorted({str(s) for s in done.loc[has_certification(done), "sweep"].dropna()})
        paths += plot_certified(done, out_dir, ", ".join(names) or "single runs")
    return paths

"""The paper's figures from stored records (matplotlib, Agg backend; PNG and PDF).

- accuracy vs m with 95% CI error bars, one line per architecture (any sweep varying m);
- certified accuracy vs l2 radius per sweep, one step curve per method over the per-image
  radii (Table 8's envelope over settings, one σ and configuration each, of per-setting means);
- training curves: per-arm mean test accuracy / test loss vs epoch with a 95% CI band.

Every figure labels arms in the tables' words (``ResNet-110, σ = 0.25, m = 4``), gives each
method one colour in all figures (:func:`m_colour`: m = 1 grey, each MaxUp m its own; other
settings differ by line style), states n, and claims no interval where n = 1. Figures are
sized for a paper (one column, 3.4 in; two panels across both, 7 in), written at 300 dpi
with TrueType fonts in PDF (:data:`STYLE`), titled by what they show (the sweep's name is
in the file name only), and accuracy vs m shows every seed as a point.
"""

from __future__ import annotations

import functools
import io
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from maxup.analysis.certified import envelope_curve, settings  # noqa: E402
from maxup.analysis.load import completed  # noqa: E402
from maxup.analysis.specs import SPECS, has_certification  # noqa: E402
from maxup.analysis.stats import aggregate, arm_columns  # noqa: E402
from maxup.io import atomic_write_bytes  # noqa: E402
from maxup.records import is_lm_history  # noqa: E402

MAX_CURVE_ARMS = 10
METHOD_LABELS = {"baseline": "Gaussian aug. (m = 1)", "maxup": "MaxUp+Gauss"}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "results"


#: What each figure is written as, unless the caller asks for fewer.
FORMATS = ("png", "pdf")


#: What a venue takes: TrueType (Type 42) fonts in PDF and PostScript (many reject Type 3),
#: 300 dpi bitmaps, one-column width (3.4 in) for single plots, full width for two panels.
STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 8, "axes.titlesize": 8,
         "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "figure.titlesize": 8}
DPI = 300
COLUMN = (3.4, 2.6)  # inches: one column
FULL = (7.0, 2.6)  # inches: both columns (two panels)


def _styled(plot):
    """Draw all of ``plot`` under :data:`STYLE`: a title, label or legend takes its font size
    when it is made, so the style must hold while the function draws, not only at save."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return wrapper


def _figure(size=COLUMN, panels: int = 1):
    with matplotlib.rc_context(STYLE):
        return plt.subplots(1, panels, figsize=size)


def _save(fig, out_dir: str, stem: str, formats: tuple[str, ...] = FORMATS) -> list[str]:
    paths = []
    for ext in formats:
        buf = io.BytesIO()
        with matplotlib.rc_context(STYLE):
            fig.savefig(buf, format=ext, dpi=DPI, bbox_inches="tight")
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


#: How a config key is named in a legend (the paper's symbols); others: their last part.
KEY_NAMES = {"maxup.m": "m", "augment.sigma": "σ", "optim.lr": "lr",
             "augment.cutout_size": "Cutout", "train.epochs": "epochs",
             "data.subset": "subset", "model.name": ""}
#: Display names of the models no paper table names.
EXTRA_MODEL_NAMES = {"small_cnn": "small CNN", "mlp": "MLP", "awd_lstm": "AWD-LSTM"}
#: One colour per method in every figure: the m = 1 baseline grey, each MaxUp m its own.
M_COLOURS = {1: "#595959", 2: "#3182bd", 4: "#e6550d", 8: "#31a354", 10: "#756bb1",
             20: "#d6616b"}
OTHER_COLOUR = "#8c6d31"
#: Line styles tell apart arms of one method (another σ or architecture), never colours.
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _model_names() -> dict[str, str]:
    names = dict(EXTRA_MODEL_NAMES)
    for spec in SPECS.values():
        for axis in (spec.rows, spec.cols):
            if axis.key == "config.model.name":
                names.update({str(v): str(label) for v, label in axis.values})
    return names


MODEL_NAMES = _model_names()


def _fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def _label(keys: list[str], values: tuple) -> str:
    """An arm's legend text in the paper's words: ``ResNet-110, σ = 0.25, m = 4``."""
    parts = []
    for k, v in zip(keys, values):
        short = k.removeprefix("config.")
        name = KEY_NAMES.get(short, short.rsplit(".", 1)[-1])
        if short == "model.name":
            parts.append(MODEL_NAMES.get(str(v), str(v)))
        else:
            parts.append(f"{name} = {_fmt_value(v)}")
    return ", ".join(parts)


def m_colour(m) -> str:
    """The colour of MaxUp with ``m`` copies (m = 1: the baseline) in every figure."""
    try:
        return M_COLOURS.get(int(m), OTHER_COLOUR)
    except (TypeError, ValueError):
        return OTHER_COLOUR


def _n_text(n) -> str:
    n = sorted({int(x) for x in n})
    if not n:
        return ""
    span = str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"
    return f"n = {span} seeds"


def _band_text(n) -> str:
    """Title words for what the bars or bands are: no interval claimed where n = 1."""
    n = [int(x) for x in n]
    if n and max(n) >= 2:
        return f"mean and 95 % CI, {_n_text(n)}"
    return "mean of 1 seed, no interval" if n else "mean"


def _sweeps(done: pd.DataFrame):
    sweeps = done["sweep"] if "sweep" in done else pd.Series(None, index=done.index)
    for name in sorted({s for s in sweeps.dropna().unique()}, key=str):
        yield str(name), done[sweeps == name]
    if sweeps.isna().any():
        yield "single runs", done[sweeps.isna()]


@_styled
def plot_accuracy_vs_m(df: pd.DataFrame, out_dir: str, name: str,
                       metric: str = "final.test_acc",
                       formats: tuple[str, ...] = FORMATS) -> list[str]:
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
    fig, ax = _figure()
    groups = list(agg.groupby(others, dropna=False, sort=True)) if others else [((), agg)]
    seeds = (list(done.groupby(others, dropna=False, sort=True)) if others
             else [((), done)])
    # Seeds' points nudged apart per line on the log axis, so lines do not hide each other's.
    spread = 1.04 ** np.linspace(-1, 1, len(groups)) if len(groups) > 1 else [1.0]
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("config.maxup.m")
        # Every seed as a point, the mean with its 95 % CI over them; a line joins the means
        # only where there are at least three m values to join.
        each = seeds[i][1]
        ax.scatter(each["config.maxup.m"] * spread[i], each[metric], s=6, color="0.55",
                   alpha=0.8, zorder=1, linewidths=0)
        # Lines are arms of other settings (x is m itself), so they differ by style, in
        # black: colours stay reserved for methods (m) across figures.
        ax.errorbar(g["config.maxup.m"], g["mean"],
                    yerr=_half_width(g["std"], g["n"]), marker=MARKERS[i % len(MARKERS)],
                    markersize=4, linestyle=STYLES[i % len(STYLES)] if len(g) >= 3 else "none",
                    color="black", capsize=2, zorder=2, label=_label(others, key) or None)
    ax.set_xscale("log")
    ms = sorted(agg["config.maxup.m"].unique())
    ax.set_xticks(ms)
    ax.set_xticklabels([_fmt_value(float(m)) for m in ms])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("MaxUp sample size m (copies per example)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"test accuracy vs m ({_band_text(agg['n'])}; dots: seeds)")
    ax.grid(alpha=0.3)
    if others:
        ax.legend()
    return _save(fig, out_dir, f"acc_vs_m_{_safe(name)}", formats)


def _method(df: pd.DataFrame) -> pd.Series:
    m = df["config.maxup.m"] if "config.maxup.m" in df else pd.Series(1, index=df.index)
    return pd.Series(np.where(m == 1, "baseline", "maxup"), index=df.index)


def certified_envelope(df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, the radius grid and Table 8's envelope on it: for each setting (one σ,
    one configuration) the mean over its models of their step curves, then the best setting
    at each radius (:func:`maxup.analysis.certified.envelope_curve`).

    Args:
        df: records (completed ones carrying ``certification`` are used).
    """
    done = completed(df)
    done = done[has_certification(done)] if len(done) else done
    return {method: envelope_curve(settings(g)) for method, g in done.groupby(_method(done))}


@_styled
def plot_certified(df: pd.DataFrame, out_dir: str, name: str = "certified",
                   formats: tuple[str, ...] = FORMATS) -> list[str]:
    """Certified accuracy vs l2 radius, one step curve per method: the envelope over settings of
    the per-setting mean curves (:func:`certified_envelope`), as Table 8.

    The x-axis ends a little after the largest radius any method certifies (beyond it every
    curve is zero).

    Args:
        df: records with ``certification`` (one sweep's, so that files do not collide).
        out_dir: where ``certified_<name>.png/.pdf`` go.
        name: the sweep's name (file name).
    """
    env = certified_envelope(df)
    if not env:
        return []
    done = completed(df)
    fig, ax = _figure()
    last = 0.0
    for method, (radii, acc) in sorted(env.items()):
        ms = done.loc[_method(done) == method, "config.maxup.m"].unique() \
            if "config.maxup.m" in done else [1]
        colour = m_colour(ms[0]) if len(ms) == 1 else OTHER_COLOUR
        ax.step(radii, acc, where="post", color=colour, label=METHOD_LABELS[method])
        if (acc > 0).any():
            last = max(last, float(radii[acc > 0].max()))
    radii = np.unique(np.concatenate([r for r, _ in env.values()]))
    step = float(np.diff(radii).min()) if radii.size > 1 else 0.25
    step = max(step, 0.05 * max(last, 0.25))
    ax.set_xlim(-0.05 * (last + step), last + step * 1.05)
    ax.set_xlabel("ℓ2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title("certified accuracy, best setting per radius")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")  # the curves fall from the top left to the right
    return _save(fig, out_dir, f"certified_{_safe(name)}", formats)


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


#: The two panels of the training curves: (history key, axis label). A language model's
#: history has no accuracy; its per-epoch validation perplexity (of that epoch's model, not
#: the best so far) and training perplexity take the panels.
CURVE_PANELS = {"image": (("test_acc", "test accuracy (%)"), ("test_loss", "test loss (nats)")),
                "lm": (("epoch_val_ppl", "validation perplexity"),
                       ("train_ppl", "training perplexity"))}


def _panels(histories) -> tuple[tuple[str, str], ...]:
    lm = any(is_lm_history(hist or []) for hist in histories)
    return CURVE_PANELS["lm" if lm else "image"]


@_styled
def plot_training_curves(df: pd.DataFrame, out_dir: str, name: str,
                         formats: tuple[str, ...] = FORMATS) -> list[str]:
    """Per arm, two metrics vs epoch (:data:`CURVE_PANELS`: test accuracy and loss; for a
    language model validation and training perplexity): mean over seeds, 95% CI band.

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
    others = [c for c in arms if c != "config.maxup.m"]
    styles: dict[tuple, str] = {}
    panels = _panels(done["history"])
    fig, axes = _figure(FULL, panels=2)
    drew = False
    for key, g in shown:
        key = key if isinstance(key, tuple) else (key,)
        values = dict(zip(arms, key))
        label = f"{_label(arms, key) or name} (n = {len(g)})"
        m = values.get("config.maxup.m", g["config.maxup.m"].iloc[0]
                       if "config.maxup.m" in g else 1)
        rest = tuple(_fmt_value(values[c]) for c in others)
        style = styles.setdefault(rest, STYLES[len(styles) % len(STYLES)])
        for ax, (metric, _) in zip(axes, panels, strict=True):
            c = _curve(list(g["history"]), metric)
            if c is None:
                continue
            epochs, mean, half = c
            (line,) = ax.plot(epochs, mean, label=label, color=m_colour(m), linestyle=style)
            ax.fill_between(epochs, mean - half, mean + half, alpha=0.15,
                            color=line.get_color())
            drew = True
    if not drew:
        plt.close(fig)
        return []
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.set_ylabel(ylabel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # One legend for both panels (the same arms, the same colours), beside them.
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes
                            if ax.get_legend_handles_labels()[0]), ([], []))
    fig.subplots_adjust(right=0.74, wspace=0.3)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.75, 0.5))
    more = f" (first {MAX_CURVE_ARMS} of {len(groups)} arms)" if len(groups) > len(shown) else ""
    fig.suptitle(f"training curves ({_band_text([len(g) for _, g in shown])}){more}")
    return _save(fig, out_dir, f"curves_{_safe(name)}", formats)


def write_figures(df: pd.DataFrame, out_dir: str | os.PathLike,
                  formats: tuple[str, ...] = FORMATS) -> list[str]:
    """Write every figure the records can fill; return the written paths (PNG and PDF).

    Args:
        df: a frame from :func:`maxup.analysis.load_records`.
        out_dir: output directory (created).
        formats: the file types each figure is written as (default PNG and PDF; each
            ``plot_*`` function takes the same keyword).
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    done = completed(df)
    paths: list[str] = []
    for name, g in _sweeps(done):
        paths += plot_accuracy_vs_m(g, out_dir, name, formats=formats)
        paths += plot_training_curves(g, out_dir, name, formats=formats)
        if has_certification(g).any():
            paths += plot_certified(g, out_dir, name, formats=formats)
    return paths

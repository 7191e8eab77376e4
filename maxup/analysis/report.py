"""A reproduction report: one Markdown document regenerated from stored sweeps.

``build_report(root)`` reads every sweep under a storage root (its manifests and the
content-addressed trials, :mod:`maxup.store`, read once) and returns the document: per sweep its
description, the exact command that produced it and how to rerun it, its measured compute
(the sum of its trials' own wall times, each trial once) and the machine the records name,
then its tables (mean ± std, n, 95 % CI, Δ with its CI and p against the matching baseline:
the paired t-test over common seeds, else Welch's), a plain-words verdict for every compared
arm (a language model's also against its per-sequence m = 1 control), and links to its
figures.

The text depends on the stored records only (no clock, no absolute paths, sorted output), so
regenerating it from unchanged records gives the same bytes: ``tests/test_reproduction.py``
compares the shipped ``REPRODUCTION.md`` with a fresh build, and a change to the analysis that
alters a published number fails until the document is regenerated (``maxup report``).
Imports neither torch nor Ray; matplotlib only when figures are drawn.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from maxup import store
from maxup.analysis.arms import CONTROL, REFERENCE, arms_of, compare
from maxup.analysis.load import completed, frame_of, unique_trials
from maxup.analysis.stats import ALPHA, PAIRED, POWER
from maxup.analysis.tables import Cell, render, sweep_table, tables_for
from maxup.io import atomic_write_text
from maxup.records import provenance

#: Per-sweep file with how it was run (:data:`maxup.store.SWEEP_RUN`).
RUN_FILE = store.SWEEP_RUN


def sweep_names(root: str | os.PathLike) -> list[str]:
    """The sweeps stored under ``root`` (folders holding a manifest), sorted."""
    return store.Storage(root).sweep_names()


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{x:.{digits}f}"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _arm_words(row: pd.Series, keys: list[str]) -> str:
    parts = [f"{k.removeprefix('config.')} = {_value(row[k])}" for k in keys
             if k != "config.maxup.m" and k in row]
    return ", ".join([f"m = {_value(row['config.maxup.m'])}", *parts])


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def verdicts(df: pd.DataFrame, metric: str, lower_is_better: bool) -> list[str]:
    """One sentence per arm compared with its m = 1 counterpart, and per language-model arm
    compared with its per-sequence m = 1 control, in plain words.

    The test is the paired t-test over the seeds both arms finished when they share at least
    two, else Welch's (:func:`maxup.analysis.arms.difference`); the sentence names it, with
    Δ's 95 % CI. An arm "beats" its baseline only when the difference has the right sign and
    the two-sided p is below :data:`ALPHA`; where no test is possible (fewer than two seeds,
    no variance) the sentence says so and why; seeds of either arm outside the means
    (diverged, failed, running, corrupt, not run) are named. A tested comparison ends with
    its sensitivity: the smallest difference the same test would detect with 80 % power at
    the spread observed, so "no significant difference" says how large a difference was
    ruled out.

    Args:
        df: one sweep's records.
        metric: the compared column (``final.test_acc``, ``final.test_ppl``).
        lower_is_better: the metric's direction.
    """
    cells = {a.arm_id: Cell.of_arm(a) for a in arms_of(df, metric)}
    out = []
    for baseline, name in ((REFERENCE, "its m = 1 baseline"),
                           (CONTROL, "its per-sequence m = 1 control")):
        cmp = compare(df, metric, baseline)
        keys = [c for c in cmp.columns if c.startswith("config.")]
        for _, r in cmp.iterrows():
            out.append(_verdict(r, keys, name, lower_is_better, cells))
    return out


def _verdict(r: pd.Series, keys: list[str], name: str, lower_is_better: bool,
             cells: dict) -> str:
    better = r["diff"] < 0 if lower_is_better else r["diff"] > 0
    tested = math.isfinite(r["p_value"])
    significant = tested and r["p_value"] < ALPHA
    paired = r["test"] == PAIRED
    if not tested:
        word = f"cannot be compared with {name} (no test possible: {r['undefined']})"
    elif better and significant:
        word = f"beats {name}"
    elif significant:
        word = f"is worse than {name}"
    else:
        word = f"does not beat {name} (no significant difference)"
    ci = (f", 95 % CI [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}]"
          if math.isfinite(r["diff_ci_low"]) else "")
    if paired:
        test = ("paired t-test" + (f" p = {_p(r['p_value'])}" if tested else "")
                + f" over {int(r['n_pairs'])} common seeds")
    else:
        test = f"Welch p = {_p(r['p_value'])}" if tested else "no Welch test"
    seeds = "; ".join(part for part in (_others("this arm", cells.get(r["arm_id"])),
                                        _others("the baseline", cells.get(r["base_arm_id"])))
                      if part)
    return (f"- {_arm_words(r, keys)} {word}: {_fmt(r['mean'])} vs {_fmt(r['base_mean'])} "
            f"(Δ = {r['diff']:+.2f}{ci}, {test}, n = {int(r['n'])} vs {int(r['base_n'])}"
            f"{'; ' + seeds if seeds else ''}).{_sensitivity(r)}")


def _sensitivity(r: pd.Series) -> str:
    """`` Sensitivity: 80 % power for |Δ| ≥ 0.31 (0.37 % of the baseline).``: the smallest
    true difference this test, with these seeds and the spread observed, would find at
    :data:`ALPHA` (:func:`maxup.analysis.stats.detectable_difference`); ``""`` untested."""
    d = r.get("detectable", math.nan)
    if not math.isfinite(d):
        return ""
    base = abs(r["base_mean"])
    rel = f" ({100 * d / base:.2g} % of the baseline)" if base > 0 else ""
    return f" Sensitivity: {100 * POWER:.0f} % power for |Δ| ≥ {d:.2f}{rel}."


def _others(who: str, cell: Cell | None) -> str:
    """``"this arm: 1 diverged"``: the seeds of an arm outside its mean, or ``""``."""
    if cell is None or not cell.others:
        return ""
    return f"{who}: {cell.counts_text().split('; ', 1)[1]}"


def _machine(done: pd.DataFrame) -> str:
    def values(col: str, width: int | None = None) -> str:
        found = done[col].dropna() if col in done else []
        return ", ".join(sorted({str(v)[:width] for v in found})) or "?"

    return (f"device {values('environment.device')}, {values('environment.cpu_count')} CPU "
            f"cores, torch {values('environment.torch')}, Python {values('environment.python')}"
            f", maxup {values('environment.maxup')} at commit "
            f"{values('environment.git_commit', 10)}")


def _provenance(done: pd.DataFrame) -> str:
    """Each distinct provenance (records.provenance) of the trials, with how many share it."""
    prefix = "environment."
    cols = [c for c in done.columns if c.startswith(prefix)]
    groups: dict[str, int] = {}
    for _, row in unique_trials(done)[cols].iterrows():
        env = {c[len(prefix):]: row[c] for c in cols}
        line = provenance(env)
        groups[line] = groups.get(line, 0) + 1
    if len(groups) == 1:
        return next(iter(groups))
    return " / ".join(f"{n} trial{'s' if n != 1 else ''}: {line}"
                      for line, n in groups.items()) or "?"


def _wall_min(done: pd.DataFrame) -> float:
    return float(done["timings.wall_s"].sum()) / 60 if "timings.wall_s" in done else math.nan


def _compute(sweep: pd.DataFrame, frame: pd.DataFrame, name: str) -> str:
    done = unique_trials(completed(sweep))
    others = frame[(frame["sweep"] != name) & frame["trial_id"].isin(done["trial_id"])]
    shared = set(others["trial_id"])
    text = (f"{len(done)} completed trials, {_fmt(_wall_min(done), 1)} min of trial compute "
            "(the sum of the records' own wall times)")
    if shared:
        text += (f"; {len(shared)} of them also belong to "
                 f"{', '.join(sorted({str(s) for s in others['sweep']}))} (trained once)")
    return text


def _sweep_section(root: Path, manifest: store.SweepManifest, frame: pd.DataFrame,
                   figures: dict[str, list[str]]) -> list[str]:
    name = manifest.name
    run_file = root / name / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    df = frame[frame["sweep"] == name]
    done = completed(df)
    lines = [f"## {name}", "", manifest.description or "", ""]
    if manifest.overrides:
        lines += [f"Run with overrides of its space file (the description above is the file's "
                  f"and does not include them): `{manifest.override_args()}`.", ""]
    command = manifest.command or run.get("command") or " ".join(
        filter(None, (f"maxup sweep {manifest.source} --storage {root.name}",
                      manifest.override_args())))
    lines += ["```bash", command, "```", ""]
    lines.append(f"- Compute: {_compute(df, frame, name)}.")
    if run.get("wall_s") is not None:
        lines.append(f"- Wall clock of the sweep's driver: {_fmt(run['wall_s'] / 60, 1)} min"
                     f"{' (' + run['note'] + ')' if run.get('note') else ''}.")
    if run.get("cpu"):
        lines.append(f"- Machine: {run['cpu']}; {_machine(done)}.")
    else:
        lines.append(f"- Machine: {_machine(done)}.")
    lines.append(f"- Provenance: {_provenance(done)}.")
    lines.append("")
    tables = tables_for(df)
    if not any(t.id == "sweep" for t in tables):
        tables.append(sweep_table(df, name, frame=df))
    for table in tables:
        lines += [render(table, "md").rstrip("\n"), ""]
    sweep = next(t for t in tables if t.id == "sweep")
    metric, lower = str(sweep.columns[0].key), sweep.columns[0].lower_is_better
    said = verdicts(df, metric, lower)
    if said:
        lines += [f"Verdicts on `{metric}` (α = {ALPHA}, two-sided):", "", *said, ""]
    for path in figures.get(name, []):
        stem = Path(path).stem.replace("_", " ")
        lines += [f"![{stem}]({path})", ""]
    return lines


def build_report(root: str | os.PathLike, figures_dir: str | os.PathLike | None = None,
                 link_prefix: str = "") -> str:
    """The reproduction document of every sweep under ``root``.

    Args:
        root: a storage root (sweep manifests and trials, :mod:`maxup.store`).
        figures_dir: where each sweep's PNG figures are drawn (``<figures_dir>/<sweep>/``);
            None: no figures, no links.
        link_prefix: prefix of the figure links (the figures folder relative to the
            document).

    Returns:
        The Markdown text (ends with a newline).
    """
    root = Path(root)
    view = store.read_view(root)  # read once: the tables, counts and manifests below
    frame = frame_of(view)
    names = list(view.sweeps)
    figures: dict[str, list[str]] = {}
    if figures_dir is not None:
        from maxup.analysis.figures import write_figures

        for name in names:
            # The document links PNGs; PDFs would only grow the repository.
            paths = write_figures(frame[frame["sweep"] == name], Path(figures_dir) / name,
                                  formats=("png",))
            figures[name] = sorted(f"{link_prefix}{name}/{Path(p).name}" for p in paths)
    trials = unique_trials(frame)
    seeds = sorted({int(n) for n in trials.groupby("arm_id")["seed"].nunique()})
    lines = ["# Reproduction", "",
             "Real results of this platform, stored as its own records under "
             f"`{root.name}/` ({len(trials)} trials across {len(names)} sweeps; seeds per "
             f"arm: {', '.join(map(str, seeds))}; {_fmt(_wall_min(trials), 1)} min of trial "
             "compute in all, each trial counted once). Every number below is regenerated "
             "from those records by",
             "", "```bash", f"maxup report {root.name} --out REPRODUCTION.md", "```", "",
             "and " + ("`tests/test_reproduction.py` fails when this file and the records "
                       "disagree. " if _is_shipped(root) else
                       "the same records always give the same document. ") + "`maxup tables "
             f"{root.name}/<sweep>` shows any one sweep's tables offline. Cells: mean ± std "
             "over seeds (n finished seeds); 95 % CI: Student t; Δ and p: an arm against its "
             "m = 1 counterpart, equal to it in every other setting (a language model's also "
             "against its per-sequence m = 1 control), by the paired t-test over the seeds "
             "both arms finished where they share at least two (one seed gives both the same "
             "initialisation, data subset and order, and a language model's BPTT window "
             "lengths), else by Welch's t-test.", ""]
    for name in names:
        lines += _sweep_section(root, view.sweeps[name].manifest, frame, figures)
    return "\n".join(lines).rstrip("\n") + "\n"


def _is_shipped(root: Path) -> bool:
    """Whether ``root`` is this repository's ``reproduction/`` (the records a test checks)."""
    shipped = Path(__file__).resolve().parents[2] / "reproduction"
    try:
        return root.resolve() == shipped
    except OSError:
        return False


def write_report(root: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Write the document to ``out`` and its figures to ``<out's folder>/<root name>/figures``.

    Args:
        root: the storage root.
        out: the Markdown file to write.

    Returns:
        The written paths (the document first).
    """
    out = Path(out)
    fig_rel = f"{Path(root).name}/figures/"
    fig_dir = out.parent / fig_rel
    text = build_report(root, fig_dir, link_prefix=fig_rel)
    atomic_write_text(out, text)
    return [str(out), *sorted(str(p) for p in fig_dir.rglob("*.png"))]

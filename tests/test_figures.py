"""Figures a paper can take: human labels, one colour per method in every figure, clean log-m
ticks, no interval claimed at n = 1, one certified figure per sweep without a flat tail.
Checked through the figure objects (texts, colours, limits), not their pixels."""

from __future__ import annotations

import matplotlib.colors as mcolors
import pytest
from test_analysis import RADII, certified_records, make_record, restamp, write_all

from maxup.analysis import load_records


@pytest.fixture
def figures_of(monkeypatch):
    """stem -> the matplotlib Figure as write_figures saves it (then saved as usual)."""
    from maxup.analysis import figures

    captured, save = {}, figures._save

    def spy(fig, out_dir, stem, *formats):
        captured[stem] = {
            "size": tuple(fig.get_size_inches()),
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "fig_legends": [[t.get_text() for t in lg.get_texts()] for lg in fig.legends],
            "axes": [{
                "title": ax.get_title(),
                "legend": [t.get_text() for t in ax.get_legend().get_texts()]
                if ax.get_legend() else [],
                "lines": {ln.get_label(): (mcolors.to_hex(ln.get_color()), ln.get_linestyle())
                          for ln in ax.get_lines() if not ln.get_label().startswith("_")},
                "errorbar_labels": [c.get_label() for c in ax.containers if c.has_yerr],
                "major": [t.get_text() for t in ax.get_xticklabels()],
                "minor": [t.get_text() for t in ax.get_xticklabels(minor=True)],
                "xlim": ax.get_xlim(),
                "ylabel": ax.get_ylabel(),
                "ydata": {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()
                          if not ln.get_label().startswith("_")},
                "xdata": {ln.get_label(): list(ln.get_xdata()) for ln in ax.get_lines()
                          if not ln.get_label().startswith("_")},
                "drawstyle": {ln.get_label(): ln.get_drawstyle() for ln in ax.get_lines()
                              if not ln.get_label().startswith("_")},
                "points": [list(map(tuple, c.get_offsets())) for c in ax.collections
                           if c.__class__.__name__ == "PathCollection"],
                "font_sizes": {"title": ax.title.get_fontsize(),
                               "xlabel": ax.xaxis.label.get_fontsize(),
                               "ylabel": ax.yaxis.label.get_fontsize(),
                               "xticks": {t.get_fontsize() for t in ax.get_xticklabels()},
                               "legend": {t.get_fontsize() for t in ax.get_legend().get_texts()}
                               if ax.get_legend() else set()},
            } for ax in fig.axes]}
        return save(fig, out_dir, stem, *formats)

    monkeypatch.setattr(figures, "_save", spy)

    def draw(recs, tmp_path):
        from maxup.analysis import write_figures

        write_figures(load_records(write_all(tmp_path / "res", recs)), tmp_path / "figs")
        return captured

    return draw


def _sigma_records(sweep="g", seeds=3, ms=(1, 2, 4, 8), certified=None, lr=0.1):
    recs = []
    for sigma in (0.25, 0.5):
        for m in ms:
            for s in range(seeds):
                rec = make_record(80.0 + m * 0.1 + s * 0.3, seed=s, m=m, sweep=sweep,
                                  dataset="digits", model="small_cnn", ops=["gaussian"],
                                  certified=None if certified is None else certified(m, sigma))
                rec["config"]["augment"]["sigma"] = sigma
                rec["config"]["optim"]["lr"] = lr
                rec["axes"]["augment.sigma"] = sigma
                recs.append(restamp(rec))
    return recs


def test_log_m_axis_has_only_the_m_ticks_and_human_legend(figures_of, tmp_path):
    figs = figures_of(_sigma_records(), tmp_path)
    (ax,) = figs["acc_vs_m_g"]["axes"]
    assert ax["major"] == ["1", "2", "4", "8"]
    assert not any(ax["minor"]), ax["minor"]  # no "2×10⁰" minor labels
    assert ax["legend"] == ["σ = 0.25", "σ = 0.5"]
    assert "95 % CI" in ax["title"] and "n = 3 seeds" in ax["title"]


def test_curves_one_legend_for_both_panels_colour_by_method_style_by_sigma(figures_of,
                                                                           tmp_path):
    from maxup.analysis.figures import M_COLOURS

    figs = figures_of(_sigma_records(), tmp_path)
    curves = figs["curves_g"]
    (legend,) = curves["fig_legends"]
    assert len(legend) == 8 and "σ = 0.25, m = 4 (n = 3)" in legend
    assert all(not ax["legend"] for ax in curves["axes"])  # not on one panel only
    for ax in curves["axes"]:
        lines = ax["lines"]
        for m in (1, 2, 4, 8):
            a, b = lines[f"σ = 0.25, m = {m} (n = 3)"], lines[f"σ = 0.5, m = {m} (n = 3)"]
            assert a[0] == b[0] == M_COLOURS[m]  # one colour per method
            assert a[1] != b[1]  # the other setting told apart by line style
    assert "all" not in " ".join(legend) and "augment.sigma" not in " ".join(legend)


def test_single_seed_claims_no_interval(figures_of, tmp_path):
    figs = figures_of(_sigma_records(seeds=1), tmp_path)
    (ax,) = figs["acc_vs_m_g"]["axes"]
    assert "95 % CI" not in ax["title"] and "1 seed, no interval" in ax["title"]
    assert "95 % CI" not in figs["curves_g"]["suptitle"]


def test_no_legend_entry_says_all_for_a_single_line(figures_of, tmp_path):
    recs = [make_record(80.0 + m + s * 0.2, seed=s, m=m, sweep="q", dataset="digits")
            for m in (1, 4) for s in range(2)]
    figs = figures_of(recs, tmp_path)
    (ax,) = figs["acc_vs_m_q"]["axes"]
    assert ax["legend"] == [] and ax["errorbar_labels"] in ([], ["_nolegend_"], [None]) \
        or all(not lab.startswith("all") for lab in ax["errorbar_labels"])
    assert figs["curves_q"]["fig_legends"] == [["m = 1 (n = 2)", "m = 4 (n = 2)"]]


def test_certified_figure_per_sweep_same_colours_and_no_flat_tail(figures_of, tmp_path):
    from maxup.analysis.figures import M_COLOURS

    def certified(m, sigma):  # zero from r = 1.25 on: the x-axis ends at 1.25 + a margin
        return [90 - 20 * i + 5 * (m > 1) if i < 5 else 0 for i in range(len(RADII))]

    recs = (_sigma_records("a", ms=(1, 4), certified=certified)
            + _sigma_records("b", ms=(1, 4), certified=certified, lr=0.05))
    figs = figures_of(recs, tmp_path)
    assert {"certified_a", "certified_b"} <= set(figs)  # a second sweep does not overwrite
    (ax,) = figs["certified_a"]["axes"]
    assert "a:" not in ax["title"]  # the sweep's name is in the file name, not the title
    lines = ax["lines"]
    assert lines["Gaussian aug. (m = 1)"][0] == M_COLOURS[1]
    assert lines["MaxUp+Gauss"][0] == M_COLOURS[4]
    # the same method has the same colour in the training curves
    curve_lines = figs["curves_a"]["axes"][0]["lines"]
    assert curve_lines["σ = 0.25, m = 4 (n = 3)"][0] == M_COLOURS[4]
    last_nonzero, step = RADII[4], RADII[1] - RADII[0]
    assert last_nonzero < ax["xlim"][1] <= last_nonzero + 1.1 * step


def test_regression_titles_labels_and_legends_take_the_papers_font_sizes(figures_of,
                                                                        tmp_path):
    """Issue 27, item 9: the style (8-pt titles and labels, 7-pt ticks and legends) held only
    while a figure was made and saved, not while it was drawn, so titles came out at 12 pt
    and legends at 10 pt, wider than the one-column figure. Every figure now draws in it."""
    from maxup.analysis.figures import STYLE

    def certified(m, sigma):
        return [90 - 20 * i + 5 * (m > 1) if i < 5 else 0 for i in range(len(RADII))]

    figs = figures_of(_sigma_records("a", ms=(1, 4), certified=certified), tmp_path)
    assert {"certified_a", "curves_a", "acc_vs_m_a"} <= set(figs)
    for stem, fig in figs.items():
        for ax in fig["axes"]:
            sizes = ax["font_sizes"]
            assert sizes["title"] == STYLE["axes.titlesize"], stem
            assert sizes["xlabel"] == sizes["ylabel"] == STYLE["axes.labelsize"], stem
            assert sizes["xticks"] <= {STYLE["xtick.labelsize"]}, stem
            assert sizes["legend"] <= {STYLE["legend.fontsize"]}, stem


def test_regression_lm_curves_plot_perplexities_not_an_empty_accuracy_panel(figures_of,
                                                                           tmp_path):
    """A language model's history has no test_acc: its curves showed an empty accuracy
    panel. They plot each epoch's validation perplexity and the training perplexity."""
    recs = []
    for m in (1, 2):
        for s in range(2):
            rec = make_record(None, seed=s, m=m, sweep="lm", dataset="digits", model="mlp")
            history = [{"epoch": e, "epoch_val_ppl": 500.0 / e + 10 * m + s,
                        "val_ppl": 500.0 / e, "test_ppl": 480.0 / e,
                        "train_ppl": 600.0 / e - s, "test_loss": 6.0} for e in (1, 2, 3)]
            rec.update(history=history, final=dict(history[-1]), best=dict(history[-1]))
            recs.append(restamp(rec))
    curves = figures_of(recs, tmp_path)["curves_lm"]
    val, train = curves["axes"]
    assert (val["ylabel"], train["ylabel"]) == ("validation perplexity", "training perplexity")
    # means over the two seeds of each arm, epoch by epoch
    assert val["ydata"]["m = 2 (n = 2)"] == pytest.approx([500.0 / e + 20.5 for e in (1, 2, 3)])
    assert train["ydata"]["m = 1 (n = 2)"] == pytest.approx([600.0 / e - 0.5 for e in (1, 2, 3)])


def test_regression_figures_are_camera_ready(figures_of, tmp_path):
    """Issue 27, item 9: PDFs used Type 3 fonts (many venues reject them), 5.5 × 4 in was too
    wide for a column, PNGs were 120 dpi and titles showed internal sweep names. Now:
    TrueType fonts, one column (3.4 in) for one plot, 300 dpi, titles without the name."""
    import re

    figs = figures_of(_sigma_records(sweep="internal_name"), tmp_path)
    assert figs["acc_vs_m_internal_name"]["size"] == (3.4, 2.6)
    assert figs["curves_internal_name"]["size"] == (7.0, 2.6)
    for fig in figs.values():
        titles = [ax["title"] for ax in fig["axes"]] + [fig["suptitle"]]
        assert not any("internal_name" in t for t in titles), titles
    pdf = (tmp_path / "figs" / "acc_vs_m_internal_name.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType embedded, no Type 3
    png = (tmp_path / "figs" / "acc_vs_m_internal_name.png").read_bytes()
    (ppm,) = re.findall(rb"pHYs(.{4})", png)  # pixels per metre, as the PNG states it
    assert round(int.from_bytes(ppm, "big") * 0.0254) == 300


def test_regression_accuracy_vs_m_shows_every_seed(figures_of, tmp_path):
    """It drew a line through two means and hid the seeds: each seed is now a point, and
    two m values are not joined by a line."""
    recs = [make_record(80.0 + m + s * 0.5, seed=s, m=m, sweep="q", dataset="digits")
            for m in (1, 4) for s in range(3)]
    figs = figures_of(recs, tmp_path)
    (ax,) = figs["acc_vs_m_q"]["axes"]
    (points,) = ax["points"]
    df = load_records(tmp_path / "res")  # each seed's stored final accuracy
    want = sorted(zip(df["config.maxup.m"].astype(float), df["final.test_acc"]))
    got = sorted((float(x), float(y)) for x, y in points)
    assert [x for x, _ in got] == [x for x, _ in want]
    assert [y for _, y in got] == pytest.approx([y for _, y in want])
    assert len(points) == 6
    assert "seeds" in ax["title"]


def test_regression_certified_figure_is_a_step_curve_of_per_sigma_means(figures_of, tmp_path):
    """Issue 27, items 9-10: the certified-accuracy figure joined 5 radii with straight lines,
    stopped at r = 1 and took the best model over every seed and σ. Now each method is a step
    curve over the per-image radii: for each σ the mean over its models of the share of
    images correct with a radius >= r, then the best σ at each r (computed here by hand)."""
    import numpy as np

    # per (m, sigma, seed): the certified radii of 4 images (None: wrong or abstained)
    radii = {(1, 0.25, 0): [0.1, 0.3, None, 0.6], (1, 0.25, 1): [0.2, None, None, 0.9],
             (1, 0.5, 0): [0.5, 1.4, None, None], (1, 0.5, 1): [0.7, 1.1, 0.2, None],
             (4, 0.25, 0): [0.3, 0.4, 0.5, None], (4, 0.25, 1): [0.35, 0.8, None, None],
             (4, 0.5, 0): [1.2, None, None, None], (4, 0.5, 1): [1.6, 0.9, None, None]}
    figs = figures_of(certified_records(radii, sweep="c"), tmp_path)
    (ax,) = figs["certified_c"]["axes"]
    for m, label in ((1, "Gaussian aug. (m = 1)"), (4, "MaxUp+Gauss")):
        xs, ys = ax["xdata"][label], ax["ydata"][label]
        assert ax["drawstyle"][label] == "steps-post"
        for r, y in zip(xs, ys, strict=True):
            best = max(np.mean([100 * sum(x is not None and x >= r for x in radii[m, s, k]) / 4
                                for k in (0, 1)]) for s in (0.25, 0.5))
            assert y == pytest.approx(best), (label, r)
        # every per-image radius of the method is a step, and the curve reaches the last one
        assert {r for (mm, _, _), rs in radii.items() if mm == m for r in rs
                if r is not None} <= set(xs)

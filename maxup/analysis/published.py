"""The paper's published numbers (Gong et al. 2020, Tables 1-8), transcribed as data.

Source: /work/shared/paper/maxup-paper.txt. Every number is copied as printed; nothing is derived.
Cells are keyed by ``(row value, column value)`` in the same vocabulary as the table specs in
:mod:`maxup.analysis.specs`: the method key is ``"baseline"`` (standard augmentation, m = 1) or
``"maxup"`` (m > 1); models use the ``maxup.models`` registry names; metric columns use record
column names. Rows the platform does not reproduce (other papers' methods) are kept in
:data:`REFERENCE_ROWS` with their printed labels.

Notes on the transcription:
- Table 1's header reads "Top-1 error / Top-5 error" but the values (76.3 ... 94.2) are
  accuracies in percent; they are stored as accuracies (``final.test_acc`` / ``final.test_top5``).
- Table 8's "Cohen et al. (2019)" row is Gaussian data augmentation (the m = 1 arm of
  MaxUp+Gauss); "Ours" is MaxUp+Gauss; "Salman et al. (2019)" (PGD smoothing) is reference only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published cell: the value (percent or perplexity) and, where printed, the std."""

    value: float
    std: float | None = None


P = Published
#: Table 8's columns: the l2 radii 0.25, 0.5, ..., 2.75 (Cohen et al.'s 60 % is at r = 0.25,
#: MaxUp's 15 % at r = 2.75).
RADII = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75)

_T8 = {
    "Cohen et al. (2019)": (60, 43, 34, 23, 17, 14, 12, 10, 8, 6, 4),
    "Salman et al. (2019)": (74, 57, 48, 38, 33, 29, 25, 19, 17, 14, 12),
    "Ours": (74, 57, 49, 40, 35, 31, 27, 22, 19, 17, 15),
}

#: table id -> {(row, column): Published}
PUBLISHED: dict[str, dict[tuple, Published]] = {
    "1": {
        ("baseline", "final.test_acc"): P(78.6), ("baseline", "final.test_top5"): P(94.0),
        ("maxup", "final.test_acc"): P(78.9), ("maxup", "final.test_top5"): P(94.2),
    },
    "2": {
        ("resnet101", "baseline"): P(79.83), ("resnet101", "maxup"): P(80.26),
        ("proxyless_cpu", "baseline"): P(75.32), ("proxyless_cpu", "maxup"): P(75.65),
        ("proxyless_gpu", "baseline"): P(75.08), ("proxyless_gpu", "maxup"): P(75.42),
        ("proxyless_mobile", "baseline"): P(76.71), ("proxyless_mobile", "maxup"): P(77.17),
        ("efficientnet_b7", "baseline"): P(85.22), ("efficientnet_b7", "maxup"): P(85.45),
        ("fix_efficientnet_b8", "baseline"): P(85.57), ("fix_efficientnet_b8", "maxup"): P(85.80),
    },
    "3": {
        ("resnet110", "baseline"): P(94.84, 0.11), ("resnet110", "maxup"): P(95.41, 0.08),
        ("preact_resnet110", "baseline"): P(95.02, 0.15),
        ("preact_resnet110", "maxup"): P(95.52, 0.06),
        ("wrn28_10", "baseline"): P(96.92, 0.16), ("wrn28_10", "maxup"): P(97.18, 0.06),
    },
    "4": {
        ("resnet110", "baseline"): P(73.64, 0.15), ("resnet110", "maxup"): P(75.26, 0.21),
        ("preact_resnet110", "baseline"): P(74.37, 0.13),
        ("preact_resnet110", "maxup"): P(75.63, 0.26),
        ("wrn28_10", "baseline"): P(81.59, 0.27), ("wrn28_10", "maxup"): P(82.48, 0.23),
    },
    "5": {
        (1, "resnet110"): P(73.64, 0.15), (1, "wrn28_10"): P(81.59, 0.27),
        (4, "resnet110"): P(75.26, 0.21), (4, "wrn28_10"): P(81.82, 0.22),
        (10, "resnet110"): P(75.19, 0.13), (10, "wrn28_10"): P(82.48, 0.23),
        (20, "resnet110"): P(74.37, 0.18), (20, "wrn28_10"): P(82.43, 0.24),
    },
    # Tables 6/7: ADV-AWD-LSTM without dynamic evaluation (baseline) vs + MaxUp.
    "6": {
        ("baseline", "final.val_ppl"): P(57.15), ("baseline", "final.test_ppl"): P(55.01),
        ("maxup", "final.val_ppl"): P(56.25), ("maxup", "final.test_ppl"): P(54.27),
        ("baseline", "final.dyn_val_ppl"): P(51.60), ("baseline", "final.dyn_test_ppl"): P(51.10),
        ("maxup", "final.dyn_val_ppl"): P(50.83), ("maxup", "final.dyn_test_ppl"): P(50.29),
    },
    "7": {
        ("baseline", "final.val_ppl"): P(63.68), ("baseline", "final.test_ppl"): P(61.34),
        ("maxup", "final.val_ppl"): P(62.48), ("maxup", "final.test_ppl"): P(60.19),
        ("baseline", "final.dyn_val_ppl"): P(42.36), ("baseline", "final.dyn_test_ppl"): P(40.53),
        ("maxup", "final.dyn_val_ppl"): P(41.29), ("maxup", "final.dyn_test_ppl"): P(39.61),
    },
    "8": {
        **{("baseline", r): P(float(v)) for r, v in zip(RADII, _T8["Cohen et al. (2019)"])},
        **{("maxup", r): P(float(v)) for r, v in zip(RADII, _T8["Ours"])},
    },
}

#: table id -> [(printed row label, {column: value or None})] for every printed row, including
#: the rows of other methods the platform does not reproduce.
REFERENCE_ROWS: dict[str, list[tuple[str, dict]]] = {
    "1": [(label, {"final.test_acc": t1, "final.test_top5": t5}) for label, t1, t5 in (
        ("Vanilla (He et al., 2016a)", 76.3, None),
        ("Dropout (Srivastava et al., 2014)", 76.8, 93.4),
        ("DropPath (Larsson et al., 2017)", 77.1, 93.5),
        ("Manifold Mixup (Verma et al., 2019)", 77.5, 93.8),
        ("AutoAugment (Cubuk et al., 2019a)", 77.6, 93.8),
        ("Mixup (Zhang et al., 2018)", 77.9, 93.9),
        ("DropBlock (Ghiasi et al., 2018)", 78.3, 94.1),
        ("CutMix (Yun et al., 2019)", 78.6, 94.0),
        ("MaxUp+CutMix", 78.9, 94.2),
    )],
    "2": [(label, {"size": size, "flops": flops, "baseline": a, "maxup": b})
          for label, size, flops, a, b in (
        ("ResNet-101", "44.55M", "7.85G", 79.83, 80.26),
        ("ProxylessNet-CPU", "7.12M", "481M", 75.32, 75.65),
        ("ProxylessNet-GPU", "4.36M", "470M", 75.08, 75.42),
        ("ProxylessNet-Mobile", "6.86M", "603M", 76.71, 77.17),
        ("EfficientNet-B7", "66.35M", "38.20G", 85.22, 85.45),
        ("Fix-EfficientNet-B8", "87.42M", "101.79G", 85.57, 85.80),
    )],
    "6": [(label, {"params": params, "final.val_ppl": v, "final.test_ppl": t})
          for label, params, v, t in (
        ("NAS-RNN (Zoph and Le, 2017)", "54M", None, 62.40),
        ("AWD-LSTM (Merity et al., 2018)", "24M", 58.50, 56.50),
        ("AWD-LSTM + FRAGE (Gong et al., 2018)", "24M", 58.10, 56.10),
        ("AWD-LSTM + MoS (Yang et al., 2018)", "22M", 56.54, 54.44),
        ("ADV-AWD-LSTM (Wang et al., 2019), w/o dynamic evaluation", "24M", 57.15, 55.01),
        ("ADV-AWD-LSTM + MaxUp, w/o dynamic evaluation", "24M", 56.25, 54.27),
        ("ADV-AWD-LSTM (Wang et al., 2019), + dynamic evaluation", "24M", 51.60, 51.10),
        ("ADV-AWD-LSTM + MaxUp, + dynamic evaluation", "24M", 50.83, 50.29),
    )],
    "7": [(label, {"params": params, "final.val_ppl": v, "final.test_ppl": t})
          for label, params, v, t in (
        ("AWD-LSTM (Merity et al., 2018)", "33M", 68.60, 65.80),
        ("AWD-LSTM + FRAGE (Gong et al., 2018)", "33M", 66.50, 63.40),
        ("AWD-LSTM + MoS (Yang et al., 2018)", "35M", 63.88, 61.45),
        ("ADV-AWD-LSTM (Wang et al., 2019), w/o dynamic evaluation", "33M", 63.68, 61.34),
        ("ADV-AWD-LSTM + MaxUp, w/o dynamic evaluation", "33M", 62.48, 60.19),
        ("ADV-AWD-LSTM (Wang et al., 2019), + dynamic evaluation", "33M", 42.36, 40.53),
        ("ADV-AWD-LSTM + MaxUp, + dynamic evaluation", "33M", 41.29, 39.61),
    )],
    "8": [(label, dict(zip(RADII, map(float, vals)))) for label, vals in _T8.items()],
}
# Tables 3-5 print only the reproduced rows; their reference rows are the cells above.


def published(table_id: str, row, column) -> Published | None:
    """The published value of one cell, or None when the paper prints none.

    Args:
        table_id: ``"1"`` ... ``"8"``.
        row: the row value in the spec's vocabulary (model name, method key, m, ...).
        column: the column value (method key, model name, metric column, radius).
    """
    cells = PUBLISHED.get(str(table_id), {})
    if isinstance(column, float):
        column = round(column, 6)
    return cells.get((row, column))

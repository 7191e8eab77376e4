"""Declarative specs of the paper's tables: which records, which rows/columns, which metric.

Each table is one :class:`TableSpec`; :func:`maxup.analysis.tables.build_table` regenerates it
from stored records (in the style of locuslab/smoothing's ``analyze.py``). Axis keys are record
columns (``"config.model.name"``, ``"config.maxup.m"``) or one of the derived keys:

- ``"method"``: ``"baseline"`` when ``config.maxup.m == 1`` (standard augmentation),
  ``"control"`` when it is also ``config.lm.mask_per_sequence`` (a language model's m = 1 with
  one word-dropout mask per sequence), else ``"maxup"``;
- ``"metric"``: the columns are metrics (record column names), e.g. valid/test perplexity;
- ``"radius"``: certified-accuracy radii read from each record's ``certification``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from maxup.analysis.published import RADII

METHOD = "method"
METRIC = "metric"
RADIUS = "radius"
#: The ablation of every MaxUp table: ``maxup.m``, whose baseline value 1 is plain augmentation.
M_ABLATION = ("maxup.m", 1)
#: The paper's CIFAR protocol (Section 4.2): 200 epochs, batch 256, the full training set.
CIFAR_PROTOCOL = {"train.epochs": 200, "train.batch_size": 256, "data.subset": None}

CIFAR_MODELS = (("resnet110", "ResNet-110"), ("preact_resnet110", "PreAct-ResNet-110"),
                ("wrn28_10", "WideResNet-28-10"))


@dataclass(frozen=True)
class Axis:
    """One table axis: the key it is read from and its declared values (in order) with labels.

    Args:
        key: a record column, or ``"method"`` / ``"metric"`` / ``"radius"``.
        values: ``(value, label)`` pairs, shown in this order even when no record fills them.
        title: header of the row-label column (row axis only).
        extra: also show values present in the records but not declared (after the declared).
    """

    key: str
    values: tuple[tuple, ...] = ()
    title: str = ""
    extra: bool = True

    def label(self, value) -> str:
        """The printed label of ``value`` (the value itself when not declared)."""
        for v, lab in self.values:
            if v == value:
                return lab
        return str(value)


@dataclass(frozen=True)
class TableSpec:
    """A paper table, regenerated from records.

    Args:
        id: the paper's table number as a string.
        title: printed caption.
        filter: records frame -> boolean mask of the records this table reads.
        rows: the row axis.
        cols: the column axis.
        metric: the record column shown (None when ``cols.key == "metric"``).
        kind: ``"mean"`` (mean ± std over seeds per cell) or ``"envelope"`` (per cell the
            best setting's mean over its models, Salman et al.'s envelope over settings;
            Table 8, :mod:`maxup.analysis.certified`).
        digits: decimals printed.
        scale: factor applied to the metric before printing.
        lower_is_better: which end of each column is bolded (perplexity: lower).
        ablation: ``(dotted config key, baseline value)``: each arm is compared with the arm
            equal to it in every other key and holding the baseline value (Δ, its CI and p:
            paired by seed, else Welch; for ``maxup.m`` a language model's arm also with its
            per-sequence control); the ``method`` axis splits on it. None: no baseline.
        expected_n: seeds per cell in the paper (None: the paper reports single runs).
        unit: printed unit of the metric.
        dataset: the paper's dataset of the table; an envelope table is built per dataset and
            only this one's carries published values.
        protocol: dotted config key -> the paper's value; a published number is shown beside a
            cell only when every record of the cell has these values (and the dataset).
        row_protocol: row value -> further protocol keys of that row (e.g. epochs per model).
    """

    id: str
    title: str
    filter: Callable[[pd.DataFrame], pd.Series]
    rows: Axis
    cols: Axis
    metric: str | None = "final.test_acc"
    kind: str = "mean"
    digits: int = 2
    scale: float = 1.0
    lower_is_better: bool = False
    ablation: tuple[str, object] | None = M_ABLATION
    expected_n: int | None = 5
    unit: str = "%"
    dataset: str | None = None
    protocol: dict = field(default_factory=dict)
    row_protocol: dict = field(default_factory=dict)

    @property
    def baseline(self) -> dict:
        """``{record column: value}`` of the baseline arms (empty without an ablation)."""
        return {} if self.ablation is None else {f"config.{self.ablation[0]}":
                                                 self.ablation[1]}

    def protocol_for(self, row) -> dict:
        """The paper's setting for one row: dataset, protocol and the row's own keys.

        Args:
            row: the row's axis value.
        """
        out = {} if self.dataset is None else {"data.name": self.dataset}
        out.update(self.protocol)
        out.update(self.row_protocol.get(row, {}))
        return out


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series(None, index=df.index, dtype=object)


def _ops_has(df: pd.DataFrame, op: str) -> pd.Series:
    ops = _col(df, "config.augment.ops")
    hit = {v: isinstance(v, str) and op in v.split("+") for v in ops.dropna().unique()}
    return ops.map(hit).fillna(False).astype(bool)


def paper_table(table_id: str | tuple[str, ...],
                fallback: Callable[[pd.DataFrame], pd.Series] | None = None):
    """Filter: records whose ``paper_table`` is ``table_id`` (or one of several), or (records
    that name no paper table) whose content matches ``fallback``.

    Args:
        table_id: the paper table number, or a tuple of them.
        fallback: records frame -> mask used for records with ``paper_table`` null.
    """
    ids = (table_id,) if isinstance(table_id, str) else tuple(table_id)

    def mask(df: pd.DataFrame) -> pd.Series:
        pt = _col(df, "paper_table")
        m = pt.astype(object).isin(ids).fillna(False).astype(bool)
        if fallback is not None:
            m = m | (pt.isna() & fallback(df).fillna(False).astype(bool))
        return m

    return mask


def _dataset(*names: str):
    return lambda df: _col(df, "config.data.name").isin(names)


def _cifar(name: str, models=tuple(v for v, _ in CIFAR_MODELS)):
    return lambda df: (_dataset(name)(df) & _ops_has(df, "cutout")
                       & _col(df, "config.model.name").isin(models))


def has_certification(df: pd.DataFrame) -> pd.Series:
    """Filter for Table 8: every record carrying certification results (the table is built
    once per dataset; only the paper's dataset gets published values)."""
    cert = _col(df, "certification")
    return cert.apply(lambda c: isinstance(c, dict) and bool(c.get("radii"))).astype(bool)


def _methods(base: str, maxup: str, control: str | None = None) -> Axis:
    values = (("baseline", base), *((("control", control),) if control else ()),
              ("maxup", maxup))
    return Axis(METHOD, values, title="Method", extra=False)


SPECS: dict[str, TableSpec] = {}


def _add(spec: TableSpec) -> None:
    SPECS[spec.id] = spec


_add(TableSpec(
    id="1", title="Top-1 / top-5 accuracy (%) on the ImageNet validation set, ResNet-50",
    # ResNet-50 fine-tuning runs of the ImageNet sweep (paper_table "2") fill Table 1.
    filter=lambda df: paper_table(("1", "2"), lambda d: _dataset("imagenet")(d)
                                  & _ops_has(d, "cutmix"))(df)
    & (_col(df, "config.model.name") == "resnet50"),
    rows=_methods("CutMix (m = 1)", "MaxUp+CutMix"),
    cols=Axis(METRIC, (("final.test_acc", "Top-1 (%)"), ("final.test_top5", "Top-5 (%)")),
              extra=False),
    metric=None, digits=1, expected_n=None, dataset="imagenet",
    protocol={"train.epochs": 20, "data.subset": None}))
_add(TableSpec(
    id="2", title="Top-1 accuracy (%) of different models on the ImageNet validation set",
    filter=paper_table("2", lambda df: _dataset("imagenet")(df) & _ops_has(df, "cutmix")),
    rows=Axis("config.model.name", (
        ("resnet101", "ResNet-101"), ("proxyless_cpu", "ProxylessNet-CPU"),
        ("proxyless_gpu", "ProxylessNet-GPU"), ("proxyless_mobile", "ProxylessNet-Mobile"),
        ("efficientnet_b7", "EfficientNet-B7"), ("fix_efficientnet_b8", "Fix-EfficientNet-B8")),
        title="Model"),
    cols=_methods("+CutMix (%)", "+MaxUp+CutMix (%)"), expected_n=None, dataset="imagenet",
    # Section 4.1: ResNet-101 and the ProxylessNets fine-tune 20 epochs, EfficientNets 5.
    protocol={"data.subset": None},
    row_protocol={**{m: {"train.epochs": 20} for m in (
        "resnet101", "proxyless_cpu", "proxyless_gpu", "proxyless_mobile")},
        **{m: {"train.epochs": 5} for m in ("efficientnet_b7", "fix_efficientnet_b8")}}))
for _tid, _ds, _name in (("3", "cifar10", "CIFAR-10"), ("4", "cifar100", "CIFAR-100")):
    _add(TableSpec(
        id=_tid, title=f"Test accuracy (%) on {_name} for different architectures",
        filter=paper_table(_tid, _cifar(_ds)),
        rows=Axis("config.model.name", CIFAR_MODELS, title="Model"),
        cols=_methods("+ Cutout", "+ MaxUp+Cutout"), dataset=_ds, protocol=CIFAR_PROTOCOL))
_add(TableSpec(
    id="5", title="Test accuracy (%) on CIFAR-100 when the sample size m varies",
    filter=paper_table("5", _cifar("cifar100", ("resnet110", "wrn28_10"))),
    rows=Axis("config.maxup.m", tuple((m, str(m)) for m in (1, 4, 10, 20)), title="m"),
    cols=Axis("config.model.name", (("resnet110", "ResNet-110"),
                                    ("wrn28_10", "WideResNet-28-10"))),
    dataset="cifar100", protocol=CIFAR_PROTOCOL))
for _tid, _ds, _name in (("6", "ptb", "Penn Treebank"), ("7", "wikitext2", "WikiText-2")):
    _add(TableSpec(
        id=_tid, title=f"Perplexities on the validation and test sets of {_name} "
                       "(lower is better)",
        filter=paper_table(_tid, _dataset(_ds, _ds.replace("wikitext2", "wt2"))),
        # The control (m = 1, one word-dropout mask per sequence) is not in the paper: MaxUp
        # differs from it only in the max, from the reference step also in the masks.
        rows=_methods("ADV-AWD-LSTM (m = 1)", "ADV-AWD-LSTM + MaxUp",
                      control="ADV-AWD-LSTM, per-sequence masks (m = 1)"),
        # Valid/Test of the kept best-validation model, then the same model under dynamic
        # evaluation (the paper's "+ dynamic evaluation" rows), and the Params column (M).
        cols=Axis(METRIC, (("final.params_m", "Params (M)"), ("final.val_ppl", "Valid"),
                           ("final.test_ppl", "Test"), ("final.dyn_val_ppl", "Valid + dyn. eval"),
                           ("final.dyn_test_ppl", "Test + dyn. eval")), extra=False),
        metric=None, lower_is_better=True, expected_n=None, unit="perplexity", dataset=_ds,
        protocol={"data.subset": None}))
_add(TableSpec(
    id="8", title="Certified accuracy (%) of the best classifiers per method vs l2 radius",
    filter=has_certification,
    rows=_methods("Gaussian aug. (m = 1)", "MaxUp+Gauss"),
    cols=Axis(RADIUS, tuple((r, f"{r:g}") for r in RADII)),
    metric="certification", kind="envelope", digits=1, expected_n=None, dataset="cifar10",
    # Section 4.4: ResNet-110, Salman et al.'s pipeline (150 epochs, batch 256); Cohen et
    # al.'s certification (n = 100,000, alpha = 0.001).
    protocol={"model.name": "resnet110", "train.epochs": 150, "train.batch_size": 256,
              "data.subset": None, "certify.n": 100_000, "certify.alpha": 0.001}))

#: Table ids accepted by ``--table`` (``"sweep"`` is the generic per-sweep table).
TABLE_IDS: tuple[str, ...] = (*SPECS, "sweep")

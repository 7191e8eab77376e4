"""Property-based fuzzing of the config and search-space loaders (issue 13).

Random YAML documents, random bytes and random ``--section.key=value`` overrides: every input
either loads into a valid config (or an expanded, validated sweep) or raises the project's
one-line :class:`maxup.errors.UsageError` — never another exception, and never a write.
At least 500 examples per loader; the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from maxup.config import RunConfig, from_dict, load_config, parse_overrides, to_dict  # noqa: E402
from maxup.errors import UsageError  # noqa: E402
from maxup.platform.space import SPACE_KEYS, load_space  # noqa: E402

EXAMPLES = 500
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def _dotted_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(RunConfig):
        tp = typing.get_type_hints(RunConfig)[section.name]
        tp = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if dataclasses.is_dataclass(tp):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(tp)]
        else:
            keys.append(section.name)
    return keys


DOTTED = _dotted_keys()
SECTIONS = sorted({k.split(".")[0] for k in DOTTED})

# Scalars a user (or a corrupted file) might put anywhere: edge numbers included.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, 2, 4, -1, 10**20, 2**63, 2**32]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.25, 1.0, 1e400, -1e-400, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["gaussian", "cutout", "small_cnn", "digits", "cpu", "1e-3", "1e400",
                     ".inf", ".nan", "null", "efficient", "cosine", "true"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(DOTTED), st.text(max_size=8)), inner,
                    max_size=4)), max_leaves=12)


def _section_dict(section: str):
    fields = [k.split(".", 1)[1] for k in DOTTED if k.startswith(section + ".")]
    keys = st.one_of(st.sampled_from(fields), st.text(max_size=8)) if fields else st.text()
    return st.dictionaries(keys, values, max_size=5)


config_docs = st.one_of(
    st.fixed_dictionaries({}, optional={s: st.one_of(_section_dict(s), values)
                                        for s in SECTIONS}),
    st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6),
                              st.integers()), values, max_size=4),
    values,
)


def _yaml_text(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, default_flow_style=None)


documents = st.one_of(
    config_docs.map(_yaml_text),  # structurally plausible documents
    st.text(max_size=200),  # arbitrary text, YAML syntax errors, tags, anchors
    st.sampled_from(["a: 1\na: 2\n", "!!python/object:os.system {}\n", "&a [*a]\n",
                     "x: &a\n  - *a\n", "[" * 200, "{a: 1, a: 1}", "? [1, 2]\n: 3\n",
                     "%YAML 1.1\n---\nseed: 1\n", "seed: 0x10\n", "seed: 1_000\n"]),
)
raw_bytes = st.binary(max_size=200)


def _one_line_usage(exc: BaseException) -> None:
    assert isinstance(exc, UsageError), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    assert len(msg) < 2000


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory the loaders must leave exactly as it was."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check_config(cfg: RunConfig) -> None:
    assert isinstance(cfg, RunConfig)
    again = from_dict(to_dict(cfg))  # a loaded config is valid and round-trips
    assert again == cfg
    for value in _numbers(to_dict(cfg)):
        assert math.isfinite(value), to_dict(cfg)


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, float):
        yield obj


@FUZZ
@given(text=st.one_of(documents, raw_bytes))
def test_fuzz_config_files_load_or_refuse_in_one_line(sandbox, text):
    path = sandbox / "run.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass") if _encodable(
            text) else path.write_bytes(text.encode("utf-8", "replace"))
    before = _tree(sandbox)
    try:
        cfg = load_config(path)
    except Exception as exc:  # noqa: BLE001 - the property: only UsageError, in one line
        _one_line_usage(exc)
    else:
        _check_config(cfg)
    assert _tree(sandbox) == before


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


override_keys = st.one_of(st.sampled_from(DOTTED), st.sampled_from(SECTIONS),
                          st.text(max_size=10))
override_values = st.one_of(
    st.text(max_size=16),
    scalars.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()
                .removesuffix("...").strip()),
    st.sampled_from(["[3,5]", "[]", "{}", "[1, 1e400]", "null", ".inf", "-.inf", ".nan",
                     "1e20", "100000000000000000000", "{a: 1, a: 2}", "!!binary aGk=",
                     "[cutout,gaussian]", "{name: resnet20}"]),
)
overrides = st.lists(st.one_of(
    st.tuples(override_keys, override_values).map(lambda kv: f"--{kv[0]}={kv[1]}"),
    st.text(max_size=20)), max_size=5)


@FUZZ
@given(args=overrides)
def test_fuzz_override_strings_load_or_refuse_in_one_line(sandbox, args):
    before = _tree(sandbox)
    try:
        cfg = load_config(None, parse_overrides(args))
    except Exception as exc:  # noqa: BLE001
        _one_line_usage(exc)
    else:
        _check_config(cfg)
    assert _tree(sandbox) == before


grid_axes = st.dictionaries(
    st.one_of(st.sampled_from(["maxup.m", "optim.lr", "augment.sigma", "seed", "train.epochs",
                               "arch", "model.name"]), st.text(max_size=6)),
    st.one_of(
        st.lists(scalars, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)),
                        st.one_of(st.none(), st.dictionaries(
                            st.sampled_from(["maxup.m", "optim.lr", "seed", "x"]), scalars,
                            max_size=2), scalars), max_size=3),
        scalars),
    max_size=3)

space_docs = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["s", "fuzz-1", "a_b"]), scalars),
    "description": st.one_of(st.text(max_size=10), scalars, values),
    "paper_table": st.one_of(st.sampled_from(["3", 5, None]), values),
    "base_config": st.one_of(st.sampled_from(["configs/digits_smoke.yaml", "missing.yaml",
                                              "run.yaml"]), scalars, values),
    "base": st.one_of(config_docs, values),
    "grid": st.one_of(grid_axes, values),
    "seeds": st.one_of(st.integers(-2, 4), st.lists(st.integers(-1, 5), max_size=4), values),
    "resources": st.one_of(st.dictionaries(
        st.sampled_from(["cpus_per_trial", "gpus_per_trial", "cpus_per_worker", "tpus"]),
        scalars, max_size=3), values),
    "concurrency": scalars, "retries": scalars, "order_seed": scalars,
})
space_texts = st.one_of(
    space_docs.map(_yaml_text),
    st.dictionaries(st.one_of(st.sampled_from(SPACE_KEYS), st.text(max_size=6)), values,
                    max_size=4).map(_yaml_text),
    documents,
)


@FUZZ
@given(text=space_texts)
def test_fuzz_search_spaces_expand_or_refuse_in_one_line(sandbox, text):
    (sandbox / "run.yaml").write_text("train: {epochs: 2}\n")
    path = sandbox / "space.yaml"
    path.write_bytes(text.encode("utf-8", "replace"))
    before = _tree(sandbox)
    try:
        trials = load_space(path).expand()
    except Exception as exc:  # noqa: BLE001
        _one_line_usage(exc)
    else:
        assert trials, "a space that loads has at least one trial"
        for t in trials:
            _check_config(from_dict(t.config))
    assert _tree(sandbox) == before
    assert not (Path(os.getcwd()) / "results").exists()

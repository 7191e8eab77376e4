"""Issue 13, bad input and faults: every refusal is one line before anything runs (exit 2,
nothing written); every crash during training ends a failed record (exit 1).

Each case the issue found is a regression test named for it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from maxup.cli import main
from maxup.config import RunConfig, field_range, load_config, parse_overrides
from maxup.errors import ConfigError, UsageError

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "configs" / "digits_smoke.yaml")


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and one line on stderr; return that line."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals exit from inside parse_args
        rc = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.out, captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("maxup: error: "), lines[0]
    return lines[0]


def _nothing_written(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


# --------------------------------------------------------------------------- YAML files

def test_regression_binary_file_as_yaml_is_one_line(tmp_path, capsys):
    """A binary file given as YAML raised UnicodeDecodeError (a traceback) in config.py."""
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "run"
    line = _refused(capsys, ["train", str(binary), "--out", str(out)])
    assert "weights.yaml" in line and "not UTF-8" in line
    assert _nothing_written(out)
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"seed: 1\n\0\0\0")
    assert "binary" in _refused(capsys, ["train", str(nul), "--out", str(out)])
    storage = tmp_path / "store"
    line = _refused(capsys, ["sweep", str(binary), "--dry-run", "--storage", str(storage)])
    assert "weights.yaml" in line and not storage.exists()


@pytest.mark.parametrize("body, key", [
    ("train:\n  epochs: 1\ntrain:\n  epochs: 2\n", "train"),
    ("optim: {lr: 0.1, lr: 0.2}\n", "lr"),
])
def test_regression_duplicate_yaml_keys_are_refused(tmp_path, capsys, body, key):
    """Duplicate YAML keys silently took the last value."""
    path = tmp_path / "dup.yaml"
    path.write_text(body)
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert f"key {key!r} given twice" in str(info.value) and "line " in str(info.value)
    out = tmp_path / "run"
    assert "given twice" in _refused(capsys, ["train", str(path), "--out", str(out)])
    assert _nothing_written(out)


def test_regression_duplicate_keys_in_a_search_space_are_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("seeds: 1\ngrid:\n  maxup.m: [1]\n  maxup.m: [4]\n")
    storage = tmp_path / "store"
    line = _refused(capsys, ["sweep", str(path), "--dry-run", "--storage", str(storage)])
    assert "'maxup.m' given twice" in line and not storage.exists()


# --------------------------------------------------------------------------- numbers

NUMERIC_FIELDS = []
for _section in dataclasses.fields(RunConfig):
    _cls = typing.get_type_hints(RunConfig)[_section.name]
    # an optional section (``lm: LMConfig | None``) counts as its dataclass
    _cls = next((a for a in typing.get_args(_cls) if dataclasses.is_dataclass(a)), _cls)
    if not dataclasses.is_dataclass(_cls):
        NUMERIC_FIELDS.append(_section.name)
        continue
    for _f in dataclasses.fields(_cls):
        _hint = typing.get_type_hints(_cls)[_f.name]
        if typing.get_origin(_hint) is list:  # milestones and the like: bounded by train.epochs
            continue
        if (set(typing.get_args(_hint)) or {_hint}) & {int, float}:
            NUMERIC_FIELDS.append(f"{_section.name}.{_f.name}")


def test_every_numeric_config_field_has_a_finite_range():
    assert len(NUMERIC_FIELDS) >= 30, NUMERIC_FIELDS
    missing = [k for k in NUMERIC_FIELDS if field_range(k) is None]
    assert missing == []


@pytest.mark.parametrize("key", NUMERIC_FIELDS)
def test_numeric_field_refuses_nan_inf_and_beyond_its_range(key):
    """Every numeric field refuses inf, NaN and the first value past its upper bound, in one
    line that states the range."""
    rng = field_range(key)
    leaf = key.rsplit(".", 1)[-1]
    integer = _annotation_has(key, int)
    beyond = int(rng.hi) + 1 if integer else rng.hi * 2 + 1
    bad_values = [beyond] + ([] if integer else [".inf", "-.inf", ".nan", "1e400"])
    for raw in bad_values:
        with pytest.raises(ConfigError) as info:
            load_config(None, parse_overrides([f"--{key}={raw}"]))
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{key}: got "), msg
        if key != "train.min_workers":  # also bounded by train.workers, said first
            assert f"{leaf} >= " in msg or f"{leaf} > " in msg, msg
            assert "and <" in msg, msg


def _annotation_has(key: str, tp: type) -> bool:
    cls = RunConfig
    *sections, leaf = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
        cls = next((a for a in typing.get_args(cls) if dataclasses.is_dataclass(a)), cls)
    hint = typing.get_type_hints(cls)[leaf]
    return tp in (typing.get_args(hint) or (hint,))


@pytest.mark.parametrize("override, field", [
    ("--optim.lr=.inf", "optim.lr"),
    ("--augment.sigma=1e400", "augment.sigma"),
    ("--optim.lr=.nan", "optim.lr"),
    ("--seed=100000000000000000000", "seed"),
    ("--train.batch_size=100000000000000000000", "train.batch_size"),
    ("--maxup.m=1000000000000", "maxup.m"),
    ("--train.start_timeout_s=.inf", "train.start_timeout_s"),
    ("--optim.lr=1" + "0" * 400, "optim.lr"),
])
def test_regression_non_finite_and_overflowing_numbers_refused_before_anything_runs(
        tmp_path, capsys, override, field):
    """``inf``, ``nan`` and overflowing numbers were accepted: a crash at record time and an
    empty out dir, a hang (start_timeout_s=inf), an allocation failure after two epochs."""
    out = tmp_path / "run"
    line = _refused(capsys, ["train", SMOKE, "--out", str(out), "--workers", "2", override])
    assert line.startswith(f"maxup: error: {field}: got "), line
    assert "(an integer)" in line or "(a finite number)" in line
    assert len(line) < 300
    assert not out.exists()


# --------------------------------------------------------------------------- search spaces

@pytest.mark.parametrize("body, field", [
    ("seeds: 1\norder_seed: abc\n", "order_seed"),
    ("seeds: 1\nbase: [1, 2]\n", "base"),
    ("seeds: 1\nbase_config: 5\n", "base_config"),
    ("seeds: 1\nresources: {cpus_per_trial: .nan}\n", "resources.cpus_per_trial"),
    ("seeds: 100000000000\n", "seeds"),
    ("seeds: 1\nconcurrency: 100000000000\n", "concurrency"),
    ("seeds: 1\n1: 2\n", "1"),
    ("grid:\n  a:\n    x: {1: 2}\n", "grid.a.x"),
    ("seeds: 1\ndescription: [1]\n", "description"),
])
def test_regression_malformed_search_space_fields_are_one_line(tmp_path, capsys, body, field):
    """``order_seed: abc``, ``base: [1, 2]``, ``base_config: 5`` raised ValueError /
    AttributeError / TypeError tracebacks in space.py."""
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    storage = tmp_path / "store"
    line = _refused(capsys, ["sweep", str(path), "--dry-run", "--storage", str(storage)])
    assert line.startswith(f"maxup: error: {field}: got "), line
    assert not storage.exists()


@pytest.mark.parametrize("body, says", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("name: x\ndescription: nothing here\n", "has no grid and no seeds"),
    ("name: x\ngrid: {}\n", "has no grid and no seeds"),
    ("seeds: 1\ngrid:\n  arch: {}\n", "zero trials"),
    ("seeds: 1\ngrid:\n  maxup.m: []\n", "zero trials"),
])
def test_regression_empty_search_space_is_refused_naming_the_file(tmp_path, capsys, body, says):
    """Issue 14 item 7: an empty space ran a default sweep."""
    path = tmp_path / "trivial.yaml"
    path.write_text(body)
    storage = tmp_path / "store"
    for extra in (["--dry-run"], []):
        line = _refused(capsys, ["sweep", str(path), "--storage", str(storage), *extra])
        assert str(path) in line and says in line, line
    assert not storage.exists()


# --------------------------------------------------------------------------- output paths

def test_regression_out_naming_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "run"):
        line = _refused(capsys, ["train", SMOKE, "--out", str(out)])
        assert line.startswith("maxup: error: --out: got ") and "not a file" in line
    assert afile.read_text() == "keep me"


def test_regression_storage_naming_a_file_is_refused_before_ray_starts(tmp_path, capsys):
    """``--storage`` naming a file failed with a traceback after Ray had started."""
    import sys

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    space = tmp_path / "s.yaml"
    space.write_text("seeds: 1\nbase: {train: {epochs: 1}}\n")
    ray_was_imported = "ray" in sys.modules
    line = _refused(capsys, ["sweep", str(space), "--storage", str(afile)])
    assert line.startswith("maxup: error: --storage: got ") and "not a file" in line
    assert afile.read_text() == "keep me"
    if not ray_was_imported:
        assert "ray" not in sys.modules


def test_regression_argparse_errors_are_one_line(capsys):
    assert "invalid int value: '1e20'" in _refused(
        capsys, ["certify", "x.pt", "--sigma", "0.25", "--n", "1e20"])
    assert "required" in _refused(capsys, ["train"])


# --------------------------------------------------------------------------- certify

@pytest.mark.parametrize("argv, flag", [
    (["--sigma", "2"], "--sigma"),
    (["--sigma", "inf"], "--sigma"),
    (["--sigma", "0.25", "--n", "100000000000000000000"], "--n"),
    (["--sigma", "0.25", "--n0", "100000000000"], "--n0"),
    (["--sigma", "0.25", "--alpha", "nan"], "--alpha"),
    (["--sigma", "0.25", "--seed", "-1"], "--seed"),
])
def test_regression_certify_sigma_range_and_n_bound(tmp_path, capsys, argv, flag):
    """``certify --sigma 2`` was accepted (its help says [0, 1]); ``--n 1e20`` ran for
    minutes producing nothing."""
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not read")
    out = tmp_path / "cert.json"
    line = _refused(capsys, ["certify", str(ckpt), *argv, "--out", str(out)])
    assert line.startswith(f"maxup: error: {flag}: got ") and "allowed" in line
    assert not out.exists()


def test_sigma_mismatch_messages():
    from maxup.cli.certify import sigma_mismatch

    trained = {"augment": {"ops": ["gaussian"], "sigma": 0.25}}
    assert sigma_mismatch(trained, 0.25) is None
    assert "augment.sigma 0.25" in sigma_mismatch(trained, 0.5)
    assert "without Gaussian noise" in sigma_mismatch({"augment": {"ops": ["cutout"]}}, 0.25)


# --------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One single-worker ``maxup train`` (1 epoch on digits, about a second)."""
    out = tmp_path_factory.mktemp("run") / "run"
    rc = main(["train", SMOKE, "--out", str(out), "--train.epochs=1",
               "--maxup.warmup_epochs=0", "--train.progress=false"])
    assert rc == 0
    return out


def test_regression_single_worker_train_writes_log_txt(trained_run):
    """The README lists log.txt in the run directory; single-worker runs wrote none."""
    log = (trained_run / "log.txt").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith("epoch   1/1") and "test loss" in log[0]


def test_regression_certify_at_another_sigma_warns(trained_run, capsys):
    """Certifying at a sigma other than the training sigma gave no warning."""
    ckpt = trained_run / "checkpoints" / "last.pt"
    common = ["--n0", "8", "--n", "16", "--batch", "16", "--skip", "100", "--max-images", "1",
              "--device", "cpu"]
    assert main(["certify", str(ckpt), "--sigma", "0.5", *common]) == 0
    err = capsys.readouterr().err
    assert "maxup: warning: certifying at --sigma 0.5" in err and "augment.sigma 0.25" in err
    assert main(["certify", str(ckpt), "--sigma", "0.25", *common]) == 0
    assert "warning" not in capsys.readouterr().err


def test_regression_crash_during_training_ends_a_failed_record(tmp_path, capsys, monkeypatch):
    """A single-process run that died of anything but a non-finite loss left ``status:
    running`` forever; now the record is failed, with the traceback in failure.detail."""
    import maxup.engine.image as image_task

    real = image_task.evaluate
    calls = []

    def evaluate_then_oom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's evaluation
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsee the docs")
        return real(*args, **kwargs)

    monkeypatch.setattr(image_task, "evaluate", evaluate_then_oom)
    out = tmp_path / "run"
    rc = main(["train", SMOKE, "--out", str(out), "--train.epochs=3",
               "--maxup.warmup_epochs=0", "--train.progress=false"])
    captured = capsys.readouterr()
    assert rc == 1
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "failed"
    assert rec["failure"]["reason"] == ("RuntimeError: CUDA out of memory. Tried to allocate "
                                        "2.00 GiB")
    assert rec["failure"]["epoch"] == 2 and len(rec["history"]) == 1
    assert "Traceback" in rec["failure"]["detail"]
    assert "evaluate_then_oom" in rec["failure"]["detail"]
    assert "run failed: RuntimeError: CUDA out of memory" in captured.out
    assert "Traceback" not in captured.err
    assert "evaluate_then_oom" in (out / "log.txt").read_text()  # the traceback, for later


def test_regression_crash_in_library_train_ends_a_failed_record(tmp_path, monkeypatch):
    """The engine itself (used by sweeps and notebooks) ends the record failed and re-raises."""
    import maxup.engine as engine
    import maxup.engine.image as image_task
    from maxup import records

    def broken(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(image_task, "train_epoch", broken)
    cfg = load_config(SMOKE, {"train.epochs": 1, "train.progress": False})
    with pytest.raises(MemoryError):
        engine.train(cfg, tmp_path / "run", log=None)
    rec = records.load_record(tmp_path / "run" / "record.json")
    assert rec.status is records.Status.FAILED and rec.failure["reason"] == "MemoryError"


def test_refusal_inside_train_still_writes_nothing(tmp_path, capsys):
    """A UsageError raised inside the engine (a missing dataset) is a refusal, not a crash."""
    out = tmp_path / "run"
    line = _refused(capsys, ["train", SMOKE, "--out", str(out), "--data.name=cifar10",
                             "--data.root=/nonexistent/cifar", "--model.name=resnet20"])
    assert "data.root" in line
    assert _nothing_written(out)


# --------------------------------------------------------------------------- records on load

def test_regression_records_are_validated_on_load(tmp_path, capsys):
    """``maxup tables`` checked only schema, config, id and status: ``test_acc: "abc"`` was
    silently dropped and ``1e308`` turned a mean into a 300-digit number. A record with a
    metric of the wrong type or out of range is named, kept out of the mean, and its cell
    counts it as failed ("invalid record")."""
    from maxup import records
    from maxup.analysis.load import INVALID_REASON, load_records, summary
    from maxup.config import to_dict

    good = [90.0, 91.0, 92.0]
    bad = {"abc-acc": ("test_acc", "abc"), "huge-acc": ("test_acc", 1e308),
           "bad-loss": ("test_loss", -3.0)}
    root = tmp_path / "res"
    for seed, value in enumerate([*good, *bad]):
        cfg = to_dict(load_config(SMOKE, {"seed": seed}))
        hist = [{"epoch": 1, "test_acc": 50.0, "test_loss": 1.0, "train_loss": 1.0}]
        if isinstance(value, float):
            hist[0]["test_acc"] = value
        else:
            key, bad_value = bad[value]
            hist[0][key] = bad_value
        rec = records.build_record(config=cfg, history=hist, status="completed", timings={},
                                   env={})
        name = value if isinstance(value, str) else f"good{seed}"
        (root / name).mkdir(parents=True)
        (root / name / "record.json").write_text(json.dumps(rec))
    with pytest.warns(UserWarning) as caught:
        df = load_records(root)
    named = " ".join(str(w.message) for w in caught)
    for name, (key, _) in bad.items():
        assert f"{name}/record.json" in named and f"final.{key}" in named
    s = summary(df)
    assert s["completed"] == 3 and s["failed"] == 3
    assert s["failure_reasons"] == {INVALID_REASON: 3}
    assert len(s["invalid_files"]) == 3
    done = df[df["status"] == "completed"]
    assert sorted(done["final.test_acc"]) == good

    assert main(["tables", str(root)]) == 0
    out = capsys.readouterr()
    assert "91.00 ± 1.00 (n = 3; 3 failed)" in out.out, out.out
    assert "3 with invalid metrics (counted as failed" in out.out
    assert "1e+308" not in out.out and "e+30" not in out.out
    assert out.err.count("skipping the metrics of") == 3


def test_metric_problem_ranges():
    from maxup.records import Status, TrialRecord, metric_problem

    def rec(**final):
        return TrialRecord(trial_id="t", status=Status.COMPLETED, config={}, final=final)

    assert metric_problem(rec(test_acc=93.2, test_loss=0.3, val_ppl=57.0, lr=0.1)) is None
    assert metric_problem(rec(test_acc=float("nan"))) is None  # diverged, counted as such
    assert "expected a percentage in [0, 100]" in metric_problem(rec(test_acc=100.5))
    assert "expected a finite perplexity >= 1" in metric_problem(rec(test_ppl=0.5))
    assert "expected a percentage" in metric_problem(rec(test_top5=True))
    failed = TrialRecord(trial_id="t", status=Status.FAILED, config={},
                         final={"test_acc": "nan"})
    assert metric_problem(failed) is None


def test_regression_data_parallel_train_echoes_worker_epoch_lines(tmp_path, capsys):
    """``--workers 2`` printed nothing per epoch for over a minute: the workers write their
    epoch lines to log.txt only. The CLI now echoes what is appended there while it waits
    (whole lines only, none twice, nothing that was there before it started)."""
    import time

    from maxup.cli.train import _echo_log

    log = tmp_path / "log.txt"
    log.write_text("epoch   1/3  from an earlier run\n")
    with _echo_log(log, interval_s=0.05):
        with open(log, "a") as fh:
            fh.write("epoch   2/3  resumed\nepoch   3/")
            fh.flush()
            time.sleep(0.3)
            assert capsys.readouterr().out == "epoch   2/3  resumed\n"  # live, half line held
            fh.write("3  done\n")
    assert capsys.readouterr().out == "epoch   3/3  done\n"


@pytest.mark.parametrize("make", [lambda: ConfigError("data.subset", 100000, "1..1257"),
                                  lambda: UsageError("storage: not a directory")])
def test_regression_typed_errors_copy_and_pickle_whole(make):
    """Ray copies a trial's exception (``copy.copy``) and pickles it to the driver; ConfigError
    copied by its one-message ``args`` raised a TypeError that Ray printed over the real error."""
    import copy
    import pickle

    err = make()
    for twin in (copy.copy(err), pickle.loads(pickle.dumps(err))):
        assert type(twin) is type(err) and str(twin) == str(err)
        assert vars(twin) == vars(err)

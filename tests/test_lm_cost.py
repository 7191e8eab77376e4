"""Language-model trials are priced (issue 27: `lm_kjv` showed "?" in the dry run and in
`maxup status`): tokens per epoch × epochs × FLOPs per token ÷ a device's measured or stated
rate. Expected values are computed here by hand — FLOPs from a real model's weight matrices,
tokens from the corpora's stated sizes, rates read from the profile files — not read back from
the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_kjv_v2 import _stored_kjv

from maxup.cli import main
from maxup.errors import ProfileError
from maxup.platform import cost
from maxup.platform.space import REPO_ROOT, load_space

LM_KJV = str(REPO_ROOT / "search_spaces" / "lm_kjv.yaml")
PROFILES = REPO_ROOT / "maxup" / "platform" / "profiles"
#: (train, valid, test) tokens, as docs/lm.md states them ("Measured here").
KJV = {1: (748_366, 35_251, 38_935), 2: (743_332, 39_176, 40_044)}


def _flops_per_token(emsize: int, nhid: int, nlayers: int, vocab: int) -> float:
    """2 × the multiply-adds of one token's forward, counted from a real AWD-LSTM: every LSTM
    weight matrix (input and recurrent) and the tied decoder's matrix is used once per token."""
    from maxup.models.awd_lstm import AWDLSTM

    model = AWDLSTM(vocab, emsize=emsize, nhid=nhid, nlayers=nlayers)
    macs = sum(r.weight_ih.numel() + r.weight_hh.numel() for r in model.rnns)
    return 2.0 * (macs + model.decoder.weight.numel())


def _rates(device_file: str) -> tuple[float, float, float]:
    doc = json.loads((PROFILES / device_file).read_text())
    return doc["lm"]["train_flop_s"], doc["lm"]["eval_flop_s"], doc["trial_overhead_s"]


@pytest.mark.parametrize("shape", [(128, 256, 2, 10_000), (400, 1150, 3, 10_000),
                                   (400, 1150, 3, 33_278)])
def test_lm_forward_flops_are_the_models_matrices(shape):
    emsize, nhid, nlayers, vocab = shape
    assert cost.lm_forward_flops({"emsize": emsize, "nhid": nhid, "nlayers": nlayers},
                                 vocab) == _flops_per_token(*shape)


def test_regression_lm_trials_are_priced_in_the_dry_run(tmp_path, capsys):
    """`maxup sweep search_spaces/lm_kjv.yaml --dry-run` showed "?" for every trial and
    "none priced"."""
    assert main(["sweep", LM_KJV, "--dry-run", "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    lines = out.split("estimated time per trial", 1)[1].splitlines()[1:5]
    assert len(lines) == 4 and all("?" not in line for line in lines), lines
    assert "none priced" not in out and "not priced" not in out
    assert "cost: 20 trial(s) to train, " in out and "CPU-hours" in out
    assert "language models at 16 GFLOP/s training, 17.1 GFLOP/s evaluation (measured" in out
    assert not (tmp_path / "s").exists()


def test_regression_status_prices_lm_trials(tmp_path, capsys):
    assert main(["status", LM_KJV, "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "remaining: ?" not in out and "none priced" not in out
    assert "cost: 20 trial(s) to train, " in out


def test_lm_trial_estimate_against_an_independent_computation():
    """Every lm_kjv trial on the shipped CPU profile, by hand: full corpus, batch 20
    (batchify drops the remainder and the last row is only a target), validation at batch
    10 and test at batch 1 every epoch, m no-grad forwards beside the 3-forward step."""
    prof, _ = cost.find_profile("Intel(R) Xeon(R) Processor", "cpu")
    r_train, r_eval, overhead = _rates("intel-r-xeon-r-processor.json")
    f = _flops_per_token(128, 256, 2, 10_000)
    trials = load_space(LM_KJV).expand()
    assert len(trials) == 20
    for t in trials:
        cfg = t.config
        train_n, valid_n, test_n = KJV[cfg["data"].get("version") or 1]
        assert (cfg["train"]["batch_size"], cfg["lm"]["eval_batch_size"],
                cfg["lm"]["test_batch_size"], cfg["train"]["epochs"]) == (20, 10, 1, 20)
        m = cfg["maxup"]["m"]
        trained = (train_n // 20 - 1) * 20
        evaluated = (valid_n // 10 - 1) * 10 + (test_n - 1)
        per_epoch = (trained * (3 + (m if m > 1 else 0)) * f / r_train
                     + evaluated * f / r_eval)
        est = cost.estimate(cfg, prof)
        assert est.seconds == pytest.approx(overhead + 20 * per_epoch, rel=1e-9)
        assert est.epoch_s == pytest.approx(per_epoch, rel=1e-9)
    # a subset trains its own tokens; warm-up epochs run at m = 1
    cfg = {**trials[0].config}
    cfg["data"] = {**cfg["data"], "subset": 100_000}
    cfg["maxup"] = {**cfg["maxup"], "m": 4, "warmup_epochs": 5}
    cfg["train"] = {**cfg["train"], "epochs": 8}
    _, valid_n, test_n = KJV[cfg["data"].get("version") or 1]
    ev = ((valid_n // 10 - 1) * 10 + test_n - 1) * f / r_eval
    trained = (100_000 // 20 - 1) * 20
    want = overhead + 5 * (trained * 3 * f / r_train + ev) + 3 * (trained * 7 * f / r_train + ev)
    assert cost.estimate(cfg, prof).seconds == pytest.approx(want, rel=1e-9)


def _lm_records() -> list[dict]:
    """The records of the stored reproduction/lm_kjv sweep (the ones the profile was
    measured on; other LM sweeps stored beside it, such as lm_kjv_v2, are not)."""
    return [rec for _, rec in _stored_kjv()]


def test_the_shipped_cpu_lm_rates_are_what_the_stored_records_measured():
    """The CPU figure is the stored reproduction/lm_kjv records' own: Σ FLOPs of their 40
    epochs ÷ Σ their train_s and eval_s, counted here by hand (the test split is evaluated
    only in epochs whose validation improved)."""
    records = _lm_records()
    assert len(records) == 10
    flops = [0.0, 0.0]
    seconds = [0.0, 0.0]
    for rec in records:
        cfg, tokens = rec["config"], rec["environment"]["corpus"]["tokens"]
        lm = cfg["lm"]
        f = _flops_per_token(lm["emsize"], lm["nhid"], lm["nlayers"], 10_000)
        n = min(cfg["data"]["subset"], tokens["train"])
        for h in rec["history"]:
            m = h["maxup_m"]
            flops[0] += (n // 20 - 1) * 20 * (3 + (m if m > 1 else 0)) * f
            test = (tokens["test"] // lm["test_batch_size"] - 1) * lm["test_batch_size"]
            flops[1] += ((tokens["valid"] // lm["eval_batch_size"] - 1) * lm["eval_batch_size"]
                         + (test if h["best_epoch"] == h["epoch"] else 0)) * f
            seconds[0] += h["train_s"]
            seconds[1] += h["eval_s"]
    train_rate, eval_rate = flops[0] / seconds[0], flops[1] / seconds[1]
    assert cost.lm_rates_from_records(records) == pytest.approx((train_rate, eval_rate, 40))
    r_train, r_eval, _ = _rates("intel-r-xeon-r-processor.json")
    assert (r_train, r_eval) == (float(f"{train_rate:.3g}"), float(f"{eval_rate:.3g}"))


def test_the_shipped_gpu_lm_rates_are_the_published_gp100_epoch_by_bandwidth():
    """awd-lstm-lm's README: PTB at batch 20, 65 s per epoch on a Quadro GP100 (720 GB/s);
    its epoch trains ptb.train.txt (929,589 tokens) and evaluates ptb.valid.txt (73,760) at
    batch 10."""
    f = _flops_per_token(400, 1150, 3, 10_000)
    gp100 = ((929_589 // 20 - 1) * 20 * 3 * f + (73_760 // 10 - 1) * 10 * f) / 65.0
    for file, bandwidth in [("nvidia-a10g.json", 600), ("nvidia-h200.json", 4800),
                            ("tesla-t4.json", 320), ("nvidia-a100-sxm4-40gb.json", 1555)]:
        r_train, r_eval, _ = _rates(file)
        assert r_train == r_eval == float(f"{gp100 * bandwidth / 720:.3g}"), file


def test_finished_lm_records_refine_the_estimate():
    """A record trained on the target device that took twice the prediction doubles the
    estimate of the trials still to train (the image path's refinement)."""
    prof, _ = cost.find_profile("Intel(R) Xeon(R) Processor", "cpu")
    cfg = load_space(LM_KJV).expand()[0].config
    predicted = cost.predicted_epochs(cfg, prof, [1, 2])
    assert predicted == pytest.approx(2 * cost.estimate(cfg, prof).epoch_s, rel=1e-9)

    class Rec:
        config = cfg
        environment = {"device_name": prof.device}
        history = [{"epoch": 1, "wall_s": predicted}, {"epoch": 2, "wall_s": predicted}]

    factors = cost.refinement([Rec()], prof)
    assert factors == {"awd_lstm": pytest.approx(2.0), "*": pytest.approx(2.0)}
    est = cost.refined(cost.estimate(cfg, prof), cfg, factors, prof.trial_overhead_s)
    base = cost.estimate(cfg, prof).seconds
    assert est.seconds == pytest.approx(prof.trial_overhead_s
                                        + 2 * (base - prof.trial_overhead_s))


def test_a_profile_without_lm_figures_takes_the_shipped_ones_and_says_so():
    doc = json.loads((PROFILES / "intel-r-xeon-r-processor.json").read_text())
    del doc["lm"]
    doc.update(device="Some Calibrated CPU", default_for=None)
    prof = cost.parse_profile(doc, "mine.json")
    rates, note = cost.lm_rates(prof)
    assert rates.train_flop_s == _rates("intel-r-xeon-r-processor.json")[0]
    assert note == ("no language-model figures for 'Some Calibrated CPU' in mine.json; using "
                    "'Intel(R) Xeon(R) Processor''s from intel-r-xeon-r-processor.json")


@pytest.mark.parametrize("lm, field", [
    ({"train_flop_s": 0, "eval_flop_s": 1e9, "basis": "x"}, "lm.train_flop_s"),
    ({"train_flop_s": 1e9, "eval_flop_s": "fast", "basis": "x"}, "lm.eval_flop_s"),
    ({"train_flop_s": 1e9, "eval_flop_s": 1e9, "basis": ""}, "lm.basis"),
    ([1, 2], "lm"),
])
def test_a_bad_lm_entry_in_a_profile_is_one_line(tmp_path, lm, field):
    doc = json.loads((PROFILES / "intel-r-xeon-r-processor.json").read_text())
    doc["lm"] = lm
    path = Path(tmp_path) / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError) as exc:
        cost.load_profile(path)
    assert f"{field}: got" in str(exc.value) and "\n" not in str(exc.value)


def test_an_lm_entry_survives_a_profile_round_trip():
    path = PROFILES / "intel-r-xeon-r-processor.json"
    assert json.dumps(cost.load_profile(path).to_dict(), indent=1) + "\n" == path.read_text()

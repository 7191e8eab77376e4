"""Issue 29's additions to the language-model runs: keys added without moving stored trials,
and the per-column m = 1 control (``lm.mask_per_sequence``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_kjv_v2 import _stored_kjv

from maxup import identity
from maxup.config import from_dict, to_dict

ROOT = Path(__file__).resolve().parent.parent


def _stored_lm_records():
    """(folder, config) of the stored reproduction/lm_kjv sweep: records written before the
    added keys existed (the newer lm_kjv_v2 records carry them and are not its subject)."""
    return [(tid, rec["config"]) for tid, rec in _stored_kjv()]


def test_added_keys_keep_the_ids_of_stored_lm_records():
    """Resolving a stored KJV record's config as it ran (identity.as_stored: data.version 1,
    the corpus it was trained on) through today's config adds the new keys at their old
    values; its id must still be the folder it is stored under. Resolved without that, the
    missing data.version takes today's default, 2: another corpus, another trial."""
    stored = _stored_lm_records()
    assert len(stored) >= 10
    for folder, config in stored:
        assert "version" not in config["data"]
        resolved = to_dict(from_dict(identity.as_stored(config)))
        assert "mask_per_sequence" in resolved["lm"] and "dyneval_search" in resolved["lm"]
        assert resolved["data"]["version"] == 1
        assert identity.trial_id(resolved) == folder == identity.trial_id(config)
        assert identity.identity_differences(config, resolved) == []
        fresh = to_dict(from_dict(config))
        assert fresh["data"]["version"] == 2 and identity.trial_id(fresh) != folder
        assert identity.identity_differences(config, fresh) == ["data.version"]


@pytest.mark.parametrize("key, value", [("lm.mask_per_sequence", True),
                                        ("lm.dyneval_search", "grid")])
def test_added_keys_at_another_value_are_another_trial(key, value):
    folder, config = _stored_lm_records()[0]
    changed = identity.with_value(to_dict(from_dict(identity.as_stored(config))), key, value)
    assert identity.trial_id(changed) != folder
    assert identity.identity_differences(config, changed) == [key]


def _used_scales(per_sequence: bool, dropoute: float = 0.5):
    """The word-dropout scale each token got in one m = 1 step, and the step's inputs."""
    import torch

    from maxup.lm.objective import train_step
    from maxup.models.awd_lstm import AWDLSTM

    torch.manual_seed(0)
    model = AWDLSTM(6, emsize=4, nhid=5, nlayers=1, dropoute=dropoute, dropouti=0.2,
                    dropouth=0.1, dropout=0.2, wdrop=0.2)
    words = torch.arange(6).repeat(4).view(4, 6).t().contiguous()  # (6, 4): word t at row t
    words = torch.cat([words, words])  # each word twice in every column
    words = words.repeat(1, 16)  # 64 columns
    seen = {}
    inner = model.forward

    def spy(w, hidden, noise=None, emb_scale=None):
        seen["scale"] = emb_scale if emb_scale is not None else noise.emb_scale
        seen["noise"] = noise
        return inner(w, hidden, noise, emb_scale=emb_scale)

    model.forward = spy
    gen = torch.Generator().manual_seed(3)
    step = train_step(model, words, words, model.init_hidden(64), gen, m=1, alpha=0, beta=0,
                      adversarial=False, per_sequence=per_sequence)
    return model, words, seen, step


def test_mask_per_sequence_draws_one_word_mask_per_column():
    import torch

    from maxup.models.awd_lstm import word_dropout_scale

    _, words, seen, _ = _used_scales(per_sequence=True)
    scale = seen["scale"]
    assert set(scale.unique().tolist()) == {0.0, 2.0}
    for b in range(words.shape[1]):  # one mask per column: a word keeps its value in it
        for w in range(6):
            assert scale[:, b][words[:, b] == w].unique().numel() == 1
    # ... and columns draw independently: some word is kept in one column, dropped in another
    assert any(scale[w][words[w] == w].unique().numel() == 2 for w in range(6))
    # the draws by hand: every other mask first, then a (1, B, words) table, as MaxUp's copies
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    from maxup.models.awd_lstm import AWDLSTM
    model = AWDLSTM(6, emsize=4, nhid=5, nlayers=1, dropoute=0.5, dropouti=0.2, dropouth=0.1,
                    dropout=0.2, wdrop=0.2)
    noise = model.draw_noise(words, gen, word_dropout=False)
    expect = word_dropout_scale(words, 0.5, gen, per_sequence_copies=1)[0]
    assert torch.equal(scale, expect)
    assert torch.equal(seen["noise"].locked[0], noise.locked[0])


def test_default_m1_step_is_still_one_mask_for_the_batch():
    _, words, seen, _ = _used_scales(per_sequence=False)
    scale = seen["scale"]
    for w in range(6):  # awd-lstm-lm: one (V, 1) mask, so a word has one value everywhere
        assert scale[words == w].unique().numel() == 1


@pytest.mark.parametrize("name", ["lm_kjv", "table6_ptb", "table7_wt2"])
def test_lm_spaces_gain_the_control_and_keep_their_other_trial_ids(name):
    """Each LM space plans reference m = 1, the per-sequence control and MaxUp; the reference
    and MaxUp trials are the ones a plan without the new key makes (the key removed by hand)."""
    from maxup.config import set_dotted
    from maxup.platform.space import REPO_ROOT, load_space

    trials = load_space(REPO_ROOT / "search_spaces" / f"{name}.yaml").expand()
    arms = {}
    for t in trials:
        lm, m = t.config["lm"], t.config["maxup"]["m"]
        arms.setdefault(t.axes["arm"], set()).add((m, lm["mask_per_sequence"]))
        if not lm["mask_per_sequence"]:
            old = json.loads(json.dumps(t.config))
            del old["lm"]["mask_per_sequence"]
            assert identity.trial_id(old) == t.trial_id
        else:
            plain = json.loads(json.dumps(t.config))
            set_dotted(plain, "lm.mask_per_sequence", False)
            assert identity.trial_id(plain) != t.trial_id
    assert arms["reference"] == {(1, False)} and arms["control"] == {(1, True)}
    assert {m for a, v in arms.items() if a.startswith("maxup") for m, _ in v} >= {2}
    assert len(trials) == 5 * len(arms)


def test_finetune_windows_are_capped_at_bptt_plus_10(tmp_path, monkeypatch):
    """finetune.py caps the drawn window at bptt + 10; main.py does not. Every drawn length
    is forced to 40 here: the main stage trains 40-row windows, fine-tuning bptt + 10 = 18."""
    from test_lm_engine import lm_config, write_corpus

    import maxup.lm.task as task_mod
    from maxup.engine import train

    lengths: dict[int, set] = {}
    inner = task_mod.train_step
    stage = {"epoch": 0}

    def spy(model, words, *args, **kwargs):
        lengths.setdefault(stage["epoch"], set()).add(words.shape[0])
        return inner(model, words, *args, **kwargs)

    real_epoch = task_mod.LMTask.train_epoch

    def epoch_spy(self, model, epoch, *a, **k):
        stage["epoch"] = epoch
        return real_epoch(self, model, epoch, *a, **k)

    monkeypatch.setattr(task_mod, "train_step", spy)
    monkeypatch.setattr(task_mod, "draw_seq_len", lambda bptt, gen: 40)
    monkeypatch.setattr(task_mod.LMTask, "train_epoch", epoch_spy)
    root = write_corpus(tmp_path / "corpus", n_train=400)
    cfg = lm_config(root, train={"epochs": 2}, maxup={"m": 1, "warmup_epochs": 0})
    cfg["lm"].update(finetune_epochs=[1], asgd="off")
    train(cfg, tmp_path / "r", log=None)
    assert max(lengths[0]) == 40  # main stage: uncapped
    assert max(lengths[1]) == 8 + 10 and 8 + 10 in lengths[1]  # fine-tuning: bptt + 10

"""AWD-LSTM: parameter counts, dropout masks, ADV perturbation, MaxUp over word-dropout masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maxup.errors import ConfigError
from maxup.lm.objective import maxup_step, train_step
from maxup.models import build_model, list_models
from maxup.models.awd_lstm import AWDLSTM, count_parameters, lm_token_losses, word_dropout_scale


def test_parameter_counts_of_the_papers_models():
    # Tables 6/7's "24M" and "33M": 3 x 1150 LSTM, emb 400, tied, PTB / WT2 vocabularies.
    assert count_parameters(AWDLSTM(10_000, emsize=400, nhid=1150, nlayers=3)) == 24_221_600
    assert count_parameters(AWDLSTM(33_278, emsize=400, nhid=1150, nlayers=3)) == 33_556_078


def test_registered_but_not_an_image_model():
    assert "awd_lstm" in list_models()
    with pytest.raises(ConfigError, match="awd_lstm needs a text dataset"):
        build_model("awd_lstm", num_classes=10, mean=(0.5,), std=(0.5,))


def test_tied_weights_and_shapes():
    model = AWDLSTM(50, emsize=8, nhid=12, nlayers=3)
    assert model.decoder.weight is model.encoder.weight
    words = torch.randint(0, 50, (7, 4))
    out, hidden, raw = model(words, model.init_hidden(4))
    assert out.shape == raw.shape == (7, 4, 8)
    assert [h.shape for h, _ in hidden] == [(1, 4, 12), (1, 4, 12), (1, 4, 8)]
    # without noise (evaluation) the forward is the plain stacked LSTM: check layer 1 against
    # nn.LSTM with the same weights
    lstm = torch.nn.LSTM(8, 12)
    r = model.rnns[0]
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(r.weight_ih)
        lstm.weight_hh_l0.copy_(r.weight_hh)
        lstm.bias_ih_l0.copy_(r.bias_ih)
        lstm.bias_hh_l0.copy_(r.bias_hh)
    x = model.encoder(words)
    ref, _ = lstm(x)
    mine, _ = r(x, model.init_hidden(4)[0])
    torch.testing.assert_close(mine, ref)


def test_word_dropout_scale_is_a_word_level_mask():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(0, 30, (40, 6))
    p = 0.3
    s = word_dropout_scale(words, p, g)
    assert s.shape == (40, 6)
    assert torch.isin(s.unique(), torch.tensor([0.0, 1 / 0.7])).all()
    for w in words.unique():  # one (V, 1) mask: a word has one value everywhere
        assert s[words == w].unique().numel() == 1
    ms = word_dropout_scale(words, p, g, per_sequence_copies=5)
    assert ms.shape == (5, 40, 6)
    for k in range(5):
        for b in range(6):
            col, sc = words[:, b], ms[k, :, b]
            for w in col.unique():  # per copy and sequence: one value per word
                assert sc[col == w].unique().numel() == 1
    # copies and sequences are independent draws: not all equal
    assert not torch.equal(ms[0], ms[1])
    big = word_dropout_scale(torch.arange(20_000).view(200, 100), p, g, per_sequence_copies=2)
    assert abs(float((big > 0).float().mean()) - 0.7) < 0.01


def test_adversarial_perturbation_lowers_the_target_logit_by_eps_norms():
    torch.manual_seed(0)
    model = AWDLSTM(20, emsize=6, nhid=8, nlayers=2, adv_eps=0.5)
    h = torch.randn(9, 6, requires_grad=True)
    y = torch.randint(0, 20, (9,))
    adv = lm_token_losses(model, h, y, adversarial=True)
    logits = model.decoder(h).detach()
    w = model.encoder.weight[y].detach()
    cos = (h.detach() * w).sum(1)
    drop = 0.5 * w.norm(dim=1) * h.detach().norm(dim=1) * (cos > 0).float()
    expected = F.cross_entropy(logits.index_put((torch.arange(9), y), -drop, accumulate=True),
                               y, reduction="none")
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    assert (adv >= lm_token_losses(model, h, y) - 1e-6).all()


def _naive_maxup(model, words, targets, hidden, noise, masks, alpha, beta):
    """Forward every copy with gradient, materialising each sequence's masked (V, E)
    embedding matrix; select each sequence's worst copy; loss over the selected copies."""
    m, b, _ = masks.shape
    t = words.shape[0]
    outs, raws, hids, per_seq = [], [], [], []
    for k in range(m):
        emb = torch.stack([F.embedding(words[:, j], masks[k, j].unsqueeze(1)
                                       * model.encoder.weight) for j in range(b)], dim=1)
        x = emb * noise.locked[0]
        hk = []
        for i, rnn in enumerate(model.rnns):
            x, st = rnn(x, hidden[i], noise.weight[i])
            hk.append(st)
            if i < model.nlayers - 1:
                x = x * noise.locked[i + 1]
        raws.append(x)
        out = x * noise.locked[-1]
        outs.append(out)
        hids.append(hk)
        per_seq.append(F.cross_entropy(model.decoder(out).reshape(-1, model.vocab_size),
                                       targets.reshape(-1), reduction="none")
                       .view(t, b).sum(0))
    losses = torch.stack(per_seq)  # (m, B)
    chosen = losses.detach().argmax(0)
    out = torch.stack([outs[chosen[j]][:, j] for j in range(b)], dim=1)
    raw = torch.stack([raws[chosen[j]][:, j] for j in range(b)], dim=1)
    ce = torch.stack([losses[chosen[j], j] for j in range(b)]).sum() / (t * b)
    loss = ce + alpha * out.pow(2).mean() + beta * (raw[1:] - raw[:-1]).pow(2).mean()
    new_hidden = [(torch.cat([hids[chosen[j]][i][0][:, j:j + 1] for j in range(b)], 1),
                   torch.cat([hids[chosen[j]][i][1][:, j:j + 1] for j in range(b)], 1))
                  for i in range(model.nlayers)]
    return loss, chosen, new_hidden


@pytest.mark.parametrize("chunk", [None, 2])
def test_maxup_step_matches_the_naive_reference(chunk):
    torch.manual_seed(1)
    v, m, t, b, p = 40, 4, 9, 5, 0.4
    model = AWDLSTM(v, emsize=8, nhid=10, nlayers=3, dropout=0.2, dropouth=0.2, dropouti=0.3,
                    dropoute=p, wdrop=0.3).double()
    words = torch.randint(0, v, (t, b))
    targets = torch.randint(0, v, (t, b))
    hidden = [(h.normal_(), c.normal_()) for h, c in model.init_hidden(b)]
    g = torch.Generator().manual_seed(3)
    noise = model.draw_noise(words, g, word_dropout=False)
    masks = (torch.rand(m, b, v, generator=g) >= p).double() / (1 - p)  # full (m, B, V)
    scales = torch.stack([masks[k].gather(1, words.t()).t() for k in range(m)])  # (m, T, B)

    model.zero_grad()
    ref_loss, ref_chosen, ref_hidden = _naive_maxup(model, words, targets, hidden, noise, masks,
                                                    alpha=2.0, beta=1.0)
    ref_loss.backward()
    ref_grads = {n: q.grad.clone() for n, q in model.named_parameters()}

    model.zero_grad()
    step = maxup_step(model, words, targets, hidden, noise, scales, alpha=2.0, beta=1.0,
                      adversarial=False, chunk=chunk)
    step.loss.backward()
    assert abs(float(step.loss.detach()) - float(ref_loss.detach())) < 1e-6
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, ref_grads[n], atol=1e-6, rtol=0, msg=n)
    assert step.wins.tolist() == torch.bincount(ref_chosen, minlength=m).tolist()
    assert len(set(ref_chosen.tolist())) > 1  # the selection is per sequence, not per batch
    for (h, c), (rh, rc) in zip(step.hidden, ref_hidden, strict=True):
        torch.testing.assert_close(h, rh.detach(), atol=1e-9, rtol=0)
        torch.testing.assert_close(c, rc.detach(), atol=1e-9, rtol=0)
    assert step.gap > 0


def test_train_step_m1_is_the_reference_step_and_deterministic():
    torch.manual_seed(0)
    model = AWDLSTM(30, emsize=6, nhid=8, nlayers=2, dropoute=0.2)
    words, targets = torch.randint(0, 30, (6, 3)), torch.randint(0, 30, (6, 3))

    def once(m):
        g = torch.Generator().manual_seed(5)
        return train_step(model, words, targets, model.init_hidden(3), g, m=m, alpha=2.0,
                          beta=1.0, adversarial=False)

    a, b = once(1), once(1)
    assert float(a.loss) == float(b.loss)
    assert a.wins.tolist() == [3]
    c = once(3)
    assert c.wins.sum() == 3 and len(c.wins) == 3

"""The MaxUp objective against the paper's math, with every reference computed by hand.

Equation 2: L = mean_i max_k ℓ(x'_{k,i}); Equation 3: ∇L is the gradient of the argmax copies;
Algorithm 1 with m = 1 is standard augmentation training; Lemma 1 / Theorem 1: for a linear
loss under Gaussian noise, E[max of m copies] − ℓ(x) = σ‖∇ℓ‖·E[max of m standard normals],
while Equation 5's average has no first-order term.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_helpers import clone_gen, gen

from maxup.augment import Compose, CropFlip, CutMix, Cutout, GaussianNoise, MixUp
from maxup.objective import MaxUpLoss, soft_cross_entropy

K = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SmallNet(nn.Module):
    """Conv + MLP without BatchNorm or dropout (a deterministic function of its input)."""

    def __init__(self, bn: bool = False, c: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.bn1 = nn.BatchNorm1d(16) if bn else nn.Identity()
        self.fc2 = nn.Linear(16, K)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.tanh(self.bn1(self.fc1(h.flatten(1)))))


def make(seed=0, bn=False, b=6):
    torch.manual_seed(seed)
    model = SmallNet(bn=bn).double()
    x = torch.rand(b, 3, 8, 8, dtype=torch.float64, generator=gen(seed + 100))
    y = torch.randint(0, K, (b,), generator=gen(seed + 200))
    return model, x, y


AUGS = {
    "gaussian": lambda: GaussianNoise(0.3, K),
    "cutout": lambda: Cutout(4, K),
    "crop_flip+cutout": lambda: Compose([CropFlip(2, K), Cutout(3, K)]),
    "cutmix": lambda: CutMix(1.0, K),
}


def hand_copies(aug, x, y, g, m):
    """m independent augmentation calls from a clone of g, stacked copies × batch."""
    g = clone_gen(g)
    xs, ts = zip(*(aug(x, y, g) for _ in range(m)))
    return torch.cat(xs), torch.cat(ts)


def hand_losses(model, xs, ts, m):
    """(m, B) per-copy losses with F.cross_entropy (probability targets), grad enabled."""
    return F.cross_entropy(model(xs), ts.to(xs.dtype), reduction="none").view(m, -1)


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- Equation 3


@pytest.mark.parametrize("aug_name", sorted(AUGS))
def test_gradient_is_gradient_of_explicit_worst_copies(aug_name):
    m, aug = 4, AUGS[aug_name]()
    model, x, y = make(1)
    g = gen(7)
    xs, ts = hand_copies(aug, x, y, g, m)

    ref = copy.deepcopy(model)
    losses = hand_losses(ref, xs, ts, m)  # (m, B)
    b = x.shape[0]
    worst = [max(range(m), key=lambda k, i=i: losses[k, i].item()) for i in range(b)]
    sel = torch.stack([losses[worst[i], i] for i in range(b)])
    sel.mean().backward()

    out = MaxUpLoss(aug, m=m, num_classes=K)(model, x, y, g)
    out.loss.backward()
    assert out.worst.tolist() == worst
    assert torch.allclose(out.loss.detach(), sel.mean().detach(), rtol=0, atol=1e-12)
    for got, want in zip(grads(model), grads(ref)):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    # the generator advanced exactly like m augmentation calls
    assert torch.equal(g.get_state(), (lambda c: ([aug(x, y, c) for _ in range(m)], c)[1])(
        clone_gen(gen(7))).get_state())


def test_draw_copies_layout_is_copies_by_batch():
    aug, m = GaussianNoise(0.5, K), 3
    model, x, y = make(2)
    g = gen(3)
    c = clone_gen(g)
    xs, ts = MaxUpLoss(aug, m=m, num_classes=K).draw_copies(x, y, g)
    b = x.shape[0]
    for k in range(m):
        want = x + 0.5 * torch.randn(x.shape, generator=c, dtype=x.dtype)
        assert torch.equal(xs[k * b:(k + 1) * b], want)
        assert torch.equal(ts[k * b:(k + 1) * b], F.one_hot(y, K).float())


@pytest.mark.parametrize("aug_name", sorted(AUGS))
@pytest.mark.parametrize("m", [2, 4, 7])
@pytest.mark.parametrize("chunk", [None, 3])
def test_efficient_equals_naive(aug_name, m, chunk):
    model_e, x, y = make(3)
    model_n = copy.deepcopy(model_e)
    aug = AUGS[aug_name]()
    out_e = MaxUpLoss(aug, m=m, num_classes=K, chunk=chunk)(model_e, x, y, gen(11))
    out_n = MaxUpLoss(aug, m=m, num_classes=K, mode="naive")(model_n, x, y, gen(11))
    out_e.loss.backward()
    out_n.loss.backward()
    assert torch.equal(out_e.worst, out_n.worst)
    assert torch.allclose(out_e.loss, out_n.loss, rtol=0, atol=1e-12)
    assert math.isclose(out_e.gap, out_n.gap, abs_tol=1e-12)
    assert torch.equal(out_e.wins, out_n.wins)
    assert torch.equal(out_e.targets, out_n.targets)
    for got, want in zip(grads(model_e), grads(model_n)):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- BatchNorm


def trained_bn_model():
    model, x, y = make(4, bn=True, b=8)
    model.train()
    with torch.no_grad():  # move running stats away from their initial values
        for s in range(3):
            model(torch.rand(8, 3, 8, 8, dtype=torch.float64, generator=gen(s)) * 2 + 0.3)
    return model, x, y


def bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("bn", ["batch_stats", "eval"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_selection_pass_leaves_bn_stats_and_modes_and_matches_hand_forward(bn, chunk):
    model, x, y = trained_bn_model()
    model.fc2.eval()  # a mixed-mode model: every module's own mode must come back
    modes = [mod.training for mod in model.modules()]
    before = bn_buffers(model)
    m = 3
    obj = MaxUpLoss(GaussianNoise(0.2, K), m=m, num_classes=K, bn=bn, chunk=chunk)
    xs, ts = hand_copies(obj.augmentation, x, y, gen(5), m)

    got = obj.selection_losses(model, xs, ts, m)

    after = bn_buffers(model)
    assert before.keys() == after.keys() and len(before) == 6
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [mod.training for mod in model.modules()] == modes

    ref = copy.deepcopy(model)
    if bn == "eval":
        ref.eval()
        want = F.cross_entropy(ref(xs), ts.double(), reduction="none")
    else:  # BN in train mode normalises with each forward's batch statistics
        ref.train()
        b = x.shape[0]
        size = xs.shape[0] if chunk is None else chunk * b
        want = torch.cat([F.cross_entropy(ref(xs[s:s + size]), ts[s:s + size].double(),
                                          reduction="none")
                          for s in range(0, xs.shape[0], size)])
    assert torch.allclose(got, want.detach(), rtol=0, atol=1e-12)


def test_batch_stats_and_eval_selection_differ():
    # the two modes really are different functions (guards against a no-op `bn` switch)
    model, x, y = trained_bn_model()
    xs, ts = hand_copies(GaussianNoise(0.2, K), x, y, gen(5), 2)
    a = MaxUpLoss(GaussianNoise(0.2, K), 2, K).selection_losses(model, xs, ts, 2)
    b = MaxUpLoss(GaussianNoise(0.2, K), 2, K, bn="eval").selection_losses(model, xs, ts, 2)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["efficient", "naive"])
def test_full_step_updates_bn_running_stats_once(mode):
    # efficient: only the trained forward of the B selected copies touches running stats
    model, x, y = trained_bn_model()
    ref = copy.deepcopy(model)
    m = 3
    out = MaxUpLoss(GaussianNoise(0.2, K), m=m, num_classes=K, mode=mode)(model, x, y, gen(9))
    xs, _ = hand_copies(GaussianNoise(0.2, K), x, y, gen(9), m)
    b = x.shape[0]
    if mode == "efficient":
        ref(xs[out.worst * b + torch.arange(b)])
    else:
        ref(xs)
    for k, v in bn_buffers(ref).items():
        assert torch.allclose(bn_buffers(model)[k], v, rtol=0, atol=1e-12), k


# --------------------------------------------------------------------------- soft labels


@pytest.mark.parametrize("aug_cls", [CutMix, MixUp])
@pytest.mark.parametrize("mode", ["efficient", "naive"])
def test_soft_labels_max_is_over_each_copys_own_mixed_loss(aug_cls, mode):
    m, b = 4, 8
    model, x, y = make(5, b=b)
    aug = aug_cls(1.0, K)
    xs, ts = hand_copies(aug, x, y, gen(21), m)
    tv = ts.view(m, b, K)
    # every copy drew its own mixing: the targets of the m copies are not all the same
    assert all(not torch.equal(tv[0], tv[k]) for k in range(1, m))
    assert torch.allclose(ts.sum(1), torch.ones(m * b))

    with torch.no_grad():
        losses = hand_losses(model, xs, ts, m)
    worst = losses.argmax(0)

    out = MaxUpLoss(aug, m=m, num_classes=K, mode=mode)(model, x, y, gen(21))
    assert torch.equal(out.worst, worst)
    for i in range(b):
        assert torch.equal(out.targets[i], tv[worst[i], i])  # the selected copy's own target
    assert torch.allclose(out.loss.detach(), losses.max(0).values.mean(), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- m = 1 is ERM


def test_m1_is_standard_augmentation_training():
    torch.manual_seed(0)
    model_a = SmallNet().double()
    model_b = copy.deepcopy(model_a)
    initial = copy.deepcopy(model_a)
    aug = Compose([CropFlip(2, K), Cutout(3, K)])
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=gen(1))
    y = torch.randint(0, K, (6,), generator=gen(2))
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.5, momentum=0.9)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.5, momentum=0.9)
    obj = MaxUpLoss(aug, m=1, num_classes=K)
    ga, gb = gen(33), gen(33)
    for _ in range(5):
        opt_a.zero_grad()
        obj(model_a, x, y, ga).loss.backward()
        opt_a.step()
        opt_b.zero_grad()
        xa, _ = aug(x, y, gb)
        F.cross_entropy(model_b(xa), y).backward()
        opt_b.step()
    # Both trained alike, and the training really moved every parameter from where both
    # started (the comparison above would pass vacuously for two untouched models).
    for pa, pb, p0 in zip(model_a.parameters(), model_b.parameters(), initial.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-7)
        assert (pa - p0).abs().max() > 1e-4
    assert torch.equal(ga.get_state(), gb.get_state())


def test_m_override_per_call_uses_m_copies():
    model, x, y = make(6)
    out = MaxUpLoss(GaussianNoise(0.3, K), m=4, num_classes=K)(model, x, y, gen(1), m=2)
    assert out.wins.shape == (2,) and int(out.wins.sum()) == x.shape[0]
    out1 = MaxUpLoss(GaussianNoise(0.3, K), m=4, num_classes=K)(model, x, y, gen(1), m=1)
    assert out1.gap == 0.0 and out1.wins.tolist() == [x.shape[0]]


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("mode", ["efficient", "naive"])
def test_gap_and_wins_match_hand_computation(mode):
    m = 5
    model, x, y = make(7, b=10)
    aug = Cutout(4, K)
    xs, ts = hand_copies(aug, x, y, gen(4), m)
    with torch.no_grad():
        losses = hand_losses(model, xs, ts, m)
    gap = (losses.max(0).values - losses.mean(0)).mean().item()
    wins = torch.bincount(losses.argmax(0), minlength=m)
    out = MaxUpLoss(aug, m=m, num_classes=K, mode=mode)(model, x, y, gen(4))
    assert math.isclose(out.gap, gap, rel_tol=1e-9, abs_tol=1e-12)
    assert out.gap > 0
    assert torch.equal(out.wins, wins) and int(out.wins.sum()) == x.shape[0]


def test_constructor_refuses_bad_arguments():
    for kwargs in ({"m": 0}, {"m": 2, "mode": "fast"}, {"m": 2, "bn": "train"}):
        with pytest.raises(ValueError):
            MaxUpLoss(Cutout(2, K), num_classes=K, **kwargs)


def test_regression_soft_cross_entropy_keeps_float64():
    # soft_cross_entropy used to cast logits with .float(), silently computing float64
    # models' losses in float32; it must only ever upcast (bf16/fp16 -> fp32).
    logits = torch.randn(4, 3, dtype=torch.float64, generator=gen(0)) * 30
    y = torch.tensor([0, 1, 2, 1])
    got = soft_cross_entropy(logits, F.one_hot(y, 3).float())
    assert got.dtype == torch.float64
    assert torch.allclose(got, F.cross_entropy(logits, y, reduction="none"), rtol=1e-15,
                          atol=0)
    assert soft_cross_entropy(logits.bfloat16(), F.one_hot(y, 3).float()).dtype == torch.float32


# --------------------------------------------------------------------------- Lemma 1


def expected_max_of_normals(m: int) -> float:
    """E[max of m iid N(0,1)] = m ∫ z φ(z) Φ(z)^(m-1) dz, by scipy quadrature."""
    from scipy import integrate, special

    def integrand(z):
        return m * z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * special.ndtr(z) ** (m - 1)

    val, _ = integrate.quad(integrand, -math.inf, math.inf, epsabs=1e-12)
    return val


def test_expected_max_of_normals_reference():
    for m, want in [(1, 0.0), (2, 0.5642), (4, 1.0294), (10, 1.5388)]:
        assert round(expected_max_of_normals(m), 4) == want
    assert math.isclose(expected_max_of_normals(2), 1 / math.sqrt(math.pi), rel_tol=1e-9)


class LinearLossModel(nn.Module):
    """2-class "model" whose cross-entropy for class 0 is exactly ⟨w, x⟩ + c.

    With logits (0, g) the loss for target (1, 0) is softplus(g); choosing
    g = log(expm1(s)), s = ⟨w, x⟩ + c > 0, gives softplus(g) = log(1 + e^s − 1) = s.
    """

    def __init__(self, w: torch.Tensor, c: float):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.c = c

    def linear(self, x):
        return x.flatten(1) @ self.w + self.c

    def forward(self, x):
        s = self.linear(x)
        return torch.stack([torch.zeros_like(s), torch.log(torch.expm1(s))], dim=1)


@pytest.mark.parametrize("m", [1, 2, 4, 10])
def test_lemma1_expected_max_is_sigma_norm_times_max_of_normals(m):
    d, sigma, b, c = 16, 0.5, 20_000, 10.0
    w = torch.randn(d, dtype=torch.float64, generator=gen(0))
    w = 2.0 * w / w.norm()  # ‖w‖ = 2, so σ‖w‖ = 1
    model = LinearLossModel(w, c)
    x0 = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=gen(1))
    x = x0.expand(b, 1, 4, 4).contiguous()  # the MC sample: B copies of the same example
    y = torch.zeros(b, dtype=torch.long)
    ell_x = float(model.linear(x0).detach())
    aug = GaussianNoise(sigma, 2)

    # the construction is exact: per-copy library loss == ⟨w, x'⟩ + c
    xs, ts = hand_copies(aug, x[:50], y[:50], gen(2), m)
    with torch.no_grad():
        assert torch.allclose(soft_cross_entropy(model(xs), ts), model.linear(xs), rtol=1e-12,
                              atol=0)

    g = gen(1000 + m)
    xs, _ = hand_copies(aug, x, y, g, m)
    with torch.no_grad():
        lin = model.linear(xs).view(m, b)  # ⟨w, x'⟩ + c by hand
        out = MaxUpLoss(aug, m=m, num_classes=2)(model, x, y, g)
    # the objective's max is the max of the linear functional
    assert torch.equal(out.worst, lin.argmax(0))

    scale = sigma * float(w.norm())
    # Var(max of m iid N(0,1)) <= 1, so 4 standard errors of the MC mean are at most:
    tol_max = 4 * scale / math.sqrt(b)
    excess = float(out.loss) - ell_x
    assert abs(excess - scale * expected_max_of_normals(m)) < tol_max, (excess, m)

    # Equation 5: the average over copies has no first-order term (loss − gap = mean copy loss)
    mean_copy = float(out.loss) - out.gap
    assert abs(mean_copy - ell_x) < 4 * scale / math.sqrt(b * m)
    assert math.isclose(mean_copy, float(lin.mean()), rel_tol=1e-9)

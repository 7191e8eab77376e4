"""Tests of the model registry: parameter counts, shapes, Normalize, local weights."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from maxup.errors import ConfigError
from maxup.models import Normalize, build_model, list_models, register_model

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_MODELS = ["resnet20", "resnet32", "resnet56", "resnet110", "preact_resnet110", "wrn28_10"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cifar(name: str, num_classes: int = 10, **kw) -> nn.Module:
    return build_model(name, num_classes=num_classes, mean=CIFAR_MEAN, std=CIFAR_STD, **kw)


def option_a_resnet_params(depth: int, num_classes: int, preact: bool = False) -> int:
    """Parameter count of a CIFAR ResNet with option-A (zero-padding) shortcuts, by hand.

    conv 3x3 c_in->c_out has 9*c_in*c_out weights (no bias); BN(c) has 2c parameters.
    ResNet-20 (n=3), 10 classes:
      stem    3*16*9 + 2*16                                   =     464
      stage 1 3 * (2*16*16*9 + 2*2*16)                        =  14,016
      stage 2 (16*32*9 + 32*32*9 + 4*32) + 2*(2*32*32*9 + 4*32) = 51,072
      stage 3 (32*64*9 + 64*64*9 + 4*64) + 2*(2*64*64*9 + 4*64) = 203,520
      fc      64*10 + 10                                      =     650
      total                                                   = 269,722
    (1x1-conv+BN projections at the two transitions would add 16*32+64 + 32*64+128 = 2,752,
    giving the often-quoted 272,474.)
    """
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + (0 if preact else 2 * 16)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * cin * width + 9 * width * width
            # post-activation: two BN(width); pre-activation: BN(cin) + BN(width)
            total += 2 * (cin if preact else width) + 2 * width
            cin = width
    if preact:
        total += 2 * 64  # final BN before pooling
    return total + 64 * num_classes + num_classes


def test_hand_count_matches_comment():
    assert option_a_resnet_params(20, 10) == 269_722
    assert option_a_resnet_params(110, 10) == 1_727_962


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet20", 269_722),
        ("resnet32", option_a_resnet_params(32, 10)),
        ("resnet56", option_a_resnet_params(56, 10)),
        ("resnet110", 1_727_962),  # option-A shortcuts (1,730,714 with projections)
        ("preact_resnet110", option_a_resnet_params(110, 10, preact=True)),
        ("wrn28_10", 36_479_194),
    ],
)
def test_cifar_parameter_counts(name, expected):
    assert n_params(cifar(name)) == expected


def test_resnet110_count_for_100_classes():
    # Only the head changes: 64*100 + 100 instead of 64*10 + 10.
    assert n_params(cifar("resnet110", num_classes=100)) == 1_727_962 + 64 * 90 + 90


def test_wrn_dropout_does_not_change_count_and_is_applied():
    m = cifar("wrn28_10", dropout=0.3)
    assert n_params(m) == 36_479_194
    rates = {mod.p for mod in m.modules() if isinstance(mod, nn.Dropout)}
    assert rates == {0.3}


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_forward_shape(name):
    torch.manual_seed(0)
    m = cifar(name, num_classes=7).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_normalize_holds_buffers_and_computes_per_channel():
    norm = Normalize((0.5, 0.25), (0.5, 0.125))
    assert list(norm.parameters()) == []
    assert {k for k, _ in norm.named_buffers()} == {"mean", "std"}
    x = torch.tensor([1.0, 0.5]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    out = norm(x)
    assert torch.allclose(out[0, 0], torch.full((3, 3), 1.0))  # (1 - .5) / .5
    assert torch.allclose(out[0, 1], torch.full((3, 3), 2.0))  # (.5 - .25) / .125


def test_normalize_rejects_bad_std():
    with pytest.raises(ConfigError):
        Normalize((0.5,), (0.0,))
    with pytest.raises(ConfigError):
        build_model("mlp", num_classes=3, in_channels=3, mean=(0.1, 0.2), std=(1.0, 1.0))


@pytest.mark.parametrize("name", CIFAR_MODELS + ["small_cnn", "mlp"])
def test_normalize_is_the_first_operation(name):
    m = cifar(name) if name in CIFAR_MODELS else build_model(
        name, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD, image_size=(32, 32)
    )
    assert isinstance(m[0], Normalize) and m[0] is m.normalize
    calls = []
    hooks = [
        mod.register_forward_hook(lambda mod, inp, out, n=n: calls.append((n, out)))
        for n, mod in m.named_modules()
        if len(list(mod.children())) == 0
    ]
    image = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1).expand(2, 3, 32, 32).clone()
    with torch.no_grad():
        m.eval()(image)
    for h in hooks:
        h.remove()
    first_name, first_out = calls[0]
    assert first_name == "normalize"
    assert torch.count_nonzero(first_out) == 0
    # the layer after it (the stem conv or linear layer) sees an all-zero input as well
    second_name, second_out = calls[1]
    if name != "mlp":  # conv without bias maps zeros to zeros
        assert torch.count_nonzero(second_out) == 0, second_name


def test_normalize_not_counted_as_parameters():
    m = cifar("resnet20")
    assert all(not name.startswith("normalize") for name, _ in m.named_parameters())
    assert "normalize.mean" in m.state_dict()


def test_unknown_model_name_lists_choices():
    with pytest.raises(ConfigError) as e:
        build_model("resnet999", num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert e.value.field == "model.name"
    assert "resnet110" in str(e.value) and "wrn28_10" in str(e.value)


def test_list_models_has_required_names():
    required = set(CIFAR_MODELS) | {"resnet50", "resnet101", "small_cnn", "mlp"}
    required |= {f"efficientnet_b{i}" for i in range(8)}
    assert required <= set(list_models())
    assert list_models() == sorted(list_models())


def test_register_model_extends_registry(monkeypatch):
    from maxup.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    @register_model("test_linear_probe")
    def _probe(*, num_classes, in_channels=3, dropout=0.0, image_size=None):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    m = build_model("test_linear_probe", num_classes=4, in_channels=1, mean=(0.5,), std=(0.5,))
    assert m(torch.rand(3, 1, 5, 5)).shape == (3, 4)
    with pytest.raises(ValueError):
        register_model("test_linear_probe")(lambda **kw: None)


@pytest.mark.parametrize("field,kw", [
    ("model.num_classes", {"num_classes": 0}),
    ("model.dropout", {"num_classes": 10, "dropout": 1.5}),
    ("model.in_channels", {"num_classes": 10, "in_channels": 0}),
])  # fmt: skip
def test_bad_arguments_raise_config_error(field, kw):
    with pytest.raises(ConfigError) as e:
        build_model("small_cnn", mean=(0.5,), std=(0.5,), **kw)
    assert e.value.field == field


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 16, 16)])
def test_small_models_accept_common_shapes(shape):
    c = shape[0]
    for name in ("small_cnn", "mlp"):
        m = build_model(
            name, num_classes=10, in_channels=c, mean=(0.5,) * c, std=(0.25,) * c,
            image_size=shape[1:],
        )
        assert m(torch.rand(4, *shape)).shape == (4, 10)


def test_mlp_has_no_batchnorm_or_dropout():
    m = build_model("mlp", num_classes=10, in_channels=1, mean=(0.3,), std=(0.4,), dropout=0.5)
    kinds = {type(mod) for mod in m.modules()}
    assert not any(issubclass(k, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for k in kinds)
    # default image_size (8, 8): 64 -> 128 -> 128 -> 10
    assert n_params(m) == (64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)
    # other input sizes are pooled to 8x8
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_small_cnn_is_fast_on_fashion_mnist_sized_epoch():
    torch.manual_seed(0)
    m = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.286,), std=(0.353,))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.rand(2000, 1, 28, 28), torch.randint(0, 10, (2000,))
    t0 = time.perf_counter()
    for i in range(0, 2000, 128):
        loss = nn.functional.cross_entropy(m(x[i : i + 128]), y[i : i + 128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert time.perf_counter() - t0 < 30.0  # ~0.3 s on an idle 2-core CPU; bound for load


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
def test_imagenet_models_build_without_download(name, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    m = build_model(
        name, num_classes=5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    ).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 64, 64)).shape == (1, 5)


def test_imagenet_model_with_one_input_channel():
    m = build_model("resnet50", num_classes=3, in_channels=1, mean=(0.5,), std=(0.5,)).eval()
    assert m.net.conv1.in_channels == 1
    with torch.no_grad():
        assert m(torch.rand(1, 1, 32, 32)).shape == (1, 3)


def test_efficientnet_dropout_is_passed():
    m = build_model("efficientnet_b0", num_classes=3, mean=(0.5,) * 3, std=(0.5,) * 3,
                    dropout=0.4)  # fmt: skip
    assert m.net.classifier[0].p == 0.4


# ----------------------------------------------------------------------------- weights


def _trained_like(name="resnet20", **kw):
    torch.manual_seed(1)
    m = cifar(name, **kw)
    with torch.no_grad():  # make BN statistics non-default so they must be loaded too
        m.train()(torch.rand(8, 3, 32, 32))
    return m.eval()


@pytest.mark.parametrize("wrap", ["raw", "model_key", "ddp_prefix", "bare_net"])
def test_local_weights_load(tmp_path, wrap):
    src = _trained_like()
    sd = src.state_dict()
    if wrap == "model_key":
        sd = {"model": sd, "epoch": 3}
    elif wrap == "ddp_prefix":
        sd = {"module." + k: v for k, v in sd.items()}
    elif wrap == "bare_net":
        sd = src.net.state_dict()
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    torch.manual_seed(2)
    fresh = cifar("resnet20", weights=str(path)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), src(x))
    assert torch.equal(fresh.net.bn1.running_mean, src.net.bn1.running_mean)


def test_missing_weights_file_refused(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(ConfigError) as e:
        cifar("resnet20", weights=str(path))
    assert e.value.field == "model.weights"
    assert str(path) in str(e.value) and "an existing local file" in str(e.value)


def test_weights_for_other_architecture_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(cifar("resnet32").state_dict(), path)
    with pytest.raises(ConfigError) as e:
        cifar("resnet20", weights=str(path))
    assert e.value.field == "model.weights"


def test_head_of_other_size_is_skipped(tmp_path):
    src = _trained_like(num_classes=1000)
    path = tmp_path / "w.pt"
    torch.save(src.net.state_dict(), path)  # bare checkpoint with a 1000-class head
    torch.manual_seed(3)
    fresh = cifar("resnet20", num_classes=10, weights=str(path))
    assert fresh.net.fc.weight.shape == (10, 64)
    for k, v in src.net.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(fresh.net.state_dict()[k], v), k


def test_non_state_dict_file_refused(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError):
        cifar("resnet20", weights=str(path))

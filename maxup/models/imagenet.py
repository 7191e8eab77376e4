"""ImageNet architectures from torchvision, built with ``weights=None`` (never downloaded).

``resnet50``, ``resnet101`` and ``efficientnet_b0`` ... ``efficientnet_b7``. Pretrained
weights come only from a local file passed to ``build_model(weights=...)``; a 1000-class
checkpoint fine-tuned to another ``num_classes`` loads everything except the classifier head
(``fc`` / ``classifier.1``), which keeps its fresh initialisation.

``dropout``: EfficientNets use it as the classifier dropout (``build_model``'s default is 0,
not torchvision's per-variant 0.2-0.5, so pass it explicitly to reproduce torchvision);
ResNets ignore it. ``in_channels != 3`` replaces the stem convolution with a fresh one of the
same shape apart from its input channels. ``image_size`` is ignored.
"""

from __future__ import annotations

from torch import nn

from maxup.models.registry import register_model


def _replace_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def _torchvision(name: str):
    """torchvision's builder ``name``, imported on first use: registering the models must not
    import torchvision (~2.5 s of CPU in every process that imports :mod:`maxup.models`)."""
    from torchvision import models as tvm

    return getattr(tvm, name)


def _resnet(name: str):
    def build(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0, image_size=None):
        net = _torchvision(name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = _replace_conv(net.conv1, in_channels)
        return net

    build.__doc__ = f"torchvision {name} (weights=None); dropout ignored."
    return build


def _efficientnet(name: str):
    def build(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0, image_size=None):
        net = _torchvision(name)(weights=None, num_classes=num_classes, dropout=dropout)
        if in_channels != 3:
            net.features[0][0] = _replace_conv(net.features[0][0], in_channels)
        return net

    build.__doc__ = f"torchvision {name} (weights=None); dropout before the classifier."
    return build


register_model("resnet50")(_resnet("resnet50"))
register_model("resnet101")(_resnet("resnet101"))
for _i in range(8):
    _name = f"efficientnet_b{_i}"
    register_model(_name)(_efficientnet(_name))

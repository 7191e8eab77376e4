"""CIFAR architectures: ResNet-20/32/56/110, PreAct-ResNet-110 and WRN-28-10.

Shortcut convention (ResNet and PreAct-ResNet): **option A** of He et al. (2016a), as in
their CIFAR experiments: when a stage halves the resolution and doubles the width, the
shortcut subsamples the input with stride 2 and zero-pads the new channels (a
parameter-free identity shortcut). Parameter counts for 10 classes (excluding the
Normalize buffers): ResNet-20 269,722; ResNet-110 1,727,962. (With 1x1-conv+BN projection
shortcuts the counts would be 272,474 and 1,730,714: two projections cost
16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters.)

WRN-28-10 (Zagoruyko & Komodakis 2016) uses pre-activation blocks with 1x1-conv projection
shortcuts (no bias, no BN) wherever the width changes, as in the authors' code: 36,479,194
parameters for 10 classes.

``dropout``: ResNet/PreAct-ResNet apply it to the pooled features before the final linear
layer; WRN applies it between the two convolutions of every block (as in the WRN paper).
Default 0 (MaxUp trains without dropout). ``image_size`` is ignored (global average
pooling makes the networks size-agnostic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maxup.models.registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: stride-``stride`` subsampling plus zero channels up to ``cout``.

    Args:
        cin: input channels.
        cout: output channels (>= cin).
        stride: spatial subsampling factor.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, cin, H, W). Returns (N, cout, ceil(H/stride), ceil(W/stride))."""
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return ZeroPadShortcut(cin, cout, stride)


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016a): conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b): BN-ReLU-conv-BN-ReLU-conv, add."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3x3 conv (16) then 3 stages of ``n`` blocks (16/32/64), pool, linear.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: output logits.
        in_channels: input channels.
        dropout: dropout on the pooled features before the linear layer.
        preact: use pre-activation blocks (adds a final BN-ReLU, drops the stem BN).
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        preact: bool = False,
    ):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        block = PreActBlock if preact else BasicBlock
        self.preact = preact
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn_final = nn.BatchNorm2d(64) if preact else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) normalised images. Returns (N, num_classes) logits."""
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.preact:
            out = F.relu(self.bn_final(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(self.dropout(out))


class WideBlock(nn.Module):
    """WRN block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, 1x1-conv shortcut on width change."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.dropout = nn.Dropout(dropout)
        self.equal = cin == cout and stride == 1
        self.shortcut = (
            None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        out = self.conv1(o)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # As in the authors' code, the projection sees the pre-activated input.
        return out + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-widen: stem conv (16), 3 stages of n = (depth-4)/6 blocks, BN-ReLU, linear.

    Args:
        depth: 6n + 4 (28 for WRN-28-10).
        widen: width multiplier k (stage widths 16k, 32k, 64k).
        num_classes: output logits.
        in_channels: input channels.
        dropout: dropout between the two convolutions of each block.
    """

    def __init__(
        self, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = _conv3x3(in_channels, 16)
        layers, cin = [], 16
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(cin, width, 2 if (i > 0 and j == 0) else 1, dropout))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W) normalised images. Returns (N, num_classes) logits."""
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _resnet(depth: int, preact: bool = False):
    def build(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0, image_size=None):
        return CifarResNet(depth, num_classes, in_channels, dropout, preact=preact)

    kind = "PreAct-ResNet" if preact else "ResNet"
    build.__doc__ = f"CIFAR {kind}-{depth} (option-A shortcuts); see module docstring."
    return build


resnet20 = register_model("resnet20")(_resnet(20))
resnet32 = register_model("resnet32")(_resnet(32))
resnet56 = register_model("resnet56")(_resnet(56))
resnet110 = register_model("resnet110")(_resnet(110))
preact_resnet110 = register_model("preact_resnet110")(_resnet(110, preact=True))


@register_model("wrn28_10")
def wrn28_10(*, num_classes: int, in_channels: int = 3, dropout: float = 0.0, image_size=None):
    """WRN-28-10 (widen 10); ``dropout`` between the block convolutions (default 0)."""
    return WideResNet(28, 10, num_classes, in_channels, dropout)

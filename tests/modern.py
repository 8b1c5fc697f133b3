"""Small untrained networks built the way modern CNNs are (grouped ResNeXt blocks, ShuffleNet v2
units, squeeze-and-excitation, dense blocks, inverted residuals, an encoder-decoder, inception
branches, pixel shuffle, functional activations), for the conformance suite and
``benchmarks/conformance.py``. Each factory takes ``in_shape`` and ``num_classes``, so
``--model tests.modern:resnext`` works from the repository root with ``--trust-model-code``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _bn_conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class _Stem(nn.Module):
    """conv-BN-ReLU, stride 2: 28×28 → 14×14 (32 → 16)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _bn_conv(cin, cout, 3, 2)

    def forward(self, x):
        return F.relu(self.conv(x))


class _Head(nn.Module):
    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNeXtBlock(nn.Module):
    def __init__(self, channels: int, width: int, groups: int = 8):
        super().__init__()
        self.reduce = _bn_conv(channels, width, 1)
        self.grouped = _bn_conv(width, width, 3, groups=groups)
        self.expand = _bn_conv(width, channels, 1)

    def forward(self, x):
        y = F.relu(self.reduce(x))
        y = F.relu(self.grouped(y))
        return F.relu(x + self.expand(y))


class ResNeXt(nn.Module):
    """Two ResNeXt bottlenecks with 8-group 3×3 convolutions."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 32)
        self.block1 = ResNeXtBlock(32, 32)
        self.down = _bn_conv(32, 64, 3, 2, groups=8)
        self.block2 = ResNeXtBlock(64, 32)
        self.head = _Head(64, num_classes)

    def forward(self, x):
        x = self.block1(self.stem(x))
        return self.head(self.block2(F.relu(self.down(x))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v2's basic unit: split the channels in two, transform one half, concatenate,
    shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.pw1 = _bn_conv(half, half, 1)
        self.dw = _bn_conv(half, half, 3, groups=half)
        self.pw2 = _bn_conv(half, half, 1)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        b = F.relu(self.pw2(self.dw(F.relu(self.pw1(b)))))
        return channel_shuffle(torch.cat([a, b], 1), 2)


class ShuffleDown(nn.Module):
    """ShuffleNet v2's downsampling unit: two strided branches, concatenated, shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(_bn_conv(cin, cin, 3, 2, groups=cin), _bn_conv(cin, half, 1),
                                  nn.ReLU())
        self.right = nn.Sequential(_bn_conv(cin, half, 1), nn.ReLU(),
                                   _bn_conv(half, half, 3, 2, groups=half),
                                   _bn_conv(half, half, 1), nn.ReLU())

    def forward(self, x):
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 16)
        self.down = ShuffleDown(16, 32)
        self.unit1 = ShuffleUnit(32)
        self.unit2 = ShuffleUnit(32)
        self.last = _bn_conv(32, 64, 1)
        self.head = _Head(64, num_classes)

    def forward(self, x):
        x = self.unit2(self.unit1(self.down(self.stem(x))))
        return self.head(F.relu(self.last(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SENet(nn.Module):
    """Residual blocks with squeeze-and-excitation."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 16)
        self.conv1 = _bn_conv(16, 16)
        self.conv2 = _bn_conv(16, 16)
        self.se = SqueezeExcite(16)
        self.head = _Head(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.se(self.conv2(F.relu(self.conv1(x))))
        return self.head(F.relu(x + y))


class DenseNet(nn.Module):
    """A dense block (every layer reads the concatenation of all before it) and a transition."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, growth: int = 8):
        super().__init__()
        self.stem = _Stem(in_shape[0], 16)
        self.layers = nn.ModuleList(_bn_conv(16 + i * growth, growth) for i in range(3))
        self.transition = _bn_conv(16 + 3 * growth, 24, 1)
        self.head = _Head(24, num_classes)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(F.relu(layer(torch.cat(features, 1))))
        x = F.avg_pool2d(F.relu(self.transition(torch.cat(features, 1))), 2)
        return self.head(x)


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int = 4):
        super().__init__()
        hidden = channels * expand
        self.expand = _bn_conv(channels, hidden, 1)
        self.dw = _bn_conv(hidden, hidden, 3, groups=hidden)
        self.project = _bn_conv(hidden, channels, 1)

    def forward(self, x):
        y = F.relu6(self.dw(F.relu6(self.expand(x))))
        return x + self.project(y)


class MobileNet(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 16)
        self.block1 = InvertedResidual(16)
        self.block2 = InvertedResidual(16)
        self.head = _Head(16, num_classes)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


class EncoderDecoder(nn.Module):
    """A U-Net in miniature: strided encoder, transposed-convolution and upsampling decoder with
    skip concatenations, then a classification head."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.enc1 = _bn_conv(in_shape[0], 8)
        self.enc2 = _bn_conv(8, 16, 3, 2)
        self.enc3 = _bn_conv(16, 32, 3, 2)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = _bn_conv(32, 16)
        self.dec2 = _bn_conv(16 + 8, 8)
        self.head = _Head(8, num_classes)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        e3 = F.relu(self.enc3(e2))
        d1 = F.relu(self.dec1(torch.cat([self.up1(e3), e2], 1)))
        d2 = F.interpolate(d1, scale_factor=2.0, mode="nearest")
        return self.head(F.relu(self.dec2(torch.cat([d2, e1], 1))))


class Inception(nn.Module):
    """Inception-style branches (1×1, 3×3, 5×5 as two 3×3, pooling + 1×1), concatenated."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 16)
        self.b1 = _bn_conv(16, 8, 1)
        self.b3 = nn.Sequential(_bn_conv(16, 8, 1), nn.ReLU(), _bn_conv(8, 12))
        self.b5 = nn.Sequential(_bn_conv(16, 4, 1), nn.ReLU(), _bn_conv(4, 8), nn.ReLU(),
                                _bn_conv(8, 8))
        self.bp = _bn_conv(16, 4, 1)
        self.head = _Head(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        pooled = F.max_pool2d(x, 3, 1, 1)
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)], 1)
        return self.head(F.relu(y))


class PixelShuffleNet(nn.Module):
    """Sub-pixel upsampling (pixel shuffle: 4 channels become a 2×2 block of one)."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 16)
        self.conv = _bn_conv(16, 32)
        self.shuffle = nn.PixelShuffle(2)
        self.post = _bn_conv(8, 16, 3, 2)
        self.head = _Head(16, num_classes)

    def forward(self, x):
        x = self.shuffle(F.relu(self.conv(self.stem(x))))
        return self.head(F.relu(self.post(x)))


class SplitNet(nn.Module):
    """A feature map split along its channels (torch.split, uneven), each part transformed on
    its own, concatenated back."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 24)
        self.wide = _bn_conv(16, 16)
        self.narrow = _bn_conv(8, 8, 1)
        self.head = _Head(24, num_classes)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [16, 8], dim=1)
        return self.head(torch.cat([F.relu(self.wide(a)), F.relu(self.narrow(b))], 1))


class TupleOut(nn.Module):
    """Returns (logits, features), as models with auxiliary outputs do."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 8)
        self.head = _Head(8, num_classes)

    def forward(self, x):
        features = self.stem(x)
        return self.head(features), features


MODERN = {"resnext": ResNeXt, "shufflenet": ShuffleNet, "senet": SENet, "densenet": DenseNet,
          "mobilenet": MobileNet, "unet": EncoderDecoder, "inception": Inception,
          "pixelshuffle": PixelShuffleNet, "split": SplitNet}

resnext, shufflenet, senet, densenet = ResNeXt, ShuffleNet, SENet, DenseNet
mobilenet, unet, inception, pixelshuffle, split, tuple_out = (
    MobileNet, EncoderDecoder, Inception, PixelShuffleNet, SplitNet, TupleOut)


class TwoInputs(nn.Module):
    """Takes an image and a second tensor, as fusion models do."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = _Stem(in_shape[0], 8)
        self.head = _Head(8, num_classes)

    def forward(self, x, extra):
        return self.head(self.stem(x) + extra)


two_inputs = TwoInputs


# every built-in recipe, and the cascades the docs name (as recipe steps)
RECIPES = ["channel-prune", "merge", "prune-merge", "prune-merge-exact", "deep-compression",
           "pq", "int8", "mixed", "quant-prune", "mcu"]
CASCADES = {
    "prune-quantize": ["prune: {schedule: one-shot, sparsity: 0.85}",
                       "quantize: {weight_bits: 7, act_bits: 8}"],
    "merge-prune-quantize": ["merge: {target_layers: 0.25}", "prune: {sparsity: 0.85}",
                             "quantize: {weight_bits: 8, act_bits: 8}"],
    "merge-prune-share": ["merge: {max_pools: true, target_layers: 0.25}",
                          "prune: {sparsity: 0.85}", "share: {conv_bits: 5, fc_bits: 4}"],
    "channels-merge-prune-share": ["channels: {target_macs: 0.5}", "merge: {target_layers: 0.25}",
                                   "prune: {sparsity: 0.8}", "fold: {}",
                                   "share: {conv_bits: 5, fc_bits: 4}"],
    "quantize-channels": ["quantize: {fold: false, weight_bits: 6, act_bits: 8}",
                          "channels: {target_macs: 0.5}", "fold: {}"],
}

ALONE = {"sensitivity": ["sensitivity: {target_sparsity: 0.5}"],
         "prune": ["prune: {sparsity: 0.5}"], "channels": ["channels: {target_macs: 0.5}"],
         "fold": ["fold: {}"], "merge": ["merge: {target_layers: 0.25}"],
         "share": ["share: {conv_bits: 4, fc_bits: 4}"], "quantize": ["quantize: {}"]}


def recipe_file(name: str, directory: Path) -> str:
    """A built-in recipe's name, or a cascade or one step alone written as a YAML file in
    ``directory``."""
    if name in RECIPES:
        return name
    steps = CASCADES.get(name) or ALONE[name]
    path = Path(directory) / f"{name}.yaml"
    path.write_text(f"name: {name}\nsteps:\n" + "".join(f"  - {s}\n" for s in steps))
    return str(path)

"""VGG-16 with BatchNorm for small inputs (thirteen 3×3 convs, two fully connected layers)."""

from __future__ import annotations

import torch
from torch import nn

_CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16-BN; a max-pool is skipped once the feature map is down to 1×1 (28×28 inputs)."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 width: float = 0.25):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_shape[0], in_shape[1]
        for item in _CFG16:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = max(1, int(round(item * width)))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(channels * size * size, channels), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

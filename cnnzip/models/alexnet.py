"""AlexNet adapted to 28×28 and 32×32 inputs (five convolutions, three fully connected layers)."""

from __future__ import annotations

import torch
from torch import nn


def _ch(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class AlexNet(nn.Module):
    """Convs 64-192-384-256-256 and fc 1024-1024 at width 1 (3×3 convs, pools after 1, 2, 5)."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 width: float = 0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = (_ch(n, width) for n in (64, 192, 384, 256, 256))
        fc = _ch(1024, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], c1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(flat, fc), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(fc, fc), nn.ReLU(inplace=True),
            nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

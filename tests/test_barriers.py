import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.graph import with_shapes
from cnnzip.graph.barriers import moves_channels
from tests.modern import channel_shuffle


class _One(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn, moves", [
    (lambda x: x.flatten(1), False),  # to features: Torch-Pruning follows it
    (lambda x: x.view(x.size(0), -1), False),
    (lambda x: torch.flatten(x, 2), False),  # spatial dimensions only
    (lambda x: x.transpose(2, 3), False),
    (lambda x: x.permute(0, 1, 3, 2), False),
    (lambda x: x.transpose(1, 2), True),
    (lambda x: x.permute(0, 2, 3, 1), True),
    (lambda x: channel_shuffle(x, 2), True),
    (lambda x: F.pixel_shuffle(x, 2), True),
    (lambda x: x.reshape(x.size(0), 2, -1, 6, 6), True),
    (lambda x: torch.cat(x.chunk(2, dim=1)[::-1], 1), True),  # the counts are the code's
    (lambda x: torch.split(x, [5, 3], 1)[0], True),
    (lambda x: x[:, :4], True),
    (lambda x: x.chunk(2, dim=2)[0], False),  # spatial halves
    (lambda x: x[:, :, 1:], False),
])
def test_which_reshapes_move_channels(fn, moves):
    gm = with_shapes(_One(fn), (8, 6, 6), "in a test")
    modules = dict(gm.named_modules())
    found = [n for n in gm.graph.nodes if moves_channels(n, modules)]
    assert bool(found) == moves, [n.format_node() for n in gm.graph.nodes]

"""Training on several processes started by torchrun (``torchrun --nproc_per_node=N -m cnnzip
compress …``): a gloo process group from torchrun's environment, each rank training on its
share of every batch with the gradients averaged (so every rank holds the same weights), and
rank 0 alone writing files. A single process (no torchrun) is world size 1 and nothing here
does anything.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn


def init_from_env() -> None:
    """Join the process group torchrun describes (gloo: CPU), once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() \
            and not dist.is_initialized():
        dist.init_process_group("gloo")


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a batch that every rank drew alike (every world-th sample)."""
    n = world()
    if n == 1 or len(x) < n:  # a batch too small to share: every rank takes all of it
        return x, y
    return x[rank()::n], y[rank()::n]


def average_gradients(model: nn.Module, flag: float = 0.0) -> float:
    """Every parameter's gradient averaged over the ranks (the same on each afterwards), in
    one all-reduce of one flat buffer; ``flag`` rides along and comes back summed over the
    ranks (a step any rank must refuse)."""
    n = world()
    if n == 1:
        return flag
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([flag], dtype=grads[0].dtype)
                                                       if grads else torch.tensor([flag])])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g)).div_(n)
        offset += g.numel()
    return float(flat[-1])


def average_buffers(model: nn.Module) -> None:
    """Float buffers (BatchNorm running statistics, gathered on each rank's share) averaged
    over the ranks."""
    n = world()
    if n == 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(n)


def total(value: float) -> float:
    """``value`` summed over the ranks (every rank gets the sum)."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t)


def check_same(model: nn.Module, what: str) -> None:
    """Raise on every rank if the ranks' models differ (weights, masks, codebooks, shapes)."""
    if world() == 1:
        return
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    mine = torch.tensor(list(digest.digest()[:8]), dtype=torch.int64)
    gathered = [torch.zeros_like(mine) for _ in range(world())]
    dist.all_gather(gathered, mine)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"{what}: the ranks' models differ")

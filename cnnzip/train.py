"""Fitting, evaluation and knowledge distillation (seeded, CPU-friendly, progress on stderr)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnzip import distributed
from cnnzip.data import DatasetInfo, ImageSet, Splits, batches
from cnnzip.errors import CnnzipError
from cnnzip.progress import progress_bar


@dataclass(frozen=True)
class TrainConfig:
    """How to fit a model.

    Attributes:
        epochs: passes over the training split (0: no training).
        batch_size: samples per step.
        lr: peak learning rate of SGD with Nesterov momentum under a one-cycle schedule.
        weight_decay: L2 penalty on weights.
        augment_pad: random translation in pixels (plus flips where the dataset allows them).
        seed: seeds initial order, augmentation and dropout.
        temperature: distillation temperature (used only with a teacher).
        alpha: weight of the distillation term against the label loss (with a teacher).
        slimming: weight of an L1 penalty on every BatchNorm scale (network slimming's sparsity
            regulariser: unimportant channels' scales are driven towards zero).
        clip_norm: every step's gradients are scaled down to at most this L2 norm (0: never),
            so that one large step at the peak rate cannot throw a model without BatchNorm
            off (lenet5-caffe on 10,000 MNIST images diverged without it).
    """

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment_pad: int = 2
    seed: int = 0
    temperature: float = 4.0
    alpha: float = 0.7
    slimming: float = 0.0
    clip_norm: float = 2.0

    def steps_per_epoch(self, samples: int) -> int:
        """Optimiser steps in one epoch over ``samples`` training images."""
        return -(-samples // self.batch_size)


@dataclass
class FitResult:
    """What a fit did, epoch by epoch."""

    val_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.'s loss: ``alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE``."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def slimming_penalty(model: nn.Module) -> torch.Tensor:
    """The sum of |scale| over the model's BatchNorm layers (zero when it has none)."""
    scales = [m.weight for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not scales:
        return torch.zeros(())
    return torch.stack([s.abs().sum() for s in scales]).sum()


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, info: DatasetInfo, *,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on every sample of ``data``."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in batches(data, info, batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(data))


@torch.no_grad()
def log_probabilities(model: nn.Module, data: ImageSet, info: DatasetInfo, *,
                      batch_size: int = 1000) -> torch.Tensor:
    """``model``'s (in eval mode) log-softmax outputs on every sample of ``data``, in order."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([F.log_softmax(model(x), dim=1) for x, _ in
                          batches(data, info, batch_size)])
    finally:
        model.train(was_training)


def divergence(model: nn.Module, data: ImageSet, info: DatasetInfo,
               reference: torch.Tensor) -> float:
    """The mean KL divergence, in nats, of ``model``'s predictions on ``data`` from the
    ``reference`` log-probabilities (``log_probabilities`` of another model on the same data):
    how far its outputs moved, smooth where top-1 accuracy moves in steps of one sample."""
    mine = log_probabilities(model, data, info)
    return float(F.kl_div(mine, reference, reduction="batchmean", log_target=True))


@torch.no_grad()
def output_agreement(a: nn.Module, b: nn.Module, data: ImageSet, info: DatasetInfo, *,
                     samples: int = 256) -> dict[str, float]:
    """How closely two models (in eval mode) agree on the first ``samples`` of ``data``: the
    largest difference between their outputs relative to the largest output, and the fraction
    of equal top-1 classes."""
    x, _ = next(iter(batches(data, info, samples)))
    modes = a.training, b.training
    a.eval(), b.eval()
    try:
        ya, yb = a(x), b(x)
    finally:
        a.train(modes[0]), b.train(modes[1])
    scale = float(ya.abs().max().clamp_min(1e-12))
    return {"max_rel_diff": float((ya - yb).abs().max()) / scale,
            "top1_agreement": float((ya.argmax(1) == yb.argmax(1)).float().mean())}


def fit(model: nn.Module, splits: Splits, config: TrainConfig, *,
        teacher: nn.Module | None = None,
        after_step: Callable[[nn.Module], None] | None = None,
        after_epoch: Callable[[nn.Module, int], None] | None = None,
        quiet: bool = False, description: str = "train") -> FitResult:
    """Train ``model`` in place on ``splits.train``; report validation accuracy each epoch.

    Args:
        model: the student; its parameters are updated.
        splits: data; only ``train`` and ``val`` are used.
        config: the schedule.
        teacher: when given, the loss is the distillation loss against its logits.
        after_step: called after every optimiser step (for example to re-apply pruning masks).
        after_epoch: called with the model and the epoch index (from 0) after every epoch,
            before validation (for example to re-select soft-pruned channels).
        quiet: no progress bar.
        description: label of the progress bar.
    """
    result = FitResult()
    if config.epochs <= 0:
        return result
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=config.lr, momentum=0.9, nesterov=True)
    steps = config.steps_per_epoch(len(splits.train))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, epochs=config.epochs,
                                                steps_per_epoch=steps, pct_start=0.15)
    if teacher is not None:
        teacher.eval()
    start = time.perf_counter()
    with progress_bar(disable=quiet or distributed.rank() > 0) as bar:
        task = bar.add_task(description, total=config.epochs * steps, status="")
        for epoch in range(config.epochs):
            model.train()
            total, count = 0.0, 0
            for x, y in batches(splits.train, splits.info, config.batch_size, shuffle=True,
                                augment_pad=config.augment_pad, generator=gen):
                x, y = distributed.shard(x, y)  # torchrun: this rank's share of the batch
                logits = model(x)
                if teacher is None:
                    loss = F.cross_entropy(logits, y)
                else:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = distillation_loss(logits, target, y, temperature=config.temperature,
                                             alpha=config.alpha)
                penalty = config.slimming * slimming_penalty(model) if config.slimming else None
                total_loss = loss if penalty is None else loss + penalty
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # torchrun: gradients averaged over the ranks, with whether any diverged
                if distributed.average_gradients(model, 0.0 if torch.isfinite(total_loss)
                                                 else 1.0):
                    raise CnnzipError(f"{description}: training diverged (loss "
                                      f"{float(total_loss.detach())}) in epoch {epoch + 1}; "
                                      "lower the learning rate")
                if config.clip_norm:  # the data's gradients are clipped, the L1 penalty's not
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                if penalty is not None and penalty.requires_grad:  # no BatchNorm: nothing
                    penalty.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step(model)
                total += float(total_loss.detach()) * len(y)
                count += len(y)
                bar.advance(task)
            distributed.average_buffers(model)
            result.train_loss.append(total / count)
            if after_epoch is not None:
                after_epoch(model, epoch)
            result.val_accuracy.append(evaluate(model, splits.val, splits.info))
            bar.update(task, status=f"epoch {epoch + 1}: loss {total / count:.3f} "
                                    f"val {result.val_accuracy[-1]:.4f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result

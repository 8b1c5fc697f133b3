"""What every method shares: the run context, the registry, and fine-tuning under masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from cnnzip.data import Splits
from cnnzip.modules.quant import QuantLayer
from cnnzip.train import TrainConfig, evaluate, fit


@dataclass
class Context:
    """State that flows through a recipe's steps.

    Attributes:
        splits: data; decisions use ``val``, reports use ``test``.
        teacher: the uncompressed model, for distillation (None: plain labels).
        seed: seeds every random choice.
        finetune_epochs: when set, overrides every step's retraining epochs (0 skips them).
        quiet: no progress bars.
        masks: surviving weights by layer name; every later step keeps them.
        notes: per-step details for the report (scan tables, chosen ratios, stream sizes).
        channel_plan: channels removed so far, in order (the architecture's ``channel_plan``).
        folded: (layer, BatchNorm) pairs folded so far (the architecture's ``folded``).
        replaced: modules replaced by layer merging so far (the architecture's ``replaced``).
        quantized: layers wrapped by uniform quantization (the architecture's ``quantized``).
    """

    splits: Splits
    teacher: nn.Module | None = None
    seed: int = 0
    finetune_epochs: int | None = None
    quiet: bool = False
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    channel_plan: list[tuple[str, bool, tuple[int, ...]]] = field(default_factory=list)
    folded: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    quantized: list[tuple[str, int, int, bool, int]] = field(default_factory=list)

    def epochs(self, configured: int) -> int:
        return configured if self.finetune_epochs is None else self.finetune_epochs

    def val_accuracy(self, model: nn.Module, samples: int | None = None) -> float:
        val = self.splits.val
        if samples is not None and samples < len(val):
            val = type(val)(val.images[:samples], val.labels[:samples])
        return evaluate(model, val, self.splits.info)


Handler = Callable[[nn.Module, Any, Context], nn.Module]
_HANDLERS: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[Handler], Handler]:
    """Register the handler that applies configs of ``config_type``."""
    def wrap(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler
    return wrap


def apply(model: nn.Module, config: Any, ctx: Context) -> nn.Module:
    """Apply one method's config to ``model``; returns the (possibly replaced) model."""
    try:
        handler = _HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no handler registered for {type(config).__name__}") from None
    return handler(model, config, ctx)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every pruned weight (called after each optimiser step so masks hold)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            module = modules[name]  # a quantized layer trains its float ``latent`` weight
            weight = getattr(module, "latent", None)
            weight = getattr(module, "weight", None) if weight is None else weight
            if isinstance(weight, torch.Tensor):
                weight.mul_(mask)


def finetune(model: nn.Module, ctx: Context, *, epochs: int, lr: float,
             description: str, after_step: Callable[[nn.Module], None] | None = None,
             after_epoch: Callable[[nn.Module, int], None] | None = None,
             slimming: float = 0.0) -> None:
    """Retrain with distillation from the teacher, keeping the masks (``after_step``,
    ``after_epoch`` and ``slimming`` as in :func:`cnnzip.train.fit`)."""
    epochs = ctx.epochs(epochs)
    if epochs <= 0:
        return

    def hold(m: nn.Module) -> None:
        apply_masks(m, ctx.masks)
        for module in m.modules():
            if isinstance(module, QuantLayer):
                module.keep_scales_positive()
        if after_step is not None:
            after_step(m)

    fit(model, ctx.splits, TrainConfig(epochs=epochs, lr=lr, seed=ctx.seed, slimming=slimming),
        teacher=ctx.teacher, after_step=hold, after_epoch=after_epoch, quiet=ctx.quiet,
        description=description)

"""What every method shares: the run context, the one step registry, and fine-tuning under
masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from cnnzip.codec import stages as stage_files
from cnnzip.data import ImageSet, Splits
from cnnzip.modules.quant import QuantLayer
from cnnzip.surgery import Edit, ModelSpec
from cnnzip.train import TrainConfig, evaluate, fit


@dataclass
class RunState:
    """What a run carries from step to step, all of it saved in every stage file (so a resumed
    run continues with exactly what the uninterrupted one had).

    Attributes:
        masks: surviving weights by layer name; every later step keeps them.
        sparsities: per-layer sparsities a sensitivity scan chose, for the pruning step after
            it (None: no scan has run).
        edits: every change the steps made to the model so far, in order (the spec's record
            continues with them).
        notes: per-step details for the report (scan tables, chosen ratios, stream sizes).
        stages: the figures of each report stage so far.
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    sparsities: dict[str, float] | None = None
    edits: list[Edit] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def to_stage(self) -> tuple[dict[str, torch.Tensor], stage_files.Values]:
        """The masks (tensors of the stage file) and the values (its JSON)."""
        return self.masks, stage_files.Values(sparsities=self.sparsities, notes=self.notes,
                                              stages=self.stages)

    @classmethod
    def from_stage(cls, saved: stage_files.Saved, base: ModelSpec) -> RunState:
        """The state a stage file saved; its spec's edits past ``base``'s are the run's."""
        return cls(masks=saved.masks, sparsities=saved.values.sparsities,
                   edits=list(saved.spec.edits[len(base.edits):]), notes=saved.values.notes,
                   stages=saved.values.stages)


@dataclass
class Context:
    """What a recipe's steps work with: the services of the run (data, teacher, seed, epochs,
    quietness) and its :class:`RunState` (``state``), whose fields read and write through
    ``ctx.masks``, ``ctx.sparsities``, ``ctx.edits`` and ``ctx.notes``.

    Attributes:
        splits: data; decisions use ``val``, reports use ``test``.
        teacher: the uncompressed model, for distillation (None: plain labels).
        seed: seeds every random choice.
        finetune_epochs: when set, overrides every step's retraining epochs (0 skips them).
        quiet: no progress bars.
        state: what the steps carry from one to the next.
    """

    splits: Splits
    teacher: nn.Module | None = None
    seed: int = 0
    finetune_epochs: int | None = None
    quiet: bool = False
    state: RunState = field(default_factory=RunState)

    masks = property(lambda self: self.state.masks,
                     lambda self, value: setattr(self.state, "masks", value))
    sparsities = property(lambda self: self.state.sparsities,
                          lambda self, value: setattr(self.state, "sparsities", value))
    edits = property(lambda self: self.state.edits,
                     lambda self, value: setattr(self.state, "edits", value))
    notes = property(lambda self: self.state.notes,
                     lambda self, value: setattr(self.state, "notes", value))

    def epochs(self, configured: int) -> int:
        return configured if self.finetune_epochs is None else self.finetune_epochs

    def val_subset(self, samples: int | None = None) -> ImageSet:
        """The first ``samples`` validation samples (all of them for None)."""
        val = self.splits.val
        if samples is not None and samples < len(val):
            val = type(val)(val.images[:samples], val.labels[:samples])
        return val

    def val_accuracy(self, model: nn.Module, samples: int | None = None) -> float:
        return evaluate(model, self.val_subset(samples), self.splits.info)


Handler = Callable[[nn.Module, Any, Context], nn.Module]


@dataclass(frozen=True)
class Step:
    """A kind of recipe step.

    Attributes:
        name: its key in a recipe.
        config: the frozen dataclass of its options.
        handler: applies a config to a model in a context; returns the model.
        realized: its result is real (removed channels, folded and merged layers); False when
            it is simulated until encoding (masks, codebooks, fake quantization) or changes
            nothing (a scan).
        stage: it is a stage of the report (and of resuming); a scan only feeds the next step.
        after: steps that may not come before this one in a recipe, and why.
    """

    name: str
    config: type
    handler: Handler
    realized: bool = False
    stage: bool = True
    after: tuple[tuple[str, str], ...] = ()


STEPS: dict[str, Step] = {}


def register(name: str, config: type, *, realized: bool = False, stage: bool = True,
             after: tuple[tuple[str, str], ...] = ()) -> Callable[[Handler], Handler]:
    """Register the handler of the step ``name``, whose options are a ``config``."""
    def wrap(handler: Handler) -> Handler:
        STEPS[name] = Step(name, config, handler, realized, stage, after)
        return handler
    return wrap


def step_of(config: Any) -> Step:
    """The step whose options ``config`` holds."""
    for step in STEPS.values():
        if type(config) is step.config:
            return step
    raise TypeError(f"no step takes {type(config).__name__}")


def apply(model: nn.Module, config: Any, ctx: Context) -> nn.Module:
    """Apply one step's config to ``model``; returns the (possibly replaced) model."""
    return step_of(config).handler(model, config, ctx)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every pruned weight (called after each optimiser step so masks hold)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            module = modules[name]  # a quantized layer trains its float ``latent`` weight
            weight = getattr(module, "latent", None)
            if weight is None and parametrize.is_parametrized(module, "weight"):
                weight = module.parametrizations.weight.original  # the weight that trains
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

    fit(model, ctx.splits, TrainConfig(epochs=epochs, lr=lr, seed=ctx.seed, slimming=slimming,
                                        clip_norm=0.0),
        teacher=ctx.teacher, after_step=hold, after_epoch=after_epoch, quiet=ctx.quiet,
        description=description)

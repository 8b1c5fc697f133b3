"""Uniform quantization of weights and feature maps: post-training (calibrated on training
images) and, with epochs, quantization-aware training (straight-through rounding, learned
scales)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.graph import foldable_pairs, symbolic
from cnnzip.methods.base import Context, finetune, register
from cnnzip.methods.shared.policy import Policy, PolicySearch, run_search, static_features
from cnnzip.methods.shared.calibration import (calibrate_feature_maps, calibration_images,
                                        float_feature_maps)
from cnnzip.modules import CodebookLayer, weight_layers
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.quant import Observer, sqnr_db
from cnnzip.progress import progress_bar
from cnnzip.surgery import (fold_batchnorm, materialize, quantize_layer, quantized_edit,
                            set_module)


POLICIES = ("greedy", "ddpg", "ddpg-scale")


@dataclass(frozen=True)
class BitsPolicy(Policy):
    """The ``quantize`` step's ``policy:`` option group (mixed precision under
    ``budget_bits``).

    Attributes:
        method: ``greedy`` lowers the layer that loses least per bit saved (from per-layer
            sensitivities), ``ddpg`` is a DDPG agent setting each layer's bits in turn
            (HAQ/AMC: state = the layer's description, bits capped so the budget stays
            reachable, reward = validation accuracy of the quantized model), ``ddpg-scale``
            the agent's per-layer deviations about one global bit width solved to meet the
            budget.
        episodes: ddpg, ddpg-scale: episodes of the search (each scored on the step's
            ``samples`` validation images).
        warmup: of those, the first that act at random.
        deviation: ddpg-scale: how many bits a layer may move from the global width.
    """

    method: str = "greedy"
    deviation: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in POLICIES:
            raise CnnzipError(f"policy.method must be one of {', '.join(POLICIES)}, got "
                              f"{self.method!r}")


@dataclass(frozen=True)
class Quantize:
    """Quantize every conv and linear layer's weights (symmetric, signed) and input feature map
    (asymmetric, unsigned), BatchNorms folded first (unless ``fold`` is false).

    Attributes:
        weight_bits: 1 to 8 (2 is ternary: {-1, 0, 1} times a scale; 1 binary: ±scale).
        act_bits: bits of each layer's input feature map; 0 keeps feature maps in float.
        per_channel: one weight scale per output channel (else one per layer).
        layers: weight bits by layer name (overrides ``weight_bits``).
        keep_float: layers left in float.
        weight_observer: how weight ranges are chosen: minmax, percentile or mse (the clip with
            the least squared error).
        act_observer: the same for feature maps, from the calibration images.
        outputs: also quantize the output of a layer that feeds a residual add or a
            concatenation (with ``act_bits``), so integer kernels chain through it.
        calibration: training images used to calibrate feature-map ranges.
        budget_bits: mixed precision: choose each layer's weight bits (from ``weight_bits``
            down through ``candidate_bits``) so that the average over all weights is at most
            this; layers are lowered one step at a time, the least accuracy lost per bit
            saved first (per-layer sensitivities measured on validation data).
        max_drop: mixed precision without a budget: keep lowering while the validation
            accuracy of the whole quantized model stays within this fraction of the float
            model's (each step measured).
        candidate_bits: the weight bit widths mixed precision may choose.
        policy: how mixed precision chooses under ``budget_bits`` (a plain ``policy: ddpg``
            sets the method).
        samples: validation images per sensitivity measurement.
        epochs: quantization-aware training epochs with distillation (0: post-training only).
        weights_first: with epochs and quantized feature maps, train the first half of the
            epochs with only the weights quantized, then calibrate the feature maps and train
            the rest (the two-stage order).
        lr: quantization-aware training peak learning rate.
        fold: fold BatchNorms into the layers before quantizing, so the integers are those
            integer kernels compute with. False keeps them for the training that follows
            (quantization-aware training and, above all, retraining after structured pruning:
            a deep net without BatchNorms retrains poorly); a later ``fold`` step then folds
            them into the quantized layers exactly (the BatchNorm's scale moves into each
            channel's weight scale; per-channel weights only). Layers followed by a BatchNorm
            leave their outputs in float.
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    layers: dict[str, int] = field(default_factory=dict)
    keep_float: list[str] = field(default_factory=list)
    weight_observer: Observer = Observer.MSE
    act_observer: Observer = Observer.PERCENTILE
    outputs: bool = True
    calibration: int = 1024
    budget_bits: float | None = None
    max_drop: float | None = None
    candidate_bits: list[int] = field(default_factory=lambda: [8, 6, 5, 4, 3, 2])
    policy: BitsPolicy = field(default_factory=BitsPolicy)
    samples: int = 2000
    epochs: int = 0
    weights_first: bool = False
    lr: float = 0.002
    fold: bool = True

    def __post_init__(self) -> None:
        for bits in (self.weight_bits, *self.layers.values()):
            if not 1 <= bits <= 8:
                raise CnnzipError(f"quantize: weight bits must be in 1..8, got {bits}")
        if self.act_bits != 0 and not 2 <= self.act_bits <= 8:
            raise CnnzipError(f"quantize: act_bits must be 0 (float) or in 2..8, got "
                              f"{self.act_bits}")
        if any(not 1 <= b <= 8 for b in self.candidate_bits):
            raise CnnzipError(f"quantize: candidate_bits must be in 1..8, got "
                              f"{self.candidate_bits}")
        if self.budget_bits is not None and not 2 <= self.budget_bits <= 8:
            raise CnnzipError(f"quantize: budget_bits is an average weight bit width in 2..8, "
                              f"got {self.budget_bits}")
        if self.policy.method != "greedy" and self.budget_bits is None:
            raise CnnzipError(f"quantize: policy {self.policy.method} searches bits for a "
                              "budget; give budget_bits")
        if not self.fold and not self.per_channel:
            raise CnnzipError("quantize: fold: false needs per_channel: true (a BatchNorm "
                              "folded later scales each channel's weights differently)")
        if self.calibration < 1:
            raise CnnzipError(f"quantize: calibration needs at least one image, got "
                              f"{self.calibration}")


_COMMUTE = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)  # with rounding


_JOINS = (operator.add, torch.add, torch.cat)


def _feeds_a_join(modules: dict[str, nn.Module], node: torch.fx.Node) -> bool:
    """Whether ``node``'s output reaches an add or a concatenation before any layer reads it
    (through operations that commute with rounding)."""
    for user in node.users:
        if user.op == "call_function" and user.target in _JOINS:
            return True
        passes = (user.op == "call_module" and isinstance(modules[user.target], _COMMUTE)) \
            or (user.op == "call_function" and user.target in (torch.relu, F.relu))
        if passes and _feeds_a_join(modules, user):
            return True
    return False


def _joined_layers(model: nn.Module, names: list[str]) -> set[str]:
    graph = symbolic(model, "to find layers that feed residual adds", leaves=(QuantLayer,))
    modules = dict(graph.named_modules())
    return {node.target for node in graph.graph.nodes
            if node.op == "call_module" and node.target in names
            and _feeds_a_join(modules, node)}


def _sensitivities(model: nn.Module, layers: dict[str, QuantLayer], steps: list[int],
                   config: Quantize, ctx: Context) -> dict[str, dict[int, float]]:
    """Validation accuracy with one layer at each bit width in ``steps`` (the others as they
    are), layer by layer."""
    table: dict[str, dict[int, float]] = {}
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("quantize: sensitivity", total=len(layers) * len(steps), status="")
        for name, layer in layers.items():
            start = layer.weight_bits
            table[name] = {}
            for bits in steps:
                if bits <= start:
                    layer.set_weight_bits(bits, config.weight_observer)
                    table[name][bits] = ctx.val_accuracy(model, config.samples)
                bar.advance(task)
            layer.set_weight_bits(start, config.weight_observer)
    return table


def _mixed_precision(model: nn.Module, layers: dict[str, QuantLayer], config: Quantize,
                     ctx: Context, base: float) -> dict[str, Any]:
    """Lower layers' weight bits step by step, the least validation accuracy lost per bit
    saved first (from each layer's sensitivity), until the average is within
    ``config.budget_bits`` or (without a budget) the next step would lose more than
    ``config.max_drop`` (measured on the whole model)."""
    steps = sorted(set(config.candidate_bits), reverse=True)
    table = _sensitivities(model, layers, steps, config, ctx)
    sizes = {name: layer.latent.numel() for name, layer in layers.items()}
    history = []
    while config.budget_bits is None or _average_bits(layers) > config.budget_bits + 1e-9:
        options = []
        for name, layer in layers.items():
            lower = [b for b in table[name] if b < layer.weight_bits]
            if lower:
                b = max(lower)
                loss = table[name][layer.weight_bits] - table[name][b] \
                    if layer.weight_bits in table[name] else base - table[name][b]
                options.append((max(loss, 0.0) / (sizes[name] * (layer.weight_bits - b)), name, b))
        if not options:
            break
        _, name, bits = min(options)
        previous = layers[name].weight_bits
        layers[name].set_weight_bits(bits, config.weight_observer)
        accuracy = ctx.val_accuracy(model, config.samples)
        if config.budget_bits is None and base - accuracy > config.max_drop:
            layers[name].set_weight_bits(previous, config.weight_observer)
            break
        history.append({"layer": name, "bits": bits,
                        "average_bits": round(_average_bits(layers), 3), "val_accuracy": accuracy})
    return {"sensitivity": table, "steps": history, "average_bits": _average_bits(layers)}


def _searched_precision(model: nn.Module, layers: dict[str, QuantLayer], config: Quantize,
                        ctx: Context) -> dict[str, Any]:
    """Each layer's weight bits from a DDPG search (:mod:`cnnzip.methods.shared.policy`) whose
    decisions are the bits saved below ``weight_bits``, rounded to the nearest candidate,
    within ``budget_bits`` on average over all weights."""
    names = list(layers)
    allowed = np.array(sorted({b for b in config.candidate_bits if b <= config.weight_bits}
                              | {config.weight_bits}), float)
    top = allowed.max()
    sizes = np.array([layers[n].latent.numel() for n in names], float)

    def bits_of(saved: np.ndarray) -> np.ndarray:
        wanted = top - saved
        # the nearest allowed width, the smaller on a tie
        return allowed[np.abs(wanted[:, None] - allowed[None, :] - 1e-9).argmin(1)]

    def average(saved: np.ndarray) -> float:
        return float(sizes @ bits_of(saved) / sizes.sum())

    if average(np.full(len(names), top - allowed.min())) > config.budget_bits:
        raise CnnzipError(f"quantize: budget_bits={config.budget_bits} is below the fewest "
                          f"candidate bits ({allowed.min():g})")

    scales: dict[str, dict[int, torch.Tensor]] = {name: {} for name in names}

    def reward(saved: np.ndarray) -> float:
        for name, bits in zip(names, bits_of(saved)):
            layers[name].set_weight_bits(int(bits), config.weight_observer, scales[name])
        return ctx.val_accuracy(model, config.samples)

    policy = config.policy
    search = PolicySearch(policy.method, policy.episodes, policy.warmup, config.samples, 0,
                          policy.deviation, ctx.seed)
    static = static_features(model, names, tuple(ctx.splits.info.in_shape), sizes)
    saved, notes = run_search(search, "quantize", static, sizes, top - allowed.min(), average,
                              config.budget_bits, reward, ctx.quiet)
    reward(saved)
    return {**notes, "average_bits": _average_bits(layers)}


def _average_bits(layers: dict[str, QuantLayer]) -> float:
    """Weight bits averaged over all the layers' weights."""
    total = sum(layer.latent.numel() for layer in layers.values())
    return sum(layer.weight_bits * layer.latent.numel() for layer in layers.values()) \
        / max(total, 1)


@register("quantize", Quantize,
          after=(("share", "the weights are shared already; use weight sharing or uniform "
                            "quantization, not both"),))
def quantize(model: nn.Module, config: Quantize, ctx: Context) -> nn.Module:
    layers = weight_layers(model)
    if any(isinstance(m, CodebookLayer) for m in layers.values()):
        raise CnnzipError("quantize: the weights are already shared (k-means / product "
                          "quantization); use one of the two")
    if any(isinstance(m, QuantLayer) for m in layers.values()):
        raise CnnzipError("quantize: the model is already quantized")
    unknown = sorted((set(config.layers) | set(config.keep_float)) - set(layers))
    if unknown:
        raise CnnzipError(f"quantize: no conv or linear layer named {', '.join(unknown)}")
    pairs = foldable_pairs(model) if config.fold else []  # kernels see the folded weights
    ctx.edits += fold_batchnorm(model, pairs)
    wrapped: dict[str, QuantLayer] = {}
    names = [name for name in layers if name not in config.keep_float]
    joined = _joined_layers(model, names) if config.outputs and config.act_bits else set()
    for name in names:
        bits = config.layers.get(name, config.weight_bits)
        out_bits = config.act_bits if name in joined else 0
        layer = quantize_layer(model, name, bits, config.act_bits, per_channel=config.per_channel,
                               out_bits=out_bits)
        layer.calibrate_weight(config.weight_observer)
        wrapped[name] = layer
    images = calibration_images(ctx, config.calibration)
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("quantize: calibrating", total=None, status="")
        calibrate_feature_maps(model, wrapped, images, ctx, config.act_observer)
        bar.update(task, status="done")
    notes: dict[str, Any] = {}
    if config.budget_bits is not None or config.max_drop is not None:
        base = ctx.val_accuracy(ctx.teacher, config.samples) if ctx.teacher is not None \
            else ctx.val_accuracy(model, config.samples)
        greedy = config.policy.method == "greedy"
        notes["mixed"] = _mixed_precision(model, wrapped, config, ctx, base) if greedy \
            else _searched_precision(model, wrapped, config, ctx)
    ctx.edits += [quantized_edit(name, layer) for name, layer in wrapped.items()]
    sqnr = {name: round(sqnr_db(layer.latent, layer.weight.detach()), 2)
            for name, layer in wrapped.items()}
    ctx.notes["quantize"] = {
        "folded": [f"{bn} → {layer}" for layer, bn in pairs],
        "bits": {name: layer.weight_bits for name, layer in wrapped.items()},
        "average_bits": _average_bits(wrapped), **notes,
        "act_bits": config.act_bits, "per_channel": config.per_channel,
        "outputs_quantized": sorted(joined),
        "weight_sqnr_db": sqnr, "val_after_calibration": ctx.val_accuracy(model),
        "simulated": "PyTorch computes with fake-quantized (rounded float) values; "
                     "integer execution is the ONNX export in onnxruntime"}
    epochs = ctx.epochs(config.epochs)
    if config.weights_first and config.act_bits and epochs >= 2:
        with float_feature_maps(wrapped):  # stage 1: weights only
            finetune(model, ctx, epochs=epochs // 2, lr=config.lr,
                     description="quantization-aware training: weights")
        calibrate_feature_maps(model, wrapped, images, ctx, config.act_observer)
        epochs -= epochs // 2
    finetune(model, ctx, epochs=epochs, lr=config.lr,
             description="quantization-aware training")
    return model


def integer_ready(model: nn.Module, ctx: Context, *, calibration: int = 1024) -> dict[str, Any]:
    """Make a model whose feature maps are float computable with integers alone (the C
    export's ``--calibrate``), in place: post-training quantization to 8-bit feature maps
    calibrated on ``calibration`` training images, weights kept as they are where they are
    integers already:

    - weight-shared (codebook) layers: their dense weights on one 8-bit grid per layer (the
      largest centroid at 127), so each layer's weights keep at most its codebook's values;
    - quantized weights: their bits and grids (re-derived from the weights, which sit on them);
    - float weights: 8-bit per channel, the grid of least squared error;
    - BatchNorms folded first.

    Returns what was done (per-layer weight bits and grain); a model whose layers all read
    integers already is left as it is.

    Raises:
        CnnzipError: a model whose layers read integers in part only.
    """
    layers = weight_layers(model)
    reads_integers = [isinstance(m, QuantLayer) and m.a_grid is not None for m in layers.values()]
    if all(reads_integers):
        return {"calibrated": False}
    if any(reads_integers):
        raise CnnzipError("some layers read quantized feature maps and others float ones; "
                          "quantize all of them (the quantize step with act_bits)")
    shared = any(isinstance(m, CodebookLayer) for m in layers.values())
    bits = {name: m.weight_bits for name, m in layers.items() if isinstance(m, QuantLayer)}
    per_channel = not shared and all(m.per_channel for m in layers.values()
                                     if isinstance(m, QuantLayer))
    for name, m in layers.items():
        if isinstance(m, QuantLayer):  # its grid-valued weights, as a plain layer again
            m.layer.weight = nn.Parameter(m.weight.detach().clone())
            set_module(model, name, m.layer)
    materialize(model)
    config = Quantize(weight_bits=8, act_bits=8, per_channel=per_channel, layers=bits,
                      weight_observer=Observer.MINMAX if shared or bits else Observer.MSE,
                      calibration=calibration, epochs=0)
    quantize(model, config, ctx)
    return {"calibrated": True, "calibration_images": calibration,
            "weights": "per channel" if per_channel else "per tensor",
            "bits": ctx.notes["quantize"]["bits"]}

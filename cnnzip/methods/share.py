"""Trained weight sharing: per-layer k-means over the surviving weights (Deep Compression) or
product quantization of consecutive surviving weights, then centroid fine-tuning."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cnnzip.data import batches
from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, finetune, register
from cnnzip.modules import CodebookLayer, weight_layers
from cnnzip.modules.codebook import ClusteredWeight, expand
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.cluster import Init, entropy_constrained, kmeans, to_blocks
from cnnzip.ops.quant import round_pow2
from cnnzip.progress import progress_bar
from cnnzip.surgery import share_layer, standardize_batchnorm


class Sharing(enum.Enum):
    KMEANS = "kmeans"  # scalar codebook, d = 1
    PQ = "pq"  # codebook of d-dimensional sub-vectors


class Weighting(enum.Enum):
    """What a weight's squared error counts for when its layer is clustered."""

    NONE = "none"  # every weight alike (Deep Compression)
    FISHER = "fisher"  # its loss's mean squared gradient (Choi et al. 2017's Hessian weighting)


@dataclass(frozen=True)
class WeightSharing:
    """Cluster each conv and linear layer's surviving weights into a codebook.

    Attributes:
        method: scalar k-means or product quantization.
        conv_bits: code bits for convolutions (k = 2^bits centroids).
        fc_bits: code bits for linear layers.
        layers: per-layer code bits by name (overrides).
        bits_tolerance: when set, a scan picks each layer's bits: the fewest from ``min_bits``
            up to its configured bits whose clustering, applied to that layer alone, keeps the
            validation accuracy drop within this fraction (before fine-tuning).
        min_bits: the fewest bits the scan tries.
        block: sub-vector length d for product quantization (1 for k-means).
        init: k-means initialisation.
        entropy_weight: entropy-constrained clustering: after k-means, weights are assigned
            to the centroid minimising squared error + this × the weights' variance × the
            code's length in bits under the entropy coder, and centroids move to their means,
            until the assignment settles; rare codes empty and the coded size falls (0: plain
            k-means). The bits scan clusters the same way.
        weighting: `fisher`: each weight's squared error is weighed by the diagonal of the
            loss's Fisher information (its gradient squared, averaged over `fisher_samples`
            training images in batches of 32, normalised to mean 1 per layer), in the k-means
            and the entropy-constrained assignment alike, so that the weights the loss is
            most sensitive to sit closest to their centroids (k-means only; `none`: all
            weights alike). Measured: better at 2 bits on dense lenet5 and on resnet20's
            pruned factors, worse on lenet5's pruned layers and resnet20's dense factors
            (RESULTS.md).
        fisher_samples: training images the Fisher diagonal is averaged over.
        weight_epochs: epochs of fine-tuning the weights themselves, clustered, before the
            centroid fine-tuning (k-means only): every forward computes with each surviving
            weight replaced by the centroid that minimises its squared error (plus, with
            ``entropy_weight``, the code's length in bits, the rates updated after each
            epoch), with gradients to the centroids and, straight through, to the float
            weights, so weights move between clusters as they train (0: the clustering stays
            as k-means left it and only the centroids train, Deep Compression's way).
        epochs: centroid fine-tuning epochs.
        lr: fine-tuning peak learning rate.
        bias_bits: after fine-tuning, each shared layer's bias, and each BatchNorm's scale
            and shift (the BatchNorm rewritten with mean 0 and variance 1, which the container
            stores in 2 bits a value), rounded onto the signed grid of this many bits (2 to 8)
            whose step is a power of two, which the container stores as those integers instead
            of float16 (0: biases and BatchNorms stay float16). A BatchNorm whose grid would
            move its channels' outputs by more than 10% of their spread on average (one
            channel's scale far above the others' sets too coarse a step) stays float16.
        codebook_bits: each layer's centroids on such a grid of this many bits (2 to 8),
            stored as those integers (0: float16): fine-tuning computes with them rounded
            (straight-through gradients), and they are rounded for good after it.
    """

    method: Sharing = Sharing.KMEANS
    conv_bits: int = 8
    fc_bits: int = 5
    layers: dict[str, int] = field(default_factory=dict)
    bits_tolerance: float | None = None
    min_bits: int = 2
    block: int = 1
    init: Init = Init.LINEAR
    entropy_weight: float = 0.0
    weighting: Weighting = Weighting.NONE
    fisher_samples: int = 2048
    weight_epochs: int = 0
    epochs: int = 4
    lr: float = 0.002
    bias_bits: int = 0
    codebook_bits: int = 0

    def __post_init__(self) -> None:
        if self.method is Sharing.KMEANS and self.block != 1:
            raise CnnzipError("share: k-means works on single weights; use method pq for block > 1")
        if self.weighting is not Weighting.NONE and self.method is not Sharing.KMEANS:
            raise CnnzipError("share: weighting applies to k-means (one weight a code); "
                              "product quantization clusters sub-vectors unweighted")
        if self.weight_epochs and (self.method is not Sharing.KMEANS
                                   or self.weighting is not Weighting.NONE):
            raise CnnzipError("share: weight_epochs train scalar k-means codes, unweighted "
                              "(method kmeans, weighting none)")
        if self.weight_epochs < 0:
            raise CnnzipError(f"share: weight_epochs must be ≥ 0, got {self.weight_epochs}")
        if self.fisher_samples < 1:
            raise CnnzipError(f"share: fisher_samples must be ≥ 1, got {self.fisher_samples}")
        for bits in (self.conv_bits, self.fc_bits, self.min_bits, *self.layers.values()):
            if not 1 <= bits <= 16:
                raise CnnzipError(f"share: code bits must be in 1..16, got {bits}")
        for key in ("bias_bits", "codebook_bits"):
            if getattr(self, key) and not 2 <= getattr(self, key) <= 8:
                raise CnnzipError(f"share: {key} must be 0 (float16) or 2..8, got "
                                  f"{getattr(self, key)}")
        if not 0 <= self.entropy_weight <= 100:
            raise CnnzipError(f"share: entropy_weight must be in [0, 100], got "
                              f"{self.entropy_weight}")


# k-means trains on at most this many of a layer's (sub-)vectors, sampled by faiss: trained on
# all 138M weights of a VGG-16-sized layer faiss returned centroids with an error above the
# weights' variance, on 20M and on a sample it did not (benchmarks/kmeans_vs_pq.py)
TRAIN_POINTS = 10_000_000


# a weight's Fisher importance is at least this fraction of its layer's mean: a weight whose
# gradient happened to be 0 on the sampled images still counts for something
FISHER_FLOOR = 0.01


# a BatchNorm stays float16 where its grid would move its channels' outputs by more than this
# fraction of their spread on average: one channel of tiny variance (scale 417 among scales
# near 3, in resnet20's pruned factors) sets a grid step that wipes out the other channels
BATCHNORM_GRID_ERROR = 0.1


def batchnorm_grid_error(bn: nn.Module, bits: int) -> float:
    """How far rounding the standardized BatchNorm ``bn``'s scale s and shift b onto their
    ``bits``-bit grids moves each channel's output s·x + b (x of unit variance), relative to
    its spread |s|: the mean over channels of √(Δs² + Δb²) / |s|."""
    scale, shift = bn.weight.detach(), bn.bias.detach()
    live = scale != 0
    if not live.any():
        return 0.0
    moved = [round_pow2(t, bits) - t if t.abs().max() > 0 else torch.zeros_like(t)
             for t in (scale, shift)]
    error = (moved[0] ** 2 + moved[1] ** 2).sqrt()[live] / scale.abs()[live]
    return float(error.mean())


def cluster_weight(weight: torch.Tensor, bits: int, block: int, init: Init, seed: int,
                   entropy_weight: float = 0.0, importance: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cluster a weight's non-zero entries: (positions (nnz,), codebook (k, d), codes);
    ``importance`` (the weight's shape, block 1 only) weighs each entry's squared error."""
    flat = weight.detach().flatten()
    positions = torch.nonzero(flat, as_tuple=True)[0]  # (nnz,)
    values = flat[positions].numpy()
    weights = None
    if values.size == 0:
        values = np.zeros(1, np.float32)  # an all-zero layer keeps one zero centroid
    elif importance is not None:
        weights = importance.detach().flatten()[positions].double().numpy()
        mean = weights.mean()
        weights = np.maximum(weights / mean, FISHER_FLOOR) if mean > 0 else None
    k = 2 ** bits
    blocks = to_blocks(values, block)
    centroids, codes = kmeans(blocks, k, init=init, seed=seed,
                              max_points_per_centroid=max(1, TRAIN_POINTS // k), weights=weights)
    if entropy_weight > 0 and len(centroids) > 1:
        centroids, codes = entropy_constrained(blocks, centroids, entropy_weight, weights=weights)
    return positions, torch.from_numpy(centroids), torch.from_numpy(codes)


def fisher_diagonal(model: nn.Module, layers: dict[str, nn.Module], ctx: Context,
                    samples: int) -> dict[str, torch.Tensor]:
    """Each layer's weight-shaped mean squared gradient of the cross-entropy loss over the
    first ``samples`` shuffled training images (rounded up to whole batches of 32, each
    batch's gradient squared), the model in eval mode."""
    sums = {name: torch.zeros_like(layer.weight) for name, layer in layers.items()}
    was_training, count = model.training, 0
    model.eval()
    try:
        gen = torch.Generator().manual_seed(ctx.seed)
        for x, y in batches(ctx.splits.train, ctx.splits.info, 32, shuffle=True, generator=gen):
            if count >= samples:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for name, layer in layers.items():
                if layer.weight.grad is not None:
                    sums[name] += layer.weight.grad.detach() ** 2
            count += len(y)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {name: total / max(count, 1) for name, total in sums.items()}


def _configured_bits(config: WeightSharing, name: str, layer: nn.Module) -> int:
    return config.layers.get(name, config.fc_bits if isinstance(layer, nn.Linear)
                             else config.conv_bits)


def scan_bits(model: nn.Module, layers: dict[str, nn.Module], config: WeightSharing,
              ctx: Context, importance: dict[str, torch.Tensor] | None = None,
              ) -> tuple[dict[str, int], dict[str, list[tuple[int, float]]]]:
    """Each layer's fewest bits within ``config.bits_tolerance``, one layer clustered at a time.

    Returns:
        the chosen bits and, per layer, the (bits, validation accuracy) points measured.
    """
    base = ctx.val_accuracy(model)
    chosen: dict[str, int] = {}
    table: dict[str, list[tuple[int, float]]] = {}
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("bits scan", total=len(layers), status="")
        for name, layer in layers.items():
            ceiling = _configured_bits(config, name, layer)
            chosen[name], table[name] = ceiling, []
            original = layer.weight.detach().clone()
            for bits in range(min(config.min_bits, ceiling), ceiling):
                positions, codebook, codes = cluster_weight(
                    original, bits, config.block, config.init, ctx.seed, config.entropy_weight,
                    (importance or {}).get(name))
                with torch.no_grad():
                    layer.weight.copy_(expand(codebook, codes, positions, tuple(original.shape)))
                accuracy = ctx.val_accuracy(model)
                table[name].append((bits, accuracy))
                if base - accuracy <= config.bits_tolerance:
                    chosen[name] = bits
                    break
            with torch.no_grad():
                layer.weight.copy_(original)
            bar.advance(task)
    return chosen, table


Clusters = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def train_clustered(model: nn.Module, layers: dict[str, nn.Module], clusters: Clusters,
                    config: WeightSharing, ctx: Context) -> Clusters:
    """Fine-tune ``layers``' float weights and centroids together for ``config.weight_epochs``,
    each layer computing with its weights clustered (:class:`ClusteredWeight`, from the
    starting ``clusters``: positions, codebook (k, 1), codes); returns the clusters they end
    in. The layers keep their float weights as trained."""
    quantizers: dict[str, ClusteredWeight] = {}
    layers = {name: layer for name, layer in layers.items() if len(clusters[name][0])}
    for name, layer in layers.items():  # (a layer pruned to nothing keeps its zero centroid)
        positions, codebook, codes = clusters[name]
        values = layer.weight.detach().flatten()[positions]
        lam = config.entropy_weight * float(values.var()) if values.numel() > 1 else 0.0
        quantizers[name] = ClusteredWeight(positions, codebook, codes, lam,
                                           config.codebook_bits)
        parametrize.register_parametrization(layer, "weight", quantizers[name])

    def update_rates(_: nn.Module, epoch: int) -> None:
        for quantizer in quantizers.values():
            quantizer.update_rates()

    try:
        finetune(model, ctx, epochs=config.weight_epochs, lr=config.lr,
                 description="clustered weight fine-tune", after_epoch=update_rates)
        with torch.no_grad():  # the codes of the weights as they ended
            for name, layer in layers.items():
                quantizers[name](layer.parametrizations.weight.original)
    finally:
        for layer in layers.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    return {**clusters, **{name: (q.positions, q.codebook.detach().clone(), q.codes)
                           for name, q in quantizers.items()}}


@register("share", WeightSharing,
          after=(("quantize", "the weights are quantized already; use weight sharing or "
                              "uniform quantization, not both"),))
def share(model: nn.Module, config: WeightSharing, ctx: Context) -> nn.Module:
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise CnnzipError("share: the weights are already quantized; use weight sharing or "
                          "uniform quantization, not both")
    layers = {n: m for n, m in weight_layers(model).items() if not isinstance(m, CodebookLayer)}
    unknown = sorted(set(config.layers) - set(layers))
    if unknown:
        raise CnnzipError(f"share: no conv or linear layer named {', '.join(unknown)}")
    notes: dict[str, object] = {"method": config.method.value, "block": config.block,
                                "entropy_weight": config.entropy_weight,
                                "weighting": config.weighting.value}
    importance = fisher_diagonal(model, layers, ctx, config.fisher_samples) \
        if config.weighting is Weighting.FISHER else {}
    if config.bits_tolerance is not None:
        chosen, notes["bits_scan"] = scan_bits(model, layers, config, ctx, importance)
        notes["bits_tolerance"] = config.bits_tolerance
    else:
        chosen = {name: _configured_bits(config, name, layer) for name, layer in layers.items()}
    clusters = {}
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task(f"{config.method.value} clustering", total=len(layers), status="")
        for name, layer in layers.items():
            clusters[name] = cluster_weight(
                layer.weight, chosen[name], config.block, config.init, ctx.seed,
                config.entropy_weight, importance.get(name))
            bar.advance(task)
    if config.weight_epochs:
        clusters = train_clustered(model, layers, clusters, config, ctx)
        notes["weight_epochs"] = config.weight_epochs
    for name in layers:
        ctx.edits.append(share_layer(model, name, *clusters[name]))
    ctx.notes["share"] = {**notes, "bits": chosen}
    modules = dict(model.named_modules())
    for name in layers:
        modules[name].grid_bits = config.codebook_bits
    try:
        finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="centroid fine-tune")
    finally:
        for name in layers:
            del modules[name].grid_bits
    rounded: list[tuple[torch.Tensor | None, int]] = []
    if config.bias_bits:
        rounded += [(modules[name].layer.bias, config.bias_bits) for name in layers]
        kept = []
        for bn_name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) \
                    and standardize_batchnorm(module):
                if batchnorm_grid_error(module, config.bias_bits) > BATCHNORM_GRID_ERROR:
                    kept.append(bn_name)
                    continue
                rounded += [(module.weight, config.bias_bits), (module.bias, config.bias_bits)]
        if kept:
            ctx.notes["share"]["float16_batchnorms"] = kept
    if config.codebook_bits:
        rounded += [(modules[name].codebook, config.codebook_bits) for name in layers]
    with torch.no_grad():
        for values, bits in rounded:
            if values is not None and values.abs().max() > 0:
                values.copy_(round_pow2(values, bits))
    for key in ("bias_bits", "codebook_bits"):
        if getattr(config, key):
            ctx.notes["share"][key] = getattr(config, key)
    return model

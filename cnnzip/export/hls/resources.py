"""What an integer model costs on an FPGA, per layer: multiplies, DSP slices and on-chip
weight bits, as hls4ml would build it.

hls4ml instantiates one multiplier per weight of a layer's kernel matrix (a convolution's
kernel runs once per output position) divided by the reuse factor; its weights are constants,
so a multiply by a pruned zero is never built. With the two-per-DSP packing
(:mod:`cnnzip.export.hls.dsp`), two weights that multiply the same activation (one input, two
output channels) share one slice, where the weights have at most 8 bits and at least one
product fits the slice's low field. These are counts of multipliers mapped to DSPs: Vivado
may put narrow ones in LUTs instead; only synthesis knows (hls4ml reports resources only from
the vendor tools, which cnnzip does not run).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cnnzip.export.hls.dsp import max_exact_terms
from cnnzip.export.ir.facts import accumulator_bits, shapes, value_ranges, weight_bits
from cnnzip.export.ir.ops import IntLayer, IntModel


@dataclass(frozen=True)
class LayerCost:
    """One conv or linear layer's cost at a reuse factor (see the module docstring)."""

    name: str
    kind: str
    macs: int
    nonzero_macs: int
    weights: int
    nonzero_weights: int
    weight_bits: int
    accumulator_bits: int
    dsp: int  # one multiplier per weight, / reuse
    dsp_packed: int  # two weights sharing an activation per slice
    dsp_nonzero: int  # zero weights removed
    dsp_nonzero_packed: int  # both
    packing_terms: int  # products one slice accumulates exactly (0: not packable)
    weight_storage_bits: int  # every weight at its precision (a BRAM/LUT-RAM array)
    nonzero_storage_bits: int  # the non-zero weights only (constants in the logic)


def _positions(model: IntModel, in_shape: tuple[int, ...]) -> dict[int, int]:
    """Per conv or linear node, how many times its kernel runs on one image."""
    shape = shapes(model, in_shape)
    return {k: int(np.prod(shape[k][1:])) if node.op.kind == "conv" else 1
            for k, node in enumerate(model.nodes) if isinstance(node.op, IntLayer)}


def _pairs(matrix: np.ndarray) -> int:
    """Slices for a kernel matrix (out, k) with two outputs of one input column per slice."""
    return int(sum(math.ceil(int(c) / 2) for c in matrix.sum(0)))


def layer_costs(model: IntModel, in_shape: tuple[int, ...], reuse_factor: int = 1,
                ) -> list[LayerCost]:
    """The cost of every conv and linear layer of ``model`` at ``reuse_factor``."""
    if reuse_factor < 1:
        raise ValueError("the reuse factor must be at least 1")
    ranges, positions = value_ranges(model), _positions(model, in_shape)
    costs = []
    for k, node in enumerate(model.nodes):
        op = node.op
        if not isinstance(op, IntLayer):
            continue
        x_range = ranges[node.inputs[0]]
        w = op.weight.reshape(len(op.weight), -1)
        nonzero = w != 0
        w_bits = weight_bits(op)
        try:
            terms = max_exact_terms((int(w.min(initial=0)), int(w.max(initial=0))), x_range)
        except ValueError:
            terms = 0
        groups = op.groups if op.kind == "conv" else 1
        # a grouped layer's outputs pair within their group (they read the same inputs)
        dense_pairs = sum(_pairs(g) for g in np.split(np.ones_like(nonzero), groups))
        nz_pairs = sum(_pairs(g) for g in np.split(nonzero, groups))
        n, nnz = w.size, int(nonzero.sum())

        def slices(count: int) -> int:
            return math.ceil(count / reuse_factor)

        costs.append(LayerCost(
            name=node.name or f"node{k}", kind=op.kind, macs=positions[k] * n,
            nonzero_macs=positions[k] * nnz, weights=n, nonzero_weights=nnz,
            weight_bits=w_bits, accumulator_bits=accumulator_bits(op, x_range),
            dsp=slices(n), dsp_packed=slices(dense_pairs if terms else n),
            dsp_nonzero=slices(nnz), dsp_nonzero_packed=slices(nz_pairs if terms else nnz),
            packing_terms=terms, weight_storage_bits=n * w_bits,
            nonzero_storage_bits=nnz * w_bits))
    return costs


def resource_report(model: IntModel, in_shape: tuple[int, ...], reuse_factor: int = 1,
                    ) -> dict:
    """:func:`layer_costs` as a dict for report.json and ``inspect --hardware fpga``, with
    totals."""
    costs = layer_costs(model, in_shape, reuse_factor)
    keys = [f for f in LayerCost.__dataclass_fields__ if f not in
            ("name", "kind", "weight_bits", "accumulator_bits", "packing_terms")]
    total = {key: sum(getattr(c, key) for c in costs) for key in keys}
    total["packed_vs_unpacked"] = round(total["dsp_packed"] / total["dsp"], 4) \
        if total["dsp"] else None
    return {"reuse_factor": reuse_factor, "layers": [asdict(c) for c in costs],
            "total": total, "hls4ml_estimate": None,
            "note": "DSP counts are multipliers hls4ml instantiates; Vivado may map narrow "
                    "ones to LUTs (synthesis only)"}

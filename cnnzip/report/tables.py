"""Per-layer rows in the spirit of Deep Compression's Table 3."""

from __future__ import annotations

import math
from typing import Any


def codebook_rows(records: list, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per container layer: weights kept, bits per weight and per index before and after
    entropy coding, bytes.

    Args:
        records: the container's ``CodebookRecord`` list.
        streams: ``stream_report`` rows (entropy, Huffman and coded sizes), same order.
    """
    rows = []
    for rec, st in zip(records, streams):
        total = math.prod(rec.shape)
        nnz = max(rec.nnz, 1)
        payload = rec.pos_bytes + rec.code_bytes + rec.book_bytes
        rows.append({
            "name": rec.name, "shape": list(rec.shape),
            "sparsity": 1 - rec.nnz / total, "weights_kept": rec.nnz / total,
            "k": rec.k, "d": rec.d, "format": f"codebook {rec.k}×{rec.d}",
            "bits": 8 * payload / nnz,  # all bits per surviving weight, codebook included
            "code_bits_raw": math.log2(max(rec.k, 2)) / rec.d,
            "code_bits_coded": 8 * rec.code_bytes / nnz,
            "index_bits_raw": math.log2(rec.max_gap + 1) * rec.n_gaps / nnz,
            "index_bits_coded": 8 * rec.pos_bytes / nnz,
            "codebook_bytes": rec.book_bytes,
            "bytes": payload,
            "streams": {k: st[k] for k in ("index", "codes")},
        })
    return rows


def quant_rows(records: list, layers: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per uniformly quantized layer, from its container record: integer bits, packed or
    entropy-coded, bytes of codes plus float16 scales.

    Args:
        records: the container's ``QuantRecord`` list.
        layers: the decoded ``QuantLayer``s by name (for the share of zero weights).
    """
    rows = []
    for rec in records:
        total = math.prod(rec.shape)
        kept = float((layers[rec.name].codes() != 0).float().mean())
        payload = rec.code_bytes + 2 * rec.scales
        rows.append({
            "name": rec.name, "shape": list(rec.shape), "sparsity": 1 - kept,
            "weights_kept": kept, "k": 0, "d": 0, "format": f"int{rec.bits} {rec.coding}",
            "bits": 8 * payload / total,  # all bits per weight, scales included
            "code_bits_raw": float(rec.bits), "code_bits_coded": 8 * rec.code_bytes / total,
            "index_bits_raw": 0.0, "index_bits_coded": 0.0, "codebook_bytes": 0,
            "bytes": payload, "streams": {},
        })
    return rows


def dense_rows(weights: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for conv and linear weights stored as plain float16 tensors (not codebook-shared)."""
    rows = []
    for name, weight in weights.items():
        weight = weight.detach()
        kept = float((weight != 0).float().mean())
        rows.append({"name": name, "shape": list(weight.shape), "sparsity": 1 - kept,
                     "weights_kept": kept, "k": 0, "d": 0, "format": "fp16", "bits": 16.0,
                     "code_bits_raw": 16.0,
                     "code_bits_coded": 16.0, "index_bits_raw": 0.0, "index_bits_coded": 0.0,
                     "codebook_bytes": 0, "bytes": 2 * weight.numel(), "streams": {}})
    return rows


def entropy_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Totals over every stream: empirical entropy, Huffman, our ANS payload (bits)."""
    out = {"entropy_bits": 0.0, "huffman_bits": 0.0, "coded_bits": 0.0, "table_bits": 0.0}
    for row in rows:
        for stream in row["streams"].values():
            for key in out:
                out[key] += stream[key]
    out["coded_over_entropy"] = out["coded_bits"] / max(out["entropy_bits"], 1.0)
    out["coded_with_tables_over_entropy"] = (out["coded_bits"] + out["table_bits"]) \
        / max(out["entropy_bits"], 1.0)
    out["huffman_over_entropy"] = out["huffman_bits"] / max(out["entropy_bits"], 1.0)
    return out

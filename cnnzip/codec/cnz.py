"""The .cnz container: a safetensors file whose size is the compressed size.

Layout:
- one uint8 tensor per codebook layer, the concatenation of three streams: gap symbols of the
  surviving positions (entropy-coded), codes (entropy-coded), and the codebook (float16);
- one uint8 tensor per uniformly quantized layer: its integer weights, packed at their bit width
  or entropy-coded when that is smaller (pruned layers), then its weight scales (float16);
- one float16 tensor ``dense`` holding every other float tensor (biases, BatchNorm, feature-map
  scales, layers that are neither shared nor quantized), flattened;
- string metadata: format and version, the architecture, the input record, per-layer records
  (shape, counts, stream lengths, CRC-32 of the payload) and the dense index.

The model a user ships is the one ``round_for_storage`` produced: decoding rebuilds it bit for
bit, so accuracy from the file equals accuracy in memory.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from cnnzip.errors import CheckpointError, ModelError
from cnnzip.fileio import atomic_path
from cnnzip.models import ModelSpec, build_model
from cnnzip.modules import CodebookLayer
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.entropy import decode_symbols, encode_symbols, stream_stats
from cnnzip.ops.quant import pack, unpack
from cnnzip.ops.sparse import choose_max_gap, gaps_to_positions, positions_to_gaps

FORMAT = "cnnzip-cnz"
VERSION = 2
READS = (1, 2)  # version 2 added uniformly quantized layers
_SKIP = ("num_batches_tracked",)


@dataclass(frozen=True)
class LayerRecord:
    """How one codebook layer is stored."""

    name: str
    shape: tuple[int, ...]
    nnz: int
    k: int
    d: int
    max_gap: int
    n_gaps: int
    n_codes: int
    pos_bytes: int
    code_bytes: int
    book_bytes: int
    crc: int


@dataclass(frozen=True)
class QuantRecord:
    """How one uniformly quantized layer is stored (``coding``: "packed" or "entropy")."""

    name: str
    shape: tuple[int, ...]
    bits: int
    coding: str
    code_bytes: int
    scales: int
    crc: int


def round_for_storage(model: nn.Module) -> nn.Module:
    """Round codebooks and other float tensors to float16 in place, as the container stores them."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def _encode_layer(name: str, layer: CodebookLayer) -> tuple[LayerRecord, np.ndarray]:
    positions = layer.positions.numpy()
    max_gap = choose_max_gap(positions)
    gaps = positions_to_gaps(positions, max_gap)
    pos = encode_symbols(gaps)
    codes = encode_symbols(layer.codes.numpy())
    book = layer.codebook.detach().half().numpy().tobytes()
    payload = np.frombuffer(pos + codes + book, dtype=np.uint8)
    k, d = layer.codebook.shape
    record = LayerRecord(name, layer.weight_shape, layer.nnz, k, d, max_gap, len(gaps),
                         int(layer.codes.numel()), len(pos), len(codes), len(book),
                         zlib.crc32(payload.tobytes()))
    return record, payload


def _encode_quant(name: str, layer: QuantLayer) -> tuple[QuantRecord, np.ndarray]:
    codes = layer.codes().flatten()
    packed = pack(codes, layer.w_grid)
    coded = encode_symbols((codes - layer.w_grid.qmin).numpy())
    coding, stream = ("entropy", coded) if len(coded) < len(packed) else ("packed", packed)
    scales = layer.w_scale.detach().half().numpy().tobytes()
    payload = np.frombuffer(stream + scales, dtype=np.uint8)
    record = QuantRecord(name, tuple(layer.latent.shape), layer.weight_bits, coding, len(stream),
                         layer.w_scale.numel(), zlib.crc32(payload.tobytes()))
    return record, payload


def _dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Float tensors that go to the dense block: all but codebook layers' and quantized
    layers' weights (and their weight scales), which have payloads of their own."""
    shared = {n for n, m in model.named_modules() if isinstance(m, CodebookLayer)}
    coded = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, QuantLayer)
             for k in ("latent", "w_scale")}
    out = {}
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in shared or key in coded or key.endswith(_SKIP) \
                or not value.is_floating_point():
            continue
        out[key] = value
    return out


def encode_file(path: str | Path, model: nn.Module, spec: ModelSpec, *,
                input: dict[str, Any] | None = None) -> list[LayerRecord]:
    """Write ``model`` (already rounded for storage) as a .cnz container, atomically.

    ``CodebookLayer``s and ``QuantLayer``s get coded payloads; every other float tensor (dense
    conv and linear weights included, at the widths ``spec.channel_plan`` rebuilds) goes to the
    float16 ``dense`` block. Returns the codebook layers' records.
    """
    tensors: dict[str, torch.Tensor] = {}
    records, quant = [], []
    for name, module in model.named_modules():
        if isinstance(module, CodebookLayer):
            record, payload = _encode_layer(name, module)
            records.append(record)
            tensors[f"w:{name}"] = torch.from_numpy(payload.copy())
        elif isinstance(module, QuantLayer):
            qrecord, payload = _encode_quant(name, module)
            quant.append(qrecord)
            tensors[f"q:{name}"] = torch.from_numpy(payload.copy())
    dense = _dense_state(model)
    flat = (torch.cat([v.flatten() for v in dense.values()]).half() if dense
            else torch.zeros(0, dtype=torch.float16))
    tensors["dense"] = flat
    index = [[k, list(v.shape)] for k, v in dense.items()]
    # One metadata key: safetensors keeps metadata in a hash map, so several keys would be
    # written in varying order and the same model would not give the same bytes.
    header = {"version": VERSION, "model": spec.to_dict(), "input": input or {},
              "layers": [list(asdict(r).values()) for r in records],
              "quant": [list(asdict(r).values()) for r in quant],
              "dense": {"index": index, "crc": zlib.crc32(flat.numpy().tobytes())}}
    metadata = {FORMAT: json.dumps(header, separators=(",", ":"))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return records


def _fail(path: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(FORMAT)
            if raw is None:
                raise _fail(path, f"not a cnnzip .cnz container (no '{FORMAT}' metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise _fail(path, f"not a readable safetensors file ({exc})") from None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"damaged metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("version") not in READS:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise _fail(path, f"container version {version!r} is not supported (this cnnzip reads "
                          f"versions {', '.join(map(str, READS))})")
    return meta, tensors


def _decode_layer(path: Path, record: LayerRecord, payload: bytes) -> tuple[torch.Tensor, ...]:
    if zlib.crc32(payload) != record.crc:
        raise _fail(path, f"layer {record.name!r}: checksum mismatch (the file is damaged)")
    a, b = record.pos_bytes, record.pos_bytes + record.code_bytes
    if len(payload) != b + record.book_bytes or record.book_bytes != 2 * record.k * record.d:
        raise _fail(path, f"layer {record.name!r}: payload sizes do not match its record")
    try:
        positions = gaps_to_positions(decode_symbols(payload[:a], record.n_gaps), record.max_gap)
        codes = decode_symbols(payload[a:b], record.n_codes)
    except ValueError as exc:
        raise _fail(path, f"layer {record.name!r}: {exc}") from None
    book = np.frombuffer(payload[b:], dtype=np.float16).astype(np.float32)
    if (len(positions) != record.nnz or (positions.size and positions[-1] >= math.prod(record.shape))
            or (codes.size and codes.max() >= record.k)):
        raise _fail(path, f"layer {record.name!r}: decoded streams do not fit the layer")
    return (torch.from_numpy(positions), torch.from_numpy(book.reshape(record.k, record.d)),
            torch.from_numpy(codes))


def _decode_quant(path: Path, record: QuantRecord, layer: QuantLayer, payload: bytes) -> None:
    if zlib.crc32(payload) != record.crc:
        raise _fail(path, f"layer {record.name!r}: checksum mismatch (the file is damaged)")
    if tuple(layer.latent.shape) != record.shape or layer.weight_bits != record.bits \
            or layer.w_scale.numel() != record.scales \
            or len(payload) != record.code_bytes + 2 * record.scales:
        raise _fail(path, f"layer {record.name!r}: its record does not fit the model")
    count, stream = math.prod(record.shape), payload[:record.code_bytes]
    try:
        if record.coding == "packed":
            codes = unpack(stream, count, layer.w_grid)
        elif record.coding == "entropy":
            codes = torch.from_numpy(decode_symbols(stream, count).astype(np.int64))
            codes = codes + layer.w_grid.qmin
        else:
            raise ValueError(f"unknown coding {record.coding!r}")
    except ValueError as exc:
        raise _fail(path, f"layer {record.name!r}: {exc}") from None
    if codes.numel() != count or (count and codes.max() > layer.w_grid.qmax):
        raise _fail(path, f"layer {record.name!r}: decoded codes do not fit the layer")
    scales = np.frombuffer(payload[record.code_bytes:], dtype=np.float16).astype(np.float32)
    with torch.no_grad():
        layer.w_scale.copy_(torch.from_numpy(scales))
    layer.load_codes(codes)


def _records(path: Path, meta: dict[str, Any]) -> list[LayerRecord]:
    try:
        return [LayerRecord(r[0], tuple(r[1]), *r[2:]) for r in meta["layers"]]
    except (KeyError, TypeError, IndexError) as exc:
        raise _fail(path, f"damaged metadata ({exc})") from None


def layer_records(path: str | Path) -> tuple[dict[str, Any], list[LayerRecord]]:
    """The container's metadata and per-layer records, without decoding payloads."""
    meta, _ = _read(Path(path))
    return meta, _records(Path(path), meta)


def decode_file(path: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the compressed model stored in a .cnz file.

    Returns:
        The model (eval mode, codebook layers in place), its spec, and its input record.

    Raises:
        CheckpointError: missing, foreign, damaged or truncated file.
    """
    path = Path(path)
    meta, tensors = _read(path)
    records = _records(path, meta)
    try:
        spec = ModelSpec.from_dict(meta["model"])
        input_info = dict(meta.get("input", {}))
        dense_meta = dict(meta["dense"])
    except (KeyError, TypeError, ValueError, ModelError) as exc:
        raise _fail(path, f"damaged metadata ({exc})") from None
    model = build_model(spec)
    for record in records:
        key = f"w:{record.name}"
        if key not in tensors:
            raise _fail(path, f"layer {record.name!r} has no payload")
        positions, book, codes = _decode_layer(path, record, tensors[key].numpy().tobytes())
        try:
            layer = model.get_submodule(record.name)
        except AttributeError:
            raise _fail(path, f"model {spec.name!r} has no layer {record.name!r}") from None
        if tuple(layer.weight.shape) != record.shape:
            raise _fail(path, f"layer {record.name!r} shape {record.shape} does not fit model")
        parent, _, child = record.name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                CodebookLayer(layer, positions, book, codes))
    try:
        quant = [QuantRecord(r[0], tuple(r[1]), *r[2:]) for r in meta.get("quant", [])]
    except (TypeError, IndexError) as exc:
        raise _fail(path, f"damaged metadata ({exc})") from None
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    if {r.name for r in quant} != set(quantized):
        raise _fail(path, "the quantized layers do not match the model's architecture")
    for qrecord in quant:
        payload = tensors.get(f"q:{qrecord.name}")
        if payload is None:
            raise _fail(path, f"layer {qrecord.name!r} has no payload")
        _decode_quant(path, qrecord, quantized[qrecord.name], payload.numpy().tobytes())
    flat = tensors.get("dense")
    if flat is None or zlib.crc32(flat.numpy().tobytes()) != dense_meta.get("crc"):
        raise _fail(path, "dense tensors: checksum mismatch (the file is damaged)")
    state, offset = {}, 0
    for key, shape in dense_meta["index"]:
        n = math.prod(shape)
        state[key] = flat[offset:offset + n].float().view(shape)
        offset += n
    expected = set(_dense_state(model))
    if set(state) != expected or offset != flat.numel():
        raise _fail(path, "dense tensors do not match the model's architecture")
    model.load_state_dict(state, strict=False)
    return model.eval(), spec, input_info


def stream_report(model: nn.Module, records: list[LayerRecord]) -> list[dict[str, Any]]:
    """Per-layer entropy, Huffman and coded sizes of the position and code streams, with the
    filler lengths the container chose (``records``, in the same order)."""
    rows = []
    for record in records:
        layer = model.get_submodule(record.name)
        gaps = positions_to_gaps(layer.positions.numpy(), record.max_gap)
        rows.append({"name": record.name, "index": asdict(stream_stats(gaps)),
                     "codes": asdict(stream_stats(layer.codes.numpy()))})
    return rows

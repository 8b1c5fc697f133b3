"""The .cnz container: a safetensors file whose size is the compressed size.

Layout:
- one uint8 tensor per codebook layer, the concatenation of three streams: gap symbols of the
  surviving positions (entropy-coded), codes (entropy-coded), and the codebook (float16, or
  where that is smaller and its values allow, its integers on a power-of-two grid);
- one uint8 tensor per uniformly quantized layer: its integer weights, packed at their bit width
  or entropy-coded when that is smaller (pruned layers), then its weight scales (float16);
- one float16 tensor ``dense`` holding every other float tensor (biases, BatchNorm, feature-map
  scales, layers that are neither shared nor quantized), flattened;
- string metadata: format and version, the architecture, the input record, per-layer records
  (shape, counts, stream lengths, CRC-32 of the payload), the dense index, and (version 3) one
  SHA-256 over all of that and every tensor (``cnnzip.integrity``). From version 5 the
  document is packed (deflated, base85) and the per-layer tensors are one ``payload`` tensor
  (:mod:`cnnzip.codec.records`).

Decoding checks the file before building anything: the tensor table, the checksum, the metadata
schema (bounded sizes, counts consistent with each layer's shape), then each payload against
its record; no stream is decoded to more symbols than its layer holds.

The model a user ships is the one ``round_for_storage`` produced: decoding rebuilds it bit for
bit, so accuracy from the file equals accuracy in memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from cnnzip.codec.records import (FORMAT, CodebookRecord, Coding, DenseRecord, QuantRecord,
                                  codebook_record, grid_size, join_payloads, pack_document,
                                  quant_record, read_container, rebuild)
from cnnzip.fileio import atomic_path
from cnnzip.integrity import CHECKSUM, check_finite, check_runs, digest, fail, guard, tensor_bytes
from cnnzip.modules import CodebookLayer
from cnnzip.modules.codebook import WEIGHT_LAYERS
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.entropy import decode_symbols, encode_symbols, stream_stats
from cnnzip.ops.quant import POW2_EXPONENTS, pack, pow2_codes, pow2_grid, pow2_values, unpack
from cnnzip.ops.sparse import choose_max_gap, gaps_to_positions, positions_to_gaps
from cnnzip.surgery import ModelSpec, WeightsShared, share_layer

_SKIP = ("num_batches_tracked",)


def round_for_storage(model: nn.Module) -> nn.Module:
    """Round codebooks and other float tensors to float16 in place, as the container stores them."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def _encode_layer(name: str, layer: CodebookLayer) -> tuple[CodebookRecord, np.ndarray]:
    positions = layer.positions.numpy()
    max_gap = choose_max_gap(positions)
    gaps = positions_to_gaps(positions, max_gap)
    pos = encode_symbols(gaps)
    codes = encode_symbols(layer.codes.numpy())
    book = _encode_book(layer.codebook.detach().half())
    payload = np.frombuffer(pos + codes + book, dtype=np.uint8)
    k, d = layer.codebook.shape
    record = CodebookRecord(name, layer.weight_shape, layer.nnz, k, d, max_gap, len(gaps),
                         int(layer.codes.numel()), len(pos), len(codes), len(book),
                         zlib.crc32(payload.tobytes()))
    return record, payload


def _encode_book(book: torch.Tensor) -> bytes:
    """A float16 codebook's bytes: its values, or, where they are all q · 2^e with integers q
    of fewer than 16 bits and that is smaller, ``[bits, e]`` (e a signed byte) and the q
    packed at ``bits`` (so a codebook stored so is never 2 bytes a value long, which is how
    the decoder tells the two apart)."""
    plain = book.numpy().tobytes()
    codes = pow2_codes(book)
    if codes is None:
        return plain
    q, exponent, bits = codes
    grid = bytes([bits, exponent & 0xFF]) + pack(q, pow2_grid(bits))
    return grid if len(grid) < len(plain) else plain


def _decode_book(path: Path, record: CodebookRecord, data: bytes) -> np.ndarray:
    values = record.k * record.d
    if len(data) == 2 * values:
        return np.frombuffer(data, dtype=np.float16).astype(np.float32)
    bits, exponent = data[0], data[1] - 256 if data[1] >= 128 else data[1]
    if not 2 <= bits <= 15 or not POW2_EXPONENTS[0] <= exponent <= POW2_EXPONENTS[1] \
            or len(data) != 2 + grid_size((values,), bits):
        raise fail(path, f"layer {record.name!r}: its codebook of {len(data)} bytes is neither "
                         f"{values} float16 values nor integers on a power-of-two grid")
    q = unpack(data[2:], values, pow2_grid(bits))
    return pow2_values(q, exponent).numpy()


def _encode_quant(name: str, layer: QuantLayer) -> tuple[QuantRecord, np.ndarray]:
    codes = layer.codes().flatten()
    packed = pack(codes, layer.w_grid)
    coded = encode_symbols((codes - layer.w_grid.qmin).numpy())
    coding, stream = (Coding.ENTROPY, coded) if len(coded) < len(packed) \
        else (Coding.PACKED, packed)
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


# A grid's entry in the document, about what a tensor must save to be worth one
_GRID_RECORD_BITS = 96


def _encode_dense(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor,
                                                              np.ndarray]:
    """The dense block's record, its float16 values, and the packed integers of the tensors
    that lie on a power-of-two grid of fewer than 16 bits (biases rounded so by ``share``'s
    ``bias_bits``): stored so, they are smaller and exactly the same values."""
    halves, packed, grids = [], [], []
    for i, value in enumerate(state.values()):
        value = value.half()
        codes = pow2_codes(value)
        if codes is None or value.numel() * (16 - codes[2]) < _GRID_RECORD_BITS:
            halves.append(value.flatten())
            continue
        q, exponent, bits = codes
        packed.append(np.frombuffer(pack(q, pow2_grid(bits)), dtype=np.uint8))
        grids.append([i, bits, exponent])
    flat = torch.cat(halves) if halves else torch.zeros(0, dtype=torch.float16)
    grid = np.concatenate(packed) if packed else np.zeros(0, dtype=np.uint8)
    # no index: the decoder takes the keys and shapes from the architecture it rebuilds
    record: dict[str, Any] = {
        "crc": zlib.crc32(grid.tobytes(), zlib.crc32(flat.numpy().tobytes()))}
    if grids:  # files without grids stay as earlier versions wrote them
        record["grids"] = grids
    return record, flat, grid


def encode_file(path: str | Path, model: nn.Module, spec: ModelSpec, *,
                input: dict[str, Any] | None = None) -> list[CodebookRecord]:
    """Write ``model`` (already rounded for storage) as a .cnz container, atomically.

    ``CodebookLayer``s and ``QuantLayer``s get coded payloads; every other float tensor (dense
    conv and linear weights included, at the widths the spec's edits rebuild) goes to the
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
    dense, tensors["dense"], grid = _encode_dense(dict(sorted(_dense_state(model).items())))
    if len(grid):
        tensors["grid"] = torch.from_numpy(grid)
    document = {  # pack_document writes it as JSON (tuples as lists, no NaN)
        "model": _without_sharing(spec).to_dict(), "input": input or {},
        "layers": [list(asdict(r).values()) for r in records],
        "quant": [list(asdict(r).values()) for r in quant], "dense": dense}
    tensors = join_payloads(document["layers"], document["quant"], tensors)
    header = pack_document(document)
    header[CHECKSUM] = digest(header, tensors)
    # One metadata key: safetensors keeps metadata in a hash map, so several keys would be
    # written in varying order and the same model would not give the same bytes.
    metadata = {FORMAT: json.dumps(header, separators=(",", ":"))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return records


def _without_sharing(spec: ModelSpec) -> ModelSpec:
    """The spec without its last edits when they share weights: each shared layer's record
    (name, shape, nnz, k, d) holds the same facts, and decoding restores them."""
    edits = list(spec.edits)
    while edits and isinstance(edits[-1], WeightsShared):
        edits.pop()
    return dataclasses.replace(spec, edits=tuple(edits))


def _decode_layer(path: Path, record: CodebookRecord, payload: bytes) -> tuple[torch.Tensor, ...]:
    if zlib.crc32(payload) != record.crc:
        raise fail(path, f"layer {record.name!r}: checksum mismatch (the file is damaged)")
    a, b = record.pos_bytes, record.pos_bytes + record.code_bytes
    if len(payload) != b + record.book_bytes:
        raise fail(path, f"layer {record.name!r}: payload sizes do not match its record")
    try:
        gaps = decode_symbols(payload[:a], record.n_gaps, record.max_gap + 1)
        positions = gaps_to_positions(gaps, record.max_gap)
        codes = decode_symbols(payload[a:b], record.n_codes, record.k)
    except ValueError as exc:
        raise fail(path, f"layer {record.name!r}: {exc}") from None
    book = _decode_book(path, record, payload[b:])
    if (len(positions) != record.nnz
            or (positions.size and positions[-1] >= math.prod(record.shape))
            or (codes.size and codes.max() >= record.k)):
        raise fail(path, f"layer {record.name!r}: decoded streams do not fit the layer")
    return (torch.from_numpy(positions), torch.from_numpy(book.reshape(record.k, record.d)),
            torch.from_numpy(codes))


def _decode_quant(path: Path, record: QuantRecord, layer: QuantLayer, payload: bytes) -> None:
    if zlib.crc32(payload) != record.crc:
        raise fail(path, f"layer {record.name!r}: checksum mismatch (the file is damaged)")
    if tuple(layer.latent.shape) != record.shape or layer.weight_bits != record.bits \
            or layer.w_scale.numel() != record.scales \
            or len(payload) != record.code_bytes + 2 * record.scales:
        raise fail(path, f"layer {record.name!r}: its record does not fit the model")
    count, stream, grid = math.prod(record.shape), payload[:record.code_bytes], layer.w_grid
    try:
        if record.coding is Coding.PACKED:
            codes = unpack(stream, count, grid)
        else:
            symbols = decode_symbols(stream, count, grid.qmax - grid.qmin + 1)
            codes = torch.from_numpy(symbols.astype(np.int64)) + grid.qmin
    except ValueError as exc:
        raise fail(path, f"layer {record.name!r}: {exc}") from None
    if codes.numel() != count or (count and codes.max() > grid.qmax):
        raise fail(path, f"layer {record.name!r}: decoded codes do not fit the layer")
    scales = torch.from_numpy(np.frombuffer(payload[record.code_bytes:], dtype=np.float16)
                              .astype(np.float32))
    if not bool((torch.isfinite(scales) & (scales > 0)).all()):
        raise fail(path, f"layer {record.name!r}: a weight scale is not a positive number")
    with torch.no_grad():
        layer.w_scale.copy_(scales)
    layer.load_codes(codes)


def _check_ranges(path: Path, model: nn.Module) -> None:
    """Feature-map scales positive, zero points whole numbers on their grids."""
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantLayer):
            continue
        for scale, zero, grid in (("a_scale", "a_zero", layer.a_grid),
                                  ("o_scale", "o_zero", layer.o_grid)):
            if grid is None:
                continue
            s, z = getattr(layer, scale), getattr(layer, zero)
            if not bool((s > 0).all()) or not bool(((z == z.round()) & (z >= grid.qmin)
                                                    & (z <= grid.qmax)).all()):
                raise fail(path, f"layer {name!r}: feature-map scale or zero point out of range")


def decode_file(path: str | Path, *, trust_code: bool = False,
                ) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Check and rebuild the compressed model stored in a .cnz file.

    Args:
        path: the container.
        trust_code: allow an architecture named ``package.module:factory`` to be imported
            and called; without it such a file is refused before anything is imported.

    Returns:
        The model (eval mode, codebook and quantized layers in place), its spec, and its input
        record.

    Raises:
        CheckpointError: missing, foreign, damaged, truncated or refused file; the message
            names the file and the layer or field.
    """
    path = Path(path)
    raw, header = read_container(path)
    records = [codebook_record(path, r) for r in header.layers]
    quant = [quant_record(r) for r in header.quant]
    spec, model = rebuild(path, header.model, trust_code=trust_code)
    with guard(path, "decoding layers"):
        shared = _decode_into(path, model, raw.tensors, records, quant, header.dense)
    spec = spec.with_edits(shared)
    check_finite(path, dict(model.state_dict()))
    _check_ranges(path, model)
    check_runs(path, model, spec.in_shape, spec.num_classes)
    return model.eval(), spec, header.input.model_dump(exclude_unset=True)


def _decode_into(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor],
                 records: list[CodebookRecord], quant: list[QuantRecord],
                 dense: DenseRecord) -> list[WeightsShared]:
    """Fill ``model`` from the file's payloads; returns the sharing edits the records stand
    for (those the architecture did not replay already)."""
    modules = dict(model.named_modules())
    restored = []
    shared = {n: m for n, m in modules.items() if isinstance(m, CodebookLayer)}
    if shared and set(shared) != {r.name for r in records}:  # containers from version 4 on
        raise fail(path, "the shared layers do not match the model's architecture")
    for record in records:
        layer = modules.get(record.name)
        if isinstance(layer, CodebookLayer):
            k, d = layer.codebook.shape
            shape = layer.weight_shape
            if (layer.nnz, k, d) != (record.nnz, record.k, record.d):
                raise fail(path, f"layer {record.name!r}: the payload's {record.nnz} weights "
                                 f"in {record.k} × {record.d} centroids do not fit the "
                                 f"architecture's {layer.nnz} in {k} × {d}")
        elif isinstance(layer, WEIGHT_LAYERS) and isinstance(layer.weight, torch.Tensor):
            shape = tuple(layer.weight.shape)
        else:
            raise fail(path, f"model has no convolution or linear layer {record.name!r}")
        if shape != record.shape:
            raise fail(path, f"layer {record.name!r} shape {record.shape} does not fit model")
        payload = tensor_bytes(tensors[f"w:{record.name}"])
        positions, book, codes = _decode_layer(path, record, payload)
        edit = share_layer(model, record.name, positions, book, codes)
        if not isinstance(layer, CodebookLayer):
            restored.append(edit)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    if {r.name for r in quant} != set(quantized):
        raise fail(path, "the quantized layers do not match the model's architecture")
    for qrecord in quant:
        _decode_quant(path, qrecord, quantized[qrecord.name],
                      tensor_bytes(tensors[f"q:{qrecord.name}"]))
    model.load_state_dict(_decode_dense(path, model, tensors, dense), strict=False)
    return restored


def _decode_dense(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor],
                  dense: DenseRecord) -> dict[str, torch.Tensor]:
    """The dense block's tensors by key, every count and shape checked against the model."""
    flat = tensors["dense"]
    grid = tensor_bytes(tensors["grid"]) if "grid" in tensors else b""
    if zlib.crc32(grid, zlib.crc32(tensor_bytes(flat))) != dense.crc:
        raise fail(path, "dense tensors: checksum mismatch (the file is damaged)")
    expected = {k: v.shape for k, v in _dense_state(model).items()}
    index = dense.index if dense.index is not None else \
        [(key, list(shape)) for key, shape in sorted(expected.items())]
    keys = [key for key, _ in index]
    if set(keys) != set(expected) or len(keys) != len(set(keys)):
        raise fail(path, "dense tensors do not match the model's architecture")
    grids = {i: (bits, exponent) for i, bits, exponent in dense.grids}
    if any(i >= len(index) for i in grids):
        raise fail(path, "dense tensors: the index does not cover the dense block exactly")
    halves = sum(math.prod(shape) for i, (_, shape) in enumerate(index) if i not in grids)
    packed = sum(grid_size(index[i][1], bits) for i, (bits, _) in grids.items())
    if halves != flat.numel() or packed != len(grid):
        raise fail(path, "dense tensors: the index does not cover the dense block exactly")
    state, offset, at = {}, 0, 0
    for i, (key, shape) in enumerate(index):
        if tuple(shape) != tuple(expected[key]):
            raise fail(path, f"dense tensor {key!r} has shape {tuple(shape)}; the architecture "
                             f"needs {tuple(expected[key])}")
        n = math.prod(shape)
        if i in grids:
            bits, exponent = grids[i]
            size = grid_size(shape, bits)
            try:
                q = unpack(grid[at:at + size], n, pow2_grid(bits))
            except ValueError as exc:
                raise fail(path, f"dense tensor {key!r}: {exc}") from None
            state[key] = pow2_values(q, exponent)
            at += size
        else:
            state[key] = flat[offset:offset + n].float()
            offset += n
        state[key] = state[key].view(tuple(shape))
    return state


def stream_report(model: nn.Module, records: list[CodebookRecord]) -> list[dict[str, Any]]:
    """Per-layer entropy, Huffman and coded sizes of the position and code streams, with the
    filler lengths the container chose (``records``, in the same order)."""
    rows = []
    for record in records:
        layer = model.get_submodule(record.name)
        gaps = positions_to_gaps(layer.positions.numpy(), record.max_gap)
        rows.append({"name": record.name, "index": asdict(stream_stats(gaps)),
                     "codes": asdict(stream_stats(layer.codes.numpy()))})
    return rows

"""The mutations of the fuzz harness (``benchmarks/fuzz.py``): the safetensors layout taken apart
and put together again, each family of mutants, and the checksum recomputed as an attacker
would. A packed container (version 5) has its document edited unpacked and packed again.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import zlib
from typing import Any, Callable

FAMILIES = ("bitflip", "truncate", "append", "header", "metadata", "table", "dtype",
            "metadata+sum", "table+sum", "tensor+sum")
_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"]

# ------------------------------------------------------------------------- the file layout


def split_file(data: bytes) -> tuple[dict[str, Any], bytes]:
    """safetensors bytes → (header JSON, tensor data)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_file(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _meta_doc(header: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (key, raw), = header["__metadata__"].items()
    return key, json.loads(raw)


def _unpacked(key: str, meta: Any) -> tuple[Any, bool]:
    """The document a metadata edit works on: a packed container's (version 5) unpacked, with
    its version and checksum beside the other fields; others as they are. True when unpacked."""
    from cnnzip.codec.records import FORMAT, PACKED_SINCE, unpack_document
    from cnnzip.errors import CnnzipError

    if key != FORMAT or not isinstance(meta, dict) \
            or not isinstance(meta.get("version"), int) or meta["version"] < PACKED_SINCE:
        return meta, False
    try:
        return unpack_document("mutant", meta), True
    except CnnzipError:  # already damaged: edit it as it is
        return meta, False


def _packed(doc: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`_unpacked`: the version and checksum (as the document has them,
    edited or not) stay outside, the rest is packed."""
    from cnnzip.codec.records import pack_document
    from cnnzip.integrity import CHECKSUM

    outer = {k: doc[k] for k in ("version", CHECKSUM) if k in doc}
    return {**pack_document({k: v for k, v in doc.items() if k not in outer}), **outer}


def content(data: bytes) -> Any:
    """What a file holds, formatting aside: its metadata documents and its tensors (None when
    safetensors cannot read it)."""
    from safetensors.torch import load

    try:
        header, _ = split_file(data)
        meta = {k: json.loads(v) for k, v in header.get("__metadata__", {}).items()}
        tensors = {k: (str(v.dtype), tuple(v.shape), v.contiguous().view(-1).view(
            __import__("torch").uint8).numpy().tobytes() if v.numel() else b"")
            for k, v in load(data).items()}
    except Exception:  # noqa: BLE001  unreadable mutants have no content to compare
        return None
    return meta, tensors


def _recompute(data: bytes, crcs: bool = False) -> bytes:
    """Recompute the file's checksum (and with ``crcs`` its payload CRCs) as an attacker would.
    Unreadable files are returned as they are."""
    from safetensors.torch import load

    from cnnzip.integrity import CHECKSUM, digest, tensor_bytes

    try:
        header, body = split_file(data)
        key, meta = _meta_doc(header)
        tensors = load(data)
    except Exception:  # noqa: BLE001  the mutant is unreadable: nothing to recompute
        return data
    if crcs and isinstance(meta, dict):
        doc, packed = _unpacked(key, meta)
        layers = tensors
        if packed:
            from cnnzip.codec.records import layer_tensors
            from cnnzip.errors import CnnzipError

            try:
                layers = layer_tensors("mutant", doc["layers"], doc["quant"], tensors)
            except (CnnzipError, KeyError, TypeError, IndexError):
                layers = {}
        for rows, prefix in ((doc.get("layers"), "w:"), (doc.get("quant"), "q:")):
            for row in rows if isinstance(rows, list) else ():
                if isinstance(row, list) and row and isinstance(row[0], str) \
                        and prefix + row[0] in layers:
                    row[-1] = zlib.crc32(tensor_bytes(layers[prefix + row[0]]))
        if isinstance(doc.get("dense"), dict) and "dense" in tensors:
            doc["dense"]["crc"] = zlib.crc32(tensor_bytes(tensors["dense"]))
        meta = _packed(doc) if packed else doc
    if isinstance(meta, dict):
        meta[CHECKSUM] = digest(meta, tensors)
    header["__metadata__"] = {key: json.dumps(meta)}
    return join_file(header, body)

# ------------------------------------------------------------------------------- mutations


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _leaves(v, (*path, i))
    return out


def _edit_value(value: Any, rng: random.Random) -> Any:
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: "os:abort", lambda: [], lambda: {},
        lambda: rng.choice([0, -1, 1, 2**31, 2**63, 10**30, -(2**40)]),
        lambda: rng.choice([0.5, -3.0, 1e300, 1e-310]),
        lambda: json.loads("[" * 60 + "]" * 60),
    ]
    if isinstance(value, bool):
        choices.append(lambda: not value)
    elif isinstance(value, int):
        choices += [lambda: value + 1, lambda: value - 1, lambda: value * 2, lambda: value * 1000,
                    lambda: -value, lambda: value // 2, lambda: value + rng.randint(-9, 9)] * 3
    elif isinstance(value, float):
        choices += [lambda: value * 2, lambda: -value, lambda: value + 1e-3, lambda: 0.0] * 3
    elif isinstance(value, str):
        choices += [lambda: value + "x", lambda: value[:-1], lambda: "", lambda: value.upper(),
                    lambda: "builtins:exit", lambda: "features.0", lambda: value * 50] * 2
    elif isinstance(value, list):
        choices += [lambda: value[:-1], lambda: value + value[-1:], lambda: value[::-1],
                    lambda: value[1:], lambda: [value]] * 3
    elif isinstance(value, dict):
        choices += [lambda: {**value, "unknown": 1},
                    lambda: {k: v for i, (k, v) in enumerate(value.items()) if i}] * 3
    return rng.choice(choices)()


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


def mutate_metadata(data: bytes, rng: random.Random) -> bytes:
    header, body = split_file(data)
    key, meta = _meta_doc(header)
    meta, packed = _unpacked(key, meta)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        path = rng.choice(_leaves(meta)[1:])
        old = meta
        for step in path:
            old = old[step]
        meta = _set(meta, path, _edit_value(copy.deepcopy(old), rng))
    if packed and isinstance(meta, dict):
        meta = _packed(meta)
    header["__metadata__"] = {key: json.dumps(meta)}
    return join_file(header, body)


def mutate_table(data: bytes, rng: random.Random, dtype_only: bool = False) -> bytes:
    header, body = split_file(data)
    names = [k for k in header if k != "__metadata__"]
    entry = header[rng.choice(names)]
    op = "dtype" if dtype_only else rng.choice(["dtype", "shape", "offsets", "swap", "drop"])
    if op == "dtype":
        entry["dtype"] = rng.choice([d for d in _DTYPES if d != entry["dtype"]])
    elif op == "shape":
        shape = entry["shape"] or [1]
        i = rng.randrange(len(shape))
        shape[i] = rng.choice([0, 1, shape[i] // 2, shape[i] * 2, shape[i] + 1])
        entry["shape"] = rng.choice([shape, shape + [1], shape[:-1]])
    elif op == "offsets":
        start, end = entry["data_offsets"]
        delta = rng.choice([-8, -2, -1, 1, 2, 8])
        entry["data_offsets"] = rng.choice([[start + delta, end + delta], [start, end + delta],
                                            [start + delta, end]])
    elif op == "swap" and len(names) > 1:
        a, b = rng.sample(names, 2)
        header[a], header[b] = header[b], header[a]
    elif op == "drop":
        del header[rng.choice(names)]
    return join_file(header, body)


def mutate_tensor(data: bytes, rng: random.Random) -> bytes:
    """Overwrite some values of one tensor (NaN, infinity, extremes, random bytes)."""
    header, body = split_file(data)
    names = [k for k in header if k != "__metadata__"]
    entry = header[rng.choice(names)]
    start, end = entry["data_offsets"]
    if end <= start:
        return data
    body = bytearray(body)
    size = {"F32": 4, "F16": 2, "I64": 8}.get(entry["dtype"], 1)
    specials = {4: [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f",
                    b"\x00\x00\x00\x00"],
                2: [b"\x00\x7e", b"\x00\x7c", b"\xff\x7b", b"\x00\x00"], 8: [b"\xff" * 8],
                1: [b"\xff", b"\x00", b"\x80"]}[size]
    for _ in range(rng.choice([1, 1, 2, 8])):
        at = start + size * rng.randrange((end - start) // size)
        body[at:at + size] = rng.choice(specials) if rng.random() < 0.6 \
            else bytes(rng.randrange(256) for _ in range(size))
    return join_file(header, bytes(body))


def mutate(family: str, data: bytes, rng: random.Random) -> bytes:
    """One mutant of ``data`` from ``family`` (deterministic given ``rng``)."""
    n = 8 + struct.unpack("<Q", data[:8])[0]  # header end
    if family == "bitflip":
        out = bytearray(data)
        for _ in range(rng.choice([1, 1, 1, 2, 4, 8])):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if family == "truncate":
        return data[:rng.randrange(len(data))]
    if family == "append":
        return data + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 8, 100])))
    if family == "header":
        out = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 3])):
            i = rng.randrange(8, n)
            out[i] = rng.choice(b'0123456789"{}[],:- abcdefxyzFI.\\e')
        return bytes(out)
    if family in ("metadata", "metadata+sum"):
        out = mutate_metadata(data, rng)
    elif family in ("table", "table+sum", "dtype"):
        out = mutate_table(data, rng, dtype_only=family == "dtype")
    elif family == "tensor+sum":
        return _recompute(mutate_tensor(data, rng), crcs=True)
    else:
        raise ValueError(f"unknown family {family!r}")
    return _recompute(out) if family.endswith("+sum") else out

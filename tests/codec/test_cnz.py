import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnzip.codec import decode_file, encode_file, round_for_storage
from cnnzip.codec.cnz import _encode_layer
from cnnzip.data import synthetic_splits
from cnnzip.errors import CheckpointError
from cnnzip.methods.base import Context, apply
from cnnzip.methods.prune import MagnitudePrune, Schedule
from cnnzip.methods.share import Sharing, WeightSharing
from cnnzip.modules import CodebookLayer
from cnnzip.surgery import ModelSpec, WeightsShared, build_model
from cnnzip.train import evaluate

SPEC = ModelSpec("lenet5", (1, 28, 28), 10)


def _compressed(sparsity=0.8, method=Sharing.KMEANS, block=1, seed=0):
    torch.manual_seed(seed)
    model = build_model(SPEC).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True, seed=seed)
    apply(model, MagnitudePrune(sparsity=sparsity, schedule=Schedule.ONE_SHOT), ctx)
    apply(model, WeightSharing(method=method, block=block, conv_bits=6, fc_bits=4), ctx)
    return round_for_storage(model)


def _assert_same(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _packed_file(tmp_path, method=Sharing.KMEANS, block=1):
    """A pruned and shared lenet5 written with its sharing edits: the file, model and edits."""
    path, model = tmp_path / "m.cnz", _compressed(method=method, block=block)
    shared = tuple(WeightsShared(n, *m.codebook.shape, m.nnz) for n, m in model.named_modules()
                   if isinstance(m, CodebookLayer))
    encode_file(path, model, SPEC.with_edits(shared), input={"dataset": "synthetic"})
    return path, model, shared


@pytest.mark.parametrize("method,block", [(Sharing.KMEANS, 1), (Sharing.PQ, 4)])
def test_round_trip_is_bit_exact(tmp_path, method, block):
    path, model, shared = _packed_file(tmp_path, method, block)
    decoded, spec, info = decode_file(path)
    assert spec == SPEC.with_edits(shared) and info == {"dataset": "synthetic"}
    assert len(shared) == 5
    _assert_same(model, decoded)
    splits = synthetic_splits()
    assert evaluate(decoded, splits.test, splits.info) == evaluate(model, splits.test, splits.info)


@given(st.floats(0.0, 0.99), st.integers(0, 3))
@settings(max_examples=12, deadline=None)
def test_round_trip_any_sparsity(tmp_path_factory, sparsity, seed):
    model = _compressed(sparsity=sparsity, seed=seed)
    path = tmp_path_factory.mktemp("c") / "m.cnz"
    encode_file(path, model, SPEC)
    _assert_same(model, decode_file(path)[0])


def test_same_inputs_give_the_same_file(tmp_path):
    encode_file(tmp_path / "a.cnz", _compressed(), SPEC)
    encode_file(tmp_path / "b.cnz", _compressed(), SPEC)
    assert (tmp_path / "a.cnz").read_bytes() == (tmp_path / "b.cnz").read_bytes()


def test_golden_layer_payload():
    layer = CodebookLayer(nn.Linear(4, 2, bias=False), torch.tensor([1, 2, 6]),
                          torch.tensor([[0.5], [-1.0]]), torch.tensor([1, 0, 1]))
    record, payload = _encode_layer("fc", layer)
    assert (record.nnz, record.k, record.d, record.max_gap) == (3, 2, 1, 7)
    # gaps 1, 0, 3 → the coarse table [0 4 | levels 15 15 0 15] (4 bytes against the exact
    # [4 | 1 1 0 1]); codes 1, 0, 1 → the exact table [2 | 1 2] (a tie: exact wins); each one ANS
    # word; codebook 0.5, -1.0 = [1, -2] · 2^-1, 3 bits: [bits 3, exponent -1 = 0xFF], then
    # q + 3 = 4, 1 packed least significant bit first: 0 0 1 | 1 0 0 → 0x0C
    assert payload[:4].tobytes() == bytes([0, 4, 0xFF, 0xF0])
    assert payload[8:11].tobytes() == bytes([2, 1, 2])
    assert payload[-3:].tobytes() == bytes([3, 0xFF, 0x0C])
    assert len(payload) == record.pos_bytes + record.code_bytes + record.book_bytes == 18
    # centroids off any coarse grid stay float16: 0.3 ≈ 0x34cd, -1.0 = 0xbc00 (little-endian)
    layer.codebook.data = torch.tensor([[0.3], [-1.0]])
    record, payload = _encode_layer("fc", layer)
    assert payload[-4:].tobytes() == bytes([0xCD, 0x34, 0x00, 0xBC]) and record.book_bytes == 4


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "not a readable safetensors file"),
    (lambda b: b[:-7] + bytes(b[-7] ^ 0xFF for _ in [0]) + b[-6:], "checksum mismatch"),
    (lambda b: b"", "not a readable safetensors file"),
])
def test_damaged_container_is_a_clear_error(tmp_path, damage, message):
    path = tmp_path / "m.cnz"
    encode_file(path, _compressed(), SPEC)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        decode_file(path)


def test_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "f.cnz"))
    with pytest.raises(CheckpointError, match="not a cnnzip .cnz container"):
        decode_file(tmp_path / "f.cnz")




def test_the_document_is_packed_and_the_payloads_are_one_tensor(tmp_path):
    import json

    from safetensors import safe_open

    from cnnzip.codec.records import read_container, unpack_document

    path = _packed_file(tmp_path)[0]
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["cnnzip-cnz"])
        names = sorted(f.keys())
    assert names == ["dense", "payload"] and sorted(meta) == ["packed", "sha256", "version"]
    doc = unpack_document(path, meta)
    plain = json.dumps({k: v for k, v in doc.items() if k not in ("version", "sha256")},
                       separators=(",", ":"))
    # deflate and its dictionary pay for base85 (on this lenet5, whose document is mostly
    # layer records of numbers, the packed text is about half the plain)
    assert len(meta["packed"]) < 0.6 * len(plain)
    # the dense tensors' keys and shapes are the architecture's: no index (version 6)
    assert doc["version"] == 6 and set(doc["dense"]) == {"crc"}
    raw, header = read_container(path)  # cut back into one payload per layer
    assert sorted(raw.tensors) == sorted(["dense", *(f"w:{r[0]}" for r in header.layers)])


def test_biases_on_a_power_of_two_grid_are_stored_as_their_integers(tmp_path):
    from cnnzip.codec.records import read_container
    from cnnzip.ops.quant import round_pow2

    path, model, shared = _packed_file(tmp_path)
    plain = path.stat().st_size
    layers = [m for m in model.modules() if isinstance(m, CodebookLayer)]
    with torch.no_grad():
        for layer in layers:
            layer.layer.bias.copy_(round_pow2(layer.layer.bias, 8))
    encode_file(path, model, SPEC.with_edits(shared))
    # those of 12 biases or more (16, 120 and 84; not 6 and 10: a grid's entry in the document
    # would cost about what they save) take a byte instead of two, less their entries
    coded = [n for n in (layer.layer.bias.numel() for layer in layers) if n >= 12]
    assert len(coded) == 3
    assert plain - path.stat().st_size >= sum(coded) - 8 * len(coded)
    _, header = read_container(path)
    assert [bits for _, bits, _ in header.dense.grids] == [8] * len(coded)
    _assert_same(model, decode_file(path)[0])


@pytest.mark.parametrize("edit,message", [
    (lambda meta: meta["dense"]["grids"][0].__setitem__(1, 3), "does not cover"),
    (lambda meta: meta["dense"]["grids"][-1].__setitem__(0, 99), "does not cover"),
    (lambda meta: meta["dense"].update(index=[["x", [1]]] * 99), "version 6 container has no"),
    (lambda meta: meta["dense"]["grids"][0].__setitem__(0, 99), "dense grids must name"),
    (lambda meta: meta["dense"]["grids"].reverse(), "dense grids must name"),
    (lambda meta: meta["dense"]["grids"][0].__setitem__(2, 99), "less than or equal"),
])
def test_a_damaged_dense_grid_is_a_clear_error(tmp_path, edit, message):
    from cnnzip.ops.quant import round_pow2
    from tests.helpers import rewrite

    path, model, shared = _packed_file(tmp_path)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, CodebookLayer):
                layer.layer.bias.copy_(round_pow2(layer.layer.bias, 8))
    encode_file(path, model, SPEC.with_edits(shared))
    rewrite(path, edit)
    with pytest.raises(CheckpointError, match=message):
        decode_file(path)


def _grid_books(tmp_path):
    """The packed lenet5 with its centroids rounded onto 8-bit power-of-two grids."""
    from cnnzip.ops.quant import round_pow2

    path, model, shared = _packed_file(tmp_path)
    plain = path.stat().st_size
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, CodebookLayer):
                layer.codebook.copy_(round_pow2(layer.codebook, 8))
    encode_file(path, model, SPEC.with_edits(shared))
    return path, model, plain


def test_codebooks_on_a_power_of_two_grid_are_stored_as_their_integers(tmp_path):
    from cnnzip.codec.records import read_container

    path, model, plain = _grid_books(tmp_path)
    _, header = read_container(path)
    books = [(r[3] * r[4], r[10]) for r in header.layers]  # k·d values, their bytes
    # [bits, exponent], then a byte a value at most (fewer where the rounded values allow)
    assert all(2 < size <= 2 + values for values, size in books)
    saved = sum(2 * values - size for values, size in books)
    assert saved >= sum(values - 2 for values, _ in books)
    # the document's records change with them (sizes, checksums): within a few bytes
    assert abs(plain - path.stat().st_size - saved) <= 40
    _assert_same(model, decode_file(path)[0])


@pytest.mark.parametrize("byte,value,message", [
    (0, 1, "neither"), (0, 16, "neither"), (1, 100, "neither"), (1, 0x80, "neither")])
def test_a_damaged_grid_codebook_is_a_clear_error(tmp_path, byte, value, message):
    import zlib

    from tests.helpers import rewrite

    path, _, _ = _grid_books(tmp_path)
    rows = {}

    def tensors(t):
        row = rows["row"]
        data = bytearray(t[f"w:{row[0]}"].numpy().tobytes())
        data[row[8] + row[9] + byte] = value
        t[f"w:{row[0]}"] = torch.frombuffer(data, dtype=torch.uint8)
        row[11] = zlib.crc32(bytes(data))

    def meta(m):
        rows["row"] = m["layers"][1]

    rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError, match=message):
        decode_file(path)


@pytest.mark.parametrize("edit,message", [
    (lambda meta: meta.update(packed=meta["packed"][:-5]), "does not inflate"),
    (lambda meta: meta.update(packed=meta["packed"] + "00000"), "does not inflate"),
    (lambda meta: meta.update(packed="~~~~~"), "does not inflate"),
    (lambda meta: meta.update(packed=7), "packed document"),
    (lambda meta: meta.update(layers=[]), "packed document"),
])
def test_a_damaged_packed_document_is_a_clear_error(tmp_path, edit, message):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from cnnzip.integrity import CHECKSUM, digest

    path = _packed_file(tmp_path)[0]
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["cnnzip-cnz"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    meta[CHECKSUM] = digest(meta, tensors)  # as an attacker would: only the checks stand
    save_file(tensors, str(path), metadata={"cnnzip-cnz": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=message):
        decode_file(path)


def test_a_packed_document_inflating_past_the_limit_is_refused(tmp_path, monkeypatch):
    from cnnzip.codec import records

    path = _packed_file(tmp_path)[0]
    monkeypatch.setattr(records, "MAX_DOCUMENT", 100)  # the file's document is larger
    with pytest.raises(CheckpointError, match="larger than the limit"):
        decode_file(path)


def test_payload_bytes_must_match_the_records(tmp_path):
    from tests.helpers import rewrite

    path = _packed_file(tmp_path)[0]

    def longer(meta):
        meta["layers"][0][10] += 2  # book_bytes: the records claim two bytes more than stored
    rewrite(path, longer)
    with pytest.raises(CheckpointError, match="the records give a flat uint8"):
        decode_file(path)

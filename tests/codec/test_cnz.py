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


@pytest.mark.parametrize("method,block", [(Sharing.KMEANS, 1), (Sharing.PQ, 4)])
def test_round_trip_is_bit_exact(tmp_path, method, block):
    model = _compressed(method=method, block=block)
    path = tmp_path / "m.cnz"
    shared = tuple(WeightsShared(n, *m.codebook.shape, m.nnz) for n, m in model.named_modules()
                   if isinstance(m, CodebookLayer))
    encode_file(path, model, SPEC.with_edits(shared), input={"dataset": "synthetic"})
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
    # gaps 1, 0, 3 → table [4 | 1 1 0 1]; codes 1, 0, 1 → table [2 | 1 2]; each one ANS word;
    # codebook float16 0.5 = 0x3800, -1.0 = 0xbc00 (little-endian)
    assert payload[:5].tobytes() == bytes([4, 1, 1, 0, 1])
    assert payload[9:12].tobytes() == bytes([2, 1, 2])
    assert payload[-4:].tobytes() == bytes([0x00, 0x38, 0x00, 0xBC])
    assert len(payload) == record.pos_bytes + record.code_bytes + record.book_bytes == 20


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

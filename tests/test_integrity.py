"""Hostile files: code named by a file, crafted metadata, bombs, NaN weights, old formats."""

import json
import subprocess
import sys
import warnings
import zlib

import pytest
import torch
from safetensors.torch import load_file

from cnnzip.api import load_model
from cnnzip.cli import main
from cnnzip.codec import (decode_file, encode_file, load_checkpoint, round_for_storage,
                          save_checkpoint)
from cnnzip.data import synthetic_splits
from cnnzip.errors import CheckpointError
from cnnzip.integrity import MAX_DEPTH, tensor_bytes
from cnnzip.methods.base import Context, apply
from cnnzip.methods.prune import MagnitudePrune, Schedule
from cnnzip.methods.share import WeightSharing
from cnnzip.surgery import ModelSpec, build_model
from tests.helpers import rewrite

GOLDEN = __import__("pathlib").Path(__file__).parent / "data" / "golden"
LENET = ModelSpec("lenet5", (1, 28, 28), 10)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "m.safetensors", build_model(LENET), LENET,
                           input={"dataset": "synthetic"})


@pytest.fixture
def container(tmp_path):
    torch.manual_seed(0)
    model = build_model(LENET).eval()
    ctx = Context(synthetic_splits(), finetune_epochs=0, quiet=True)
    apply(model, MagnitudePrune(sparsity=0.8, schedule=Schedule.ONE_SHOT), ctx)
    apply(model, WeightSharing(conv_bits=5, fc_bits=4), ctx)
    path = tmp_path / "m.cnz"
    encode_file(path, round_for_storage(model), LENET)
    return path


def _name(meta, value):
    meta["model"]["name"] = value


def _one_error_line(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("kind", ["checkpoint", "container"])
@pytest.mark.parametrize("target", ["os:abort", "builtins:exit", "builtins:input",
                                    "evil_cnz_module:make"])
def test_code_named_by_a_file_is_never_imported(request, capsys, tmp_path, monkeypatch, kind,
                                                target):
    (tmp_path / "evil_cnz_module.py").write_text(
        "open('imported', 'w').close()\ndef make(**kw):\n    open('called', 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = rewrite(request.getfixturevalue(kind), lambda m: _name(m, target))
    for command in (["inspect", str(path), "--json"], ["eval", str(path)],
                    ["bench", str(path), str(path)],
                    ["export", str(path), "--out", str(tmp_path / "x.onnx")]):
        err = _one_error_line(capsys, *command)
        assert target in err and "--trust-model-code" in err
    assert "evil_cnz_module" not in sys.modules
    assert not (tmp_path / "imported").exists() and not (tmp_path / "called").exists()
    assert not (tmp_path / "x.onnx").exists()


def test_compress_refuses_factory_checkpoints_too(capsys, checkpoint, tmp_path):
    rewrite(checkpoint, lambda m: _name(m, "os:abort"))
    err = _one_error_line(capsys, "compress", str(checkpoint), "--recipe", "int8",
                          "--out", str(tmp_path / "out"))
    assert "os:abort" in err and not (tmp_path / "out" / "model.cnz").exists()


def test_trusted_user_model_loads(tmp_path):
    spec = ModelSpec("tests.helpers:ConvBN", (1, 28, 28), 10)
    model = build_model(spec, trust_code=True).eval()
    path = save_checkpoint(tmp_path / "u.safetensors", model, spec)
    with pytest.raises(CheckpointError, match="trust-model-code"):
        load_checkpoint(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(load_checkpoint(path, trust_code=True).model(x), model(x))


def test_a_refused_file_in_a_fresh_process_imports_nothing(tmp_path, checkpoint):
    """In a clean interpreter: the module named by the file is absent from sys.modules."""
    (tmp_path / "evil_cnz_module.py").write_text("raise SystemExit('imported!')\n")
    rewrite(checkpoint, lambda m: _name(m, "evil_cnz_module:make"))
    code = ("import sys; from cnnzip.cli import main; rc = main(['inspect', sys.argv[1]]); "
            "assert 'evil_cnz_module' not in sys.modules; sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, str(checkpoint)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "refused" in run.stderr and "imported!" not in run.stderr


@pytest.mark.parametrize("edit", [
    lambda raw: raw.replace(b'"dtype":"F32"', b'"dtype":"I32"', 1),
    lambda raw: raw.replace(b'num_classes\\":10', b'num_classes\\":11', 1),
    lambda raw: raw.replace(b'synthetic', b'synthetiX', 1),
])
def test_metadata_and_tensor_table_edits_break_the_checksum(checkpoint, edit):
    data = checkpoint.read_bytes()
    edited = edit(data)
    assert edited != data and len(edited) == len(data)
    checkpoint.write_bytes(edited)
    with pytest.raises(CheckpointError):
        load_checkpoint(checkpoint)


def test_container_dtype_and_record_edits_break_the_checksum(container):
    data = container.read_bytes()
    container.write_bytes(data.replace(b'"dtype":"F16"', b'"dtype":"I16"', 1))
    with pytest.raises(CheckpointError):
        decode_file(container)
    j = data.index(b"packed") + 20  # a character of the packed document
    container.write_bytes(data[:j] + bytes([data[j] ^ 1]) + data[j + 1:])  # 0<->1, A<->@, ...
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        decode_file(container)
    container.write_bytes(data)

    def count(meta):
        meta["layers"][0][7] ^= 1  # a record's number, the document packed again
    rewrite(container, count, checksum=False)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        decode_file(container)


def test_a_damaged_payload_names_its_layer(container):
    def flip(tensors):
        tensors["w:features.0"][-1] ^= 0x55
    rewrite(container, edit_tensors=flip, checksum=False)
    with pytest.raises(CheckpointError, match="layer 'features.0': checksum mismatch"):
        decode_file(container)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["model"].update(num_classes=10**9), "num_classes"),
    (lambda m: m["model"].update(width=5.0), "fixed width"),
    (lambda m: m["model"].update(in_shape=[1, 28]), "in_shape"),
    (lambda m: m.update(extra={"x": json.loads("[" * 40 + "]" * 40)}), f"deeper than {MAX_DEPTH}"),
    (lambda m: m["model"].update(name="lenet5", folded=[["features.0", "nope"]]), "folded"),
    (lambda m: m["input"].update(dataset=["a"]), "input.dataset"),
])
def test_crafted_checkpoint_metadata_is_refused_by_the_schema(checkpoint, edit, message):
    rewrite(checkpoint, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(checkpoint)


def test_huge_zoo_model_is_refused_before_allocation(checkpoint):
    rewrite(checkpoint, lambda m: m["model"].update(name="vgg16", width=60.0, num_classes=90000))
    with pytest.raises(CheckpointError, match="over the limit"):
        load_checkpoint(checkpoint)


def test_decompression_bomb_is_refused_before_decoding(container):
    def bomb(meta):
        row = meta["layers"][0]
        row[6] = 20_000_000  # n_gaps
    rewrite(container, bomb)
    with pytest.raises(CheckpointError, match="record does not fit its shape"):
        decode_file(container)


@pytest.mark.parametrize("index", [7, 2])  # n_codes, nnz
def test_code_counts_must_fit_the_layer(container, index):
    def edit(meta):
        meta["layers"][0][index] += 1
    rewrite(container, edit)
    with pytest.raises(CheckpointError, match="does not fit"):
        decode_file(container)


def test_nan_weights_are_refused_with_their_name(checkpoint, container):
    def poison(tensors):
        tensors["classifier.0.weight"][0, 0] = float("nan")
    rewrite(checkpoint, edit_tensors=poison)
    with pytest.raises(CheckpointError, match="'classifier.0.weight' holds NaN"):
        load_checkpoint(checkpoint)

    def inf(tensors):
        tensors["dense"][0] = float("inf")
    def dense_crc(meta):
        meta["dense"]["crc"] = zlib.crc32(tensor_bytes(poisoned["dense"]))

    poisoned = load_file(str(container))
    inf(poisoned)
    rewrite(container, dense_crc, inf)
    with pytest.raises(CheckpointError, match="holds NaN or infinity"):
        decode_file(container)


def test_foreign_dtype_is_refused(checkpoint):
    def half(tensors):
        tensors["classifier.0.bias"] = tensors["classifier.0.bias"].to(torch.int32)
    rewrite(checkpoint, edit_tensors=half)
    with pytest.raises(CheckpointError, match="'classifier.0.bias' is torch.int32"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.iterdir()
                                        if p.suffix in (".cnz", ".safetensors")
                                        and p.name != "logits.safetensors"))
def test_files_of_earlier_versions_still_load_bit_for_bit(name):
    expected = load_file(str(GOLDEN / "logits.safetensors"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(GOLDEN / name)[0].eval()
    old = name.startswith(("checkpoint-v1", "cnz-v1", "cnz-v2"))
    assert any("without a checksum" in str(w.message) for w in caught) == old
    with torch.no_grad():
        out = model(expected["input"])
    # the files decode to the same numbers; the CPU's float kernels may sum in another order
    # (measured: 3e-8 apart on an AMD EPYC), where a quantized feature map can round one step
    # the other way for an image
    diff = (out - expected[name]).abs().amax(1) / expected[name].abs().max()
    assert (diff <= 1e-5).float().mean() >= 7 / 8 and float(diff.max()) <= 0.01


def test_new_files_carry_a_checksum_and_verify(checkpoint, container):
    assert load_checkpoint(checkpoint).verified
    for path in (checkpoint, container):
        raw = json.loads(next(iter(__import__("safetensors").safe_open(
            str(path), "pt").metadata().values())))
        assert len(raw["sha256"]) == 64

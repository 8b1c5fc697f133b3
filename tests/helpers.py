"""A zoo of tiny models with fixed seeds (conv-BN, residual add, concat, depthwise, grouped, MLP)
and small generated files, shared by the unit tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ConvBN(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * in_shape[1] * in_shape[2], num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Residual(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(in_shape[0], 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.left = nn.Conv2d(in_shape[0], 3, 3, padding=1)
        self.right = nn.Conv2d(in_shape[0], 5, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.cat([self.left(x), self.right(x)], 1).relu().mean((2, 3)))


class Depthwise(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.pw = nn.Conv2d(in_shape[0], 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.dw(self.pw(x).relu()).relu().mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(in_shape[0], 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.grouped(self.stem(x).relu()).relu().mean((2, 3)))


class MLP(nn.Module):
    def __init__(self, in_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), 16), nn.ReLU(),
                                 nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


TINY_ZOO = {"convbn": ConvBN, "residual": Residual, "concat": Concat, "depthwise": Depthwise,
            "grouped": Grouped, "mlp": MLP}


def prune_layers(model: nn.Module, sparsity: float) -> nn.Module:
    """Every conv and linear layer's weights magnitude-pruned to ``sparsity``, in place."""
    from cnnzip.ops.prune import magnitude_mask

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(magnitude_mask(m.weight, sparsity))
    return model


def tiny(name: str, seed: int = 0) -> nn.Module:
    """A tiny model with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = TINY_ZOO[name]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def zoo_model(name: str, seed: int = 0, width: float | None = 0.25) -> nn.Module:
    """A zoo model, narrow by default (None: the zoo's width), with seeded weights, its
    BatchNorm statistics measured on random images (untrained, a deep model's default
    statistics let the features vanish), in eval mode."""
    from cnnzip.surgery import build_model, resolve_spec

    torch.manual_seed(seed)
    model = build_model(resolve_spec(name, (1, 28, 28), 10, width=width))
    with torch.no_grad():
        model.train()(torch.randn(256, 1, 28, 28))
    return model.eval()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when asked)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist_like(directory: Path, n_train: int = 300, n_test: int = 100, *,
                     compress: bool = False) -> Path:
    """Write the four IDX files of an MNIST-layout dataset with random contents."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}",
                  rng.integers(0, 10, (n,), dtype=np.uint8), compress=compress)
    return directory


def rewrite(path: Path, edit_meta=None, edit_tensors=None, *, checksum: bool = True) -> Path:
    """Rewrite a cnnzip safetensors file in place as an attacker would: edit its metadata
    document and/or tensors, then (``checksum``) recompute the checksum so only the schema and
    the decoders stand in the way. A packed container (version 5) is edited unpacked: its
    document, and one tensor per coded layer (``w:name``, ``q:name``) beside ``dense``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from cnnzip.codec.records import (FORMAT, PACKED_SINCE, DenseRecord, join_payloads,
                                      layer_tensors, pack_document, unpack_document)
    from cnnzip.integrity import CHECKSUM, digest

    with safe_open(str(path), framework="pt") as f:
        (key, raw), = f.metadata().items()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(raw)
    packed = key == FORMAT and meta.get("version", 0) >= PACKED_SINCE
    stored = meta.get(CHECKSUM)
    if packed:
        meta = {k: v for k, v in unpack_document(path, meta).items()
                if k not in ("version", CHECKSUM)}
        grid = DenseRecord.model_validate(meta["dense"]).grid_bytes()
        tensors = layer_tensors(path, meta["layers"], meta["quant"], tensors, grid)
    if edit_meta is not None:
        edit_meta(meta)
    if edit_tensors is not None:
        edit_tensors(tensors)
    if packed:
        tensors = join_payloads(meta["layers"], meta["quant"], tensors)
        meta = {**pack_document(meta), **({CHECKSUM: stored} if stored else {})}
    if checksum:
        meta[CHECKSUM] = digest(meta, tensors)
    save_file(tensors, str(path), metadata={key: json.dumps(meta)})
    return path


def int8_lenet5(tmp_path: Path) -> tuple[Path, Path]:
    """A lenet5 trained one epoch on synthetic data (checkpoint) and compressed with the int8
    recipe without fine-tuning (its folder, with model.cnz and report.json)."""
    from cnnzip.api import train_baseline
    from cnnzip.cli import main
    from cnnzip.train import TrainConfig

    ckpt = tmp_path / "m.safetensors"
    train_baseline("lenet5", "synthetic", ckpt, config=TrainConfig(epochs=1), quiet=True)
    assert main(["compress", str(ckpt), "--recipe", "int8", "--finetune-epochs", "0",
                 "--no-stage-bench", "--quiet", "--out", str(tmp_path / "q")]) == 0
    return ckpt, tmp_path / "q"

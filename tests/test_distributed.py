"""torchrun: two gloo ranks train on halves of every batch with averaged gradients, check
that their models agree, and rank 0 alone writes; the file matches a single process's."""

import json
import os
import subprocess
import sys

import pytest

from cnnzip import distributed


def test_a_single_process_is_world_size_one():
    assert distributed.world() == 1 and distributed.rank() == 0
    import torch

    x, y = torch.arange(6.0), torch.arange(6)
    assert distributed.shard(x, y)[0] is x and distributed.total(2.5) == 2.5


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(tmp_path):
    from cnnzip.api import train_baseline
    from cnnzip.train import TrainConfig

    ckpt = tmp_path / "m.safetensors"
    train_baseline("lenet300", "synthetic", ckpt, config=TrainConfig(epochs=1), quiet=True)
    command = ["-m", "cnnzip", "compress", str(ckpt), "--recipe", "deep-compression",
               "--finetune-epochs", "1", "--no-stage-bench", "--quiet", "--json", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          *command, str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, *command, str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    reports = [json.loads(r.stdout) for r in (one, two)]  # rank 1 printed nothing
    assert reports[0]["compressed"]["nonzero_params"] == reports[1]["compressed"]["nonzero_params"]
    sizes = [(tmp_path / d / "model.cnz").stat().st_size for d in ("one", "two")]
    assert abs(sizes[0] - sizes[1]) <= 0.01 * sizes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "one", "two"]

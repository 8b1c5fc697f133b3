"""Generated C: compiled with gcc -O2 -std=c99 -Wall -Werror, bit-exact with the numpy integer
reference on every logit."""

import re
import subprocess

import numpy as np
import pytest
import torch

from cnnzip.data import batches, synthetic_splits
from cnnzip.export.c import compile_c, generate
from cnnzip.export.reference import lower_model
from cnnzip.methods import Context, apply
from cnnzip.methods.quant import Quantize
from cnnzip.surgery import build_model, resolve_spec

HARNESS = r"""#include <stdio.h>
#include "model.h"
int main(void) {
    static uint8_t x[CNZ_INPUT_SIZE];
    int32_t logits[CNZ_CLASSES];
    FILE *in = fopen("in.bin", "rb"), *out = fopen("out.bin", "wb");
    while (fread(x, 1, sizeof x, in) == sizeof x) {
        cnz_infer(x, logits);
        fwrite(logits, sizeof logits[0], CNZ_CLASSES, out);
    }
    fclose(in); fclose(out);
    return 0;
}
"""


@pytest.mark.parametrize("name,options", [
    ("lenet5", {}), ("lenet300", {}), ("lenet5", {"weight_bits": 4}),
    ("lenet5", {"weight_bits": 1, "layers": {"features.0": 2}}),
])
def test_the_compiled_c_equals_the_reference_on_every_logit(tmp_path, name, options):
    torch.manual_seed(0)
    model = build_model(resolve_spec(name, (1, 28, 28), 10)).eval()
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, **options),
          Context(splits, finetune_epochs=0, quiet=True))
    int_model = lower_model(model, (1, 28, 28))
    header, source, memory = generate(int_model, (1, 28, 28))
    assert memory["const_bytes"] > 0 and memory["arena_bytes"] > 0
    (tmp_path / "model.h").write_text(header)
    (tmp_path / "model.c").write_text(source)
    (tmp_path / "main.c").write_text(HARNESS)
    compile_c(tmp_path, ["model.c", "main.c"], tmp_path / "infer")
    x, _ = next(iter(batches(splits.test, splits.info, 256)))
    codes = int_model.quantize_input(x)
    (tmp_path / "in.bin").write_bytes(codes.astype(np.uint8).tobytes())
    subprocess.run(["./infer"], cwd=tmp_path, check=True)
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), "<i4").reshape(256, 10)
    assert np.array_equal(got, int_model(codes))
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)  # comments aside
    assert not re.search(r"\b(float|double|malloc)\b", code)


def test_export_format_c_writes_the_folder_and_checks_it_on_the_test_set(tmp_path, capsys):
    import json

    from cnnzip.api import train_baseline
    from cnnzip.cli import main
    from cnnzip.train import TrainConfig

    ckpt = tmp_path / "m.safetensors"
    train_baseline("lenet5", "synthetic", ckpt, config=TrainConfig(epochs=1), quiet=True)
    assert main(["compress", str(ckpt), "--recipe", "int8", "--finetune-epochs", "0",
                 "--no-stage-bench", "--quiet", "--out", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    out = tmp_path / "c"
    assert main(["export", str(tmp_path / "q" / "model.cnz"), "--format", "c", "--check",
                 "--json", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert sorted(r["files"]) == ["main.c", "model.c", "model.h"]
    assert all((out / name).stat().st_size == size for name, size in r["files"].items())
    assert r["c_equals_reference"] == 1.0 and r["samples"] == 256
    # the memory plan, known before compiling, against the compiled object's sections
    plan, compiled = r["memory"], r["compiled"]
    assert compiled["bss"] == plan["arena_bytes"] > 0
    assert plan["const_bytes"] <= compiled["rodata"] <= 1.05 * plan["const_bytes"]
    assert r["c_accuracy"] == pytest.approx(r["accuracy"], abs=0.02)
    # a float model has no integers to export: one clear line
    assert main(["compress", str(ckpt), "--recipe", "channel-prune", "--finetune-epochs", "0",
                 "--no-stage-bench", "--quiet", "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "f" / "model.cnz"), "--format", "c", "--out",
                 str(tmp_path / "fc")]) != 0
    err = capsys.readouterr().err
    assert "cannot export as C" in err and "int8 recipe" in err and len(err.splitlines()) == 1

"""Generated C: compiled with gcc -O2 -std=c99 -Wall -Werror, bit-exact with the numpy integer
reference on every logit."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cnnzip.data import batches, synthetic_splits
from cnnzip.export.c import generate
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
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "no C compiler: scripts/setup.sh installs gcc"
    torch.manual_seed(0)
    model = build_model(resolve_spec(name, (1, 28, 28), 10)).eval()
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, **options),
          Context(splits, finetune_epochs=0, quiet=True))
    int_model = lower_model(model, (1, 28, 28))
    header, source = generate(int_model, (1, 28, 28))
    (tmp_path / "model.h").write_text(header)
    (tmp_path / "model.c").write_text(source)
    (tmp_path / "main.c").write_text(HARNESS)
    subprocess.run([gcc, "-O2", "-std=c99", "-Wall", "-Werror", "model.c", "main.c", "-o",
                    "infer"], cwd=tmp_path, check=True)
    x, _ = next(iter(batches(splits.test, splits.info, 256)))
    codes = int_model.quantize_input(x)
    (tmp_path / "in.bin").write_bytes(codes.astype(np.uint8).tobytes())
    subprocess.run(["./infer"], cwd=tmp_path, check=True)
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), "<i4").reshape(256, 10)
    assert np.array_equal(got, int_model(codes))
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)  # comments aside
    assert not re.search(r"\b(float|double|malloc)\b", code)

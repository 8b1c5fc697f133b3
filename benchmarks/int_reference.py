"""The integer-only reference against cnnzip's quantized model, on the full test set: each
baseline compressed with a quantization recipe, its container decoded, lowered to integers
(cnnzip/export/ir/lower.py: int32 accumulators, Q31 requantization rounded as CMSIS-NN), and
both run on every test image.

    python benchmarks/int_reference.py [--models lenet5 lenet300] [--recipe int8]
        [--out runs/bench-intref] [--set STEP.KEY=VALUE ...]

Targets (issue 19): the reference's top-1 agrees with cnnzip's quantized model on ≥ 99.5% of the
test set; the generated C (cnnzip/export/c/writer.py, gcc -O2 -std=c99 -Wall -Werror) gives the
reference's logits bit for bit on every test image. Prints both accuracies, the agreement and the largest logit difference (as a share of
the range of the quantized model's logits in that batch). Every figure is measured in this run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch

from cnnzip.codec import decode_file
from cnnzip.data import batches, load_dataset
from cnnzip.export.c.writer import generate
from cnnzip.export.ir.lower import lower_model
from cnnzip.export.measure.toolchain import compile_c
from common import compress_each, recipe_parser, write_results

HARNESS = r"""#include <stdio.h>
#include "model.h"
int main(void) {
    static uint8_t x[CNZ_INPUT_SIZE];
    int32_t logits[CNZ_CLASSES];
    while (fread(x, 1, sizeof x, stdin) == sizeof x) {
        cnz_infer(x, logits);
        fwrite(logits, sizeof logits[0], CNZ_CLASSES, stdout);
    }
    return 0;
}
"""


def c_logits(int_model, in_shape, codes: np.ndarray, where: Path) -> np.ndarray:
    """The generated C of ``int_model``, compiled with gcc -O2 -std=c99 -Wall -Werror, run on
    ``codes``: its logits."""
    gen = generate(int_model, in_shape)
    where.mkdir(parents=True, exist_ok=True)
    (where / "model.h").write_text(gen.header)
    (where / "model.c").write_text(gen.source)
    (where / "main.c").write_text(HARNESS)
    infer = compile_c(where, ["model.c", "main.c"], where / "infer")
    out = subprocess.run([str(infer)], cwd=where, input=codes.astype(np.uint8).tobytes(),
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, "<i4").reshape(len(codes), -1)


def main() -> int:
    args = recipe_parser(__doc__, ["lenet5", "lenet300"], "int8",
                         "runs/bench-intref").parse_args()
    rows = []
    for model_name, _, out, report, seconds, _ in compress_each(args):
        model, spec, inputs = decode_file(out / "model.cnz")
        splits = load_dataset(report["dataset"])
        int_model = lower_model(model, tuple(spec.in_shape),
                                next(iter(batches(splits.train, splits.info, 512)))[0])
        agree = ref_correct = our_correct = 0
        worst = 0.0
        all_codes, all_logits = [], []
        for x, y in batches(splits.test, splits.info, 500):
            all_codes.append(int_model.quantize_input(x))
            logits = int_model(all_codes[-1])
            all_logits.append(logits)
            with torch.no_grad():
                ours = model(x).double().numpy()
            spread = float(ours.max() - ours.min())
            worst = max(worst, float(np.abs(logits * int_model.logit_scale - ours).max())
                        / spread)
            agree += int((logits.argmax(1) == ours.argmax(1)).sum())
            ref_correct += int((logits.argmax(1) == y.numpy()).sum())
            our_correct += int((ours.argmax(1) == y.numpy()).sum())
        n = len(splits.test)
        codes, reference = np.concatenate(all_codes), np.concatenate(all_logits)
        compiled = c_logits(int_model, tuple(spec.in_shape), codes, out / "c")
        c_exact = int((compiled == reference).all(1).sum())
        rows.append({"model": model_name, "recipe": args.recipe, "samples": n,
                     "baseline_accuracy": report["baseline"]["accuracy"],
                     "quantized_accuracy": our_correct / n, "reference_accuracy": ref_correct / n,
                     "top1_agreement": agree / n, "max_logit_diff_of_range": worst,
                     "c_bit_exact_images": c_exact,
                     "seconds": round(seconds)})
        r = rows[-1]
        print(f"{model_name:9s} float {r['baseline_accuracy']:.4f}  cnnzip quantized "
              f"{r['quantized_accuracy']:.4f}  integer reference {r['reference_accuracy']:.4f}  "
              f"top-1 agreement {100 * r['top1_agreement']:.2f}%  largest logit difference "
              f"{100 * worst:.2f}% of the logits' range  C bit-exact on {c_exact:,}/{n:,} "
              f"images  ({seconds:.0f} s compress)")
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Any CNN: every built-in recipe and documented cascade on small networks of modern designs.

Each model of tests/modern.py (ResNeXt with 8-group convolutions, ShuffleNet v2 units, squeeze-
and-excitation, a dense block, inverted residuals, a U-Net with transposed convolutions, inception
branches, pixel shuffle) is trained briefly on the synthetic set and compressed by each recipe
without retraining, as a new user would try it. Prints, per model and recipe, the fraction of
the MACs kept, the container's compression ratio, whether the file decodes to the model in
memory, and which layers were left whole; or the one-line refusal.

    python benchmarks/conformance.py [--models resnext,shufflenet] [--recipes channel-prune]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.modern

from cnnzip.api import train_baseline  # noqa: E402
from cnnzip.errors import CnnzipError  # noqa: E402
from cnnzip.pipeline import compress  # noqa: E402
from cnnzip.train import TrainConfig  # noqa: E402
from tests.modern import CASCADES, MODERN, RECIPES, recipe_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODERN))
    parser.add_argument("--recipes", default=",".join([*RECIPES, *CASCADES]))
    args = parser.parse_args()
    print("| model | recipe | MACs kept | ratio | file = memory | left whole | s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in args.models.split(","):
            checkpoint = root / f"{model}.safetensors"
            train_baseline(f"tests.modern:{model}", "synthetic", checkpoint,
                           config=TrainConfig(epochs=1), quiet=True)
            for recipe in args.recipes.split(","):
                start = time.perf_counter()
                try:
                    report = compress(checkpoint, recipe_file(recipe, root), root / "out",
                                      finetune_epochs=0, quiet=True, trust_code=True,
                                      stage_bench=False)
                except CnnzipError as exc:
                    print(f"| {model} | {recipe} | refused: {exc} | | | | |")
                    continue
                kept = report["compressed"]["macs"] / report["baseline"]["macs"]
                match = report["compressed"]["decoded_vs_compressed"]
                same = "yes" if match["max_rel_diff"] <= 1e-5 else f"{match['max_rel_diff']:.1e}"
                whole = report["notes"].get("channels", {}).get("left_whole", {})
                print(f"| {model} | {recipe} | {kept:.3f} | {report['compression_ratio']:.1f}× "
                      f"| {same} | {', '.join(whole) or '—'} "
                      f"| {time.perf_counter() - start:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bad inputs a user (or an attacker) might hand cnnzip, and what each gets: runs every case as a
real command in a fresh process and prints a table of exit status and message.

    python benchmarks/bad_inputs.py [--out runs/bad-inputs]

Every message must be one line on stderr naming what is wrong, with a non-zero exit status.
Exit status 1 if any case gives a traceback, several lines, or exit status 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from tests.helpers import rewrite, write_mnist_like  # noqa: E402


def _cases(d: Path) -> list[tuple[str, list[str]]]:
    import torch

    from cnnzip.codec import save_checkpoint
    from cnnzip.surgery import build_model, resolve_spec

    spec = resolve_spec("lenet5", (1, 28, 28), 10)
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "lenet5.safetensors", build_model(spec), spec,
                           input={"dataset": "synthetic"})
    cnz = d / "out" / "model.cnz"
    subprocess.run([sys.executable, "-m", "cnnzip", "compress", str(ckpt), "--recipe", "int8",
                    "--dataset", "synthetic", "--out", str(d / "out"), "--quiet"], check=True,
                   capture_output=True)

    def copy(name: str, src: Path = ckpt) -> Path:
        path = d / name
        path.write_bytes(src.read_bytes())
        return path

    def edited(name: str, src: Path = ckpt, **kw) -> str:
        return str(rewrite(copy(name, src), **kw))

    flipped = copy("flipped.cnz", cnz)
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 0x10
    flipped.write_bytes(bytes(data))
    truncated = copy("truncated.safetensors")
    truncated.write_bytes(truncated.read_bytes()[:5000])
    header = copy("dtype-edit.cnz", cnz)
    header.write_bytes(header.read_bytes().replace(b'"dtype":"F16"', b'"dtype":"I16"', 1))
    nan = edited("nan.safetensors", edit_tensors=lambda t: t["classifier.0.weight"].fill_(
        float("nan")))
    recipe = d / "typo.yaml"
    recipe.write_text("steps:\n  - prune: {sparsity: 0.5, shedule: agp}\n")
    small = write_mnist_like(d / "mnist", n_train=6000, n_test=10)
    other = write_mnist_like(d / "mnist-other", n_train=6100, n_test=10)
    trained = d / "mnist.safetensors"
    subprocess.run([sys.executable, "-m", "cnnzip", "train", "--model", "lenet300", "--dataset",
                    "mnist", "--data-dir", str(small), "--epochs", "0", "--quiet", "--out",
                    str(trained)], check=True, capture_output=True)
    crafted = {
        "architecture os:abort": edited("abort.safetensors", edit_meta=lambda m: m["model"]
                                        .update(name="os:abort")),
        "architecture builtins:exit": edited("exit.cnz", cnz, edit_meta=lambda m: m["model"]
                                             .update(name="builtins:exit")),
        "architecture in the working dir (mymod:make)": edited(
            "mymod.safetensors", edit_meta=lambda m: m["model"].update(name="mymod:make")),
        "num_classes 10⁹": edited("classes.safetensors", edit_meta=lambda m: m["model"]
                                  .update(num_classes=10**9)),
        "vgg16 at width 60": edited("huge.safetensors", edit_meta=lambda m: m["model"].update(
            name="vgg16", width=60.0)),
        "JSON nested 40 deep": edited("deep.safetensors", edit_meta=lambda m: m["extra"].update(
            x=json.loads("[" * 40 + "]" * 40))),
        "20,000,000 codes claimed (bomb)": edited("bomb.cnz", cnz, edit_meta=lambda m: m["quant"][0]
                                                  .__setitem__(1, [20_000_000, 1])),
        "weight bits 7 → 5 (spec and record)": edited(
            "bits.cnz", cnz, edit_meta=lambda m: (m["model"]["quantized"][0].__setitem__(1, 5),
                                                  m["quant"][0].__setitem__(2, 5))),
    }
    (d / "mymod.py").write_text("import os\nos._exit(99)\n")
    c = [sys.executable, "-m", "cnnzip"]
    return [
        ("dataset missing", [*c, "eval", str(ckpt), "--dataset", "fashion-mnist", "--data-dir",
                             str(d / "nowhere")]),
        ("file missing", [*c, "inspect", str(d / "nope.cnz")]),
        ("not a safetensors file", [*c, "eval", str(recipe)]),
        ("truncated checkpoint", [*c, "inspect", str(truncated)]),
        ("one bit flipped in a payload", [*c, "inspect", str(flipped)]),
        ("dtype F16 → I16 in the header", [*c, "inspect", str(header)]),
        *[(f"crafted (checksum recomputed): {k}", [*c, "inspect", v]) for k, v in crafted.items()],
        ("NaN weights (checksum recomputed)", [*c, "inspect", nan]),
        ("unknown recipe key", [*c, "compress", str(ckpt), "--recipe", str(recipe), "--out",
                                str(d / "o1")]),
        ("unknown recipe", [*c, "compress", str(ckpt), "--recipe", "deep-compresion", "--out",
                            str(d / "o2")]),
        ("impossible budget (--target-macs 0.001)", [*c, "compress", str(ckpt), "--recipe",
                                                     "channel-prune", "--target-macs", "0.001",
                                                     "--finetune-epochs", "0", "--out",
                                                     str(d / "o3"), "--quiet"]),
        ("budget on a recipe without channels", [*c, "compress", str(ckpt), "--recipe", "int8",
                                                 "--target-macs", "0.5", "--out", str(d / "o4")]),
        ("other training files than the checkpoint's", [*c, "compress", str(trained),
                                                        "--recipe", "int8", "--data-dir",
                                                        str(other), "--out", str(d / "o5")]),
        ("bench --rounds 0", [*c, "bench", str(ckpt), str(cnz), "--rounds", "0"]),
        ("bench --batch-size -5", [*c, "bench", str(ckpt), str(cnz), "--batch-size", "-5"]),
        ("train --lr nan", [*c, "train", "--model", "lenet5", "--dataset", "synthetic", "--lr",
                            "nan", "--out", str(d / "x.safetensors")]),
        ("inspect FILE --width 7", [*c, "inspect", str(ckpt), "--width", "7"]),
        ("unknown model", [*c, "inspect", "--model", "lenet6"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bad-inputs")
    args = parser.parse_args()
    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, argv in _cases(d):
            run = subprocess.run(argv, capture_output=True, text=True, cwd=d, timeout=600)
            lines = run.stderr.strip().splitlines()
            message = (lines[-1] if lines else "").replace(str(d) + "/", "")
            ok = run.returncode != 0 and len(lines) == 1 and "Traceback" not in run.stderr
            bad += not ok
            rows.append({"input": name, "exit": run.returncode, "message": message, "ok": ok})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bad-inputs.json").write_text(json.dumps(rows, indent=2))
    print("| input | exit | message |\n|---|---:|---|")
    for r in rows:
        flag = "" if r["ok"] else " **(not one clean line)**"
        print(f"| {r['input']} | {r['exit']} | `{r['message']}`{flag} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Write existing .cnz files again with this cnnzip's container format and compare the bytes.

    python benchmarks/repack.py runs/*/model.cnz [--out runs/repack]

Each file is decoded (bit for bit: the model it holds is the model ``cnnzip compress`` wrote)
and encoded again, so the new file is the one ``cnnzip compress`` now writes for the same model;
accuracy is unchanged. Prints per file: model, old and new bytes, and, where the file's
``report.json`` sits beside it, the ratio (fp32 bytes / file bytes) before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def repack(path: Path, out: Path) -> dict:
    from cnnzip.codec import decode_file, encode_file, round_for_storage

    model, spec, info = decode_file(path, trust_code=False)
    encode_file(out, round_for_storage(model), spec, input=info)
    row = {"file": str(path), "model": spec.name, "old_bytes": path.stat().st_size,
           "new_bytes": out.stat().st_size}
    report = path.parent / "report.json"
    if report.exists():
        fp32 = json.loads(report.read_text())["baseline"]["bytes_fp32"]
        row.update(old_ratio=fp32 / row["old_bytes"], new_ratio=fp32 / row["new_bytes"])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/repack"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| file | model | bytes before | bytes now | ratio before | ratio now |")
    print("|---|---|---|---|---|---|")
    for path in args.files:
        row = repack(path, args.out / f"{path.parent.name}-{path.name}")
        ratios = (f"{row['old_ratio']:.1f}× | {row['new_ratio']:.1f}×" if "old_ratio" in row
                  else "— | —")
        print(f"| {path} | {row['model']} | {row['old_bytes']:,} | {row['new_bytes']:,} | "
              f"{ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

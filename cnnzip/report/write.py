"""Write report.json, report.md and the plots beside the container."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnzip.fileio import atomic_path
from cnnzip.report.tables import entropy_summary


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _plots(out: Path, report: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    scan = report.get("notes", {}).get("sensitivity")
    if scan:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in scan["table"].items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        if scan.get("target_sparsity") is None:
            ax.axhline(scan["baseline_val_accuracy"] - scan["tolerance"], color="grey", ls="--",
                       lw=1, label="tolerance")
        ax.set(xlabel="sparsity of this layer alone", ylabel="validation accuracy",
               title="Sensitivity scan")
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(out / "sensitivity.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        made.append("sensitivity.png")
    rows = report["layers"]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.5))
        names = [r["name"] for r in rows]
        ax.barh(names, [r["bytes"] for r in rows], color="tab:blue", label="container bytes")
        ax.set(xlabel="bytes", title="Bytes per layer in model.cnz")
        ax.invert_yaxis()
        fig.tight_layout()
        with atomic_path(out / "layers.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        made.append("layers.png")
    return made


def _how(report: dict[str, Any]) -> list[str]:
    """The run's settings that change what the recipe did: its overrides and retraining."""
    notes = []
    if report.get("recipe_overrides"):
        notes.append("overrides " + ", ".join(f"`{o}`" for o in report["recipe_overrides"]))
    epochs = report.get("finetune_epochs")
    if epochs is not None:
        notes.append("no retraining (`--finetune-epochs 0`)" if epochs == 0 else
                     f"every retraining step cut to {epochs} epoch{'s' if epochs != 1 else ''} "
                     "(`--finetune-epochs`)")
    return [f"Run with {'; '.join(notes)}; seed {report.get('seed')}.", ""] if notes else []


def _markdown(report: dict[str, Any], plots: list[str]) -> str:
    b, c = report["baseline"], report["compressed"]
    lines = [
        f"# {report['model']} on {report['dataset']}: recipe `{report['recipe']}`", "",
        *_how(report),
        "| | accuracy | params | non-zero | MACs | bytes |", "|---|---|---|---|---|---|",
        f"| baseline | {b['accuracy']:.4f} | {b['params']:,} | {b['params']:,} | {b['macs']:,} "
        f"| {b['bytes_fp32']:,} (fp32) |",
        f"| compressed | {c['accuracy']:.4f} | {c['params']:,} | {c['nonzero_params']:,} "
        f"| {c['macs']:,} | {c['container_bytes']:,} (model.cnz) |", "",
        f"**Compression ratio {report['compression_ratio']:.1f}×** (fp32 parameter bytes / bytes "
        f"of the whole model.cnz file), **accuracy drop {report['accuracy_drop']:.2f} points** "
        "(full test set; the compressed accuracy is evaluated from the decoded file).", "",
        "## Stages", "",
        "| stage | test acc | val acc | non-zero | MACs | layers | bytes | images/s | speed-up "
        "| seconds | realized |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s['accuracy']:.4f} | {s['val_accuracy']:.4f} "
                     f"| {s['nonzero_params']:,} | {s['macs']:,} | {s.get('layers', '')} "
                     f"| {s.get('bytes', 0):,} | {_count(s.get('images_per_s'))} "
                     f"| {_times(s.get('speedup'))} | {s['seconds']:.1f} "
                     f"| {'yes' if s['realized'] else 'simulated'} |")
    lines += ["", "MACs are dense MACs: unstructured sparsity does not reduce them on a dense "
              "runtime; removed channels and merged layers do. Layers: conv and linear layers. "
              "Bytes: the stage's model written as a container; images/s and speed-up: that "
              "model against the original, timed together in this process (batch 256).", ""]
    merged = report.get("notes", {}).get("merge")
    if merged:
        lines += ["## Layers merged", "",
                  f"{merged['layers_before']} → {merged['layers_after']} conv and linear layers. "
                  f"Removed (least essential first): {', '.join(merged['chosen']) or 'none'}.", ""]
        if merged["rounds"]:
            lines += ["| round | chosen | validation accuracy without it (before retraining) |",
                      "|---|---|---|"]
            lines += [f"| {i} | {r['kind']} {r['chosen']} | {r['val_accuracy']:.4f} |"
                      for i, r in enumerate(merged["rounds"], 1)]
            lines.append("")
        lines += [f"- {m}" for m in merged["merges"]] + [""]
        functional = merged.get("functional_not_candidates")
        if functional:
            lines += [f"Not candidates (called as functions in forward, so no module to remove): "
                      f"{', '.join(functional)}.", ""]
    channels = report.get("notes", {}).get("channels")
    if channels:
        how = f"criterion `{channels['criterion']}`, allocation `{channels['allocation']}`"
        if channels.get("soft"):
            how += (", soft pruning (channels re-chosen per epoch: "
                    f"{channels.get('soft_reselected', [])})")
        if channels.get("slimming"):
            how += f", after {channels['slimming']['epochs']} epochs of network slimming"
        sensitivity = channels.get("sensitivity", {})
        lines += ["## Channels removed", "", how, "",
                  "| group (root layer) | channels | removed | ratio |"
                  + (" validation drop when silenced (pts) |" if sensitivity else ""),
                  "|---|---|---|---|" + ("---|" if sensitivity else "")]
        for root, g in channels["groups"].items():
            row = f"| {root} | {g['channels']} | {g['removed']} | {100 * g['ratio']:.0f}% |"
            if sensitivity:
                row += " " + " / ".join(f"{100 * d:.2f}" for d in sensitivity[root]) + " |"
            lines.append(row)
        lines.append("")
        whole = channels.get("left_whole")
        if whole:
            lines += ["Left whole (their output channels are not pruned):", ""]
            lines += [f"- {name}: {why}" for name, why in whole.items()] + [""]
        folded = report.get("notes", {}).get("fold", {}).get("folded")
        if folded:
            lines += [f"BatchNorms folded into the layers before them: {len(folded)}.", ""]
    lines += [ "## Layers", "",
              "| layer | shape | kept | format | code bits raw→coded | index bits raw→coded "
              "| bits/weight all-in | bytes |", "|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        book = r.get("format") or (f"{r['k']}×{r['d']}" if r["k"] else "fp16")
        lines.append(f"| {r['name']} | {'×'.join(map(str, r['shape']))} | "
                     f"{100 * r['weights_kept']:.1f}% | {book} | "
                     f"{r['code_bits_raw']:.2f}→{r['code_bits_coded']:.2f} | "
                     f"{r['index_bits_raw']:.2f}→{r['index_bits_coded']:.2f} | "
                     f"{r['bits']:.2f} | {r['bytes']:,} |")
    e = report["entropy"]
    lines += ["", "## Entropy coding", ""]
    if not e["entropy_bits"]:
        lines += ["No codebook streams: every layer is stored as packed or entropy-coded "
                  "integers or as float16 (see the table above).", ""]
    else:
        lines += [
            f"All streams: empirical entropy {e['entropy_bits'] / 8:,.0f} B, ANS payload "
            f"{e['coded_bits'] / 8:,.0f} B ({100 * (e['coded_over_entropy'] - 1):+.2f}%), "
            f"with its frequency tables {(e['coded_bits'] + e['table_bits']) / 8:,.0f} B "
            f"({100 * (e['coded_with_tables_over_entropy'] - 1):+.2f}%); Huffman "
            f"{e['huffman_bits'] / 8:,.0f} B ({100 * (e['huffman_over_entropy'] - 1):+.2f}%, "
            "its code tables not counted).", ""]
    c = report.get("c")
    if c:
        lines += ["## Integer C (`cnnzip export --format c`)", ""]
        if c["available"]:
            lines += [f"Planned before compiling: {c['const_bytes']:,} B of constant data "
                      f"(flash, code aside) and a {c['arena_bytes']:,} B activation arena (RAM); "
                      "kernels (balanced): " + ", ".join(
                          f"{r['name']} {r['form']} ({r['nonzero_macs']:,} of {r['macs']:,} MACs)"
                          for r in c["layers"]) + ".", ""]
        else:
            lines += [f"Not available: {c['why']}", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json, plots, then report.md (each written atomically)."""
    report["entropy"] = entropy_summary(report["layers"])
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    plots = _plots(out, report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(report, plots))

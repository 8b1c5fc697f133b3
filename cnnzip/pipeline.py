"""``compress``: a recipe's steps applied to a trained model, then the container and the report.

Every figure comes from a real run: accuracy on the full test set (decisions use validation
data), the container's bytes on disk, and the accuracy of the model decoded from that file.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from cnnzip import __version__, distributed, metrics
from cnnzip.codec import stages as stage_files
from cnnzip.codec import Checkpoint, load_checkpoint
from cnnzip.codec.cnz import decode_file, encode_file, round_for_storage, stream_report
from cnnzip.codec.records import quant_records
from cnnzip.data import Splits, canonical_name, load_dataset
from cnnzip.errors import CnnzipError
from cnnzip.fileio import atomic_path
from cnnzip.methods import STEPS, Context, RunState, apply
from cnnzip.modules import CodebookLayer, QuantLayer, weight_layers
from cnnzip.recipes import Recipe, load_recipe
from cnnzip.report import codebook_rows, dense_rows, quant_rows, write_report
from cnnzip.surgery import ModelSpec, materialize
from cnnzip.train import evaluate, output_agreement


def _stage(name: str, model: nn.Module, ctx: Context, in_shape: tuple[int, ...],
           seconds: float, realized: bool) -> dict[str, Any]:
    splits = ctx.splits
    return {"name": name, "accuracy": evaluate(model, splits.test, splits.info),
            "val_accuracy": ctx.val_accuracy(model), "nonzero_params": metrics.count_nonzero(model),
            "macs": metrics.count_macs(model, in_shape), "layers": metrics.count_layers(model),
            "seconds": round(seconds, 2), "realized": realized}


def _speed(model: nn.Module, teacher: nn.Module, in_shape: tuple[int, ...],
           bench: bool) -> dict[str, Any]:
    """Throughput of ``model`` (codebooks materialised) and its speed-up over the original,
    both timed now in this process (batch 256); None for both when ``bench`` is off."""
    if not bench:
        return {"images_per_s": None, "speedup": None}
    speed = metrics.bench_models({"baseline": teacher, "stage": materialize(model)}, in_shape,
                                 rounds=2, min_seconds=0.5)
    return {"images_per_s": round(speed["stage"]),
            "speedup": speed["stage"] / speed["baseline"]}


def _shipped(model: nn.Module, teacher: nn.Module, spec: ModelSpec, path: Path,
             bench: bool) -> dict[str, Any]:
    """A stage's model as the user would ship it: the bytes of its container (written to
    ``path`` and removed) and its measured speed."""
    shipped = round_for_storage(copy.deepcopy(model))
    encode_file(path, shipped, spec)
    size = path.stat().st_size
    path.unlink()
    return {"bytes": size, **_speed(shipped, teacher, tuple(spec.in_shape), bench)}


def compress(model_path: str | Path, recipe: str | Recipe, out_dir: str | Path, *,
             dataset: str | None = None, data_dir: str | Path | None = None, seed: int = 0,
             finetune_epochs: int | None = None, overrides: tuple[str, ...] = (),
             quiet: bool = False, trust_code: bool = False, stage_bench: bool = True,
             resume: bool = False) -> dict[str, Any]:
    """Compress a checkpoint with a recipe; write ``model.cnz``, ``report.json``, ``report.md``.

    After every step the model and what later steps need are saved under ``OUT/stages/``.

    Args:
        model_path: a .safetensors checkpoint written by ``cnnzip train``.
        recipe: a built-in recipe name, a YAML path, or a parsed ``Recipe``.
        out_dir: where the outputs go (created).
        dataset: defaults to the dataset recorded in the checkpoint.
        data_dir: where the dataset's files are.
        seed: seeds clustering and retraining (the validation split is the checkpoint's own,
            recorded by ``train``, whatever the seed).
        finetune_epochs: overrides every retraining step's epochs (0 skips retraining).
        overrides: ``STEP.KEY=VALUE`` recipe options (with a recipe name or path).
        quiet: no progress bars.
        trust_code: allow a checkpoint whose architecture is ``package.module:factory`` (code
            that is imported and called).
        stage_bench: time every stage's model against the original (False: sizes and
            accuracies only, for quick runs and tests).
        resume: continue from the last step saved in ``OUT/stages/`` by an interrupted run of
            the same command (the result is byte for byte the uninterrupted run's), or by a
            run whose recipe differed only in later steps (their steps run again).

    Returns:
        The report (also written to ``report.json``).
    """
    options = dict(dataset=dataset, data_dir=data_dir, seed=seed,
                   finetune_epochs=finetune_epochs, overrides=overrides,
                   trust_code=trust_code, stage_bench=stage_bench, resume=resume)
    if distributed.rank() > 0:  # torchrun: rank 0 alone writes; the others into a scratch folder
        with tempfile.TemporaryDirectory() as scratch:
            return _compress(model_path, recipe, scratch, quiet=True, **options)
    return _compress(model_path, recipe, out_dir, quiet=quiet, **options)


def _compress(model_path: str | Path, recipe: str | Recipe, out_dir: str | Path, *,
              dataset: str | None, data_dir: str | Path | None, seed: int,
              finetune_epochs: int | None, overrides: tuple[str, ...], quiet: bool,
              trust_code: bool, stage_bench: bool, resume: bool) -> dict[str, Any]:
    if finetune_epochs is not None and finetune_epochs < 0:
        raise CnnzipError(f"finetune epochs must be 0 or more, got {finetune_epochs}")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    kinds = [kind for kind, _ in recipe.steps]
    ckpt = load_checkpoint(model_path, trust_code=trust_code)
    dataset = dataset or ckpt.input.get("dataset")
    if not dataset:
        raise CnnzipError(f"{model_path}: no dataset recorded in the file; pass --dataset")
    splits = _training_splits(ckpt, dataset, data_dir)
    spec = ckpt.spec
    if tuple(splits.info.in_shape) != tuple(spec.in_shape):
        raise CnnzipError(f"{model_path}: model takes {spec.in_shape} inputs, {dataset} has "
                          f"{splits.info.in_shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = ckpt.model
    ctx = Context(splits, teacher=teacher, seed=seed, finetune_epochs=finetune_epochs,
                  quiet=quiet)
    baseline = {"accuracy": evaluate(teacher, splits.test, splits.info),
                "val_accuracy": evaluate(teacher, splits.val, splits.info),
                "params": metrics.count_params(teacher),
                "macs": metrics.count_macs(teacher, spec.in_shape),
                "bytes_fp32": metrics.fp32_bytes(teacher)}
    model_sha = stage_files.file_sha256(model_path)
    runs = [stage_files.fingerprint(model=model_sha, steps=recipe.steps[:i + 1], seed=seed,
                                    dataset=dataset, split=splits.split,
                                    finetune_epochs=finetune_epochs, bench=stage_bench,
                                    cnnzip=__version__)
            for i in range(len(kinds))]  # the run up to each step: a changed later step resumes
    saved_dir = out / "stages"
    saved = stage_files.latest(saved_dir, kinds, runs, trust_code=trust_code) if resume else None
    if saved is None:
        stage_files.clear(saved_dir)
        model, first = copy.deepcopy(teacher), 0
    else:
        model, first = saved.model, saved.step + 1
        if not quiet:
            print(f"resuming after step {first} of {len(kinds)} ({kinds[saved.step]}), saved "
                  f"in {saved_dir}", file=sys.stderr)
        ctx.state = RunState.from_stage(saved, spec)
    stages = ctx.state.stages
    for i, (kind, config) in enumerate(recipe.steps[first:], first):
        start = time.perf_counter()
        model = apply(model, config, ctx).eval()
        if STEPS[kind].stage:
            stages.append(_stage(kind, model, ctx, spec.in_shape, time.perf_counter() - start,
                                 realized=STEPS[kind].realized))
            stages[-1].update(_shipped(model, teacher, spec.with_edits(ctx.edits),
                                       out / ".stage.cnz", stage_bench))
        stage_files.save(saved_dir, i, kind, model, spec.with_edits(ctx.edits),
                         *ctx.state.to_stage(), runs[i])
    distributed.check_same(model, "compress")  # masks, codebooks, channels alike on every rank
    spec = spec.with_edits(ctx.edits)
    # model.cnz appears only when everything, report included, has succeeded
    with atomic_path(out / "model.cnz") as container:
        report = _finish(model, spec, ckpt, ctx, recipe, dataset, baseline, stages, seed,
                         container, out, trust_code, stage_bench)
    return report


def _layer_rows(container: Path, decoded: nn.Module, records: list) -> list[dict[str, Any]]:
    """Per-layer rows from the container's own records: codebook, quantized, then float16."""
    layers = weight_layers(decoded)
    quantized = {n: m for n, m in layers.items() if isinstance(m, QuantLayer)}
    return [*codebook_rows(records, stream_report(decoded, records)),
            *quant_rows(quant_records(container), quantized),
            *dense_rows({n: m.weight for n, m in layers.items()
                         if not isinstance(m, (CodebookLayer, QuantLayer))})]


def _training_splits(ckpt: Checkpoint, dataset: str, data_dir: str | Path | None) -> Splits:
    """The dataset with the validation split the checkpoint was trained with (recorded by
    ``train``; older checkpoints: the training seed in their provenance, else 0)."""
    split = ckpt.input.get("split") or {}
    seed = split.get("seed", ckpt.extra.get("seed", 0))
    if type(seed) is not int or seed < 0:
        raise CnnzipError(f"the checkpoint's training seed {seed!r} is not a whole number")
    if canonical_name(dataset) == ckpt.input.get("dataset") and "sha256" in split:
        return load_dataset(dataset, data_dir, seed=seed, val_size=split["val_size"],
                            expect_sha256=split["sha256"])
    return load_dataset(dataset, data_dir, seed=seed)


def _c_plan(model: nn.Module, in_shape: tuple[int, ...], ctx: Context) -> dict[str, Any]:
    """What ``cnnzip export --format c`` would write (default kernels), planned without
    compiling: flash (constant bytes) and RAM (the arena) and each layer's kernel; or why the
    model has no integer C form."""
    from cnnzip.data import batches
    from cnnzip.export.c.writer import generate
    from cnnzip.export.ir.ops import LoweringError
    from cnnzip.export.ir.lower import lower_model

    try:
        calibration = next(iter(batches(ctx.splits.train, ctx.splits.info, 512)))[0]
        gen = generate(lower_model(model, in_shape, calibration), in_shape)
    except LoweringError as exc:
        return {"available": False, "why": str(exc)}
    return {"available": True, "kernels": "balanced", **gen.memory,
            "layers": [dataclasses.asdict(p) for p in gen.layers]}


def _finish(model: nn.Module, spec: ModelSpec, ckpt: Checkpoint, ctx: Context, recipe: Recipe,
            dataset: str, baseline: dict[str, Any], stages: list[dict[str, Any]], seed: int,
            container: Path, out: Path, trust_code: bool, bench: bool) -> dict[str, Any]:
    """Encode the container at ``container``, measure it from the file, write the reports."""
    start = time.perf_counter()
    round_for_storage(model)
    teacher = ctx.teacher
    # the split is the checkpoint's business (compress reads it there), not the shipped file's
    shipped_input = {k: v for k, v in ckpt.input.items() if k != "split"}
    records = encode_file(container, model, spec, input=shipped_input)
    # every reported figure is the file's
    decoded, _, _ = decode_file(container, trust_code=trust_code)
    agreement = output_agreement(model, decoded, ctx.splits.test, ctx.splits.info)
    stages.append(_stage("encode", decoded, ctx, spec.in_shape, time.perf_counter() - start,
                         realized=True))
    size = container.stat().st_size
    stages[-1].update(bytes=size, **_speed(copy.deepcopy(decoded), teacher,
                                           tuple(spec.in_shape), bench))
    final = stages[-1]
    report = {
        "model": spec.name, "dataset": dataset, "recipe": recipe.name,
        "recipe_overrides": list(recipe.overrides), "seed": seed,
        "finetune_epochs": ctx.finetune_epochs,
        "validation_split": ctx.splits.split, "baseline": baseline,
        "compressed": {"accuracy": final["accuracy"],
                       "val_accuracy": evaluate(decoded, ctx.splits.val, ctx.splits.info),
                       "params": metrics.count_params(decoded),
                       "nonzero_params": metrics.count_nonzero(decoded), "macs": final["macs"],
                       "nonzero_macs": metrics.count_nonzero_macs(decoded, tuple(spec.in_shape)),
                       "container_bytes": size, "decoded_vs_compressed": agreement},
        "compression_ratio": baseline["bytes_fp32"] / size,
        "accuracy_drop": 100 * (baseline["accuracy"] - final["accuracy"]),
        "stages": stages,
        "layers": _layer_rows(container, decoded, records),
        "notes": ctx.notes,
        "c": _c_plan(decoded, tuple(spec.in_shape), ctx),
    }
    write_report(out, report)
    return report

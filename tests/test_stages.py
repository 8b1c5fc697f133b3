"""Resuming: a run killed after any step and resumed writes the uninterrupted run's bytes."""

import hashlib
import json

import pytest

from cnnzip import pipeline
from cnnzip.codec import stages
from cnnzip.api import train_baseline
from cnnzip.errors import CnnzipError
from cnnzip.pipeline import compress
from cnnzip.train import TrainConfig


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _figures(report):
    """Everything but the timings."""
    text = json.dumps(report, sort_keys=True)
    out = json.loads(text)
    for stage in out["stages"]:
        stage.pop("seconds")
    return out


CASES = {
    # merge (max poolings, folds) → sensitivity → prune → share: every kind of simulated state
    "prune-merge-exact": ("lenet5", None, ["prune.epochs=2", "share.epochs=1"]),
    # quantize → channels removed from the quantized model → fold into quantized layers (the
    # training is the prune-merge-exact case's; this one checks the record's replay order)
    "quant-prune": ("resnet20", 0.25, ["quantize.budget_bits=null", "quantize.epochs=0",
                                       "channels.epochs=0", "channels.criterion=l1",
                                       "channels.recalibrate=false", "quantize.calibration=256",
                                       "quantize.act_observer=minmax"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(CASES))
def test_a_run_killed_after_any_step_resumes_to_the_same_bytes(tmp_path, monkeypatch, recipe):
    model, width, overrides = CASES[recipe]
    path = tmp_path / "m.safetensors"
    train_baseline(model, "synthetic", path, width=width, config=TrainConfig(epochs=1),
                   quiet=True)
    run = dict(overrides=tuple(overrides), quiet=True, stage_bench=False)
    whole = compress(path, recipe, tmp_path / "whole", **run)
    expected = _sha(tmp_path / "whole" / "model.cnz")
    steps = len(list((tmp_path / "whole" / "stages").iterdir()))
    assert steps == len(whole["notes"]) >= 3
    save, apply = stages.save, pipeline.apply
    for killed_after in range(steps):
        out = tmp_path / f"killed-{killed_after}"

        def dies(directory, step, *args, **kwargs):
            written = save(directory, step, *args, **kwargs)
            if step == killed_after:
                raise Killed
            return written

        monkeypatch.setattr(stages, "save", dies)
        with pytest.raises(Killed):
            compress(path, recipe, out, **run)
        monkeypatch.setattr(stages, "save", save)
        assert not (out / "model.cnz").exists()
        applied = []
        monkeypatch.setattr(pipeline, "apply",
                            lambda m, c, ctx: applied.append(c) or apply(m, c, ctx))
        resumed = compress(path, recipe, out, resume=True, **run)
        monkeypatch.setattr(pipeline, "apply", apply)
        assert len(applied) == steps - killed_after - 1  # only the steps not saved ran again
        assert _sha(out / "model.cnz") == expected, f"killed after step {killed_after + 1}"
        assert _figures(resumed) == _figures(whole)


def test_a_recipe_changed_from_a_step_on_resumes_after_the_steps_before_it(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "m.safetensors"
    train_baseline("lenet300", "synthetic", path, config=TrainConfig(epochs=0), quiet=True)
    run = dict(finetune_epochs=0, quiet=True, stage_bench=False)
    compress(path, "deep-compression", tmp_path / "out", **run)
    changed = ("share.fc_bits=3", "share.min_bits=2")
    fresh = compress(path, "deep-compression", tmp_path / "fresh", overrides=changed, **run)
    applied, apply = [], pipeline.apply
    monkeypatch.setattr(pipeline, "apply",
                        lambda m, c, ctx: applied.append(c) or apply(m, c, ctx))
    resumed = compress(path, "deep-compression", tmp_path / "out", overrides=changed,
                       resume=True, **run)
    assert [type(c).__name__ for c in applied] == ["WeightSharing"]  # scan, pruning kept
    assert _sha(tmp_path / "out" / "model.cnz") == _sha(tmp_path / "fresh" / "model.cnz")
    assert _figures(resumed) == _figures(fresh)
    # the changed recipe's own share stage replaced the old one: resuming again runs nothing
    applied.clear()
    compress(path, "deep-compression", tmp_path / "out", overrides=changed, resume=True, **run)
    assert applied == []
    # another kind of last step: it runs after the same two, and its file replaces share's
    recipe = tmp_path / "dc-quantize.yaml"
    recipe.write_text("name: x\nsteps:\n  - sensitivity: {target_sparsity: 0.90}\n"
                      "  - prune: {schedule: agp, epochs: 60, lr: 0.01}\n"
                      "  - quantize: {calibration: 64}\n")
    applied.clear()
    compress(path, recipe, tmp_path / "out", resume=True, **run)
    assert [type(c).__name__ for c in applied] == ["Quantize"]
    assert sorted(p.name for p in (tmp_path / "out" / "stages").iterdir()) == [
        "01-sensitivity.safetensors", "02-prune.safetensors", "03-quantize.safetensors"]
    # a change in the first step leaves nothing to continue from
    with pytest.raises(CnnzipError, match="same recipe up to its step"):
        compress(path, "deep-compression", tmp_path / "out", resume=True,
                 overrides=("sensitivity.target_sparsity=0.8",), **run)


def test_resuming_refuses_the_stages_of_another_run(tmp_path):
    path = tmp_path / "m.safetensors"
    train_baseline("lenet300", "synthetic", path, config=TrainConfig(epochs=0), quiet=True)
    compress(path, "deep-compression", tmp_path / "out", finetune_epochs=0, quiet=True,
             stage_bench=False)
    with pytest.raises(CnnzipError, match="this model file, seed, dataset"):
        compress(path, "deep-compression", tmp_path / "out", finetune_epochs=0, seed=1,
                 quiet=True, stage_bench=False, resume=True)
    damaged = sorted((tmp_path / "out" / "stages").iterdir())[-1]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CnnzipError, match="checksum"):
        compress(path, "deep-compression", tmp_path / "out", finetune_epochs=0, quiet=True,
                 stage_bench=False, resume=True)


def test_every_field_of_the_run_state_survives_a_stage_file(tmp_path):
    # a field added to RunState but not to its stage form fails here, not silently on resume
    import dataclasses

    import torch

    from cnnzip.methods import RunState
    from cnnzip.surgery import ModelSpec, ModuleReplaced, build_model

    spec = ModelSpec("lenet5", (1, 28, 28), 10)
    edits = [ModuleReplaced("features.1", {"type": "Identity"})]
    model = build_model(spec)
    mask = torch.ones_like(model.features[0].weight)
    mask[0] = 0
    state = RunState(masks={"features.0": mask}, sparsities={"features.0": 0.25},
                     edits=list(edits), notes={"prune": {"kept": 3}},
                     stages=[{"name": "prune", "accuracy": 0.5}])
    assert all(getattr(state, f.name) != getattr(RunState(), f.name)
               for f in dataclasses.fields(RunState)), "give every field a non-default value"
    stages.save(tmp_path, 0, "prune", model, spec.with_edits(edits), *state.to_stage(), "run")
    saved = stages.latest(tmp_path, ["prune"], ["run"], trust_code=False)
    back = RunState.from_stage(saved, spec)
    for f in dataclasses.fields(RunState):
        if f.name == "masks":
            assert back.masks.keys() == state.masks.keys()
            assert torch.equal(back.masks["features.0"], mask)
        else:
            assert getattr(back, f.name) == getattr(state, f.name), f.name

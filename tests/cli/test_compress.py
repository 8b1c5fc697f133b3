import json

import pytest

from cnnzip.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def checkpoint(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    assert main(["train", "--model", "lenet5", "--dataset", "synthetic", "--epochs", "2",
                 "--quiet", "--out", str(path)]) == 0
    capsys.readouterr()
    return path


def test_compress_writes_container_and_report(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    code = main(["compress", str(checkpoint), "--recipe", "deep-compression",
                 "--finetune-epochs", "0", "--quiet", "--json", "--out", str(out)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for name in ("model.cnz", "report.json", "report.md", "sensitivity.png", "layers.png"):
        assert (out / name).is_file(), name
    size = (out / "model.cnz").stat().st_size
    assert report["compressed"]["container_bytes"] == size
    assert report["compression_ratio"] == pytest.approx(report["baseline"]["bytes_fp32"] / size)
    assert report["stages"][-1]["realized"] and not report["stages"][0]["realized"]
    assert {r["name"] for r in report["layers"]} == {"features.0", "features.3", "classifier.0",
                                                     "classifier.2", "classifier.4"}
    e = report["entropy"]  # the frequency tables count once, and only where they are named
    assert e["table_bits"] > 0 and e["coded_with_tables_over_entropy"] > e["coded_over_entropy"]
    md = (out / "report.md").read_text()
    assert f"with its frequency tables {(e['coded_bits'] + e['table_bits']) / 8:,.0f} B" in md
    assert [p.name for p in sorted((out / "stages").iterdir())] == [
        "01-sensitivity.safetensors", "02-prune.safetensors", "03-share.safetensors"]
    # accuracy evaluated from the file equals the report's
    assert main(["eval", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["compressed"]["accuracy"]
    assert main(["inspect", str(out / "model.cnz"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["nonzero_params"] == report["compressed"]["nonzero_params"]


def test_compress_bad_recipe_key(tmp_path, checkpoint, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - prune: {sparsity: 0.5, shedule: agp}\n")
    code = main(["compress", str(checkpoint), "--recipe", str(recipe), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "unknown key 'shedule'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "model.cnz").exists()


def test_channel_prune_writes_a_smaller_dense_container_that_reloads(tmp_path, checkpoint,
                                                                     capsys):
    out = tmp_path / "o"
    code = main(["compress", str(checkpoint), "--recipe", "channel-prune", "--target-macs",
                 "0.6", "--finetune-epochs", "0", "--quiet", "--json", "--out", str(out)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["recipe_overrides"] == ["channels.target_macs=0.6",
                                          "channels.target_params=null"]
    assert report["compressed"]["macs"] <= 0.6 * report["baseline"]["macs"]
    assert report["compressed"]["params"] < report["baseline"]["params"]
    assert report["stages"][0]["realized"]
    assert all(r["k"] == 0 and r["bits"] == 16 for r in report["layers"])
    assert "Channels removed" in (out / "report.md").read_text()
    assert report["finetune_epochs"] == 0  # the report says the recipe's retraining was cut
    assert "no retraining (`--finetune-epochs 0`)" in (out / "report.md").read_text()
    assert main(["eval", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["compressed"]["accuracy"]
    assert main(["inspect", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == report["compressed"]["macs"]


def test_lowrank_vq_meets_target_macs_by_its_ranks_and_reloads(tmp_path, checkpoint, capsys):
    out = tmp_path / "o"
    code = main(["compress", str(checkpoint), "--recipe", "lowrank-vq", "--target-macs", "0.7",
                 "--set", "lowrank.samples=64", "--set", "share.bits_tolerance=null",
                 "--finetune-epochs", "0", "--quiet", "--json", "--out", str(out)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert "lowrank.target_macs=0.7" in report["recipe_overrides"]
    assert report["compressed"]["macs"] <= 0.7 * report["baseline"]["macs"]
    assert report["stages"][0]["name"] == "lowrank" and report["stages"][0]["realized"]
    assert main(["eval", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["compressed"]["accuracy"]


def test_bench_times_both_models(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    assert main(["compress", "--no-stage-bench", str(checkpoint), "--recipe", "pq", "--finetune-epochs", "0",
                 "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(checkpoint), str(out / "model.cnz"), "--batch-size", "8",
                 "--rounds", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["baseline_images_per_s"] > 0 and r["compressed_images_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["compressed_images_per_s"] / r["baseline_images_per_s"])
    assert r["batch_size"] == 8 and "pytorch" in r["runtime"]
    assert r["baseline_batchnorms_folded"] == 0 and r["speedup_vs_folded_baseline"] == r["speedup"]


def test_same_command_gives_the_same_file(tmp_path, checkpoint, capsys):
    for name in ("a", "b"):
        assert main(["compress", "--no-stage-bench", str(checkpoint), "--recipe",
                     "deep-compression", "--finetune-epochs", "1", "--quiet", "--out",
                     str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "model.cnz").read_bytes() == (tmp_path / "b" / "model.cnz").read_bytes()


@pytest.fixture
def resnet(tmp_path):
    path = tmp_path / "r.safetensors"
    assert main(["train", "--model", "resnet20", "--width", "0.25", "--dataset", "synthetic",
                 "--epochs", "1", "--quiet", "--out", str(path)]) == 0
    return path


def test_channel_prune_folds_batchnorms_and_the_container_reloads(tmp_path, resnet, capsys):
    out = tmp_path / "o"
    assert main(["compress", "--no-stage-bench", str(resnet), "--recipe", "channel-prune", "--finetune-epochs", "0",
                 "--quiet", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["stages"]] == ["channels", "fold", "encode"]
    assert len(report["notes"]["fold"]["folded"]) == 21
    assert main(["eval", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["compressed"]["accuracy"]
    # bench also compares against the baseline with its BatchNorms folded, timed alongside
    assert main(["bench", str(resnet), str(out / "model.cnz"), "--batch-size", "8",
                 "--rounds", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["baseline_batchnorms_folded"] == 21 and r["baseline_folded_images_per_s"] > 0
    assert r["speedup_vs_folded_baseline"] == pytest.approx(
        r["compressed_images_per_s"] / r["baseline_folded_images_per_s"])


def test_prune_merge_makes_the_model_shallower_and_the_container_reloads(tmp_path, resnet,
                                                                          capsys):
    out = tmp_path / "o"
    assert main(["compress", str(resnet), "--recipe", "prune-merge", "--finetune-epochs", "0",
                 "--set", "merge.target_layers=0.25", "--set", "merge.target_macs=null",
                 "--set", "merge.samples=64", "--quiet", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["channels", "merge", "prune", "fold", "share", "encode"]
    merge = report["notes"]["merge"]
    # blocks merge into nothing: no BatchNorm was in a merge's way, and pruning retrained with
    # all of them; the fold step took the rest
    assert merge["folded"] == [] and report["notes"]["fold"]["folded"]
    assert merge["layers_before"] == 22 and merge["layers_after"] <= 22 - 0.25 * 22
    assert stages["encode"]["layers"] == merge["layers_after"]
    assert all(s["bytes"] > 0 and s["speedup"] > 0 for s in report["stages"])
    assert stages["encode"]["bytes"] == report["compressed"]["container_bytes"]
    assert main(["eval", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["compressed"]["accuracy"]


def test_int8_recipe_then_bench_times_onnxruntime_and_export_agrees(tmp_path, checkpoint,
                                                                   capsys):
    out = tmp_path / "q"
    assert main(["compress", "--no-stage-bench", str(checkpoint), "--recipe", "int8", "--quiet", "--json",
                 "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["stages"]] == ["quantize", "encode"]
    assert all(s["images_per_s"] is None and s["bytes"] > 0 for s in report["stages"])
    assert report["compression_ratio"] > 4.0  # 7-bit integers, packed or entropy-coded
    assert abs(report["accuracy_drop"]) < 5.0
    # per-layer rows come from the container's records: the integers' bytes, not float16
    layers = report["layers"]
    assert {r["format"] for r in layers} <= {"int7 packed", "int7 entropy"} and len(layers) == 5
    payload = sum(r["bytes"] for r in layers)
    assert payload < report["compressed"]["container_bytes"] < payload + 4000
    assert all(7 < r["bits"] < 8.5 for r in layers if r["format"] == "int7 packed")
    md = (out / "report.md").read_text()
    assert "int7" in md and "ANS payload 0 B" not in md and "| — | — |" in md  # not timed
    assert main(["bench", str(checkpoint), str(out / "model.cnz"), "--batch-size", "8",
                 "--rounds", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    ort = r["onnxruntime"]
    assert r["compressed_simulated"] and ort["compressed_int8"]
    assert ort["baseline_fp32_images_per_s"] > 0 and ort["compressed_images_per_s"] > 0
    assert main(["eval", str(out / "model.cnz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["compressed"]["accuracy"]

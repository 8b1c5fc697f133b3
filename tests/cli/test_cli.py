import json
import subprocess
import sys

import pytest

from cnnzip.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    code, out, _ = run(capsys, "train", "--model", "lenet5", "--dataset", "synthetic",
                       "--epochs", "1", "--quiet", "--json", "--out", str(path))
    assert code == 0 and json.loads(out)["epochs"] == 1
    return path


def test_train_eval_inspect(trained, capsys):
    code, out, _ = run(capsys, "eval", str(trained), "--json")
    result = json.loads(out)
    assert code == 0 and result["samples"] == 256 and 0 <= result["accuracy"] <= 1
    assert result["dataset"] == "synthetic"  # recorded in the file
    code, out, _ = run(capsys, "inspect", str(trained), "--json")
    table = json.loads(out)
    assert table["params"] == 61_706 and table["macs"] == 416_520
    assert [layer["name"] for layer in table["layers"]][0] == "features.0"


def test_epochs_zero_writes_an_untrained_checkpoint(tmp_path, capsys):
    path = tmp_path / "u.safetensors"
    code, _, _ = run(capsys, "train", "--model", "lenet300", "--dataset",
                     "synthetic", "--epochs", "0", "--seed", "5", "--quiet", "--out", str(path))
    assert code == 0
    import torch

    from cnnzip.codec import load_checkpoint
    from cnnzip.surgery import build_model

    loaded = load_checkpoint(path)
    torch.manual_seed(5)
    fresh = build_model(loaded.spec).state_dict()  # the initialisation, untouched by training
    assert all(torch.equal(v, fresh[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.extra["epochs"] == 0 and loaded.input["split"]["seed"] == 5


def test_inspect_by_model_name(capsys):
    code, out, _ = run(capsys, "inspect", "--model", "resnet20", "--json")
    assert code == 0 and json.loads(out)["layers"][0]["type"] == "Conv2d"
    code, out, _ = run(capsys, "inspect", "--model", "lenet5")
    assert code == 0 and "416,520" in out


@pytest.mark.parametrize("argv,message", [
    (["eval", "missing.safetensors"], "missing.safetensors: file not found"),
    (["inspect", "--model", "nope"], "unknown model 'nope'"),
    (["inspect"], "give either FILE or --model"),
    (["train", "--model", "lenet5", "--dataset", "fashion-mnist", "--data-dir", "/no/such/dir",
      "--out", "x.safetensors"], "/no/such/dir is not a directory"),
])
def test_errors_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_damaged_file_is_a_clear_error(trained, capsys):
    trained.write_bytes(trained.read_bytes()[:50])
    code, _, err = run(capsys, "eval", str(trained))
    assert code == 1 and "m.safetensors" in err and "Traceback" not in err


def test_env_json(capsys):
    code, out, _ = run(capsys, "env", "--json")
    info = json.loads(out)
    assert code == 0 and info["torch"].startswith("2.13.0")
    for key in ("hls4ml", "optuna", "tensorly", "tflite-micro", "gcc", "g++",
                "arm-none-eabi-gcc", "qemu-system-arm", "dataset fashion-mnist",
                "dataset mnist", "dataset cifar10"):
        assert info[key], key  # a version, a path, or "missing"


def test_version_answers_without_importing_torch():
    done = subprocess.run([sys.executable, "-c", "import sys; from cnnzip.cli import main; "
                           "main(['--version']); print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["cnnzip", "0.1.0", "False"]


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "cnnzip", "--help"], capture_output=True,
                          text=True, check=True)
    for command in ("train", "eval", "inspect", "env"):
        assert command in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--rounds", "0"], "argument --rounds: must be a whole number ≥ 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be a whole number ≥ 1, got 0"),
    (["--batch-size", "-5"], "argument --batch-size: must be a whole number ≥ 1, got -5"),
    (["--batch-size", "x"], "argument --batch-size: must be a whole number ≥ 1, got 'x'"),
])
def test_bad_values_are_one_line_before_any_work(trained, capsys, args, message):
    with pytest.raises(SystemExit) as done:
        main(["bench", str(trained), str(trained), *args])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["train", "--model", "lenet5", "--dataset", "synthetic", "--lr", "nan", "--out", "x"],
    ["train", "--model", "lenet5", "--dataset", "synthetic", "--epochs", "-1", "--out", "x"],
    ["compress", "x", "--recipe", "int8", "--target-macs", "1.5", "--out", "x"],
    ["compress", "x", "--recipe", "int8", "--finetune-epochs", "-2", "--out", "x"],
    ["inspect", "--model", "vgg16", "--width", "0"],
])
def test_out_of_range_options_are_refused(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and "must be" in err


def test_inspect_file_refuses_model_options(trained, capsys):
    code, _, err = run(capsys, "inspect", str(trained), "--width", "7", "--dataset", "cifar10")
    assert code == 1 and "describe --model" in err

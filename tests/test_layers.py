"""The package's layers (pyproject's import-linter contracts, docs/architecture.md): a module
imports only from layers below its own, no method imports another, the CLI imports only the
API, export's rooms import one way; and ruff's rule set (pyproject) holds on the whole tree."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _lint(where: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter), "--config", str(where / "pyproject.toml"),
                           "--no-cache"], cwd=where, capture_output=True, text=True,
                          env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_its_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("where,line", [
    ("cnnzip/ops/prune.py", "from cnnzip import pipeline"),  # upwards
    ("cnnzip/methods/share.py", "from cnnzip.methods import quant"),  # a method on a method
    ("cnnzip/cli/eval.py", "from cnnzip import pipeline"),  # the CLI around the API
    ("cnnzip/export/ir/ops.py", "from cnnzip.export.c import writer"),  # IR on a backend
    ("cnnzip/export/c/writer.py", "from cnnzip.export.hls import dsp"),  # backend on backend
])
def test_a_wrong_way_import_breaks_the_contract(tmp_path, where, line):
    shutil.copytree(ROOT / "cnnzip", tmp_path / "cnnzip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / where
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

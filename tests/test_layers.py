"""The package's layers (pyproject's import-linter contracts, docs/architecture.md): a module
imports only from layers below its own, and no method imports another."""

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
])
def test_a_wrong_way_import_breaks_the_contract(tmp_path, where, line):
    shutil.copytree(ROOT / "cnnzip", tmp_path / "cnnzip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / where
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr

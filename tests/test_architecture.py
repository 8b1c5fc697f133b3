"""docs/architecture.md is written from the code: every package and module it lists in its
layer tables exists, and every one that exists is listed."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
ROOMS = ("export",)  # packages whose rooms the document lists one by one as well


def listed(document: Path) -> set[str]:
    """The names in the first column of the tables headed ``layer`` or ``room``."""
    names, table = set(), None
    for line in document.read_text().splitlines():
        if not line.startswith("|"):
            table = None
            continue
        first = line.split("|")[1].strip()
        if table is None:
            table = first
        elif table in ("layer", "room"):
            names.update(re.findall(r"`([^`]+)`", first))
    return names


def present(package: Path) -> set[str]:
    """The package's top-level packages (``name/``) and modules (``name.py``), and the rooms
    of :data:`ROOMS` (``export/c/``, ``export/onnx.py``)."""
    def entries(folder: Path, prefix: str = "") -> set[str]:
        found = set()
        for path in folder.iterdir():
            if path.suffix == ".py" and not path.name.startswith("__"):
                found.add(prefix + path.name)
            elif (path / "__init__.py").is_file():
                found.add(f"{prefix}{path.name}/")
        return found
    names = entries(package)
    for room in ROOMS:
        names |= entries(package / room, f"{room}/")
    return names


def test_the_architecture_document_lists_every_package_and_nothing_else():
    doc, code = listed(ROOT / "docs" / "architecture.md"), present(ROOT / "cnnzip")
    assert doc - code == set(), "listed in docs/architecture.md but not in cnnzip/"
    assert code - doc == set(), "in cnnzip/ but not listed in docs/architecture.md"


def test_a_package_the_document_does_not_list_is_found(tmp_path):
    (tmp_path / "newpkg").mkdir()
    (tmp_path / "newpkg" / "__init__.py").write_text("")
    (tmp_path / "export" / "tflite").mkdir(parents=True)
    (tmp_path / "export" / "tflite" / "__init__.py").write_text("")
    (tmp_path / "export" / "__init__.py").write_text("")
    (tmp_path / "train.py").write_text("")
    assert present(tmp_path) == {"newpkg/", "export/", "export/tflite/", "train.py"}
    assert {"cli/", "api/", "export/ir/", "export/onnx.py", "budget.py"} <= \
        listed(ROOT / "docs" / "architecture.md")

"""A short run of the fuzz harness (benchmarks/fuzz.py runs the long one): every mutant of every
kind of file is a clean error or a model identical to the original; only targeted edits with a
recomputed checksum may load as another model."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import fuzz  # noqa: E402

pytestmark = pytest.mark.slow


def test_short_fuzz_run_has_no_failures(tmp_path):
    files = fuzz.build_corpus(tmp_path / "corpus")
    assert sorted(files) == sorted(fuzz.KINDS)
    results = fuzz.run(files, 2400, workers=2, seed=7, progress=False)
    summary = fuzz.summarize(results)
    assert summary["cases"] == 2400
    assert summary["failures"] == 0, summary["examples"]
    assert summary["untargeted_different"] == 0, summary["examples"]
    assert summary["untargeted_changed_but_accepted"] == 0, summary["examples"]
    assert summary["net"] == 0, summary["examples"]
    # every family and kind ran, and the untargeted ones were refused almost always
    assert set(summary["by_family"]) == set(fuzz.FAMILIES)
    assert set(summary["by_kind"]) == set(fuzz.KINDS)
    for family in ("bitflip", "truncate", "dtype"):
        assert summary["by_family"][family] == {"clean": 2400 // len(fuzz.FAMILIES)}


def test_mutants_are_deterministic():
    data = (Path(__file__).parent / "data" / "golden" / "cnz-v2-int8.cnz").read_bytes()
    import random

    for family in fuzz.FAMILIES:
        a = fuzz.mutate(family, data, random.Random(3))
        assert a == fuzz.mutate(family, data, random.Random(3))
        assert a != data or family in ("header", "metadata", "table")

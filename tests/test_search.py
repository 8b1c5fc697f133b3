"""Searches on a shared Optuna study: two workers split the trials, a second run continues the
study, a journal file works as storage, a bad URL is refused."""

import json

import pytest

from cnnzip.errors import CnnzipError
from cnnzip.search import SearchConfig, run_search


@pytest.fixture(scope="module")
def lenet300(tmp_path_factory):
    from cnnzip.api import train_baseline
    from cnnzip.train import TrainConfig

    path = tmp_path_factory.mktemp("search") / "m.safetensors"
    train_baseline("lenet300", "synthetic", path, config=TrainConfig(epochs=1), quiet=True)
    return str(path)


def test_two_workers_share_one_study_and_a_second_run_continues_it(lenet300, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = SearchConfig(lenet300, "deep-compression", str(tmp_path / "out"), storage,
                          trials=4, workers=2)
    first = run_search(config)
    assert first["trials_this_run"] == 4 and len(first["trials"]) == 4
    assert {t["worker"] for t in first["trials"]} == {0, 1}  # two trials each
    assert first["knob"] == "sensitivity.target_sparsity"
    assert all(0 <= t["value"] <= 0.99 and t["bytes"] > 0 for t in first["trials"])
    assert first["pareto_front"] and (tmp_path / "out" / "search.png").stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "search.json").read_text())
    assert saved["pareto_front"] == first["pareto_front"]
    again = run_search(SearchConfig(lenet300, "deep-compression", str(tmp_path / "out"),
                                    storage, trials=6, workers=2))
    assert again["trials_this_run"] == 2 and len(again["trials"]) == 6
    # every Pareto trial is undominated: no other is both smaller and more accurate
    trials = {t["number"]: t for t in again["trials"]}
    for n in again["pareto_front"]:
        assert not any(o["bytes"] < trials[n]["bytes"]
                       and o["val_accuracy"] > trials[n]["val_accuracy"]
                       for o in trials.values())


def test_a_journal_file_holds_a_study_and_bad_storage_is_refused(lenet300, tmp_path):
    result = run_search(SearchConfig(lenet300, "int8", str(tmp_path / "out"),
                                     f"journal:{tmp_path / 'study.log'}", trials=2))
    assert result["knob"] == "quantize.weight_bits" and len(result["trials"]) == 2
    assert all(t["value"] in range(1, 9) for t in result["trials"])
    with pytest.raises(CnnzipError, match="sqlite:///FILE.db"):
        run_search(SearchConfig(lenet300, "int8", str(tmp_path / "o"), "redis://x", trials=1))

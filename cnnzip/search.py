"""Searches spread over processes and machines: trials of a recipe's knob
(:class:`cnnzip.budget.Knob`) held in an Optuna study that every worker reads and writes.

Each trial compresses the checkpoint with the knob at the value Optuna's multi-objective TPE
sampler proposes, and reports two objectives: the bytes of its ``model.cnz`` (fewer) and its
validation accuracy (higher). The study lives in a storage any worker can reach: an SQL
database (``sqlite:///study.db``, ``postgresql://…``; heartbeats mark a killed worker's
trial failed and run it again) or a journal file on shared storage (``journal:PATH``). The
same command with the same storage started on another machine joins the study; started
again after a kill, it continues it. The study takes new trials until ``trials`` have
completed or are running.
"""

from __future__ import annotations

import json
import multiprocessing
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnzip.budget import knob_of, with_knob
from cnnzip.errors import CnnzipError
from cnnzip.pipeline import compress
from cnnzip.recipes import load_recipe


@dataclass(frozen=True)
class SearchConfig:
    """One search: the checkpoint, the recipe (name or path, with ``overrides``), where
    trials write (``out``), the study's ``storage`` URL and name, how many trials in all, how
    many local worker processes, the seed, and the retraining epochs of each trial (None: the
    recipe's)."""

    model_path: str
    recipe: str
    out: str
    storage: str
    study: str = "cnnzip"
    trials: int = 8
    workers: int = 1
    seed: int = 0
    finetune_epochs: int | None = 0
    overrides: tuple[str, ...] = ()
    dataset: str | None = None
    data_dir: str | None = None


def storage_of(url: str):
    """The Optuna storage for ``url``: SQL with heartbeats, or a journal file."""
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore")
            return RDBStorage(url, heartbeat_interval=30, grace_period=120,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(
                                  max_retry=1))
    raise CnnzipError(f"storage {url!r}: give sqlite:///FILE.db, postgresql://… or "
                      "journal:FILE")


def _objective(config: SearchConfig, worker: int):
    recipe = load_recipe(config.recipe, config.overrides)
    knob = knob_of(recipe)

    def objective(trial) -> tuple[float, float]:
        if knob.integer:
            value = trial.suggest_int(knob.name, int(knob.lo), int(knob.hi))
        else:
            value = round(trial.suggest_float(knob.name, knob.lo, knob.hi), 4)
        start = time.perf_counter()
        report = compress(config.model_path, with_knob(recipe, knob, value),
                          Path(config.out) / "trials" / f"{trial.number:04d}",
                          seed=config.seed, finetune_epochs=config.finetune_epochs,
                          dataset=config.dataset, data_dir=config.data_dir, quiet=True,
                          stage_bench=False)
        c = report["compressed"]
        trial.set_user_attr("value", value)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        trial.set_user_attr("test_accuracy", c["accuracy"])
        trial.set_user_attr("compression_ratio", report["compression_ratio"])
        return float(c["container_bytes"]), float(c["val_accuracy"])

    return objective


def _worker(config: SearchConfig, index: int, share: int) -> None:
    """One worker process: trials from the shared study until ``share`` are done here or the
    study has its ``trials``."""
    import optuna
    import torch
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=config.study, storage=storage_of(config.storage),
                              sampler=optuna.samplers.TPESampler(seed=config.seed + index,
                                                                 n_startup_trials=4))
    study.optimize(_objective(config, index), n_trials=share,
                   callbacks=[MaxTrialsCallback(config.trials,
                                                states=(TrialState.COMPLETE,
                                                        TrialState.RUNNING))])


def run_search(config: SearchConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Create or join the study, run ``workers`` local processes on it, and write
    ``search.json``, ``search.png`` (the trials and the Pareto front of size against
    validation accuracy) and ``report.md`` in ``out``.

    Raises:
        CnnzipError: a recipe without a knob, a bad storage URL, fewer than one trial or
            worker.
    """
    import optuna
    import torch
    from optuna.trial import TrialState

    if config.trials < 1 or config.workers < 1:
        raise CnnzipError("a search needs at least one trial and one worker")
    knob = knob_of(load_recipe(config.recipe, config.overrides))
    study = optuna.create_study(storage=storage_of(config.storage), study_name=config.study,
                                directions=["minimize", "maximize"], load_if_exists=True)
    done = sum(t.state == TrialState.COMPLETE for t in study.trials)
    remaining = max(0, config.trials - done)
    shares = [remaining // config.workers + (i < remaining % config.workers)
              for i in range(config.workers)]
    start = time.perf_counter()
    if config.workers == 1:  # in this process, one thread as a worker has; then as it was
        threads = torch.get_num_threads()
        try:
            _worker(config, 0, shares[0])
        finally:
            torch.set_num_threads(threads)
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker, args=(config, i, n))
                     for i, n in enumerate(shares) if n]
        for p in processes:
            p.start()
        for p in processes:
            p.join()
        failed = [p.exitcode for p in processes if p.exitcode]
        if failed:
            raise CnnzipError(f"{len(failed)} search worker(s) failed (exit {failed[0]}); "
                              f"the study in {config.storage} keeps their finished trials")
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=config.study, storage=storage_of(config.storage))
    trials = [{"number": t.number, "bytes": int(t.values[0]), "val_accuracy": t.values[1],
               **t.user_attrs}
              for t in study.trials if t.state == TrialState.COMPLETE]
    front = sorted(t.number for t in study.best_trials)
    result = {"config": asdict(config), "knob": knob.name, "wall_seconds": round(seconds, 1),
              "trials_this_run": sum(shares), "trials": trials, "pareto_front": front}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(result, indent=2))
    _plot(trials, front, knob.name, out / "search.png")
    _markdown(result, out / "report.md")
    return result


def _plot(trials: list[dict], front: list[int], knob: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    on = [t for t in trials if t["number"] in front]
    ax.scatter([t["bytes"] / 1024 for t in trials], [t["val_accuracy"] for t in trials],
               c="lightgray", label="trials")
    ax.plot([t["bytes"] / 1024 for t in sorted(on, key=lambda t: t["bytes"])],
            [t["val_accuracy"] for t in sorted(on, key=lambda t: t["bytes"])], "o-",
            label="Pareto front")
    ax.set_xlabel("model.cnz (KiB)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"search over {knob}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(result: dict, path: Path) -> None:
    knob = result["knob"]
    rows = [f"| {t['number']} | {t['value']} | {t['bytes']:,} | {t['val_accuracy']:.4f} | "
            f"{t['test_accuracy']:.4f} | {t['worker']} | {t['seconds']:.1f} |"
            for t in sorted(result["trials"], key=lambda t: t["bytes"])
            if t["number"] in result["pareto_front"]]
    path.write_text("\n".join([
        f"# Search over {knob}", "",
        f"{len(result['trials'])} trials in the study, {result['trials_this_run']} run here in "
        f"{result['wall_seconds']:.1f} s. The Pareto front (size against validation accuracy):",
        "", f"| trial | {knob} | bytes | validation | test | worker | seconds |",
        "|---|---|---|---|---|---|---|", *rows, "", "![trials](search.png)", ""]))

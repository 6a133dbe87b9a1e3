"""Successive halving: a sweep ranks its points at each rung by the validation accuracy they
recorded there, trains only the best on, each stage a program of its survivors, and every point
that reaches the end is its point of the full grid, bit for bit."""

from __future__ import annotations

import csv
import json
import math
import re
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from digitsjax import api
from digitsjax.apps import sweep as sweep_module
from digitsjax.apps.sweep import SWEEP_JSON, locate_point, make_variants, read_grid
from digitsjax.apps.verify import verify_workdir
from digitsjax.core.config import load_pipeline
from digitsjax.core.halving import Halving, halving_of, survivors
from digitsjax.errors import ConfigError
from digitsjax.main import main
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network
from digitsjax.run.workdir import Workdir

from .conftest import REPO, run_cli
from .training_processes import start_training, wait_until

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
# 5,000 training images in batches of 250: 20 steps an epoch. Every checkpoint is kept, so the
# full grid's states at the rungs can be compared with the stopped points'.
SETS = ("model.hidden=[16]", "data.validation_size=55000", "train.batch_size=250",
        "train.epochs=4", "checkpoint.keep=10")
RATES, SEEDS = [0.003, 0.01, 0.03, 1e30], [0, 1]  # 1e30 diverges in its first epoch
GRID = (f"optimizer.learning_rate={RATES}", f"seed={SEEDS}")
HALVING = ("rungs=[1, 2]", "keep=0.5")  # 8 points, then 4, then 2
SPE = 20


def sweep_args(sweep_dir: Path, *grid: str) -> list[str]:
    return ["sweep", str(PIPELINE), "--workdir", str(sweep_dir),
            *(f"--set={s}" for s in SETS), *(f"--grid={g}" for g in grid)]


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_grid(tmp_path_factory, mnist_dir) -> Path:
    sweep_dir = tmp_path_factory.mktemp("grid")
    result = run_cli(*sweep_args(sweep_dir, *GRID))
    assert result.returncode == 0, result.stderr
    return sweep_dir


@pytest.fixture(scope="module")
def halved(tmp_path_factory, mnist_dir) -> tuple[Path, str]:
    sweep_dir = tmp_path_factory.mktemp("halving")
    result = run_cli(*sweep_args(sweep_dir, *GRID, *HALVING))
    assert result.returncode == 0, result.stderr
    return sweep_dir, result.stdout


# The schedule, as pure functions.

def test_the_best_points_by_validation_go_on_in_grid_order_ties_to_the_earlier():
    assert survivors([0.90, 0.95, 0.80, 0.95], 2) == [1, 3]
    assert survivors([0.90, 0.95, 0.95, 0.95], 2) == [1, 2]
    assert survivors([0.90, None, 0.80], 2) == [0, 2]  # a diverged point never goes on
    assert survivors([None, None, 0.5], 2) == [2]


def test_each_rung_keeps_its_fraction_rounded_up_and_at_least_one_point():
    halving = Halving((1, 3), keep=0.25)
    assert halving.counts(32) == [32, 8, 2]
    assert Halving((1, 2, 3), keep=0.5).counts(5) == [5, 3, 2, 1]
    assert Halving((1,), keep=0.1).kept(3) == 1
    assert halving.stops(15) == (1, 3, 15)


@pytest.mark.parametrize("settings, message", [
    (["rungs=[2, 1]"], "[sweep] rungs must list increasing epochs >= 1, got [2, 1]; "
                       "e.g. rungs = [1, 3]"),
    (["rungs=[0]"], "[sweep] rungs must list increasing epochs >= 1, got [0]"),
    (["rungs=[1]", "keep=1"], "[sweep] keep must be a fraction between 0 and 1 (both left "
                              "out), got 1; e.g. keep = 0.25"),
    (["keep=0.5"], "[sweep] keep is given without rungs; add the epochs at which to rank the "
                   "points, e.g. rungs = [1, 3]"),
    (["rungs=[15]"], "[sweep] rungs must end before train.epochs (15), got [15]; rank the "
                     "points earlier, e.g. rungs = [3]"),
])
def test_a_schedule_that_cannot_be_followed_is_refused_before_anything_trains(settings,
                                                                              message):
    base = load_pipeline(PIPELINE, for_sweep=True)
    with pytest.raises(ConfigError, match=re.escape(message)):
        grid = read_grid(PIPELINE, ["optimizer.learning_rate=[0.001, 0.01]", *settings])
        make_variants(base, grid)


def test_a_table_of_settings_alone_has_nothing_to_search():
    with pytest.raises(ConfigError, match=r"says how to search but lists no key to search"):
        read_grid(PIPELINE, ["rungs=[1]"])


def test_the_python_api_takes_the_schedule_in_its_grid():
    grid = api._grid({}, {"optimizer.learning_rate": [0.001, 0.01], "rungs": [1],
                          "keep": 0.5}, "the pipeline")
    assert halving_of(grid, 15, "the pipeline") == Halving((1,), 0.5)


# A real search, against its full grid.

def test_a_point_that_reaches_the_end_is_its_point_of_the_full_grid_bit_for_bit(
        halved, full_grid):
    grid_rows = {r["variant"]: r for r in rows(full_grid)}
    finished = [r for r in rows(halved[0]) if not r["stopped_at"]]
    assert len(finished) == 2
    for row in finished:
        assert row["epochs"] == "4"
        assert row["params_sha256"] == grid_rows[row["variant"]]["params_sha256"]
        assert row["test_accuracy"] == grid_rows[row["variant"]]["test_accuracy"]


def test_the_points_that_go_on_are_the_best_by_validation_at_each_rung(halved, full_grid):
    """Recomputed from the full grid's own records, which the stages' equal."""
    entries = json.loads((full_grid / SWEEP_JSON).read_text())["variants"]
    records = {r["epoch"]: r for r in read_metrics(full_grid / entries[0]["workdir"])}
    alive = list(range(len(entries)))
    expected_stop = {}
    for rung in (1, 2):
        accuracy = {p: records[rung]["val_model_accuracies"][p] for p in alive
                    if records[rung]["model_diverged_at"][p] < 0}
        best = sorted(accuracy, key=lambda p: (-accuracy[p], p))[:math.ceil(len(alive) / 2)]
        expected_stop |= {p: rung for p in alive if p not in best}
        alive = sorted(best)
    stopped = [int(r["stopped_at"]) if r["stopped_at"] else None for r in rows(halved[0])]
    assert stopped == [expected_stop.get(p) for p in range(len(entries))]


def test_a_stopped_point_keeps_its_state_at_its_rung_and_its_row_says_so(halved, full_grid):
    sweep_dir = halved[0]
    grid_workdir = full_grid / "program-1"
    for n, row in enumerate(rows(sweep_dir)):
        if not row["stopped_at"]:
            continue
        rung = int(row["stopped_at"])
        assert row["epochs"] == str(rung)
        workdir, model = locate_point(sweep_dir, n)
        network = load_network(workdir, model=model)
        assert network.step == rung * SPE
        if row["diverged_at"] not in ("", "-1"):
            continue
        in_grid = load_network(grid_workdir, str(rung * SPE), model=n)
        for a, b in zip(jax.tree.leaves(network.params), jax.tree.leaves(in_grid.params),
                        strict=True):
            np.testing.assert_array_equal(a, b)  # the stage's state is the grid's, exactly


def test_a_diverging_point_stops_alone_at_the_first_rung(halved):
    diverged = [r for r in rows(halved[0]) if float(r["optimizer.learning_rate"]) == 1e30]
    assert [r["stopped_at"] for r in diverged] == ["1", "1"]
    assert all(1 <= int(r["diverged_at"]) <= SPE for r in diverged)


def test_each_stage_is_a_program_of_its_survivors_only(halved):
    sweep_dir, stdout = halved
    stages = [Workdir.open(sweep_dir / name) for name in
              ("stage-1-program-1", "stage-2-program-1", "stage-3-program-1")]
    assert [w.program.num_models for w in stages] == [8, 4, 2]
    assert [w.epochs for w in stages] == [(0, 1), (1, 2), (2, 4)]
    assert [[r["epoch"] for r in read_metrics(w.path)] for w in stages] == [[1], [2], [3, 4]]
    assert "the best 4 of 8 points by validation accuracy go on" in stdout
    assert "ranked at epochs 1, 2, keeping 0.5 of the points each time: 8 -> 4 -> 2" in stdout


def test_a_points_curve_and_record_follow_it_through_its_stages(halved):
    sweep_dir = halved[0]
    entries = json.loads((sweep_dir / SWEEP_JSON).read_text())["variants"]
    finished = next(e for e in entries if e.get("stopped_at") is None)
    assert [s["epochs"] for s in finished["stages"]] == [[0, 1], [1, 2], [2, 4]]
    assert [epoch for epoch, _ in sweep_module._curve(sweep_dir, finished)] == [1, 2, 3, 4]


def test_points_of_a_stopped_rung_answer_evaluate_and_plots(halved, capsys):
    stopped = next(n for n, r in enumerate(rows(halved[0]))
                   if r["stopped_at"] == "2")
    assert main(["evaluate", str(halved[0]), "--point", str(stopped)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_running_the_search_again_trains_nothing_and_writes_the_same_summary(halved):
    sweep_dir, _ = halved
    before = (sweep_dir / "sweep.csv").read_text()
    result = run_cli(*sweep_args(sweep_dir, *GRID, *HALVING))
    assert result.returncode == 0, result.stderr
    assert "is already trained" in result.stdout and "epoch   1/4" not in result.stdout
    assert (sweep_dir / "sweep.csv").read_text() == before


def test_a_search_killed_in_its_second_stage_resumes_to_the_same_fingerprints(halved,
                                                                             tmp_path):
    sweep_dir, log = tmp_path / "sweep", tmp_path / "log"
    proc = start_training(sweep_args(sweep_dir, *GRID, *HALVING), log)
    wait_until(lambda: (sweep_dir / "stage-2-program-1").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert main(sweep_args(sweep_dir, *GRID, *HALVING)) == 0
    assert [r["params_sha256"] for r in rows(sweep_dir)] == \
        [r["params_sha256"] for r in rows(halved[0])]


def test_verify_replays_a_later_stage_from_step_0_to_its_fingerprints(halved):
    """A stage continues its points' states at the rung, yet each point is its single run: a
    replay of the stage's program from scratch must end where the stages did."""
    verification = verify_workdir(Workdir.open(halved[0] / "stage-3-program-1"), echo=print)
    assert verification.reproduced and verification.step == 4 * SPE


def test_a_search_cut_into_programs_by_the_memory_cap_stops_the_same_points_at_the_same_bits(
        halved, tmp_path):
    capped = tmp_path / "capped"
    result = run_cli(*sweep_args(capped, *GRID, *HALVING), "--max-models-per-program=3")
    assert result.returncode == 0, result.stderr
    assert [(r["params_sha256"], r["stopped_at"]) for r in rows(capped)] == \
        [(r["params_sha256"], r["stopped_at"]) for r in rows(halved[0])]


def test_the_time_left_counts_the_later_stages_points_from_the_stage_now():
    """lr_halving's 32 points: after stage 1, 8 points train epochs 2-4 and 2 points epochs
    5-15 (24 + 22 model-epochs); after stage 2, only the 2 points' 22 are left."""
    base = load_pipeline(REPO / "pipelines" / "lr_halving.toml", for_sweep=True)
    grid = read_grid(REPO / "pipelines" / "lr_halving.toml", [])
    found = sweep_module._Search(make_variants(base, grid), halving_of(grid, 15, "lr_halving"),
                                 lambda _, wanted: wanted, separate=False)
    assert [found.work_after(1, 32), found.work_after(2, 8), found.work_after(3, 2)] == \
        [8 * 3 + 2 * 11, 2 * 11, 0]

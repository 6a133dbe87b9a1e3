"""Population-based training: every few epochs the worst points take the state of a better one
and perturb its numbers, every choice drawn from the seed and the recorded validation
accuracies, so that a search replays, and resumes, to the same fingerprints."""

from __future__ import annotations

import csv
import json
import re
import signal
from pathlib import Path

import pytest

from digitsjax.apps.sweep import RESULTS_JSON, SWEEP_JSON, make_variants, read_grid
from digitsjax.core.config import load_pipeline
from digitsjax.core.population import Population, exploit
from digitsjax.errors import ConfigError
from digitsjax.main import main

from .conftest import REPO, run_cli
from .training_processes import start_training, wait_until

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
SETS = ("model.hidden=[16]", "data.validation_size=55000", "train.batch_size=250",
        "train.epochs=3")
RATE, DROPOUT = (0.001, 0.03), (0.0, 0.3)
GRID = ("samples=8", f"optimizer.learning_rate={{log_uniform={list(RATE)}}}",
        f"model.dropout={{uniform={list(DROPOUT)}}}", "exploit_every=1",
        "exploit_fraction=0.25", "perturb=[0.8, 1.25]")


def sweep_args(sweep_dir: Path) -> list[str]:
    return ["sweep", str(PIPELINE), "--workdir", str(sweep_dir),
            *(f"--set={s}" for s in SETS), *(f"--grid={g}" for g in GRID)]


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def searched(tmp_path_factory, mnist_dir) -> tuple[Path, str]:
    sweep_dir = tmp_path_factory.mktemp("pbt")
    result = run_cli(*sweep_args(sweep_dir))
    assert result.returncode == 0, result.stderr
    return sweep_dir, result.stdout


# An exploit step, as a pure function.

BOUNDS = {"optimizer.learning_rate": (1e-4, 1e-1)}


def test_the_worst_take_a_state_of_the_best_and_perturb_its_values():
    values = [{"optimizer.learning_rate": lr} for lr in (1e-3, 2e-3, 3e-3, 4e-3)]
    copies = exploit(Population(1, 0.5, (2.0,), BOUNDS), [0.9, 0.5, 0.95, 0.7], values,
                     seed=0, epoch=1)
    assert [c.member for c in copies] == [1, 3]  # the worst two, in member order
    assert all(c.parent in (0, 2) for c in copies)  # each takes one of the best two
    for c in copies:
        assert c.before == values[c.member]
        assert c.after == {"optimizer.learning_rate": 2 * values[c.parent][
            "optimizer.learning_rate"]}


def test_a_diverged_member_is_the_worst_and_values_stay_within_their_bounds():
    values = [{"optimizer.learning_rate": 0.08}] * 4
    copies = exploit(Population(1, 0.25, (1.25,), BOUNDS), [0.9, None, 0.95, 0.7], values,
                     seed=0, epoch=1)
    assert [(c.member, c.parent) for c in copies] == [(1, 2)]
    assert copies[0].after == {"optimizer.learning_rate": 0.1}  # 0.1, not 0.08 x 1.25


def test_the_draws_are_the_seeds_and_the_epochs_alone():
    values = [{"optimizer.learning_rate": 1e-3 * (i + 1)} for i in range(16)]
    accuracies = [0.9 + i / 1000 for i in range(16)]
    population = Population(1, 0.25, (0.8, 1.25), BOUNDS)

    def step(seed, epoch):
        return [c.to_json() for c in exploit(population, accuracies, values, seed, epoch)]
    assert step(0, 1) == step(0, 1)
    assert len({json.dumps(step(seed, epoch)) for seed in (0, 1) for epoch in (1, 2)}) > 1


def test_a_population_exploits_every_n_epochs_and_copies_a_fraction():
    assert Population(2).stops(7) == (2, 4, 6, 7)
    assert Population(1, 0.25).copies(16) == 4
    assert Population(1, 0.5).copies(3) == 1
    assert Population(1, 0.25).copies(1) == 0


@pytest.mark.parametrize("settings, message", [
    (["exploit_every=1", "exploit_fraction=0.75"],
     "[sweep] exploit_fraction must be a fraction above 0 and at most 0.5"),
    (["exploit_every=1", "perturb=[0.8, -1]"], "[sweep] perturb must list factors > 0"),
    (["exploit_every=15"], "[sweep] exploit_every must be less than train.epochs (15)"),
    (["perturb=[0.8, 1.25]"], "[sweep] perturb is given without exploit_every"),
    (["exploit_every=2", "rungs=[1]"], "asks for successive halving (rungs) and "
                                       "population-based training (exploit_every) at once"),
    (["exploit_every=2", "model.hidden=[[16], [32]]"],
     "population-based training copies states between points, but model.hidden changes their "
     "shapes or code"),
    (["exploit_every=2", "seed=[0, 1]"], "population-based training perturbs its points' "
                                         "numbers, but the grid gives none"),
])
def test_a_population_that_cannot_be_trained_is_refused_before_anything_trains(settings,
                                                                               message):
    base = load_pipeline(PIPELINE, for_sweep=True)
    grid = [] if any(s.startswith(("model.hidden", "seed")) for s in settings) else \
        ["optimizer.learning_rate=[0.001, 0.01]"]
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_variants(base, read_grid(PIPELINE, [*grid, *settings]))


# A real population.

def test_the_summary_records_each_copy_its_parent_and_its_values(searched):
    sweep_dir, stdout = searched
    lineage = json.loads((sweep_dir / RESULTS_JSON).read_text())["lineage"]
    assert [c["epoch"] for c in lineage] == [1, 1, 2, 2]  # 8 members, a quarter each time
    entries = json.loads((sweep_dir / SWEEP_JSON).read_text())["variants"]
    for c in lineage:
        assert c["parent"] != c["member"]
        rate = c["after"]["optimizer.learning_rate"]
        assert RATE[0] <= rate <= RATE[1] and DROPOUT[0] <= c["after"]["model.dropout"] <= \
            DROPOUT[1]
    table = rows(sweep_dir)
    for n in range(len(entries)):
        copied = [[c["epoch"], c["parent"]] for c in lineage if c["member"] == n]
        assert json.loads(table[n]["copied_from"]) == copied
    assert "sweep exploit at epoch 1:" in stdout and "takes" in stdout


def test_each_stage_trains_the_whole_population_with_its_values_then(searched):
    from digitsjax.run.workdir import Workdir

    sweep_dir = searched[0]
    lineage = json.loads((sweep_dir / RESULTS_JSON).read_text())["lineage"]
    second = Workdir.open(sweep_dir / "stage-2-program-1")
    assert second.program.num_models == 8 and second.epochs == (1, 2)
    rates = second.program.to_json()["optimizer.learning_rate"]
    for c in (c for c in lineage if c["epoch"] == 1):
        assert rates[c["member"]] == c["after"]["optimizer.learning_rate"]


def test_a_run_killed_after_an_exploit_step_resumes_to_the_same_fingerprints(searched,
                                                                             tmp_path):
    killed, log = tmp_path / "killed", tmp_path / "log"
    proc = start_training(sweep_args(killed), log)
    wait_until(lambda: (killed / "stage-2-program-1").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert main(sweep_args(killed)) == 0
    assert [r["params_sha256"] for r in rows(killed)] == \
        [r["params_sha256"] for r in rows(searched[0])]


def test_verify_replays_the_whole_search_and_names_a_point_that_ends_elsewhere(searched,
                                                                               tmp_path):
    """The replay, a second run of the search, ends where the first did; a recorded
    fingerprint changed after the fact is named."""
    import shutil

    from digitsjax.apps.verify import summary_lines, verify_folder
    from digitsjax.run.workdir import MANIFEST

    copy = tmp_path / "copy"
    shutil.copytree(searched[0], copy)
    manifest = copy / "stage-3-program-1" / MANIFEST
    recorded = json.loads(manifest.read_text())
    recorded["result"]["model_params_sha256"][5] = "0" * 64  # as if point 5 had ended elsewhere
    manifest.write_text(json.dumps(recorded))

    verification = verify_folder(copy, echo=print)
    assert [(r["params_sha256"], r["copied_from"]) for r in verification.replayed] == \
        [(r["params_sha256"], json.loads(r["copied_from"])) for r in rows(searched[0])]
    assert verification.differing == [5] and not verification.reproduced
    assert summary_lines(verification)[1].startswith(
        f"point 5 ({rows(copy)[5]['variant']}): params_sha256 recorded {'0' * 64}, replayed ")


@pytest.mark.parametrize("how", ["--max-models-per-program=3", "2 devices"])
def test_a_population_split_into_programs_or_over_devices_ends_at_the_same_fingerprints(
        searched, tmp_path, how):
    """A member's bits depend neither on the programs the memory cap cuts the population
    into (here 3, 3 and 2 members, copies crossing between them) nor on the devices."""
    from .test_parallel import devices_env

    split = tmp_path / "split"
    options, env = ([how], None) if how.startswith("--") else ([], devices_env(2))
    result = run_cli(*sweep_args(split), *options, env=env)
    assert result.returncode == 0, result.stderr
    assert [(r["params_sha256"], r["copied_from"]) for r in rows(split)] == \
        [(r["params_sha256"], r["copied_from"]) for r in rows(searched[0])]


def test_a_search_replayed_to_the_same_bits_and_decisions_is_reproduced():
    from digitsjax.apps.verify import SweepVerification, summary_lines

    recorded = [{"variant": "a", "params_sha256": "1", "stopped_at": None, "copied_from": []},
                {"variant": "b", "params_sha256": "2", "stopped_at": 1, "copied_from": []}]
    assert summary_lines(SweepVerification(recorded, [dict(r) for r in recorded])) == [
        "reproduced: all 2 points' params_sha256 (and the search's decisions), bit for bit"]
    moved = [dict(recorded[0]), dict(recorded[1], stopped_at=None)]
    assert SweepVerification(recorded, moved).differing == [1]

"""`digitsjax sweep` trains the points that share a program together, and each point is still
its own run: the same parameters and metrics as its single `digitsjax train`, its own row and
fingerprint, a diverging point stopped alone, and the whole sweep resumable exactly."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from digitsjax.apps import sweep as sweep_module
from digitsjax.apps.runs import summarize as summarize_run
from digitsjax.apps.sweep import SWEEP_JSON, make_variants, plan_programs
from digitsjax.core.config import load_pipeline
from digitsjax.core.model import params_sha256
from digitsjax.core.train import model_params
from digitsjax.main import main
from digitsjax.run import checkpoint
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network
from digitsjax.run.workdir import Workdir

from .conftest import REPO, assert_single_run_bits, run_cli, train_mnist_mlp
from .training_processes import finished_epochs, start_training, wait_until

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
SETS = ("model.hidden=[32]", "train.epochs=2", "checkpoint.every_steps=143")
RATES = (0.001, 0.004, 0.002, 1e30)  # the last diverges; on one CPU, two groups of two
pytestmark = pytest.mark.slow


def sweep_args(sweep_dir) -> list[str]:
    return ["sweep", str(PIPELINE), "--grid", f"optimizer.learning_rate={list(RATES)}",
            "--workdir", str(sweep_dir), *(f"--set={s}" for s in SETS)]


def rows(sweep_dir) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mnist_dir):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_cli(*sweep_args(sweep_dir))
    assert result.returncode == 0, result.stderr
    return sweep_dir, result.stdout


def test_points_that_differ_only_in_numbers_train_as_one_program(sweep):
    sweep_dir, output = sweep
    entries = json.loads((sweep_dir / SWEEP_JSON).read_text())["variants"]
    assert [(e["workdir"], e["model"]) for e in entries] == \
        [("program-1", 0), ("program-1", 1), ("program-1", 2), ("program-1", 3)]
    assert "sweep: 4 points in 1 program(s)" in output
    assert load_network(sweep_dir / "program-1").pipeline.train.num_models == 4
    results = json.loads((sweep_dir / "sweep-results.json").read_text())
    assert [p["variant"] for p in results["points"]] == [e["name"] for e in entries]
    charts = run_cli("plots", str(sweep_dir))
    assert charts.returncode == 0, charts.stderr
    for chart in ("sweep.png", "sweep-optimizer.learning_rate.png", "sweep-curves.png"):
        assert (sweep_dir / "plots" / chart).stat().st_size > 10_000, chart
        assert str(sweep_dir / "plots" / chart) in charts.stdout


def test_each_point_is_its_single_run(sweep, tmp_path, mnist_dir):
    """Bit for bit on XLA:CPU, its fingerprint and every metric (float32 rounding elsewhere)."""
    sweep_dir, _ = sweep
    program = load_network(sweep_dir / "program-1")
    points = json.loads((sweep_dir / "sweep-results.json").read_text())["points"]
    for k in (0, 2):  # a point of each concurrent group (on one CPU)
        single_dir = train_mnist_mlp(tmp_path / str(k),
                                     [*SETS, f"optimizer.learning_rate={RATES[k]}"], mnist_dir)
        single, final = load_network(single_dir), read_metrics(single_dir)[-1]
        assert points[k]["diverged_at"] == -1
        assert_single_run_bits(model_params(program.params, k), single.params)
        if jax.default_backend() != "cpu":
            assert points[k]["test_accuracy"] == pytest.approx(final["test_accuracy"], abs=2e-4)
            continue
        assert points[k]["params_sha256"] == params_sha256(single.params)
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_loss", "test_accuracy"):
            assert points[k][key] == final[key], key
    assert len({p["params_sha256"] for p in points}) == 4


def test_a_program_is_summarised_from_one_reading_of_its_files(sweep, monkeypatch):
    """A grid of K points in one program would otherwise parse its metrics K times."""
    sweep_dir, _ = sweep
    reads = []
    monkeypatch.setattr(sweep_module, "read_metrics",
                        lambda workdir: reads.append(workdir) or read_metrics(workdir))
    _, points = sweep_module.summarize(sweep_dir)
    assert len(points) == 4 and reads == [sweep_dir / "program-1"]


def test_a_diverging_point_is_stopped_and_reported_and_the_others_train_on(sweep):
    sweep_dir, output = sweep
    diverged = rows(sweep_dir)[3]
    assert int(diverged["diverged_at"]) >= 1
    assert f"diverged at step {diverged['diverged_at']}" in \
        (sweep_dir / "sweep.md").read_text().splitlines()[5]
    assert "best point by validation accuracy: learning_rate=0.00" in output
    for leaf in jax.tree.leaves(load_network(sweep_dir / "program-1").params):
        assert np.all(np.isfinite(np.asarray(leaf)))  # never a NaN in a checkpoint


def test_a_programs_best_checkpoint_is_its_points_best_epoch_on_average(sweep):
    sweep_dir, output = sweep
    workdir = sweep_dir / "program-1"
    manager = checkpoint.open_manager(workdir, read_only=True)
    try:
        kept = [r for r in read_metrics(workdir) if r["step"] in manager.all_steps()]
        assert kept
        for record in kept:
            ranked_by = manager.metrics(record["step"])[checkpoint.BEST_METRIC]
            assert ranked_by == pytest.approx(np.mean(record["val_model_accuracies"]))
            assert ranked_by != pytest.approx(record["val_accuracy"])  # not the ensemble's
    finally:
        manager.close()
    assert "best by validation: epoch" not in output  # the program's, which names no point


def test_runs_shows_a_programs_best_model_not_its_ensemble(sweep):
    sweep_dir, _ = sweep
    records = read_metrics(sweep_dir / "program-1")
    best = max((r["val_model_accuracies"][k], k, r["epoch"]) for r in records for k in (0, 1, 2))
    summary = summarize_run(Workdir.open(sweep_dir / "program-1"))
    assert (summary.best_val_accuracy, summary.best_model, summary.best_epoch) == best
    assert summary.test_accuracy == records[-1]["test_model_accuracies"][best[1]]


def test_plots_of_a_point_draw_that_network_and_its_own_curves(sweep):
    sweep_dir, _ = sweep
    result = run_cli("plots", str(sweep_dir), "--point", "1")
    assert result.returncode == 0, result.stderr
    written = sorted(Path(line) for line in result.stdout.splitlines())
    assert [p.name for p in written] == ["confusion.png", "curves.png", "mistakes.png",
                                         "predictions.png", "samples.png"]
    assert {p.parent for p in written} == {sweep_dir / "plots" / "point-1"}
    assert not (sweep_dir / "program-1" / "plots").exists()


def test_plots_of_a_programs_own_folder_is_a_one_line_error_naming_the_sweep(sweep):
    """A program's models are grid points trained with different numbers: their ensemble,
    what a program's folder would plot, is nobody's network."""
    sweep_dir, _ = sweep
    result = run_cli("plots", str(sweep_dir / "program-1"))
    assert result.returncode == 2
    assert f"digitsjax plots {sweep_dir} --point N" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (sweep_dir / "program-1" / "plots").exists()


def test_a_stopped_sweep_resumes_to_the_uninterrupted_fingerprints(sweep, tmp_path):
    reference, _ = sweep
    sweep_dir, log = tmp_path / "sweep", tmp_path / "log"
    proc = start_training(sweep_args(sweep_dir), log)
    wait_until(lambda: finished_epochs(sweep_dir / "program-1") == 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()

    assert main(sweep_args(sweep_dir)) == 0
    assert [r["params_sha256"] for r in rows(sweep_dir)] == \
        [r["params_sha256"] for r in rows(reference)]


def test_points_of_different_shapes_split_into_programs_memory_permitting():
    base = load_pipeline(PIPELINE, ["train.epochs=1"])
    variants = make_variants(base, {"model.hidden": [[16], [32]],
                                    "optimizer.learning_rate": [0.001, 0.003, 0.01]})
    programs = plan_programs(variants, lambda _, wanted: wanted)
    assert [(p.workdir, [v.name for v in p.variants]) for p in programs] == [
        ("program-1", ["hidden=16,learning_rate=0.001", "hidden=16,learning_rate=0.003",
                       "hidden=16,learning_rate=0.01"]),
        ("program-2", ["hidden=32,learning_rate=0.001", "hidden=32,learning_rate=0.003",
                       "hidden=32,learning_rate=0.01"])]
    capped = plan_programs(variants, lambda _, wanted: min(2, wanted))
    assert [len(p.variants) for p in capped] == [2, 1, 2, 1]
    assert capped[1].workdir == "hidden=16,learning_rate=0.01"  # alone: a plain run
    separate = plan_programs(variants, lambda _, wanted: wanted, separate=True)
    assert [p.workdir for p in separate] == [v.name for v in variants]


def test_evaluate_predict_and_export_address_one_point(sweep, tmp_path):
    sweep_dir, _ = sweep
    point = rows(sweep_dir)[1]
    result = run_cli("evaluate", str(sweep_dir), "--point", "1", "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["params_sha256"] == point["params_sha256"]
    assert evaluated["test_accuracy"] == pytest.approx(float(point["test_accuracy"]), abs=1e-6)

    exported = run_cli("export", str(sweep_dir), "--point", "1", "--format", "npz")
    assert exported.returncode == 0, exported.stderr
    assert (sweep_dir / "program-1" / "export" / "point-1.npz").is_file()
    assert point["params_sha256"] in exported.stdout

    missing = run_cli("evaluate", str(sweep_dir), "--point", "4")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"digitsjax: error: {sweep_dir} has 4 points, so there is no point 4; choose one "
        "from 0 to 3 (the rows of its sweep.csv)"]
    not_a_sweep = run_cli("evaluate", str(sweep_dir / "program-1"), "--point", "0")
    assert not_a_sweep.returncode == 2 and "is not a sweep folder" in not_a_sweep.stderr


def test_verify_replays_a_sweep_program_to_the_same_fingerprints(sweep):
    sweep_dir, _ = sweep
    result = run_cli("verify", str(sweep_dir / "program-1"), "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout.splitlines()[-1])["reproduced"] is True


def test_the_models_per_program_are_as_many_as_memory_holds(monkeypatch):
    from digitsjax.core import sharding
    from digitsjax.core.footprint import footprint, peak_bytes
    from digitsjax.run import resources

    pipeline = load_pipeline(PIPELINE, ["model.hidden=[1024, 1024]"])
    mesh = sharding.data_mesh()

    def need(k: int) -> int:
        many = load_pipeline(PIPELINE, ["model.hidden=[1024, 1024]", f"train.num_models={k}"])
        return peak_bytes(footprint(many, mesh.size, sweep=True)) * mesh.size

    monkeypatch.setattr(resources, "cgroup_room", lambda: None)  # the host's memory alone
    monkeypatch.setattr(resources, "host_available_bytes", lambda: need(37) + 1)
    assert resources.max_models_that_fit(pipeline, mesh, 1000) == 37
    assert resources.max_models_that_fit(pipeline, mesh, 20) == 20  # all fit
    monkeypatch.setattr(resources, "host_available_bytes", lambda: 1)
    assert resources.max_models_that_fit(pipeline, mesh, 1000) == 1  # check_memory refuses it

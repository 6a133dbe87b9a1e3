"""Training on genuine MNIST: accurate, reproducible to the bit, and leaves a complete workdir."""

import json
import time
from pathlib import Path

import jax
import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.core.train import chunk_plan
from digitsjax.run import checkpoint
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network

from .conftest import REPO, TINY, genuine_checksums, run_cli

PIPELINES = REPO / "pipelines"
RECORD_FIELDS = {"epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                 "test_loss", "test_accuracy", "epoch_seconds", "examples_per_second",
                 "wall_seconds"}


def test_two_epochs_of_the_default_pipeline_beat_95_percent(trained_workdir):
    records = read_metrics(trained_workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["test_accuracy"] > 0.95
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert all(set(r) >= RECORD_FIELDS for r in records)


def test_nielsen_network_reaches_90_percent_after_one_epoch_as_in_the_book(tmp_path, mnist_dir):
    pipeline = load_pipeline(PIPELINES / "nielsen.toml", ["train.epochs=1"])
    record = train_pipeline(pipeline, tmp_path, mnist_dir=str(mnist_dir), echo=lambda _: None)
    assert record["test_accuracy"] > 0.90


def test_the_same_pipeline_twice_gives_the_same_fingerprint(trained_workdir, tmp_path, mnist_dir):
    pipeline = load_pipeline(PIPELINES / "mnist_mlp.toml", ["train.epochs=2"])
    again = train_pipeline(pipeline, tmp_path, mnist_dir=str(mnist_dir), echo=lambda _: None)
    first = load_network(trained_workdir)
    from digitsjax.core.model import params_sha256
    assert again["params_sha256"] == params_sha256(first.params)
    other_seed = train_pipeline(load_pipeline(PIPELINES / "mnist_mlp.toml",
                                              ["train.epochs=1", "seed=1"]),
                                tmp_path / "seed1", mnist_dir=str(mnist_dir), echo=lambda _: None)
    assert other_seed["params_sha256"] != again["params_sha256"]


def test_an_epochs_seconds_are_its_steps_not_the_saves_around_them(tmp_path, mnist_dir,
                                                                     monkeypatch):
    """Saves cost what the disk costs; `epoch_seconds` (and examples/s) measure the training."""
    pause = 0.75
    saved = []

    def slow_save(*args, **kwargs):
        time.sleep(pause)
        saved.append(int(args[1].step))
        return save(*args, **kwargs)

    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", slow_save)
    pipeline = load_pipeline(PIPELINES / "mnist_mlp.toml",
                             [*TINY, "train.epochs=2", "checkpoint.every_steps=5"])
    train_pipeline(pipeline, tmp_path, mnist_dir=str(mnist_dir), echo=lambda _: None)
    first, second = read_metrics(tmp_path)
    assert saved == [5, 10, 15, 20]
    # Between the two records: the save at the end of epoch 1 and the one in the middle of
    # epoch 2, neither of them epoch 2's time.
    assert second["wall_seconds"] - first["wall_seconds"] - second["epoch_seconds"] >= 2 * pause


def test_workdir_holds_manifest_metrics_and_checkpoints(trained_workdir, mnist_dir):
    manifest = json.loads((trained_workdir / "manifest.json").read_text())
    assert manifest["pipeline"]["model"]["hidden"] == [128, 64]
    assert len(manifest["pipeline_sha256"]) == 64
    assert {"python", "jax", "jaxlib", "optax", "orbax-checkpoint", "tensorflow-datasets"} <= \
        set(manifest["versions"])
    assert manifest["platform"]["backend"] == jax.default_backend()
    assert manifest["platform"]["device_count"] == jax.device_count()
    assert "--xla_gpu_deterministic_ops=true" in manifest["platform"]["xla_flags"]
    assert manifest["pipeline"]["train"]["matmul_precision"] == "float32"
    assert manifest["dataset"]["files_sha256"] == genuine_checksums(mnist_dir)
    assert sorted(int(p.name) for p in (trained_workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [429, 858]


def test_evaluate_reports_the_checkpoint_fingerprint(trained_workdir):
    out = run_cli("evaluate", str(trained_workdir), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    final = read_metrics(trained_workdir)[-1]
    assert result["step"] == 858
    assert result["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert len(result["params_sha256"]) == 64
    assert (result["backend"], result["device_count"]) == (jax.default_backend(),
                                                           jax.device_count())
    assert (result["matmul_precision"], result["deterministic"]) == ("float32", True)


def test_cli_turns_a_bad_pipeline_into_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optimizer]\nlearning_rat = 0.1\n")
    out = run_cli("train", str(bad), "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"digitsjax: error: {bad}: unknown key 'optimizer.learning_rat' "
        "(did you mean 'optimizer.learning_rate'?)"]


@pytest.mark.parametrize("every, start, expected", [
    (0, 0, [(0, 10), (10, 10), (20, 10)]),
    (4, 0, [(0, 4), (4, 4), (8, 2), (10, 2), (12, 4), (16, 4), (20, 4), (24, 4), (28, 2)]),
    (0, 13, [(13, 7), (20, 10)]),
])
def test_chunks_end_at_epochs_and_checkpoints(every, start, expected):
    # 100 training images, batch 10: 10 steps per epoch, 3 epochs.
    pipeline = load_pipeline(Path(PIPELINES / "mnist_mlp.toml"), [
        "data.validation_size=59900", "train.batch_size=10", "train.epochs=3",
        f"checkpoint.every_steps={every}"])
    assert list(chunk_plan(pipeline, start)) == expected

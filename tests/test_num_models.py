"""`train.num_models = K`: K seeds in one run, with per-model and ensemble results, exact resume
and fingerprints. (That each model trains what its single run trains is in
test_perf_equivalence.py.)"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from digitsjax.apps.evaluate import evaluate_trained
from digitsjax.core.config import load_pipeline
from digitsjax.core.model import batched_forward, probabilities
from digitsjax.core.train import model_params
from digitsjax.errors import CheckpointError, ConfigError
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network
from digitsjax.run.workdir import MANIFEST

from .conftest import REPO, run_cli

NUM_MODELS = 4  # on one CPU device: two concurrent groups of two (model_groups)
TIMING = ("epoch_seconds", "examples_per_second", "wall_seconds")


def small_k_pipeline():
    """mnist_mlp on 10,000 training images for 2 epochs: the shape of a real run, quickly."""
    return load_pipeline(REPO / "pipelines" / "mnist_mlp.toml",
                         ["train.epochs=2", "data.validation_size=50000",
                          f"train.num_models={NUM_MODELS}"])


def train(workdir, pipeline=None):
    return train_pipeline(pipeline or small_k_pipeline(), workdir, echo=lambda _: None)


@pytest.fixture(scope="module")
def k_run(tmp_path_factory, mnist_dir):
    workdir = tmp_path_factory.mktemp("k_models")
    return workdir, train(workdir)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_num_models_must_be_positive():
    with pytest.raises(ConfigError, match=r"'train.num_models' must be >= 1, got 0"):
        load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", ["train.num_models=0"])


def test_metrics_report_each_model_the_ensemble_and_the_spread(k_run, mnist):
    workdir, final = k_run
    network = load_network(workdir)
    pipeline = network.pipeline
    outputs = [batched_forward(model_params(network.params, k), mnist.test_images,
                               pipeline.model) for k in range(NUM_MODELS)]
    each = [float(np.mean(np.argmax(o, -1) == mnist.test_labels)) for o in outputs]
    averaged = np.mean([probabilities(o, pipeline.model) for o in outputs], axis=0)

    assert final["test_model_accuracies"] == pytest.approx(each, abs=1e-6)
    assert final["test_accuracy"] == pytest.approx(
        np.mean(np.argmax(averaged, -1) == mnist.test_labels), abs=1e-6)
    assert final["test_model_accuracy_sd"] == pytest.approx(np.std(each, ddof=1), abs=1e-6)
    assert len(set(final["model_params_sha256"])) == NUM_MODELS  # really different seeds
    assert [r["epoch"] for r in read_metrics(workdir)] == [1, 2]
    evaluated = evaluate_trained(network, mnist)  # what `digitsjax evaluate --json` prints
    for key in ("test_accuracy", "test_model_accuracies", "model_params_sha256"):
        assert evaluated[key] == final[key]


@pytest.mark.slow
def test_a_k_model_run_is_reproducible_and_resumes_exactly(k_run, tmp_path):
    workdir, final = k_run
    again = train(tmp_path / "again")
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(workdir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / str(final["step"]))  # as if killed in epoch 2
    resumed = train(resumed_dir)

    for other in (again, resumed):
        assert other["params_sha256"] == final["params_sha256"]
        assert other["model_params_sha256"] == final["model_params_sha256"]
    assert without_timing(read_metrics(resumed_dir)) == without_timing(read_metrics(workdir))


def test_evaluate_prints_the_ensemble_and_every_model(k_run):
    workdir, final = k_run
    result = run_cli("evaluate", str(workdir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"test_accuracy {100 * final['test_accuracy']:.2f}% (ensemble; models" in lines[0]
    for k, line in enumerate(lines[1:1 + NUM_MODELS]):
        assert line.strip().startswith(f"model {k} (seed {k})")
        assert final["model_params_sha256"][k] in line
    assert lines[1 + NUM_MODELS].startswith("accuracy per digit:")  # of the ensemble


def test_a_single_model_run_keeps_its_plain_results(trained_workdir):
    network = load_network(trained_workdir)
    record = read_metrics(trained_workdir)[-1]
    assert not any("model" in key for key in record)
    assert isinstance(record["test_accuracy"], float)
    assert jax.tree.leaves(network.params)[0].ndim == 1  # no model axis


def test_resuming_with_another_num_models_is_refused(k_run, tmp_path):
    workdir, _ = k_run
    copy = shutil.copytree(workdir, tmp_path / "copy")
    single = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml",
                           ["train.epochs=2", "data.validation_size=50000"])
    with pytest.raises(CheckpointError, match=rf"train.num_models: {NUM_MODELS} -> 1"):
        train(copy, single)


def test_a_workdir_from_before_num_models_existed_still_resumes(trained_workdir, tmp_path):
    copy = shutil.copytree(trained_workdir, tmp_path / "old")
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["pipeline"]["train"]["num_models"]  # as written before the key existed
    (copy / MANIFEST).write_text(json.dumps(manifest))
    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", ["train.epochs=2"])
    assert train(copy, pipeline)["step"] == pipeline.total_steps  # resumed, nothing left to do

"""A NaN or infinite loss stops training at once, names the step and the likely cause, keeps
the last good checkpoint, and never checkpoints a diverged state."""

import dataclasses

import jax
import numpy as np
import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.core.train import epoch_permutation
from digitsjax.errors import COMMAND_LINE, DivergenceError
from digitsjax.run import loop as run
from digitsjax.run.records import read_metrics

from .conftest import REPO, run_cli
from .training_processes import saved_steps

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
SMALL = ["model.hidden=[32]", "train.epochs=3"]


def test_a_poisoned_batch_stops_at_its_step_and_keeps_the_epoch_before(tmp_path, monkeypatch,
                                                                      mnist, mnist_dir):
    pipeline = load_pipeline(PIPELINE, SMALL)
    spe, batch = pipeline.steps_per_epoch, pipeline.train.batch_size
    # Poison an image that epoch 1 leaves out (55,000 is not a multiple of 128) and that epoch
    # 2 uses: its step is the first to see a NaN. Data order as the trainer derives it.
    key, n = jax.random.PRNGKey(pipeline.seed), mnist.train_images.shape[0]
    skipped_in_epoch_1 = set(np.asarray(epoch_permutation(key, 0, n))[spe * batch:].tolist())
    epoch_2 = np.asarray(epoch_permutation(key, 1, n))[:spe * batch]
    position = next(i for i, image in enumerate(epoch_2) if image in skipped_in_epoch_1)
    poisoned_index, bad_step = int(epoch_2[position]), spe + position // batch + 1
    images = mnist.train_images.copy()
    images[poisoned_index, 300] = np.nan
    monkeypatch.setattr(run, "load_mnist",
                        lambda *_: dataclasses.replace(mnist, train_images=images))

    with pytest.raises(DivergenceError) as error:
        run.train_pipeline(pipeline, tmp_path, mnist_dir=str(mnist_dir), echo=lambda _: None)
    message = error.value.render(COMMAND_LINE)
    assert f"at step {bad_step} (epoch 2)" in message
    assert "--set optimizer.learning_rate=0.0001" in message
    assert "pipeline key optimizer.learning_rate = 0.0001" in str(error.value)
    assert f"the last good checkpoint, step {spe}, is kept" in message
    assert saved_steps(tmp_path) == [spe]  # the diverged state was never saved
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]


def test_a_learning_rate_far_too_high_is_one_line_and_exit_2(tmp_path):
    out = run_cli("train", str(PIPELINE), "--workdir", str(tmp_path), "--set", SMALL[0],
                  "--set", "optimizer.name=sgd", "--set", "optimizer.learning_rate=1e9")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("digitsjax: error: training diverged: the loss became NaN or "
                               "infinite at step ")
    assert "learning rate too high for sgd (1e+09)" in lines[0]
    assert "no checkpoint had been written" in lines[0]
    assert saved_steps(tmp_path) == []

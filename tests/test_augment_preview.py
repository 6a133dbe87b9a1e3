"""`digitsjax augment-preview PIPELINE` draws training's first batch before and after [augment],
without training, so that the strengths can be tuned by eye; `digitsjax plots` draws the same
grid for an augmented run. The grid shows exactly what training's step 0 sees."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from digitsjax.apps.plots import augmentation_sample, write_plots
from digitsjax.core import augment
from digitsjax.core.config import load_pipeline
from digitsjax.core.program import init_state, make_train_chunk, program_of
from digitsjax.core.train import DATA_STREAM
from digitsjax.main import main
from digitsjax.run.mnist import load_mnist
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network

from .conftest import REPO, TINY, train_mnist_mlp

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
ON = ("augment.rotation=15", "augment.elastic_alpha=34")
SETS = [arg for setting in ON for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def tiny(mnist_dir):
    """A TINY pipeline with [augment] on (1,000 training images, batches of 100) and its data."""
    pipeline = load_pipeline(PIPELINE, [*TINY, *ON, "seed=3"])
    return pipeline, load_mnist(pipeline.data, mnist_dir)


def pixels(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size, np.asarray(image.convert("L"), np.float32)


def test_the_preview_draws_three_pairs_of_rows_and_writes_nothing_else(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["augment-preview", str(PIPELINE), *SETS]) == 0
    out = tmp_path / "mnist_mlp-augment.png"
    assert capsys.readouterr().out.splitlines() == [str(out.name)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no workdir, no checkpoint
    size, grey = pixels(out)
    assert size == (950, 710)  # as the other digit grids: 10 columns, 6 rows
    assert grey.std() > 20


def test_with_augment_off_the_preview_repeats_the_digits_and_says_how_to_turn_it_on(
        tmp_path, capsys):
    out = tmp_path / "off.png"
    assert main(["augment-preview", str(PIPELINE), "--out", str(out), "--count", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(out)]
    assert "[augment] is off" in captured.err
    assert "--set augment.elastic_alpha=" in captured.err
    assert pixels(out)[0] == (950, 490)  # 16 digits: two pairs of rows, the last one short


def test_before_and_after_are_equal_with_augment_off_and_differ_with_it_on(tiny):
    pipeline, data = tiny
    off = load_pipeline(PIPELINE, [*TINY, "seed=3"])
    before, after = augmentation_sample(off, data.train_images, 20)
    assert before.shape == after.shape == (20, 784)
    np.testing.assert_array_equal(before, after)

    distorted_before, distorted = augmentation_sample(pipeline, data.train_images, 20)
    np.testing.assert_array_equal(distorted_before, before)  # the same digits
    assert all(not np.allclose(a, b, atol=0.1) for a, b in zip(before, distorted, strict=True))


def test_the_sample_is_step_0s_batch_drawn_with_step_0s_keys(tiny):
    """Computed independently, from the rules train.py documents: epoch 0's order is
    `permutation(fold_in(fold_in(PRNGKey(seed), DATA), 0))`, step 0's distortions
    `distort_step(batch, PRNGKey(seed), 0)` over the whole batch."""
    pipeline, data = tiny
    key = jax.random.PRNGKey(pipeline.seed)
    order = jax.random.permutation(
        jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), 0), pipeline.train_size)
    batch = jnp.asarray(data.train_images)[order[:pipeline.train.batch_size]]
    expected = jax.jit(augment.distort_step, static_argnums=3)(batch, key, 0, pipeline.augment)

    before, after = augmentation_sample(pipeline, data.train_images, 30)
    np.testing.assert_array_equal(before, np.asarray(batch[:30]))
    np.testing.assert_array_equal(after, np.asarray(expected[:30]))
    # more than a batch asked: one batch shown
    assert len(augmentation_sample(pipeline, data.train_images, 500)[0]) == 100


def test_the_sample_is_what_the_training_step_itself_distorts(tiny, monkeypatch):
    """Watched inside the compiled training step: the images its step 0 trains on."""
    pipeline, data = tiny
    seen = {}
    distort_step = augment.distort_step

    def watched(images, root_key, step, config):
        out = distort_step(images, root_key, step, config)
        jax.debug.callback(lambda s, o: seen.setdefault(int(s), np.asarray(o)), step, out)
        return out

    monkeypatch.setattr(augment, "distort_step", watched)
    chunk = make_train_chunk(program_of(pipeline))
    chunk(init_state(program_of(pipeline)), jnp.asarray(data.train_images),
          jnp.asarray(data.train_labels), num_steps=1)
    monkeypatch.undo()

    _, after = augmentation_sample(pipeline, data.train_images, 100)
    np.testing.assert_allclose(after, seen[0], atol=1e-6)


def test_plots_of_an_augmented_run_include_the_augmentation_grid(tmp_path, mnist_dir):
    workdir = train_mnist_mlp(tmp_path / "run", [*TINY, "train.epochs=1", "augment.rotation=10"],
                              mnist_dir)
    network = load_network(workdir)
    paths = write_plots(workdir / "plots", network, load_mnist(network.pipeline.data, mnist_dir),
                        read_metrics(workdir), network.pipeline.name)
    grid = workdir / "plots" / "augmentation.png"
    assert grid in paths
    assert pixels(grid)[0] == (950, 710)


@pytest.mark.parametrize(("args", "problem"), [
    (["no-such-pipeline.toml"], "pipeline file no-such-pipeline.toml not found"),
    ([str(PIPELINE), "--set", "augment.rotation=500"], "'augment.rotation' must be between"),
    ([str(PIPELINE), "--set", "augment.wobble=1"], "augment.wobble"),
    ([str(PIPELINE), "--out", "{existing}"], "already exists"),
    ([str(PIPELINE), "--out", "{tmp}/preview.jpg"], "does not end in .png"),
    ([str(PIPELINE), "--out", "{tmp}/no-folder/preview.png"], "there is no folder"),
    ([str(PIPELINE), "--count", "0"], "'0' is not a positive int"),
    ([str(PIPELINE), "--count", "1000"], "at most 200"),
], ids=["missing-pipeline", "bad-value", "unknown-key", "existing-out", "not-png",
        "no-folder", "count-zero", "count-too-large"])
def test_a_mistake_is_one_line_and_status_2(args, problem, tmp_path, capsys):
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"someone's picture")
    args = [arg.format(existing=existing, tmp=tmp_path) for arg in args]
    assert exit_status(["augment-preview", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitsjax: error: "), captured.err
    assert problem in lines[0]
    assert existing.read_bytes() == b"someone's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.png"]


def exit_status(argv: list[str]) -> int:
    """`main`'s status; argparse's own errors exit from inside it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code

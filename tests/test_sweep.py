"""`digitsjax sweep`: a pipeline trained once per point of a grid, and the summary of them."""

from __future__ import annotations

import csv
import re

import pytest
from PIL import Image

from digitsjax.apps.sweep import make_variants, parse_grid_option, read_grid, write_summary
from digitsjax.core.config import load_pipeline
from digitsjax.errors import ConfigError
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network

from .conftest import REPO, run_cli

HIDDEN_SIZES = REPO / "pipelines" / "hidden_sizes.toml"
MNIST_MLP = REPO / "pipelines" / "mnist_mlp.toml"


def test_hidden_sizes_reproduces_nielsens_comparison_of_hidden_layers():
    grid = read_grid(HIDDEN_SIZES, [])
    assert grid == {"model.hidden": [[15], [30], [100], [128, 64]]}
    base = load_pipeline(HIDDEN_SIZES, for_sweep=True)  # the base: the file less [sweep]
    assert (base.model.activation, base.optimizer.name, base.train.loss) == (
        "sigmoid", "sgd", "quadratic")
    variants = make_variants(base, grid)
    assert [v.name for v in variants] == ["hidden=15", "hidden=30", "hidden=100",
                                          "hidden=128-64"]
    assert [v.pipeline.model.hidden for v in variants] == [(15,), (30,), (100,), (128, 64)]
    assert all(v.pipeline.train == base.train for v in variants)


def test_grid_options_add_to_the_table_and_combine_as_a_product():
    grid = read_grid(HIDDEN_SIZES, ["optimizer.learning_rate=[0.5, 3.0]"])
    assert list(grid) == ["model.hidden", "optimizer.learning_rate"]
    grid = read_grid(MNIST_MLP, ["model.hidden=[[20], [40]]",
                                 "optimizer.learning_rate=[0.5, 3.0]"])
    variants = make_variants(load_pipeline(MNIST_MLP), grid)
    assert [v.name for v in variants] == [
        "hidden=20,learning_rate=0.5", "hidden=20,learning_rate=3.0",
        "hidden=40,learning_rate=0.5", "hidden=40,learning_rate=3.0"]
    assert variants[1].pipeline.optimizer.learning_rate == 3.0


@pytest.mark.parametrize("option", [
    "model.hidden", "model.hidden=[]", "model.hidden=30", "=[[10]]",
])
def test_a_malformed_grid_option_says_how_to_write_it(option):
    with pytest.raises(ConfigError, match=re.escape("must look like section.key=[value, ...]")):
        parse_grid_option(option)


def test_a_misspelt_grid_key_fails_before_anything_trains():
    base = load_pipeline(HIDDEN_SIZES, for_sweep=True)
    with pytest.raises(ConfigError, match=r"did you mean 'model\.hidden'"):
        make_variants(base, {"model.hiden": [[10], [20]]})
    with pytest.raises(ConfigError, match=r"'model\.hidden\[0\]' must be between 1 and"):
        make_variants(base, {"model.hidden": [[10], [0]]})


def test_a_pipeline_without_a_grid_asks_for_one():
    with pytest.raises(ConfigError, match=r"no \[sweep\] table; pass the grid"):
        read_grid(REPO / "pipelines" / "mnist_mlp.toml", [])


@pytest.mark.parametrize("pipeline, options, message", [
    (MNIST_MLP, ["seed=[0, 1]", "seed=[2]"],
     "--grid 'seed' is given twice; list all its values in one --grid, e.g. --grid "
     "seed=[0,1,2]"),
    (HIDDEN_SIZES, ["model.hidden=[[20], [40]]"],
     f"--grid 'model.hidden' is also in the [sweep] table of {HIDDEN_SIZES}; give its values "
     "in one place: edit the table, or remove the key from it and list them all in one --grid"),
])
def test_a_grid_key_given_twice_is_refused_naming_it(pipeline, options, message):
    with pytest.raises(ConfigError) as error:
        read_grid(pipeline, options)
    assert str(error.value) == message


@pytest.mark.slow
def test_sweep_trains_each_variant_into_its_own_workdir_and_summarises(tmp_path):
    result = run_cli("sweep", str(MNIST_MLP), "--grid", "model.hidden=[[10],[40]]",
                     "--set", "train.epochs=1", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["hidden=10", "hidden=40"]
    assert [r["model.hidden"] for r in rows] == ["[10]", "[40]"]
    assert [int(r["parameters"]) for r in rows] == [784 * 10 + 10 + 10 * 10 + 10,
                                                    784 * 40 + 40 + 40 * 10 + 10]
    for row in rows:
        workdir = tmp_path / row["variant"]
        assert load_network(workdir).pipeline.model.hidden == (int(row["variant"][7:]),)
        final = read_metrics(workdir)[-1]
        assert float(row["test_accuracy"]) == final["test_accuracy"]
        assert float(row["val_accuracy"]) == final["val_accuracy"]
        assert int(row["epochs"]) == 1
    markdown = (tmp_path / "sweep.md").read_text()
    assert markdown in result.stdout
    assert markdown.splitlines()[0].startswith("| model.hidden | parameters |")
    assert f"{100 * float(rows[1]['test_accuracy']):.2f}%" in markdown.splitlines()[3]
    assert not (tmp_path / "plots").exists()  # charts on demand: `digitsjax plots SWEEPDIR`
    assert write_summary(tmp_path, plots=True)[-2:] == [tmp_path / "plots" / "sweep.png",
                                                         tmp_path / "plots" / "sweep-curves.png"]
    with Image.open(tmp_path / "plots" / "sweep.png") as chart:
        assert chart.format == "PNG" and chart.size[0] >= 600

    # The summary is a function of the variants' workdirs: rewriting it changes nothing.
    before = (tmp_path / "sweep.csv").read_text()
    write_summary(tmp_path)
    assert (tmp_path / "sweep.csv").read_text() == before

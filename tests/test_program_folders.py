"""A sweep's program folder (`SWEEPDIR/program-1`) holds K grid points trained together with
different numbers: its K-model ensemble is nobody's network. Every command that uses a network
refuses it in one line, as `plots` does, and so does the Python API; one point of it is fine."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from digitsjax import api
from digitsjax.errors import UserError
from digitsjax.main import main

from .conftest import REPO, TINY

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, mnist_dir):
    """Two TINY points of one epoch that differ only in their learning rate: one program."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    assert main(["sweep", str(PIPELINE), "--grid", "optimizer.learning_rate=[0.001,0.01]",
                 "--workdir", str(sweep_dir), *(f"--set={o}" for o in TINY),
                 "--set=train.epochs=1"]) == 0
    assert json.loads((sweep_dir / "sweep.json").read_text())["variants"][1]["model"] == 1
    return sweep_dir


@pytest.fixture
def picture(tmp_path):
    page = np.full((60, 40), 255, np.uint8)
    page[10:50, 18:22] = 0  # a one
    Image.fromarray(page).save(tmp_path / "one.png")
    return tmp_path / "one.png"


USES = {
    "evaluate": lambda program, picture: ["evaluate", str(program)],
    "predict": lambda program, picture: ["predict", str(program), str(picture)],
    "export": lambda program, picture: ["export", str(program), "--format", "npz"],
}


@pytest.mark.parametrize("command", USES)
def test_a_command_given_a_program_folder_refuses_it_in_one_line_writing_nothing(
        command, sweep_dir, picture, capsys):
    program = sweep_dir / "program-1"
    before = sorted(program.rglob("*"))
    assert main(USES[command](program, picture)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"digitsjax: error: {program} is a program of a sweep: its 2 models are grid points "
        "trained with different numbers, and their ensemble is nobody's network; choose one "
        f"of its points: the sweep's folder {sweep_dir} with --point N (row N of its sweep.csv)"]
    assert sorted(program.rglob("*")) == before


def test_one_point_of_the_program_is_its_own_network(sweep_dir, capsys):
    assert main(["evaluate", str(sweep_dir), "--point", "1", "--json"]) == 0
    with open(sweep_dir / "sweep.csv") as f:
        point = list(csv.DictReader(f))[1]
    assert json.loads(capsys.readouterr().out)["params_sha256"] == point["params_sha256"]


def test_the_python_api_refuses_a_program_folder_and_loads_a_point(sweep_dir):
    with pytest.raises(UserError) as refused:
        api.load(sweep_dir / "program-1")
    assert str(refused.value).endswith(
        f"the sweep's folder {sweep_dir} with point=N (row N of its sweep.csv)")
    network = api.load(sweep_dir, point=1)
    assert network.pipeline.optimizer.learning_rate == 0.01
    assert network.pipeline.train.num_models == 1

"""A K-model program on several devices: its models split over them, each device training its own
models on its own copy of the batch, with no collective in a step, and every model at its
one-device bits; a checkpoint that does not depend on the devices that wrote it.

JAX reads XLA_FLAGS once, at start-up, so the several-device side of each comparison runs in a
subprocess with simulated CPU devices, and this test process, with its one device, is the
reference. Both compute with XLA:CPU's threads pinned, as every deterministic run does
(run/backend.py): how a matmul rounds depends on the threads, and so, unpinned, on how many
simulated devices share the cores.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.core.footprint import STATE, STEP, footprint
from digitsjax.core.placement import Placement, local_orders, placement_for
from digitsjax.run.backend import CPU_THREADS, CPU_THREADS_ENV

from .conftest import REPO, TINY, run_cli
from .test_parallel import devices_env

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
NIELSEN = REPO / "pipelines" / "nielsen.toml"  # small sigmoid layers: where rounding shows

# A model-split program and the same program without a mesh, in one process with 2 devices: the
# collectives each compiled chunk holds, and each model's parameters after a few steps.
SPLIT_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from digitsjax.core import sharding
from digitsjax.core.config import load_pipeline
from digitsjax.core.model import params_sha256
from digitsjax.core.placement import placement_for
from digitsjax.core.program import init_state, make_train_chunk, sweep_program
from digitsjax.core.train import model_params

COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
path, overrides, rates = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
points = [load_pipeline(path, [*overrides, f"optimizer.learning_rate={r}", f"seed={k % 2}"])
          for k, r in enumerate(rates)]
program = sweep_program(points, "split")
rng = np.random.default_rng(0)
images = rng.random((1000, 784), dtype=np.float32)
labels = rng.integers(0, 10, 1000).astype(np.int32)

def run(chunk, state, data):
    compiled = chunk.lower(state, *data, num_steps=5).compile()
    found = sorted(c for c in COLLECTIVES if c in compiled.as_text())
    end, _ = compiled(state, *data)
    return found, end

placement = placement_for(len(points), jax.device_count())
mesh = sharding.program_mesh(placement)
placed = (sharding.place_models(init_state(program), mesh, placement) if placement.split
          else sharding.replicate(init_state(program), mesh))
split, end = run(make_train_chunk(program, mesh, placement=placement), placed,
                 sharding.replicate((images, labels), mesh))
params = sharding.host_models(end, placement).params
plain, reference = run(make_train_chunk(program), init_state(program),
                       (jnp.asarray(images), jnp.asarray(labels)))
replicated = None
if sys.argv[4] == "with-replicated":  # the same models on a data mesh, for comparison
    data_mesh = sharding.data_mesh()
    replicated, _ = run(make_train_chunk(program, data_mesh),
                        sharding.replicate(init_state(program), data_mesh),
                        sharding.replicate((images, labels), data_mesh))
print(json.dumps({
    "placement": placement.line(), "split": split, "plain": plain, "replicated": replicated,
    "split_models": [params_sha256(model_params(params, k)) for k in range(len(points))],
    "plain_models": [params_sha256(model_params(jax.device_get(reference.params), k))
                     for k in range(len(points))]}))
"""


EIGHT_RATES = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3]


def split_program(rates: list[float], devices: int = 2, pipeline: Path = PIPELINE,
                  replicated: bool = False) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SPLIT_PROGRAM, str(pipeline), json.dumps([*TINY, "train.epochs=1"]),
         json.dumps(rates), "with-replicated" if replicated else "-"],
        env=devices_env(devices), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def even() -> dict:
    return split_program(EIGHT_RATES, devices=4, replicated=True)


def test_models_split_over_the_devices_train_with_no_collective(even):
    assert even["placement"] == "8 models over 4 devices, 2 each"
    assert even["split"] == []
    assert "all-reduce" in even["replicated"]  # what the same models on a data mesh do


def test_each_model_split_over_devices_keeps_its_one_device_bits(even):
    one_device = split_program(EIGHT_RATES, devices=1)
    assert one_device["placement"] == "8 models on 1 device"
    assert even["split_models"] == even["plain_models"] == one_device["plain_models"]
    assert len(set(even["split_models"])) == 8


PINNED = "from digitsjax.run import backend; backend.request_determinism({}); " \
    "print(backend.cpu_threads())"


@pytest.mark.parametrize(("deterministic", "nproc", "threads"), [
    (True, None, str(CPU_THREADS)), (True, "3", "3"), (False, None, "None")])
def test_a_deterministic_run_pins_xla_cpus_threads_unless_the_user_did(
        deterministic, nproc, threads):
    env = {key: value for key, value in devices_env(1).items() if key != CPU_THREADS_ENV}
    result = subprocess.run([sys.executable, "-c", PINNED.format(deterministic)], text=True,
                            env=env | ({CPU_THREADS_ENV: nproc} if nproc else {}),
                            capture_output=True, timeout=60)
    assert result.stdout.strip() == threads, result.stderr


def test_an_uneven_split_fills_the_devices_with_idle_copies_and_keeps_every_models_bits():
    uneven = split_program([1e-3, 2e-3, 3e-3])
    assert uneven["placement"] == \
        "3 models over 2 devices, 2 each (1 idle copy of the last fill the devices up)"
    assert uneven["split"] == []
    assert uneven["split_models"] == uneven["plain_models"]


def test_a_device_with_one_model_trains_it_unbatched_as_its_single_run_does():
    """XLA:CPU computes a batch of one model's products otherwise than one product."""
    one_each = split_program([0.5, 1.0], devices=2, pipeline=NIELSEN)
    assert one_each["placement"] == "2 models over 2 devices, 1 each"
    assert one_each["split_models"] == one_each["plain_models"]


def test_fewer_models_than_devices_split_each_models_batch_over_its_group():
    grouped = split_program([0.5, 1.0, 2.0], devices=4, pipeline=NIELSEN)
    assert grouped["placement"].startswith("3 models over 4 devices: 2 groups of 2, 2 model(s) "
                                           "each, each batch split over its group's 2")
    assert grouped["split"] == ["all-reduce"]  # of each model's gradients, within its group
    assert len(set(grouped["split_models"])) == 3


@pytest.mark.parametrize(("models", "devices", "shards"), [
    (32, 4, (4, 1)), (30, 4, (4, 1)), (1024, 8, (8, 1)),  # enough models: split over all
    (2, 8, (2, 4)), (3, 8, (2, 4)), (6, 8, (4, 2)),  # fewer: data parallelism for the rest
    (1, 8, (1, 8)), (5, 1, (1, 1))])  # one model: a data mesh as before; one device: as before
def test_models_split_over_devices_when_there_are_enough_data_parallel_for_the_rest(
        models, devices, shards):
    placement = placement_for(models, devices)
    assert (placement.model_shards, placement.data_shards) == shards
    assert placement.padded % placement.model_shards == 0
    assert placement.models <= placement.padded < placement.models + placement.model_shards


def test_the_placement_line_says_how_many_models_each_device_trains():
    assert placement_for(32, 4).line() == "32 models over 4 devices, 8 each"
    assert placement_for(1, 8).line() == "1 model over 8 devices, each batch split over all 8"
    assert placement_for(4, 1).line() == "4 models on 1 device"
    assert Placement(30, 4, 1).to_json() == {"models": 30, "model_shards": 4, "data_shards": 1,
                                             "models_per_device": 8, "idle_models": 2}


def test_a_devices_models_share_their_data_orders_where_every_device_has_the_same_pattern():
    seeds = [0, 1, 2, 3] * 8  # lr_sweep: 8 rates x 4 seeds, seeds innermost
    assert local_orders(seeds, placement_for(32, 4)) == (0, 1, 2, 3, 0, 1, 2, 3)
    assert local_orders([0, 0, 0, 1, 1, 1], placement_for(6, 2)) == (0, 0, 0)
    # devices whose seeds repeat differently: each model draws its own order (the same order)
    assert local_orders([0, 0, 1, 2], placement_for(4, 2)) == (0, 1)


def test_the_memory_estimate_is_per_device_so_a_grid_split_over_8_fits_what_one_cannot():
    many = load_pipeline(PIPELINE, ["train.num_models=1024"])
    eighth = load_pipeline(PIPELINE, ["train.num_models=128"])
    over_eight, on_one = footprint(many, devices=8, sweep=True), footprint(eighth, sweep=True)
    assert over_eight[STATE] == on_one[STATE]
    assert over_eight[STEP] == on_one[STEP]
    assert footprint(many, sweep=True)[STATE] == 8 * on_one[STATE]


# A sweep checkpointed on one device count resumes on another: 3 points split over 2 devices
# with an idle copy (restored whole, then placed), 4 points split evenly (restored split).
THREE, FOUR = "optimizer.learning_rate=[0.001,0.002,0.003]", \
    "optimizer.learning_rate=[0.001,0.002,0.003,0.004]"
SETS = [*TINY, "optimizer.schedule=constant", "checkpoint.every_epoch=true"]  # extendable


def sweep(sweep_dir, grid: str, epochs: int, devices: int):
    args = ["sweep", str(PIPELINE), "--grid", grid, "--workdir", str(sweep_dir),
            *(f"--set={s}" for s in [*SETS, f"train.epochs={epochs}"])]
    result = run_cli(*args, env=devices_env(devices))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def fingerprints(sweep_dir) -> list[str]:
    with open(sweep_dir / "sweep.csv") as f:
        return [row["params_sha256"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_dir):
    """Each grid's sweep, 2 epochs straight on one device."""
    folders = {}
    for grid in (THREE, FOUR):
        folders[grid] = tmp_path_factory.mktemp("one-device")
        sweep(folders[grid], grid, 2, devices=1)
    return folders


def test_a_sweep_saved_on_two_devices_resumes_on_one_to_the_same_fingerprints(
        uninterrupted, tmp_path):
    output = sweep(tmp_path, THREE, 1, devices=2)
    assert "3 models over 2 devices, 2 each (1 idle copy" in output
    manifest = json.loads((tmp_path / "program-1" / "manifest.json").read_text())
    assert manifest["placement"]["model_shards"] == 2
    sweep(tmp_path, THREE, 2, devices=1)
    assert fingerprints(tmp_path) == fingerprints(uninterrupted[THREE])


def test_a_sweep_saved_on_one_device_resumes_on_two_and_a_point_evaluates_anywhere(
        uninterrupted, tmp_path):
    sweep(tmp_path, FOUR, 1, devices=1)
    assert "4 models over 2 devices, 2 each" in sweep(tmp_path, FOUR, 2, devices=2)
    assert fingerprints(tmp_path) == fingerprints(uninterrupted[FOUR])
    trained = uninterrupted[FOUR]
    on_two = run_cli("evaluate", str(trained), "--point", "2", "--json", env=devices_env(2))
    on_one = run_cli("evaluate", str(trained), "--point", "2", "--json")
    assert on_two.returncode == on_one.returncode == 0, on_two.stderr + on_one.stderr
    assert json.loads(on_two.stdout)["params_sha256"] == fingerprints(trained)[2]
    assert json.loads(on_two.stdout)["test_accuracy"] == json.loads(on_one.stdout)["test_accuracy"]

"""Scale-out: one run on 1 device, on 8 simulated devices, and on 2 processes of 4 devices each.

JAX reads XLA_FLAGS once, at start-up, so every multi-device run is a subprocess; this test
process (one CPU device) resumes their checkpoints. A short pipeline (784-32-10 with dropout,
2 epochs of 78 steps) keeps each run to seconds.

Tolerance: parameters agree within 1e-5 (absolute) and test accuracy within 0.1 percentage
point (10 of the 10,000 images). The measured differences are about 1e-7: data order, dropout
masks, schedule and maths are the single device run's; only sums split over devices round
differently.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from digitsjax.core import sharding
from digitsjax.core.config import load_pipeline
from digitsjax.errors import ClusterError, ConfigError
from digitsjax.run import cluster
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network
from digitsjax.run.workdir import Workdir

from .conftest import REPO, run_cli

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
OVERRIDES = ["model.hidden=[32]", "model.dropout=0.1", "data.validation_size=50000",
             "train.epochs=2"]
SET_OVERRIDES = [arg for override in OVERRIDES for arg in ("--set", override)]
STEPS_PER_EPOCH, TOTAL_STEPS = 78, 156  # 10,000 training images in batches of 128
PARAMS_ATOL = 1e-5
ACCURACY_ATOL = 1e-3

# Runs in a process with 8 CPU devices: the compiled per-device cost of a step on 8 devices
# and on 1, two identical runs, a resume of a 1-device checkpoint, and a batch of 100.
EIGHT_DEVICES = """
import json, sys
from pathlib import Path
import jax, numpy as np
from jax.sharding import Mesh
from digitsjax.core import sharding
from digitsjax.run import cluster
from digitsjax.core.config import load_pipeline
from digitsjax.errors import ConfigError
from digitsjax.run.loop import train_pipeline
from digitsjax.core.program import init_state, make_train_chunk, program_of

path, overrides, workdirs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
pipeline = load_pipeline(path, overrides)
log = lambda line: print(line, file=sys.stderr)

def step_flops(mesh):
    state = sharding.replicate(init_state(program_of(pipeline)), mesh)
    data = sharding.replicate((np.zeros((1024, 784), np.float32), np.zeros(1024, np.int32)), mesh)
    chunk = make_train_chunk(program_of(pipeline), mesh).lower(state, *data, num_steps=1).compile()
    return chunk.cost_analysis()["flops"]

report = {"devices": jax.device_count(), "resume_log": [],
          "flops_ratio": step_flops(sharding.data_mesh())
                         / step_flops(Mesh(jax.devices()[:1], (sharding.DATA_AXIS,)))}
first, second, resumed, refused = workdirs
report["fingerprints"] = [train_pipeline(pipeline, w, echo=log)["params_sha256"]
                          for w in (first, second)]
train_pipeline(pipeline, resumed, echo=report["resume_log"].append)
try:
    train_pipeline(load_pipeline(path, [*overrides, "train.batch_size=100"]), refused)
except ConfigError as e:
    report["batch_error"], report["refused_workdir_created"] = str(e), Path(refused).exists()
print(json.dumps(report))
"""


def devices_env(count: int) -> dict[str, str]:
    """`count` simulated CPU devices, also on a host with a GPU or TPU (which JAX would pick)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rewind(workdir: Path, copy: Path, step: int) -> Path:
    """A copy of `workdir` as if its run had stopped after `step`: later checkpoints gone."""
    shutil.copytree(workdir, copy)
    for path in (copy / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > step:
            shutil.rmtree(path)
    return copy


def assert_same_training(workdir: Path, reference: Path) -> None:
    """Finished, with the reference's parameters and test accuracy up to float rounding."""
    network, expected = load_network(workdir), load_network(reference)
    assert network.step == expected.step == TOTAL_STEPS
    for got, want in zip(jax.tree.leaves(network.params),
                         jax.tree.leaves(expected.params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=PARAMS_ATOL)
    records, reference_records = read_metrics(workdir), read_metrics(reference)
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH, TOTAL_STEPS]
    assert abs(records[-1]["test_accuracy"] - reference_records[-1]["test_accuracy"]) \
        <= ACCURACY_ATOL


def resume_here(workdir: Path) -> list[str]:
    """Finish a rewound workdir in this test process, on its single device."""
    assert jax.device_count() == 1, "the test process must see one device (unset XLA_FLAGS)"
    lines: list[str] = []
    train_pipeline(load_pipeline(PIPELINE, OVERRIDES), workdir, echo=lines.append)
    return lines


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, mnist_dir) -> Path:
    """The reference: `digitsjax train` on one device, as `make train` runs it on a laptop."""
    workdir = tmp_path_factory.mktemp("one_device")
    result = run_cli("train", str(PIPELINE), *SET_OVERRIDES, "--workdir", str(workdir),
                     env=devices_env(1))
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, one_device) -> dict:
    root = tmp_path_factory.mktemp("eight_devices")
    workdirs = [root / "first", root / "second",
                rewind(one_device, root / "resumed", STEPS_PER_EPOCH), root / "refused"]
    result = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, str(PIPELINE), json.dumps(OVERRIDES),
         *map(str, workdirs)], capture_output=True, text=True, env=devices_env(8), cwd=REPO,
        timeout=600)
    assert result.returncode == 0, result.stderr
    first, second, resumed, _ = workdirs
    return json.loads(result.stdout) | {"first": first, "second": second, "resumed": resumed}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, one_device) -> dict:
    """Two real processes on 127.0.0.1 with 4 CPU devices each, joined by JAX's runtime.

    Process 0 gets the flags, process 1 the equivalent DIGITSJAX_* environment variables.
    """
    workdir = tmp_path_factory.mktemp("two_processes")
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "digitsjax", "train", str(PIPELINE), *SET_OVERRIDES,
               "--workdir", str(workdir)]
    launches = [
        ([*command, "--coordinator-address", address, "--num-processes", "2",
          "--process-id", "0"], devices_env(4)),
        (command, devices_env(4) | {cluster.ADDRESS_ENV: address,
                                    cluster.NUM_PROCESSES_ENV: "2",
                                    cluster.PROCESS_ID_ENV: "1"}),
    ]
    processes = [subprocess.Popen(args, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for args, env in launches]
    outputs = []
    try:  # a failed process fails the test at once; the finally stops its waiting partner
        for p in processes:
            outputs.append(p.communicate(timeout=300))
            assert p.returncode == 0, outputs[-1][1]
    finally:
        for p in processes:
            p.kill()
    return {"workdir": workdir, "stdout": [stdout for stdout, _ in outputs]}


@pytest.mark.slow
def test_eight_devices_each_compute_an_eighth_of_a_step(eight_devices):
    assert eight_devices["devices"] == 8
    # Replicated work would cost 1.0; the batch's share is 1/8, the replicated Adam update rest.
    assert eight_devices["flops_ratio"] < 0.25


@pytest.mark.slow
def test_eight_devices_train_like_one(eight_devices, one_device):
    assert Workdir.open(eight_devices["first"]).manifest["platform"]["device_count"] == 8
    assert_same_training(eight_devices["first"], one_device)


@pytest.mark.slow
def test_fingerprint_is_identical_run_to_run_at_a_fixed_device_count(eight_devices):
    first, second = eight_devices["fingerprints"]
    assert first == second


@pytest.mark.slow
def test_batch_size_must_split_evenly_over_the_devices(eight_devices):
    assert "'train.batch_size' 100 does not split evenly over the 8 devices" in \
        eight_devices["batch_error"]
    assert "pipeline key train.batch_size = 104" in eight_devices["batch_error"]
    assert not eight_devices["refused_workdir_created"]  # refused before touching anything


def test_check_batch_size_accepts_multiples_of_the_device_count():
    sharding.check_batch_size(128, 8)
    sharding.check_batch_size(7, 1)
    with pytest.raises(ConfigError, match="multiple of 3"):
        sharding.check_batch_size(128, 3)


@pytest.mark.slow
def test_two_processes_train_together_like_one_device(two_processes, one_device):
    workdir = two_processes["workdir"]
    platform = Workdir.open(workdir).manifest["platform"]
    assert (platform["process_count"], platform["device_count"]) == (2, 8)
    assert_same_training(workdir, one_device)  # also: one metrics record per epoch, not two
    first, second = two_processes["stdout"]
    assert "epoch   2/2" in first and "done: step 156" in first
    assert "epoch" not in second and "done" not in second  # process 0 speaks for the run


@pytest.mark.slow
def test_checkpoint_from_eight_devices_resumes_on_one(eight_devices, one_device, tmp_path):
    workdir = rewind(eight_devices["first"], tmp_path / "run", STEPS_PER_EPOCH)
    computes_on, resuming, *_ = resume_here(workdir)
    assert computes_on.startswith(f"{jax.default_backend()} backend, 1 device (")
    assert f"from step {STEPS_PER_EPOCH}" in resuming
    assert_same_training(workdir, one_device)


@pytest.mark.slow
def test_checkpoint_from_two_processes_resumes_on_one(two_processes, one_device, tmp_path):
    workdir = rewind(two_processes["workdir"], tmp_path / "run", STEPS_PER_EPOCH)
    computes_on, resuming, *_ = resume_here(workdir)
    assert computes_on.startswith(f"{jax.default_backend()} backend, 1 device (")
    assert f"from step {STEPS_PER_EPOCH}" in resuming
    assert_same_training(workdir, one_device)


@pytest.mark.slow
def test_checkpoint_from_one_device_resumes_on_eight(eight_devices, one_device):
    computes_on, resuming, *_ = eight_devices["resume_log"]
    assert computes_on.startswith("cpu backend, 8 devices (cpu): 1 model over 8 devices, each "
                                  "batch split over all 8, matmul_precision float32")
    assert f"from step {STEPS_PER_EPOCH}" in resuming
    assert_same_training(eight_devices["resumed"], one_device)


def test_cluster_flags_win_over_environment_variables():
    environ = {cluster.ADDRESS_ENV: "10.0.0.1:1234", cluster.NUM_PROCESSES_ENV: "4",
               cluster.PROCESS_ID_ENV: "3"}
    assert cluster.resolve_cluster(environ=environ) == cluster.Cluster("10.0.0.1:1234", 4, 3)
    assert cluster.resolve_cluster("10.0.0.2:99", None, 1, environ=environ) == \
        cluster.Cluster("10.0.0.2:99", 4, 1)


def test_no_cluster_settings_leave_detection_to_jax_and_one_process_skips_it():
    assert cluster.resolve_cluster(environ={}) == cluster.Cluster()
    assert cluster.resolve_cluster(num_processes=1, environ={}).num_processes == 1


@pytest.mark.parametrize(("flags", "environ", "message"), [
    (("127.0.0.1:1234", 2, None), {}, "--process-id missing"),
    ((None, 2, 0), {}, "--coordinator-address missing"),
    (("127.0.0.1", 2, 0), {}, "must be HOST:PORT"),
    (("127.0.0.1:70000", 2, 0), {}, "must be HOST:PORT"),
    (("127.0.0.1:1234", 2, 2), {}, "--process-id must be in 0..1"),
    (("127.0.0.1:1234", 0, 0), {}, "--num-processes must be >= 1"),
    ((None, None, None), {cluster.NUM_PROCESSES_ENV: "two"}, "must be an integer"),
])
def test_incomplete_or_wrong_cluster_settings_are_refused(flags, environ, message):
    with pytest.raises(ClusterError, match=message):
        cluster.resolve_cluster(*flags, environ=environ)


def test_cli_explains_a_half_given_cluster_in_one_line():
    result = run_cli("train", str(PIPELINE), "--num-processes", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("digitsjax: error: --coordinator-address and --process-id "
                                    "missing")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_workdir_process_0_refuses_stops_both_processes_with_its_one_line(tmp_path):
    """Process 0 alone prepares the workdir: its refusal is the other process's error too, at
    once, instead of a wait for a process that has stopped (and its wait for the other)."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's")
    address = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen(
        [sys.executable, "-m", "digitsjax", "train", str(PIPELINE), *SET_OVERRIDES,
         "--workdir", str(a_file), "--coordinator-address", address, "--num-processes", "2",
         "--process-id", str(i)], env=devices_env(2), cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=120) for p in processes]
    finally:
        for p in processes:
            p.kill()
    last_lines = [err.strip().splitlines()[-1] for _, err in outputs]
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert last_lines[0] == last_lines[1] == (
        f"digitsjax: error: workdir {a_file} is a file, not a folder; choose another with "
        "--workdir")
    assert a_file.read_text() == "the user's"

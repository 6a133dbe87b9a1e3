"""Numerics are part of the pipeline: the precision of every multiply, and GPU determinism.

`train.matmul_precision` and `train.deterministic` are pipeline keys like any other: validated,
recorded, and a resume with another value is another pipeline. What XLA is asked to compute is
read from the programs' own text, which is the same on every backend, so these tests hold on a
host without a GPU and say what a GPU will be asked for.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.core.model import MATMUL_PRECISIONS, make_classify
from digitsjax.core.program import init_state, make_train_chunk, program_of
from digitsjax.core.train import make_evaluate
from digitsjax.errors import COMMAND_LINE, LIBRARY, CheckpointError, ConfigError, UserError
from digitsjax.main import main
from digitsjax.run import backend
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import read_metrics

from .conftest import REPO, SMALL_RUN, TINY, train_tiny_epoch

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"

def tiny(*overrides: str):
    return load_pipeline(PIPELINE, [*TINY, *overrides])


def programs(precision: str) -> dict[str, str]:
    """The StableHLO text of the training chunk, evaluation and prediction programs."""
    pipeline = tiny(f"train.matmul_precision={precision}")
    program = program_of(pipeline)
    state = init_state(program)
    images, labels = jnp.zeros((256, 784)), jnp.zeros((256,), jnp.int32)
    return {
        "training": make_train_chunk(program).lower(state, images, labels, num_steps=1),
        "evaluation": make_evaluate(pipeline).lower(state.params, images, labels),
        "prediction": make_classify(pipeline).lower(state.params, images),
    }


@pytest.mark.parametrize(("precision", "asked", "operands"), [
    ("float32", "HIGHEST", "f32"),        # never the backend's default (TF32 on NVIDIA GPUs)
    ("tensorfloat32", "HIGH", "f32"),     # what XLA:GPU runs as TF32, XLA:TPU as 3 bf16 passes
    ("bfloat16", "DEFAULT", "bf16"),
])
def test_every_multiply_forward_and_backward_runs_at_the_pipelines_precision(
        precision, asked, operands):
    for program, lowered in programs(precision).items():
        multiplies = [line for line in lowered.as_text().splitlines()
                      if "stablehlo.dot_general" in line]
        assert multiplies, program
        for line in multiplies:
            assert f"precision = [{asked}, {asked}]" in line, (program, line)
            types = set(re.findall(r"tensor<[\dx]+x(\w+)>", line.rsplit(" : ", 1)[1]))
            assert types == {operands}, (program, line)


def test_training_multiplies_include_the_gradients():
    """Two layers: two multiplies forward, three in the gradient (no input gradient)."""
    lowered = programs("bfloat16")["training"].as_text()
    assert lowered.count("stablehlo.dot_general") == 5


def train_at(precision: str):
    return train_tiny_epoch(f"train.matmul_precision={precision}")


def test_bfloat16_multiplies_but_keeps_float32_parameters_and_optimizer_state():
    reduced, full = train_at("bfloat16"), train_at("float32")
    floats = [leaf for leaf in jax.tree.leaves((reduced.params, reduced.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}
    for got, want in zip(jax.tree.leaves(reduced.params), jax.tree.leaves(full.params),
                         strict=True):
        assert not np.array_equal(got, want)            # it did compute in bfloat16 ...
        np.testing.assert_allclose(got, want, atol=0.02)  # ... and learnt the same thing


def test_tensorfloat32_on_a_cpu_is_float32_bit_for_bit():
    """A CPU has no TF32: docs/accelerators.md says so, and this holds it."""
    if jax.default_backend() != "cpu":
        pytest.skip("only a CPU lacks TF32; a GPU is meant to differ")
    for got, want in zip(jax.tree.leaves(train_at("tensorfloat32").params),
                         jax.tree.leaves(train_at("float32").params), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_bfloat16_trains_mnist_mlp_to_within_a_third_of_a_point_of_float32(tmp_path, mnist_dir):
    accuracy = {}
    for precision in ("float32", "bfloat16"):
        pipeline = load_pipeline(PIPELINE, [f"train.matmul_precision={precision}"])
        record = train_pipeline(pipeline, tmp_path / precision, mnist_dir=str(mnist_dir),
                                echo=lambda _: None)
        accuracy[precision] = record["test_accuracy"]
    assert accuracy["float32"] > 0.978
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.003, accuracy


def test_the_defaults_are_float32_and_deterministic():
    train = load_pipeline(PIPELINE).train
    assert (train.matmul_precision, train.deterministic) == ("float32", True)
    assert tuple(MATMUL_PRECISIONS) == ("float32", "tensorfloat32", "bfloat16")


@pytest.mark.parametrize(("override", "message"), [
    ("train.matmul_precision=fp16", "'train.matmul_precision' is 'fp16' (did you mean "
     "'bfloat16'?); choose one of float32, tensorfloat32, bfloat16"),
    ("train.deterministic=1", "'train.deterministic' must be true or false, got int 1"),
    ('train.deterministic="yes"', "'train.deterministic' must be true or false, got str 'yes'"),
])
def test_a_bad_numerics_value_is_one_line_naming_the_key_and_the_choices(override, message,
                                                                          capsys):
    with pytest.raises(ConfigError) as error:
        load_pipeline(PIPELINE, [override])
    assert str(error.value) == f"{PIPELINE}: {message}"
    assert main(["train", str(PIPELINE), "--set", override]) == 2
    assert capsys.readouterr().err.splitlines() == [f"digitsjax: error: {PIPELINE}: {message}"]


@pytest.mark.parametrize("override", ["train.matmul_precision=bfloat16",
                                      "train.deterministic=false"])
def test_resuming_with_other_numerics_is_another_pipeline_and_changes_nothing(
        small_run, tmp_path, override):
    workdir = shutil.copytree(small_run, tmp_path / "run")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError) as error:
        train_pipeline(load_pipeline(PIPELINE, [*SMALL_RUN, override]), workdir,
                       echo=lambda _: None)
    assert f"different pipeline ({override.split('=')[0]}: " in error.value.problem
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_train_says_first_where_and_how_it_computes_and_evaluate_repeats_it(tmp_path, capsys):
    workdir = tmp_path / "run"
    overrides = [*TINY, "train.epochs=1", "train.matmul_precision=bfloat16"]
    assert main(["train", str(PIPELINE), "--workdir", str(workdir),
                 *(f"--set={override}" for override in overrides)]) == 0
    count = jax.device_count()
    expected = (f"{jax.default_backend()} backend, {count} device{'s' if count > 1 else ''} "
                f"({jax.devices()[0].device_kind}), matmul_precision bfloat16, deterministic")
    assert capsys.readouterr().out.splitlines()[0] == expected
    assert main(["evaluate", str(workdir)]) == 0
    assert f"computed on: {expected}" in capsys.readouterr().out.splitlines()
    assert read_metrics(workdir)[-1]["epoch"] == 1


USERS_FLAGS = "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=false"
FRESH_PROCESS = f"""
import json, os
from digitsjax.run import backend
os.environ["XLA_FLAGS"] = "{USERS_FLAGS}"
backend.request_determinism(False)
left_alone = os.environ["XLA_FLAGS"]
started_before = backend.backend_started()
backend.request_determinism(True)
import jax
devices = jax.device_count()
print(json.dumps({{"left_alone": left_alone, "requested": os.environ["XLA_FLAGS"],
                  "started_before": started_before, "started_after": backend.backend_started(),
                  "devices": devices}}))
"""


def test_determinism_is_put_in_xla_flags_before_the_backend_starts_keeping_the_users_flags():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300, check=True)
    report = json.loads(out.stdout)
    assert report["left_alone"] == USERS_FLAGS
    assert report["requested"] == ("--xla_force_host_platform_device_count=2 "
                                   "--xla_gpu_deterministic_ops=true")
    assert not report["started_before"] and report["started_after"]
    assert report["devices"] == 2  # the flags were read when the backend started


def test_a_gpu_backend_started_without_determinism_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(backend, "backend_started", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(UserError) as error:
        backend.request_determinism(True)
    assert "started its GPU backend before digitsjax could make it deterministic" in \
        error.value.problem
    assert "train.deterministic = false" in error.value.render(LIBRARY)
    assert "--set train.deterministic=false" in error.value.render(COMMAND_LINE)
    backend.request_determinism(False)  # asked not to be: nothing to refuse
    monkeypatch.setenv("XLA_FLAGS", backend.DETERMINISTIC_OPS)
    backend.request_determinism(True)   # started with the flag: nothing to refuse


def test_a_cpu_backend_is_deterministic_whatever_the_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(backend, "backend_started", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    backend.request_determinism(True)
    assert os.environ["XLA_FLAGS"] == ""
    assert backend.describe(tiny())["deterministic"] is True

"""Shared fixtures: genuine MNIST prepared once per machine, and one short trained workdir."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The genuine IDX files live beside the checkout (../shared/data/mnist) unless told otherwise.
MNIST_DIR = Path(os.environ.get("DIGITSJAX_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
# tfds prepares MNIST once into this folder; later sessions reuse it (and its array cache).
os.environ.setdefault("TFDS_DATA_DIR", str(REPO / ".cache" / "tensorflow_datasets"))
os.environ["DIGITSJAX_MNIST_DIR"] = str(MNIST_DIR)
# CLI runs in tests keep their compiled programs here rather than in the user's ~/.cache.
os.environ.setdefault("DIGITSJAX_COMPILATION_CACHE", str(REPO / ".cache" / "jax-compilation"))

# Tests train in this process with the default train.deterministic = true: ask XLA for it
# before any test starts JAX's backend, as the entry points do (on a GPU they refuse otherwise).
from digitsjax.run.backend import request_determinism  # noqa: E402
from digitsjax.run.compilation_cache import enable_compilation_cache  # noqa: E402

request_determinism(True)
# Runs in this process read and write the same cache as the CLI runs: the tests train the same
# few programs over and over, each time from a new jitted function that compiles it again.
enable_compilation_cache()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"genuine MNIST not found in {MNIST_DIR}; set DIGITSJAX_MNIST_DIR")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The real dataset with the default 5,000-image validation split."""
    from digitsjax.core.config import DataConfig
    from digitsjax.run.mnist import load_mnist

    return load_mnist(DataConfig(), mnist_dir)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, mnist_dir) -> Path:
    """mnist_mlp trained for 2 epochs: a real workdir for evaluate/predict/plots/serve tests."""
    return train_mnist_mlp(tmp_path_factory.mktemp("trained"), ["train.epochs=2"], mnist_dir)


def genuine_checksums(mnist_dir: Path) -> dict[str, str]:
    """{file name: sha256} from the SHA256SUMS that ships beside the genuine IDX files."""
    lines = (mnist_dir / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines)}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            prefix: Sequence[str] = ()):
    """Run `python -m digitsjax ARGS` in a real process, as a user would; `prefix` is a
    command to run it under (e.g. `setpriv ...` for another user)."""
    import subprocess

    return subprocess.run([*prefix, sys.executable, "-m", "digitsjax", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd or REPO, timeout=600)


@contextmanager
def serving(workdir: Path, *options: str, log: Path | None = None) -> Iterator[str]:
    """`digitsjax serve WORKDIR OPTIONS` in its own process on a free port of the loopback
    interface; yields its URL. Its log (refused requests) goes to `log`: a pipe could fill up
    and block it."""
    import select
    import subprocess

    with open(log or os.devnull, "w") as errors:
        server = subprocess.Popen(
            [sys.executable, "-m", "digitsjax", "serve", str(workdir), "--port", "0", *options],
            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 120)
        line = server.stdout.readline() if ready else ""
        assert "http://127.0.0.1:" in line, f"server did not start: {line!r}"
        yield line.split(" on ")[1].split()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)


# A small mnist_mlp (784-32-10, 2 epochs of 429 steps) fast enough to train many times, saving
# every 143 steps: mid-epoch checkpoints to resume from, and chunks of one length (one compile).
SMALL_RUN = ("model.hidden=[32]", "train.epochs=2", "checkpoint.every_steps=143")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, mnist_dir) -> Path:
    """The uninterrupted reference: interrupted, resumed and replayed runs must match it."""
    return train_mnist_mlp(tmp_path_factory.mktemp("small_run"), SMALL_RUN, mnist_dir)


# mnist_mlp on 1,000 training images in batches of 100: an epoch is 10 steps, a real training
# in seconds.
TINY = ("model.hidden=[16]", "data.validation_size=59000", "train.batch_size=100")


def train_tiny_epoch(*overrides: str) -> dict:
    """The train state after one TINY epoch on random images, in this process (no workdir)."""
    import jax

    from digitsjax.core.config import load_pipeline
    from digitsjax.core.program import init_state, make_train_chunk, program_of

    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", [*TINY, *overrides])
    images = jax.random.uniform(jax.random.PRNGKey(0), (pipeline.train_size, 784))
    labels = jax.random.randint(jax.random.PRNGKey(1), (pipeline.train_size,), 0, 10)
    program = program_of(pipeline)
    state, _ = make_train_chunk(program)(init_state(program), images, labels,
                                         num_steps=pipeline.steps_per_epoch)
    return state


def assert_single_run_bits(model_params, single_params, rtol: float = 1e-5,
                           atol: float = 2e-5, bit_for_bit: bool = True) -> None:
    """A model of a K-model program against its single run: the same fingerprint on XLA:CPU,
    where every sum of a step rounds alike with a model axis around it (core/sums.py); within
    `rtol`/`atol` on other backends, where that is not measured, or without `bit_for_bit`."""
    import jax
    import numpy as np

    from digitsjax.core.model import params_sha256

    if bit_for_bit and jax.default_backend() == "cpu":
        assert params_sha256(model_params) == params_sha256(single_params)
        return
    for a, e in zip(jax.tree.leaves(model_params), jax.tree.leaves(single_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def train_mnist_mlp(workdir: Path, overrides: Sequence[str], mnist_dir: Path) -> Path:
    """mnist_mlp with `overrides`, trained quietly into `workdir` (a fixture's real run)."""
    from digitsjax.core.config import load_pipeline
    from digitsjax.run.loop import train_pipeline

    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", overrides)
    train_pipeline(pipeline, workdir, mnist_dir=str(mnist_dir), echo=lambda _: None)
    return workdir


def request(address, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to `address` (host, port) on a fresh connection: (status, headers, body)."""
    import http.client

    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()

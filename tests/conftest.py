"""Shared fixtures: genuine MNIST prepared once per machine, and one short trained workdir."""

from __future__ import annotations

import os
import sys
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


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"genuine MNIST not found in {MNIST_DIR}; set DIGITSJAX_MNIST_DIR")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The real dataset with the default 5,000-image validation split."""
    from digitsjax.config import DataConfig
    from digitsjax.data import load_mnist

    return load_mnist(DataConfig(), mnist_dir)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, mnist_dir) -> Path:
    """mnist_mlp trained for 2 epochs: a real workdir for evaluate/predict/plots/serve tests."""
    from digitsjax.config import load_pipeline
    from digitsjax.run import train_pipeline

    workdir = tmp_path_factory.mktemp("trained")
    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", ["train.epochs=2"])
    train_pipeline(pipeline, workdir, mnist_dir=str(mnist_dir), echo=lambda _: None)
    return workdir


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run `python -m digitsjax ARGS` in a real process, as a user would."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "digitsjax", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or REPO,
                          timeout=600)

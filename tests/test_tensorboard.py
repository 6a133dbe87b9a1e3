"""TensorBoard event files: what `tensorboard --logdir checkpoints` shows, read back with
TensorBoard's own loader and compared with metrics.jsonl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.run.checkpoint import checkpoint_dir
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import read_metrics
from digitsjax.run.tensorboard import EVENT_FILES, TAGS

from .conftest import REPO, TINY


def scalars(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard loads from the workdir: tag -> [(step, value)]."""
    pytest.importorskip("tensorboard", reason="TensorBoard's own loader reads the event files")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir), purge_orphaned_data=True)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def as_logged(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records]
            for key, tag in TAGS.items()}


def test_every_epoch_record_is_a_tensorboard_scalar(trained_workdir):
    assert scalars(trained_workdir) == as_logged(read_metrics(trained_workdir))


def test_a_resumed_run_shows_each_step_once_and_restart_starts_a_clean_log(tmp_path, mnist_dir):
    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", [
        "model.hidden=[16]", "train.batch_size=1000", "train.epochs=2"])
    quiet = {"mnist_dir": str(mnist_dir), "echo": lambda _: None}
    train_pipeline(pipeline, tmp_path, **quiet)
    # A crash after epoch 2 was logged but before its checkpoint was written: the resumed run
    # replays epoch 2, and TensorBoard must drop the first copy.
    shutil.rmtree(checkpoint_dir(tmp_path) / str(pipeline.total_steps))
    train_pipeline(pipeline, tmp_path, **quiet)
    assert len(list(tmp_path.glob(EVENT_FILES))) == 2
    shown = scalars(tmp_path)
    assert [step for step, _ in shown["loss/train"]] == [pipeline.steps_per_epoch,
                                                          pipeline.total_steps]
    assert shown == as_logged(read_metrics(tmp_path))

    train_pipeline(pipeline, tmp_path, restart=True, **quiet)
    assert len(list(tmp_path.glob(EVENT_FILES))) == 1
    assert scalars(tmp_path) == as_logged(read_metrics(tmp_path))


def test_starting_a_run_does_not_import_an_installed_pytorch(tmp_path):
    """tensorboardX imports torch when it is installed, a second of every start-up; digitsjax
    keeps it out, and the process can still import torch itself afterwards."""
    fake_torch = tmp_path / "torch"
    fake_torch.mkdir()
    (fake_torch / "__init__.py").write_text("import builtins\nbuiltins.TORCH_IMPORTED = True\n")
    code = ("import builtins, digitsjax.run.loop\n"
            "assert not hasattr(builtins, 'TORCH_IMPORTED'), 'torch was imported'\n"
            "import torch\n"
            "assert builtins.TORCH_IMPORTED\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_run_without_tensorboardx_trains_and_says_so_once(tmp_path, mnist_dir, monkeypatch):
    """An accelerator image may lack tensorboardX: the run is not lost for a copy of its
    metrics, and says once, in one line, why there are no event files and how to have them."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as in an environment that lacks it
    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", [*TINY, "train.epochs=2"])
    lines: list[str] = []
    train_pipeline(pipeline, tmp_path, mnist_dir=str(mnist_dir), echo=lines.append)
    notices = [line for line in lines if "tensorboardX" in line]
    assert len(notices) == 1, lines
    assert notices[0].startswith("notice: no TensorBoard event files for this run: tensorboardX "
                                 "is missing ("), notices
    assert notices[0].endswith("; metrics.jsonl holds the same records; install it with "
                               "pip install tensorboardX"), notices
    assert "\n" not in notices[0]
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert not list(tmp_path.glob(EVENT_FILES))

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


WITHOUT_TENSORBOARDX = """
import sys
sys.modules["tensorboardX"] = None  # as in an environment that lacks it
from digitsjax.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_without_tensorboardx_trains_and_says_so_once(tmp_path, mnist_dir):
    """An accelerator image may lack tensorboardX: the run is not lost for a copy of its
    metrics, and says once where they are."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORBOARDX, "train", str(REPO / "pipelines" /
         "mnist_mlp.toml"), "--workdir", str(tmp_path / "run"), "--mnist-dir", str(mnist_dir),
         *(f"--set={o}" for o in (*TINY, "train.epochs=2"))],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stdout.splitlines() if "TensorBoard" in line]
    assert len(notices) == 1 and notices[0].startswith(
        "notice: no TensorBoard event files for this run ("), notices
    assert notices[0].endswith("metrics.jsonl holds the same records; install tensorboardX to "
                               "have them")
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert not list((tmp_path / "run").glob(EVENT_FILES))

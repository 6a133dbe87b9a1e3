"""Checkpoint policy and integrity, on real orbax checkpoints written to disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from digitsjax.core.config import CheckpointConfig, load_pipeline
from digitsjax.core.train import TrainState
from digitsjax.errors import CheckpointError
from digitsjax.main import main
from digitsjax.run import checkpoint
from digitsjax.run.loop import train_pipeline
from digitsjax.run.preemption import PreemptionGuard, exit_code
from digitsjax.run.records import read_metrics

from .conftest import REPO, SMALL_RUN
from .training_processes import comparable, fingerprint, saved_steps

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
SMALL_STEPS = load_pipeline(PIPELINE, SMALL_RUN).total_steps
# When one array of a damaged checkpoint fails to read, orbax abandons the reads of the others;
# Python reports those coroutines when it collects them. Expected here, so not a warning.
abandoned_reads_expected = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


def tiny_state(step: int) -> TrainState:
    return TrainState(params=[{"w": jnp.full((2, 2), float(step)), "b": jnp.zeros(2)}],
                      opt_state={"count": jnp.asarray(step, jnp.int32)},
                      step=jnp.asarray(step, jnp.int32), key=jnp.zeros(2, jnp.uint32))


@pytest.mark.parametrize("keep_best, expected", [(True, [20, 50, 60]), (False, [50, 60])])
def test_keeps_the_last_k_and_the_best_by_validation_accuracy(tmp_path, keep_best, expected):
    val_accuracy = {10: 0.90, 20: 0.95, 30: None, 40: 0.93, 50: None, 60: 0.91}  # None: mid-epoch
    manager = checkpoint.open_manager(tmp_path, CheckpointConfig(keep=2, keep_best=keep_best))
    for step, accuracy in val_accuracy.items():
        metrics = None if accuracy is None else {checkpoint.BEST_METRIC: accuracy}
        checkpoint.save(manager, tiny_state(step), {"epoch": step / 10}, metrics)
        manager.wait_until_finished()
    checkpoint.close(manager)

    assert saved_steps(tmp_path) == expected
    manager = checkpoint.open_manager(tmp_path, read_only=True)
    assert checkpoint.resolve_step(manager, "latest") == 60
    if keep_best:
        assert checkpoint.resolve_step(manager, "best") == 20


def test_a_finished_run_keeps_its_last_three_and_its_best_epoch(small_run):
    pipeline = load_pipeline(PIPELINE, SMALL_RUN)
    epochs = read_metrics(small_run)
    best = max(epochs, key=lambda r: (r["val_accuracy"], r["step"]))["step"]
    every = pipeline.checkpoint.every_steps
    saved = sorted({*range(every, pipeline.total_steps + 1, every), *(r["step"] for r in epochs)})
    assert saved_steps(small_run) == sorted({*saved[-pipeline.checkpoint.keep:], best})


def test_restore_proves_it_read_back_every_byte(tmp_path):
    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, tiny_state(7), {"epoch": 1.0})
    checkpoint.close(manager)
    manager = checkpoint.open_manager(tmp_path, read_only=True)
    state, meta = checkpoint.restore(manager, 7, tiny_state(0))
    assert meta[checkpoint.STATE_BLOCKS_SHA256] == checkpoint.state_blocks_sha256(tiny_state(7))
    assert float(state.params[0]["w"][0, 0]) == 7.0


def test_the_checksum_of_a_large_state_sees_every_block_and_where_its_leaves_end(monkeypatch):
    monkeypatch.setattr(checkpoint, "HASH_BLOCK_BYTES", 64)  # a (4, 40) float32 leaf: 10 blocks
    state = {"a": np.arange(160, dtype=np.float32).reshape(4, 40), "b": np.zeros(3, np.int32)}
    digest = checkpoint.state_blocks_sha256(state)
    assert checkpoint.state_blocks_sha256({k: v.copy() for k, v in state.items()}) == digest
    for row, column in ((0, 0), (2, 17), (3, 39)):  # the first, a middle and the last block
        changed = state["a"].copy()
        changed[row, column] += 1
        assert checkpoint.state_blocks_sha256(state | {"a": changed}) != digest
    moved = {"a": state["a"].ravel()[:-1], "b": np.concatenate([state["a"].ravel()[-1:],
                                                                  state["b"].view(np.float32)])}
    assert checkpoint.state_blocks_sha256(moved) != digest  # the same bytes, split elsewhere


def test_a_checkpoint_with_the_single_sha256_of_earlier_versions_still_restores(tmp_path):
    """Workdirs trained before the checksum of blocks resume: their checksum is still read."""
    manager = checkpoint.open_manager(tmp_path)
    for step, claimed in ((7, tiny_state(7)), (8, tiny_state(9))):  # 8: bytes that do not match
        meta = {"epoch": 1.0, checkpoint.STATE_SHA256: checkpoint.state_sha256(claimed.as_dict())}
        saved = tiny_state(step).as_dict()  # the table a checkpoint holds
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(saved),
                                                   meta=ocp.args.JsonSave(meta)))
    checkpoint.close(manager)
    manager = checkpoint.open_manager(tmp_path, read_only=True)
    state, _ = checkpoint.restore(manager, 7, tiny_state(0))
    assert float(state.params[0]["w"][0, 0]) == 7.0
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        checkpoint.restore(manager, 8, tiny_state(0))
    manager.close()


def flip_one_bit(step_dir: Path) -> None:
    """Orbax and tensorstore read such a checkpoint back without complaint: only our checksum
    notices. (Measured: a flip anywhere in the largest array file goes unreported.)"""
    largest = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0x01
    largest.write_bytes(bytes(data))


def truncate_largest_file(step_dir: Path) -> None:
    largest = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def empty_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text("")


@abandoned_reads_expected
@pytest.mark.parametrize("damage", [flip_one_bit, truncate_largest_file, empty_meta])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        tmp_path, small_run, mnist_dir, damage):
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    *_, previous, newest = saved_steps(workdir)
    damage(checkpoint.checkpoint_dir(workdir) / str(newest))

    messages: list[str] = []
    train_pipeline(load_pipeline(PIPELINE, SMALL_RUN), workdir, mnist_dir=str(mnist_dir),
                   echo=messages.append)

    computes_on, warning, resuming = messages[:3]
    assert "matmul_precision float32" in computes_on
    assert warning.startswith(f"warning: checkpoint {newest} in ")
    assert f"falling back to step {previous}" in warning
    assert f"from step {previous} " in resuming
    assert [p.name.split("-")[0] for p in checkpoint.unreadable_dir(workdir).iterdir()] == \
        [str(newest)]  # set aside, not deleted
    assert fingerprint(workdir, SMALL_STEPS) == fingerprint(small_run, SMALL_STEPS)
    assert comparable(workdir) == comparable(small_run)


@abandoned_reads_expected
def test_when_no_checkpoint_is_intact_the_run_stops_with_one_line_and_moves_nothing(
        tmp_path, small_run, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    for step in saved_steps(workdir):
        truncate_largest_file(checkpoint.checkpoint_dir(workdir) / str(step))
    before = saved_steps(workdir)

    status = main(["train", str(PIPELINE), "--workdir", str(workdir),
                   *(f"--set={s}" for s in SMALL_RUN)])

    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1 and "no checkpoint can be restored" in error
    assert f"checkpoint {before[-1]} " in error and "--restart" in error
    assert saved_steps(workdir) == before
    assert not checkpoint.unreadable_dir(workdir).exists()


def test_evaluate_names_the_damage_and_the_other_checkpoints_to_choose(tmp_path, small_run,
                                                                      capsys):
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    *older, newest = saved_steps(workdir)
    flip_one_bit(checkpoint.checkpoint_dir(workdir) / str(newest))

    assert main(["evaluate", str(workdir)]) == 2
    error = capsys.readouterr().err
    assert "damaged" in error and f"--checkpoint (saved steps: {older})" in error

    assert main(["evaluate", str(workdir), "--checkpoint", str(older[-1]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == older[-1]


def test_the_guard_turns_a_signal_into_a_request_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert (exit_code(signal.SIGTERM), exit_code(signal.SIGINT)) == (143, 130)


def test_a_second_signal_stops_at_once():
    script = textwrap.dedent("""
        import os, signal, time
        from digitsjax.run.preemption import PreemptionGuard
        with PreemptionGuard():
            os.kill(os.getpid(), signal.SIGTERM)
            print("first signal noted", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        print("not reached")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.stdout == "first signal noted\n"
    assert result.returncode == -signal.SIGTERM

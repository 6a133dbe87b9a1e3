"""`digitsjax verify`: a finished run replays to the same params, and a mismatch is explained."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from digitsjax.apps.verify import verify_workdir
from digitsjax.errors import CheckpointError
from digitsjax.files import write_json_atomic
from digitsjax.main import main
from digitsjax.run import checkpoint
from digitsjax.run.workdir import MANIFEST, Workdir

from .conftest import REPO, run_cli


@pytest.mark.slow
def test_a_finished_run_is_reproduced_bit_for_bit(small_run):
    result = run_cli("verify", str(small_run), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reproduced"] is True
    assert report["recorded_sha256"] == report["replayed_sha256"]
    assert report["first_divergent_epoch"] is None
    assert report["manifest_differences"] == []  # same machine, same versions


def test_a_run_that_does_not_replay_is_reported_with_where_it_diverged(tmp_path, small_run,
                                                                        capsys):
    """A record edited after the fact (seed and jax version) no longer replays to its params."""
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    manifest = Workdir.open(workdir).manifest
    manifest["pipeline"]["seed"] = 1
    recorded_jax = manifest["versions"]["jax"]
    manifest["versions"]["jax"] = "0.0.1"
    write_json_atomic(workdir / MANIFEST, manifest)

    assert main(["verify", str(workdir)]) == 1

    out = capsys.readouterr().out
    assert "NOT reproduced at step 858" in out
    assert "metrics first differ at epoch 1" in out
    assert f"versions.jax: '0.0.1' -> '{recorded_jax}'" in out


def test_an_unfinished_run_must_be_finished_before_it_can_be_verified(tmp_path, small_run):
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    *_, before_last, last = sorted(int(p.name) for p in
                                   checkpoint.checkpoint_dir(workdir).iterdir())
    shutil.rmtree(checkpoint.checkpoint_dir(workdir) / str(last))
    with pytest.raises(CheckpointError, match=f"stopped at step {before_last} of {last}; "
                                              "finish it first"):
        verify_workdir(Workdir.open(workdir))


@pytest.mark.slow
def test_ctrl_c_during_the_replay_says_nothing_was_kept(tmp_path, small_run):
    """The replay's checkpoints are in a temporary folder that goes with it: unlike a training
    run's, a stopped verify leaves nothing to continue from, and says so. (Stopped after its
    first epoch, the replay has a second one to go: the signal lands in it.)"""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "digitsjax", "verify", str(small_run)],
                               cwd=REPO, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                            "TMPDIR": str(temporary)})
    for line in process.stdout:  # the replay's first epoch: it is training
        if line.startswith("epoch"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "digitsjax: verify stopped by SIGINT; its replay was " \
        "discarded, nothing was kept", stderr
    assert "checkpointed" not in stderr
    assert not list(temporary.glob("digitsjax-verify-*"))

"""`digitsjax verify`: a finished run replays to the same params, and a mismatch is explained."""

from __future__ import annotations

import json
import shutil

import pytest

from digitsjax.apps.verify import verify_workdir
from digitsjax.errors import CheckpointError
from digitsjax.files import write_json_atomic
from digitsjax.main import main
from digitsjax.run import checkpoint
from digitsjax.run.workdir import MANIFEST, Workdir

from .conftest import run_cli


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
